//! The one startup/shutdown sequence (spec section 11).
//!
//! Order (as upstream, with the differences noted): subnet manager -> signal handlers -> health
//! server -> network config (waits, never exits, while it is missing or invalid) -> address family
//! -> br_netfilter check -> interface selection -> backend devices -> lease -> device
//! configuration -> firewall (traffic issue) -> subnet.env -> ready -> lease watch + reconciler ->
//! sd_notify -> lease upkeep -> wait for SIGINT/SIGTERM.
//!
//! Shutdown leaves every kernel object in place (devices, routes, neighbours, FDB entries, rules):
//! a restarted daemon adopts them without changing anything that is already right.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backend::reconcile::Reconciler;
use crate::backend::{self, BackendError};
use crate::config::Config;
use crate::http::{self, StatusSource};
use crate::iface::{self, IfaceRequest};
use crate::kernel::Netlink;
use crate::kernel::rtnl::RtNetlink;
use crate::lease::{Lease, LeaseWatcher};
use crate::netconf::NetConf;
use crate::status::DaemonStatus;
use crate::subnet::env_file::PreviousSubnets;
use crate::subnet::etcd::EtcdSubnetManager;
use crate::subnet::{LeaseOutcome, SubnetError, SubnetManager, env_file};
use crate::supervisor::{Supervisor, TaskExit};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("creating the subnet manager: {0}")]
    SubnetManager(SubnetError),
    #[error("{0}")]
    Http(#[from] http::HttpError),
    #[error("network config: neither EnableIPv4 nor EnableIPv6 is set")]
    NoStack,
    #[error(
        "checking br_netfilter: {path} does not exist (load the br_netfilter module, or use EnableNFTables)"
    )]
    BrNetfilter { path: String },
    #[error("opening the kernel netlink socket: {0}")]
    Kernel(crate::kernel::KernelError),
    #[error("selecting the external interface: {0}")]
    Iface(#[from] iface::IfaceError),
    #[error("setting up the {backend} backend: {source}")]
    Backend {
        backend: String,
        source: Box<BackendError>,
    },
    #[error("acquiring a lease: {0}")]
    Lease(SubnetError),
    #[error("setting up the firewall rules: {0}")]
    Traffic(crate::traffic::TrafficError),
    #[error("{0}; exiting so that the node is restarted rather than left half working")]
    TaskEnded(TaskExit),
}

impl DaemonError {
    /// The process exit code for this error (upstream exits 1 on every fatal startup error).
    pub fn exit_code(&self) -> i32 {
        1
    }
}

/// Run the daemon until SIGINT/SIGTERM, a revoked lease, or a fatal error.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let shutdown = CancellationToken::new();
    install_signal_handlers(shutdown.clone());
    let status = Arc::new(DaemonStatus::default());
    let mut tasks = Supervisor::new();

    // What the previous run left in subnet.env: the etcd manager's preferred subnet and the
    // traffic manager's old rules to recycle (read before this run rewrites the file).
    let previous = env_file::read_previous(&config.subnet_file);
    let manager = create_subnet_manager(&config, &previous).await?;
    info!(manager = %manager.name(), "created subnet manager");

    if config.healthz_port > 0 {
        let addr = http::listen_addr(&config.healthz_ip, config.healthz_port)?;
        let listener = http::bind(addr).await?;
        info!(%addr, "serving /healthz, /readyz, /metrics and /peers");
        let serve = http::serve(
            listener,
            status.clone() as Arc<dyn StatusSource>,
            shutdown.clone(),
        );
        tasks.spawn("health server", async move {
            serve.await;
            Ok::<(), String>(())
        });
    }

    let Some(netconf) = manager
        .wait_for_config(&shutdown)
        .await
        .map_err(DaemonError::SubnetManager)?
    else {
        info!("shut down while waiting for the network config");
        return Ok(());
    };
    info!(backend = %netconf.backend_type, "found network config");
    if !netconf.enable_ipv4 && !netconf.enable_ipv6 {
        return Err(DaemonError::NoStack);
    }
    check_br_netfilter(&netconf)?;

    let netlink: Arc<dyn Netlink> = Arc::new(RtNetlink::new().map_err(DaemonError::Kernel)?);
    // kube: the node annotations node-public-ip(v6) override --public-ip(v6) (spec 11.1 step 8).
    let (stored_ip, stored_ipv6) = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        stored = manager.stored_public_ips() => stored.map_err(DaemonError::SubnetManager)?,
    };
    let request = IfaceRequest {
        iface: config.iface.clone(),
        iface_regex: config.iface_regex.clone(),
        iface_can_reach: config.iface_can_reach,
        public_ip: stored_or_flag(stored_ip, config.public_ip)?,
        public_ipv6: stored_or_flag(stored_ipv6, config.public_ipv6)?,
        ipv4: netconf.enable_ipv4,
        ipv6: netconf.enable_ipv6,
    };
    let ext = iface::discover(&request, netlink.as_ref()).await?;

    let backend_err = |source| DaemonError::Backend {
        backend: netconf.backend_type.clone(),
        source: Box::new(source),
    };
    // kube: reuse the VTEP MACs (IPv4 and IPv6 device) published by an earlier run, so peers'
    // neighbour and FDB entries stay valid.
    let stored_macs = if netconf.backend_type == "vxlan" {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            macs = manager.stored_vtep_macs() => macs.map_err(DaemonError::SubnetManager)?,
        }
    } else {
        (None, None)
    };
    let mut backend = backend::build(&netconf, &ext, stored_macs).map_err(backend_err)?;
    if let Some(metrics) = backend.metrics() {
        status.set_data_path_metrics(metrics);
    }
    let attrs = backend.prepare(netlink.as_ref()).await.map_err(backend_err)?;
    let Some(lease) = acquire_lease(manager.as_ref(), &netconf, &attrs, &shutdown).await? else {
        return Ok(());
    };
    let mtu = backend
        .configure(netlink.as_ref(), &lease)
        .await
        .map_err(backend_err)?;

    // Traffic manager (spec 11.1 step 10), with the ipip peer filter fed by the lease watcher.
    let (ipip_peers, ipip_filter) = crate::traffic::ipip_filter::request_for(&netconf, ext.iface_addr);
    let traffic = crate::traffic::start(
        &config,
        &netconf,
        &lease,
        &previous,
        netlink.clone(),
        shutdown.clone(),
        ipip_filter,
    )
    .await
    .map_err(DaemonError::Traffic)?;
    tasks.spawn("firewall upkeep", async move {
        traffic.await;
        Ok::<(), String>(())
    });

    let contents = env_file::render(&netconf, &lease, mtu, config.ip_masq);
    match env_file::write_atomic(&config.subnet_file, contents.as_bytes()) {
        Ok(()) => {
            info!(path = %config.subnet_file.display(), "wrote subnet file");
            status.set_subnet_file_written(true);
        }
        Err(e) => warn!("{e}; flanneld keeps running but will not report ready"),
    }

    info!("running the backend: programming peers from the lease watch");
    // The peer table exists once the backend is prepared; /peers lists it (flanneld doctor).
    if let Some(table) = backend.peer_table() {
        status.set_peer_table(table);
    }
    let reconciler = Reconciler::new(netlink.clone(), backend, lease.clone());
    status.set_reconcile(reconciler.status());
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    tasks.spawn("reconciler", reconciler.run(events_rx, shutdown.clone()));
    // alloc watches no leases (spec 9.7; in kube mode no node list/watch, spec 6.3): the
    // reconciler gets one empty snapshot and never anything else.
    let batches = if netconf.backend_type == "alloc" {
        use futures::StreamExt;
        let snapshot = crate::lease::LeaseBatch::Snapshot(Vec::new());
        futures::stream::once(async move { snapshot })
            .chain(futures::stream::pending())
            .boxed()
    } else {
        manager.watch_leases()
    };
    let watch = forward_lease_events(batches, lease.clone(), events_tx, ipip_peers, shutdown.clone());
    tasks.spawn("lease watch", async move {
        watch.await;
        Ok::<(), String>(())
    });

    match crate::sdnotify::notify("READY=1") {
        Ok(true) => info!("notified systemd: READY=1"),
        Ok(false) => {}
        Err(e) => warn!("{e}"),
    }

    let outcome = supervise(manager.as_ref(), &lease, &mut tasks, &shutdown).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(3), tasks.join_all()).await;
    match outcome {
        Ok(()) => {
            info!("exiting cleanly; devices, routes, neighbour and FDB entries are left in place");
            Ok(())
        }
        Err(exit) => {
            error!("{exit}; the data plane is left in place");
            Err(DaemonError::TaskEnded(exit))
        }
    }
}

/// Keep the lease alive (etcd renewal; kube: one status patch) and watch the long-lived tasks
/// until shutdown. A task that ends before shutdown is returned as the error.
async fn supervise(
    manager: &dyn SubnetManager,
    lease: &Lease,
    tasks: &mut Supervisor,
    shutdown: &CancellationToken,
) -> Result<(), TaskExit> {
    let upkeep = async {
        match manager.complete_lease(lease, shutdown.clone()).await {
            Ok(LeaseOutcome::Revoked) => {
                warn!(
                    "our lease was deleted from the datastore; shutting down (the data plane is left in place)"
                );
                shutdown.cancel();
            }
            Ok(LeaseOutcome::TakenOver { holder }) => {
                return Err(TaskExit {
                    name: "lease upkeep",
                    error: Some(format!(
                        "this node's subnet is now held by {holder}; a restart acquires a new subnet"
                    )),
                });
            }
            Ok(_) => {}
            Err(e) => error!("keeping the lease alive: {e}"),
        }
        // Done (kube returns at once): the tasks and the shutdown signal decide from here.
        std::future::pending::<Result<(), TaskExit>>().await
    };
    tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        result = upkeep => result,
        exit = tasks.next_exit() => {
            if shutdown.is_cancelled() {
                Ok(())
            } else {
                Err(exit)
            }
        }
    }
}

/// The etcd or Kubernetes subnet manager, as configured.
async fn create_subnet_manager(
    config: &Config,
    previous: &PreviousSubnets,
) -> Result<Arc<dyn SubnetManager>, DaemonError> {
    if config.kube_subnet_mgr {
        let options = crate::subnet::kube::KubeOptions::from_config(config);
        let env = crate::subnet::kube::KubeEnv::from_process();
        let manager = crate::subnet::kube::KubeSubnetManager::new(options, env)
            .await
            .map_err(|e| DaemonError::SubnetManager(e.into()))?;
        return Ok(Arc::new(manager));
    }
    let manager =
        EtcdSubnetManager::connect(&config.etcd, previous.clone(), config.subnet_lease_renew_margin)
            .await
            .map_err(DaemonError::SubnetManager)?;
    Ok(Arc::new(manager))
}

/// A public IP stored by the subnet manager (kube annotation) wins over the flag's value.
fn stored_or_flag<T: std::str::FromStr>(
    stored: Option<String>,
    flag: Option<T>,
) -> Result<Option<T>, DaemonError> {
    match stored {
        None => Ok(flag),
        Some(text) => text.parse().map(Some).map_err(|_| {
            DaemonError::SubnetManager(SubnetError::Fatal(format!(
                "the public IP {text:?} stored for this node is not a valid address"
            )))
        }),
    }
}

/// Acquire the lease, retrying retriable errors with backoff (a datastore outage at startup
/// must not crash-loop the node).
async fn acquire_lease(
    manager: &dyn SubnetManager,
    netconf: &NetConf,
    attrs: &crate::lease::LeaseAttrs,
    shutdown: &CancellationToken,
) -> Result<Option<Lease>, DaemonError> {
    let mut delay = Duration::from_millis(200);
    loop {
        match manager.acquire_lease(netconf, attrs).await {
            Ok(lease) => return Ok(Some(lease)),
            Err(e) if e.is_retriable() => {
                warn!("acquiring a lease failed (retrying in {delay:?}): {e}");
            }
            Err(e) => return Err(DaemonError::Lease(e)),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Feed the lease watch through the LeaseWatcher into the reconciler. The first batch (the
/// snapshot, possibly empty) is always sent: it tells the reconciler the cluster view is complete.
async fn forward_lease_events(
    mut batches: futures::stream::BoxStream<'static, crate::lease::LeaseBatch>,
    own: Lease,
    events: tokio::sync::mpsc::UnboundedSender<Vec<crate::lease::LeaseEvent>>,
    ipip_peers: Option<crate::traffic::ipip_filter::PeersSender>,
    shutdown: CancellationToken,
) {
    use futures::StreamExt;
    let mut watcher = LeaseWatcher::new(own);
    let mut first = true;
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return,
            b = batches.next() => match b { Some(b) => b, None => return },
        };
        let out = watcher.apply(batch);
        if let Some(sender) = &ipip_peers {
            crate::traffic::ipip_filter::publish(sender, watcher.known());
        }
        if (first || !out.is_empty()) && events.send(out).is_err() {
            return;
        }
        first = false;
    }
}

fn check_br_netfilter(netconf: &NetConf) -> Result<(), DaemonError> {
    if netconf.enable_nftables {
        return Ok(());
    }
    let mut paths = Vec::new();
    if netconf.enable_ipv4 {
        paths.push("/proc/sys/net/bridge/bridge-nf-call-iptables");
    }
    if netconf.enable_ipv6 {
        paths.push("/proc/sys/net/bridge/bridge-nf-call-ip6tables");
    }
    for path in paths {
        if !std::path::Path::new(path).exists() {
            return Err(DaemonError::BrNetfilter {
                path: path.to_string(),
            });
        }
    }
    Ok(())
}

/// First SIGINT/SIGTERM: orderly shutdown. Second: exit at once (as upstream restores the default
/// signal behaviour).
fn install_signal_handlers(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            error!("installing signal handlers failed");
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        info!("received a shutdown signal; stopping (a second signal exits immediately)");
        shutdown.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        std::process::exit(130);
    });
}
