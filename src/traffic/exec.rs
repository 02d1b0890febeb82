//! The one place the traffic manager runs external programs (`iptables*`, `nft`): spawn with
//! tokio, feed stdin, collect stdout, and turn failures into errors naming the command and its
//! stderr. Every spawn is counted, so the steady-state cost can be observed (and tested).
//!
//! Which programs to run is decided by `Tools`; nothing here knows about rules.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncWriteExt;

/// A program that could not be run or that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExecError {
    #[error("running {command}: the program was not found in PATH")]
    NotFound { command: String },
    #[error("running {command}: {message}")]
    Spawn { command: String, message: String },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

impl ExecError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ExecError::NotFound { .. })
    }
}

/// Runs programs and counts how many it started. Clones share the count.
#[derive(Debug, Clone, Default)]
pub struct Runner {
    spawned: Arc<AtomicU64>,
}

impl Runner {
    pub fn new() -> Runner {
        Runner::default()
    }

    /// How many processes this runner (and its clones) started.
    pub fn spawned(&self) -> u64 {
        self.spawned.load(Ordering::Relaxed)
    }

    /// Runs `program args...` with `stdin` (or no input) and returns its stdout. A non-zero exit is
    /// an error carrying stderr (trimmed).
    pub async fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, ExecError> {
        let command = std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        self.spawned.fetch_add(1, Ordering::Relaxed);
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ExecError::NotFound {
                    command: command.clone(),
                }
            } else {
                ExecError::Spawn {
                    command: command.clone(),
                    message: e.to_string(),
                }
            }
        })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error (the program exited early) shows up as its exit status and stderr.
            let _ = pipe.write_all(input.as_bytes()).await;
            drop(pipe);
        }
        let output = child.wait_with_output().await.map_err(|e| ExecError::Spawn {
            command: command.clone(),
            message: e.to_string(),
        })?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            let status = match output.status.code() {
                Some(code) => format!("exit status {code}"),
                None => "killed by a signal".to_owned(),
            };
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            Err(ExecError::Failed {
                command,
                status,
                stderr,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_with_stdin_and_counts() {
        let runner = Runner::new();
        let out = runner.run("cat", &[], Some("hello\n")).await.unwrap();
        assert_eq!(out, "hello\n");
        assert_eq!(runner.clone().spawned(), 1);
    }

    #[tokio::test]
    async fn failure_names_command_and_stderr() {
        let runner = Runner::new();
        let err = runner
            .run("sh", &["-c", "echo boom >&2; exit 3"], None)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "sh -c echo boom >&2; exit 3 failed (exit status 3): boom"
        );
        let missing = runner
            .run("flanneld-no-such-program", &["x"], None)
            .await
            .unwrap_err();
        assert!(missing.is_not_found());
        assert_eq!(
            missing.to_string(),
            "running flanneld-no-such-program x: the program was not found in PATH"
        );
        assert_eq!(runner.spawned(), 2);
    }
}
