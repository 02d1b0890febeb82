//! `flanneld doctor` (alias `diag`): what is wrong with this node's overlay, and why, in plain
//! sentences (`--json` for tools), exit status 1 when anything is. It takes the daemon's own flags
//! and `FLANNELD_*` environment (parsed by `cli`, validated by `config`), reads the datastore the
//! daemon uses (`datastore`), the kernel, and the daemon's /readyz and /metrics (`health`), and
//! checks:
//! - this node's lease against its devices (MAC, addresses, MTU) and its etcd value or annotations
//!   (`own`, `backends`);
//! - every peer's route, neighbour and FDB entry against its lease, and entries no lease explains,
//!   decided by the reconciler's own planner over the backend's own `entries_for` (`peers`); for
//!   backends with a peer table of their own also its entries (`peer_table`): the udp table from
//!   the daemon's /peers (`udp`), WireGuard peers from the device itself (`wireguard`, `wg_device`);
//! - reachability: each peer's overlay address and public IP, probed (`probe`, `reach`);
//! - leases that overlap, expire soon, or name another backend type (`leases`).
//!
//! Read-only: it never changes the kernel, a file or the datastore (GET/LIST only, netlink dumps
//! and WireGuard `get` requests only, ICMP echo requests). Per-backend checks live behind `backends::DoctorBackend`, so backends
//! with peer tables of their own plug in there. Spec: flanneld-behaviour.md 3, 4, 5, 6, 9, 11.2.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::backend::reconcile::{read_installed, underlay_from};
use crate::cli::{self, CliOutcome};
use crate::config::Config;
use crate::iface::{self, IfaceRequest};
use crate::kernel::Netlink;
use crate::kernel::rtnl::RtNetlink;
use crate::subnet::env_file;

pub mod backends;
pub mod datastore;
pub mod health;
pub mod ipip;
pub mod leases;
pub mod own;
pub mod peer_table;
pub mod peers;
pub mod probe;
pub mod reach;
pub mod report;
pub mod udp;
pub mod wg_device;
pub mod wireguard;

use backends::{DoctorBackend, KernelView};
use report::{Check, Finding, Report, THIS_NODE};

const USAGE: &str = "usage: flanneld doctor [--json] [--no-probe] [--healthz IP:PORT] [flanneld flags...]\n\
  Checks this node's overlay with the daemon's own flags and FLANNELD_* environment; exit 1 when \
  something is wrong.\n  --json        findings as JSON\n  --no-probe    do not send ICMP probes to the peers\n  \
  --healthz     where the daemon serves /readyz (default: --healthz-ip and --healthz-port)\n";

/// How long the datastore may take to answer all of doctor's reads.
const DATASTORE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a peer has to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Doctor's own flags plus the daemon's configuration.
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    pub json: bool,
    pub probe: bool,
    /// `--healthz IP:PORT` (diag's flag); else the daemon's --healthz-ip/--healthz-port.
    pub healthz: Option<SocketAddr>,
    pub config: Config,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    Run(Box<DoctorOptions>),
    Help,
}

/// Parses doctor's flags (`--json`, `--no-probe`, `--healthz IP:PORT`, one or two dashes) and
/// hands every other argument, with the environment, to the daemon's own parser.
pub fn parse_args(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Parsed, String> {
    let (mut json, mut probe, mut healthz) = (false, true, None);
    let mut daemon_args = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let name = arg.trim_start_matches('-');
        let (name, inline) = match name.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (name, None),
        };
        match (arg.starts_with('-'), name) {
            (true, "json") => json = true,
            (true, "no-probe") => probe = false,
            (true, "healthz") => {
                let value = inline
                    .or_else(|| rest.next().cloned())
                    .ok_or("flag -healthz needs a value")?;
                healthz =
                    Some(value.parse().map_err(|_| {
                        format!("invalid value {value:?} for flag -healthz: expected IP:PORT")
                    })?);
            }
            _ => daemon_args.push(arg.clone()),
        }
    }
    let flags = match cli::parse(&daemon_args, env).map_err(|e| e.to_string())? {
        CliOutcome::Run { flags, .. } => flags,
        CliOutcome::Help(_) | CliOutcome::Version => return Ok(Parsed::Help),
    };
    let config = Config::from_flags(&flags).map_err(|e| e.to_string())?;
    Ok(Parsed::Run(Box::new(DoctorOptions {
        json,
        probe,
        healthz,
        config,
    })))
}

/// `args[0]` is the invoked name (`doctor` or `diag`). Exit 0: nothing wrong; 1: a problem; 2:
/// bad arguments.
pub fn doctor_main(args: &[String]) -> i32 {
    let env = |name: &str| std::env::var(name).ok();
    let opts = match parse_args(args.get(1..).unwrap_or_default(), &env) {
        Ok(Parsed::Run(opts)) => opts,
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return 0;
        }
        Err(e) => {
            eprint!("flanneld doctor: {e}\n{USAGE}");
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("flanneld doctor: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let report = runtime.block_on(run(&opts));
    if opts.json {
        println!("{}", report.render_json());
    } else {
        print!("{}", report.render_text());
    }
    report.exit_code()
}

fn problem(check: Check, object: &str, message: String) -> Finding {
    Finding::problem(check, THIS_NODE, object, message)
}

/// Every check, in order; a check that cannot run (no datastore, no interface) says why and the
/// ones that depend on it are skipped.
pub async fn run(opts: &DoctorOptions) -> Report {
    let config = &opts.config;
    let mut report = Report::default();
    let subnet_path = config.subnet_file.display().to_string();
    let subnet_env = std::fs::read_to_string(&config.subnet_file)
        .map_err(|e| e.to_string())
        .and_then(|text| env_file::parse_env(&text));
    let health = opts
        .healthz
        .or_else(|| health::health_addr(&config.healthz_ip, config.healthz_port));
    node_checks(opts, &mut report, &subnet_path, &subnet_env, health).await;
    match health {
        Some(addr) => {
            let answers = tokio::task::spawn_blocking(move || {
                (
                    health::http_get(addr, "/readyz"),
                    health::http_get(addr, "/metrics"),
                )
            })
            .await;
            if let Ok((readyz, metrics)) = answers {
                report.extend(health::daemon_findings(addr, readyz, metrics));
            }
        }
        None => report.push(Finding::note(
            Check::Daemon,
            THIS_NODE,
            "--healthz-port",
            "the daemon's health server is off (--healthz-port 0): its readiness is not checked".into(),
        )),
    }
    report
}

async fn node_checks(
    opts: &DoctorOptions,
    report: &mut Report,
    subnet_path: &str,
    subnet_env: &Result<HashMap<String, String>, String>,
    health: Option<SocketAddr>,
) {
    let config = &opts.config;
    let cluster = match tokio::time::timeout(DATASTORE_TIMEOUT, datastore::read(config)).await {
        Ok(Ok(cluster)) => cluster,
        Ok(Err(e)) => return report.push(problem(Check::Datastore, "datastore", e)),
        Err(_) => {
            return report.push(problem(
                Check::Datastore,
                "datastore",
                format!("the datastore did not answer within {DATASTORE_TIMEOUT:?}"),
            ));
        }
    };
    report.context.insert("datastore".into(), cluster.source.clone());
    report
        .context
        .insert("backend".into(), cluster.netconf.backend_type.clone());
    report.extend(cluster.findings.iter().cloned());
    let k = match RtNetlink::new() {
        Ok(k) => k,
        Err(e) => return report.push(problem(Check::Config, "netlink", format!("opening netlink: {e}"))),
    };
    let (kernel, routes) = match (k.links().await, k.addrs().await, k.routes().await) {
        (Ok(links), Ok(addrs), Ok(routes)) => (KernelView { links, addrs }, routes),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return report.push(problem(
                Check::Config,
                "kernel",
                format!("reading the kernel: {e}"),
            ));
        }
    };

    // The interface, as the daemon selects it (kube: node-public-ip annotations first).
    let stored = cluster.kube.as_ref().and_then(|kube| {
        let node = kube.node.as_ref()?;
        crate::subnet::kube::annotations::stored_public_ips(&kube.names, node).ok()
    });
    let (stored_v4, stored_v6) = stored.unwrap_or_default();
    let request = IfaceRequest {
        public_ip: stored_v4.or(config.public_ip),
        public_ipv6: stored_v6.or(config.public_ipv6),
        ..IfaceRequest::from_config(config, cluster.netconf.enable_ipv4, cluster.netconf.enable_ipv6)
    };
    let ext = match iface::discover(&request, &k).await {
        Ok(ext) => ext,
        Err(e) => return report.push(problem(Check::Interface, "interface", format!("{e}"))),
    };
    report.context.insert("interface".into(), describe_ext(&ext));

    let own_index = match &cluster.kube {
        Some(_) => cluster.own,
        None => own::own_etcd_lease(&cluster.leases, subnet_env.as_ref().ok(), Some(&ext)),
    };
    let own = own_index.map(|i| &cluster.leases[i]);
    match (own, &cluster.kube) {
        (Some(own), _) => {
            report.context.insert("lease".into(), own.label.clone());
        }
        (None, Some(kube)) => report.push(problem(
            Check::OwnLease,
            &format!("node {}", kube.name),
            match &kube.node {
                None => format!("node {} does not exist in the Kubernetes API (is NODE_NAME right?)", kube.name),
                Some(_) => format!(
                    "node {} carries no flannel lease (annotation {} is not \"true\"): flanneld has not registered it",
                    kube.name, kube.names.subnet_kube_managed
                ),
            },
        )),
        (None, None) => report.push(problem(
            Check::OwnLease,
            "lease",
            format!(
                "no lease in {} has this node's subnet ({subnet_path}) or public IP {}: flanneld has not acquired one",
                cluster.source,
                ext.ext_addr.map(|ip| ip.to_string()).unwrap_or_default()
            ),
        )),
    }

    let mut backend = match backends::for_config(&cluster.netconf, &ext) {
        Ok(b) => b,
        Err(e) => return report.push(problem(Check::Config, "backend", e)),
    };
    report.extend(backend.observe(&k, &kernel).await);
    report.extend(backend.device_findings(own.map(|o| &o.lease), &kernel));
    report.extend(own::subnet_env_findings(
        subnet_path,
        subnet_env,
        &cluster.netconf,
        own.map(|o| &o.lease),
        backend.mtu(),
        config.ip_masq,
    ));
    if let Some(expected) = backend.lease_attrs() {
        match (&cluster.kube, own) {
            (Some(kube), _) => {
                if let Some(node) = &kube.node {
                    report.extend(own::annotation_findings(&kube.names, node, &expected));
                }
            }
            (None, Some(own)) => report.extend(own::lease_value_findings(own, &expected, &ext)),
            (None, None) => {}
        }
    }

    let peers: Vec<&leases::StoredLease> = cluster
        .leases
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != own_index)
        .map(|(_, l)| l)
        .collect();
    // The backend's own peer table (udp table, WireGuard peers), where it has one.
    let table = match backend.installed_peers(health).await {
        Some(Ok(entries)) => Some(entries),
        Some(Err(finding)) => {
            report.push(finding);
            None
        }
        None => None,
    };
    if let (Some(own), Some(b)) = (own, backend.backend()) {
        let view = PeerView {
            peers: &peers,
            routes: &routes,
            kernel: &kernel,
            table: table.as_deref(),
        };
        match peer_entry_findings(&k, b, &own.lease, &view).await {
            Ok(found) => report.extend(found),
            Err(e) => report.push(problem(Check::PeerEntries, "kernel", e)),
        }
    }
    report.extend(leases::lease_findings(
        &cluster.leases,
        own_index,
        &cluster.netconf.backend_type,
        config.subnet_lease_renew_margin,
    ));
    if opts.probe {
        let (found, answered) = probe_peers(backend.as_ref(), &peers).await;
        report.extend(found);
        // A WireGuard endpoint that differs from the lease while the peer answers is roaming.
        peer_table::settle_endpoints(&mut report.findings, &answered);
    }
}

fn describe_ext(ext: &crate::backend::ExternalInterface) -> String {
    let ips: Vec<String> = ext
        .ext_addr
        .map(|ip| ip.to_string())
        .into_iter()
        .chain(ext.ext_v6_addr.map(|ip| ip.to_string()))
        .collect();
    format!("{} (public IP {})", ext.name, ips.join(", "))
}

/// What the peers' entries are compared with.
struct PeerView<'a> {
    peers: &'a [&'a leases::StoredLease],
    routes: &'a [crate::kernel::Route],
    kernel: &'a KernelView,
    /// The backend's installed peer-table entries; `None` when it has no table or it could not be
    /// read (then the expected peer-table entries are not compared either).
    table: Option<&'a [crate::backend::PeerEntry]>,
}

/// The peers' entries as the daemon's backend wants them against the owned kernel entries and
/// the installed peer-table entries.
async fn peer_entry_findings(
    k: &dyn Netlink,
    backend: &dyn crate::backend::Backend,
    own: &crate::lease::Lease,
    view: &PeerView<'_>,
) -> Result<Vec<Finding>, String> {
    let mut ownership = backend.ownership(own);
    let mut gateways: Vec<std::net::IpAddr> = view
        .peers
        .iter()
        .flat_map(|p| leases::public_ips(&p.lease))
        .collect();
    gateways.sort_unstable();
    gateways.dedup();
    ownership.peer_gateways = gateways;
    let mut installed = read_installed(k, &ownership, view.routes)
        .await
        .map_err(|e| format!("reading the installed entries: {e}"))?;
    let underlay = underlay_from(view.routes, &ownership);
    let compared =
        |e: &crate::backend::Entry| view.table.is_some() || !matches!(e, crate::backend::Entry::Peer(_));
    if let Some(table) = view.table {
        installed.extend(table.iter().cloned().map(crate::backend::Entry::Peer));
    }
    let expected: Vec<peers::PeerEntries<'_>> = view
        .peers
        .iter()
        .map(|p| peers::PeerEntries {
            label: &p.label,
            lease: &p.lease,
            entries: backend
                .entries_for(&p.lease, &underlay)
                .into_iter()
                .filter(compared)
                .collect(),
        })
        .collect();
    let names: HashMap<u32, String> = view
        .kernel
        .links
        .iter()
        .map(|l| (l.index, l.name.clone()))
        .collect();
    let link_name = |index: u32| names.get(&index).cloned().unwrap_or_else(|| format!("#{index}"));
    Ok(peers::entry_findings(
        &backend.own_entries(own),
        &expected,
        &installed,
        &link_name,
    ))
}

/// Probes every peer's overlay address and public IP (on a blocking thread: raw sockets); also
/// returns the labels of the peers that answered over the overlay.
async fn probe_peers(
    backend: &dyn DoctorBackend,
    peers: &[&leases::StoredLease],
) -> (Vec<Finding>, Vec<String>) {
    let probes: Vec<reach::PeerProbes> = peers
        .iter()
        .map(|p| reach::PeerProbes {
            label: p.label.clone(),
            pairs: backend.probes(&p.lease),
        })
        .filter(|p| !p.pairs.is_empty())
        .collect();
    if probes.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let targets = reach::targets(&probes);
    let sent = targets.clone();
    let outcomes = tokio::task::spawn_blocking(move || probe::probe(&sent, PROBE_TIMEOUT)).await;
    match outcomes {
        Ok(Ok(outcomes)) => (
            reach::reach_findings(&probes, &targets, &outcomes, &backend.tunnel_hint()),
            reach::answered_over_overlay(&probes, &targets, &outcomes),
        ),
        Ok(Err(e)) => (
            vec![problem(Check::Reachability, "probes", e.to_string())],
            Vec::new(),
        ),
        Err(e) => (
            vec![problem(
                Check::Reachability,
                "probes",
                format!("the probe task failed: {e}"),
            )],
            Vec::new(),
        ),
    }
}
