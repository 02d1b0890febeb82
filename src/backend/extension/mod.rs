//! The extension backend (spec 9.6): no devices; four operator commands do the work.
//! - `PreStartupCommand` runs before the lease is acquired; its output becomes BackendData (a JSON
//!   string). A failure is fatal.
//! - `PostStartupCommand` runs once the lease is known, with `NETWORK`, `SUBNET`, `IPV6SUBNET`,
//!   `PUBLIC_IP`, `PUBLIC_IPV6`. A failure is fatal.
//! - `SubnetAddCommand` / `SubnetRemoveCommand` run per remote lease of type `extension`, with
//!   `SUBNET`, `PUBLIC_IP` (upstream) and `IPV6SUBNET`, `PUBLIC_IPV6` (upstream's docs promise
//!   them, its code forgets them), the lease's decoded BackendData on stdin.
//!
//! Per-peer commands are desired state of the one reconciler (design.md 4b): `entries_for` returns
//! an `ExtensionPeer` per remote lease, and `CommandTable` (the `PeerTable`) runs the add command
//! for a `Replace` and the remove command for a `Delete`. "Installed" is what the commands last
//! succeeded for, so a failed add (or remove) is logged by the reconciler and retried on its next
//! pass; it is never fatal. This module runs no loop of its own. Commands are split on whitespace
//! and run without a shell (`command`), each with a timeout.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::backend::peers::ExtensionPeer;
use crate::backend::{
    Backend, BackendError, Entry, ExternalInterface, Ownership, PeerEntry, PeerError, PeerKey, PeerOp,
    PeerTable, Underlay, WarnOnce,
};
use crate::kernel::Netlink;
use crate::lease::{Lease, LeaseAttrs, go_json_string};
use crate::netconf::{ExtensionConfig, NetConf};

pub mod command;
#[cfg(test)]
mod tests;

/// How long the pre- and post-startup commands may run.
pub const STARTUP_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one add or remove command may run (a pass of the reconciler waits for it).
pub const SUBNET_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Go's `%s` of an unset IPv6 subnet (the zero `IP6Net`).
const NO_IPV6_SUBNET: &str = "::/0";
/// Go's `%s` of a nil IP pointer.
const NO_IPV6: &str = "<nil>";

fn vars<const N: usize>(pairs: [(&str, String); N]) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn v4_text(subnet: Option<Ipv4Net>) -> String {
    subnet.unwrap_or_default().to_string()
}

fn v6_subnet_text(subnet: Option<Ipv6Net>) -> String {
    subnet
        .map(|s| s.to_string())
        .unwrap_or_else(|| NO_IPV6_SUBNET.into())
}

fn v6_text(ip: Option<Ipv6Addr>) -> String {
    ip.map(|ip| ip.to_string()).unwrap_or_else(|| NO_IPV6.into())
}

/// The variables of the post-startup command: `NETWORK`, `SUBNET`, `IPV6SUBNET` (`::/0` when
/// none), `PUBLIC_IP`, `PUBLIC_IPV6` (`<nil>` when none), formatted as upstream does.
pub fn post_startup_env(network: Option<Ipv4Net>, own: &Lease) -> BTreeMap<String, String> {
    vars([
        ("NETWORK", v4_text(network)),
        ("SUBNET", v4_text(own.subnet)),
        ("IPV6SUBNET", v6_subnet_text(own.ipv6_subnet)),
        ("PUBLIC_IP", own.attrs.public_ip.to_string()),
        ("PUBLIC_IPV6", v6_text(own.attrs.public_ipv6)),
    ])
}

/// The variables of the add and remove commands for one remote lease: `SUBNET`, `PUBLIC_IP`
/// (upstream) and `IPV6SUBNET`, `PUBLIC_IPV6` (documented upstream, set only here), formatted as
/// for the post-startup command.
pub fn subnet_env(peer: &ExtensionPeer) -> BTreeMap<String, String> {
    vars([
        ("SUBNET", v4_text(peer.subnet)),
        ("PUBLIC_IP", peer.public_ip.to_string()),
        ("IPV6SUBNET", v6_subnet_text(peer.ipv6_subnet)),
        ("PUBLIC_IPV6", v6_text(peer.public_ipv6)),
    ])
}

/// The string a lease's BackendData (a JSON string, or absent) hands to the commands' stdin;
/// `Err` names why it is not a JSON string.
pub fn decode_backend_data(data: Option<&str>) -> Result<String, String> {
    match data {
        None => Ok(String::new()),
        Some(text) => serde_json::from_str::<String>(text)
            .map_err(|e| format!("BackendData {text} is not a JSON string: {e}")),
    }
}

/// The extension backend.
pub struct ExtensionBackend {
    cfg: ExtensionConfig,
    ext: ExternalInterface,
    network: Option<Ipv4Net>,
    enable_ipv4: bool,
    enable_ipv6: bool,
    table: Arc<CommandTable>,
    warn: WarnOnce,
}

impl ExtensionBackend {
    pub fn new(cfg: &ExtensionConfig, ext: &ExternalInterface, conf: &NetConf) -> ExtensionBackend {
        ExtensionBackend {
            cfg: cfg.clone(),
            ext: ext.clone(),
            network: conf.network,
            enable_ipv4: conf.enable_ipv4,
            enable_ipv6: conf.enable_ipv6,
            table: Arc::new(CommandTable::new(
                &cfg.subnet_add_command,
                &cfg.subnet_remove_command,
                SUBNET_COMMAND_TIMEOUT,
            )),
            warn: WarnOnce::default(),
        }
    }

    /// The per-peer command record (what the add commands last succeeded for).
    pub fn command_table(&self) -> Arc<CommandTable> {
        self.table.clone()
    }
}

async fn run_startup(
    what: &str,
    command: &str,
    env: &BTreeMap<String, String>,
) -> Result<String, BackendError> {
    match command::run(command, env, "", STARTUP_COMMAND_TIMEOUT).await {
        Ok(out) => {
            tracing::info!(command = %command, output = %out.output, "ran the {what} command");
            if out.truncated {
                return Err(BackendError::Config(format!(
                    "extension: the {what} command {command:?} printed more than {} bytes",
                    command::OUTPUT_CAP
                )));
            }
            Ok(out.output)
        }
        Err(e) => Err(BackendError::Config(format!(
            "extension: failed to run the {what} command: {e}"
        ))),
    }
}

#[async_trait::async_trait]
impl Backend for ExtensionBackend {
    fn kind(&self) -> &'static str {
        "extension"
    }

    async fn prepare(&mut self, _k: &dyn Netlink) -> Result<LeaseAttrs, BackendError> {
        let backend_data = if self.cfg.pre_startup_command.is_empty() {
            tracing::info!("no pre-startup command configured; skipping");
            None
        } else {
            let output = run_startup("pre-startup", &self.cfg.pre_startup_command, &BTreeMap::new()).await?;
            Some(go_json_string(&output))
        };
        // Upstream publishes the interface's addresses here, whatever --public-ip says.
        Ok(LeaseAttrs {
            backend_type: "extension".into(),
            public_ip: self
                .ext
                .iface_addr
                .filter(|_| self.enable_ipv4)
                .unwrap_or(Ipv4Addr::UNSPECIFIED),
            public_ipv6: self.ext.iface_v6_addr.filter(|_| self.enable_ipv6),
            backend_data,
            ..LeaseAttrs::default()
        })
    }

    async fn configure(&mut self, _k: &dyn Netlink, own: &Lease) -> Result<u32, BackendError> {
        if self.cfg.post_startup_command.is_empty() {
            tracing::info!("no post-startup command configured; skipping");
        } else {
            let env = post_startup_env(self.network, own);
            run_startup("post-startup", &self.cfg.post_startup_command, &env).await?;
        }
        Ok(self.ext.mtu)
    }

    fn entries_for(&self, remote: &Lease, _underlay: &Underlay) -> Vec<Entry> {
        if self.warn.other_type(remote, self.kind()) {
            return Vec::new();
        }
        let backend_data = match decode_backend_data(remote.attrs.backend_data.as_deref()) {
            Ok(data) => data,
            Err(reason) => {
                if self.warn.first(format!("{} bad data", remote.key())) {
                    tracing::warn!(subnet = %remote.key(), %reason, "skipping remote lease");
                }
                return Vec::new();
            }
        };
        vec![Entry::Peer(PeerEntry::Extension(ExtensionPeer {
            subnet: remote.subnet,
            ipv6_subnet: remote.ipv6_subnet,
            public_ip: remote.attrs.public_ip,
            public_ipv6: remote.attrs.public_ipv6,
            backend_data,
        }))]
    }

    fn ownership(&self, _own: &Lease) -> Ownership {
        // No kernel object is ours: the peer table reports its own entries.
        Ownership::default()
    }

    fn peer_table(&self) -> Option<Arc<dyn PeerTable>> {
        Some(self.table.clone() as Arc<dyn PeerTable>)
    }
}

/// The extension backend's `PeerTable`: applying a peer runs the add command, removing it runs
/// the remove command; what is installed is what those last succeeded for. It decides nothing.
pub struct CommandTable {
    add: String,
    remove: String,
    timeout: Duration,
    installed: Mutex<BTreeMap<PeerKey, ExtensionPeer>>,
}

impl CommandTable {
    pub fn new(add: &str, remove: &str, timeout: Duration) -> CommandTable {
        CommandTable {
            add: add.to_string(),
            remove: remove.to_string(),
            timeout,
            installed: Mutex::new(BTreeMap::new()),
        }
    }

    fn record(&self) -> std::sync::MutexGuard<'_, BTreeMap<PeerKey, ExtensionPeer>> {
        self.installed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `command` for `peer`; an empty command succeeds without running anything.
    async fn run_for(
        &self,
        what: &str,
        command: &str,
        peer: &ExtensionPeer,
        op: &PeerOp,
    ) -> Result<(), PeerError> {
        if command.is_empty() {
            return Ok(());
        }
        let env = subnet_env(peer);
        match command::run(command, &env, &peer.backend_data, self.timeout).await {
            Ok(out) => {
                tracing::info!(command = %command, subnet = ?peer.subnet, public_ip = %peer.public_ip,
                    output = %out.output, "ran the subnet {what} command");
                Ok(())
            }
            Err(e) => Err(PeerError::new(op, format!("subnet {what} command failed: {e}"))),
        }
    }
}

#[async_trait::async_trait]
impl PeerTable for CommandTable {
    async fn installed(&self) -> Result<Vec<PeerEntry>, PeerError> {
        Ok(self
            .record()
            .values()
            .cloned()
            .map(PeerEntry::Extension)
            .collect())
    }

    async fn apply(&self, ops: &[PeerOp]) -> Vec<Result<(), PeerError>> {
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            let PeerEntry::Extension(peer) = op.entry() else {
                results.push(Err(PeerError::new(op, "not an extension peer")));
                continue;
            };
            let key = op.entry().key();
            let result = match op {
                PeerOp::Replace(_) => {
                    let done = self.run_for("add", &self.add, peer, op).await;
                    if done.is_ok() {
                        self.record().insert(key, peer.clone());
                    }
                    done
                }
                PeerOp::Delete(_) => {
                    let done = self.run_for("remove", &self.remove, peer, op).await;
                    if done.is_ok() {
                        self.record().remove(&key);
                    }
                    done
                }
            };
            results.push(result);
        }
        results
    }
}
