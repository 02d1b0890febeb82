//! The JSON view of a backend's installed peer entries, as the daemon serves it on `GET /peers`
//! (what its `PeerTable::installed()` reports: the udp forwarding table, the WireGuard peers the
//! backend owns, the extension peers whose add command succeeded) and as `flanneld doctor` reads
//! it back.
//!
//! `{"peers": [{"kind": "udp", "subnet": "198.18.2.0/24", "endpoint": "192.0.2.2:8285"}, ...]}`
//!
//! It must never carry a secret: a WireGuard peer shows its public key, endpoint, allowed IPs,
//! keepalive and only *whether* it has a preshared key; an extension peer shows its subnets and
//! public IPs, not its backend data. No private key exists in a `PeerEntry` at all.

use serde::{Deserialize, Serialize};

use super::peers::{PeerEntry, UdpPeer};

/// One installed peer entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PeerView {
    Udp {
        subnet: String,
        endpoint: String,
    },
    Wireguard {
        /// Interface index of the WireGuard device (kernel or userspace TUN).
        device_index: u32,
        public_key: String,
        endpoint: Option<String>,
        allowed_ips: Vec<String>,
        /// Seconds; 0 = off.
        persistent_keepalive: u16,
        /// Whether a preshared key is set (the key itself is never shown).
        has_preshared_key: bool,
    },
    Extension {
        subnet: Option<String>,
        ipv6_subnet: Option<String>,
        public_ip: String,
        public_ipv6: Option<String>,
    },
}

/// The whole answer of `/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PeersDocument {
    pub peers: Vec<PeerView>,
}

fn text<T: ToString>(value: Option<T>) -> Option<String> {
    value.map(|v| v.to_string())
}

impl PeerView {
    pub fn of(entry: &PeerEntry) -> PeerView {
        match entry {
            PeerEntry::Udp(p) => PeerView::Udp {
                subnet: p.subnet.to_string(),
                endpoint: p.endpoint.to_string(),
            },
            PeerEntry::Wireguard(p) => PeerView::Wireguard {
                device_index: p.device,
                public_key: p.public_key.to_string(),
                endpoint: text(p.endpoint),
                allowed_ips: p.allowed_ips.iter().map(|n| n.to_string()).collect(),
                persistent_keepalive: p.persistent_keepalive,
                has_preshared_key: p.preshared_key.is_some(),
            },
            PeerEntry::Extension(p) => PeerView::Extension {
                subnet: text(p.subnet),
                ipv6_subnet: text(p.ipv6_subnet),
                public_ip: p.public_ip.to_string(),
                public_ipv6: text(p.public_ipv6),
            },
        }
    }

    /// A udp entry back as the `PeerEntry` it shows; `Ok(None)` for other kinds (they cannot be
    /// rebuilt without what the view leaves out, such as the preshared key).
    pub fn udp_entry(&self) -> Result<Option<PeerEntry>, String> {
        let PeerView::Udp { subnet, endpoint } = self else {
            return Ok(None);
        };
        let subnet = subnet
            .parse()
            .map_err(|_| format!("udp entry subnet {subnet:?} is not an IPv4 CIDR"))?;
        let endpoint = endpoint
            .parse()
            .map_err(|_| format!("udp entry endpoint {endpoint:?} is not IPv4:port"))?;
        Ok(Some(PeerEntry::Udp(UdpPeer { subnet, endpoint })))
    }
}

/// The body of `/peers` for these entries.
pub fn render(entries: &[PeerEntry]) -> String {
    let doc = PeersDocument {
        peers: entries.iter().map(PeerView::of).collect(),
    };
    serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Parse a `/peers` body.
pub fn parse(body: &str) -> Result<PeersDocument, String> {
    serde_json::from_str(body).map_err(|e| format!("not the JSON of /peers: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::peers::{ExtensionPeer, PresharedKey, WgKey, WgPeer, base64_std_encode};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn wg_peer(psk: Option<[u8; 32]>) -> PeerEntry {
        PeerEntry::Wireguard(WgPeer {
            device: 7,
            public_key: WgKey([1; 32]),
            preshared_key: psk.map(|k| PresharedKey(WgKey(k))),
            endpoint: Some("192.0.2.2:51820".parse().unwrap()),
            allowed_ips: vec![
                "198.18.2.0/24".parse().unwrap(),
                "2001:db8:2::/64".parse().unwrap(),
            ],
            persistent_keepalive: 25,
        })
    }

    #[test]
    fn every_kind_renders_its_fields() {
        let udp = PeerEntry::Udp(UdpPeer {
            subnet: "198.18.2.0/24".parse().unwrap(),
            endpoint: "192.0.2.2:8285".parse().unwrap(),
        });
        let ext = PeerEntry::Extension(ExtensionPeer {
            subnet: Some("198.18.3.0/24".parse().unwrap()),
            ipv6_subnet: None,
            public_ip: "192.0.2.3".parse().unwrap(),
            public_ipv6: None,
            backend_data: "{\"token\":\"not for /peers\"}".into(),
        });
        let body = render(&[udp.clone(), wg_peer(None), ext]);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            value["peers"][0],
            serde_json::json!({"kind": "udp", "subnet": "198.18.2.0/24", "endpoint": "192.0.2.2:8285"})
        );
        assert_eq!(
            value["peers"][1],
            serde_json::json!({
                "kind": "wireguard",
                "device_index": 7,
                "public_key": base64_std_encode(&[1; 32]),
                "endpoint": "192.0.2.2:51820",
                "allowed_ips": ["198.18.2.0/24", "2001:db8:2::/64"],
                "persistent_keepalive": 25,
                "has_preshared_key": false
            })
        );
        assert_eq!(value["peers"][2]["kind"], "extension");
        assert!(!body.contains("not for /peers"), "backend data stays out: {body}");
        let doc = parse(&body).unwrap();
        assert_eq!(doc.peers.len(), 3);
        assert_eq!(doc.peers[0].udp_entry().unwrap(), Some(udp));
        assert_eq!(doc.peers[1].udp_entry().unwrap(), None);
    }

    #[test]
    fn a_preshared_key_is_never_shown_in_any_encoding() {
        let secret = [0xa7u8; 32];
        let body = render(&[wg_peer(Some(secret))]);
        assert!(body.contains("\"has_preshared_key\": true"), "{body}");
        for encoded in [base64_std_encode(&secret), hex(&secret), format!("{secret:?}")] {
            assert!(!body.contains(&encoded), "the PSK shows as {encoded} in {body}");
        }
        // Not even a fragment long enough to mean something.
        let b64 = base64_std_encode(&secret);
        assert!(!body.contains(&b64[..16]), "{body}");
    }

    #[test]
    fn bad_udp_entries_are_named() {
        let doc = parse(r#"{"peers":[{"kind":"udp","subnet":"nope","endpoint":"192.0.2.2:8285"}]}"#).unwrap();
        let err = doc.peers[0].udp_entry().unwrap_err();
        assert!(err.contains("\"nope\""), "{err}");
        assert!(parse("<html>").unwrap_err().contains("not the JSON of /peers"));
    }
}
