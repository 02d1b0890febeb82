//! Packet code of the udp backend's data path, pure functions on byte buffers (design.md 4b):
//! IPv4 parsing, receive validation, TTL decrement and ICMP errors (`ipv4`), and what the data
//! path asks of the shared TUN offloads (`offload`, over `backend::offload`: segmentation of
//! TSO/USO super-packets, coalescing of received TCP segments, checksums). Nothing here does I/O,
//! keeps state between calls (apart from reusable scratch space), or panics on any input: every
//! byte comes from the network or from a pod. Spec: flanneld-behaviour.md 9.3 (wire format: one
//! bare IPv4 packet per datagram, TTL decremented on send and receive with the RFC 1624 fix, ICMP
//! net unreachable).

pub mod ipv4;
pub mod offload;

/// The packet builders are shared with the offload tests (`backend::offload`).
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_prop;
