//! An interop peer for the udp backend, written from the spec (flanneld-behaviour.md 9.3), not from
//! upstream's source: what upstream's single-threaded proxy does on a node. A TUN device
//! `flannel0` (IFF_TUN|IFF_NO_PI, one queue, not persistent) with `<subnet network>/32`, MTU ext-28,
//! up, route `<Network> dev flannel0`; a UDP socket on `<node ip>:<port>`. One packet per read:
//! from the TUN device, the route whose subnet holds the destination gives the peer, the TTL is
//! decremented (RFC 1624 fix, dropped at 0) and the packet is sent to `<peer>:<local port>`; from
//! the socket, any datagram (no checks at all, as upstream) has its TTL decremented and is written
//! to the TUN device. Buffers are MTU-sized. Runs on a thread of the test process until dropped.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::netns::Netns;

/// (subnet network address, prefix length) -> the peer's public IP.
type Routes = Vec<((Ipv4Addr, u8), Ipv4Addr)>;

pub struct InteropPeer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    routes: Arc<Mutex<Routes>>,
    /// Datagrams received on the socket.
    pub rx: Arc<AtomicU64>,
    /// Datagrams sent to peers.
    pub tx: Arc<AtomicU64>,
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    pad: [u8; 22],
}

fn open_tun() -> OwnedFd {
    // SAFETY: plain open(2) of a fixed path; checked below.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(
        fd >= 0,
        "opening /dev/net/tun: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is valid and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        pad: [0; 22],
    };
    req.name[..8].copy_from_slice(b"flannel0");
    // SAFETY: TUNSETIFF with a struct laid out as `struct ifreq`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut req as *mut IfReq) };
    assert_eq!(rc, 0, "TUNSETIFF flannel0: {}", std::io::Error::last_os_error());
    fd
}

/// RFC 1624 TTL decrement; false when the packet must be dropped.
fn decrement_ttl(p: &mut [u8]) -> bool {
    if p.len() < 20 || p[8] <= 1 {
        return false;
    }
    let old = u16::from_be_bytes([p[8], p[9]]);
    p[8] -= 1;
    let new = u16::from_be_bytes([p[8], p[9]]);
    let hc = u16::from_be_bytes([p[10], p[11]]);
    let mut sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    true
}

impl InteropPeer {
    /// Set up flannel0 and the socket in `ns` and start proxying. `subnet` is the node's lease.
    pub fn start(
        ns: &Netns,
        node_ip: Ipv4Addr,
        subnet: (Ipv4Addr, u8),
        network: &str,
        port: u16,
        mtu: usize,
    ) -> InteropPeer {
        let (tun, sock) = ns.run(move || {
            let sock =
                UdpSocket::bind(SocketAddrV4::new(node_ip, port)).expect("binding the interop peer's socket");
            (open_tun(), sock)
        });
        ns.sh(&format!(
            "ip addr add {}/32 dev flannel0 && ip link set flannel0 mtu {mtu} up && ip route add {network} dev flannel0",
            subnet.0
        ));
        sock.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let routes: Arc<Mutex<Routes>> = Arc::default();
        let (rx, tx) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let thread = {
            let (stop, routes, rx, tx) = (stop.clone(), routes.clone(), rx.clone(), tx.clone());
            std::thread::spawn(move || proxy(tun, sock, port, mtu, &stop, &routes, &rx, &tx))
        };
        InteropPeer {
            stop,
            thread: Some(thread),
            routes,
            rx,
            tx,
        }
    }

    /// Replace the route table (what upstream's lease events maintain).
    pub fn set_routes(&self, routes: Routes) {
        *self.routes.lock().unwrap() = routes;
    }
}

impl Drop for InteropPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn proxy(
    tun: OwnedFd,
    sock: UdpSocket,
    port: u16,
    mtu: usize,
    stop: &AtomicBool,
    routes: &Mutex<Routes>,
    rx: &AtomicU64,
    tx: &AtomicU64,
) {
    let mut buf = vec![0u8; mtu];
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [
            libc::pollfd {
                fd: tun.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds, 100 ms timeout.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) } <= 0 {
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // SAFETY: buf is valid for buf.len() bytes.
            let n = unsafe { libc::read(tun.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 20 {
                let p = &mut buf[..n as usize];
                let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
                let peer = routes.lock().unwrap().iter().find_map(|((net, len), ip)| {
                    let mask = if *len == 0 {
                        0
                    } else {
                        u32::MAX << (32 - u32::from(*len))
                    };
                    (u32::from(dst) & mask == u32::from(*net)).then_some(*ip)
                });
                if let Some(ip) = peer
                    && decrement_ttl(p)
                    && sock.send_to(p, SocketAddrV4::new(ip, port)).is_ok()
                {
                    tx.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        if fds[1].revents & libc::POLLIN != 0 {
            while let Ok((n, _)) = sock.recv_from(&mut buf) {
                rx.fetch_add(1, Ordering::SeqCst);
                let p = &mut buf[..n];
                if n >= 20 && decrement_ttl(p) {
                    // SAFETY: p is valid for p.len() bytes.
                    unsafe { libc::write(tun.as_raw_fd(), p.as_ptr().cast(), p.len()) };
                }
            }
        }
    }
}
