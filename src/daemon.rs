//! The one startup/shutdown sequence (spec section 11).

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Fatal(String),
}

impl DaemonError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        1
    }
}

/// Run the daemon until SIGINT/SIGTERM or a fatal error.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let _ = config;
    Err(DaemonError::Fatal("the daemon is not implemented yet".into()))
}
