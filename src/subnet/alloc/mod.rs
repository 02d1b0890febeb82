//! Pure subnet allocation for the etcd subnet manager: the candidate walk between SubnetMin and
//! SubnetMax, the overlap rule (equal under the shorter mask), compatibility of a lease with the
//! network config, and the whole per-attempt decision of lease acquisition (`plan_acquire`).
//!
//! No I/O and no logging: the manager executes the plan and says what happened. Randomness is
//! injected so tests can pin it. Spec: flanneld-behaviour.md section 5.4.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use rand::Rng;

use crate::lease::{Lease, SubnetKey};
use crate::netconf::NetConf;
use crate::subnet::env_file::PreviousSubnets;

/// Upstream collects at most this many free candidates before picking one at random.
pub const MAX_CANDIDATES: usize = 100;

/// Errors of the allocation decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Every candidate in the range is taken; `total` is how many subnets the range holds.
    #[error("out of subnets: {total} subnets of length /{len} between {min} and {max}, all leased")]
    OutOfSubnets {
        total: u128,
        len: u8,
        min: String,
        max: String,
    },
    /// The config lacks a range the allocation needs (it was not checked or IPv4 is disabled).
    #[error("network config has no {what}: cannot allocate a subnet")]
    NoRange { what: &'static str },
}

/// A CIDR as (first address, prefix length) in a `width`-bit space, for shared v4/v6 arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u128,
    len: u8,
}

fn network_mask(len: u8, width: u8) -> u128 {
    let host_bits = u32::from(width.saturating_sub(len));
    let all = if width >= 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    all.checked_shl(host_bits).map(|m| m & all).unwrap_or(0)
}

fn spans_overlap(a: Span, b: Span, width: u8) -> bool {
    let mask = network_mask(a.len.min(b.len), width);
    a.start & mask == b.start & mask
}

/// Free subnets of length `len` from `min` while `<= max`, skipping any that overlaps `taken`,
/// stopping after `limit` (upstream: 100).
fn free_spans(min: u128, max: u128, len: u8, width: u8, taken: &[Span], limit: usize) -> Vec<Span> {
    let mut found = Vec::new();
    let Some(step) = 1u128.checked_shl(u32::from(width.saturating_sub(len))) else {
        return found;
    };
    let mut cur = min;
    while cur <= max && found.len() < limit {
        let candidate = Span { start: cur, len };
        if !taken.iter().any(|t| spans_overlap(candidate, *t, width)) {
            found.push(candidate);
        }
        match cur.checked_add(step) {
            Some(next) if width >= 128 || next >> width == 0 => cur = next,
            _ => break,
        }
    }
    found
}

fn total_in_range(min: u128, max: u128, len: u8, width: u8) -> u128 {
    if max < min {
        return 0;
    }
    match 1u128.checked_shl(u32::from(width.saturating_sub(len))) {
        Some(step) => (max - min) / step + 1,
        None => 1,
    }
}

fn span4(net: Ipv4Net) -> Span {
    Span {
        start: u128::from(u32::from(net.network())),
        len: net.prefix_len(),
    }
}

fn span6(net: Ipv6Net) -> Span {
    Span {
        start: u128::from(net.network()),
        len: net.prefix_len(),
    }
}

/// Whether two IPv4 subnets overlap: equal under the shorter of the two masks.
pub fn overlaps_v4(a: Ipv4Net, b: Ipv4Net) -> bool {
    spans_overlap(span4(a), span4(b), 32)
}

/// Whether two IPv6 subnets overlap: equal under the shorter of the two masks.
pub fn overlaps_v6(a: Ipv6Net, b: Ipv6Net) -> bool {
    spans_overlap(span6(a), span6(b), 128)
}

/// Upstream's isSubnetConfigCompat: SubnetMin <= ip <= SubnetMax and the prefix is SubnetLen.
/// With IPv4 disabled only "no IPv4 subnet" is compatible.
pub fn compatible_v4(config: &NetConf, subnet: Option<Ipv4Net>) -> bool {
    if !config.enable_ipv4 {
        return subnet.is_none();
    }
    match (subnet, config.subnet_min, config.subnet_max) {
        (Some(sn), Some(min), Some(max)) => {
            sn.addr() >= min && sn.addr() <= max && sn.prefix_len() == config.subnet_len
        }
        _ => false,
    }
}

/// Upstream's isIPv6SubnetConfigCompat: with IPv6 disabled the lease must have no IPv6 subnet;
/// otherwise the same range and length check on the IPv6 part.
pub fn compatible_v6(config: &NetConf, subnet: Option<Ipv6Net>) -> bool {
    if !config.enable_ipv6 {
        return subnet.is_none();
    }
    match (subnet, config.ipv6_subnet_min, config.ipv6_subnet_max) {
        (Some(sn), Some(min), Some(max)) => {
            sn.addr() >= min && sn.addr() <= max && sn.prefix_len() == config.ipv6_subnet_len
        }
        _ => false,
    }
}

/// Whether a lease with these subnets fits the config (both families).
pub fn compatible(config: &NetConf, subnet: Option<Ipv4Net>, ipv6_subnet: Option<Ipv6Net>) -> bool {
    compatible_v4(config, subnet) && compatible_v6(config, ipv6_subnet)
}

/// The number of IPv4 subnets the config's range holds (for the out-of-subnets message).
pub fn total_subnets_v4(config: &NetConf) -> u128 {
    match (config.subnet_min, config.subnet_max) {
        (Some(min), Some(max)) => total_in_range(
            u128::from(u32::from(min)),
            u128::from(u32::from(max)),
            config.subnet_len,
            32,
        ),
        _ => 0,
    }
}

/// The number of IPv6 subnets the config's range holds.
pub fn total_subnets_v6(config: &NetConf) -> u128 {
    match (config.ipv6_subnet_min, config.ipv6_subnet_max) {
        (Some(min), Some(max)) => {
            total_in_range(u128::from(min), u128::from(max), config.ipv6_subnet_len, 128)
        }
        _ => 0,
    }
}

/// The first `limit` free IPv4 candidates of the config's range, in address order.
pub fn free_candidates_v4(config: &NetConf, leases: &[Lease], limit: usize) -> Vec<Ipv4Net> {
    let (Some(min), Some(max)) = (config.subnet_min, config.subnet_max) else {
        return Vec::new();
    };
    let taken: Vec<Span> = leases.iter().filter_map(|l| l.subnet.map(span4)).collect();
    let (min, max) = (u128::from(u32::from(min)), u128::from(u32::from(max)));
    free_spans(min, max, config.subnet_len, 32, &taken, limit)
        .into_iter()
        .filter_map(|s| {
            let addr = Ipv4Addr::from(u32::try_from(s.start).ok()?);
            Ipv4Net::new(addr, s.len).ok()
        })
        .collect()
}

/// The first `limit` free IPv6 candidates of the config's range, in address order.
pub fn free_candidates_v6(config: &NetConf, leases: &[Lease], limit: usize) -> Vec<Ipv6Net> {
    let (Some(min), Some(max)) = (config.ipv6_subnet_min, config.ipv6_subnet_max) else {
        return Vec::new();
    };
    let taken: Vec<Span> = leases.iter().filter_map(|l| l.ipv6_subnet.map(span6)).collect();
    free_spans(
        u128::from(min),
        u128::from(max),
        config.ipv6_subnet_len,
        128,
        &taken,
        limit,
    )
    .into_iter()
    .filter_map(|s| Ipv6Net::new(Ipv6Addr::from(s.start), s.len).ok())
    .collect()
}

/// One element of `candidates`, uniformly at random.
pub fn pick<T: Copy, R: Rng + ?Sized>(candidates: &[T], rng: &mut R) -> Option<T> {
    if candidates.is_empty() {
        return None;
    }
    candidates.get(rng.random_range(0..candidates.len())).copied()
}

/// Where the subnets of a new key come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewSubnetSource {
    /// subnet.env of a previous run named it, it is free and fits the config.
    Previous,
    /// Picked at random among the first free candidates.
    Random,
}

/// What to do in this acquisition attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireAction {
    /// The lease already published for our public IP fits the config: rewrite it with our attrs.
    Reuse(Lease),
    /// Create a new key for these subnets (create-if-absent).
    Create {
        subnet: Ipv4Net,
        ipv6_subnet: Option<Ipv6Net>,
        source: NewSubnetSource,
    },
}

/// The decision of one acquisition attempt (spec 5.4 steps 2-4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquirePlan {
    /// A lease of our public IP that no longer fits the config: delete it first.
    pub stale: Option<Lease>,
    /// The previous subnet from subnet.env was free but does not fit the config (logged).
    pub previous_incompatible: Option<Ipv4Net>,
    pub action: Result<AcquireAction, AllocError>,
}

fn out_of_subnets_v4(config: &NetConf) -> AllocError {
    AllocError::OutOfSubnets {
        total: total_subnets_v4(config),
        len: config.subnet_len,
        min: config.subnet_min.map(|a| a.to_string()).unwrap_or_default(),
        max: config.subnet_max.map(|a| a.to_string()).unwrap_or_default(),
    }
}

fn out_of_subnets_v6(config: &NetConf) -> AllocError {
    AllocError::OutOfSubnets {
        total: total_subnets_v6(config),
        len: config.ipv6_subnet_len,
        min: config.ipv6_subnet_min.map(|a| a.to_string()).unwrap_or_default(),
        max: config.ipv6_subnet_max.map(|a| a.to_string()).unwrap_or_default(),
    }
}

/// Decide one acquisition attempt from the current leases (spec 5.4):
/// 1. a lease whose PublicIP is ours: reuse it if compatible, else mark it stale (delete);
/// 2. else the previous subnet from subnet.env if no lease overlaps it and it is compatible;
/// 3. else a random free subnet among the first `MAX_CANDIDATES` (independently for IPv6).
///
/// `occupied` are keys whose value could not be read: their subnets are never handed out.
///
/// Deviation: the previous subnet must not *overlap* any lease (upstream: not *equal*), so a
/// lease of another length cannot end up overlapping ours.
pub fn plan_acquire<R: Rng + ?Sized>(
    config: &NetConf,
    leases: &[Lease],
    occupied: &[SubnetKey],
    public_ip: Ipv4Addr,
    previous: &PreviousSubnets,
    rng: &mut R,
) -> AcquirePlan {
    let mut stale = None;
    if let Some(own) = leases.iter().find(|l| l.attrs.public_ip == public_ip) {
        if own.subnet.is_some() && compatible(config, own.subnet, own.ipv6_subnet) {
            let action = Ok(AcquireAction::Reuse(own.clone()));
            return AcquirePlan {
                stale: None,
                previous_incompatible: None,
                action,
            };
        }
        stale = Some(own.clone());
    }
    // Every lease but the stale one (about to be deleted) blocks candidates.
    let stale_subnets = stale.as_ref().map(Lease::subnets);
    let mut blocking: Vec<Lease> = leases
        .iter()
        .filter(|l| Some(l.subnets()) != stale_subnets)
        .cloned()
        .collect();
    // Keys whose value is unreadable still hold their subnet: never allocate over them.
    blocking.extend(occupied.iter().map(|key| Lease {
        enable_ipv4: true,
        enable_ipv6: key.v6.is_some(),
        subnet: Some(key.v4),
        ipv6_subnet: key.v6,
        attrs: crate::lease::LeaseAttrs::default(),
        expiration: None,
    }));

    let mut previous_incompatible = None;
    if let Some(prev) = previous.subnet {
        let prev6 = previous.ipv6_subnet;
        let taken = blocking.iter().any(|l| {
            l.subnet.is_some_and(|sn| overlaps_v4(sn, prev))
                || matches!((l.ipv6_subnet, prev6), (Some(a), Some(b)) if overlaps_v6(a, b))
        });
        if !taken {
            if compatible(config, Some(prev), prev6) {
                let action = Ok(AcquireAction::Create {
                    subnet: prev,
                    ipv6_subnet: prev6,
                    source: NewSubnetSource::Previous,
                });
                return AcquirePlan {
                    stale,
                    previous_incompatible: None,
                    action,
                };
            }
            previous_incompatible = Some(prev);
        }
    }
    let action = allocate(config, &blocking, rng);
    AcquirePlan {
        stale,
        previous_incompatible,
        action,
    }
}

/// Step 4: a random free subnet among the first candidates, independently for IPv6.
fn allocate<R: Rng + ?Sized>(
    config: &NetConf,
    blocking: &[Lease],
    rng: &mut R,
) -> Result<AcquireAction, AllocError> {
    if !config.enable_ipv4 || config.subnet_min.is_none() || config.subnet_max.is_none() {
        return Err(AllocError::NoRange {
            what: "IPv4 SubnetMin/SubnetMax",
        });
    }
    let subnet = pick(&free_candidates_v4(config, blocking, MAX_CANDIDATES), rng)
        .ok_or_else(|| out_of_subnets_v4(config))?;
    let mut ipv6_subnet = None;
    if config.enable_ipv6 {
        if config.ipv6_subnet_min.is_none() || config.ipv6_subnet_max.is_none() {
            return Err(AllocError::NoRange {
                what: "IPv6SubnetMin/IPv6SubnetMax",
            });
        }
        let sn6 = pick(&free_candidates_v6(config, blocking, MAX_CANDIDATES), rng)
            .ok_or_else(|| out_of_subnets_v6(config))?;
        ipv6_subnet = Some(sn6);
    }
    Ok(AcquireAction::Create {
        subnet,
        ipv6_subnet,
        source: NewSubnetSource::Random,
    })
}

#[cfg(test)]
mod tests;
