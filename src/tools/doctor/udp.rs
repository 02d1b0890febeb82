//! What doctor checks of the udp backend (spec 9.3): `flannel0` (a TUN device, up, MTU, the own
//! subnet's network address /32) against the own lease; the `<Network> dev flannel0` route as
//! an own entry; and the forwarding table — which exists only in the daemon's memory — read from
//! the daemon's `/peers` and compared with the daemon's own `entries_for` of every lease
//! (subnet -> PublicIP:Port). With the daemon stopped the table is gone with it (and so is the
//! data path): doctor then says it could not check the table, next to the daemon's own finding.
//!
//! Reachability: each peer's overlay address (the network address of its subnet, which its
//! daemon puts on its flannel0 as /32) is probed through flannel0; the probe goes through both
//! daemons' tables and sockets, so a wrong table entry or a filtered port on either side shows.

use std::net::{IpAddr, SocketAddr};

use ipnet::{IpNet, Ipv4Net};

use super::backends::{DoctorBackend, KernelView, ProbePair, address_problems};
use super::health;
use super::report::{Check, Finding, THIS_NODE};
use crate::backend::udp::UdpBackend;
use crate::backend::udp::device::DEVICE;
use crate::backend::vxlan::device::Family;
use crate::backend::{Backend, ExternalInterface, PeerEntry, peers_json};
use crate::kernel::{Link, Netlink};
use crate::lease::{Lease, LeaseAttrs};
use crate::netconf::{NetConf, UdpConfig};

pub struct UdpDoctor {
    backend: UdpBackend,
    network: Option<Ipv4Net>,
    /// flannel0, when it exists as a TUN device.
    link: Option<Link>,
}

impl UdpDoctor {
    pub fn new(cfg: &UdpConfig, ext: &ExternalInterface, netconf: &NetConf) -> Result<UdpDoctor, String> {
        Ok(UdpDoctor {
            backend: UdpBackend::new(cfg, ext, netconf).map_err(|e| e.to_string())?,
            network: netconf.network,
            link: None,
        })
    }
}

/// The udp entries of a `/peers` answer (`GET` result), or the finding that says why the table is
/// not checked. Pure.
pub fn table_from_answer(
    url: &str,
    answer: Result<(u16, String), String>,
) -> Result<Vec<PeerEntry>, Finding> {
    let note = |message: String| Finding::note(Check::PeerEntries, THIS_NODE, url, message);
    let problem = |message: String| Finding::problem(Check::PeerEntries, THIS_NODE, url, message);
    match answer {
        Err(e) => Err(note(format!(
            "flanneld does not answer on {url} ({e}): the udp table lives only in the daemon, so the peers' udp table entries are not checked"
        ))),
        Ok((200, body)) => {
            let doc = peers_json::parse(&body).map_err(|e| problem(format!("{url}: {e}")))?;
            let mut out = Vec::new();
            for view in &doc.peers {
                match view.udp_entry() {
                    Ok(Some(entry)) => out.push(entry),
                    Ok(None) => {}
                    Err(e) => return Err(problem(format!("{url}: {e}"))),
                }
            }
            Ok(out)
        }
        Ok((404, _)) => Err(note(format!(
            "flanneld does not serve {url} (an older version?): the peers' udp table entries are not checked"
        ))),
        Ok((code, body)) => Err(problem(format!(
            "flanneld cannot list its udp table on {url} ({code} {})",
            body.trim()
        ))),
    }
}

#[async_trait::async_trait]
impl DoctorBackend for UdpDoctor {
    fn kind(&self) -> &str {
        "udp"
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
        let problem = |message: String| Finding::problem(Check::Device, THIS_NODE, DEVICE, message);
        let Some(link) = &self.link else {
            let other = super::backends::is_up_link(kernel, DEVICE);
            return vec![problem(match other.and_then(|l| l.kind) {
                Some(kind) => format!(
                    "{DEVICE} is a {kind} link, not a TUN device: the udp backend cannot use it (the daemon replaces it)"
                ),
                None => format!(
                    "{DEVICE} does not exist: no peer is reachable (the daemon creates it when it runs)"
                ),
            })];
        };
        let mtu = self.backend.device_mtu();
        let mut out: Vec<Finding> = super::backends::link_state_problems(DEVICE, link, mtu)
            .into_iter()
            .map(problem)
            .collect();
        if let Some(subnet) = own.and_then(|o| o.subnet) {
            let wanted = (IpAddr::V4(subnet.network()), 32);
            let network = self.network.map(IpNet::V4);
            out.extend(
                address_problems(DEVICE, link.index, Family::V4, wanted, network, kernel)
                    .into_iter()
                    .map(problem),
            );
        }
        if out.is_empty() {
            out.push(Finding::ok(
                Check::Device,
                THIS_NODE,
                DEVICE,
                format!("{DEVICE}: a TUN device, up, MTU {mtu}, address as the lease's subnet"),
            ));
        }
        out
    }

    fn backend(&self) -> Option<&dyn Backend> {
        Some(&self.backend)
    }

    fn probes(&self, peer: &Lease) -> Vec<ProbePair> {
        // Like `entries_for`: any lease with a subnet and a public IP (no backend type filter).
        let (Some(_), Some(subnet)) = (&self.link, peer.subnet) else {
            return Vec::new();
        };
        if peer.attrs.public_ip.is_unspecified() {
            return Vec::new();
        }
        vec![ProbePair {
            overlay: Some((IpAddr::V4(subnet.network()), DEVICE.to_string())),
            underlay: IpAddr::V4(peer.attrs.public_ip),
        }]
    }

    async fn installed_peers(&self, health: Option<SocketAddr>) -> Option<Result<Vec<PeerEntry>, Finding>> {
        let Some(addr) = health else {
            return Some(Err(Finding::note(
                Check::PeerEntries,
                THIS_NODE,
                "--healthz-port",
                "the daemon's health server is off (--healthz-port 0), so its udp table (served on /peers) is not checked"
                    .into(),
            )));
        };
        let url = format!("http://{addr}/peers");
        let answer = tokio::task::spawn_blocking(move || health::http_get(addr, "/peers"))
            .await
            .unwrap_or_else(|e| Err(format!("the request task failed: {e}")));
        Some(table_from_answer(&url, answer))
    }

    fn tunnel_hint(&self) -> String {
        format!(
            "a udp table entry that disagrees with the leases, or UDP port {} filtered, on either side",
            self.backend.port()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::peers::UdpPeer;

    const URL: &str = "http://127.0.0.1:8081/peers";

    #[test]
    fn the_peers_answer_becomes_the_table_or_a_sentence() {
        let entry = PeerEntry::Udp(UdpPeer {
            subnet: "198.18.2.0/24".parse().unwrap(),
            endpoint: "192.0.2.2:8285".parse().unwrap(),
        });
        let body = peers_json::render(std::slice::from_ref(&entry));
        assert_eq!(table_from_answer(URL, Ok((200, body))).unwrap(), vec![entry]);

        let down = table_from_answer(URL, Err("Connection refused (os error 111)".into())).unwrap_err();
        assert_eq!(down.severity, crate::tools::doctor::report::Severity::Note);
        assert_eq!(
            down.message,
            "flanneld does not answer on http://127.0.0.1:8081/peers (Connection refused (os error 111)): \
             the udp table lives only in the daemon, so the peers' udp table entries are not checked"
        );
        let old = table_from_answer(URL, Ok((404, "404 page not found".into()))).unwrap_err();
        assert!(old.message.contains("older version"), "{old:?}");
        let failing = table_from_answer(URL, Ok((503, "reading the peer table: boom\n".into()))).unwrap_err();
        assert_eq!(failing.severity, crate::tools::doctor::report::Severity::Problem);
        assert!(
            failing.message.ends_with("(503 reading the peer table: boom)"),
            "{failing:?}"
        );
        let garbage = table_from_answer(URL, Ok((200, "{\"peers\": 3}".into()))).unwrap_err();
        assert!(garbage.message.contains("not the JSON of /peers"), "{garbage:?}");
    }
}
