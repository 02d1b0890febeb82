//! TUN devices through `/dev/net/tun` (the only module that opens it): opening one queue of a
//! multi-queue device (IFF_TUN|IFF_NO_PI|IFF_MULTI_QUEUE, optionally IFF_VNET_HDR), making the
//! device persistent, enabling offloads (TUNSETOFFLOAD), and non-blocking reads and writes of one
//! packet each. It must not configure addresses, MTU or routes: those go through the kernel seam
//! (`kernel::Netlink`) like every other device. Serves every backend with a userspace data path: udp's
//! `flannel0` and the userspace WireGuard device (each picks its own flags and offloads). Written directly over `libc` (already a dependency; its ioctl numbers
//! are right for every architecture) rather than a TUN crate: we need TUNSETPERSIST to re-attach a
//! restarted daemon to the same device, per-queue file descriptors for our own worker threads, and
//! our own offload code between the socket and the device, which crates bundle differently.
//! Spec: flanneld-behaviour.md 9.3 (TUN device `flannel0`, IFF_TUN|IFF_NO_PI).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("opening /dev/net/tun for {name}: {source}")]
    Open { name: String, source: io::Error },
    #[error("attaching a queue to TUN device {name} (TUNSETIFF flags {flags:#x}): {source}")]
    Attach {
        name: String,
        flags: i32,
        source: io::Error,
    },
    #[error("{step} on TUN device {name}: {source}")]
    Ioctl {
        step: &'static str,
        name: String,
        source: io::Error,
    },
    #[error("TUN device name {0:?} is empty, too long (15 bytes at most) or contains NUL")]
    BadName(String),
}

impl TunError {
    /// The errno behind the error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            TunError::Open { source, .. }
            | TunError::Attach { source, .. }
            | TunError::Ioctl { source, .. } => source.raw_os_error(),
            TunError::BadName(_) => None,
        }
    }
}

/// Offload features the device may hand us (TUNSETOFFLOAD).
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;
pub const TUN_F_USO4: u32 = 0x20;
pub const TUN_F_USO6: u32 = 0x40;

/// `sizeof(struct virtio_net_hdr)`, the header size we ask for (TUNSETVNETHDRSZ).
pub const VNET_HDR_SIZE: libc::c_int = 10;

/// How a queue is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOptions {
    /// IFF_VNET_HDR: every packet carries a `virtio_net_hdr` (needed for offloads).
    pub vnet_hdr: bool,
}

/// One queue (file descriptor) of a TUN device, non-blocking.
#[derive(Debug)]
pub struct TunQueue {
    fd: OwnedFd,
    name: String,
}

#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifreq(name: &str, flags: i32) -> Result<IfReqFlags, TunError> {
    let c = CString::new(name).map_err(|_| TunError::BadName(name.to_string()))?;
    let bytes = c.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ || bytes.len() < 2 {
        return Err(TunError::BadName(name.to_string()));
    }
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: flags as libc::c_short,
        _pad: [0; 22],
    };
    for (d, s) in req.name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

impl TunQueue {
    /// Attach a new queue to the multi-queue TUN device `name`, creating the device if it does
    /// not exist. Fails with EINVAL when a device of that name exists with other flags (for
    /// example a single-queue TUN, or a TAP), with EBUSY when it is not a TUN/TAP device in use.
    pub fn open(name: &str, opts: QueueOptions) -> Result<TunQueue, TunError> {
        let path = c"/dev/net/tun";
        // SAFETY: a valid NUL-terminated path; the result is checked.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(TunError::Open {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: fd was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut flags = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE;
        if opts.vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        let mut req = ifreq(name, flags)?;
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which IfReqFlags lays out (name,
        // flags, padding to the union's size).
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut req as *mut IfReqFlags) };
        if rc < 0 {
            return Err(TunError::Attach {
                name: name.to_string(),
                flags,
                source: io::Error::last_os_error(),
            });
        }
        let q = TunQueue {
            fd,
            name: name.to_string(),
        };
        if opts.vnet_hdr {
            let size: libc::c_int = VNET_HDR_SIZE;
            // SAFETY: TUNSETVNETHDRSZ reads one int.
            let rc = unsafe {
                libc::ioctl(
                    q.fd.as_raw_fd(),
                    libc::TUNSETVNETHDRSZ as _,
                    &size as *const libc::c_int,
                )
            };
            q.check(rc, "TUNSETVNETHDRSZ")?;
        }
        Ok(q)
    }

    fn check(&self, rc: libc::c_int, step: &'static str) -> Result<(), TunError> {
        if rc < 0 {
            return Err(TunError::Ioctl {
                step,
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Keep the device when the last queue closes (TUNSETPERSIST), so a restarted daemon
    /// re-attaches to it and its address and routes stay in place.
    pub fn set_persist(&self, persist: bool) -> Result<(), TunError> {
        // SAFETY: TUNSETPERSIST takes its argument by value.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETPERSIST as _,
                libc::c_ulong::from(persist),
            )
        };
        self.check(rc, "TUNSETPERSIST")
    }

    /// Enable offloads (TUN_F_* bits); the kernel refuses bits it does not know with EINVAL.
    pub fn set_offload(&self, features: u32) -> Result<(), TunError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD as _,
                features as libc::c_ulong,
            )
        };
        self.check(rc, "TUNSETOFFLOAD")
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Read one packet; `WouldBlock` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Write one packet (with its virtio-net header when the queue has IFF_VNET_HDR).
    pub fn write(&self, pkt: &[u8]) -> io::Result<usize> {
        // SAFETY: pkt is valid for reads of pkt.len() bytes.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Open `count` queues of the device `name` (at least one).
pub fn open_queues(name: &str, count: usize, opts: QueueOptions) -> Result<Vec<TunQueue>, TunError> {
    (0..count.max(1)).map(|_| TunQueue::open(name, opts)).collect()
}
