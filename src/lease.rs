//! Leases: the subnet key text (`10.5.52.0-24[&fd00::-64]`), the lease attributes JSON stored in
//! etcd (byte-identical to upstream), and the `LeaseWatcher` that turns snapshots and incremental
//! events from a subnet manager into Added/Removed events for the backend.
//!
//! Pure code: no I/O. Spec: flanneld-behaviour.md sections 3 and 8.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use ipnet::{Ipv4Net, Ipv6Net};

/// Errors from parsing subnet keys and lease attribute JSON.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error("parsing subnet key {key:?}: {reason}")]
    BadSubnetKey { key: String, reason: String },
    #[error("decoding lease attributes {json:?}: {reason}")]
    BadAttrs { json: String, reason: String },
}

/// The subnet(s) a lease is for; the text form is the etcd key suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    pub v4: Ipv4Net,
    pub v6: Option<Ipv6Net>,
}

impl SubnetKey {
    /// Parse `a.b.c.d-len` or `a.b.c.d-len&v6-len6` with upstream's accept/reject rules (spec 3.1).
    pub fn parse(text: &str) -> Result<SubnetKey, LeaseError> {
        todo!("{text}")
    }
}

impl std::fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.v4.addr(), self.v4.prefix_len())?;
        if let Some(v6) = self.v6 {
            write!(f, "&{}-{}", v6.addr(), v6.prefix_len())?;
        }
        Ok(())
    }
}

/// What a node publishes about itself (spec 3.2). `backend_data` and `backend_v6_data` hold the
/// raw JSON text exactly as published (e.g. `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAttrs {
    /// `0.0.0.0` when unset, as upstream.
    pub public_ip: Ipv4Addr,
    pub public_ipv6: Option<Ipv6Addr>,
    /// Empty when unset (omitted from JSON).
    pub backend_type: String,
    pub backend_data: Option<String>,
    pub backend_v6_data: Option<String>,
}

impl Default for LeaseAttrs {
    fn default() -> Self {
        LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: None,
            backend_type: String::new(),
            backend_data: None,
            backend_v6_data: None,
        }
    }
}

impl LeaseAttrs {
    /// Upstream's JSON, byte for byte: `{"PublicIP":"..","PublicIPv6":null,...}`.
    pub fn to_json(&self) -> String {
        todo!()
    }

    /// Decode with case-insensitive keys; `"PublicIP":null` is an error.
    pub fn from_json(json: &str) -> Result<LeaseAttrs, LeaseError> {
        todo!("{json}")
    }
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
    /// Upstream's "same subnet" rule (spec 8), using the flags of `self`.
    pub fn same_subnet(&self, other: &Lease) -> bool {
        todo!("{other:?}")
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

/// Keeps the own lease and the known remote leases; turns batches into events (spec 8), skipping
/// events for the own subnet.
#[derive(Debug, Clone)]
pub struct LeaseWatcher {
    own: Lease,
    known: Vec<Lease>,
}

impl LeaseWatcher {
    pub fn new(own: Lease) -> LeaseWatcher {
        LeaseWatcher { own, known: Vec::new() }
    }

    /// Apply one batch; returns the events to forward, in order.
    pub fn apply(&mut self, batch: LeaseBatch) -> Vec<LeaseEvent> {
        todo!("{batch:?} {:?} {:?}", self.own, self.known)
    }

    /// The remote leases currently known.
    pub fn known(&self) -> &[Lease] {
        &self.known
    }
}
