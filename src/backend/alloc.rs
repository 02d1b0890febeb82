//! The alloc backend (spec 9.7): a lease and nothing else. No device, no route, no per-peer entry;
//! the MTU written to subnet.env is the external interface's. Upstream publishes only the public
//! IP (no BackendType) and watches no leases; the daemon skips the lease watch for it, so in kube
//! mode no node list/watch runs either (spec 6.3: alloc needs no node informer).

use std::net::Ipv4Addr;

use crate::backend::{Backend, BackendError, Entry, ExternalInterface, Ownership, Underlay};
use crate::kernel::Netlink;
use crate::lease::{Lease, LeaseAttrs};
use crate::netconf::NetConf;

/// The alloc backend.
pub struct AllocBackend {
    ext: ExternalInterface,
    enable_ipv4: bool,
    enable_ipv6: bool,
}

impl AllocBackend {
    pub fn new(conf: &NetConf, ext: &ExternalInterface) -> AllocBackend {
        AllocBackend {
            ext: ext.clone(),
            enable_ipv4: conf.enable_ipv4,
            enable_ipv6: conf.enable_ipv6,
        }
    }
}

#[async_trait::async_trait]
impl Backend for AllocBackend {
    fn kind(&self) -> &'static str {
        "alloc"
    }

    async fn prepare(&mut self, _k: &dyn Netlink) -> Result<LeaseAttrs, BackendError> {
        Ok(LeaseAttrs {
            public_ip: self
                .ext
                .ext_addr
                .filter(|_| self.enable_ipv4)
                .unwrap_or(Ipv4Addr::UNSPECIFIED),
            public_ipv6: self.ext.ext_v6_addr.filter(|_| self.enable_ipv6),
            ..LeaseAttrs::default()
        })
    }

    async fn configure(&mut self, _k: &dyn Netlink, _own: &Lease) -> Result<u32, BackendError> {
        Ok(self.ext.mtu)
    }

    fn entries_for(&self, _remote: &Lease, _underlay: &Underlay) -> Vec<Entry> {
        Vec::new()
    }

    fn ownership(&self, _own: &Lease) -> Ownership {
        // Nothing in the kernel is the alloc backend's.
        Ownership::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testutil::{kernel_with_eth0, lease_of, netconf, own_lease};
    use crate::netconf::BackendConfig;

    #[tokio::test]
    async fn publishes_only_the_public_ip_creates_nothing_and_reports_the_ext_mtu() {
        let (k, mut ext) = kernel_with_eth0();
        ext.ext_addr = Some("203.0.113.5".parse().unwrap());
        let mut b = AllocBackend::new(&netconf(BackendConfig::Alloc), &ext);
        k.reset_counters();
        let attrs = b.prepare(&*k).await.unwrap();
        assert_eq!(attrs.to_json(), r#"{"PublicIP":"203.0.113.5","PublicIPv6":null}"#);
        assert_eq!(b.configure(&*k, &own_lease("")).await.unwrap(), 1500);
        assert!(!b.ensure_devices(&*k, &own_lease("")).await.unwrap());
        assert_eq!(k.counters().mutations, 0, "no device, no address");
        assert!(
            b.entries_for(&lease_of(2, "", None), &Underlay::default())
                .is_empty()
        );
        assert_eq!(b.ownership(&own_lease("")), Ownership::default());
        assert!(b.peer_table().is_none() && b.device_names().is_empty());
    }
}
