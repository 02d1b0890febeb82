//! The real `Netlink` implementation over rtnetlink (the only module that imports it): queries,
//! device changes and pipelined batches of route/neighbour/FDB changes on one netlink socket, and
//! a second socket for change notifications. It applies what it is told and decides nothing.
//! Sockets belong to the network namespace of the thread that opens them.
//! Spec: section 9 intro (main table, protocol boot, txqueuelen 0), 9.1 (device attributes and
//! entries), 7 (what interface selection reads).

mod decode;
mod encode;
mod events;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use futures::StreamExt;
use futures::stream::BoxStream;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::proto::{ConnectionHandle, new_connection};
use rtnetlink::sys::SocketAddr;
use rtnetlink::sys::protocols::NETLINK_ROUTE;

use crate::kernel::{
    Addr, Fdb, KResult, KernelError, KernelEvent, Link, Neigh, Netlink, Op, RT_TABLE_MAIN, Route, VxlanSpec,
};

/// Messages sent in one datagram; the kernel handles them in order and acknowledges each.
const BATCH: usize = 64;
/// Datagrams in flight at once. BATCH * IN_FLIGHT acknowledgements must fit the receive buffer.
const IN_FLIGHT: usize = 8;
/// Receive buffer of the request socket (acknowledgements of pipelined batches).
const REQUEST_RCVBUF: usize = 4 << 20;

/// The kernel seam over a real rtnetlink socket.
pub struct RtNetlink {
    handle: ConnectionHandle<RouteNetlinkMessage>,
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

fn failed(op: &str, object: impl std::fmt::Display, message: String, errno: Option<i32>) -> KernelError {
    KernelError::Failed {
        op: op.to_string(),
        object: object.to_string(),
        message,
        errno,
    }
}

fn closed(op: &str, object: impl std::fmt::Display) -> KernelError {
    failed(op, object, "netlink connection closed".to_string(), None)
}

/// The error a netlink error message stands for; `None` for an acknowledgement.
fn nack(
    op: &str,
    object: impl std::fmt::Display,
    msg: &NetlinkMessage<RouteNetlinkMessage>,
) -> Option<KernelError> {
    match &msg.payload {
        NetlinkPayload::Error(e) => {
            let errno = decode::errno(e)?;
            Some(failed(
                op,
                object,
                decode::error_text(errno, e, msg.header.flags),
                Some(errno),
            ))
        }
        NetlinkPayload::Overrun(_) => Some(failed(op, object, "netlink socket overrun".to_string(), None)),
        _ => None,
    }
}

impl RtNetlink {
    /// Opens the request socket (in the calling thread's network namespace) and spawns its
    /// connection task on the current tokio runtime.
    pub fn new() -> KResult<RtNetlink> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| KernelError::Socket(format!("starting the netlink connection: {e}")))?;
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
        runtime.spawn(conn);
        Ok(RtNetlink { handle })
    }

    /// Sends one request and collects the messages of its answer (a dump, one object, or just an
    /// acknowledgement); an error answer becomes `KernelError::Failed` naming `op` and `object`.
    async fn request(
        &self,
        msg: NetlinkMessage<RouteNetlinkMessage>,
        op: &str,
        object: &str,
    ) -> KResult<Vec<RouteNetlinkMessage>> {
        let mut answer = self
            .handle
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
        if !answered {
            return Err(closed(op, object));
        }
        Ok(out)
    }

    /// Lists `what` ("links", "IPv4 routes", ...). A dump answer may legitimately be empty: the
    /// stream then ends right after NLMSG_DONE.
    async fn dump(
        &self,
        msg: NetlinkMessage<RouteNetlinkMessage>,
        what: &str,
    ) -> KResult<Vec<RouteNetlinkMessage>> {
        let op = "listing";
        let mut answer = self
            .handle
            .request(msg, SocketAddr::new(0, 0))
            .map_err(|_| closed(op, what))?;
        let mut out = Vec::new();
        while let Some(reply) = answer.next().await {
            if let Some(err) = nack(op, what, &reply) {
                return Err(err);
            }
            if let NetlinkPayload::InnerMessage(inner) = reply.payload {
                out.push(inner);
            }
        }
        Ok(out)
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
        let mut results = Vec::with_capacity(ops.len());
        let mut pending = VecDeque::with_capacity(IN_FLIGHT);
        for chunk in ops.chunks(BATCH) {
            if pending.len() == IN_FLIGHT
                && let Some((sent, answer)) = pending.pop_front()
            {
                collect_answers(sent, answer, &mut results).await;
            }
            let msgs: Vec<_> = chunk.iter().map(encode::op).collect();
            // Queued synchronously, so the connection sends the datagrams in this order.
            pending.push_back((chunk, self.handle.request_batch(msgs, SocketAddr::new(0, 0)).ok()));
        }
        while let Some((sent, answer)) = pending.pop_front() {
            collect_answers(sent, answer, &mut results).await;
        }
        results
    }
}

/// Appends one result per op of `sent` from the answer to its datagram; ops left unanswered (the
/// connection closed) fail.
async fn collect_answers<S>(sent: &[Op], answer: Option<S>, results: &mut Vec<KResult<()>>)
where
    S: futures::Stream<Item = NetlinkMessage<RouteNetlinkMessage>>,
{
    let mut answered = 0;
    if let Some(answer) = answer {
        let mut answer = std::pin::pin!(answer);
        while let Some(reply) = answer.next().await {
            let Some(op) = sent.get(answered) else { break };
            if matches!(
                reply.payload,
                NetlinkPayload::Error(_) | NetlinkPayload::Overrun(_)
            ) {
                let (verb, object) = describe(op);
                results.push(match nack(verb, object, &reply) {
                    Some(err) => Err(err),
                    None => Ok(()),
                });
                answered += 1;
            }
        }
    }
    for op in sent.iter().skip(answered) {
        let (verb, object) = describe(op);
        results.push(Err(closed(verb, object)));
    }
}

/// The step and the object of an op, for error messages.
fn describe(op: &Op) -> (&'static str, String) {
    let verb = match op {
        Op::ReplaceRoute(_) => "replacing route",
        Op::DeleteRoute(_) => "deleting route",
        Op::ReplaceNeigh(_) => "replacing neighbour",
        Op::DeleteNeigh(_) => "deleting neighbour",
        Op::ReplaceFdb(_) => "replacing fdb entry",
        Op::DeleteFdb(_) => "deleting fdb entry",
    };
    let object = match op {
        Op::ReplaceRoute(r) | Op::DeleteRoute(r) => {
            let mut s = r.dst.to_string();
            if let Some(gw) = r.gateway {
                s.push_str(&format!(" via {gw}"));
            }
            if let Some(oif) = r.oif {
                s.push_str(&format!(" dev #{oif}"));
            }
            if r.onlink {
                s.push_str(" onlink");
            }
            if r.table != RT_TABLE_MAIN {
                s.push_str(&format!(" table {}", r.table));
            }
            s
        }
        Op::ReplaceNeigh(n) | Op::DeleteNeigh(n) => match n.mac {
            Some(mac) => format!("{} dev #{} lladdr {mac}", n.ip, n.index),
            None => format!("{} dev #{}", n.ip, n.index),
        },
        Op::ReplaceFdb(f) | Op::DeleteFdb(f) => match f.dst {
            Some(dst) => format!("{} dev #{} dst {dst}", f.mac, f.index),
            None => format!("{} dev #{}", f.mac, f.index),
        },
    };
    (verb, object)
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
        let op = "creating vxlan device";
        self.request(encode::new_vxlan(spec), op, &spec.name).await?;
        match self.link_by_name(&spec.name).await? {
            Some(link) => Ok(link),
            None => Err(failed(
                op,
                &spec.name,
                "device vanished right after creation".into(),
                None,
            )),
        }
    }

    async fn create_wireguard(&self, name: &str, mtu: u32) -> KResult<Link> {
        let op = "creating wireguard device";
        self.request(encode::new_wireguard(name, mtu), op, name).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{MacAddr, NUD_PERMANENT};

    #[test]
    fn op_errors_name_the_step_and_the_object() {
        let mut r = Route::unicast(
            "198.18.2.0/24".parse().unwrap(),
            Some("198.18.2.0".parse().unwrap()),
            Some(5),
        );
        r.onlink = true;
        assert_eq!(
            describe(&Op::ReplaceRoute(r.clone())),
            (
                "replacing route",
                "198.18.2.0/24 via 198.18.2.0 dev #5 onlink".to_string()
            )
        );
        r.table = 100;
        assert_eq!(
            describe(&Op::DeleteRoute(r)).1,
            "198.18.2.0/24 via 198.18.2.0 dev #5 onlink table 100"
        );
        let mac = MacAddr([0x0e, 0, 0, 0, 0, 1]);
        let n = Neigh {
            index: 5,
            ip: "198.18.2.0".parse().unwrap(),
            mac: Some(mac),
            state: NUD_PERMANENT,
        };
        assert_eq!(
            describe(&Op::DeleteNeigh(n)),
            (
                "deleting neighbour",
                "198.18.2.0 dev #5 lladdr 0e:00:00:00:00:01".to_string()
            )
        );
        let f = Fdb {
            index: 5,
            mac,
            dst: Some("192.0.2.2".parse().unwrap()),
            self_flag: true,
            permanent: true,
        };
        assert_eq!(
            describe(&Op::ReplaceFdb(f)),
            (
                "replacing fdb entry",
                "0e:00:00:00:00:01 dev #5 dst 192.0.2.2".to_string()
            )
        );
        let err = failed("deleting link", "#7", "No such device".into(), Some(libc::ENODEV));
        assert_eq!(err.to_string(), "deleting link #7: No such device");
        assert!(err.is_not_found());
    }
}
