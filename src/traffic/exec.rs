//! The one place the traffic manager runs external programs (`iptables*`, `nft`): spawn with
//! tokio, feed stdin while collecting stdout, and turn failures into errors naming the command and
//! its stderr. Every run has a time limit (a program stuck on the xtables lock or a wedged kernel
//! is killed, and the upkeep retries next period). Every spawn is counted, so the steady-state
//! cost can be observed (and tested).
//!
//! Which programs to run is decided by `Tools`; nothing here knows about rules.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    #[error("{command} did not finish within {after:?}; it was killed")]
    TimedOut { command: String, after: Duration },
}

/// How long one program may run: iptables-restore `--wait` may legitimately wait a while for the
/// xtables lock (kube-proxy holds it during its syncs), so this is generous.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

impl ExecError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ExecError::NotFound { .. })
    }
}

/// Runs programs and counts how many it started. Clones share the count.
#[derive(Debug, Clone)]
pub struct Runner {
    spawned: Arc<AtomicU64>,
    timeout: Duration,
}

impl Default for Runner {
    fn default() -> Self {
        Runner {
            spawned: Arc::default(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl Runner {
    pub fn new() -> Runner {
        Runner::default()
    }

    /// The time limit of each run.
    pub fn with_timeout(mut self, timeout: Duration) -> Runner {
        self.timeout = timeout;
        self
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
        let pipe = child.stdin.take();
        let feed = async move {
            if let (Some(input), Some(mut pipe)) = (stdin, pipe) {
                // A write error (the program exited early) shows up as its exit status and stderr.
                let _ = pipe.write_all(input.as_bytes()).await;
            }
        };
        // Feeding and reading at once: a program that writes much before reading all its input
        // cannot deadlock us. On timeout the child is dropped, which kills it.
        let run = async { tokio::join!(feed, child.wait_with_output()).1 };
        let output = match tokio::time::timeout(self.timeout, run).await {
            Ok(output) => output.map_err(|e| ExecError::Spawn {
                command: command.clone(),
                message: e.to_string(),
            })?,
            Err(_) => {
                return Err(ExecError::TimedOut {
                    command,
                    after: self.timeout,
                });
            }
        };
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

    #[tokio::test]
    async fn a_stuck_program_is_killed_after_the_time_limit() {
        let runner = Runner::new().with_timeout(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let err = runner.run("sleep", &["30"], None).await.unwrap_err();
        assert!(matches!(err, ExecError::TimedOut { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "sleep 30 did not finish within 200ms; it was killed"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn large_input_and_output_do_not_deadlock() {
        let input = "x".repeat(4 << 20);
        let out = Runner::new().run("cat", &[], Some(&input)).await.unwrap();
        assert_eq!(out.len(), input.len());
    }
}
