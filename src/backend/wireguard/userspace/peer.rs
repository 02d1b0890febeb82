//! What the packet loop reads: an immutable snapshot of the device (keys, peers, allowed-IP
//! lookup) swapped in whole by the control plane, and the per-peer runtime state (the protocol
//! state machine behind a mutex, the current endpoint, byte counters).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;

use crate::backend::peers::{PresharedKey, WgKey};

/// Handshake messages accepted per second before cookies are demanded. Each handshake is
/// counted twice (the device checks it, then the peer's state machine), so this is twice the
/// intended 100 per second.
pub const HANDSHAKE_RATE_LIMIT: u64 = 200;

/// One peer's runtime state.
pub struct Peer {
    pub key: WgKey,
    /// The 24-bit index the state machine puts into its session indexes (`index << 8 | n`).
    pub index: u32,
    pub preshared_key: Option<PresharedKey>,
    pub keepalive: u16,
    pub tunn: Mutex<Tunn>,
    /// Where to send; moves with authenticated packets (roaming).
    pub endpoint: Mutex<Option<SocketAddr>>,
    pub rx_bytes: AtomicU64,
    pub tx_bytes: AtomicU64,
}

impl Peer {
    pub fn new(
        key: WgKey,
        index: u32,
        private: &StaticSecret,
        preshared_key: Option<PresharedKey>,
        keepalive: u16,
        endpoint: Option<SocketAddr>,
        rate_limiter: Arc<RateLimiter>,
    ) -> Peer {
        let tunn = Tunn::new(
            private.clone(),
            PublicKey::from(key.0),
            preshared_key.map(|k| k.0.0),
            Some(keepalive).filter(|k| *k > 0),
            index,
            Some(rate_limiter),
        );
        Peer {
            key,
            index,
            preshared_key,
            keepalive,
            tunn: Mutex::new(tunn),
            endpoint: Mutex::new(endpoint),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
        }
    }

    pub fn lock_tunn(&self) -> std::sync::MutexGuard<'_, Tunn> {
        self.tunn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn endpoint(&self) -> Option<SocketAddr> {
        *self.endpoint.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_endpoint(&self, ep: SocketAddr) {
        let mut cur = self.endpoint.lock().unwrap_or_else(|p| p.into_inner());
        if *cur != Some(ep) {
            *cur = Some(ep);
        }
    }

    pub fn add_rx(&self, n: usize) {
        self.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn add_tx(&self, n: usize) {
        self.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Longest-prefix lookup of allowed IPs: one hash map per prefix length, longest first (a
/// cluster has one or two lengths, so a lookup is one or two hash probes).
#[derive(Default)]
pub struct AllowedIps {
    v4: Vec<(u8, HashMap<u32, Arc<Peer>>)>,
    v6: Vec<(u8, HashMap<u128, Arc<Peer>>)>,
}

fn mask4(ip: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        ip & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask6(ip: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        ip & (u128::MAX << (128 - u32::from(len)))
    }
}

impl AllowedIps {
    pub fn insert(&mut self, net: IpNet, peer: Arc<Peer>) {
        match net {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                let key = mask4(u32::from(n.network()), len);
                match self.v4.iter_mut().find(|(l, _)| *l == len) {
                    Some((_, m)) => {
                        m.insert(key, peer);
                    }
                    None => {
                        self.v4.push((len, HashMap::from([(key, peer)])));
                        self.v4.sort_by_key(|e| std::cmp::Reverse(e.0));
                    }
                }
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                let key = mask6(u128::from(n.network()), len);
                match self.v6.iter_mut().find(|(l, _)| *l == len) {
                    Some((_, m)) => {
                        m.insert(key, peer);
                    }
                    None => {
                        self.v6.push((len, HashMap::from([(key, peer)])));
                        self.v6.sort_by_key(|e| std::cmp::Reverse(e.0));
                    }
                }
            }
        }
    }

    pub fn lookup(&self, ip: IpAddr) -> Option<&Arc<Peer>> {
        match ip {
            IpAddr::V4(ip) => {
                let ip = u32::from(ip);
                self.v4.iter().find_map(|(len, m)| m.get(&mask4(ip, *len)))
            }
            IpAddr::V6(ip) => {
                let ip = u128::from(ip);
                self.v6.iter().find_map(|(len, m)| m.get(&mask6(ip, *len)))
            }
        }
    }
}

/// The device as the packet loop sees it; replaced whole on every configuration change.
pub struct Snapshot {
    /// `None` until a private key is set: the device then drops everything.
    pub keys: Option<(StaticSecret, PublicKey)>,
    pub rate_limiter: Arc<RateLimiter>,
    pub by_key: HashMap<WgKey, Arc<Peer>>,
    pub by_index: HashMap<u32, Arc<Peer>>,
    pub allowed: AllowedIps,
}

impl Snapshot {
    pub fn empty() -> Snapshot {
        let public = PublicKey::from([0u8; 32]);
        Snapshot {
            keys: None,
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            by_key: HashMap::new(),
            by_index: HashMap::new(),
            allowed: AllowedIps::default(),
        }
    }

    /// The peer a session index (from a handshake response, cookie reply or data message)
    /// belongs to.
    pub fn peer_by_session(&self, receiver_idx: u32) -> Option<&Arc<Peer>> {
        self.by_index.get(&(receiver_idx >> 8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> Arc<Peer> {
        let private = StaticSecret::from([n; 32]);
        let rl = Arc::new(RateLimiter::new(&PublicKey::from(&private), 10));
        Arc::new(Peer::new(
            WgKey([n; 32]),
            u32::from(n),
            &private,
            None,
            0,
            None,
            rl,
        ))
    }

    #[test]
    fn longest_prefix_wins_and_misses_are_none() {
        let mut t = AllowedIps::default();
        t.insert("198.18.0.0/16".parse().unwrap(), peer(1));
        t.insert("198.18.2.0/24".parse().unwrap(), peer(2));
        t.insert("2001:db8:1::/64".parse().unwrap(), peer(3));
        assert_eq!(t.lookup("198.18.2.9".parse().unwrap()).unwrap().index, 2);
        assert_eq!(t.lookup("198.18.3.9".parse().unwrap()).unwrap().index, 1);
        assert!(t.lookup("192.0.2.1".parse().unwrap()).is_none());
        assert_eq!(t.lookup("2001:db8:1::5".parse().unwrap()).unwrap().index, 3);
        assert!(t.lookup("2001:db8:2::5".parse().unwrap()).is_none());
        t.insert("0.0.0.0/0".parse().unwrap(), peer(4));
        assert_eq!(t.lookup("192.0.2.1".parse().unwrap()).unwrap().index, 4);
    }
}
