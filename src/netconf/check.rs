//! Upstream's CheckNetworkConfig (spec section 2.1, etcd mode only; quirk 4: kube mode skips it):
//! validate the networks and fill SubnetLen, SubnetMin and SubnetMax, for IPv4 in 32-bit and for
//! IPv6 in 128-bit arithmetic, with upstream's wraparound and without a Min <= Max check.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{NetConf, NetConfError};

fn bad(key: &str, value: impl std::fmt::Display, reason: impl Into<String>) -> NetConfError {
    NetConfError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

pub(super) fn check_and_fill_defaults(conf: &mut NetConf) -> Result<(), NetConfError> {
    conf.check_stack()?;
    if conf.enable_ipv4 {
        check_v4(conf)?;
    }
    if conf.enable_ipv6 {
        check_v6(conf)?;
    }
    Ok(())
}

fn check_v4(conf: &mut NetConf) -> Result<(), NetConfError> {
    let network = conf
        .network
        .map(|n| n.trunc())
        .filter(|n| n.prefix_len() != 0)
        .ok_or_else(|| {
            NetConfError::Invalid(
                "Network is not set: define an IPv4 Network such as \"10.244.0.0/16\" in the network config"
                    .to_string(),
            )
        })?;
    let prefix = network.prefix_len();
    if conf.subnet_len > 0 {
        if conf.subnet_len > 30 {
            return Err(bad(
                "SubnetLen",
                conf.subnet_len,
                "must be less than /31 (at most 30)",
            ));
        }
        if conf.subnet_len < prefix + 2 {
            return Err(bad(
                "SubnetLen",
                conf.subnet_len,
                format!(
                    "Network {network} must be able to hold at least four subnets, so SubnetLen must be at least {}",
                    prefix + 2
                ),
            ));
        }
    } else if prefix > 28 {
        return Err(bad(
            "Network",
            network,
            "network is too small: the minimum useful prefix is /28",
        ));
    } else if prefix <= 22 {
        conf.subnet_len = 24;
    } else {
        conf.subnet_len = prefix + 2;
    }

    let len = u32::from(conf.subnet_len);
    let size: u32 = 1 << (32 - len);
    let mask: u32 = u32::MAX << (32 - len);
    let net_mask: u32 = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    let base = u32::from(network.addr());
    let contains = |ip: Ipv4Addr| (u32::from(ip) & net_mask) == (base & net_mask);

    let min = match conf.subnet_min {
        // Skip the first subnet: its network address would clash with the Network's.
        None => Ipv4Addr::from(base.wrapping_add(size)),
        Some(min) if !contains(min) => {
            return Err(bad("SubnetMin", min, format!("not inside the Network {network}")));
        }
        Some(min) => min,
    };
    let max = match conf.subnet_max {
        None => {
            let next = (u64::from(base) + (1u64 << (32 - u32::from(prefix)))) as u32;
            Ipv4Addr::from(next.wrapping_sub(size))
        }
        Some(max) if !contains(max) => {
            return Err(bad("SubnetMax", max, format!("not inside the Network {network}")));
        }
        Some(max) => max,
    };
    conf.subnet_min = Some(min);
    conf.subnet_max = Some(max);
    if u32::from(min) & mask != u32::from(min) {
        return Err(bad(
            "SubnetMin",
            min,
            format!("not on a SubnetLen boundary (/{len})"),
        ));
    }
    if u32::from(max) & mask != u32::from(max) {
        return Err(bad(
            "SubnetMax",
            max,
            format!("not on a SubnetLen boundary (/{len})"),
        ));
    }
    Ok(())
}

fn check_v6(conf: &mut NetConf) -> Result<(), NetConfError> {
    let network = conf
        .ipv6_network
        .map(|n| n.trunc())
        .filter(|n| n.prefix_len() != 0)
        .ok_or_else(|| {
            NetConfError::Invalid(
            "IPv6Network is not set: define an IPv6Network such as \"fd00:10:244::/56\" in the network config"
                .to_string(),
        )
        })?;
    let prefix = network.prefix_len();
    if conf.ipv6_subnet_len > 0 {
        if conf.ipv6_subnet_len > 126 {
            return Err(bad(
                "IPv6SubnetLen",
                conf.ipv6_subnet_len,
                "must be less than /127 (at most 126)",
            ));
        }
        if u16::from(conf.ipv6_subnet_len) < u16::from(prefix) + 2 {
            return Err(bad(
                "IPv6SubnetLen",
                conf.ipv6_subnet_len,
                format!(
                    "IPv6Network {network} must be able to hold at least four subnets, so IPv6SubnetLen must be at least {}",
                    u16::from(prefix) + 2
                ),
            ));
        }
    } else if prefix > 124 {
        return Err(bad(
            "IPv6Network",
            network,
            "network is too small: the minimum useful prefix is /124",
        ));
    } else if prefix <= 62 {
        conf.ipv6_subnet_len = 64;
    } else {
        conf.ipv6_subnet_len = prefix + 2;
    }

    let len = u32::from(conf.ipv6_subnet_len);
    let size: u128 = 1 << (128 - len);
    let mask: u128 = u128::MAX << (128 - len);
    let net_mask: u128 = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    let base = u128::from(network.addr());
    let contains = |ip: Ipv6Addr| (u128::from(ip) & net_mask) == (base & net_mask);

    let min = match conf.ipv6_subnet_min {
        None => Ipv6Addr::from(base.wrapping_add(size)),
        Some(min) if !contains(min) => {
            return Err(bad(
                "IPv6SubnetMin",
                min,
                format!("not inside the IPv6Network {network}"),
            ));
        }
        Some(min) => min,
    };
    let max = match conf.ipv6_subnet_max {
        None => {
            let span = 1u128.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            Ipv6Addr::from(base.wrapping_add(span).wrapping_sub(size))
        }
        Some(max) if !contains(max) => {
            return Err(bad(
                "IPv6SubnetMax",
                max,
                format!("not inside the IPv6Network {network}"),
            ));
        }
        Some(max) => max,
    };
    conf.ipv6_subnet_min = Some(min);
    conf.ipv6_subnet_max = Some(max);
    if u128::from(min) & mask != u128::from(min) {
        return Err(bad(
            "IPv6SubnetMin",
            min,
            format!("not on a SubnetLen boundary (/{len})"),
        ));
    }
    if u128::from(max) & mask != u128::from(max) {
        return Err(bad(
            "IPv6SubnetMax",
            max,
            format!("not on a SubnetLen boundary (/{len})"),
        ));
    }
    Ok(())
}
