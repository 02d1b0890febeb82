use super::*;

fn conf(json: &str) -> NetConf {
    NetConf::parse(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

fn checked(json: &str) -> NetConf {
    NetConf::parse_and_check(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

fn check_err(json: &str) -> NetConfError {
    match NetConf::parse_and_check(json) {
        Ok(c) => panic!("{json}: expected an error, got {c:?}"),
        Err(e) => e,
    }
}

fn parse_err(json: &str) -> NetConfError {
    match NetConf::parse(json) {
        Ok(c) => panic!("{json}: expected an error, got {c:?}"),
        Err(e) => e,
    }
}

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}
fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

#[test]
fn upstream_v4_reference_values() {
    let c = checked(r#"{ "network": "10.3.0.0/16" }"#);
    assert_eq!(c.network, Some("10.3.0.0/16".parse().unwrap()));
    assert_eq!(c.subnet_len, 24);
    assert_eq!(c.subnet_min, Some(ip4("10.3.1.0")));
    assert_eq!(c.subnet_max, Some(ip4("10.3.255.0")));
    assert!(c.enable_ipv4);
    assert!(!c.enable_ipv6);
}

#[test]
fn upstream_v6_reference_values() {
    let c = checked(r#"{ "enableIPv6": true, "ipv6Network": "fc00::/48", "enableIPv4": false }"#);
    assert_eq!(c.ipv6_subnet_len, 64);
    assert_eq!(c.ipv6_subnet_min, Some(ip6("fc00:0:0:1::")));
    assert_eq!(c.ipv6_subnet_max, Some(ip6("fc00:0:0:ffff::")));
    assert_eq!(c.ipv6_subnet_min.unwrap().to_string(), "fc00:0:0:1::");
    assert_eq!(c.network, None);
    assert_eq!(c.subnet_len, 0);
}

#[test]
fn overrides_are_kept_verbatim() {
    let c = checked(
        r#"{"Network":"10.3.0.0/16","SubnetLen":28,"SubnetMin":"10.3.1.0","SubnetMax":"10.3.25.0",
            "EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":124,
            "IPv6SubnetMin":"fc00::10","IPv6SubnetMax":"fc00::f0"}"#,
    );
    assert_eq!(c.subnet_len, 28);
    assert_eq!(c.subnet_min, Some(ip4("10.3.1.0")));
    assert_eq!(c.subnet_max, Some(ip4("10.3.25.0")));
    assert_eq!(c.ipv6_subnet_len, 124);
    assert_eq!(c.ipv6_subnet_min, Some(ip6("fc00::10")));
    assert_eq!(c.ipv6_subnet_max, Some(ip6("fc00::f0")));
}

#[test]
fn default_subnet_len_rules() {
    // PrefixLen <= 22 -> 24; otherwise PrefixLen + 2.
    for (net, len, min, max) in [
        ("10.0.0.0/8", 24, "10.0.1.0", "10.255.255.0"),
        ("10.4.0.0/22", 24, "10.4.1.0", "10.4.3.0"),
        ("10.4.0.0/23", 25, "10.4.0.128", "10.4.1.128"),
        ("10.4.0.0/28", 30, "10.4.0.4", "10.4.0.12"),
    ] {
        let c = checked(&format!(r#"{{"Network":"{net}"}}"#));
        assert_eq!(
            (c.subnet_len, c.subnet_min, c.subnet_max),
            (len, Some(ip4(min)), Some(ip4(max))),
            "{net}"
        );
    }
    for (net, len, min, max) in [
        ("fd00::/62", 64, "fd00:0:0:1::", "fd00:0:0:3::"),
        ("fd00::/63", 65, "fd00:0:0:0:8000::", "fd00:0:0:1:8000::"),
        ("fd00::/124", 126, "fd00::4", "fd00::c"),
    ] {
        let c = checked(&format!(
            r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"{net}"}}"#
        ));
        assert_eq!(
            (c.ipv6_subnet_len, c.ipv6_subnet_min, c.ipv6_subnet_max),
            (len, Some(ip6(min)), Some(ip6(max))),
            "{net}"
        );
    }
}

#[test]
fn subnet_max_wraps_like_uint32() {
    let c = checked(r#"{"Network":"255.255.0.0/16"}"#);
    assert_eq!(c.subnet_max, Some(ip4("255.255.255.0")));
    let c = checked(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"ffff:ffff::/32"}"#);
    assert_eq!(c.ipv6_subnet_max, Some(ip6("ffff:ffff:ffff:ffff::")));
}

#[test]
fn no_min_le_max_check() {
    let c = checked(r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.200.0","SubnetMax":"10.3.2.0"}"#);
    assert_eq!(c.subnet_min, Some(ip4("10.3.200.0")));
    assert_eq!(c.subnet_max, Some(ip4("10.3.2.0")));
}

#[test]
fn check_errors_name_key_and_value() {
    let cases: &[(&str, &str)] = &[
        (r#"{}"#, "Network is not set"),
        (r#"{"Network":"0.0.0.0/0"}"#, "Network is not set"),
        (
            r#"{"Network":"10.3.0.0/16","SubnetLen":31}"#,
            "\"SubnetLen\" has an invalid value 31: must be less than /31",
        ),
        (
            r#"{"Network":"10.3.0.0/16","SubnetLen":17}"#,
            "\"SubnetLen\" has an invalid value 17",
        ),
        (
            r#"{"Network":"10.3.0.0/29"}"#,
            "\"Network\" has an invalid value 10.3.0.0/29: network is too small",
        ),
        (
            r#"{"Network":"10.3.0.0/16","SubnetMin":"10.4.1.0"}"#,
            "\"SubnetMin\" has an invalid value 10.4.1.0: not inside",
        ),
        (
            r#"{"Network":"10.3.0.0/16","SubnetMax":"10.4.1.0"}"#,
            "\"SubnetMax\" has an invalid value 10.4.1.0: not inside",
        ),
        (
            r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.1.5"}"#,
            "\"SubnetMin\" has an invalid value 10.3.1.5: not on a SubnetLen boundary",
        ),
        (
            r#"{"Network":"10.3.0.0/16","SubnetMax":"10.3.1.128"}"#,
            "\"SubnetMax\" has an invalid value 10.3.1.128: not on a SubnetLen boundary",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true}"#,
            "IPv6Network is not set",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":127}"#,
            "\"IPv6SubnetLen\" has an invalid value 127: must be less than /127",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":49}"#,
            "four subnets",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/125"}"#,
            "\"IPv6Network\" has an invalid value fd00::/125: network is too small",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd01::"}"#,
            "\"IPv6SubnetMin\" has an invalid value fd01::: not inside",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMax":"fd01::"}"#,
            "\"IPv6SubnetMax\" has an invalid value fd01::: not inside",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd00::1"}"#,
            "\"IPv6SubnetMin\" has an invalid value fd00::1: not on a SubnetLen boundary",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMax":"fd00:0:0:5::1"}"#,
            "\"IPv6SubnetMax\" has an invalid value fd00:0:0:5::1",
        ),
        (
            r#"{"EnableIPv4":false,"Network":"10.0.0.0/8"}"#,
            "neither EnableIPv4 nor EnableIPv6",
        ),
    ];
    for (json, needle) in cases {
        let text = check_err(json).to_string();
        assert!(text.contains(needle), "{json}: {text}");
    }
}

#[test]
fn dual_stack_checks_both() {
    let c = checked(r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#);
    assert_eq!(c.subnet_len, 24);
    assert_eq!(c.ipv6_subnet_len, 64);
    assert_eq!(c.ipv6_subnet_min, Some(ip6("fd00:10:244:1::")));
    assert_eq!(c.ipv6_subnet_max, Some(ip6("fd00:10:244:ff::")));
}

#[test]
fn kube_mode_parse_does_not_check() {
    let c = conf(r#"{"Network":"10.3.0.0/30","SubnetLen":31}"#);
    assert_eq!(c.subnet_len, 31);
    assert_eq!(c.subnet_min, None);
    let c = conf(r#"{"EnableIPv4":false}"#);
    assert!(c.check_stack().is_err());
}

#[test]
fn keys_are_case_insensitive_and_last_occurrence_wins() {
    let c = conf(r#"{"NETWORK":"10.1.0.0/16","enableipv6":true,"EnableNftables":true,"subnetlen":26}"#);
    assert_eq!(c.network, Some("10.1.0.0/16".parse().unwrap()));
    assert!(c.enable_ipv6 && c.enable_nftables);
    assert_eq!(c.subnet_len, 26);
    // Go assigns every occurrence in document order: the last one wins whatever its case.
    assert_eq!(
        conf(r#"{"Network":"10.1.0.0/16","network":"10.2.0.0/16"}"#).network,
        Some("10.2.0.0/16".parse().unwrap())
    );
    assert_eq!(
        conf(r#"{"network":"10.2.0.0/16","Network":"10.1.0.0/16"}"#).network,
        Some("10.1.0.0/16".parse().unwrap())
    );
    assert_eq!(
        conf(r#"{"Network":"10.1.0.0/16","Network":"10.3.0.0/16"}"#).network,
        Some("10.3.0.0/16".parse().unwrap())
    );
}

#[test]
fn unknown_keys_and_nulls() {
    let c = conf(
        r#"{"Network":"10.1.0.0/16","Comment":"x","Networks":"ignored","EnableIPv4":null,"SubnetMin":null,"Backend":null}"#,
    );
    assert!(c.enable_ipv4);
    assert_eq!(c.subnet_min, None);
    assert_eq!(c.backend_type, "udp");
}

#[test]
fn network_is_masked_and_unset_values() {
    let c = conf(
        r#"{"Network":"10.3.5.7/16","SubnetMin":"0.0.0.0","IPv6Network":"fd00::1/48","IPv6SubnetMax":"::"}"#,
    );
    assert_eq!(c.network.unwrap().to_string(), "10.3.0.0/16");
    assert_eq!(c.ipv6_network.unwrap().to_string(), "fd00::/48");
    assert_eq!(c.subnet_min, None);
    assert_eq!(c.ipv6_subnet_max, None);
    assert_eq!(conf(r#"{"Network":"10.0.0.0/0"}"#).network, None);
    assert_eq!(conf(r#"{"IPv6Network":"::/0"}"#).ipv6_network, None);
    assert!(conf(r#"{"IPv6Network":"::/64"}"#).ipv6_network.is_some());
    // Go's ParseIP + To4 accepts the IPv4-mapped form for an IPv4 field.
    assert_eq!(
        conf(r#"{"SubnetMin":"::ffff:10.3.1.0"}"#).subnet_min,
        Some(ip4("10.3.1.0"))
    );
}

#[test]
fn parse_errors_name_key_and_value() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"SubnetLen":"24"}"#,
            "key \"SubnetLen\" has an invalid value \"24\": expected a number",
        ),
        (r#"{"SubnetLen":-1}"#, "\"SubnetLen\" has an invalid value -1"),
        (r#"{"SubnetLen":24.5}"#, "\"SubnetLen\" has an invalid value 24.5"),
        (r#"{"SubnetLen":300}"#, "\"SubnetLen\" has an invalid value 300"),
        (
            r#"{"EnableIPv4":"true"}"#,
            "\"EnableIPv4\" has an invalid value \"true\"",
        ),
        (
            r#"{"Network":"fd00::/48"}"#,
            "\"Network\" has an invalid value \"fd00::/48\": expected an IPv4 CIDR",
        ),
        (
            r#"{"Network":"10.3.0.0"}"#,
            "\"Network\" has an invalid value \"10.3.0.0\"",
        ),
        (
            r#"{"Network":"10.3.0.0/33"}"#,
            "\"Network\" has an invalid value \"10.3.0.0/33\"",
        ),
        (
            r#"{"Network":"10.3.0.300/16"}"#,
            "\"Network\" has an invalid value",
        ),
        (
            r#"{"Network":16}"#,
            "\"Network\" has an invalid value 16: expected a string",
        ),
        (
            r#"{"IPv6Network":"10.0.0.0/8"}"#,
            "\"IPv6Network\" has an invalid value \"10.0.0.0/8\"",
        ),
        (
            r#"{"SubnetMin":"fd00::1"}"#,
            "\"SubnetMin\" has an invalid value \"fd00::1\": expected an IPv4 address",
        ),
        (
            r#"{"SubnetMax":"10.3.1"}"#,
            "\"SubnetMax\" has an invalid value \"10.3.1\"",
        ),
        (
            r#"{"IPv6SubnetMin":"10.3.1.0"}"#,
            "\"IPv6SubnetMin\" has an invalid value \"10.3.1.0\"",
        ),
        (
            r#"{"IPv6SubnetMax":"zz::"}"#,
            "\"IPv6SubnetMax\" has an invalid value \"zz::\"",
        ),
        (
            r#"{"Backend":"vxlan"}"#,
            "\"Backend\" has an invalid value \"vxlan\"",
        ),
        (
            r#"{"Backend":{"Type":1}}"#,
            "\"Backend.Type\" has an invalid value 1",
        ),
    ];
    for (json, needle) in cases {
        let text = parse_err(json).to_string();
        assert!(text.contains(needle), "{json}: {text}");
    }
    for json in ["", "[]", "null", "{", r#"{"Network":"10.0.0.0/8"} x"#] {
        assert!(matches!(parse_err(json), NetConfError::Json(_)), "{json}");
    }
}

#[test]
fn go_cidr_parsing() {
    assert_eq!(parse_go_cidr("10.5.72.1/24").unwrap().to_string(), "10.5.72.0/24");
    assert_eq!(
        parse_go_cidr("fd00:10:244:1::1/64").unwrap().to_string(),
        "fd00:10:244:1::/64"
    );
    assert_eq!(parse_go_cidr("10.0.0.0/08").unwrap().to_string(), "10.0.0.0/8");
    for bad in [
        "10.0.0.0",
        "10.0.0.0/",
        "10.0.0.0/33",
        "10.0.0.0/-1",
        "10.0.0/8",
        "fd00::/129",
        " 10.0.0.0/8",
        "x",
    ] {
        assert!(parse_go_cidr(bad).is_err(), "{bad}");
    }
}
