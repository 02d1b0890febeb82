//! Leases: the subnet key text (`10.5.52.0-24[&fd00::-64]`), the lease attributes JSON stored in
//! etcd (byte-identical to upstream), and the `LeaseWatcher` that turns snapshots and incremental
//! events from a subnet manager into Added/Removed events for the backend.
//!
//! Pure code: no I/O. It must not know about etcd or Kubernetes beyond these formats.
//! Spec: flanneld-behaviour.md sections 3 and 8.
//!
//! Files: `key` (subnet key), `attrs` (lease JSON, vxlan BackendData), `watcher` (section 8),
//! `gojson` (Go `encoding/json` semantics, shared with `netconf`).

use std::time::SystemTime;

use ipnet::{Ipv4Net, Ipv6Net};

mod attrs;
pub(crate) mod gojson;
mod key;
mod watcher;

pub use attrs::{LeaseAttrs, parse_vxlan_backend_data, vxlan_backend_data};
pub use gojson::go_json_string;
pub use key::SubnetKey;
pub use watcher::LeaseWatcher;

/// Errors from parsing subnet keys and lease attribute JSON.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error("parsing subnet key {key:?}: {reason}")]
    BadSubnetKey { key: String, reason: String },
    #[error("decoding lease attributes {json:?}: {reason}")]
    BadAttrs { json: String, reason: String },
    #[error("decoding backend data {json:?}: {reason}")]
    BadBackendData { json: String, reason: String },
}

/// A node's lease on one or two subnets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
    pub subnet: Option<Ipv4Net>,
    pub ipv6_subnet: Option<Ipv6Net>,
    pub attrs: LeaseAttrs,
    /// `None` for a key without TTL (an etcd reservation) or a kube lease.
    pub expiration: Option<SystemTime>,
}

impl Lease {
    /// Upstream's "same subnet" rule (spec 8), using the flags of `self`: v4-only compares the v4
    /// subnets, v6-only the v6 subnets, dual stack both, and no flag (etcd leases) the v4 subnet.
    /// An absent subnet compares like upstream's zero value (`0.0.0.0/0`, `::/0`).
    pub fn same_subnet(&self, other: &Lease) -> bool {
        let v4 = self.subnet.unwrap_or_default() == other.subnet.unwrap_or_default();
        let v6 = self.ipv6_subnet.unwrap_or_default() == other.ipv6_subnet.unwrap_or_default();
        match (self.enable_ipv4, self.enable_ipv6) {
            (true, false) | (false, false) => v4,
            (false, true) => v6,
            (true, true) => v4 && v6,
        }
    }

    /// The subnet key of this lease (`10.5.52.0-24[&v6-len]`); an absent v4 subnet is `0.0.0.0/0`.
    pub fn key(&self) -> SubnetKey {
        SubnetKey {
            v4: self.subnet.unwrap_or_default(),
            v6: self.ipv6_subnet,
        }
    }

    /// A stable identity for maps: the v4 and v6 subnets.
    pub fn subnets(&self) -> (Option<Ipv4Net>, Option<Ipv6Net>) {
        (self.subnet, self.ipv6_subnet)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    Added(Lease),
    Removed(Lease),
}

/// What a subnet manager's watch yields: a full snapshot (first item, and after a re-list) or
/// incremental events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseBatch {
    Snapshot(Vec<Lease>),
    Events(Vec<LeaseEvent>),
}
