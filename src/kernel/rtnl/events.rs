//! Kernel change notifications: a dedicated netlink socket joined to the link, address, route and
//! neighbour multicast groups, decoded into `KernelEvent`s. A socket overrun (ENOBUFS: events were
//! lost) is reported as `KernelEvent::Overrun` and the stream keeps going. Must not interpret
//! events. Spec: section 9.1 (link watcher for a deleted vxlan device); design section 3.

use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use futures::channel::mpsc::UnboundedReceiver;
use futures::stream::BoxStream;
use netlink_packet_core::NetlinkMessage;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;
use rtnetlink::sys::SocketAddr;

use super::{decode, set_receive_buffer, socket_error};
use crate::kernel::{KResult, KernelError, KernelEvent};

/// Large enough to absorb the notifications of a 5,000-peer batch while the reader catches up.
const EVENT_RCVBUF: usize = 32 << 20;

const GROUPS: [MulticastGroup; 6] = [
    MulticastGroup::Link,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv6Ifaddr,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
    MulticastGroup::Neigh,
];

/// Opens the event socket in the calling thread's network namespace and spawns its reader.
pub(super) fn subscribe() -> KResult<BoxStream<'static, KernelEvent>> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| KernelError::Socket(format!("starting the netlink event reader: {e}")))?;
    let (mut conn, handle, messages) = rtnetlink::new_multicast_connection(&GROUPS)
        .map_err(|e| socket_error("opening rtnetlink event socket", e))?;
    set_receive_buffer(conn.socket_mut().as_raw_fd(), EVENT_RCVBUF)
        .map_err(|e| socket_error("setting the rtnetlink event receive buffer", e))?;
    // No requests go over this socket.
    drop(handle);
    let task = runtime.spawn(conn);
    Ok(Box::pin(Events { messages, task }))
}

/// The decoded notification stream; dropping it stops the socket's reader task.
struct Events {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream for Events {
    type Item = KernelEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<KernelEvent>> {
        loop {
            match Pin::new(&mut self.messages).poll_next(cx) {
                Poll::Ready(Some((msg, _))) => {
                    if let Some(event) = decode::event(msg) {
                        return Poll::Ready(Some(event));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}
