//! Pure subnet allocation for the etcd subnet manager: the candidate walk between SubnetMin and
//! SubnetMax, the overlap rule (equal under the shorter mask), compatibility of a lease with the
//! network config, and the whole per-attempt decision of lease acquisition (`plan_acquire`).
//!
//! No I/O and no logging: the manager executes the plan and says what happened. Randomness is
//! injected so tests can pin it. Spec: flanneld-behaviour.md section 5.4.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use rand::Rng;

use crate::lease::Lease;
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
/// Deviation: the previous subnet must not *overlap* any lease (upstream: not *equal*), so a
/// lease of another length cannot end up overlapping ours.
pub fn plan_acquire<R: Rng + ?Sized>(
    config: &NetConf,
    leases: &[Lease],
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
    let blocking: Vec<Lease> = leases
        .iter()
        .filter(|l| Some(l.subnets()) != stale_subnets)
        .cloned()
        .collect();

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
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use crate::netconf::BackendConfig;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn v4(s: &str) -> Ipv4Net {
        s.parse().expect("test CIDR")
    }
    fn v6(s: &str) -> Ipv6Net {
        s.parse().expect("test CIDR")
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test IP")
    }

    /// Upstream's etcd test config: Network 10.3.0.0/16, SubnetMin 10.3.1.0, SubnetMax 10.3.25.0.
    fn upstream_config() -> NetConf {
        NetConf {
            enable_ipv4: true,
            enable_ipv6: false,
            enable_nftables: false,
            network: Some(v4("10.3.0.0/16")),
            subnet_len: 24,
            subnet_min: Some(ip("10.3.1.0")),
            subnet_max: Some(ip("10.3.25.0")),
            ipv6_network: None,
            ipv6_subnet_len: 0,
            ipv6_subnet_min: None,
            ipv6_subnet_max: None,
            backend_type: "host-gw".into(),
            backend: BackendConfig::HostGw,
        }
    }

    fn dual_config() -> NetConf {
        NetConf {
            network: Some(v4("198.18.0.0/16")),
            subnet_min: Some(ip("198.18.1.0")),
            subnet_max: Some(ip("198.18.255.0")),
            enable_ipv6: true,
            ipv6_network: Some(v6("2001:db8::/48")),
            ipv6_subnet_len: 64,
            ipv6_subnet_min: Some("2001:db8:0:1::".parse().expect("v6")),
            ipv6_subnet_max: Some("2001:db8:0:ffff::".parse().expect("v6")),
            ..upstream_config()
        }
    }

    fn lease(subnet: &str, public_ip: &str) -> Lease {
        Lease {
            enable_ipv4: true,
            enable_ipv6: false,
            subnet: Some(v4(subnet)),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: ip(public_ip),
                ..LeaseAttrs::default()
            },
            expiration: None,
        }
    }

    /// Upstream's fixture: 10.3.{1,2,4,5,31}.0/24 owned by 1.1.1.1.
    fn upstream_leases() -> Vec<Lease> {
        [
            "10.3.1.0/24",
            "10.3.2.0/24",
            "10.3.4.0/24",
            "10.3.5.0/24",
            "10.3.31.0/24",
        ]
        .iter()
        .map(|s| lease(s, "1.1.1.1"))
        .collect()
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn overlap_is_equality_under_the_shorter_mask() {
        assert!(overlaps_v4(v4("10.3.1.0/24"), v4("10.3.1.0/24")));
        assert!(overlaps_v4(v4("10.3.1.0/24"), v4("10.3.0.0/16")));
        assert!(overlaps_v4(v4("10.3.0.0/16"), v4("10.3.200.0/24")));
        assert!(overlaps_v4(v4("0.0.0.0/0"), v4("10.3.200.0/24")));
        assert!(!overlaps_v4(v4("10.3.1.0/24"), v4("10.3.2.0/24")));
        assert!(!overlaps_v4(v4("10.3.0.0/16"), v4("10.4.0.0/24")));
        assert!(overlaps_v6(v6("2001:db8::/32"), v6("2001:db8:1:2::/64")));
        assert!(!overlaps_v6(v6("2001:db8:0:1::/64"), v6("2001:db8:0:2::/64")));
        assert!(overlaps_v6(v6("::/0"), v6("2001:db8:0:2::/64")));
    }

    #[test]
    fn compatibility_checks_range_and_length() {
        let c = upstream_config();
        assert!(compatible(&c, Some(v4("10.3.1.0/24")), None));
        assert!(compatible(&c, Some(v4("10.3.25.0/24")), None));
        assert!(!compatible(&c, Some(v4("10.3.26.0/24")), None), "above SubnetMax");
        assert!(!compatible(&c, Some(v4("10.3.0.0/24")), None), "below SubnetMin");
        assert!(!compatible(&c, Some(v4("10.3.2.0/25")), None), "wrong length");
        assert!(!compatible(&c, Some(v4("10.4.1.0/24")), None), "other network");
        assert!(!compatible(&c, None, None), "IPv4 enabled needs a subnet");
        assert!(
            !compatible(&c, Some(v4("10.3.2.0/24")), Some(v6("2001:db8:0:1::/64"))),
            "IPv6 disabled"
        );
        let d = dual_config();
        assert!(compatible(
            &d,
            Some(v4("198.18.2.0/24")),
            Some(v6("2001:db8:0:1::/64"))
        ));
        assert!(
            !compatible(&d, Some(v4("198.18.2.0/24")), None),
            "IPv6 enabled needs a v6 subnet"
        );
        assert!(!compatible(
            &d,
            Some(v4("198.18.2.0/24")),
            Some(v6("2001:db8:0:1::/80"))
        ));
        assert!(
            !compatible(&d, Some(v4("198.18.2.0/24")), Some(v6("2001:db8:1::/64"))),
            "above max"
        );
    }

    #[test]
    fn totals_count_the_range() {
        assert_eq!(total_subnets_v4(&upstream_config()), 25);
        let default_range = NetConf {
            subnet_max: Some(ip("10.3.255.0")),
            ..upstream_config()
        };
        assert_eq!(total_subnets_v4(&default_range), 255);
        let inverted = NetConf {
            subnet_min: Some(ip("10.3.9.0")),
            subnet_max: Some(ip("10.3.1.0")),
            ..upstream_config()
        };
        assert_eq!(total_subnets_v4(&inverted), 0);
        assert_eq!(total_subnets_v6(&dual_config()), 0xffff);
    }

    #[test]
    fn candidates_skip_leased_subnets_in_order() {
        let got = free_candidates_v4(&upstream_config(), &upstream_leases(), MAX_CANDIDATES);
        assert_eq!(got.len(), 21, "25 in range, 4 leased in range");
        assert_eq!(got.first(), Some(&v4("10.3.3.0/24")));
        assert_eq!(got.get(1), Some(&v4("10.3.6.0/24")));
        assert_eq!(got.last(), Some(&v4("10.3.25.0/24")));
        assert!(!got.contains(&v4("10.3.1.0/24")));
    }

    #[test]
    fn a_shorter_lease_blocks_every_candidate_inside_it() {
        let mut leases = upstream_leases();
        leases.push(lease("10.3.8.0/22", "1.1.1.2"));
        let got = free_candidates_v4(&upstream_config(), &leases, MAX_CANDIDATES);
        for blocked in ["10.3.8.0/24", "10.3.9.0/24", "10.3.10.0/24", "10.3.11.0/24"] {
            assert!(!got.contains(&v4(blocked)), "{blocked} is inside 10.3.8.0/22");
        }
        assert!(got.contains(&v4("10.3.12.0/24")));
    }

    #[test]
    fn at_most_100_candidates_are_collected() {
        let c = NetConf {
            network: Some(v4("198.18.0.0/15")),
            subnet_min: Some(ip("198.18.1.0")),
            subnet_max: Some(ip("198.19.255.0")),
            ..upstream_config()
        };
        let got = free_candidates_v4(&c, &[], MAX_CANDIDATES);
        assert_eq!(got.len(), 100);
        assert_eq!(got.last(), Some(&v4("198.18.100.0/24")));
    }

    #[test]
    fn the_walk_stops_at_the_top_of_the_address_space() {
        let c = NetConf {
            network: Some(v4("255.255.0.0/16")),
            subnet_min: Some(ip("255.255.254.0")),
            subnet_max: Some(ip("255.255.255.0")),
            ..upstream_config()
        };
        let got = free_candidates_v4(&c, &[], MAX_CANDIDATES);
        assert_eq!(got, vec![v4("255.255.254.0/24"), v4("255.255.255.0/24")]);
        let host = NetConf {
            subnet_len: 32,
            subnet_min: Some(ip("255.255.255.255")),
            subnet_max: Some(ip("255.255.255.255")),
            ..c
        };
        assert_eq!(
            free_candidates_v4(&host, &[], MAX_CANDIDATES),
            vec![v4("255.255.255.255/32")]
        );
    }

    #[test]
    fn pick_is_uniform_over_the_candidates() {
        let mut r = rng();
        let cands = [1u8, 2, 3];
        let mut seen = [0u32; 3];
        for _ in 0..600 {
            let p = pick(&cands, &mut r).expect("non-empty");
            seen[usize::from(p - 1)] += 1;
        }
        assert!(
            seen.iter().all(|n| *n > 100),
            "every candidate is picked: {seen:?}"
        );
        assert_eq!(pick::<u8, _>(&[], &mut r), None);
    }

    #[test]
    fn acquire_for_a_new_node_picks_a_free_subnet_in_range() {
        let plan = plan_acquire(
            &upstream_config(),
            &upstream_leases(),
            ip("1.2.3.4"),
            &PreviousSubnets::default(),
            &mut rng(),
        );
        assert_eq!(plan.stale, None);
        assert_eq!(plan.previous_incompatible, None);
        let Ok(AcquireAction::Create {
            subnet,
            ipv6_subnet: None,
            source: NewSubnetSource::Random,
        }) = plan.action
        else {
            panic!("expected a random new subnet, got {plan:?}");
        };
        assert!(compatible(&upstream_config(), Some(subnet), None));
        assert!(!upstream_leases().iter().any(|l| l.subnet == Some(subnet)));
    }

    #[test]
    fn acquire_reuses_the_lease_of_our_public_ip() {
        let mut leases = upstream_leases();
        leases.push(lease("10.3.7.0/24", "1.2.3.4"));
        let plan = plan_acquire(
            &upstream_config(),
            &leases,
            ip("1.2.3.4"),
            &PreviousSubnets::default(),
            &mut rng(),
        );
        assert_eq!(
            plan.action,
            Ok(AcquireAction::Reuse(lease("10.3.7.0/24", "1.2.3.4")))
        );
        assert_eq!(plan.stale, None);
    }

    #[test]
    fn an_incompatible_lease_of_our_ip_is_deleted_and_replaced() {
        let mut leases = upstream_leases();
        leases.push(lease("10.4.7.0/24", "1.2.3.4"));
        let plan = plan_acquire(
            &upstream_config(),
            &leases,
            ip("1.2.3.4"),
            &PreviousSubnets::default(),
            &mut rng(),
        );
        assert_eq!(plan.stale, Some(lease("10.4.7.0/24", "1.2.3.4")));
        assert!(matches!(
            plan.action,
            Ok(AcquireAction::Create {
                source: NewSubnetSource::Random,
                ..
            })
        ));
    }

    #[test]
    fn the_previous_subnet_is_reused_when_free_and_compatible() {
        let prev = PreviousSubnets {
            subnet: Some(v4("10.3.6.0/24")),
            ..PreviousSubnets::default()
        };
        let plan = plan_acquire(
            &upstream_config(),
            &upstream_leases(),
            ip("1.2.3.4"),
            &prev,
            &mut rng(),
        );
        assert_eq!(
            plan.action,
            Ok(AcquireAction::Create {
                subnet: v4("10.3.6.0/24"),
                ipv6_subnet: None,
                source: NewSubnetSource::Previous
            })
        );
    }

    #[test]
    fn an_incompatible_previous_subnet_is_ignored() {
        let prev = PreviousSubnets {
            subnet: Some(v4("10.4.1.0/24")),
            ..PreviousSubnets::default()
        };
        let plan = plan_acquire(
            &upstream_config(),
            &upstream_leases(),
            ip("1.2.3.4"),
            &prev,
            &mut rng(),
        );
        assert_eq!(plan.previous_incompatible, Some(v4("10.4.1.0/24")));
        let Ok(AcquireAction::Create {
            subnet,
            source: NewSubnetSource::Random,
            ..
        }) = plan.action
        else {
            panic!("expected a random subnet, got {plan:?}");
        };
        assert_ne!(subnet, v4("10.4.1.0/24"));
    }

    #[test]
    fn a_taken_previous_subnet_is_skipped_silently() {
        let prev = PreviousSubnets {
            subnet: Some(v4("10.3.2.0/24")),
            ..PreviousSubnets::default()
        };
        let plan = plan_acquire(
            &upstream_config(),
            &upstream_leases(),
            ip("1.2.3.4"),
            &prev,
            &mut rng(),
        );
        assert_eq!(plan.previous_incompatible, None);
        let Ok(AcquireAction::Create {
            subnet,
            source: NewSubnetSource::Random,
            ..
        }) = plan.action
        else {
            panic!("expected a random subnet, got {plan:?}");
        };
        assert_ne!(subnet, v4("10.3.2.0/24"));
    }

    #[test]
    fn a_full_range_is_out_of_subnets_with_the_count() {
        let c = NetConf {
            subnet_min: Some(ip("10.3.1.0")),
            subnet_max: Some(ip("10.3.2.0")),
            ..upstream_config()
        };
        let plan = plan_acquire(
            &c,
            &upstream_leases(),
            ip("1.2.3.4"),
            &PreviousSubnets::default(),
            &mut rng(),
        );
        let err = plan.action.expect_err("range is full");
        assert_eq!(
            err,
            AllocError::OutOfSubnets {
                total: 2,
                len: 24,
                min: "10.3.1.0".into(),
                max: "10.3.2.0".into()
            }
        );
        assert!(err.to_string().contains("2 subnets"), "{err}");
    }

    #[test]
    fn dual_stack_allocates_both_families() {
        let mut taken = lease("198.18.1.0/24", "192.0.2.1");
        taken.enable_ipv6 = true;
        taken.ipv6_subnet = Some(v6("2001:db8:0:1::/64"));
        let plan = plan_acquire(
            &dual_config(),
            &[taken],
            ip("192.0.2.2"),
            &PreviousSubnets::default(),
            &mut rng(),
        );
        let Ok(AcquireAction::Create {
            subnet,
            ipv6_subnet: Some(sn6),
            ..
        }) = plan.action
        else {
            panic!("expected both families, got {plan:?}");
        };
        assert!(compatible(&dual_config(), Some(subnet), Some(sn6)));
        assert_ne!(sn6, v6("2001:db8:0:1::/64"));
    }

    #[test]
    fn a_v4_only_previous_subnet_does_not_fit_a_dual_stack_config() {
        let prev = PreviousSubnets {
            subnet: Some(v4("198.18.9.0/24")),
            ..PreviousSubnets::default()
        };
        let plan = plan_acquire(&dual_config(), &[], ip("192.0.2.2"), &prev, &mut rng());
        assert_eq!(plan.previous_incompatible, Some(v4("198.18.9.0/24")));
    }

    #[test]
    fn ipv6_only_config_cannot_allocate_in_etcd_mode() {
        let c = NetConf {
            enable_ipv4: false,
            ..dual_config()
        };
        let plan = plan_acquire(&c, &[], ip("192.0.2.2"), &PreviousSubnets::default(), &mut rng());
        assert!(matches!(plan.action, Err(AllocError::NoRange { .. })), "{plan:?}");
    }
}
