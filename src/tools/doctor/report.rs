//! What doctor found, as data: one `Finding` per sentence (a problem, something verified, or a
//! note such as "not checked yet"), rendered for people (one line each, problems first) or as JSON
//! for tools. Also the wording of kernel entries in sentences (`describe`), shared by every check.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::backend::{Entry, PeerEntry};
use crate::kernel::{NUD_PERMANENT, RTPROT_BOOT, RTPROT_FLANNEL};

/// How a finding counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Something is wrong: doctor exits 1.
    Problem,
    /// Verified and right.
    Ok,
    /// Worth knowing, not wrong (skipped checks, "not checked yet").
    Note,
}

/// Which part of the node a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    Config,
    Datastore,
    Interface,
    SubnetEnv,
    OwnLease,
    Device,
    PeerEntries,
    /// A WireGuard peer's endpoint differs from its lease (a note when the peer answers: roaming).
    PeerEndpoints,
    UnexplainedEntries,
    Leases,
    Reachability,
    Daemon,
}

/// One sentence of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub check: Check,
    /// Who it is about: `this node`, or a peer as `peer_label` names it.
    pub subject: String,
    /// The object it is about (`FDB entry ...`, `flannel.1`, a lease key), for tools.
    pub object: String,
    /// The sentence, naming the subject and the object.
    pub message: String,
}

impl Finding {
    pub fn new(severity: Severity, check: Check, subject: &str, object: &str, message: String) -> Finding {
        Finding {
            severity,
            check,
            subject: subject.to_string(),
            object: object.to_string(),
            message,
        }
    }
    pub fn problem(check: Check, subject: &str, object: &str, message: String) -> Finding {
        Finding::new(Severity::Problem, check, subject, object, message)
    }
    pub fn ok(check: Check, subject: &str, object: &str, message: String) -> Finding {
        Finding::new(Severity::Ok, check, subject, object, message)
    }
    pub fn note(check: Check, subject: &str, object: &str, message: String) -> Finding {
        Finding::new(Severity::Note, check, subject, object, message)
    }
}

/// The subject of findings about this node.
pub const THIS_NODE: &str = "this node";

/// Everything doctor found, in the order the checks ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// What doctor looked at: datastore, node, interface, backend (for the header).
    pub context: BTreeMap<String, String>,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn push(&mut self, finding: Finding) {
        self.findings.push(finding);
    }

    pub fn extend(&mut self, findings: impl IntoIterator<Item = Finding>) {
        self.findings.extend(findings);
    }

    pub fn problems(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Problem)
            .count()
    }

    /// The process exit status: 1 when anything is wrong.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.problems() > 0)
    }

    /// For people: the context, then problems, then what was verified, then notes; one line each.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for (key, value) in &self.context {
            let _ = writeln!(out, "{key}: {value}");
        }
        let mut sorted: Vec<&Finding> = self.findings.iter().collect();
        sorted.sort_by_key(|f| f.severity);
        for f in sorted {
            let tag = match f.severity {
                Severity::Problem => "PROBLEM",
                Severity::Ok => "ok",
                Severity::Note => "note",
            };
            let _ = writeln!(out, "{tag:8}{}", f.message);
        }
        let _ = match self.problems() {
            0 => writeln!(out, "no problem found"),
            1 => writeln!(out, "1 problem found"),
            n => writeln!(out, "{n} problems found"),
        };
        out
    }

    /// For tools: `{"ok": bool, "problems": n, "context": {...}, "findings": [...]}`.
    pub fn render_json(&self) -> String {
        let value = serde_json::json!({
            "ok": self.problems() == 0,
            "problems": self.problems(),
            "context": self.context,
            "findings": self.findings,
        });
        serde_json::to_string_pretty(&value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// A kernel entry in words, `ip`-style, with device names (`#<index>` when unknown):
/// `route 198.18.2.0/24 via 198.18.2.0 dev flannel.1 onlink`,
/// `neighbour 198.18.2.0 lladdr aa:.. on flannel.1`, `FDB entry aa:.. dst 192.0.2.2 on flannel.1`,
/// `udp table entry 198.18.2.0/24 -> 192.0.2.2:8285`,
/// `WireGuard peer <key> on flannel-wg (endpoint 192.0.2.2:51820, allowed IPs 198.18.2.0/24)`.
pub fn describe(entry: &Entry, link_name: &dyn Fn(u32) -> String) -> String {
    match entry {
        Entry::Route(r) => {
            let mut s = format!("route {}", r.dst);
            if let Some(gw) = r.gateway {
                let _ = write!(s, " via {gw}");
            }
            if let Some(oif) = r.oif {
                let _ = write!(s, " dev {}", link_name(oif));
            }
            if r.onlink {
                s.push_str(" onlink");
            }
            match r.protocol {
                RTPROT_FLANNEL => {}
                RTPROT_BOOT => s.push_str(" proto boot"),
                p => {
                    let _ = write!(s, " proto {p}");
                }
            }
            s
        }
        Entry::Neigh(n) => {
            let mac = n.mac.map(|m| m.to_string()).unwrap_or_else(|| "(none)".into());
            let state = if n.state & NUD_PERMANENT != 0 {
                ""
            } else {
                " (not permanent)"
            };
            format!("neighbour {} lladdr {mac} on {}{state}", n.ip, link_name(n.index))
        }
        Entry::Fdb(f) => {
            let dst = f.dst.map(|d| format!(" dst {d}")).unwrap_or_default();
            format!("FDB entry {}{dst} on {}", f.mac, link_name(f.index))
        }
        Entry::Peer(PeerEntry::Udp(p)) => format!("udp table entry {} -> {}", p.subnet, p.endpoint),
        Entry::Peer(PeerEntry::Wireguard(p)) => {
            // Never the preshared key: only the public identity and the routing of the peer.
            let endpoint = p.endpoint.map_or_else(|| "none".into(), |e| e.to_string());
            let ips: Vec<String> = p.allowed_ips.iter().map(|n| n.to_string()).collect();
            format!(
                "WireGuard peer {} on {} (endpoint {endpoint}, allowed IPs {})",
                p.public_key,
                link_name(p.device),
                ips.join(",")
            )
        }
        Entry::Peer(PeerEntry::Extension(p)) => {
            let subnets: Vec<String> = p
                .subnet
                .map(|s| s.to_string())
                .into_iter()
                .chain(p.ipv6_subnet.map(|s| s.to_string()))
                .collect();
            format!("extension peer {} (public IP {})", subnets.join(","), p.public_ip)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{Fdb, MacAddr, Neigh, Route};

    fn names(index: u32) -> String {
        match index {
            3 => "flannel.1".into(),
            other => format!("#{other}"),
        }
    }

    #[test]
    fn entries_read_like_ip_commands() {
        let route = Route {
            onlink: true,
            ..Route::unicast(
                "198.18.2.0/24".parse().unwrap(),
                Some("198.18.2.0".parse().unwrap()),
                Some(3),
            )
        };
        assert_eq!(
            describe(&Entry::Route(route), &names),
            "route 198.18.2.0/24 via 198.18.2.0 dev flannel.1 onlink"
        );
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let neigh = Neigh {
            index: 3,
            ip: "198.18.2.0".parse().unwrap(),
            mac: Some(mac),
            state: NUD_PERMANENT,
        };
        assert_eq!(
            describe(&Entry::Neigh(neigh), &names),
            "neighbour 198.18.2.0 lladdr 02:00:00:00:00:01 on flannel.1"
        );
        let fdb = Fdb {
            index: 9,
            mac,
            dst: Some("192.0.2.2".parse().unwrap()),
            self_flag: true,
            permanent: true,
        };
        assert_eq!(
            describe(&Entry::Fdb(fdb), &names),
            "FDB entry 02:00:00:00:00:01 dst 192.0.2.2 on #9"
        );
    }

    #[test]
    fn problems_decide_the_exit_status_and_come_first() {
        let mut report = Report::default();
        report.push(Finding::ok(
            Check::Daemon,
            THIS_NODE,
            "/readyz",
            "flanneld is ready".into(),
        ));
        assert_eq!(report.exit_code(), 0);
        assert!(report.render_text().ends_with("no problem found\n"));
        report.push(Finding::problem(
            Check::Device,
            THIS_NODE,
            "flannel.1",
            "flannel.1 is missing".into(),
        ));
        assert_eq!(report.exit_code(), 1);
        let text = report.render_text();
        assert!(
            text.starts_with("PROBLEM flannel.1 is missing\nok      flanneld is ready\n"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&report.render_json()).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["problems"], 1);
        assert_eq!(json["findings"][1]["severity"], "problem");
        assert_eq!(json["findings"][1]["check"], "device");
    }
}
