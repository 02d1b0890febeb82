//! Tests of the shared offloads with each data path's parameters: `udp` and `udp_prop` (the udp
//! backend's cases: IPv4, TTL decremented, TSO4 and USO, checksums verified before merging; the
//! segmentation ones through `udp::packet::offload`, so its drop reasons are checked too), and
//! `wireguard` (the userspace WireGuard device's cases: TSO over IPv4 and IPv6, TTL untouched,
//! authenticated packets merged without re-verifying).

mod udp;
mod udp_prop;
mod wireguard;
