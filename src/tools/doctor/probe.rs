//! Active reachability probes: ICMP echo requests to many addresses at once (one raw socket per
//! family), repeated a few times within the timeout, each answered or not. The kernel chooses the
//! route and the source address, exactly as for any other packet of the node, so a probe of a
//! peer's overlay address (the `.0` address on its `flannel.<VNI>`) travels through the VXLAN
//! tunnel, and one of its public IP through the underlay.
//!
//! The only module of doctor that opens sockets besides netlink; it sends nothing but echo
//! requests and changes nothing. Raw ICMP sockets need root or CAP_NET_RAW.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Why probing could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "opening a raw {family} socket for the reachability probes: {source} (doctor needs root or \
         CAP_NET_RAW to probe; --no-probe skips the probes)"
    )]
    Socket {
        family: &'static str,
        source: std::io::Error,
    },
}

/// How one target answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Answered,
    NoAnswer,
    /// The request could not be sent (e.g. no route): the kernel's reason.
    NotSent(String),
}

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
const PAYLOAD: &[u8] = b"flanneld doctor!";
/// Requests per target within the timeout (the first may wait for ARP/ND resolution).
const ROUNDS: u32 = 3;

/// The RFC 1071 checksum of an ICMPv4 message (ICMPv6 checksums are filled in by the kernel).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], chunk.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request of `ident`/`seq` for the family of the target.
pub fn echo_request(v6: bool, ident: u16, seq: u16) -> Vec<u8> {
    let mut packet = vec![if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 }, 0, 0, 0];
    packet.extend_from_slice(&ident.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(PAYLOAD);
    if !v6 {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// The sequence number of an echo reply of ours in a received datagram (IPv4 raw sockets deliver
/// the IP header too, IPv6 ones do not).
pub fn reply_seq(v6: bool, datagram: &[u8], ident: u16) -> Option<u16> {
    let icmp = if v6 {
        datagram
    } else {
        let header_len = usize::from(datagram.first()? & 0x0f) * 4;
        datagram.get(header_len..)?
    };
    let reply = if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
    if icmp.len() < 8 || icmp[0] != reply || icmp[1] != 0 {
        return None;
    }
    (u16::from_be_bytes([icmp[4], icmp[5]]) == ident).then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
}

fn raw_socket(v6: bool) -> Result<OwnedFd, ProbeError> {
    let (domain, protocol, family) = if v6 {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6, "ICMPv6")
    } else {
        (libc::AF_INET, libc::IPPROTO_ICMP, "ICMP")
    };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(ProbeError::Socket {
            family,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` is a new, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send_to(fd: &OwnedFd, target: IpAddr, packet: &[u8]) -> Result<(), String> {
    // SAFETY: sockaddr_storage is plain data; zeroed is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match target {
        IpAddr::V4(ip) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(ip) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = ip.octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: the buffer and address are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&storage as *const libc::sockaddr_storage).cast(),
            len as libc::socklen_t,
        )
    };
    if sent < 0 {
        Err(std::io::Error::last_os_error().to_string())
    } else {
        Ok(())
    }
}

/// The datagram and its source address, or `None` when nothing more is queued.
fn recv_from(fd: &OwnedFd, buf: &mut [u8]) -> Option<(usize, IpAddr)> {
    // SAFETY: sockaddr_storage is plain data; zeroed is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the buffer and address storage are valid for the lengths given.
    let got = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    let got = usize::try_from(got).ok()?;
    let source = match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel filled in a sockaddr_in for an AF_INET socket.
            let sin = unsafe { &*(&storage as *const _ as *const libc::sockaddr_in) };
            IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes())
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel filled in a sockaddr_in6 for an AF_INET6 socket.
            let sin6 = unsafe { &*(&storage as *const _ as *const libc::sockaddr_in6) };
            IpAddr::from(sin6.sin6_addr.s6_addr)
        }
        _ => return Some((got, IpAddr::from([0, 0, 0, 0]))),
    };
    Some((got, source))
}

/// Sends echo requests to every target (`ROUNDS` times, spread over `timeout`, to the ones that
/// have not answered) and returns each target's outcome, in the order of `targets`.
pub fn probe(targets: &[IpAddr], timeout: Duration) -> Result<Vec<Outcome>, ProbeError> {
    let mut outcomes = vec![Outcome::NoAnswer; targets.len()];
    if targets.is_empty() {
        return Ok(outcomes);
    }
    let v4 = targets
        .iter()
        .any(IpAddr::is_ipv4)
        .then(|| raw_socket(false))
        .transpose()?;
    let v6 = targets
        .iter()
        .any(IpAddr::is_ipv6)
        .then(|| raw_socket(true))
        .transpose()?;
    let ident: u16 = rand::random();
    let start = Instant::now();
    let deadline = start + timeout;
    let mut buf = vec![0u8; 2048];
    for round in 0..ROUNDS {
        for (seq, target) in targets.iter().enumerate() {
            if outcomes[seq] == Outcome::Answered {
                continue;
            }
            let Some(fd) = (if target.is_ipv6() { &v6 } else { &v4 }) else {
                continue;
            };
            let seq16 = u16::try_from(seq).unwrap_or(u16::MAX);
            if let Err(e) = send_to(fd, *target, &echo_request(target.is_ipv6(), ident, seq16)) {
                outcomes[seq] = Outcome::NotSent(e);
            }
        }
        let round_end = start + timeout * (round + 1) / ROUNDS;
        loop {
            if outcomes.iter().all(|o| *o == Outcome::Answered) {
                return Ok(outcomes);
            }
            let now = Instant::now();
            if now >= round_end.min(deadline) {
                break;
            }
            let wait = (round_end - now).as_millis().clamp(1, 1000) as i32;
            let mut fds: Vec<libc::pollfd> = [&v4, &v6]
                .iter()
                .filter_map(|fd| fd.as_ref())
                .map(|fd| libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: `fds` is a valid array of pollfd structures of the length given.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait) };
            if ready <= 0 {
                continue;
            }
            for (fd, is_v6) in [(&v4, false), (&v6, true)] {
                let Some(fd) = fd else { continue };
                while let Some((len, source)) = recv_from(fd, &mut buf) {
                    let Some(seq) = reply_seq(is_v6, &buf[..len], ident) else {
                        continue;
                    };
                    // Matched by our random ident and the target's sequence number, not by the
                    // source: a peer answers a ping of its subnet's IPv6 network address (the
                    // subnet-router anycast address once cni0 has the prefix) from another address.
                    let seq = usize::from(seq);
                    if targets.get(seq).is_some_and(|t| t.is_ipv6() == source.is_ipv6()) {
                        outcomes[seq] = Outcome::Answered;
                    }
                }
            }
        }
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_requests_carry_ident_seq_and_a_valid_checksum() {
        let v4 = echo_request(false, 0x1234, 7);
        assert_eq!(&v4[..2], &[8, 0]);
        assert_eq!(&v4[4..8], &[0x12, 0x34, 0, 7]);
        assert_eq!(checksum(&v4), 0, "a message with its checksum sums to zero");
        let v6 = echo_request(true, 0x1234, 7);
        assert_eq!(&v6[..4], &[128, 0, 0, 0], "the kernel fills in ICMPv6 checksums");
    }

    #[test]
    fn replies_are_matched_by_type_and_ident() {
        let mut reply = echo_request(true, 0xbeef, 3);
        reply[0] = ECHO_REPLY_V6;
        assert_eq!(reply_seq(true, &reply, 0xbeef), Some(3));
        assert_eq!(reply_seq(true, &reply, 0xbeee), None, "another process's echo");
        let mut v4 = vec![0x45; 20];
        let mut icmp = echo_request(false, 0xbeef, 9);
        icmp[0] = ECHO_REPLY_V4;
        v4.extend(icmp.clone());
        assert_eq!(reply_seq(false, &v4, 0xbeef), Some(9));
        icmp[0] = ECHO_REQUEST_V4;
        let mut request = vec![0x45; 20];
        request.extend(icmp);
        assert_eq!(reply_seq(false, &request, 0xbeef), None, "our own request");
        assert_eq!(reply_seq(false, &[0x4f], 1), None, "truncated");
    }
}
