//! One userspace WireGuard device: its configuration (kept with `device::apply_update`, the
//! same semantics as the kernel module), the snapshot the packet threads read, and the threads
//! themselves (one per TUN queue, plus the timer thread), restarted when the TUN device is
//! recreated or the listen port changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::SystemTime;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::{PublicKey, StaticSecret};

use crate::backend::peers::WgKey;
use crate::backend::tun::TunQueue;

use super::super::device::{DeviceInfo, DeviceUpdate, WgError, apply_update};
use super::super::metrics::WgMetrics;
use super::peer::{AllowedIps, HANDSHAKE_RATE_LIMIT, Peer, Snapshot};
use super::udp::{UdpSock, bind_group};
use super::waker::Waker;
use super::worker::{self, Shared};

/// The running threads and their descriptors.
struct Runtime {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    threads: Vec<JoinHandle<()>>,
    port: u16,
}

impl Runtime {
    fn shut(self) {
        self.stop.store(true, Ordering::Release);
        for _ in 0..self.threads.len() {
            self.waker.wake();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

pub struct Instance {
    pub name: String,
    config: Mutex<DeviceInfo>,
    shared: Arc<Shared>,
    tun: Mutex<Vec<Arc<TunQueue>>>,
    runtime: Mutex<Option<Runtime>>,
    next_index: AtomicU32,
}

impl Instance {
    pub fn new(name: &str, index: u32, metrics: Arc<WgMetrics>) -> Instance {
        Instance {
            name: name.to_string(),
            config: Mutex::new(DeviceInfo {
                name: name.to_string(),
                index,
                ..DeviceInfo::default()
            }),
            shared: Arc::new(Shared {
                snapshot: RwLock::new(Arc::new(Snapshot::empty())),
                metrics,
            }),
            tun: Mutex::new(Vec::new()),
            runtime: Mutex::new(None),
            next_index: AtomicU32::new(rand::random::<u32>() & 0x00ff_ffff),
        }
    }

    pub fn index(&self) -> u32 {
        self.lock_config().index
    }

    fn lock_config(&self) -> std::sync::MutexGuard<'_, DeviceInfo> {
        self.config.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Use these TUN queues (a new or re-attached device) and restart the threads on them.
    pub fn attach_tun(&self, index: u32, queues: Vec<TunQueue>) -> Result<(), WgError> {
        self.lock_config().index = index;
        *self.tun.lock().unwrap_or_else(|p| p.into_inner()) = queues.into_iter().map(Arc::new).collect();
        self.restart(true)
    }

    /// (Re)start the threads when they are not running on the current port, or `force`.
    fn restart(&self, force: bool) -> Result<(), WgError> {
        let (port, has_key) = {
            let c = self.lock_config();
            (c.listen_port, c.private_key.is_some())
        };
        let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        if !force && runtime.as_ref().is_some_and(|r| r.port == port || port == 0) {
            return Ok(());
        }
        if let Some(old) = runtime.take() {
            old.shut();
        }
        let tun = self.tun.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if tun.is_empty() || !has_key {
            return Ok(());
        }
        let (socks, actual) = bind_group(port, tun.len())
            .map_err(|e| WgError::device("binding UDP port", &self.name, format!("{port}: {e}")))?;
        if port == 0 {
            self.lock_config().listen_port = actual;
        }
        let waker =
            Arc::new(Waker::new().map_err(|e| WgError::device("creating eventfd for", &self.name, e))?);
        let stop = Arc::new(AtomicBool::new(false));
        let socks: Vec<Arc<UdpSock>> = socks.into_iter().map(Arc::new).collect();
        let mut threads = Vec::new();
        for (i, (q, s)) in tun.iter().zip(socks.iter()).enumerate() {
            let (shared, stop, q, s, waker) = (
                self.shared.clone(),
                stop.clone(),
                q.clone(),
                s.clone(),
                waker.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("wg-{}-{i}", self.name))
                .spawn(move || worker::run(shared, stop, q, s, waker));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => tracing::warn!(device = %self.name, error = %e, "starting a packet thread failed"),
            }
        }
        let (shared, stop2, s) = (self.shared.clone(), stop.clone(), socks[0].clone());
        if let Ok(t) = std::thread::Builder::new()
            .name(format!("wg-{}-timers", self.name))
            .spawn(move || worker::run_timers(shared, stop2, s))
        {
            threads.push(t);
        }
        tracing::info!(device = %self.name, port = actual, threads = threads.len(), "userspace WireGuard data path running");
        *runtime = Some(Runtime {
            stop,
            waker,
            threads,
            port: actual,
        });
        Ok(())
    }

    /// Apply an update (from the reconciler or the UAPI socket).
    pub fn set(&self, update: &DeviceUpdate) -> Result<(), WgError> {
        let (old_key, old_port) = {
            let c = self.lock_config();
            (c.private_key.clone(), c.listen_port)
        };
        if let Some(port) = update.listen_port
            && port != old_port
            && port != 0
        {
            // Fail before changing anything when the port is taken.
            bind_group(port, 1)
                .map_err(|e| WgError::device("binding UDP port", &self.name, format!("{port}: {e}")))?;
        }
        {
            let mut c = self.lock_config();
            apply_update(&mut c, update);
            let key_changed = c.private_key != old_key;
            self.rebuild(&c, update, key_changed);
        }
        let restart = self.lock_config().private_key.is_some() != old_key.is_some();
        self.restart(restart)
    }

    /// Build the snapshot for `config`, keeping the runtime state of peers whose key, PSK and
    /// keepalive are unchanged (their sessions survive).
    fn rebuild(&self, config: &DeviceInfo, update: &DeviceUpdate, key_changed: bool) {
        let old = self.shared.load();
        let keys = config.private_key.as_ref().map(|k| {
            let private = StaticSecret::from(*k.as_bytes());
            let public = PublicKey::from(&private);
            (private, public)
        });
        let rate_limiter = match (&keys, key_changed) {
            (Some((_, public)), true) => Arc::new(RateLimiter::new(public, HANDSHAKE_RATE_LIMIT)),
            _ => old.rate_limiter.clone(),
        };
        let endpoints: HashMap<WgKey, std::net::SocketAddr> = update
            .peers
            .iter()
            .filter_map(|p| p.endpoint.map(|e| (p.public_key, e)))
            .collect();
        let mut snap = Snapshot {
            keys: keys.clone(),
            rate_limiter: rate_limiter.clone(),
            by_key: HashMap::new(),
            by_index: HashMap::new(),
            allowed: AllowedIps::default(),
        };
        if let Some((private, _)) = &keys {
            for p in &config.peers {
                let reuse = old.by_key.get(&p.public_key).filter(|o| {
                    !key_changed
                        && o.preshared_key == p.preshared_key
                        && o.keepalive == p.persistent_keepalive
                });
                let peer = match reuse {
                    Some(o) => o.clone(),
                    None => {
                        let index = self.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
                        Arc::new(Peer::new(
                            p.public_key,
                            index,
                            private,
                            p.preshared_key,
                            p.persistent_keepalive,
                            p.endpoint,
                            rate_limiter.clone(),
                        ))
                    }
                };
                if let Some(ep) = endpoints.get(&p.public_key) {
                    peer.set_endpoint(*ep);
                }
                for net in &p.allowed_ips {
                    snap.allowed.insert(*net, peer.clone());
                }
                snap.by_index.insert(peer.index, peer.clone());
                snap.by_key.insert(p.public_key, peer);
            }
        }
        *self.shared.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snap);
    }

    /// The configuration with the peers' live state (current endpoint, handshake, bytes).
    pub fn get(&self) -> DeviceInfo {
        let mut info = self.lock_config().clone();
        let snap = self.shared.load();
        let now = SystemTime::now();
        for p in &mut info.peers {
            if let Some(peer) = snap.by_key.get(&p.public_key) {
                p.endpoint = peer.endpoint().or(p.endpoint);
                let (since, _, _, _, _) = peer.lock_tunn().stats();
                p.last_handshake = since.and_then(|d| now.checked_sub(d));
                p.rx_bytes = peer.rx_bytes.load(Ordering::Relaxed);
                p.tx_bytes = peer.tx_bytes.load(Ordering::Relaxed);
            }
        }
        info
    }

    /// Stop the threads (the TUN device stays: it is persistent).
    pub fn stop(&self) {
        if let Some(r) = self.runtime.lock().unwrap_or_else(|p| p.into_inner()).take() {
            r.shut();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop();
    }
}
