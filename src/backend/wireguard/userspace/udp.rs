//! The UDP side of the userspace implementation: one socket per packet thread on the listen
//! port (SO_REUSEPORT), dual-stack where the host has IPv6; batched receive (recvmmsg with UDP
//! GRO: one call returns up to 64 KiB of datagrams per message) and batched send (sendmmsg with
//! UDP GSO: datagrams of one destination and size leave in one message). The kernel without
//! UDP GSO gets one datagram per message.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Datagrams per GSO message (the kernel's UDP_MAX_SEGMENTS is 64 on older kernels).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Bytes per GSO message.
pub const MAX_GSO_BYTES: usize = 65_000;
/// Socket buffers: room for a few batches of both directions.
const SOCKET_BUFFER: libc::c_int = 8 << 20;

pub struct UdpSock {
    fd: OwnedFd,
    /// An AF_INET6 socket that also carries IPv4 (v4-mapped addresses).
    dual: bool,
    gso: AtomicBool,
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a pointer to an int with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn sockaddr_from(addr: &SocketAddr, dual: bool) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let v6 = match (addr, dual) {
        (SocketAddr::V4(a), false) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            return (ss, size_of::<libc::sockaddr_in>() as libc::socklen_t);
        }
        (SocketAddr::V4(a), true) => SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0),
        (SocketAddr::V6(a), _) => *a,
    };
    let sin6 = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: v6.port().to_be(),
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: v6.ip().octets(),
        },
        sin6_scope_id: v6.scope_id(),
    };
    // SAFETY: sockaddr_in6 fits in sockaddr_storage.
    unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
    (ss, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
}

fn sockaddr_to(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 = unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, sin6.sin6_scope_id)),
            })
        }
        _ => None,
    }
}

impl UdpSock {
    fn bind(port: u16, v6: bool) -> io::Result<UdpSock> {
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain syscall; the result is checked and owned below.
        let raw = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        if v6 {
            setsockopt_int(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
        }
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            if setsockopt_int(raw, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
                let _ = setsockopt_int(raw, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
            }
        }
        // GRO is an optimisation: kernels without it deliver one datagram per message.
        let _ = setsockopt_int(raw, SOL_UDP, UDP_GRO, 1);
        let any = if v6 {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)
        } else {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
        };
        let (ss, len) = sockaddr_from(&any, v6);
        // SAFETY: ss/len describe a valid socket address.
        if unsafe { libc::bind(raw, (&ss as *const libc::sockaddr_storage).cast(), len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(UdpSock {
            fd,
            dual: v6,
            gso: AtomicBool::new(true),
        })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn local_port(&self) -> io::Result<u16> {
        // SAFETY: getsockname fills at most `len` bytes of ss.
        let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if unsafe {
            libc::getsockname(
                self.raw(),
                (&mut ss as *mut libc::sockaddr_storage).cast(),
                &mut len,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        sockaddr_to(&ss)
            .map(|a| a.port())
            .ok_or_else(|| io::Error::other("unknown socket family"))
    }

    /// Receive up to `bufs.len()` messages without blocking. Each result is (source, bytes,
    /// segment size): a GRO message holds `bytes` of datagrams of `segment size` each (the last
    /// may be shorter); without GRO the segment size equals the length.
    pub fn recv_batch(
        &self,
        bufs: &mut [Vec<u8>],
        out: &mut Vec<(SocketAddr, usize, usize)>,
    ) -> io::Result<usize> {
        out.clear();
        let n = bufs.len().min(64);
        // SAFETY: zeroed C structs are valid; every pointer below refers to storage that lives
        // until recvmmsg returns, with its length alongside.
        let mut addrs: Vec<libc::sockaddr_storage> = vec![unsafe { zeroed() }; n];
        let mut ctrl = vec![[0u64; 8]; n];
        let mut iovs: Vec<libc::iovec> = bufs[..n]
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = (0..n)
            .map(|i| {
                let mut m: libc::mmsghdr = unsafe { zeroed() };
                m.msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
                m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                m.msg_hdr.msg_iov = &mut iovs[i];
                m.msg_hdr.msg_iovlen = 1;
                m.msg_hdr.msg_control = ctrl[i].as_mut_ptr().cast();
                m.msg_hdr.msg_controllen = size_of::<[u64; 8]>() as _;
                m
            })
            .collect();
        // SAFETY: msgs describes n valid message headers.
        let got = unsafe {
            libc::recvmmsg(
                self.raw(),
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        for (i, m) in msgs.iter().enumerate().take(got as usize) {
            let len = m.msg_len as usize;
            let mut seg = len;
            // SAFETY: walks the control buffer the kernel filled, within msg_controllen.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&m.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                        if v > 0 {
                            seg = v as usize;
                        }
                    }
                    c = libc::CMSG_NXTHDR(&m.msg_hdr, c);
                }
            }
            if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                continue; // larger than any WireGuard datagram we accept
            }
            if let Some(src) = sockaddr_to(&addrs[i]) {
                out.push((src, len, seg.max(1)));
            }
        }
        Ok(out.len())
    }

    /// Send a batch (blocking while the socket buffer is full). Returns the messages that
    /// failed: UDP may lose packets, the tunnelled protocol recovers.
    pub fn send_batch(&self, batch: &SendBatch) -> usize {
        let mut failed = 0;
        let mut start = 0;
        while start < batch.msgs.len() {
            let end = (start + 64).min(batch.msgs.len());
            let use_gso = self.gso.load(Ordering::Relaxed);
            match self.send_some(batch, start, end, use_gso) {
                Ok(f) => {
                    failed += f;
                    start = end;
                }
                Err(e) if use_gso => {
                    tracing::info!(error = %e, "UDP segmentation offload refused; sending one datagram per message");
                    self.gso.store(false, Ordering::Relaxed);
                }
                Err(_) => {
                    failed += end - start;
                    start = end;
                }
            }
        }
        failed
    }

    fn send_some(&self, batch: &SendBatch, start: usize, end: usize, gso: bool) -> io::Result<usize> {
        // Expand GSO groups into single datagrams when GSO is off.
        let mut parts: Vec<(SocketAddr, usize, usize, usize)> = Vec::with_capacity(end - start);
        for m in &batch.msgs[start..end] {
            if gso || m.len <= m.seg {
                parts.push((m.dst, m.start, m.len, m.seg));
            } else {
                let mut off = 0;
                while off < m.len {
                    let l = m.seg.min(m.len - off);
                    parts.push((m.dst, m.start + off, l, l));
                    off += l;
                }
            }
        }
        let n = parts.len();
        let mut addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)> =
            parts.iter().map(|p| sockaddr_from(&p.0, self.dual)).collect();
        let mut iovs: Vec<libc::iovec> = parts
            .iter()
            .map(|p| libc::iovec {
                iov_base: batch.buf[p.1..].as_ptr() as *mut _,
                iov_len: p.2,
            })
            .collect();
        let mut ctrl = vec![[0u64; 4]; n];
        let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(n);
        for i in 0..n {
            // SAFETY: zeroed C structs are valid; pointers refer to the vectors above, which
            // outlive the sendmmsg call, with their lengths alongside.
            let mut m: libc::mmsghdr = unsafe { zeroed() };
            m.msg_hdr.msg_name = (&mut addrs[i].0 as *mut libc::sockaddr_storage).cast();
            m.msg_hdr.msg_namelen = addrs[i].1;
            m.msg_hdr.msg_iov = &mut iovs[i];
            m.msg_hdr.msg_iovlen = 1;
            let (len, seg) = (parts[i].2, parts[i].3);
            if len > seg {
                m.msg_hdr.msg_control = ctrl[i].as_mut_ptr().cast();
                // SAFETY: the control buffer holds one cmsg with a u16 (32 bytes are enough).
                unsafe {
                    m.msg_hdr.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
                    let c = libc::CMSG_FIRSTHDR(&m.msg_hdr);
                    (*c).cmsg_level = SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg as u16);
                }
            }
            msgs.push(m);
        }
        let mut done = 0usize;
        let mut failed = 0usize;
        while done < n {
            // SAFETY: msgs[done..] are valid message headers.
            let sent = unsafe {
                libc::sendmmsg(
                    self.raw(),
                    msgs[done..].as_mut_ptr(),
                    (n - done) as libc::c_uint,
                    0,
                )
            };
            if sent < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // A refused GSO message on the first try: the caller falls back.
                if done == 0
                    && gso
                    && parts[0].2 > parts[0].3
                    && matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
                {
                    return Err(e);
                }
                failed += 1;
                done += 1;
                continue;
            }
            done += sent as usize;
        }
        Ok(failed)
    }
}

/// Bind `count` sockets on `port` (0: a free port, shared by all); dual-stack when possible.
pub fn bind_group(port: u16, count: usize) -> io::Result<(Vec<UdpSock>, u16)> {
    let first = UdpSock::bind(port, true).or_else(|_| UdpSock::bind(port, false))?;
    let actual = first.local_port()?;
    let dual = first.dual;
    let mut socks = vec![first];
    for _ in 1..count.max(1) {
        socks.push(UdpSock::bind(actual, dual)?);
    }
    Ok((socks, actual))
}

/// One message of a send batch: `len` bytes at `start` for `dst`, in datagrams of `seg` bytes.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing {
    pub dst: SocketAddr,
    pub start: usize,
    pub len: usize,
    pub seg: usize,
}

/// Datagrams waiting to be sent, packed contiguously so equal-sized ones to one destination
/// form one GSO message.
#[derive(Default)]
pub struct SendBatch {
    pub buf: Vec<u8>,
    pub msgs: Vec<Outgoing>,
    /// Start of the reserved slot (between `reserve` and `commit`).
    slot: usize,
}

impl SendBatch {
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.msgs.clear();
    }

    /// Room for one datagram of at most `max` bytes at the end of the buffer.
    pub fn reserve(&mut self, max: usize) -> &mut [u8] {
        self.slot = self.buf.len();
        self.buf.resize(self.slot + max, 0);
        &mut self.buf[self.slot..]
    }

    /// Keep `len` bytes of the reserved slot as a datagram for `dst`; `None` drops the slot.
    pub fn commit(&mut self, dst: Option<SocketAddr>, len: usize) {
        let Some(dst) = dst.filter(|_| len > 0) else {
            self.buf.truncate(self.slot);
            return;
        };
        self.buf.truncate(self.slot + len);
        if let Some(last) = self.msgs.last_mut()
            && last.dst == dst
            && last.start + last.len == self.slot
            && last.len % last.seg == 0
            && len <= last.seg
            && last.len / last.seg < MAX_GSO_SEGMENTS
            && last.len + len <= MAX_GSO_BYTES
        {
            last.len += len;
            return;
        }
        self.msgs.push(Outgoing {
            dst,
            start: self.slot,
            len,
            seg: len,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_datagrams_to_one_destination_form_one_gso_message() {
        let a: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:51820".parse().unwrap();
        let mut batch = SendBatch::default();
        for (dst, len) in [(a, 100), (a, 100), (a, 60), (a, 100), (b, 100), (b, 0)] {
            let slot = batch.reserve(200);
            slot[..len].fill(7);
            batch.commit(Some(dst), len);
        }
        let shape: Vec<(SocketAddr, usize, usize, usize)> = batch
            .msgs
            .iter()
            .map(|m| (m.dst, m.start, m.len, m.seg))
            .collect();
        // The short one closes its group; the empty one is dropped.
        assert_eq!(
            shape,
            vec![(a, 0, 260, 100), (a, 260, 100, 100), (b, 360, 100, 100)]
        );
        assert_eq!(batch.buf.len(), 460);
    }

    #[test]
    fn sockaddr_roundtrip_maps_v4_on_dual_sockets() {
        for (addr, dual) in [
            ("192.0.2.7:51820", false),
            ("192.0.2.7:51820", true),
            ("[2001:db8::7]:51821", true),
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let (ss, _) = sockaddr_from(&addr, dual);
            assert_eq!(sockaddr_to(&ss), Some(addr));
        }
    }
}
