//! Running one extension command as upstream does now (spec 9.6): the configured text is split on
//! whitespace, each word is expanded with `$VAR` / `${VAR}` (Go's `os.Expand` rules) from the
//! process environment plus the command's extra variables, and the words are executed directly,
//! without a shell. stdin gets the given text and a newline; stdout and stderr go to one pipe
//! (Go's `CombinedOutput`), trimmed.
//!
//! Unlike upstream, stdin is written while the output is read (a command reading less than it is
//! given, or writing more than a pipe holds before reading, cannot deadlock the daemon), every run
//! has a timeout after which the command's whole process group is killed, and the captured output
//! is capped (`OUTPUT_CAP`), so a runaway command cannot exhaust memory.

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// At most this much output is kept (the rest is read and dropped).
pub const OUTPUT_CAP: usize = 1 << 20;

/// Why a command could not be run or failed; names the command text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command {command:?} is empty after splitting and expanding it")]
    Empty { command: String },
    #[error("starting {program:?} of command {command:?}: {reason}")]
    Spawn {
        command: String,
        program: String,
        reason: String,
    },
    #[error("command {command:?} {status}; output: {output}")]
    Failed {
        command: String,
        status: String,
        output: String,
    },
    #[error("command {command:?} did not finish within {timeout:?} and was killed; output so far: {output}")]
    Timeout {
        command: String,
        timeout: Duration,
        output: String,
    },
    #[error("running command {command:?}: {reason}")]
    Io { command: String, reason: String },
}

/// What a finished command printed (stdout and stderr interleaved, trimmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub output: String,
    /// More than `OUTPUT_CAP` bytes were printed; `output` holds the first ones.
    pub truncated: bool,
}

fn is_alnum(b: u8) -> bool {
    b == b'_' || b.is_ascii_alphanumeric()
}

fn is_special(b: u8) -> bool {
    matches!(b, b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9')
}

/// The variable name after a `$` and how many bytes it spans (Go's `getShellName`); an empty name
/// with a non-zero width is bad syntax (eaten), with width 0 a lone `$` (kept).
fn shell_name(s: &[u8]) -> (&[u8], usize) {
    if s.first() == Some(&b'{') {
        if s.len() > 2 && is_special(s[1]) && s[2] == b'}' {
            return (&s[1..2], 3);
        }
        for i in 1..s.len() {
            if s[i] == b'}' {
                if i == 1 {
                    return (&[], 2);
                }
                return (&s[1..i], i + 1);
            }
        }
        return (&[], 1);
    }
    if s.first().is_some_and(|b| is_special(*b)) {
        return (&s[..1], 1);
    }
    let n = s.iter().take_while(|b| is_alnum(**b)).count();
    (&s[..n], n)
}

/// `$VAR` and `${VAR}` in `word` replaced by `lookup(VAR)` (empty when unknown), with Go's
/// `os.Expand` rules: a `$` at the end or before a character that starts no name is kept; `${}`
/// and an unterminated `${` are dropped.
pub fn expand(word: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let s = word.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(s.len());
    let mut i = 0;
    let mut j = 0;
    while j < s.len() {
        if s[j] == b'$' && j + 1 < s.len() {
            out.extend_from_slice(&s[i..j]);
            let (name, width) = shell_name(&s[j + 1..]);
            if name.is_empty() && width == 0 {
                out.push(b'$');
            } else if !name.is_empty() {
                let name = String::from_utf8_lossy(name);
                out.extend_from_slice(lookup(&name).unwrap_or_default().as_bytes());
            }
            j += width;
            i = j + 1;
        }
        j += 1;
    }
    out.extend_from_slice(s.get(i..).unwrap_or_default());
    String::from_utf8_lossy(&out).into_owned()
}

/// The argv of `command`: split on whitespace, then each word expanded with `extra` first and the
/// process environment `env` second.
pub fn argv(
    command: &str,
    extra: &BTreeMap<String, String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let lookup = |name: &str| extra.get(name).cloned().or_else(|| env(name));
    command.split_whitespace().map(|w| expand(w, &lookup)).collect()
}

/// The process environment as `argv` reads it.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A pipe whose ends are closed on exec (the child gets dup2'd copies only).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads everything from `reader`, keeping the first `OUTPUT_CAP` bytes.
async fn read_capped(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    out: &mut Vec<u8>,
) -> (bool, std::io::Result<()>) {
    let mut buf = [0u8; 8192];
    let mut truncated = false;
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => return (truncated, Ok(())),
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (truncated, Err(e)),
        }
    }
}

/// Runs `command` (split, expanded, no shell) with `extra` added to the environment and `stdin`
/// plus a newline on its stdin; kills its process group after `timeout`. A non-zero exit is an
/// error carrying the output.
pub async fn run(
    command: &str,
    extra: &BTreeMap<String, String>,
    stdin: &str,
    timeout: Duration,
) -> Result<CommandOutput, CommandError> {
    let words = argv(command, extra, &process_env);
    let Some((program, args)) = words.split_first().filter(|(p, _)| !p.is_empty()) else {
        return Err(CommandError::Empty {
            command: command.to_string(),
        });
    };
    let io_err = |reason: std::io::Error| CommandError::Io {
        command: command.to_string(),
        reason: reason.to_string(),
    };
    let (read_end, write_end) = pipe().map_err(io_err)?;
    let stderr_end = write_end.try_clone().map_err(io_err)?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::from(stderr_end))
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| CommandError::Spawn {
        command: command.to_string(),
        program: program.clone(),
        reason: e.to_string(),
    })?;
    // The parent's copies of the write end were moved into `cmd`: drop them, or EOF never comes.
    drop(cmd);
    let pgid = child.id();
    let mut child_stdin = child.stdin.take();
    let input = format!("{stdin}\n");
    let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(read_end).map_err(io_err)?;

    let mut output = Vec::new();
    let work = async {
        let write = async {
            if let Some(mut pipe) = child_stdin.take() {
                // A command that exits without reading all of stdin closes the pipe: not an error.
                let _ = pipe.write_all(input.as_bytes()).await;
                let _ = pipe.shutdown().await;
            }
        };
        let ((truncated, read), ()) = tokio::join!(read_capped(reader, &mut output), write);
        let status = child.wait().await;
        (truncated, read, status)
    };
    let result = tokio::time::timeout(timeout, work).await;
    let text = |out: &[u8]| String::from_utf8_lossy(out).trim().to_string();
    match result {
        Err(_) => {
            if let Some(pgid) = pgid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: signals the process group the child leads (process_group(0) above).
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            let _ = child.kill().await;
            Err(CommandError::Timeout {
                command: command.to_string(),
                timeout,
                output: text(&output),
            })
        }
        Ok((truncated, read, status)) => {
            read.map_err(io_err)?;
            let status = status.map_err(io_err)?;
            let output = text(&output);
            if status.success() {
                Ok(CommandOutput { output, truncated })
            } else {
                Err(CommandError::Failed {
                    command: command.to_string(),
                    status: status.to_string(),
                    output,
                })
            }
        }
    }
}
