//! An in-memory WireGuard implementation for unit tests: devices are links of kind `wireguard`
//! in the fake kernel, their configuration follows `device::apply_update` (WireGuard's own
//! semantics), and deleting the link loses the configuration, as with the kernel module.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::stream::BoxStream;

use crate::kernel::Netlink;
use crate::kernel::fake::FakeKernel;

use super::device::{
    DeviceInfo, DeviceUpdate, EnsuredLink, Implementation, WgError, WireguardDevice, apply_update,
};

#[derive(Default)]
struct State {
    /// name -> (link index the config belongs to, config)
    devices: HashMap<String, (u32, DeviceInfo)>,
    sets: usize,
    fail_sets: usize,
    subscribers: Vec<futures::channel::mpsc::UnboundedSender<()>>,
}

pub struct FakeWireguard {
    kernel: Arc<FakeKernel>,
    state: Mutex<State>,
}

impl FakeWireguard {
    pub fn new(kernel: Arc<FakeKernel>) -> FakeWireguard {
        FakeWireguard {
            kernel,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Change a device as `wg set` would from outside, and notify subscribers.
    pub fn operator_set(&self, name: &str, update: &DeviceUpdate) {
        let mut s = self.lock();
        if let Some((_, info)) = s.devices.get_mut(name) {
            apply_update(info, update);
        }
        s.subscribers.retain(|tx| tx.unbounded_send(()).is_ok());
    }

    /// The number of successful `set` calls so far.
    pub fn sets(&self) -> usize {
        self.lock().sets
    }

    /// Make the next `n` `set` calls fail.
    pub fn fail_next_sets(&self, n: usize) {
        self.lock().fail_sets = n;
    }

    /// The configuration of a device whose link still exists.
    pub fn device(&self, name: &str) -> Option<DeviceInfo> {
        let index = self.kernel.link(name)?.index;
        let s = self.lock();
        s.devices
            .get(name)
            .filter(|(i, _)| *i == index)
            .map(|(_, d)| d.clone())
    }
}

#[async_trait::async_trait]
impl WireguardDevice for FakeWireguard {
    fn implementation(&self) -> Implementation {
        Implementation::Fake
    }

    async fn ensure_link(&self, k: &dyn Netlink, name: &str, mtu: u32) -> Result<EnsuredLink, WgError> {
        let kerr = |step: &str| {
            let step = step.to_string();
            move |source| WgError::Kernel { step, source }
        };
        if let Some(link) = k.link_by_name(name).await.map_err(kerr("looking up"))? {
            if link.kind.as_deref() == Some("wireguard") {
                if link.mtu != mtu {
                    k.set_link_mtu(link.index, mtu)
                        .await
                        .map_err(kerr("setting mtu"))?;
                }
                return Ok(EnsuredLink { link, created: false });
            }
            k.delete_link(link.index).await.map_err(kerr("deleting"))?;
        }
        let link = k.create_wireguard(name, mtu).await.map_err(kerr("creating"))?;
        let info = DeviceInfo {
            name: name.to_string(),
            index: link.index,
            ..DeviceInfo::default()
        };
        self.lock().devices.insert(name.to_string(), (link.index, info));
        Ok(EnsuredLink { link, created: true })
    }

    async fn get(&self, name: &str) -> Result<Option<DeviceInfo>, WgError> {
        Ok(self.device(name))
    }

    async fn set(&self, name: &str, update: &DeviceUpdate) -> Result<(), WgError> {
        let index = self.kernel.link(name).map(|l| l.index);
        let mut s = self.lock();
        if s.fail_sets > 0 {
            s.fail_sets -= 1;
            return Err(WgError::device("configuring", name, "injected failure"));
        }
        match (index, s.devices.get_mut(name)) {
            (Some(index), Some((i, info))) if *i == index => {
                apply_update(info, update);
                s.sets += 1;
                Ok(())
            }
            _ => Err(WgError::NoDevice(name.to_string())),
        }
    }

    fn changes(&self) -> Option<BoxStream<'static, ()>> {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        self.lock().subscribers.push(tx);
        Some(rx.boxed())
    }
}
