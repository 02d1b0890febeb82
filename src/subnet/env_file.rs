//! subnet.env: render (pure), atomic write, and read-back with upstream's tolerance rules.
//! Spec: flanneld-behaviour.md section 4 (4.1 content, 4.2 writing, 4.3 reading back); quirk 5.
//!
//! This module owns the file format only; it does not decide when the file is written (the daemon
//! writes it once, after the traffic rules) nor what a previous subnet is used for (subnet managers,
//! traffic manager). It never deletes the file.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::lease::Lease;
use crate::netconf::{NetConf, parse_go_cidr};

/// What a previous run left in subnet.env (spec 4.3); each field is `Some` only when exactly one
/// valid entry was found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreviousSubnets {
    pub network: Option<Ipv4Net>,
    pub subnet: Option<Ipv4Net>,
    pub ipv6_network: Option<Ipv6Net>,
    pub ipv6_subnet: Option<Ipv6Net>,
}

/// Errors writing or reading subnet.env; each names the step and the path.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    #[error("creating directory {dir} for the subnet file: {source}")]
    CreateDir { dir: PathBuf, source: std::io::Error },
    #[error("subnet file path {0} has no file name")]
    NoFileName(PathBuf),
    #[error("writing subnet file {path}: {step} {temp}: {source}")]
    Write {
        path: PathBuf,
        step: &'static str,
        temp: PathBuf,
        source: std::io::Error,
    },
    #[error("reading subnet file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
}

pub const KEY_NETWORK: &str = "FLANNEL_NETWORK";
pub const KEY_SUBNET: &str = "FLANNEL_SUBNET";
pub const KEY_IPV6_NETWORK: &str = "FLANNEL_IPV6_NETWORK";
pub const KEY_IPV6_SUBNET: &str = "FLANNEL_IPV6_SUBNET";

/// The exact subnet.env content (spec 4.1): LF line endings, every line (the last included) ends
/// with LF, no quotes. The SUBNET lines carry the lease's first address (network address + 1) with
/// the lease prefix; unset values print as upstream's zero values (`0.0.0.0/0`, `::/0`).
pub fn render(conf: &NetConf, lease: &Lease, mtu: u32, ip_masq: bool) -> String {
    let mut out = String::with_capacity(160);
    if conf.enable_ipv4 {
        let network = conf.network.unwrap_or_default();
        let subnet = lease.subnet.unwrap_or_default();
        let first = std::net::Ipv4Addr::from(u32::from(subnet.addr()).wrapping_add(1));
        out.push_str(&format!(
            "{KEY_NETWORK}={network}\n{KEY_SUBNET}={first}/{}\n",
            subnet.prefix_len()
        ));
    }
    if conf.enable_ipv6 {
        let network = conf.ipv6_network.unwrap_or_default();
        let subnet = lease.ipv6_subnet.unwrap_or_default();
        let first = std::net::Ipv6Addr::from(u128::from(subnet.addr()).wrapping_add(1));
        out.push_str(&format!(
            "{KEY_IPV6_NETWORK}={network}\n{KEY_IPV6_SUBNET}={first}/{}\n",
            subnet.prefix_len()
        ));
    }
    out.push_str(&format!("FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={ip_masq}\n"));
    out
}

/// Replace `path` atomically with `contents` (spec 4.2): parents created (0755), a temporary file
/// `.<name><random>` in the target directory with the existing regular file's permission bits or
/// exactly 0644 (umask ignored), written, fsynced, renamed over `path`, and the directory fsynced.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), EnvFileError> {
    let name = path
        .file_name()
        .ok_or_else(|| EnvFileError::NoFileName(path.to_path_buf()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)
        .map_err(|source| EnvFileError::CreateDir {
            dir: dir.clone(),
            source,
        })?;

    let mode = match fs::metadata(path) {
        Ok(meta) if meta.is_file() => meta.permissions().mode() & 0o777,
        _ => 0o644,
    };

    let (temp, mut file) = create_temp(path, &dir, name, mode)?;
    let fail = |step: &'static str, source: std::io::Error| {
        let _ = fs::remove_file(&temp);
        EnvFileError::Write {
            path: path.to_path_buf(),
            step,
            temp: temp.clone(),
            source,
        }
    };
    // The mode given to open() is filtered by the umask; set it explicitly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| fail("setting permissions of", e))?;
    file.write_all(contents).map_err(|e| fail("writing", e))?;
    file.sync_all().map_err(|e| fail("syncing", e))?;
    drop(file);
    fs::rename(&temp, path).map_err(|e| fail("renaming", e))?;
    // Make the rename durable; a failure here leaves a complete file, so it is not an error.
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn create_temp(
    path: &Path,
    dir: &Path,
    name: &std::ffi::OsStr,
    mode: u32,
) -> Result<(PathBuf, fs::File), EnvFileError> {
    let mut last_error = None;
    for _ in 0..16 {
        // Upstream (renameio) appends a decimal non-negative int63.
        let suffix = rand::random::<u64>() >> 1;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(suffix.to_string());
        let temp = dir.join(temp_name);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some((temp, e)),
            Err(source) => {
                return Err(EnvFileError::Write {
                    path: path.to_path_buf(),
                    step: "creating",
                    temp,
                    source,
                });
            }
        }
    }
    let (temp, source) =
        last_error.unwrap_or_else(|| (dir.to_path_buf(), std::io::ErrorKind::AlreadyExists.into()));
    Err(EnvFileError::Write {
        path: path.to_path_buf(),
        step: "creating",
        temp,
        source,
    })
}

/// Read what a previous run wrote (spec 4.3). Never fails: a missing or unreadable file, a missing
/// key, no valid entry or more than one entry all give `None` for that key, with a log line naming
/// the key and the file.
pub fn read_previous(path: &Path) -> PreviousSubnets {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(path = %path.display(), "no previous subnet file");
            return PreviousSubnets::default();
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the previous subnet file; ignoring it");
            return PreviousSubnets::default();
        }
    };
    let vars = match parse_env(&text) {
        Ok(vars) => vars,
        Err(reason) => {
            let err = EnvFileError::Read {
                path: path.to_path_buf(),
                reason,
            };
            tracing::warn!(error = %err, "ignoring the previous subnet file");
            return PreviousSubnets::default();
        }
    };
    let single = |key: &str| -> Option<IpNet> {
        let Some(value) = vars.get(key) else {
            tracing::debug!(key, path = %path.display(), "key not in the previous subnet file");
            return None;
        };
        let mut valid = Vec::new();
        for (entry, parsed) in value.split(',').map(|e| (e, parse_go_cidr(e))) {
            match parsed {
                Ok(net) => valid.push(net),
                Err(error) => tracing::warn!(
                    key, path = %path.display(), entry, %error,
                    "skipping an unparsable entry in the previous subnet file"
                ),
            }
        }
        match valid.as_slice() {
            [one] => Some(*one),
            [] => {
                tracing::warn!(key, path = %path.display(), "no valid subnet for this key in the previous subnet file");
                None
            }
            _ => {
                tracing::warn!(
                    key, path = %path.display(), count = valid.len(),
                    "more than one entry for this key in the previous subnet file; ignoring them"
                );
                None
            }
        }
    };
    let v4 = |key: &str| match single(key)? {
        IpNet::V4(n) => Some(n),
        IpNet::V6(n) => {
            tracing::warn!(key, path = %path.display(), value = %n, "expected an IPv4 CIDR; ignoring it");
            None
        }
    };
    let v6 = |key: &str| match single(key)? {
        IpNet::V6(n) => Some(n),
        IpNet::V4(n) => {
            tracing::warn!(key, path = %path.display(), value = %n, "expected an IPv6 CIDR; ignoring it");
            None
        }
    };
    PreviousSubnets {
        network: v4(KEY_NETWORK),
        subnet: v4(KEY_SUBNET),
        ipv6_network: v6(KEY_IPV6_NETWORK),
        ipv6_subnet: v6(KEY_IPV6_SUBNET),
    }
}

/// The valid CIDRs of a comma-separated value, each masked (`10.5.72.1/24` -> `10.5.72.0/24`);
/// unparsable entries are skipped. Entries are not trimmed, as upstream.
pub fn parse_cidr_list(value: &str) -> Vec<IpNet> {
    value.split(',').filter_map(|e| parse_go_cidr(e).ok()).collect()
}

/// A godotenv-style parser: `KEY=VALUE` or `KEY: VALUE` lines, `#` comment lines, an optional
/// `export ` prefix, single-quoted (literal) or double-quoted (with `\n`, `\"`, `\\` escapes,
/// may span lines) values, and ` #` comments after unquoted values. A later key overrides an
/// earlier one. A non-comment line without a separator makes the whole file invalid, as in
/// godotenv. Variable expansion (`${X}`) is not performed: no subnet.env value uses it.
pub fn parse_env(text: &str) -> Result<HashMap<String, String>, String> {
    let mut vars = HashMap::new();
    let mut rest = text;
    let mut line_no = 0usize;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace());
        if rest.is_empty() {
            return Ok(vars);
        }
        line_no += 1;
        let line_end = rest.find('\n').unwrap_or(rest.len());
        if rest.starts_with('#') {
            rest = rest.get(line_end..).unwrap_or("");
            continue;
        }
        let mut body = rest;
        for prefix in ["export ", "export\t"] {
            if let Some(stripped) = body.strip_prefix(prefix) {
                body = stripped.trim_start_matches([' ', '\t']);
            }
        }
        let line = body.split('\n').next().unwrap_or("");
        let sep = line
            .find(['=', ':'])
            .ok_or_else(|| format!("entry {line_no} {line:?} has no '=' between name and value"))?;
        let key = line.get(..sep).unwrap_or("").trim_end_matches([' ', '\t']);
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!(
                "entry {line_no} {line:?} has an invalid variable name {key:?}"
            ));
        }
        let after = body.get(sep + 1..).unwrap_or("").trim_start_matches([' ', '\t']);
        let (value, remaining) = match after.chars().next() {
            Some(q @ ('\'' | '"')) => parse_quoted(after, q)
                .ok_or_else(|| format!("entry {line_no} for {key:?} has an unterminated {q} quote"))?,
            _ => {
                let end = after.find('\n').unwrap_or(after.len());
                let raw = after.get(..end).unwrap_or("");
                let raw = match raw.find(" #").or_else(|| raw.find("\t#")) {
                    Some(i) => raw.get(..i).unwrap_or(""),
                    None => raw,
                };
                (raw.trim_end().to_string(), after.get(end..).unwrap_or(""))
            }
        };
        vars.insert(key.to_string(), value);
        // Anything after a closing quote up to the end of its line is ignored.
        let tail_end = remaining.find('\n').unwrap_or(remaining.len());
        rest = remaining.get(tail_end..).unwrap_or("");
    }
}

/// A quoted value starting at `text[0] == quote`: the unescaped value and the text after the
/// closing quote, or `None` when the quote is never closed.
fn parse_quoted(text: &str, quote: char) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        if c == quote {
            return Some((value, text.get(i + c.len_utf8()..).unwrap_or("")));
        }
        if c == '\\' && quote == '"' {
            match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, 'r')) => value.push('\r'),
                Some((_, 't')) => value.push('\t'),
                Some((_, other)) => value.push(other),
                None => return None,
            }
        } else {
            value.push(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    fn lease(v4: Option<&str>, v6: Option<&str>) -> Lease {
        Lease {
            enable_ipv4: v4.is_some(),
            enable_ipv6: v6.is_some(),
            subnet: v4.map(|s| s.parse().unwrap()),
            ipv6_subnet: v6.map(|s| s.parse().unwrap()),
            attrs: LeaseAttrs::default(),
            expiration: None,
        }
    }

    #[test]
    fn renders_v4_exactly() {
        let conf = NetConf::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        let text = render(&conf, &lease(Some("10.5.72.0/24"), None), 1450, false);
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
    }

    #[test]
    fn renders_dual_stack_exactly() {
        let conf = NetConf::parse(
            r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"2001:cafe:42::/56","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let text = render(
            &conf,
            &lease(Some("10.42.0.0/24"), Some("2001:cafe:42::/64")),
            1450,
            true,
        );
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn renders_v6_only() {
        let conf =
            NetConf::parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#)
                .unwrap();
        let text = render(&conf, &lease(None, Some("fd00:10:244:1::/64")), 1500, false);
        assert_eq!(
            text,
            "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n"
        );
    }

    #[test]
    fn cidr_list_upstream_cases() {
        assert_eq!(parse_cidr_list("10.244.1.0/24,not-a-cidr,10.244.2.0/24").len(), 2);
        assert!(parse_cidr_list("not-a-cidr").is_empty());
        assert!(parse_cidr_list("").is_empty());
        assert_eq!(
            parse_cidr_list("10.5.72.1/24"),
            vec!["10.5.72.0/24".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn env_parser_rules() {
        let vars = parse_env(
            "# comment\n\nexport FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET = \"10.1.2.1/24\" # trailing\nA='x#y'\nB=plain # c\nC: yaml\nD=\"l1\\nl2\"\nB=again\nE=\nF=\"multi\nline\"\n",
        )
        .unwrap();
        assert_eq!(vars["FLANNEL_NETWORK"], "10.0.0.0/8");
        assert_eq!(vars["FLANNEL_SUBNET"], "10.1.2.1/24");
        assert_eq!(vars["A"], "x#y");
        assert_eq!(vars["B"], "again");
        assert_eq!(vars["C"], "yaml");
        assert_eq!(vars["D"], "l1\nl2");
        assert_eq!(vars["E"], "");
        assert_eq!(vars["F"], "multi\nline");
        assert!(parse_env("GARBAGE\n").is_err());
        assert!(parse_env("A=\"open\n").is_err());
        assert!(parse_env("").unwrap().is_empty());
        assert!(parse_env("A=1\r\nB=2\r\n").unwrap()["A"] == "1");
    }
}
