//! What doctor checks of the ipip backend (spec 9.4) and of alloc (spec 9.7).
//!
//! ipip: `flannel.ipip` (an ipip device with the interface address as local end, remote any, up,
//! MTU, the own subnet's network address /32) against the own lease and the config; the per-peer
//! routes come from the daemon's own `entries_for` once `IpipBackend::observe` has taken the
//! device's index, so `peers` compares them like vxlan's. Reachability: each ipip peer's overlay
//! address (the network address of its subnet, on its `flannel.ipip`) is probed; the kernel
//! routes the probe through the tunnel (or straight over the underlay with DirectRouting), so a
//! missing route or IP protocol 4 filtered on either side shows up.
//!
//! alloc: nothing in the kernel is the backend's, so only the lease attributes and the MTU the
//! daemon writes to subnet.env are checked (with the leases, subnet.env and health of `mod`).

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

use super::backends::{DoctorBackend, KernelView, ProbePair, address_problems, link_state_problems};
use super::report::{Check, Finding, THIS_NODE};
use crate::backend::alloc::AllocBackend;
use crate::backend::ipip::{DEVICE, IpipBackend, incompatibilities};
use crate::backend::vxlan::device::Family;
use crate::backend::{Backend, ExternalInterface};
use crate::kernel::{Link, Netlink};
use crate::lease::{Lease, LeaseAttrs};
use crate::netconf::{IpipConfig, NetConf};

pub struct IpipDoctor {
    backend: IpipBackend,
    network: Option<Ipv4Net>,
    /// `flannel.ipip` as the kernel has it (any kind), when it exists.
    link: Option<Link>,
}

impl IpipDoctor {
    pub fn new(cfg: &IpipConfig, ext: &ExternalInterface, netconf: &NetConf) -> Result<IpipDoctor, String> {
        Ok(IpipDoctor {
            backend: IpipBackend::new(cfg, ext, netconf).map_err(|e| e.to_string())?,
            network: netconf.network,
            link: None,
        })
    }
}

/// The sentences about `flannel.ipip` (`link`, `None` when missing) for tunnel address `local`,
/// MTU `mtu`, own subnet `subnet` inside `network`. Pure.
pub fn device_problems(
    link: Option<&Link>,
    local: std::net::Ipv4Addr,
    mtu: u32,
    subnet: Option<Ipv4Net>,
    network: Option<Ipv4Net>,
    kernel: &KernelView,
) -> Vec<String> {
    let Some(link) = link else {
        return vec![format!(
            "{DEVICE} does not exist: no peer is reachable (the daemon creates it when it runs)"
        )];
    };
    match incompatibilities(link, local) {
        Err(_) => {
            return vec![format!(
                "{DEVICE} is a {} link, not an ipip device: the daemon refuses to start until it is removed",
                link.kind.as_deref().unwrap_or("physical")
            )];
        }
        Ok(why) if !why.is_empty() => {
            return vec![format!(
                "{DEVICE} does not match the configuration ({}): the daemon deletes and recreates it",
                why.join("; ")
            )];
        }
        Ok(_) => {}
    }
    let mut out = link_state_problems(DEVICE, link, mtu);
    if let Some(subnet) = subnet {
        let wanted = (IpAddr::V4(subnet.network()), 32);
        let network = network.map(IpNet::V4);
        out.extend(address_problems(
            DEVICE,
            link.index,
            Family::V4,
            wanted,
            network,
            kernel,
        ));
    }
    out
}

#[async_trait::async_trait]
impl DoctorBackend for IpipDoctor {
    fn kind(&self) -> &str {
        "ipip"
    }

    async fn observe(&mut self, _k: &dyn Netlink, kernel: &KernelView) -> Vec<Finding> {
        self.link = self.backend.observe(&kernel.links);
        Vec::new()
    }

    fn lease_attrs(&self) -> Option<LeaseAttrs> {
        Some(self.backend.lease_attrs())
    }

    fn mtu(&self) -> Option<u32> {
        Some(self.backend.device_mtu())
    }

    fn device_findings(&self, own: Option<&Lease>, kernel: &KernelView) -> Vec<Finding> {
        let mtu = self.backend.device_mtu();
        let local = self.backend.tunnel_local();
        let subnet = own.and_then(|o| o.subnet);
        let problems = device_problems(self.link.as_ref(), local, mtu, subnet, self.network, kernel);
        if problems.is_empty() {
            return vec![Finding::ok(
                Check::Device,
                THIS_NODE,
                DEVICE,
                format!("{DEVICE}: ipip, local {local}, up, MTU {mtu}, address as the lease's subnet"),
            )];
        }
        problems
            .into_iter()
            .map(|message| Finding::problem(Check::Device, THIS_NODE, DEVICE, message))
            .collect()
    }

    fn backend(&self) -> Option<&dyn Backend> {
        Some(&self.backend)
    }

    fn probes(&self, peer: &Lease) -> Vec<ProbePair> {
        // Like `entries_for`: ipip leases with a subnet and a public IP.
        let Some(subnet) = peer.subnet else {
            return Vec::new();
        };
        if peer.attrs.backend_type != "ipip" || peer.attrs.public_ip.is_unspecified() {
            return Vec::new();
        }
        vec![ProbePair {
            overlay: Some((IpAddr::V4(subnet.network()), DEVICE.to_string())),
            underlay: IpAddr::V4(peer.attrs.public_ip),
        }]
    }

    fn tunnel_hint(&self) -> String {
        "a missing or wrong route on either side, or IP protocol 4 (IPIP) filtered on either side \
         (PeerFilter drops IPIP whose source is not a lease's PublicIP)"
            .to_string()
    }
}

/// alloc: a lease and subnet.env, nothing in the kernel.
pub struct AllocDoctor {
    backend: AllocBackend,
    attrs: Option<LeaseAttrs>,
    mtu: u32,
}

impl AllocDoctor {
    pub fn new(netconf: &NetConf, ext: &ExternalInterface) -> AllocDoctor {
        AllocDoctor {
            backend: AllocBackend::new(netconf, ext),
            attrs: None,
            mtu: ext.mtu,
        }
    }
}

#[async_trait::async_trait]
impl DoctorBackend for AllocDoctor {
    fn kind(&self) -> &str {
        "alloc"
    }

    /// alloc's `prepare` touches nothing: it only computes the attributes.
    async fn observe(&mut self, k: &dyn Netlink, _kernel: &KernelView) -> Vec<Finding> {
        self.attrs = self.backend.prepare(k).await.ok();
        vec![Finding::note(
            Check::Device,
            THIS_NODE,
            "alloc",
            "the alloc backend programs nothing: only the lease, subnet.env and the daemon's health are checked"
                .into(),
        )]
    }

    fn lease_attrs(&self) -> Option<LeaseAttrs> {
        self.attrs.clone()
    }

    fn mtu(&self) -> Option<u32> {
        Some(self.mtu)
    }

    fn device_findings(&self, _own: Option<&Lease>, _kernel: &KernelView) -> Vec<Finding> {
        Vec::new()
    }

    fn backend(&self) -> Option<&dyn Backend> {
        Some(&self.backend)
    }

    fn probes(&self, _peer: &Lease) -> Vec<ProbePair> {
        Vec::new()
    }
}

#[cfg(test)]
#[path = "ipip_tests.rs"]
mod tests;
