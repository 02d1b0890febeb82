//! Unit tests of the allocation decisions, with upstream's etcd test values (spec 13.1).

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
        &[],
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
        &[],
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
        &[],
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
        &[],
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
        &[],
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
        &[],
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
        &[],
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
        &[],
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
    let plan = plan_acquire(&dual_config(), &[], &[], ip("192.0.2.2"), &prev, &mut rng());
    assert_eq!(plan.previous_incompatible, Some(v4("198.18.9.0/24")));
}

#[test]
fn a_key_with_an_unreadable_value_still_holds_its_subnet() {
    let c = NetConf {
        subnet_min: Some(ip("10.3.1.0")),
        subnet_max: Some(ip("10.3.3.0")),
        ..upstream_config()
    };
    let occupied = [SubnetKey {
        v4: v4("10.3.3.0/24"),
        v6: None,
    }];
    let plan = plan_acquire(
        &c,
        &upstream_leases(),
        &occupied,
        ip("1.2.3.4"),
        &PreviousSubnets::default(),
        &mut rng(),
    );
    assert!(
        matches!(plan.action, Err(AllocError::OutOfSubnets { total: 3, .. })),
        "{plan:?}"
    );
    let prev = PreviousSubnets {
        subnet: Some(v4("10.3.3.0/24")),
        ..PreviousSubnets::default()
    };
    let plan = plan_acquire(&c, &[], &occupied, ip("1.2.3.4"), &prev, &mut rng());
    assert!(
        !matches!(
            plan.action,
            Ok(AcquireAction::Create {
                source: NewSubnetSource::Previous,
                ..
            })
        ),
        "{plan:?}"
    );
}

#[test]
fn ipv6_only_config_cannot_allocate_in_etcd_mode() {
    let c = NetConf {
        enable_ipv4: false,
        ..dual_config()
    };
    let plan = plan_acquire(
        &c,
        &[],
        &[],
        ip("192.0.2.2"),
        &PreviousSubnets::default(),
        &mut rng(),
    );
    assert!(matches!(plan.action, Err(AllocError::NoRange { .. })), "{plan:?}");
}
