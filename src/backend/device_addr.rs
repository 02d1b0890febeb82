//! The own lease's address on a backend's device and the device's up flag, the same for every
//! backend that gives its device an address (vxlan, ipip, wireguard, udp): which address
//! (`device_address`: the subnet's network address as /32, /128 for IPv6), which addresses are
//! stale (`stale_addresses`), putting the one and removing the others (`ensure_device_address`),
//! and setting the device up (`ensure_device_up`, or `device_link` and `set_up` for a backend with
//! a step of its own in between). Each changes nothing that is already right.
//!
//! It must not create or delete devices, and must not touch an address `stale_addresses` does not
//! name: an operator's addresses outside the cluster network stay. A backend's own checks (the
//! vxlan MAC, the udp MTU) stay with the backend. Spec: flanneld-behaviour.md 9.1, 9.3, 9.4, 9.5
//! (the device address rules).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::backend::BackendError;
use crate::kernel::{Addr, AddrFlags, KernelError, Link, Netlink};

/// Which family a device (or an address on it) carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// 4 or 6, for messages.
    pub fn version(self) -> u8 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }

    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
}

/// The address the device carries for the own lease: the subnet's network address as /32 (/128).
pub fn device_address(subnet: IpNet) -> (IpAddr, u8) {
    let prefix = if subnet.addr().is_ipv4() { 32 } else { 128 };
    (subnet.network(), prefix)
}

fn is_link_local_v6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// The addresses to remove from the device so that only `wanted` remains of the ones we manage:
/// IPv4 — other IPv4 addresses inside `network` (addresses outside it are kept); IPv6 — every
/// other IPv6 address except link-local ones.
pub fn stale_addresses(
    family: Family,
    on_device: &[Addr],
    wanted: (IpAddr, u8),
    network: Option<IpNet>,
) -> Vec<&Addr> {
    on_device
        .iter()
        .filter(|a| (a.ip, a.prefix_len) != wanted)
        .filter(|a| match family {
            Family::V4 => a.ip.is_ipv4() && network.is_some_and(|n| n.contains(&a.ip)),
            Family::V6 => a.ip.is_ipv6() && !is_link_local_v6(&a.ip),
        })
        .collect()
}

/// A kernel error at `step` (which names the object) as a backend error.
pub fn kernel_err(step: String) -> impl FnOnce(KernelError) -> BackendError {
    move |source| BackendError::Kernel { step, source }
}

/// Give the device `name` (index `index`) the address of the own `subnet` and remove the stale
/// ones of that family (`network`: the cluster network of that family). `addrs` is the kernel's
/// address listing (one dump may serve several devices). An address already gone
/// (ENOENT/ESRCH/ENODEV, EADDRNOTAVAIL) or already there (EEXIST) is no error: a concurrent
/// change, or our own earlier pass.
pub async fn ensure_device_address(
    k: &dyn Netlink,
    name: &str,
    index: u32,
    addrs: &[Addr],
    subnet: IpNet,
    network: Option<IpNet>,
) -> Result<(), BackendError> {
    let on_device: Vec<Addr> = addrs.iter().filter(|a| a.index == index).cloned().collect();
    let wanted = device_address(subnet);
    for stale in stale_addresses(Family::of(&subnet), &on_device, wanted, network) {
        tracing::info!(device = %name, address = %format!("{}/{}", stale.ip, stale.prefix_len),
            "removing stale address");
        match k.del_addr(stale).await {
            Err(e) if !e.is_not_found() && e.errno() != Some(libc::EADDRNOTAVAIL) => {
                return Err(kernel_err(format!(
                    "removing address {}/{} from {name}",
                    stale.ip, stale.prefix_len
                ))(e));
            }
            _ => {}
        }
    }
    if !on_device.iter().any(|a| (a.ip, a.prefix_len) == wanted) {
        let addr = Addr {
            index,
            ip: wanted.0,
            prefix_len: wanted.1,
            flags: AddrFlags::default(),
        };
        match k.add_addr(&addr).await {
            Err(e) if !e.is_exists() => {
                return Err(kernel_err(format!(
                    "adding address {}/{} to {name}",
                    wanted.0, wanted.1
                ))(e));
            }
            Err(_) => {}
            Ok(()) => {
                tracing::info!(device = %name, address = %format!("{}/{}", wanted.0, wanted.1), "added address")
            }
        }
    }
    Ok(())
}

/// The device `name` as the kernel has it now; `describe` names it in errors (for example
/// "vxlan device flannel.1"). The device must exist: the backend has just ensured it.
pub async fn device_link(k: &dyn Netlink, name: &str, describe: &str) -> Result<Link, BackendError> {
    k.link_by_name(name)
        .await
        .map_err(kernel_err(format!("looking up {describe}")))?
        .ok_or_else(|| BackendError::Config(format!("{describe} vanished while configuring it")))
}

/// Set `link` (the device `name`) up unless it is.
pub async fn set_up(k: &dyn Netlink, link: &Link, name: &str) -> Result<(), BackendError> {
    if !link.up {
        k.set_link_up(link.index)
            .await
            .map_err(kernel_err(format!("setting {name} up")))?;
    }
    Ok(())
}

/// `device_link` and `set_up`; returns the link as it was looked up, for the backend's own checks.
pub async fn ensure_device_up(k: &dyn Netlink, name: &str, describe: &str) -> Result<Link, BackendError> {
    let link = device_link(k, name, describe).await?;
    set_up(k, &link, name).await?;
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Addr {
        let net: IpNet = s.parse().unwrap();
        Addr {
            index: 7,
            ip: net.addr(),
            prefix_len: net.prefix_len(),
            flags: AddrFlags::default(),
        }
    }

    #[test]
    fn the_device_address_is_the_subnet_network_address_as_a_host_route() {
        let v4: IpNet = "198.18.3.0/24".parse().unwrap();
        let v6: IpNet = "2001:db8:0:3::/64".parse().unwrap();
        assert_eq!(device_address(v4), ("198.18.3.0".parse().unwrap(), 32));
        assert_eq!(device_address(v6), ("2001:db8:0:3::".parse().unwrap(), 128));
    }

    #[test]
    fn only_addresses_we_manage_are_stale() {
        let on_device = [
            addr("198.18.3.0/32"),
            addr("198.18.9.0/32"),
            addr("192.0.2.7/24"),
            addr("2001:db8:0:9::/128"),
            addr("fe80::1/64"),
            addr("2001:db8:0:3::/128"),
        ];
        let v4 = device_address("198.18.3.0/24".parse().unwrap());
        let network = Some("198.18.0.0/16".parse().unwrap());
        let ips = |v: Vec<&Addr>| v.iter().map(|a| a.ip.to_string()).collect::<Vec<_>>();
        assert_eq!(
            ips(stale_addresses(Family::V4, &on_device, v4, network)),
            ["198.18.9.0"],
            "an operator's address outside the network stays"
        );
        assert!(stale_addresses(Family::V4, &on_device, v4, None).is_empty());
        let v6 = device_address("2001:db8:0:3::/64".parse().unwrap());
        assert_eq!(
            ips(stale_addresses(Family::V6, &on_device, v6, None)),
            ["2001:db8:0:9::"],
            "link-local stays"
        );
    }
}
