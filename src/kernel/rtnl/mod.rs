//! The real `Netlink` implementation over rtnetlink (the only module that imports it): queries,
//! device changes and pipelined batches of route/neighbour/FDB changes on one netlink socket, and
//! a second socket for change notifications. It applies what it is told and decides nothing.
//! Sockets belong to the network namespace of the thread that opens them.
//! Spec: section 9 intro (main table, protocol boot, txqueuelen 0), 9.1 (device attributes and
//! entries), 7 (what interface selection reads).

mod conn;
mod decode;
mod encode;
mod errors;
mod events;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::SocketAddr;

use crate::kernel::{
    Addr, Fdb, IpipSpec, KResult, KernelError, KernelEvent, Link, Neigh, Netlink, Op, RT_TABLE_MAIN, Route,
    VxlanSpec,
};
use errors::{closed, describe, failed, nack, timed_out};

/// Messages sent in one datagram; the kernel handles them in order and acknowledges each.
const BATCH: usize = 64;
/// Datagrams in flight at once. BATCH * IN_FLIGHT acknowledgements must fit the receive buffer.
const IN_FLIGHT: usize = 8;

/// The kernel seam over a real rtnetlink socket.
pub struct RtNetlink {
    socket: conn::RequestSocket,
}

impl std::fmt::Debug for RtNetlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RtNetlink")
    }
}

fn socket_error(step: &str, err: std::io::Error) -> KernelError {
    KernelError::Socket(format!("{step}: {err}"))
}

/// Sets SO_RCVBUFFORCE (root may exceed net.core.rmem_max), falling back to SO_RCVBUF.
fn set_receive_buffer(fd: i32, bytes: usize) -> std::io::Result<()> {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: `size` outlives the call and its length is passed alongside.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
    }
    Err(std::io::Error::last_os_error())
}

impl RtNetlink {
    /// Opens the request socket (in the calling thread's network namespace; it is reopened there
    /// after a failure) and spawns its connection task on the current tokio runtime.
    pub fn new() -> KResult<RtNetlink> {
        Ok(RtNetlink {
            socket: conn::RequestSocket::open()?,
        })
    }

    /// How long each request (or each datagram of a batch) may wait for its answer (default
    /// 10 s); the socket is reopened after a timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> RtNetlink {
        self.socket.timeout = timeout;
        self
    }

    /// Fault injection for tests of the recovery: from now on requests hang until they time out,
    /// then the socket is reopened and works again.
    pub fn stall_requests(&self) -> KResult<()> {
        self.socket.stall()
    }

    /// Sends one request and collects the messages of its answer (a dump, one object, or just an
    /// acknowledgement); an error answer becomes `KernelError::Failed` naming `op` and `object`.
    async fn request(
        &self,
        msg: NetlinkMessage<RouteNetlinkMessage>,
        op: &str,
        object: &str,
    ) -> KResult<Vec<RouteNetlinkMessage>> {
        self.exchange(msg, op, object, true).await
    }

    /// Sends the request `op` that creates the device `name`, and returns the link the kernel
    /// made (looked up by name: the creation answer carries no link).
    async fn create_link(
        &self,
        msg: NetlinkMessage<RouteNetlinkMessage>,
        op: &str,
        name: &str,
    ) -> KResult<Link> {
        self.request(msg, op, name).await?;
        match self.link_by_name(name).await? {
            Some(link) => Ok(link),
            None => Err(failed(
                op,
                name,
                "device vanished right after creation".into(),
                None,
            )),
        }
    }

    /// Lists `what` ("links", "IPv4 routes", ...). A dump answer may legitimately be empty: the
    /// stream then ends right after NLMSG_DONE.
    async fn dump(
        &self,
        msg: NetlinkMessage<RouteNetlinkMessage>,
        what: &str,
    ) -> KResult<Vec<RouteNetlinkMessage>> {
        self.exchange(msg, "listing", what, false).await
    }

    /// One request and its whole answer, within the timeout; a closed connection, an overrun or
    /// a timeout reopens the socket (the error is returned: the caller's retry gets a new one).
    async fn exchange(
        &self,
        msg: NetlinkMessage<RouteNetlinkMessage>,
        op: &str,
        object: &str,
        needs_answer: bool,
    ) -> KResult<Vec<RouteNetlinkMessage>> {
        let (handle, generation) = self.socket.handle();
        let collect = async {
            let mut answer = handle
                .request(msg, SocketAddr::new(0, 0))
                .map_err(|_| closed(op, object))?;
            let mut out = Vec::new();
            let mut answered = false;
            while let Some(reply) = answer.next().await {
                answered = true;
                if let Some(err) = nack(op, object, &reply) {
                    return Err(err);
                }
                if let NetlinkPayload::InnerMessage(inner) = reply.payload {
                    out.push(inner);
                }
            }
            if needs_answer && !answered {
                return Err(closed(op, object));
            }
            Ok(out)
        };
        let result = match tokio::time::timeout(self.socket.timeout, collect).await {
            Ok(result) => result,
            Err(_) => Err(timed_out(op, object, self.socket.timeout)),
        };
        if let Err(e) = &result
            && e.needs_new_socket()
        {
            self.socket.reopen(generation, &e.to_string());
        }
        result
    }

    async fn routes_of(&self, family: AddressFamily, what: &str) -> KResult<Vec<Route>> {
        let msgs = self.dump(encode::dump_routes(family), what).await?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => decode::route(r),
                _ => None,
            })
            .filter(|r| r.table == RT_TABLE_MAIN)
            .collect())
    }

    /// Sends the ops in datagrams of `BATCH` messages, strictly in order, with at most `IN_FLIGHT`
    /// datagrams unanswered. The kernel handles a datagram's messages in order and answers each
    /// one (acknowledgement or error), so answers map to ops by position.
    async fn apply_pipelined(&self, ops: &[Op]) -> Vec<KResult<()>> {
        let (handle, generation) = self.socket.handle();
        let timeout = self.socket.timeout;
        let mut results = Vec::with_capacity(ops.len());
        let mut pending = VecDeque::with_capacity(IN_FLIGHT);
        let mut broken: Option<String> = None;
        for chunk in ops.chunks(BATCH) {
            if pending.len() == IN_FLIGHT
                && let Some((sent, answer)) = pending.pop_front()
            {
                collect_answers(sent, answer, timeout, &mut results, &mut broken).await;
            }
            let msgs: Vec<_> = chunk.iter().map(encode::op).collect();
            // Queued synchronously, so the connection sends the datagrams in this order.
            pending.push_back((chunk, handle.request_batch(msgs, SocketAddr::new(0, 0)).ok()));
        }
        while let Some((sent, answer)) = pending.pop_front() {
            collect_answers(sent, answer, timeout, &mut results, &mut broken).await;
        }
        if let Some(why) = broken {
            self.socket.reopen(generation, &why);
        }
        results
    }
}

/// Appends one result per op of `sent` from the answer to its datagram, waiting at most
/// `timeout`; ops left unanswered (the connection closed or stalled) fail, and `broken` records
/// why the socket should be reopened.
async fn collect_answers<S>(
    sent: &[Op],
    answer: Option<S>,
    timeout: Duration,
    results: &mut Vec<KResult<()>>,
    broken: &mut Option<String>,
) where
    S: futures::Stream<Item = NetlinkMessage<RouteNetlinkMessage>>,
{
    let mut answered = 0;
    let mut timed_out_after = None;
    if let Some(answer) = answer {
        let mut answer = std::pin::pin!(answer);
        let collect = async {
            while let Some(reply) = answer.next().await {
                let Some(op) = sent.get(answered) else { break };
                if matches!(
                    reply.payload,
                    NetlinkPayload::Error(_) | NetlinkPayload::Overrun(_)
                ) {
                    let (verb, object) = describe(op);
                    let result = match nack(verb, object, &reply) {
                        Some(err) => Err(err),
                        None => Ok(()),
                    };
                    if let Err(e) = &result
                        && e.needs_new_socket()
                    {
                        broken.get_or_insert_with(|| e.to_string());
                    }
                    results.push(result);
                    answered += 1;
                }
            }
        };
        if tokio::time::timeout(timeout, collect).await.is_err() {
            timed_out_after = Some(timeout);
        }
    }
    for op in sent.iter().skip(answered) {
        let (verb, object) = describe(op);
        let err = match timed_out_after {
            Some(t) => timed_out(verb, object, t),
            None => closed(verb, object),
        };
        broken.get_or_insert_with(|| err.to_string());
        results.push(Err(err));
    }
}

#[async_trait::async_trait]
impl Netlink for RtNetlink {
    async fn links(&self) -> KResult<Vec<Link>> {
        let msgs = self.dump(encode::dump_links(), "links").await?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => decode::link(l),
                _ => None,
            })
            .collect())
    }

    async fn link_by_name(&self, name: &str) -> KResult<Option<Link>> {
        match self
            .request(encode::get_link_by_name(name), "looking up link", name)
            .await
        {
            Ok(msgs) => Ok(msgs.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => decode::link(l),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn addrs(&self) -> KResult<Vec<Addr>> {
        let msgs = self.dump(encode::dump_addrs(), "addresses").await?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => decode::addr(a),
                _ => None,
            })
            .collect())
    }

    async fn routes(&self) -> KResult<Vec<Route>> {
        let mut routes = self.routes_of(AddressFamily::Inet, "IPv4 routes").await?;
        routes.extend(self.routes_of(AddressFamily::Inet6, "IPv6 routes").await?);
        Ok(routes)
    }

    async fn neighs(&self, index: u32) -> KResult<Vec<Neigh>> {
        let what = format!("neighbours of link #{index}");
        let msgs = self
            .dump(encode::dump_neighs(AddressFamily::Unspec, index), &what)
            .await?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.family != AddressFamily::Bridge => {
                    decode::neigh(n)
                }
                _ => None,
            })
            .filter(|n| n.index == index)
            .collect())
    }

    async fn fdbs(&self, index: u32) -> KResult<Vec<Fdb>> {
        let what = format!("fdb entries of link #{index}");
        let msgs = self
            .dump(encode::dump_neighs(AddressFamily::Bridge, index), &what)
            .await?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.family == AddressFamily::Bridge => {
                    decode::fdb(n)
                }
                _ => None,
            })
            .filter(|f| f.index == index)
            .collect())
    }

    async fn route_get(&self, dst: IpAddr) -> KResult<Vec<Route>> {
        let msgs = self
            .request(encode::get_route(dst), "looking up route to", &dst.to_string())
            .await?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => decode::route(r),
                _ => None,
            })
            .collect())
    }

    async fn create_vxlan(&self, spec: &VxlanSpec) -> KResult<Link> {
        self.create_link(encode::new_vxlan(spec), "creating vxlan device", &spec.name)
            .await
    }

    async fn create_ipip(&self, spec: &IpipSpec) -> KResult<Link> {
        self.create_link(encode::new_ipip(spec), "creating ipip device", &spec.name)
            .await
    }

    async fn create_wireguard(&self, name: &str, mtu: u32) -> KResult<Link> {
        self.create_link(
            encode::new_wireguard(name, mtu),
            "creating wireguard device",
            name,
        )
        .await
    }

    async fn delete_link(&self, index: u32) -> KResult<()> {
        self.request(encode::del_link(index), "deleting link", &format!("#{index}"))
            .await
            .map(drop)
    }

    async fn set_link_up(&self, index: u32) -> KResult<()> {
        self.request(
            encode::set_link_up(index),
            "setting link up",
            &format!("#{index}"),
        )
        .await
        .map(drop)
    }

    async fn set_link_mtu(&self, index: u32, mtu: u32) -> KResult<()> {
        let object = format!("#{index} (mtu {mtu})");
        self.request(encode::set_link_mtu(index, mtu), "setting link mtu", &object)
            .await
            .map(drop)
    }

    async fn add_addr(&self, addr: &Addr) -> KResult<()> {
        let object = format!("{}/{} on link #{}", addr.ip, addr.prefix_len, addr.index);
        self.request(encode::addr(addr, true), "adding address", &object)
            .await
            .map(drop)
    }

    async fn del_addr(&self, addr: &Addr) -> KResult<()> {
        let object = format!("{}/{} on link #{}", addr.ip, addr.prefix_len, addr.index);
        self.request(encode::addr(addr, false), "deleting address", &object)
            .await
            .map(drop)
    }

    async fn apply(&self, ops: &[Op]) -> Vec<KResult<()>> {
        self.apply_pipelined(ops).await
    }

    async fn subscribe(&self) -> KResult<BoxStream<'static, KernelEvent>> {
        events::subscribe()
    }
}
