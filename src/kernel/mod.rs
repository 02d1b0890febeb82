//! The kernel seam: every read and write of kernel networking state goes through the `Netlink`
//! trait, expressed in our own domain types. `rtnl` is the real implementation (the only module
//! that imports rtnetlink); `fake` is an in-memory model of the kernel for unit tests.
//!
//! This module must not decide anything: it reads, applies what it is told, and reports events.
//! Spec: flanneld-behaviour.md section 9 (netlink conventions: main table, protocol boot).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use futures::stream::BoxStream;
use ipnet::IpNet;

#[cfg(any(test, feature = "fake-kernel"))]
pub mod fake;
pub mod rtnl;
pub mod wireguard;

/// Kernel errors name the operation and the object.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KernelError {
    #[error("{op} {object}: {message}")]
    Failed {
        op: String,
        object: String,
        message: String,
        errno: Option<i32>,
    },
    #[error("opening netlink socket: {0}")]
    Socket(String),
}

impl KernelError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Failed { errno, .. } => *errno,
            KernelError::Socket(_) => None,
        }
    }
    /// EEXIST
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }
    /// ENOENT / ESRCH / ENODEV: the object is already gone.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::ENODEV)
        )
    }
}

pub type KResult<T> = Result<T, KernelError>;

/// A MAC address; displays as lowercase `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!(
                "invalid MAC address {s:?}: expected six colon-separated bytes"
            ));
        }
        let mut out = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(format!(
                    "invalid MAC address {s:?}: byte {p:?} is not two hex digits"
                ));
            }
            out[i] = u8::from_str_radix(p, 16)
                .map_err(|_| format!("invalid MAC address {s:?}: byte {p:?} is not hex"))?;
        }
        Ok(MacAddr(out))
    }
}

/// VXLAN attributes as read from an existing device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VxlanInfo {
    pub vni: u32,
    /// 0 when the attribute is absent.
    pub port: u16,
    pub local: Option<IpAddr>,
    pub group: Option<IpAddr>,
    /// 0 when absent.
    pub dev_index: u32,
    pub learning: bool,
    pub gbp: bool,
    pub l2miss: bool,
}

/// A link as listed by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IFLA_INFO_KIND (`vxlan`, `bridge`, `veth`, `tun`, ...); `None` for physical devices.
    pub kind: Option<String>,
    pub mtu: u32,
    pub mac: Option<MacAddr>,
    /// IFF_UP is set.
    pub up: bool,
    pub vxlan: Option<VxlanInfo>,
    /// The tunnel attributes of an `ipip` link.
    pub ipip: Option<IpipInfo>,
}

/// IPIP tunnel attributes as read from an existing device (`ip -d link show`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpipInfo {
    /// `None` when the attribute is absent or `any` (0.0.0.0).
    pub local: Option<Ipv4Addr>,
    pub remote: Option<Ipv4Addr>,
    /// 0 = inherit.
    pub ttl: u8,
    pub pmtudisc: bool,
    /// The underlay device the tunnel is bound to; 0 when unbound.
    pub link: u32,
}

/// What to create for an ipip device (`ip link add <name> txqueuelen 0 mtu <mtu> type ipip local
/// <local> ttl inherit tos 0 nopmtudisc`; remote any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpipSpec {
    pub name: String,
    pub local: Ipv4Addr,
    pub mtu: u32,
}

/// What to create for a vxlan device (`ip link add <name> type vxlan id <vni> ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// 0 = kernel default (8472); the attribute is then not sent.
    pub port: u16,
    pub local: IpAddr,
    pub dev_index: u32,
    pub learning: bool,
    pub gbp: bool,
    pub mtu: u32,
    pub mac: MacAddr,
}

/// Address flags relevant for interface selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddrFlags {
    pub permanent: bool,
    pub deprecated: bool,
    pub temporary: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub flags: AddrFlags,
}

/// rtm_protocol values we use.
pub const RTPROT_KERNEL: u8 = 2;
pub const RTPROT_BOOT: u8 = 3;
/// The protocol of the routes this daemon writes (upstream writes `boot`): it marks them as ours,
/// so an operator's route is never mistaken for one (`reconcile::is_owned`). Unassigned in
/// `linux/rtnetlink.h`; `ip route` shows it as `proto 70`, or as `proto flannel` with the line
/// `70 flannel` in `/etc/iproute2/rt_protos.d/flannel.conf`.
pub const RTPROT_FLANNEL: u8 = 70;
/// rtm_scope values.
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;
pub const RT_SCOPE_HOST: u8 = 254;
/// The main routing table.
pub const RT_TABLE_MAIN: u32 = 254;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    Unicast,
    Blackhole,
    Local,
    Other(u8),
}

/// A route in our terms. `oif` is `None` for routes without an output device (blackhole).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub protocol: u8,
    pub scope: u8,
    pub kind: RouteKind,
    pub onlink: bool,
    pub prefsrc: Option<IpAddr>,
    /// The route has several next hops (RTA_MULTIPATH); `oif`/`gateway` are then unset.
    pub multipath: bool,
}

impl Route {
    /// A main-table unicast route of ours (protocol `RTPROT_FLANNEL`), as `ip route replace ...
    /// proto 70` would create it.
    pub fn unicast(dst: IpNet, gateway: Option<IpAddr>, oif: Option<u32>) -> Route {
        Route {
            dst,
            gateway,
            oif,
            table: RT_TABLE_MAIN,
            protocol: RTPROT_FLANNEL,
            scope: RT_SCOPE_UNIVERSE,
            kind: RouteKind::Unicast,
            onlink: false,
            prefsrc: None,
            multipath: false,
        }
    }
}

/// NUD states.
pub const NUD_PERMANENT: u16 = 0x80;
pub const NUD_NOARP: u16 = 0x40;
pub const NUD_REACHABLE: u16 = 0x02;

/// A neighbour (ARP/NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neigh {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: Option<MacAddr>,
    pub state: u16,
}

/// A bridge forwarding entry on a vxlan device (`bridge fdb ... dev flannel.1 dst <ip> self permanent`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fdb {
    pub index: u32,
    pub mac: MacAddr,
    pub dst: Option<IpAddr>,
    /// NTF_SELF
    pub self_flag: bool,
    pub permanent: bool,
}

/// One kernel change, applied with replace semantics (idempotent) or delete.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    ReplaceRoute(Route),
    DeleteRoute(Route),
    ReplaceNeigh(Neigh),
    DeleteNeigh(Neigh),
    ReplaceFdb(Fdb),
    DeleteFdb(Fdb),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::ReplaceRoute(r) | Op::DeleteRoute(r) => {
                let verb = if matches!(self, Op::ReplaceRoute(_)) {
                    "replace"
                } else {
                    "delete"
                };
                write!(f, "route {verb} {}", r.dst)?;
                if let Some(gw) = r.gateway {
                    write!(f, " via {gw}")?;
                }
                if let Some(oif) = r.oif {
                    write!(f, " dev #{oif}")?;
                }
                if r.onlink {
                    write!(f, " onlink")?;
                }
                Ok(())
            }
            Op::ReplaceNeigh(n) | Op::DeleteNeigh(n) => {
                let verb = if matches!(self, Op::ReplaceNeigh(_)) {
                    "replace"
                } else {
                    "delete"
                };
                write!(f, "neigh {verb} {} dev #{}", n.ip, n.index)?;
                if let Some(mac) = n.mac {
                    write!(f, " lladdr {mac}")?;
                }
                Ok(())
            }
            Op::ReplaceFdb(e) | Op::DeleteFdb(e) => {
                let verb = if matches!(self, Op::ReplaceFdb(_)) {
                    "replace"
                } else {
                    "delete"
                };
                write!(f, "fdb {verb} {} dev #{}", e.mac, e.index)?;
                if let Some(dst) = e.dst {
                    write!(f, " dst {dst}")?;
                }
                Ok(())
            }
        }
    }
}

/// A change the kernel reported on its multicast groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    LinkChanged(Link),
    LinkDeleted {
        index: u32,
        name: String,
    },
    AddrAdded(Addr),
    AddrDeleted(Addr),
    RouteAdded(Route),
    RouteDeleted(Route),
    NeighChanged(Neigh),
    NeighDeleted(Neigh),
    FdbChanged(Fdb),
    FdbDeleted(Fdb),
    /// The event socket overflowed (ENOBUFS): events were lost, do a full resync.
    Overrun,
}

/// Everything interface selection needs, read in one go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetSnapshot {
    pub links: Vec<Link>,
    pub addrs: Vec<Addr>,
    /// Main-table routes of both families.
    pub routes: Vec<Route>,
}

/// The kernel seam. Implementations: `rtnl::RtNetlink` (real) and `fake::FakeKernel`.
#[async_trait::async_trait]
pub trait Netlink: Send + Sync {
    async fn links(&self) -> KResult<Vec<Link>>;
    async fn link_by_name(&self, name: &str) -> KResult<Option<Link>>;
    /// All addresses of both families.
    async fn addrs(&self) -> KResult<Vec<Addr>>;
    /// Main-table routes of both families.
    async fn routes(&self) -> KResult<Vec<Route>>;
    /// Neighbour entries of both families on one link.
    async fn neighs(&self, index: u32) -> KResult<Vec<Neigh>>;
    /// FDB entries (AF_BRIDGE neighbours) on one link.
    async fn fdbs(&self, index: u32) -> KResult<Vec<Fdb>>;
    /// `ip route get <dst>`.
    async fn route_get(&self, dst: IpAddr) -> KResult<Vec<Route>>;

    async fn create_vxlan(&self, spec: &VxlanSpec) -> KResult<Link>;
    /// Create an ipip tunnel device (spec 9.4); fails with EEXIST when the name is taken.
    async fn create_ipip(&self, spec: &IpipSpec) -> KResult<Link>;
    /// `ip link add <name> mtu <mtu> type wireguard` (the kernel module; the configuration goes
    /// over generic netlink, `kernel::wireguard`). The default says the kind is unsupported.
    async fn create_wireguard(&self, name: &str, mtu: u32) -> KResult<Link> {
        let _ = mtu;
        Err(KernelError::Failed {
            op: "creating wireguard device".into(),
            object: name.to_string(),
            message: "not supported by this kernel seam".into(),
            errno: Some(libc::EOPNOTSUPP),
        })
    }
    async fn delete_link(&self, index: u32) -> KResult<()>;
    async fn set_link_up(&self, index: u32) -> KResult<()>;
    async fn set_link_mtu(&self, index: u32, mtu: u32) -> KResult<()>;
    async fn add_addr(&self, addr: &Addr) -> KResult<()>;
    async fn del_addr(&self, addr: &Addr) -> KResult<()>;

    /// Apply many changes, pipelined; one result per op, in the same order.
    async fn apply(&self, ops: &[Op]) -> Vec<KResult<()>>;

    /// Subscribe to link, address, route and neighbour events (both families and AF_BRIDGE).
    async fn subscribe(&self) -> KResult<BoxStream<'static, KernelEvent>>;

    /// Links, addresses and main-table routes in one call.
    async fn snapshot(&self) -> KResult<NetSnapshot> {
        Ok(NetSnapshot {
            links: self.links().await?,
            addrs: self.addrs().await?,
            routes: self.routes().await?,
        })
    }
}
