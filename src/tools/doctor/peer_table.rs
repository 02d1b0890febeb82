//! Sentences for the peer entries of backends with a data path of their own (design.md 4b): the
//! udp forwarding table (read from the daemon's /peers) and WireGuard peers (read from the
//! device), once `peers::entry_findings` has let the reconciler's planner decide what is missing,
//! different or unexplained. Pure.
//!
//! - udp: the table lives only in the daemon's memory and only the reconciler writes it, from the
//!   daemon's own view of the leases; so a table that disagrees with the datastore means that view
//!   is behind (its watch of the datastore is stuck), and the sentence says so.
//! - WireGuard: peers are keyed by public key, so a peer whose key is not the lease's shows in the
//!   plan as "remove the old key, add the new one"; doctor joins the two into one sentence. Each
//!   field that differs (endpoint, allowed IPs, keepalive, preshared key) is its own sentence; a
//!   preshared key is never shown, only whether it is there and whether it matches. An endpoint
//!   that differs is `Check::PeerEndpoints`: WireGuard moves a peer's endpoint to wherever its
//!   authenticated packets come from (roaming, e.g. behind NAT) and the daemon leaves such an
//!   endpoint, so `settle_endpoints` turns it into a note when the peer answers over the overlay.

use std::net::SocketAddr;

use ipnet::IpNet;

use super::peers::{PeerEntries, concerns};
use super::report::{Check, Finding, Severity, THIS_NODE, describe};
use crate::backend::Entry;
use crate::backend::peers::{PeerEntry, WgPeer};

/// The planner's verdict on the peer entries: (who wants it, entry); `who` indexes the peers,
/// `None` is this node.
#[derive(Debug, Default)]
pub struct PeerDiffs {
    pub missing: Vec<(Option<usize>, PeerEntry)>,
    /// (who, desired, installed) with the same key.
    pub differs: Vec<(Option<usize>, PeerEntry, PeerEntry)>,
    pub extra: Vec<PeerEntry>,
}

/// Why a udp table disagrees with the datastore.
const UDP_STALE: &str =
    "the daemon's view of the leases is behind the datastore (is its connection to the datastore stuck?)";

fn list(nets: &[IpNet]) -> String {
    if nets.is_empty() {
        return "none".into();
    }
    nets.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",")
}

fn endpoint(ep: Option<SocketAddr>) -> String {
    ep.map_or_else(|| "no endpoint".into(), |e| e.to_string())
}

fn keepalive(secs: u16) -> String {
    if secs == 0 {
        "off".into()
    } else {
        format!("every {secs} s")
    }
}

/// One sentence per problem with the peer entries.
pub fn findings(
    diffs: PeerDiffs,
    peers: &[PeerEntries<'_>],
    link_name: &dyn Fn(u32) -> String,
) -> Vec<Finding> {
    let PeerDiffs {
        mut missing,
        differs,
        mut extra,
    } = diffs;
    let subject = |who: Option<usize>| who.map_or(THIS_NODE, |i| peers[i].label);
    let who_of =
        |who: Option<usize>| who.map_or(THIS_NODE.to_string(), |i| format!("peer {}", peers[i].label));
    let object = |e: &PeerEntry| describe(&Entry::Peer(e.clone()), link_name);
    let mut out = Vec::new();

    // A WireGuard peer with another key than the lease's, for the same allowed IPs.
    extra.retain(|have| {
        let PeerEntry::Wireguard(h) = have else {
            return true;
        };
        let pair = missing.iter().position(|(_, want)| {
            matches!(want, PeerEntry::Wireguard(w) if w.device == h.device
                && w.allowed_ips.iter().any(|n| h.allowed_ips.contains(n)))
        });
        let Some(pos) = pair else { return true };
        let (who, want) = missing.remove(pos);
        let PeerEntry::Wireguard(w) = want else {
            return true;
        };
        out.push(Finding::problem(
            Check::PeerEntries,
            subject(who),
            &object(have),
            format!(
                "{}: the WireGuard peer for {} on {} has public key {}, but the lease says {}",
                who_of(who),
                list(&w.allowed_ips),
                link_name(w.device),
                h.public_key,
                w.public_key
            ),
        ));
        false
    });

    for (who, want) in missing {
        let message = match &want {
            PeerEntry::Udp(p) => format!(
                "{}: the daemon's udp table has no entry for {} (the lease says {}): {UDP_STALE}",
                who_of(who),
                p.subnet,
                p.endpoint
            ),
            PeerEntry::Wireguard(p) => format!(
                "{}: WireGuard peer {} on {} is missing (the lease says {}, allowed IPs {})",
                who_of(who),
                p.public_key,
                link_name(p.device),
                endpoint(p.endpoint),
                list(&p.allowed_ips)
            ),
            PeerEntry::Extension(_) => format!("{}: {} is missing", who_of(who), object(&want)),
        };
        out.push(Finding::problem(
            Check::PeerEntries,
            subject(who),
            &object(&want),
            message,
        ));
    }

    for (who, want, have) in differs {
        let problem =
            |check: Check, message: String| Finding::problem(check, subject(who), &object(&have), message);
        match (&want, &have) {
            (PeerEntry::Udp(w), PeerEntry::Udp(h)) => out.push(problem(
                Check::PeerEntries,
                format!(
                    "{}: the daemon's udp table sends {} to {}, but the lease says {}: {UDP_STALE}",
                    who_of(who),
                    h.subnet,
                    h.endpoint,
                    w.endpoint
                ),
            )),
            (PeerEntry::Wireguard(w), PeerEntry::Wireguard(h)) => {
                for (check, message) in wireguard_differences(w, h, link_name) {
                    out.push(problem(check, format!("{}: {message}", who_of(who))));
                }
            }
            _ => out.push(problem(
                Check::PeerEntries,
                format!(
                    "{}: the data path has {}, but the lease says {}",
                    who_of(who),
                    object(&have),
                    object(&want)
                ),
            )),
        }
    }

    for have in extra {
        let what = object(&have);
        let concerned = peers
            .iter()
            .find(|p| concerns(&Entry::Peer(have.clone()), p.lease));
        let message = match (&have, concerned) {
            (PeerEntry::Udp(p), None) => format!(
                "the daemon's udp table sends {} to {}, but no lease has that subnet: {UDP_STALE}",
                p.subnet, p.endpoint
            ),
            (PeerEntry::Udp(p), Some(peer)) => format!(
                "peer {}: the daemon's udp table sends {} to {}, but the lease does not: {UDP_STALE}",
                peer.label, p.subnet, p.endpoint
            ),
            (PeerEntry::Wireguard(p), None) => format!(
                "{what} is on {}, but no lease explains it (the daemon removes it)",
                link_name(p.device)
            ),
            (PeerEntry::Wireguard(p), Some(peer)) => format!(
                "peer {}: {what} is on {}, but the lease does not explain it (the daemon removes it)",
                peer.label,
                link_name(p.device)
            ),
            (_, Some(peer)) => format!(
                "peer {}: {what} is installed, but the lease does not explain it",
                peer.label
            ),
            (_, None) => format!("{what} is installed, but no lease explains it"),
        };
        out.push(Finding::problem(
            Check::UnexplainedEntries,
            THIS_NODE,
            &what,
            message,
        ));
    }
    out
}

/// One (check, sentence without the subject) per field of a WireGuard peer that differs.
fn wireguard_differences(
    want: &WgPeer,
    have: &WgPeer,
    link_name: &dyn Fn(u32) -> String,
) -> Vec<(Check, String)> {
    let peer = format!("WireGuard peer {} on {}", have.public_key, link_name(have.device));
    let mut out = Vec::new();
    if want.endpoint != have.endpoint {
        out.push((
            Check::PeerEndpoints,
            format!(
                "{peer} has endpoint {}, but the lease says {}",
                endpoint(have.endpoint),
                endpoint(want.endpoint)
            ),
        ));
    }
    if want.allowed_ips != have.allowed_ips {
        out.push((
            Check::PeerEntries,
            format!(
                "{peer} has allowed IPs {}, but the lease says {}: packets for the difference go nowhere or to the wrong node",
                list(&have.allowed_ips),
                list(&want.allowed_ips)
            ),
        ));
    }
    if want.persistent_keepalive != have.persistent_keepalive {
        out.push((
            Check::PeerEntries,
            format!(
                "{peer} has persistent keepalive {}, but the network config says {}",
                keepalive(have.persistent_keepalive),
                keepalive(want.persistent_keepalive)
            ),
        ));
    }
    match (&want.preshared_key, &have.preshared_key) {
        (Some(_), None) => out.push((
            Check::PeerEntries,
            format!("{peer} has no preshared key, but the network config sets one: no handshake succeeds"),
        )),
        (None, Some(_)) => out.push((
            Check::PeerEntries,
            format!("{peer} has a preshared key, but the network config sets none: no handshake succeeds"),
        )),
        (Some(w), Some(h)) if w != h => out.push((
            Check::PeerEntries,
            format!("{peer} has another preshared key than the network config's: no handshake succeeds"),
        )),
        _ => {}
    }
    out
}

/// Endpoint differences of peers that answered over the overlay are WireGuard's roaming: the
/// peer's packets come from there and the daemon deliberately leaves the endpoint. They become
/// notes; the others stay problems.
pub fn settle_endpoints(findings: &mut [Finding], answered: &[String]) {
    for f in findings
        .iter_mut()
        .filter(|f| f.check == Check::PeerEndpoints && f.severity == Severity::Problem)
    {
        if answered.contains(&f.subject) {
            f.severity = Severity::Note;
            f.message.push_str(
                "; the peer answers over the overlay, so WireGuard follows it there (roaming, e.g. behind NAT), and the daemon leaves such an endpoint",
            );
        }
    }
}

#[cfg(test)]
#[path = "peer_table_tests.rs"]
mod tests;
