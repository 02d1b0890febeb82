//! The TUN device of the userspace implementation: a persistent, multi-queue TUN with a
//! `virtio_net_hdr` on every packet and TCP segmentation offload, so the kernel hands over and
//! accepts 64 KiB super-packets (`offload`). Persistent: the device, its address and routes
//! survive a restart of the daemon, which attaches to it again.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// One queue of the TUN device (non-blocking).
pub struct TunQueue {
    fd: OwnedFd,
}

fn ioctl_err(what: &str, name: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what} on TUN device {name}: {e}"))
}

impl TunQueue {
    /// Open (creating if needed) one queue of `name`. The first queue of a new device also
    /// makes it persistent and enables the offloads.
    fn open(name: &str, first: bool) -> io::Result<TunQueue> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {name:?}"),
            ));
        }
        let file = File::options().read(true).write(true).open("/dev/net/tun")?;
        let fd: OwnedFd = file.into();
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: the request struct is an `ifreq` the kernel reads and writes within its size.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
            return Err(ioctl_err("TUNSETIFF", name));
        }
        let hdr_len: libc::c_int = super::offload::VNET_HDR_LEN as libc::c_int;
        // SAFETY: passes a pointer to an int, as TUNSETVNETHDRSZ expects.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ as _, &hdr_len) } < 0 {
            return Err(ioctl_err("TUNSETVNETHDRSZ", name));
        }
        if first {
            // SAFETY: integer arguments only.
            if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST as _, 1 as libc::c_ulong) } < 0 {
                return Err(ioctl_err("TUNSETPERSIST", name));
            }
            let offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
            // SAFETY: integer arguments only.
            if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD as _, offloads as libc::c_ulong) } < 0 {
                return Err(ioctl_err("TUNSETOFFLOAD", name));
            }
        }
        set_nonblocking(fd.as_raw_fd())?;
        Ok(TunQueue { fd })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// One packet with its vnet header; `WouldBlock` when none is waiting.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reads at most buf.len() bytes into buf.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// One packet with its vnet header.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: writes buf.len() bytes from buf.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Open `queues` queues of the TUN device `name` (creating a persistent device, or attaching to
/// the one a previous run left).
pub fn open_queues(name: &str, queues: usize) -> io::Result<Vec<TunQueue>> {
    (0..queues.max(1)).map(|i| TunQueue::open(name, i == 0)).collect()
}

/// An eventfd to wake the packet threads out of `poll`.
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        // SAFETY: plain syscall; the result is checked and owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Waker {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a u64, as eventfd expects.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}
