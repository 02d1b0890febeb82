//! Unit tests of the Go-style parser and the FLANNELD_* environment (spec 1.1-1.3).

use super::*;

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|arg| (*arg).to_owned()).collect()
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn run(list: &[&str]) -> Flags {
    match parse(&args(list), &no_env) {
        Ok(CliOutcome::Run { flags, env_warnings }) => {
            assert!(env_warnings.is_empty());
            flags
        }
        other => panic!("{list:?}: expected Run, got {other:?}"),
    }
}

fn error(list: &[&str]) -> CliError {
    match parse(&args(list), &no_env) {
        Err(err) => err,
        other => panic!("{list:?}: expected an error, got {other:?}"),
    }
}

#[test]
fn classify_follows_go_flag() {
    assert_eq!(classify("-"), Ok(Token::Positional));
    assert_eq!(classify("x"), Ok(Token::Positional));
    assert_eq!(classify(""), Ok(Token::Positional));
    assert_eq!(classify("--"), Ok(Token::EndOfFlags));
    assert_eq!(
        classify("-a"),
        Ok(Token::Flag {
            name: "a",
            value: None
        })
    );
    assert_eq!(
        classify("--a=b=c"),
        Ok(Token::Flag {
            name: "a",
            value: Some("b=c")
        })
    );
    assert_eq!(
        classify("-a="),
        Ok(Token::Flag {
            name: "a",
            value: Some("")
        })
    );
    for bad in ["---a", "-=x", "--=x", "---"] {
        assert_eq!(
            classify(bad),
            Err(CliError::BadSyntax { arg: bad.into() }),
            "{bad}"
        );
    }
}

#[test]
fn one_or_two_dashes_and_both_value_forms() {
    for list in [
        ["-etcd-prefix=/p"].as_slice(),
        &["--etcd-prefix=/p"],
        &["-etcd-prefix", "/p"],
        &["--etcd-prefix", "/p"],
    ] {
        assert_eq!(run(list).etcd_prefix, "/p", "{list:?}");
    }
}

#[test]
fn bools_never_take_a_separate_value() {
    let flags = run(&["-ip-masq", "false", "-kube-subnet-mgr"]);
    assert!(flags.ip_masq);
    assert!(!flags.kube_subnet_mgr, "parsing stops at the positional 'false'");
    assert!(!run(&["-iptables-forward-rules=false"]).iptables_forward_rules);
    assert!(run(&["--ip-masq=T"]).ip_masq);
    assert!(!run(&["--ip-masq=true", "--ip-masq=0"]).ip_masq, "last one wins");
}

#[test]
fn a_missing_value_takes_the_next_argument_whatever_it_is() {
    assert_eq!(run(&["-etcd-prefix", "-ip-masq"]).etcd_prefix, "-ip-masq");
    assert_eq!(run(&["-etcd-prefix", "--"]).etcd_prefix, "--");
    assert_eq!(run(&["-v", "-3"]).v, -3);
}

#[test]
fn parsing_stops_at_positional_or_double_dash() {
    let flags = run(&["-ip-masq", "--", "-kube-subnet-mgr", "-unknown"]);
    assert!(flags.ip_masq && !flags.kube_subnet_mgr);
    let flags = run(&["-", "-kube-subnet-mgr"]);
    assert!(!flags.kube_subnet_mgr);
    let flags = run(&["extra", "-no-such-flag"]);
    assert_eq!(flags, Flags::default());
}

#[test]
fn repeatable_flags_accumulate_in_order() {
    let flags = run(&[
        "-iface",
        "eth1",
        "--iface=eth0",
        "-iface-regex=^10\\.",
        "-iface-regex",
        "ens.*",
    ]);
    assert_eq!(flags.iface, ["eth1", "eth0"]);
    assert_eq!(flags.iface_regex, ["^10\\.", "ens.*"]);
    assert_eq!(run(&["-iface=eth0,eth1"]).iface, ["eth0,eth1"]);
}

#[test]
fn ints_accept_go_literal_forms() {
    assert_eq!(run(&["-healthz-port=0x1f91"]).healthz_port, 8081);
    assert_eq!(
        run(&["-subnet-lease-renew-margin", "0o17"]).subnet_lease_renew_margin,
        15
    );
    assert_eq!(
        run(&["-subnet-lease-renew-margin", "017"]).subnet_lease_renew_margin,
        15
    );
    assert_eq!(run(&["-iptables-resync=0b101"]).iptables_resync, 5);
    assert_eq!(run(&["-healthz-port=8_081"]).healthz_port, 8081);
    assert_eq!(
        run(&["-healthz-port=-1"]).healthz_port,
        -1,
        "ranges are checked by config"
    );
}

#[test]
fn klog_flags_are_accepted() {
    let flags = run(&["-v", "10", "-vmodule=main=3", "-log_backtrace_at", "main.go:12"]);
    assert_eq!(
        (flags.v, flags.vmodule.as_str(), flags.log_backtrace_at.as_str()),
        (10, "main=3", "main.go:12")
    );
    assert!(matches!(error(&["-v=0x3"]), CliError::InvalidValue { .. }));
    assert!(matches!(error(&["-vmodule=main"]), CliError::InvalidValue { .. }));
    assert!(matches!(
        error(&["-log_backtrace_at=main:3"]),
        CliError::InvalidValue { .. }
    ));
}

#[test]
fn help_in_every_spelling() {
    for list in [["-h"], ["-help"], ["--help"], ["--h"], ["-help=false"]] {
        assert!(
            matches!(parse(&args(&list), &no_env), Ok(CliOutcome::Help(_))),
            "{list:?}"
        );
    }
    assert!(matches!(
        parse(&args(&["-ip-masq", "-h", "-bad"]), &no_env),
        Ok(CliOutcome::Help(_))
    ));
    assert_eq!(
        error(&["-bad", "-h"]),
        CliError::UnknownFlag { flag: "bad".into() }
    );
}

#[test]
fn version_is_checked_after_all_flags() {
    assert_eq!(parse(&args(&["--version"]), &no_env), Ok(CliOutcome::Version));
    assert_eq!(
        parse(&args(&["-version", "x", "-bad"]), &no_env),
        Ok(CliOutcome::Version)
    );
    assert!(matches!(
        error(&["-version", "-bad"]),
        CliError::UnknownFlag { .. }
    ));
    assert!(matches!(
        parse(&args(&["-version=false"]), &no_env),
        Ok(CliOutcome::Run { .. })
    ));
    let env = |name: &str| (name == "FLANNELD_VERSION").then(|| "true".to_owned());
    assert!(
        matches!(parse(&[], &env), Ok(CliOutcome::Run { .. })),
        "FLANNELD_VERSION has no effect"
    );
}

#[test]
fn errors_name_flag_and_value() {
    assert_eq!(error(&["-foo"]).to_string(), "unknown flag -foo");
    assert_eq!(error(&["--foo=1"]).to_string(), "unknown flag -foo");
    assert_eq!(
        error(&["-etcd-prefix"]).to_string(),
        "flag -etcd-prefix needs a value"
    );
    assert_eq!(
        error(&["-healthz-port", "abc"]).to_string(),
        "invalid value \"abc\" for flag -healthz-port: not an integer"
    );
    assert!(
        error(&["-ip-masq=maybe"])
            .to_string()
            .starts_with("invalid value \"maybe\" for flag -ip-masq: ")
    );
    assert!(
        error(&["-ip-masq="])
            .to_string()
            .starts_with("invalid value \"\" for flag -ip-masq: ")
    );
    assert_eq!(error(&["---x"]).to_string(), "bad flag syntax: ---x");
    assert_eq!(error(&["-ip-masq", "-foo"]).exit_code(), 2);
}

#[test]
fn env_applies_only_to_flags_not_on_the_command_line() {
    let env = |name: &str| match name {
        "FLANNELD_IFACE" => Some("eth0,eth1".to_owned()),
        "FLANNELD_IP_MASQ" => Some("true".to_owned()),
        "FLANNELD_ETCD_PREFIX" => Some("/env".to_owned()),
        "FLANNELD_HEALTHZ_PORT" => Some(String::new()),
        _ => None,
    };
    let Ok(CliOutcome::Run { flags, env_warnings }) = parse(&args(&["-etcd-prefix=/cli"]), &env) else {
        panic!("expected Run");
    };
    assert_eq!(flags.iface, ["eth0,eth1"]);
    assert!(flags.ip_masq);
    assert_eq!(flags.etcd_prefix, "/cli");
    assert_eq!(flags.healthz_port, 0, "an empty variable is ignored");
    assert!(env_warnings.is_empty());

    let Ok(CliOutcome::Run { flags, .. }) = parse(&args(&["-iface=ens3", "-iface=ens4"]), &env) else {
        panic!("expected Run");
    };
    assert_eq!(
        flags.iface,
        ["ens3", "ens4"],
        "FLANNELD_IFACE ignored when -iface is given"
    );
}

#[test]
fn every_bad_env_value_is_reported_and_ignored() {
    let env = |name: &str| match name {
        "FLANNELD_HEALTHZ_PORT" => Some("abc".to_owned()),
        "FLANNELD_IPTABLES_FORWARD_RULES" => Some("yes".to_owned()),
        "FLANNELD_V" => Some("0x2".to_owned()),
        "FLANNELD_IP_MASQ" => Some("1".to_owned()),
        _ => None,
    };
    let Ok(CliOutcome::Run { flags, env_warnings }) = parse(&[], &env) else {
        panic!("expected Run");
    };
    assert_eq!(flags.healthz_port, 0);
    assert!(flags.iptables_forward_rules, "keeps its default");
    assert_eq!(flags.v, 0);
    assert!(flags.ip_masq);
    assert_eq!(env_warnings.len(), 3, "{env_warnings:?}");
    // Name order: healthz-port, iptables-forward-rules, v.
    assert!(
        env_warnings[0].contains("FLANNELD_HEALTHZ_PORT=\"abc\""),
        "{env_warnings:?}"
    );
    assert!(env_warnings[0].contains("-healthz-port"), "{env_warnings:?}");
    assert!(
        env_warnings[1].contains("FLANNELD_IPTABLES_FORWARD_RULES=\"yes\""),
        "{env_warnings:?}"
    );
    assert!(env_warnings[2].contains("FLANNELD_V=\"0x2\""), "{env_warnings:?}");
}

#[test]
fn env_is_not_read_for_help_or_version() {
    let env = |_: &str| -> Option<String> { panic!("environment read") };
    assert!(matches!(parse(&args(&["-h"]), &env), Ok(CliOutcome::Help(_))));
    assert!(matches!(
        parse(&args(&["-version"]), &env),
        Ok(CliOutcome::Version)
    ));
}

#[test]
fn subcommands_only_as_first_word() {
    assert_eq!(subcommand(&args(&["diag"])), Some("diag"));
    assert_eq!(
        subcommand(&args(&["mk-docker-opts", "-x"])),
        Some("mk-docker-opts")
    );
    assert_eq!(subcommand(&args(&["install-conf"])), Some("install-conf"));
    assert_eq!(subcommand(&args(&["-v", "1", "diag"])), None);
    assert_eq!(subcommand(&args(&["diagnose"])), None);
    assert_eq!(subcommand(&[]), None);
}

#[test]
fn non_utf8_arguments_are_rejected() {
    use std::os::unix::ffi::OsStringExt;
    let list = vec![
        OsString::from("-ip-masq"),
        OsString::from_vec(vec![b'-', b'x', 0xff]),
    ];
    let err = args_from_os(list).err();
    assert!(
        matches!(err, Some(CliError::NotUtf8 { position: 2, .. })),
        "{err:?}"
    );
    // The value may be a password: the message names the position only.
    let secret = vec![
        OsString::from("-etcd-password"),
        OsString::from_vec(b"hunter2\xff".to_vec()),
    ];
    let text = args_from_os(secret).unwrap_err().to_string();
    assert_eq!(text, "command-line argument 2 is not valid UTF-8");
    assert_eq!(args_from_os([OsString::from("a")]), Ok(vec!["a".to_owned()]));
}

#[test]
fn non_utf8_env_values_are_reported() {
    use std::os::unix::ffi::OsStringExt;
    let vars = vec![
        (
            OsString::from("FLANNELD_IFACE"),
            OsString::from_vec(vec![b'e', 0xff]),
        ),
        (OsString::from("FLANNELD_IP_MASQ"), OsString::from("true")),
        (OsString::from("OTHER"), OsString::from_vec(vec![0xff])),
    ];
    let warnings = non_utf8_env_warnings(vars);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(
        warnings[0], "ignoring FLANNELD_IFACE: its value is not valid UTF-8",
        "the value is never shown (it may be FLANNELD_ETCD_PASSWORD)"
    );
}
