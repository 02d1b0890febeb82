//! The userspace implementation of the `WireguardDevice` seam, for kernels without the
//! WireGuard module: a persistent TUN device with the device's name (opened through
//! `backend::tun`; address, MTU and routes are set by the backend and the reconciler as for the
//! kernel device), the WireGuard protocol through boringtun's `noise` state machine (`peer`,
//! `worker`), batched UDP (`udp`), TUN offloads (the shared `backend::offload`), and the standard
//! UAPI socket `/run/wireguard/<name>.sock` (`uapi`, `uapi_server`) so `wg show` and `wg set`
//! work as with the kernel module.
//!
//! It must not decide anything about peers: it applies updates, with the kernel module's
//! semantics (`device::apply_update`), and reports its state. A `wg set` on the socket is
//! announced through `changes()` so the reconciler checks at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::stream::BoxStream;

use crate::backend::tun::{QueueOptions, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TunError, TunQueue};
use crate::kernel::Netlink;

use super::device::{DeviceInfo, DeviceUpdate, EnsuredLink, Implementation, WgError, WireguardDevice};
use super::metrics::WgMetrics;

pub mod instance;
pub mod peer;
pub mod uapi;
pub mod uapi_server;
pub mod udp;
pub mod waker;
pub mod worker;

use instance::Instance;

/// Where the UAPI sockets live (as wireguard-go and `wg` expect).
pub const UAPI_DIR: &str = "/run/wireguard";

struct Running {
    instance: Arc<Instance>,
    uapi: tokio::task::JoinHandle<()>,
    socket: PathBuf,
}

pub struct UserspaceWireguard {
    uapi_dir: PathBuf,
    metrics: Arc<WgMetrics>,
    devices: Mutex<HashMap<String, Running>>,
    subscribers: Arc<Mutex<Vec<futures::channel::mpsc::UnboundedSender<()>>>>,
}

impl UserspaceWireguard {
    pub fn new(uapi_dir: PathBuf, metrics: Arc<WgMetrics>) -> UserspaceWireguard {
        UserspaceWireguard {
            uapi_dir,
            metrics,
            devices: Mutex::new(HashMap::new()),
            subscribers: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn instance(&self, name: &str) -> Option<Arc<Instance>> {
        let devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        devices.get(name).map(|r| r.instance.clone())
    }

    /// Packet threads per device: one per core (at most 8).
    fn queues() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8)
    }

    fn notifier(&self) -> Arc<dyn Fn() + Send + Sync> {
        let subscribers = self.subscribers.clone();
        Arc::new(move || {
            let mut subs = subscribers.lock().unwrap_or_else(|p| p.into_inner());
            subs.retain(|tx| tx.unbounded_send(()).is_ok());
        })
    }
}

impl Drop for UserspaceWireguard {
    fn drop(&mut self) {
        let devices = self.devices.get_mut().unwrap_or_else(|p| p.into_inner());
        // The TUN devices stay (persistent); the sockets go, as wireguard-go removes its own.
        for (_, r) in devices.drain() {
            r.uapi.abort();
            r.instance.stop();
            let _ = std::fs::remove_file(&r.socket);
        }
    }
}

/// Open `count` queues (at least one) of the TUN device `name` with a `virtio_net_hdr` on every
/// packet, creating a persistent device or attaching to the one a previous run left. The first
/// queue makes the device persistent and enables checksum and TCP segmentation offload before
/// the others attach, so a failure on a later queue still leaves the device in place.
fn open_tun(name: &str, count: usize) -> Result<Vec<TunQueue>, TunError> {
    let opts = QueueOptions { vnet_hdr: true };
    let first = TunQueue::open(name, opts)?;
    first.set_persist(true)?;
    first.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)?;
    let mut queues = vec![first];
    for _ in 1..count.max(1) {
        queues.push(TunQueue::open(name, opts)?);
    }
    Ok(queues)
}

#[async_trait::async_trait]
impl WireguardDevice for UserspaceWireguard {
    fn implementation(&self) -> Implementation {
        Implementation::Userspace
    }

    async fn ensure_link(&self, k: &dyn Netlink, name: &str, mtu: u32) -> Result<EnsuredLink, WgError> {
        let existing = k
            .link_by_name(name)
            .await
            .map_err(WgError::kernel(format!("looking up WireGuard device {name}")))?;
        let instance = self.instance(name);
        // Our own TUN, still there: nothing to do but the MTU.
        if let (Some(inst), Some(link)) = (&instance, &existing)
            && inst.index() == link.index
        {
            if link.mtu != mtu {
                k.set_link_mtu(link.index, mtu)
                    .await
                    .map_err(WgError::kernel(format!("setting the MTU of {name} to {mtu}")))?;
            }
            return Ok(EnsuredLink {
                link: link.clone(),
                created: false,
            });
        }
        // A TUN of an earlier run (persistent) is adopted; anything else of that name replaced.
        let mut created = true;
        if let Some(link) = &existing {
            if link.kind.as_deref() == Some("tun") && instance.is_none() {
                created = false;
            } else {
                tracing::warn!(device = %name, kind = ?link.kind, "replacing a link with the WireGuard device's name");
                match k.delete_link(link.index).await {
                    Err(e) if !e.is_not_found() => {
                        return Err(WgError::kernel(format!("deleting link {name}"))(e));
                    }
                    _ => {}
                }
            }
        }
        let queues =
            open_tun(name, Self::queues()).map_err(|e| WgError::device("opening TUN queues for", name, e))?;
        let link = k
            .link_by_name(name)
            .await
            .map_err(WgError::kernel(format!("looking up WireGuard device {name}")))?
            .ok_or_else(|| {
                WgError::device("creating", name, "the TUN device vanished right after creation")
            })?;
        if link.mtu != mtu {
            k.set_link_mtu(link.index, mtu)
                .await
                .map_err(WgError::kernel(format!("setting the MTU of {name} to {mtu}")))?;
        }
        let inst = match instance {
            Some(inst) => inst,
            None => {
                let inst = Arc::new(Instance::new(name, link.index, self.metrics.clone()));
                let (path, task) = uapi_server::serve(&self.uapi_dir, inst.clone(), self.notifier())
                    .map_err(|e| {
                        WgError::device(
                            "serving the UAPI socket of",
                            name,
                            format!("{}: {e}", self.uapi_dir.display()),
                        )
                    })?;
                tracing::info!(device = %name, socket = %path.display(), "UAPI socket ready (wg show and wg set work)");
                self.devices.lock().unwrap_or_else(|p| p.into_inner()).insert(
                    name.to_string(),
                    Running {
                        instance: inst.clone(),
                        uapi: task,
                        socket: path,
                    },
                );
                inst
            }
        };
        inst.attach_tun(link.index, queues)?;
        tracing::info!(device = %name, index = link.index, mtu, adopted = !created, "userspace WireGuard TUN device ready");
        Ok(EnsuredLink { link, created })
    }

    async fn get(&self, name: &str) -> Result<Option<DeviceInfo>, WgError> {
        Ok(self.instance(name).map(|i| i.get()))
    }

    async fn set(&self, name: &str, update: &DeviceUpdate) -> Result<(), WgError> {
        let inst = self
            .instance(name)
            .ok_or_else(|| WgError::NoDevice(name.to_string()))?;
        inst.set(update)
    }

    fn changes(&self) -> Option<BoxStream<'static, ()>> {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        Some(rx.boxed())
    }
}
