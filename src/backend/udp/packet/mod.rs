//! Packet code of the udp backend's data path, pure functions on byte buffers (design.md 4b):
//! checksums (`checksum`), IPv4 parsing, receive validation, TTL decrement and ICMP errors
//! (`ipv4`), the TUN offload header and segmentation of TSO/USO super-packets (`gso`), and
//! coalescing of received TCP segments (`gro`). Nothing here does I/O, keeps state between calls
//! (apart from reusable scratch space), or panics on any input: every byte comes from the network
//! or from a pod. Spec: flanneld-behaviour.md 9.3 (wire format: one bare IPv4 packet per
//! datagram, TTL decremented on send and receive with the RFC 1624 fix, ICMP net unreachable).

pub mod checksum;
pub mod gro;
pub mod gso;
pub mod ipv4;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_offload;
#[cfg(test)]
mod tests_prop;
