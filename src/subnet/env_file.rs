//! subnet.env: render (pure), atomic write, and read-back with upstream's tolerance rules.
//! Spec: flanneld-behaviour.md section 4.

use ipnet::{Ipv4Net, Ipv6Net};

/// What a previous run left in subnet.env (spec 4.3); each field is `Some` only when exactly one
/// valid entry was found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreviousSubnets {
    pub network: Option<Ipv4Net>,
    pub subnet: Option<Ipv4Net>,
    pub ipv6_network: Option<Ipv6Net>,
    pub ipv6_subnet: Option<Ipv6Net>,
}
