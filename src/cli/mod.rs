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
pub const SUBCOMMANDS: &[&str] = &["mk-docker-opts", "install-conf", "doctor", "diag"];

/// The version printed by `--version`: `FLANNELD_BUILD_VERSION` when set at build time (as
/// upstream injects `git describe` output), else the crate version.
pub const VERSION: &str = match option_env!("FLANNELD_BUILD_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

/// What the command line asks for.
// Built once per process and matched right away: boxing `Flags` would buy nothing.
#[allow(clippy::large_enum_variant)]
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
    InvalidValue {
        flag: String,
        value: String,
        reason: ValueError,
    },
    #[error("bad flag syntax: {arg}")]
    BadSyntax { arg: String },
    /// The value is not shown: it may be a secret (`-etcd-password`).
    #[error("command-line argument {position} is not valid UTF-8")]
    NotUtf8 { position: usize },
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
            arg.into_string()
                .map_err(|_| CliError::NotUtf8 { position: index + 1 })
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
            // The value is not shown: it may be a secret (FLANNELD_ETCD_PASSWORD).
            Some(format!("ignoring {name}: its value is not valid UTF-8"))
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
            return Err(CliError::UnknownFlag {
                flag: name.to_owned(),
            });
        };
        let value = match (inline_value, spec.kind()) {
            (Some(value), _) => value,
            (None, FlagKind::Bool) => "true",
            // Go takes the next argument whatever it looks like (even "-x" or "--").
            (None, _) => match remaining.next() {
                Some(next) => next.as_str(),
                None => {
                    return Err(CliError::MissingValue {
                        flag: name.to_owned(),
                    });
                }
            },
        };
        spec.set(&mut flags, value)
            .map_err(|reason| CliError::InvalidValue {
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
    let body = arg
        .strip_prefix("--")
        .or_else(|| arg.strip_prefix('-'))
        .unwrap_or(arg);
    if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
        return Err(CliError::BadSyntax { arg: arg.to_owned() });
    }
    Ok(match body.split_once('=') {
        Some((name, value)) => Token::Flag {
            name,
            value: Some(value),
        },
        None => Token::Flag {
            name: body,
            value: None,
        },
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
    for spec in FLAGS
        .iter()
        .filter(|spec| !set_on_command_line.contains(spec.name))
    {
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
mod tests;
