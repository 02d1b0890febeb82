//! `mk-docker-opts [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]`:
//! turns flanneld's subnet.env into Docker daemon options (`--bip`, `--ip-masq`, `--mtu`), with the
//! options and output of upstream's `dist/mk-docker-opts.sh` (spec section 12), byte for byte.
//!
//! Upstream behaviour kept: getopts option syntax; `DOCKER_OPT_*` lines sorted by name, taken from
//! the environment and the env file as well as the three computed ones; `--ip-masq` is the
//! inverse of FLANNEL_IPMASQ (Docker must not masquerade when flannel does); the combined value
//! starts with the current value of the combined key's variable; a route to the subnet via a
//! gateway in `ip route show` is an error after the file is written.
//! Deviations (README compatibility notes): a missing or unparsable env file is an error (upstream
//! silently writes empty options, so Docker starts on a wrong bridge network); a combined key that
//! is not a shell variable name is an error; values are not shell-expanded.
//!
//! Pure parts ([`parse_args`], [`render`], [`gateway_routes_to`]) do no I/O; [`run`] does the
//! reading and writing with the environment and route source passed in.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::subnet::env_file::parse_env;

pub const DEFAULT_FLANNEL_ENV: &str = "/run/flannel/subnet.env";
pub const DEFAULT_DOCKER_ENV: &str = "/run/docker_opts.env";
pub const DEFAULT_COMBINED_KEY: &str = "DOCKER_OPTS";
/// The variable-name prefix of the individual options.
pub const OPTION_PREFIX: &str = "DOCKER_OPT_";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `-f`
    pub flannel_env: PathBuf,
    /// `-d`
    pub docker_env: PathBuf,
    /// `-k`
    pub combined_key: String,
    /// `-i`: one `DOCKER_OPT_X="..."` line per option.
    pub individual: bool,
    /// `-c`: the combined `KEY="..."` line.
    pub combined: bool,
    /// Cleared by `-m`: leave out `--ip-masq`.
    pub ip_masq: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            flannel_env: PathBuf::from(DEFAULT_FLANNEL_ENV),
            docker_env: PathBuf::from(DEFAULT_DOCKER_ENV),
            combined_key: DEFAULT_COMBINED_KEY.to_owned(),
            individual: false,
            combined: false,
            ip_masq: true,
        }
    }
}

/// Why mk-docker-opts failed; each message names the file, variable or option concerned.
#[derive(Debug, thiserror::Error)]
pub enum MkDockerOptsError {
    /// `-h`, `-?`, an unknown option or a missing option argument: the usage text is printed.
    #[error("{}", usage_error_text(program, problem.as_deref()))]
    Usage {
        program: String,
        problem: Option<String>,
    },
    #[error("reading flannel env file {path:?}: {source}")]
    ReadEnvFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing flannel env file {path:?}: {reason}")]
    ParseEnvFile { path: PathBuf, reason: String },
    #[error(
        "invalid value of FLANNEL_IPMASQ {value:?} (from {path:?} or the environment): want true or false"
    )]
    InvalidIpMasq { path: PathBuf, value: String },
    #[error("invalid combined options key {key:?} (-k): want a shell variable name")]
    InvalidCombinedKey { key: String },
    #[error("writing Docker env file {path:?}: {source}")]
    WriteDockerEnv {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the routing table already has a route to {subnet} via a gateway, which would conflict \
         with Docker's bridge on FLANNEL_SUBNET (options were written to {path:?}): {routes}"
    )]
    RouteConflict {
        subnet: String,
        path: PathBuf,
        routes: String,
    },
}

/// The usage text, with `program` as upstream prints `$0`.
pub fn usage_text(program: &str) -> String {
    format!(
        "{program} [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]\n\
         \n\
         Generate Docker daemon options based on flannel env file\n\
         OPTIONS:\n\
         \t-f\tPath to flannel env file. Defaults to {DEFAULT_FLANNEL_ENV}\n\
         \t-d\tPath to Docker env file to write to. Defaults to {DEFAULT_DOCKER_ENV}\n\
         \t-i\tOutput each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500\n\
         \t-c\tOutput combined Docker options into DOCKER_OPTS var\n\
         \t-k\tSet the combined options key to this value (default DOCKER_OPTS=)\n\
         \t-m\tDo not output --ip-masq (useful for older Docker version)\n"
    )
}

fn usage_error_text(program: &str, problem: Option<&str>) -> String {
    match problem {
        Some(problem) => format!("{program}: {problem}\n{}", usage_text(program)),
        None => usage_text(program),
    }
}

/// Entry point: `args[0]` is the invoked name. Uses the process environment and `ip route show`.
/// Exit status 0 on success, 1 on usage or any error (as upstream).
pub fn mk_docker_opts_main(args: &[String]) -> i32 {
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect();
    match run(args, &env, &ip_route_show) {
        Ok(()) => 0,
        // The usage text already starts with the program name.
        Err(err @ MkDockerOptsError::Usage { .. }) => {
            eprint!("{err}");
            1
        }
        Err(err) => {
            let program = args.first().map(String::as_str).unwrap_or("mk-docker-opts");
            eprintln!("{program}: {err}");
            1
        }
    }
}

/// The whole tool: parse `args` (`args[0]` = invoked name), read the env file, write the Docker
/// env file, then check the routing table text from `routes`. A failing route source only skips
/// the check (as upstream, where a missing `ip` makes the grep find nothing).
pub fn run(
    args: &[String],
    env: &[(String, String)],
    routes: &dyn Fn() -> io::Result<String>,
) -> Result<(), MkDockerOptsError> {
    let program = args.first().map(String::as_str).unwrap_or("mk-docker-opts");
    let options = parse_args(program, args.get(1..).unwrap_or_default())?;
    let mut vars: BTreeMap<String, String> = env.iter().cloned().collect();
    vars.extend(read_env_file(&options.flannel_env)?);
    let output = render(&options, &vars)?;
    std::fs::write(&options.docker_env, output).map_err(|source| MkDockerOptsError::WriteDockerEnv {
        path: options.docker_env.clone(),
        source,
    })?;
    let Some(subnet) = vars
        .get("FLANNEL_SUBNET")
        .and_then(|value| subnet_network_text(value))
    else {
        return Ok(());
    };
    let table = match routes() {
        Ok(table) => table,
        Err(err) => {
            eprintln!("{program}: warning: cannot list routes to check for {subnet}: {err}");
            return Ok(());
        }
    };
    let conflicts = gateway_routes_to(&table, &subnet);
    if conflicts.is_empty() {
        return Ok(());
    }
    Err(MkDockerOptsError::RouteConflict {
        subnet,
        path: options.docker_env,
        routes: conflicts.join("; "),
    })
}

/// Parses the options like the shell's `getopts "f:d:icmk:?h"`: clustered flags (`-ic`), values
/// attached (`-fFILE`) or in the next argument, parsing stops at `--` or the first non-option;
/// later positional arguments are ignored. `-h`, `-?`, unknown options and missing values are
/// usage errors. With neither `-i` nor `-c`, both are on.
pub fn parse_args(program: &str, args: &[String]) -> Result<Options, MkDockerOptsError> {
    let usage = |problem: Option<String>| MkDockerOptsError::Usage {
        program: program.to_owned(),
        problem,
    };
    let mut options = Options::default();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            break;
        }
        let Some(cluster) = arg.strip_prefix('-').filter(|body| !body.is_empty()) else {
            break;
        };
        for (at, letter) in cluster.char_indices() {
            match letter {
                'i' => options.individual = true,
                'c' => options.combined = true,
                'm' => options.ip_masq = false,
                'f' | 'd' | 'k' => {
                    let attached = cluster.get(at + letter.len_utf8()..).unwrap_or("");
                    let value = if attached.is_empty() {
                        rest.next()
                            .ok_or_else(|| usage(Some(format!("option -{letter} needs a value"))))?
                            .clone()
                    } else {
                        attached.to_owned()
                    };
                    match letter {
                        'f' => options.flannel_env = PathBuf::from(value),
                        'd' => options.docker_env = PathBuf::from(value),
                        _ => options.combined_key = value,
                    }
                    break;
                }
                'h' | '?' => return Err(usage(None)),
                other => return Err(usage(Some(format!("unknown option -{other}")))),
            }
        }
    }
    if !options.individual && !options.combined {
        options.individual = true;
        options.combined = true;
    }
    Ok(options)
}

/// The Docker env file's content for `options` and the shell variables `vars` (environment plus
/// the env file's assignments). The three computed options replace variables of the same name.
pub fn render(options: &Options, vars: &BTreeMap<String, String>) -> Result<String, MkDockerOptsError> {
    if !is_shell_name(&options.combined_key) {
        return Err(MkDockerOptsError::InvalidCombinedKey {
            key: options.combined_key.clone(),
        });
    }
    let non_empty = |name: &str| vars.get(name).filter(|value| !value.is_empty());
    let mut docker_opts: BTreeMap<String, String> = vars
        .iter()
        .filter(|(name, _)| name.starts_with(OPTION_PREFIX))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    if let Some(subnet) = non_empty("FLANNEL_SUBNET") {
        docker_opts.insert("DOCKER_OPT_BIP".into(), format!("--bip={subnet}"));
    }
    if let Some(mtu) = non_empty("FLANNEL_MTU") {
        docker_opts.insert("DOCKER_OPT_MTU".into(), format!("--mtu={mtu}"));
    }
    if let Some(ip_masq) = non_empty("FLANNEL_IPMASQ").filter(|_| options.ip_masq) {
        // Docker must not masquerade pod traffic when flannel already does, and vice versa.
        let docker_masq = match ip_masq.as_str() {
            "true" => "false",
            "false" => "true",
            _ => {
                return Err(MkDockerOptsError::InvalidIpMasq {
                    path: options.flannel_env.clone(),
                    value: ip_masq.clone(),
                });
            }
        };
        docker_opts.insert("DOCKER_OPT_IPMASQ".into(), format!("--ip-masq={docker_masq}"));
    }

    let mut combined = vars.get(&options.combined_key).cloned().unwrap_or_default();
    if !combined.is_empty() {
        combined.push(' ');
    }
    let mut out = String::new();
    for (name, value) in &docker_opts {
        if options.individual {
            out.push_str(&format!("{name}=\"{value}\"\n"));
        }
        combined.push(' ');
        combined.push_str(value);
    }
    if options.combined {
        out.push_str(&format!("{}=\"{combined}\"\n", options.combined_key));
    }
    Ok(out)
}

/// The network address text upstream's script derives from FLANNEL_SUBNET for its route check:
/// the last octet minus one, same prefix (`10.1.74.1/24` -> `10.1.74.0/24`). `None` when the value
/// is not `a.b.c.d/len` with a numeric, non-zero last octet (the check is then skipped).
pub fn subnet_network_text(flannel_subnet: &str) -> Option<String> {
    let (address, prefix_len) = flannel_subnet.split_once('/')?;
    let (first_three, last) = address.rsplit_once('.')?;
    if first_three.split('.').count() != 3 {
        return None;
    }
    let last: u8 = last.parse().ok()?;
    Some(format!("{first_three}.{}/{prefix_len}", last.checked_sub(1)?))
}

/// The lines of `ip route show` output that mention `subnet` and go via a gateway (upstream:
/// `ip route show | grep <subnet> | grep via`, substring matches).
pub fn gateway_routes_to<'a>(route_table: &'a str, subnet: &str) -> Vec<&'a str> {
    route_table
        .lines()
        .filter(|line| line.contains(subnet) && line.contains("via"))
        .collect()
}

/// `ip route show` in the current network namespace.
pub fn ip_route_show() -> io::Result<String> {
    let output = Command::new("ip").args(["route", "show"]).output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "ip route show exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    String::from_utf8(output.stdout).map_err(|_| io::Error::other("ip route show printed non-UTF-8 output"))
}

fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>, MkDockerOptsError> {
    let text = std::fs::read_to_string(path).map_err(|source| MkDockerOptsError::ReadEnvFile {
        path: path.to_path_buf(),
        source,
    })?;
    let vars = parse_env(&text).map_err(|reason| MkDockerOptsError::ParseEnvFile {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(vars.into_iter().collect())
}

fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first == '_' || first.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests;
