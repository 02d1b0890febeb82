//! Command line and FLANNELD_* environment, parsed exactly as upstream's Go `flag` package and
//! coreos `flagutil.SetFlagsFromEnv` do (spec sections 1.1-1.3, quirks 1 and 2 of section 14).
//!
//! Pure: arguments and an environment lookup are passed in; nothing here reads the process, prints
//! or exits (`main.rs` does). Values are only syntax-checked; ranges and types are `config`'s job.
//!
//! The parser is hand-rolled rather than built on clap: Go flag semantics (single-dash long names,
//! `-bool value` treating `value` as positional, stopping at the first positional, Go integer
//! literals, a missing value taking the next argument even when it starts with `-`) do not map
//! onto clap's model, and a normalising layer in front of clap would be as large as this parser.

mod flags;
mod goparse;

use std::collections::HashSet;
use std::ffi::OsString;

pub use flags::{FLAGS, FlagKind, FlagSpec, Flags, help_text, lookup};
pub use goparse::ValueError;

/// Words that, as the first argument, select a subcommand instead of the daemon. Upstream ignores
/// positional arguments, so only these exact first words behave differently from upstream.
pub const SUBCOMMANDS: &[&str] = &["mk-docker-opts", "install-conf", "diag"];

/// The version printed by `--version`: `FLANNELD_BUILD_VERSION` when set at build time (as
/// upstream injects `git describe` output), else the crate version.
pub const VERSION: &str = match option_env!("FLANNELD_BUILD_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliOutcome {
    /// Run the daemon with these flags; `env_warnings` name every FLANNELD_* variable whose value
    /// was rejected (the flag kept its value).
    Run { flags: Flags, env_warnings: Vec<String> },
    /// `-h`, `-help` or `--help`: print this text and exit 0.
    Help(String),
    /// `--version`: print the version and exit 0.
    Version,
}

/// A command-line error; every message names the flag (and the value when there is one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    #[error("unknown flag -{flag}")]
    UnknownFlag { flag: String },
    #[error("flag -{flag} needs a value")]
    MissingValue { flag: String },
    #[error("invalid value {value:?} for flag -{flag}: {reason}")]
    InvalidValue { flag: String, value: String, reason: ValueError },
    #[error("bad flag syntax: {arg}")]
    BadSyntax { arg: String },
    #[error("command-line argument {position} is not valid UTF-8: {lossy:?}")]
    NotUtf8 { position: usize, lossy: String },
}

impl CliError {
    /// Exit status for a command-line error: 2 (upstream exits 0; a documented deviation).
    pub fn exit_code(&self) -> i32 {
        2
    }
}

/// Converts process arguments (without the program name) to strings; a non-UTF-8 argument is an
/// error rather than being silently altered. `position` counts from 1 like `$1`.
pub fn args_from_os(args: impl IntoIterator<Item = OsString>) -> Result<Vec<String>, CliError> {
    args.into_iter()
        .enumerate()
        .map(|(index, arg)| {
            arg.into_string().map_err(|arg| CliError::NotUtf8 {
                position: index + 1,
                lossy: arg.to_string_lossy().into_owned(),
            })
        })
        .collect()
}

/// Warnings for FLANNELD_* variables whose value is not valid UTF-8; [`parse`] cannot see those
/// values (the lookup yields `None`), so the caller reports them with the other env warnings.
pub fn non_utf8_env_warnings(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<String> {
    vars.into_iter()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            if !name.starts_with("FLANNELD_") || value.to_str().is_some() {
                return None;
            }
            Some(format!("ignoring {name}={:?}: not valid UTF-8", value.to_string_lossy()))
        })
        .collect()
}

/// The subcommand selected by the first argument (`args` without the program name), if any.
pub fn subcommand(args: &[String]) -> Option<&'static str> {
    let first = args.first()?;
    SUBCOMMANDS.iter().copied().find(|name| name == first)
}

/// Parses `args` (without the program name) like Go's `flag.Parse`, then, unless help or version
/// was asked for, applies FLANNELD_* variables from `env` to the flags not given on the command
/// line.
pub fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<CliOutcome, CliError> {
    let mut flags = Flags::default();
    let mut set_on_command_line: HashSet<&'static str> = HashSet::new();
    let mut remaining = args.iter();
    while let Some(arg) = remaining.next() {
        let (name, inline_value) = match classify(arg)? {
            Token::Positional | Token::EndOfFlags => break,
            Token::Flag { name, value } => (name, value),
        };
        let Some(spec) = lookup(name) else {
            // As Go: -h/-help are only special because no flag of that name exists.
            if name == "h" || name == "help" {
                return Ok(CliOutcome::Help(help_text()));
            }
            return Err(CliError::UnknownFlag { flag: name.to_owned() });
        };
        let value = match (inline_value, spec.kind) {
            (Some(value), _) => value,
            (None, FlagKind::Bool) => "true",
            // Go takes the next argument whatever it looks like (even "-x" or "--").
            (None, _) => match remaining.next() {
                Some(next) => next.as_str(),
                None => return Err(CliError::MissingValue { flag: name.to_owned() }),
            },
        };
        spec.set(&mut flags, value).map_err(|reason| CliError::InvalidValue {
            flag: name.to_owned(),
            value: value.to_owned(),
            reason,
        })?;
        set_on_command_line.insert(spec.name);
    }
    // Upstream checks --version before reading the environment, so FLANNELD_VERSION never counts.
    if flags.version {
        return Ok(CliOutcome::Version);
    }
    let env_warnings = apply_env(&mut flags, &set_on_command_line, env);
    Ok(CliOutcome::Run { flags, env_warnings })
}

/// One command-line argument as Go's flag parser sees it.
#[derive(Debug, PartialEq, Eq)]
enum Token<'a> {
    Positional,
    EndOfFlags,
    Flag { name: &'a str, value: Option<&'a str> },
}

fn classify(arg: &str) -> Result<Token<'_>, CliError> {
    // `-` alone and anything not starting with `-` is positional.
    if arg.len() < 2 || !arg.starts_with('-') {
        return Ok(Token::Positional);
    }
    if arg == "--" {
        return Ok(Token::EndOfFlags);
    }
    let body = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')).unwrap_or(arg);
    if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
        return Err(CliError::BadSyntax { arg: arg.to_owned() });
    }
    Ok(match body.split_once('=') {
        Some((name, value)) => Token::Flag { name, value: Some(value) },
        None => Token::Flag { name: body, value: None },
    })
}

/// Applies FLANNELD_* variables (spec 1.3): flags in name order, only those not set on the command
/// line, empty values ignored, a repeatable flag gets the whole value as one entry. A rejected
/// value leaves the flag unchanged and yields a warning; all of them are reported (upstream keeps
/// only the last one).
fn apply_env(
    flags: &mut Flags,
    set_on_command_line: &HashSet<&'static str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    for spec in FLAGS.iter().filter(|spec| !set_on_command_line.contains(spec.name)) {
        let variable = spec.env_name();
        let Some(value) = env(&variable).filter(|value| !value.is_empty()) else {
            continue;
        };
        if let Err(reason) = spec.set(flags, &value) {
            warnings.push(format!(
                "ignoring {variable}={value:?}: {reason}; flag -{} keeps its value",
                spec.name
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
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
        assert_eq!(classify("-a"), Ok(Token::Flag { name: "a", value: None }));
        assert_eq!(classify("--a=b=c"), Ok(Token::Flag { name: "a", value: Some("b=c") }));
        assert_eq!(classify("-a="), Ok(Token::Flag { name: "a", value: Some("") }));
        for bad in ["---a", "-=x", "--=x", "---"] {
            assert_eq!(classify(bad), Err(CliError::BadSyntax { arg: bad.into() }), "{bad}");
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
        let flags = run(&["-iface", "eth1", "--iface=eth0", "-iface-regex=^10\\.", "-iface-regex", "ens.*"]);
        assert_eq!(flags.iface, ["eth1", "eth0"]);
        assert_eq!(flags.iface_regex, ["^10\\.", "ens.*"]);
        assert_eq!(run(&["-iface=eth0,eth1"]).iface, ["eth0,eth1"]);
    }

    #[test]
    fn ints_accept_go_literal_forms() {
        assert_eq!(run(&["-healthz-port=0x1f91"]).healthz_port, 8081);
        assert_eq!(run(&["-subnet-lease-renew-margin", "0o17"]).subnet_lease_renew_margin, 15);
        assert_eq!(run(&["-subnet-lease-renew-margin", "017"]).subnet_lease_renew_margin, 15);
        assert_eq!(run(&["-iptables-resync=0b101"]).iptables_resync, 5);
        assert_eq!(run(&["-healthz-port=8_081"]).healthz_port, 8081);
        assert_eq!(run(&["-healthz-port=-1"]).healthz_port, -1, "ranges are checked by config");
    }

    #[test]
    fn klog_flags_are_accepted() {
        let flags = run(&["-v", "10", "-vmodule=main=3", "-log_backtrace_at", "main.go:12"]);
        assert_eq!((flags.v, flags.vmodule.as_str(), flags.log_backtrace_at.as_str()), (10, "main=3", "main.go:12"));
        assert!(matches!(error(&["-v=0x3"]), CliError::InvalidValue { .. }));
        assert!(matches!(error(&["-vmodule=main"]), CliError::InvalidValue { .. }));
        assert!(matches!(error(&["-log_backtrace_at=main:3"]), CliError::InvalidValue { .. }));
    }

    #[test]
    fn help_in_every_spelling() {
        for list in [["-h"], ["-help"], ["--help"], ["--h"], ["-help=false"]] {
            assert!(matches!(parse(&args(&list), &no_env), Ok(CliOutcome::Help(_))), "{list:?}");
        }
        assert!(matches!(parse(&args(&["-ip-masq", "-h", "-bad"]), &no_env), Ok(CliOutcome::Help(_))));
        assert_eq!(error(&["-bad", "-h"]), CliError::UnknownFlag { flag: "bad".into() });
    }

    #[test]
    fn version_is_checked_after_all_flags() {
        assert_eq!(parse(&args(&["--version"]), &no_env), Ok(CliOutcome::Version));
        assert_eq!(parse(&args(&["-version", "x", "-bad"]), &no_env), Ok(CliOutcome::Version));
        assert!(matches!(error(&["-version", "-bad"]), CliError::UnknownFlag { .. }));
        assert!(matches!(parse(&args(&["-version=false"]), &no_env), Ok(CliOutcome::Run { .. })));
        let env = |name: &str| (name == "FLANNELD_VERSION").then(|| "true".to_owned());
        assert!(matches!(parse(&[], &env), Ok(CliOutcome::Run { .. })), "FLANNELD_VERSION has no effect");
    }

    #[test]
    fn errors_name_flag_and_value() {
        assert_eq!(error(&["-foo"]).to_string(), "unknown flag -foo");
        assert_eq!(error(&["--foo=1"]).to_string(), "unknown flag -foo");
        assert_eq!(error(&["-etcd-prefix"]).to_string(), "flag -etcd-prefix needs a value");
        assert_eq!(
            error(&["-healthz-port", "abc"]).to_string(),
            "invalid value \"abc\" for flag -healthz-port: not an integer"
        );
        assert!(error(&["-ip-masq=maybe"]).to_string().starts_with("invalid value \"maybe\" for flag -ip-masq: "));
        assert!(error(&["-ip-masq="]).to_string().starts_with("invalid value \"\" for flag -ip-masq: "));
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
        assert_eq!(flags.iface, ["ens3", "ens4"], "FLANNELD_IFACE ignored when -iface is given");
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
        assert!(env_warnings[0].contains("FLANNELD_HEALTHZ_PORT=\"abc\""), "{env_warnings:?}");
        assert!(env_warnings[0].contains("-healthz-port"), "{env_warnings:?}");
        assert!(env_warnings[1].contains("FLANNELD_IPTABLES_FORWARD_RULES=\"yes\""), "{env_warnings:?}");
        assert!(env_warnings[2].contains("FLANNELD_V=\"0x2\""), "{env_warnings:?}");
    }

    #[test]
    fn env_is_not_read_for_help_or_version() {
        let env = |_: &str| -> Option<String> { panic!("environment read") };
        assert!(matches!(parse(&args(&["-h"]), &env), Ok(CliOutcome::Help(_))));
        assert!(matches!(parse(&args(&["-version"]), &env), Ok(CliOutcome::Version)));
    }

    #[test]
    fn subcommands_only_as_first_word() {
        assert_eq!(subcommand(&args(&["diag"])), Some("diag"));
        assert_eq!(subcommand(&args(&["mk-docker-opts", "-x"])), Some("mk-docker-opts"));
        assert_eq!(subcommand(&args(&["install-conf"])), Some("install-conf"));
        assert_eq!(subcommand(&args(&["-v", "1", "diag"])), None);
        assert_eq!(subcommand(&args(&["diagnose"])), None);
        assert_eq!(subcommand(&[]), None);
    }

    #[test]
    fn non_utf8_arguments_are_rejected() {
        use std::os::unix::ffi::OsStringExt;
        let list = vec![OsString::from("-ip-masq"), OsString::from_vec(vec![b'-', b'x', 0xff])];
        let err = args_from_os(list).err();
        assert!(matches!(err, Some(CliError::NotUtf8 { position: 2, .. })), "{err:?}");
        assert_eq!(args_from_os([OsString::from("a")]), Ok(vec!["a".to_owned()]));
    }

    #[test]
    fn non_utf8_env_values_are_reported() {
        use std::os::unix::ffi::OsStringExt;
        let vars = vec![
            (OsString::from("FLANNELD_IFACE"), OsString::from_vec(vec![b'e', 0xff])),
            (OsString::from("FLANNELD_IP_MASQ"), OsString::from("true")),
            (OsString::from("OTHER"), OsString::from_vec(vec![0xff])),
        ];
        let warnings = non_utf8_env_warnings(vars);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("ignoring FLANNELD_IFACE="), "{warnings:?}");
    }
}
