//! The UAPI socket of a userspace device (`/run/wireguard/<name>.sock`, mode 0600 in a 0755
//! directory, as wireguard-go): each connection carries `get=1` / `set=1` requests ended by an
//! empty line, each answered with the protocol text and `errno=N`. Requests are bounded in size
//! and connections in number, so a local client cannot grow the daemon's memory.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::instance::Instance;
use super::uapi::{self, ERRNO_INVALID, ERRNO_IO};

/// The largest request accepted (a `set=1` with a few thousand peers fits).
const MAX_REQUEST: usize = 4 << 20;
const MAX_CONNECTIONS: usize = 16;

/// Bind the socket (replacing a stale one) and serve it until the returned handle is aborted.
pub fn serve(
    dir: &Path,
    instance: Arc<Instance>,
    on_set: Arc<dyn Fn() + Send + Sync>,
) -> std::io::Result<(PathBuf, tokio::task::JoinHandle<()>)> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    let path = dir.join(format!("{}.sock", instance.name));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let active = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                continue; // dropped: closes the connection
            }
            active.fetch_add(1, Ordering::Relaxed);
            let (instance, on_set, active) = (instance.clone(), on_set.clone(), active.clone());
            tokio::spawn(async move {
                let _ = handle(stream, &instance, &*on_set).await;
                active.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    Ok((path, task))
}

async fn handle(
    stream: UnixStream,
    instance: &Instance,
    on_set: &(dyn Fn() + Send + Sync),
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64 * 16));
    loop {
        let mut op = String::new();
        if reader.read_line(&mut op).await? == 0 {
            return Ok(());
        }
        match op.as_str() {
            "get=1\n" => {
                // The request ends with an empty line.
                let mut blank = String::new();
                reader.read_line(&mut blank).await?;
                let body = uapi::format_get(&instance.get());
                write.write_all(format!("{body}errno=0\n\n").as_bytes()).await?;
            }
            "set=1\n" => {
                let mut body = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await? == 0 || line == "\n" {
                        break;
                    }
                    if body.len() + line.len() > MAX_REQUEST {
                        write
                            .write_all(format!("errno={ERRNO_INVALID}\n\n").as_bytes())
                            .await?;
                        return Ok(());
                    }
                    body.push_str(&line);
                }
                let errno = match uapi::parse_set(&body) {
                    Err(e) => {
                        tracing::warn!(device = %instance.name, error = %e, "rejected a UAPI set request");
                        ERRNO_INVALID
                    }
                    Ok(update) => match instance.set(&update) {
                        Ok(()) => {
                            on_set();
                            0
                        }
                        Err(e) => {
                            tracing::warn!(device = %instance.name, error = %e, "applying a UAPI set request failed");
                            ERRNO_IO
                        }
                    },
                };
                write.write_all(format!("errno={errno}\n\n").as_bytes()).await?;
            }
            _ => {
                write
                    .write_all(format!("errno={ERRNO_INVALID}\n\n").as_bytes())
                    .await?;
                return Ok(());
            }
        }
    }
}
