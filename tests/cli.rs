//! Command line, environment and exit statuses (spec section 1, quirks 1, 2 and 17 of section 14).
//!
//! The table tests call the library (`cli::parse` + `Config::from_flags`) with an explicit
//! environment; the last tests run the real binary for help, version and error exit statuses. The
//! daemon itself is never started here.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use flanneld::cli::{self, CliError, CliOutcome, Flags};
use flanneld::config::{Config, ConfigError};

fn argv(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

/// Parses `line` (without the program name) with `env` as the whole environment.
fn parse(line: &str, env: &[(&str, &str)]) -> Result<CliOutcome, CliError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let lookup = move |name: &str| env.get(name).cloned();
    cli::parse(&argv(line), &lookup)
}

/// Parses and validates; panics unless the outcome is Run with a valid config.
fn run_config(line: &str, env: &[(&str, &str)]) -> (Config, Vec<String>) {
    match parse(line, env) {
        Ok(CliOutcome::Run { flags, env_warnings }) => match Config::from_flags(&flags) {
            Ok(config) => (config, env_warnings),
            Err(err) => panic!("{line:?}: config rejected: {err}"),
        },
        other => panic!("{line:?}: expected Run, got {other:?}"),
    }
}

fn flags(line: &str, env: &[(&str, &str)]) -> Flags {
    match parse(line, env) {
        Ok(CliOutcome::Run { flags, .. }) => flags,
        other => panic!("{line:?}: expected Run, got {other:?}"),
    }
}

#[test]
fn kube_mode_command_line() {
    let (config, warnings) = run_config("--ip-masq --kube-subnet-mgr --iface=ens38", &[]);
    assert!(warnings.is_empty());
    assert!(config.ip_masq);
    assert!(config.kube_subnet_mgr);
    assert_eq!(config.iface, ["ens38"]);
    assert_eq!(
        config.net_config_path,
        PathBuf::from("/etc/kube-flannel/net-conf.json")
    );
    assert!(config.set_node_network_unavailable);
}

#[test]
fn etcd_tls_command_line() {
    let line = "--ip-masq -etcd-endpoints=https://a:2379 -etcd-cafile=/opt/etcd/ssl/ca.pem \
                -etcd-certfile=/c.pem -etcd-keyfile=/k.pem";
    let (config, _) = run_config(line, &[]);
    assert!(config.ip_masq && !config.kube_subnet_mgr);
    assert_eq!(config.etcd.endpoints, ["https://a:2379"]);
    assert_eq!(config.etcd.cafile, Some(PathBuf::from("/opt/etcd/ssl/ca.pem")));
    assert_eq!(config.etcd.certfile, Some(PathBuf::from("/c.pem")));
    assert_eq!(config.etcd.keyfile, Some(PathBuf::from("/k.pem")));
    assert_eq!(config.etcd.prefix, "/coreos.com/network");
    assert_eq!(
        (config.etcd.username.as_deref(), config.etcd.password.as_deref()),
        (None, None)
    );
}

#[test]
fn functional_test_multi_network_command_line() {
    let (config, _) = run_config("-v 10 -subnet-file /vxlan.env -etcd-prefix=/vxlan/network", &[]);
    assert_eq!(config.verbosity, 10);
    assert_eq!(config.subnet_file, PathBuf::from("/vxlan.env"));
    assert_eq!(config.etcd.prefix, "/vxlan/network");
}

#[test]
fn functional_test_etcd_command_line() {
    let line = "--etcd-cafile=/certs/ca.pem --etcd-certfile=/certs/client.pem \
                --etcd-keyfile=/certs/client-key.pem --etcd-endpoints=http://192.0.2.1:2379 -v 10";
    let (config, _) = run_config(line, &[]);
    assert_eq!(config.etcd.endpoints, ["http://192.0.2.1:2379"]);
    assert_eq!(config.verbosity, 10);
}

#[test]
fn flanneld_iface_is_one_interface_name() {
    let (config, warnings) = run_config("", &[("FLANNELD_IFACE", "eth0,eth1")]);
    assert!(warnings.is_empty());
    assert_eq!(config.iface, ["eth0,eth1"]);
    let (config, _) = run_config("", &[("FLANNELD_IFACE_REGEX", "^eth[0-9]+$,^ens")]);
    assert_eq!(config.iface_regex, ["^eth[0-9]+$,^ens"]);
}

#[test]
fn environment_sets_flags_not_on_the_command_line() {
    let env = [
        (
            "FLANNELD_ETCD_ENDPOINTS",
            "http://192.0.2.5:2379,http://192.0.2.6:2379",
        ),
        ("FLANNELD_IP_MASQ", "true"),
        ("FLANNELD_KUBE_SUBNET_MGR", "1"),
        ("FLANNELD_IPTABLES_FORWARD_RULES", "false"),
        ("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "0x1e"),
        ("FLANNELD_PUBLIC_IP", "192.0.2.9"),
        ("FLANNELD_V", "3"),
        ("FLANNELD_LOG_BACKTRACE_AT", "main.go:10"),
        ("FLANNELD_HEALTHZ_PORT", ""),
    ];
    let (config, warnings) = run_config("", &env);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        config.etcd.endpoints,
        ["http://192.0.2.5:2379", "http://192.0.2.6:2379"]
    );
    assert!(config.ip_masq && config.kube_subnet_mgr && !config.iptables_forward_rules);
    assert_eq!(config.subnet_lease_renew_margin, Duration::from_secs(30 * 60));
    assert_eq!(config.public_ip, Some(Ipv4Addr::new(192, 0, 2, 9)));
    assert_eq!(config.verbosity, 3);
    assert_eq!(config.healthz_port, 0, "empty variables are ignored");
}

#[test]
fn command_line_beats_environment() {
    let env = [
        ("FLANNELD_ETCD_PREFIX", "/from/env"),
        ("FLANNELD_IFACE", "env0"),
        ("FLANNELD_IP_MASQ", "true"),
        ("FLANNELD_V", "2"),
        ("FLANNELD_SUBNET_FILE", "/env.env"),
    ];
    let (config, _) = run_config("-etcd-prefix /from/cli --iface=cli0 -ip-masq=false -v=5", &env);
    assert_eq!(config.etcd.prefix, "/from/cli");
    assert_eq!(
        config.iface,
        ["cli0"],
        "FLANNELD_IFACE is ignored when -iface is given"
    );
    assert!(!config.ip_masq);
    assert_eq!(config.verbosity, 5);
    assert_eq!(
        config.subnet_file,
        PathBuf::from("/env.env"),
        "not on the command line: env applies"
    );
    // -iface-regex on the command line does not block FLANNELD_IFACE.
    let (config, _) = run_config("-iface-regex=^e", &env);
    assert_eq!(config.iface, ["env0"]);
    assert_eq!(config.iface_regex, ["^e"]);
}

#[test]
fn bad_environment_values_warn_and_keep_the_value() {
    let env = [
        ("FLANNELD_IP_MASQ", "maybe"),
        ("FLANNELD_HEALTHZ_PORT", "http"),
        ("FLANNELD_SET_NODE_NETWORK_UNAVAILABLE", "nope"),
        ("FLANNELD_VMODULE", "main"),
    ];
    let (config, warnings) = run_config("-kube-subnet-mgr", &env);
    assert!(!config.ip_masq);
    assert_eq!(config.healthz_port, 0);
    assert!(config.set_node_network_unavailable);
    assert_eq!(warnings.len(), 4, "every bad variable is reported: {warnings:?}");
    for (warning, (name, value)) in warnings.iter().zip([env[1], env[0], env[2], env[3]]) {
        assert!(warning.contains(&format!("{name}={value:?}")), "{warning}");
    }
}

#[test]
fn ip_masq_false_is_a_positional_argument() {
    let flags = flags("-ip-masq false -kube-subnet-mgr", &[]);
    assert!(flags.ip_masq, "-ip-masq alone means true");
    assert!(!flags.kube_subnet_mgr, "parsing stopped at 'false'");
}

#[test]
fn go_integer_forms() {
    for (text, want) in [
        ("0x3c", 60),
        ("0o74", 60),
        ("074", 60),
        ("0b111100", 60),
        ("6_0", 60),
        ("+60", 60),
    ] {
        let flags = flags(&format!("-subnet-lease-renew-margin={text}"), &[]);
        assert_eq!(flags.subnet_lease_renew_margin, want, "{text}");
    }
}

#[test]
fn help_and_version() {
    for line in ["-h", "-help", "--help", "--ip-masq -h"] {
        match parse(line, &[]) {
            Ok(CliOutcome::Help(text)) => assert!(text.starts_with("Usage: flanneld")),
            other => panic!("{line}: {other:?}"),
        }
    }
    assert_eq!(parse("--version", &[]), Ok(CliOutcome::Version));
    assert_eq!(parse("-version=true", &[]), Ok(CliOutcome::Version));
    assert!(matches!(
        parse("", &[("FLANNELD_VERSION", "true")]),
        Ok(CliOutcome::Run { .. })
    ));
}

#[test]
fn every_bad_command_line_names_flag_and_value() {
    let cases = [
        ("-foo", "unknown flag -foo"),
        ("--no-such-flag=1", "unknown flag -no-such-flag"),
        ("-logtostderr", "unknown flag -logtostderr"),
        ("-etcd-prefix", "flag -etcd-prefix needs a value"),
        ("-v", "flag -v needs a value"),
        ("--iface", "flag -iface needs a value"),
        (
            "-ip-masq=maybe",
            "invalid value \"maybe\" for flag -ip-masq: not a boolean",
        ),
        (
            "-healthz-port abc",
            "invalid value \"abc\" for flag -healthz-port: not an integer",
        ),
        (
            "-iptables-resync=1.5",
            "invalid value \"1.5\" for flag -iptables-resync: not an integer",
        ),
        (
            "-subnet-lease-renew-margin=99999999999999999999",
            "invalid value \"99999999999999999999\" for flag -subnet-lease-renew-margin: integer out of range",
        ),
        ("-v=high", "invalid value \"high\" for flag -v: not an integer"),
        ("-vmodule=x", "invalid value \"x\" for flag -vmodule: "),
        ("---ip-masq", "bad flag syntax: ---ip-masq"),
        ("-=true", "bad flag syntax: -=true"),
    ];
    for (line, message) in cases {
        let err = parse(line, &[]).expect_err(line);
        assert!(err.to_string().starts_with(message), "{line}: got {err:?}");
        assert_eq!(err.exit_code(), 2, "{line}");
    }
}

#[test]
fn every_bad_config_value_names_flag_and_value() {
    let cases = [
        ("-subnet-lease-renew-margin=0", "-subnet-lease-renew-margin", "0"),
        (
            "-subnet-lease-renew-margin=1440",
            "-subnet-lease-renew-margin",
            "1440",
        ),
        (
            "-subnet-lease-renew-margin=-5",
            "-subnet-lease-renew-margin",
            "-5",
        ),
        ("-healthz-port=65536", "-healthz-port", "65536"),
        ("-iptables-resync=0", "-iptables-resync", "0"),
        ("-public-ip=192.0.2", "-public-ip", "192.0.2"),
        ("-public-ipv6=192.0.2.1", "-public-ipv6", "192.0.2.1"),
        ("-iface-can-reach=gateway", "-iface-can-reach", "gateway"),
        ("-etcd-endpoints=", "-etcd-endpoints", ""),
    ];
    for (line, flag, value) in cases {
        let Ok(CliOutcome::Run { flags, .. }) = parse(line, &[]) else {
            panic!("{line}: parse failed")
        };
        let err: ConfigError = Config::from_flags(&flags).expect_err(line);
        let text = err.to_string();
        assert!(text.contains(flag) && text.contains(value), "{line}: {text}");
        assert_eq!(err.exit_code(), 1);
    }
    let Ok(CliOutcome::Run { flags, .. }) = parse("-subnet-lease-renew-margin=1440", &[]) else {
        panic!()
    };
    assert!(
        Config::from_flags(&flags)
            .expect_err("out of range")
            .to_string()
            .contains("1..=1439")
    );
}

#[test]
fn startup_summary_never_shows_the_password() {
    let (config, _) = run_config("-etcd-username=root -etcd-password=s3cr3t-pw", &[]);
    assert_eq!(config.etcd.password.as_deref(), Some("s3cr3t-pw"));
    let summary = config.redacted_summary();
    assert!(summary.contains("etcd-username=\"root\"") && summary.contains("etcd-password=<redacted>"));
    assert!(!summary.contains("s3cr3t-pw") && !format!("{config:?}").contains("s3cr3t-pw"));
}

// ---- the real binary -------------------------------------------------------------------------

/// Runs the binary with `args` and an environment holding only `env` (no FLANNELD_* leaks in).
fn flanneld(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flanneld"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run the flanneld binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn binary_help_exits_0_on_stdout() {
    for flag in ["--help", "-h", "-help"] {
        let out = flanneld(&[flag], &[]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        let stdout = text(&out.stdout);
        assert!(stdout.starts_with("Usage: flanneld"), "{stdout}");
        assert!(
            stdout.contains("-etcd-endpoints string") && stdout.contains("-kube-subnet-mgr"),
            "{stdout}"
        );
    }
}

#[test]
fn binary_version_exits_0_on_stderr() {
    let out = flanneld(&["--version"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stderr), format!("{}\n", cli::VERSION));
    assert!(out.stdout.is_empty());
}

#[test]
fn binary_bad_flag_exits_2_with_hint() {
    let cases = [
        (["--foo"].as_slice(), "unknown flag -foo"),
        (&["-etcd-prefix"], "flag -etcd-prefix needs a value"),
        (&["-ip-masq=maybe"], "invalid value \"maybe\" for flag -ip-masq"),
        (
            &["-healthz-port", "abc"],
            "invalid value \"abc\" for flag -healthz-port: not an integer",
        ),
    ];
    for (args, message) in cases {
        let out = flanneld(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(stderr.contains("run 'flanneld --help' for usage"), "{stderr}");
    }
}

#[test]
fn binary_bad_renew_margin_exits_1() {
    let out = flanneld(&["-subnet-lease-renew-margin=1440"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("-subnet-lease-renew-margin") && stderr.contains("1440"),
        "{stderr}"
    );
    assert!(stderr.contains("1..=1439"), "{stderr}");
}

#[test]
fn binary_bad_env_value_warns_and_continues() {
    // A bad FLANNELD_* value is only a warning: startup goes on and stops at the (bad) renew
    // margin given on the command line, so the daemon is never started.
    let out = flanneld(
        &["-subnet-lease-renew-margin=0"],
        &[
            ("FLANNELD_IP_MASQ", "maybe"),
            ("FLANNELD_ETCD_PASSWORD", "hunter2"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("FLANNELD_IP_MASQ") && stderr.contains("maybe"),
        "{stderr}"
    );
    assert!(stderr.contains("-subnet-lease-renew-margin"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn binary_subcommands_run_their_tools_and_name_bad_arguments() {
    for name in cli::SUBCOMMANDS {
        let out = flanneld(&[name, "-no-such-flag"], &[]);
        assert_ne!(out.status.code(), Some(0), "{name}");
        assert!(
            !text(&out.stderr).contains("not implemented"),
            "{name}: {}",
            text(&out.stderr)
        );
    }
}
