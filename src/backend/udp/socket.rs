//! The udp backend's UDP sockets over `libc` (the only module that makes these syscalls): one per
//! worker, all bound to the interface address and Port with SO_REUSEPORT so the kernel spreads
//! peers over the workers. Receives in batches (`recvmmsg`) with UDP_GRO (the kernel hands over
//! runs of equal-sized datagrams in one buffer) and sends in batches (`sendmmsg`) with
//! UDP_SEGMENT (one message carries up to 64 equal-sized datagrams). Each feature is probed and
//! the socket falls back to plain datagrams without it. Spec: flanneld-behaviour.md 9.3 (socket
//! bound to the interface address : Port).

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[derive(Debug, thiserror::Error)]
#[error("{step} for the udp backend's socket on {addr}: {source}")]
pub struct SocketError {
    pub step: &'static str,
    pub addr: SocketAddrV4,
    pub source: io::Error,
}

/// Socket buffer size asked for (SO_RCVBUFFORCE/SO_SNDBUFFORCE as root, else capped by sysctl).
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// One UDP socket of the data path.
#[derive(Debug)]
pub struct UdpSock {
    fd: OwnedFd,
    /// UDP_SEGMENT works (kernel 4.18+).
    pub gso: bool,
    /// UDP_GRO is on (kernel 5.0+).
    pub gro: bool,
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a pointer to one int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr = libc::in_addr {
        s_addr: u32::from(*addr.ip()).to_be(),
    };
    sa
}

fn from_sockaddr(sa: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    )
}

impl UdpSock {
    /// A non-blocking socket bound to `addr` with SO_REUSEPORT.
    pub fn bind(addr: SocketAddrV4) -> Result<UdpSock, SocketError> {
        let err = |step| move |source| SocketError { step, addr, source };
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(err("creating")(io::Error::last_os_error()));
        }
        // SAFETY: fd was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).map_err(err("setting SO_REUSEPORT"))?;
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            if setsockopt_int(raw, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
                let _ = setsockopt_int(raw, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
            }
        }
        let sa = sockaddr(addr);
        // SAFETY: sa is a valid sockaddr_in of the given size.
        let rc = unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_in).cast(),
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(err("binding")(io::Error::last_os_error()));
        }
        let gro = setsockopt_int(raw, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
        // Probe UDP_SEGMENT: setting a socket-wide size of 0 is a no-op where it is supported.
        let gso = setsockopt_int(raw, libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok();
        Ok(UdpSock { fd, gso, gro })
    }
}

impl AsRawFd for UdpSock {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Space for one cmsg carrying an int (UDP_GRO / UDP_SEGMENT), 8-byte aligned.
const CMSG_BUF: usize = 64;

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct CmsgBuf([u8; CMSG_BUF]);

/// One received message: `len` bytes in its buffer from `from`; `gso_size` > 0 when the kernel
/// coalesced several datagrams of that size (the last may be shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddrV4,
    pub gso_size: usize,
    pub truncated: bool,
}

/// Reusable receive state: `batch` buffers of `buf_size` bytes and their headers.
pub struct RecvBatch {
    pub bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    cmsgs: Vec<CmsgBuf>,
    hdrs: Vec<libc::mmsghdr>,
    pub received: Vec<Received>,
}

// SAFETY: the raw pointers in the headers only ever point into this struct's own buffers and are
// rebuilt before each use.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new(batch: usize, buf_size: usize) -> RecvBatch {
        RecvBatch {
            bufs: (0..batch).map(|_| vec![0u8; buf_size]).collect(),
            // SAFETY: plain old data; zero is valid.
            addrs: vec![unsafe { mem::zeroed() }; batch],
            iovs: Vec::with_capacity(batch),
            cmsgs: vec![CmsgBuf([0; CMSG_BUF]); batch],
            hdrs: Vec::with_capacity(batch),
            received: Vec::with_capacity(batch),
        }
    }

    /// One `recvmmsg` without waiting; fills `received`. `WouldBlock` when nothing is queued.
    pub fn recv(&mut self, sock: &UdpSock) -> io::Result<usize> {
        let n = self.bufs.len();
        self.iovs.clear();
        self.hdrs.clear();
        self.received.clear();
        for b in &mut self.bufs {
            self.iovs.push(libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            });
        }
        for i in 0..n {
            // SAFETY: plain old data; zero is valid.
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.cmsgs[i].0.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = CMSG_BUF as _;
            self.hdrs.push(h);
        }
        // SAFETY: every header points at live buffers owned by self, sized as declared.
        let got = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as _,
                libc::MSG_DONTWAIT as _,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        for h in &self.hdrs[..got as usize] {
            let i = self.received.len();
            let mut gso_size = 0;
            // SAFETY: the kernel filled msg_control with msg_controllen bytes of cmsgs.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                        let mut v: libc::c_int = 0;
                        std::ptr::copy_nonoverlapping(
                            libc::CMSG_DATA(c),
                            (&mut v as *mut libc::c_int).cast(),
                            mem::size_of::<libc::c_int>(),
                        );
                        gso_size = v.max(0) as usize;
                    }
                    c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
                }
            }
            self.received.push(Received {
                len: h.msg_len as usize,
                from: from_sockaddr(&self.addrs[i]),
                gso_size,
                truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            });
        }
        Ok(got as usize)
    }
}

/// One message to send: `len` bytes at `start` of the send buffer to `to`, cut into datagrams of
/// `segment` bytes by the kernel when `segment` > 0 (UDP_SEGMENT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    pub start: usize,
    pub len: usize,
    pub to: SocketAddrV4,
    pub segment: u16,
}

/// Reusable send state.
#[derive(Default)]
pub struct SendBatch {
    addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    cmsgs: Vec<CmsgBuf>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: see RecvBatch.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// Send `msgs` (slices of `buf`) with `sendmmsg`, continuing after a partial send. A message
    /// the kernel refuses is skipped; returns how many were, and the last error.
    pub fn send(&mut self, sock: &UdpSock, buf: &[u8], msgs: &[Outgoing]) -> (usize, Option<io::Error>) {
        let n = msgs.len();
        self.addrs.clear();
        self.iovs.clear();
        self.hdrs.clear();
        self.cmsgs.clear();
        self.cmsgs.resize(n, CmsgBuf([0; CMSG_BUF]));
        for m in msgs {
            self.addrs.push(sockaddr(m.to));
            self.iovs.push(libc::iovec {
                iov_base: buf[m.start..].as_ptr() as *mut libc::c_void,
                iov_len: m.len,
            });
        }
        for (i, m) in msgs.iter().enumerate() {
            // SAFETY: plain old data; zero is valid.
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            if m.segment > 0 {
                // SAFETY: CMSG_SPACE is a pure size computation.
                let space = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize;
                h.msg_hdr.msg_control = self.cmsgs[i].0.as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = space as _;
                // SAFETY: the control buffer holds CMSG_SPACE(2) bytes, 8-byte aligned.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
                    std::ptr::copy_nonoverlapping(m.segment.to_ne_bytes().as_ptr(), libc::CMSG_DATA(c), 2);
                }
            }
            self.hdrs.push(h);
        }
        let (mut done, mut failed, mut last_err) = (0, 0, None);
        while done < n {
            // SAFETY: headers point at live buffers (self's and `buf`), sized as declared.
            let rc = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    self.hdrs[done..].as_mut_ptr(),
                    (n - done) as _,
                    0,
                )
            };
            if rc >= 0 {
                done += rc as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                // The socket buffer is full: wait until it drains rather than drop.
                io::ErrorKind::WouldBlock => wait_writable(sock.as_raw_fd()),
                _ => {
                    failed += 1;
                    done += 1;
                    last_err = Some(e);
                }
            }
        }
        (failed, last_err)
    }
}

fn wait_writable(fd: RawFd) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a bounded wait.
    unsafe { libc::poll(&mut p, 1, 100) };
}
