//! Unit tests for the pure parts of mk-docker-opts, with upstream's reference outputs
//! (dist/mk_docker_opts_test.go over dist/sample_subnet.env; spec section 12).

use super::*;

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn parse(list: &[&str]) -> Result<Options, MkDockerOptsError> {
    parse_args("mk-docker-opts.sh", &strings(list))
}

/// Upstream's sample_subnet.env as shell variables.
fn sample_vars() -> BTreeMap<String, String> {
    [
        ("FLANNEL_NETWORK", "10.1.0.0/16"),
        ("FLANNEL_SUBNET", "10.1.74.1/24"),
        ("FLANNEL_MTU", "1472"),
        ("FLANNEL_IPMASQ", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn render_sample(list: &[&str]) -> String {
    render(&parse(list).expect("valid options"), &sample_vars()).expect("renders")
}

#[test]
fn defaults_are_upstreams_paths_key_and_both_outputs() {
    let options = parse(&[]).unwrap();
    assert_eq!(options.flannel_env, PathBuf::from("/run/flannel/subnet.env"));
    assert_eq!(options.docker_env, PathBuf::from("/run/docker_opts.env"));
    assert_eq!(options.combined_key, "DOCKER_OPTS");
    assert!(options.individual && options.combined && options.ip_masq);
}

#[test]
fn getopts_syntax_separate_attached_and_clustered() {
    let options = parse(&["-f", "/a.env", "-d/b.env", "-ick", "KEY", "-m"]).unwrap();
    assert_eq!(options.flannel_env, PathBuf::from("/a.env"));
    assert_eq!(options.docker_env, PathBuf::from("/b.env"));
    assert_eq!(options.combined_key, "KEY");
    assert!(options.individual && options.combined && !options.ip_masq);

    let options = parse(&["-kOPTS", "-c"]).unwrap();
    assert_eq!(options.combined_key, "OPTS");
    assert!(!options.individual && options.combined);

    let options = parse(&["-i"]).unwrap();
    assert!(options.individual && !options.combined);
}

#[test]
fn an_option_value_may_start_with_a_dash() {
    assert_eq!(parse(&["-d", "-i"]).unwrap().docker_env, PathBuf::from("-i"));
}

#[test]
fn parsing_stops_at_double_dash_or_the_first_operand() {
    let options = parse(&["-i", "--", "-m"]).unwrap();
    assert!(options.ip_masq && !options.combined);
    let options = parse(&["-c", "extra", "-m"]).unwrap();
    assert!(options.ip_masq && !options.individual);
    let options = parse(&["-", "-m"]).unwrap();
    assert!(options.ip_masq);
}

#[test]
fn help_unknown_options_and_missing_values_are_usage_errors() {
    for args in [&["-h"][..], &["-?"], &["-x"], &["-ix"], &["-f"], &["-i", "-k"]] {
        match parse(args) {
            Err(MkDockerOptsError::Usage { program, .. }) => assert_eq!(program, "mk-docker-opts.sh"),
            other => panic!("{args:?}: {other:?}"),
        }
    }
    let text = parse(&["-x"]).unwrap_err().to_string();
    assert!(
        text.starts_with("mk-docker-opts.sh: unknown option -x\n"),
        "{text}"
    );
    assert!(
        text.contains("mk-docker-opts.sh [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE]"),
        "{text}"
    );
    let text = parse(&["-f"]).unwrap_err().to_string();
    assert!(text.contains("option -f needs a value"), "{text}");
}

#[test]
fn usage_text_lists_every_option() {
    let text = usage_text("/opt/bin/mk-docker-opts.sh");
    assert!(text.starts_with(
        "/opt/bin/mk-docker-opts.sh [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]\n"
    ));
    for option in ["\t-f\t", "\t-d\t", "\t-i\t", "\t-c\t", "\t-k\t", "\t-m\t"] {
        assert!(text.contains(option), "{option:?} in {text}");
    }
}

#[test]
fn upstream_sample_default_output() {
    assert_eq!(
        render_sample(&[]),
        "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\n\
         DOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
         DOCKER_OPT_MTU=\"--mtu=1472\"\n\
         DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
    );
}

#[test]
fn upstream_sample_individual_only() {
    assert_eq!(
        render_sample(&["-i"]),
        "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\n\
         DOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
         DOCKER_OPT_MTU=\"--mtu=1472\"\n"
    );
}

#[test]
fn upstream_sample_combined_only() {
    assert_eq!(
        render_sample(&["-c"]),
        "DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
    );
}

#[test]
fn upstream_sample_custom_key() {
    assert_eq!(
        render_sample(&["-k", "CUSTOM_KEY"]),
        "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\n\
         DOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
         DOCKER_OPT_MTU=\"--mtu=1472\"\n\
         CUSTOM_KEY=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
    );
}

#[test]
fn upstream_sample_without_ip_masq() {
    assert_eq!(
        render_sample(&["-m"]),
        "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\n\
         DOCKER_OPT_MTU=\"--mtu=1472\"\n\
         DOCKER_OPTS=\" --bip=10.1.74.1/24 --mtu=1472\"\n"
    );
}

#[test]
fn flannel_masquerading_turns_docker_masquerading_off() {
    let mut vars = sample_vars();
    vars.insert("FLANNEL_IPMASQ".into(), "true".into());
    let out = render(&parse(&["-i"]).unwrap(), &vars).unwrap();
    assert!(out.contains("DOCKER_OPT_IPMASQ=\"--ip-masq=false\"\n"), "{out}");
}

#[test]
fn an_invalid_ipmasq_value_is_an_error_naming_it() {
    let mut vars = sample_vars();
    vars.insert("FLANNEL_IPMASQ".into(), "yes".into());
    let err = render(&parse(&[]).unwrap(), &vars).unwrap_err();
    assert!(matches!(&err, MkDockerOptsError::InvalidIpMasq { value, .. } if value == "yes"));
    assert!(err.to_string().contains("FLANNEL_IPMASQ \"yes\""), "{err}");
    // -m skips the value entirely, as upstream.
    assert!(render(&parse(&["-m"]).unwrap(), &vars).is_ok());
}

#[test]
fn empty_or_missing_flannel_values_give_no_option() {
    let vars: BTreeMap<String, String> = [("FLANNEL_SUBNET", ""), ("FLANNEL_MTU", "")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(render(&parse(&[]).unwrap(), &vars).unwrap(), "DOCKER_OPTS=\"\"\n");
}

#[test]
fn extra_docker_opt_variables_are_included_in_name_order() {
    let mut vars = sample_vars();
    vars.insert("DOCKER_OPT_A_DNS".into(), "--dns=192.0.2.53".into());
    vars.insert("DOCKER_OPT_ZZZ".into(), "--debug".into());
    // Replaced by the computed option of the same name.
    vars.insert("DOCKER_OPT_MTU".into(), "--mtu=9000".into());
    assert_eq!(
        render(&parse(&[]).unwrap(), &vars).unwrap(),
        "DOCKER_OPT_A_DNS=\"--dns=192.0.2.53\"\n\
         DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\n\
         DOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
         DOCKER_OPT_MTU=\"--mtu=1472\"\n\
         DOCKER_OPT_ZZZ=\"--debug\"\n\
         DOCKER_OPTS=\" --dns=192.0.2.53 --bip=10.1.74.1/24 --ip-masq=true --mtu=1472 --debug\"\n"
    );
}

#[test]
fn the_combined_value_starts_with_the_keys_current_value() {
    let mut vars = sample_vars();
    vars.insert("DOCKER_OPTS".into(), "--log-level=warn".into());
    assert_eq!(
        render(&parse(&["-c"]).unwrap(), &vars).unwrap(),
        "DOCKER_OPTS=\"--log-level=warn  --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
    );
}

#[test]
fn a_combined_key_that_is_not_a_variable_name_is_an_error() {
    for key in ["", "1ABC", "A B", "A-B", "A=B", "$X"] {
        let err = render(&parse(&["-k", key]).unwrap(), &sample_vars()).unwrap_err();
        assert!(
            matches!(&err, MkDockerOptsError::InvalidCombinedKey { key: k } if k == key),
            "{key:?}"
        );
    }
    for key in ["_", "a", "Docker_Opts_2"] {
        assert!(
            render(&parse(&["-k", key]).unwrap(), &sample_vars()).is_ok(),
            "{key:?}"
        );
    }
}

#[test]
fn subnet_network_text_is_the_last_octet_minus_one() {
    assert_eq!(
        subnet_network_text("10.1.74.1/24").as_deref(),
        Some("10.1.74.0/24")
    );
    assert_eq!(
        subnet_network_text("198.18.3.129/25").as_deref(),
        Some("198.18.3.128/25")
    );
    for bad in [
        "",
        "10.1.74.1",
        "10.1.74.0/24",
        "10.1.74.x/24",
        "10.1.1/24",
        "1.2.3.4.5/24",
        "fd00::1/64",
    ] {
        assert_eq!(subnet_network_text(bad), None, "{bad:?}");
    }
}

#[test]
fn only_routes_via_a_gateway_to_the_subnet_conflict() {
    let table = "default via 192.0.2.1 dev eth0\n\
                 10.1.74.0/24 dev docker0 proto kernel scope link src 10.1.74.1\n\
                 10.1.74.0/24 via 192.0.2.7 dev eth0\n\
                 10.1.75.0/24 via 192.0.2.8 dev eth0\n";
    assert_eq!(
        gateway_routes_to(table, "10.1.74.0/24"),
        vec!["10.1.74.0/24 via 192.0.2.7 dev eth0"]
    );
    assert!(gateway_routes_to(table, "10.1.76.0/24").is_empty());
    assert!(gateway_routes_to("", "10.1.74.0/24").is_empty());
}
