//! Reachability of every peer: which addresses to probe (each peer's overlay address and its
//! public IP, from the backend), and what the answers mean. A peer whose underlay answers while its
//! overlay address does not has a broken tunnel (a wrong VTEP MAC in an FDB or neighbour entry or
//! in a lease, on either side, or a filtered VXLAN port); a peer that answers on neither is down or
//! cut off. Pure apart from `probe::probe`, which the caller runs.

use std::net::IpAddr;

use super::backends::ProbePair;
use super::probe::Outcome;
use super::report::{Check, Finding, THIS_NODE};

/// The probes of one peer.
#[derive(Debug, Clone)]
pub struct PeerProbes {
    pub label: String,
    pub pairs: Vec<ProbePair>,
}

/// Every address to probe, each once.
pub fn targets(peers: &[PeerProbes]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for pair in peers.iter().flat_map(|p| &p.pairs) {
        for ip in pair.overlay.iter().map(|(ip, _)| *ip).chain([pair.underlay]) {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

/// One sentence per peer that does not answer as it should; one ok sentence when all do.
/// `tunnel_hint` says what breaks the overlay of this backend (for vxlan: the UDP port).
pub fn reach_findings(
    peers: &[PeerProbes],
    targets: &[IpAddr],
    outcomes: &[Outcome],
    tunnel_hint: &str,
) -> Vec<Finding> {
    let outcome = |ip: IpAddr| {
        targets
            .iter()
            .position(|t| *t == ip)
            .and_then(|i| outcomes.get(i))
            .cloned()
            .unwrap_or(Outcome::NoAnswer)
    };
    let mut out = Vec::new();
    let mut answered = 0;
    for peer in peers {
        for pair in &peer.pairs {
            let underlay = outcome(pair.underlay);
            let label = &peer.label;
            let problem =
                |message: String, object: &str| Finding::problem(Check::Reachability, label, object, message);
            let decisive = match &pair.overlay {
                Some((ip, _)) => outcome(*ip),
                None => underlay.clone(),
            };
            match (&pair.overlay, decisive, &underlay) {
                (_, Outcome::Answered, _) => answered += 1,
                (Some((ip, dev)), Outcome::NotSent(e), _) => out.push(problem(
                    format!("peer {label} could not be probed over the overlay ({ip} via {dev}): {e}"),
                    &ip.to_string(),
                )),
                (Some((ip, dev)), _, Outcome::Answered) => out.push(problem(
                    format!(
                        "peer {label} is unreachable over the overlay ({ip} via {dev}) although its underlay \
                         address {} answers: {tunnel_hint}",
                        pair.underlay
                    ),
                    &ip.to_string(),
                )),
                (Some((ip, _)), _, _) => out.push(problem(
                    format!(
                        "peer {label} answers neither over the overlay ({ip}) nor on its underlay address {}: \
                         the node is down or the underlay does not reach it",
                        pair.underlay
                    ),
                    &pair.underlay.to_string(),
                )),
                (None, _, _) => out.push(problem(
                    format!(
                        "peer {label} does not answer on {}, the gateway of its pod subnet: the node is down \
                         or the underlay does not reach it",
                        pair.underlay
                    ),
                    &pair.underlay.to_string(),
                )),
            }
        }
    }
    if out.is_empty() {
        out.push(Finding::ok(
            Check::Reachability,
            THIS_NODE,
            "peers",
            match peers.len() {
                1 if answered == 1 => "the peer answers (1 probe)".to_string(),
                1 => format!("the peer answers ({answered} probes)"),
                n => format!("every peer answers ({n} peers, {answered} probes)"),
            },
        ));
    }
    out
}

/// The labels of the peers whose every overlay probe answered (peers probed on the underlay only
/// are not listed).
pub fn answered_over_overlay(peers: &[PeerProbes], targets: &[IpAddr], outcomes: &[Outcome]) -> Vec<String> {
    let answered = |ip: &IpAddr| {
        targets
            .iter()
            .position(|t| t == ip)
            .and_then(|i| outcomes.get(i))
            .is_some_and(|o| *o == Outcome::Answered)
    };
    peers
        .iter()
        .filter(|p| {
            let overlay: Vec<&IpAddr> = p
                .pairs
                .iter()
                .filter_map(|pair| pair.overlay.as_ref().map(|(ip, _)| ip))
                .collect();
            !overlay.is_empty() && overlay.into_iter().all(answered)
        })
        .map(|p| p.label.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn vxlan_peer(n: u8) -> PeerProbes {
        PeerProbes {
            label: format!("lease 198.18.{n}.0-24 (192.0.2.{n})"),
            pairs: vec![ProbePair {
                overlay: Some((ip(&format!("198.18.{n}.0")), "flannel.1".into())),
                underlay: ip(&format!("192.0.2.{n}")),
            }],
        }
    }

    #[test]
    fn a_broken_tunnel_is_told_from_a_dead_node() {
        let peers = [vxlan_peer(2), vxlan_peer(3), vxlan_peer(4)];
        let t = targets(&peers);
        assert_eq!(t.len(), 6);
        let outcomes = [
            Outcome::Answered,
            Outcome::Answered,
            Outcome::NoAnswer,
            Outcome::Answered,
            Outcome::NoAnswer,
            Outcome::NoAnswer,
        ];
        let found: Vec<String> = reach_findings(&peers, &t, &outcomes, "HINT")
            .into_iter()
            .map(|f| f.message)
            .collect();
        assert_eq!(
            found,
            [
                "peer lease 198.18.3.0-24 (192.0.2.3) is unreachable over the overlay (198.18.3.0 via \
                 flannel.1) although its underlay address 192.0.2.3 answers: HINT",
                "peer lease 198.18.4.0-24 (192.0.2.4) answers neither over the overlay (198.18.4.0) nor \
                 on its underlay address 192.0.2.4: the node is down or the underlay does not reach it",
            ]
        );
        let all = vec![Outcome::Answered; 6];
        let ok = reach_findings(&peers, &t, &all, "HINT");
        assert_eq!(ok[0].message, "every peer answers (3 peers, 3 probes)");
    }

    #[test]
    fn peers_that_answered_over_the_overlay_are_listed() {
        let mut underlay_only = vxlan_peer(5);
        underlay_only.pairs[0].overlay = None;
        let peers = [vxlan_peer(2), vxlan_peer(3), underlay_only];
        let t = targets(&peers);
        // 198.18.2.0, 192.0.2.2, 198.18.3.0, 192.0.2.3, 192.0.2.5
        let outcomes = [
            Outcome::Answered,
            Outcome::NoAnswer,
            Outcome::NoAnswer,
            Outcome::Answered,
            Outcome::Answered,
        ];
        assert_eq!(
            answered_over_overlay(&peers, &t, &outcomes),
            ["lease 198.18.2.0-24 (192.0.2.2)"]
        );
    }

    #[test]
    fn host_gw_peers_are_probed_on_the_underlay() {
        let peers = [PeerProbes {
            label: "node flannel2".into(),
            pairs: vec![ProbePair {
                overlay: None,
                underlay: ip("2001:db8::2"),
            }],
        }];
        let t = targets(&peers);
        let found = reach_findings(&peers, &t, &[Outcome::NoAnswer], "");
        assert!(
            found[0].message.contains("does not answer on 2001:db8::2"),
            "{found:?}"
        );
    }
}
