//! systemd readiness notification (`sd_notify(READY=1)`) without libsystemd: one datagram to
//! `$NOTIFY_SOCKET` (a path, or an abstract name starting with `@`). Spec 11.1 step 13.

use std::os::unix::net::UnixDatagram;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notifying systemd at {socket:?}: {source}")]
    Send { socket: String, source: std::io::Error },
}

/// Send `state` (e.g. `READY=1`) when `NOTIFY_SOCKET` is set; `Ok(false)` when it is not.
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    match std::env::var("NOTIFY_SOCKET") {
        Ok(socket) if !socket.is_empty() => notify_to(&socket, state).map(|_| true),
        _ => Ok(false),
    }
}

pub fn notify_to(socket: &str, state: &str) -> Result<(), NotifyError> {
    let err = |source| NotifyError::Send {
        socket: socket.to_string(),
        source,
    };
    let sock = UnixDatagram::unbound().map_err(err)?;
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(err)?;
        sock.send_to_addr(state.as_bytes(), &addr).map_err(err)?;
    } else {
        sock.send_to(state.as_bytes(), socket).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_ready_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        notify_to(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn missing_socket_is_a_clear_error() {
        let err = notify_to("/nonexistent/notify.sock", "READY=1").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/notify.sock"), "{err}");
    }
}
