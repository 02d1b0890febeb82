//! The request socket's connection, kept usable: it is opened in the network namespace the
//! `RtNetlink` was created in (also when it is reopened from another thread), every request waits
//! at most `timeout` for its answer, and the connection is replaced after a timeout, a closed
//! connection or an overrun (acknowledgements may have been lost, and one lost acknowledgement
//! would otherwise hang every later request).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::Duration;

use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::proto::{Connection, ConnectionHandle, new_connection};
use rtnetlink::sys::protocols::NETLINK_ROUTE;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::{set_receive_buffer, socket_error};
use crate::kernel::{KResult, KernelError};

/// Receive buffer of the request socket (acknowledgements of pipelined batches).
const REQUEST_RCVBUF: usize = 4 << 20;
/// How long a request (or one datagram of a batch) may wait for its answer.
pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

type Conn = Connection<RouteNetlinkMessage>;
pub(super) type ReqHandle = ConnectionHandle<RouteNetlinkMessage>;

struct Current {
    handle: ReqHandle,
    /// The task driving the socket (`None` while stalled by `stall`).
    task: Option<JoinHandle<()>>,
    /// A connection kept but never driven (fault injection): requests to it hang.
    stalled: Option<Conn>,
    /// Bumped at every reopen, so two requests failing on the same connection reopen it once.
    generation: u64,
}

/// The request socket, reopened on failure.
pub(super) struct RequestSocket {
    current: Mutex<Current>,
    /// The network namespace of the thread that created us (`/proc/thread-self/ns/net`).
    netns: Option<File>,
    runtime: Handle,
    pub timeout: Duration,
}

impl RequestSocket {
    pub fn open() -> KResult<RequestSocket> {
        let runtime = Handle::try_current()
            .map_err(|e| KernelError::Socket(format!("starting the netlink connection: {e}")))?;
        let netns = File::open("/proc/thread-self/ns/net").ok();
        let (conn, handle) = open_conn()?;
        let task = runtime.spawn(conn);
        Ok(RequestSocket {
            current: Mutex::new(Current {
                handle,
                task: Some(task),
                stalled: None,
                generation: 0,
            }),
            netns,
            runtime,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The handle to send on, and the generation it belongs to.
    pub fn handle(&self) -> (ReqHandle, u64) {
        let c = self.lock();
        (c.handle.clone(), c.generation)
    }

    /// Replace the connection of `generation` (if nobody did yet) after `why` happened on it.
    pub fn reopen(&self, generation: u64, why: &str) {
        let mut c = self.lock();
        if c.generation != generation {
            return;
        }
        let opened = match &self.netns {
            Some(ns) => open_conn_in(ns, &self.runtime),
            None => open_conn(),
        };
        match opened {
            Ok((conn, handle)) => {
                if let Some(task) = c.task.take() {
                    task.abort();
                }
                c.stalled = None;
                c.task = Some(self.runtime.spawn(conn));
                c.handle = handle;
                c.generation += 1;
                tracing::warn!(reason = why, "reopened the rtnetlink request socket");
            }
            Err(e) => {
                tracing::warn!(reason = why, error = %e, "reopening the rtnetlink request socket failed; will try again at the next failure");
            }
        }
    }

    /// Fault injection: swap in a connection that is never driven, so requests hang until their
    /// timeout (and the socket is then reopened). Used by the tests of that recovery.
    pub fn stall(&self) -> KResult<()> {
        let (conn, handle) = open_conn()?;
        let mut c = self.lock();
        if let Some(task) = c.task.take() {
            task.abort();
        }
        c.stalled = Some(conn);
        c.handle = handle;
        c.generation += 1;
        Ok(())
    }
}

impl Drop for RequestSocket {
    fn drop(&mut self) {
        if let Some(task) = self.lock().task.take() {
            task.abort();
        }
    }
}

/// A request connection in the calling thread's network namespace.
fn open_conn() -> KResult<(Conn, ReqHandle)> {
    let (mut conn, handle, _unsolicited) = new_connection::<RouteNetlinkMessage>(NETLINK_ROUTE)
        .map_err(|e| socket_error("opening rtnetlink socket", e))?;
    // Acknowledgements are the per-message results of a batch: deliver them.
    conn.set_forward_ack(true);
    let socket = conn.socket_mut();
    set_receive_buffer(socket.as_raw_fd(), REQUEST_RCVBUF)
        .map_err(|e| socket_error("setting the rtnetlink receive buffer", e))?;
    let sock = rtnetlink::sys::AsyncSocket::socket_mut(socket);
    // Small error answers (request header only) that carry the kernel's explanation.
    sock.set_cap_ack(true)
        .map_err(|e| socket_error("enabling NETLINK_CAP_ACK", e))?;
    sock.set_ext_ack(true)
        .map_err(|e| socket_error("enabling NETLINK_EXT_ACK", e))?;
    Ok((conn, handle))
}

/// A request connection in the network namespace `ns`, opened on a short-lived thread (setns
/// changes only the calling thread) registered with `runtime`'s reactor.
fn open_conn_in(ns: &File, runtime: &Handle) -> KResult<(Conn, ReqHandle)> {
    let ns = ns
        .try_clone()
        .map_err(|e| socket_error("duplicating the network namespace handle", e))?;
    let runtime = runtime.clone();
    let opener = std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace descriptor; it only affects this new thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(socket_error(
                "entering the network namespace to reopen the rtnetlink socket",
                std::io::Error::last_os_error(),
            ));
        }
        let _guard = runtime.enter();
        open_conn()
    });
    opener.join().unwrap_or_else(|_| {
        Err(KernelError::Socket(
            "reopening the rtnetlink socket: the opener thread panicked".into(),
        ))
    })
}
