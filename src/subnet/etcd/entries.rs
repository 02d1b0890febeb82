//! Pure conversions between etcd keys/values and leases: the key layout under the prefix (Go
//! `path.Join` semantics), `<prefix>/subnets/<subnet key>` <-> subnets, and a stored value ->
//! `Lease`. Errors name the key so a malformed entry can be skipped with a useful warning.
//!
//! No I/O. Spec: flanneld-behaviour.md sections 3.1, 3.2, 5.2.

use std::time::{Duration, SystemTime};

use crate::lease::{Lease, LeaseAttrs, SubnetKey};

/// Why one etcd entry under `subnets/` is not a lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("etcd key {key} is not <prefix>/subnets/<subnet key>: {reason}")]
    BadKey { key: String, reason: String },
    #[error("etcd key {key} holds a value that is not lease attributes: {reason}")]
    BadValue { key: String, reason: String },
}

/// Go's `path.Clean`: collapse `//`, drop `.`, resolve `..`, keep a leading `/`, no trailing `/`.
pub fn clean_path(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Go's `path.Join(a, b)`.
pub fn join_path(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => String::new(),
        (true, false) => clean_path(b),
        (false, true) => clean_path(a),
        (false, false) => clean_path(&format!("{a}/{b}")),
    }
}

/// The keys of one flannel network in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    /// `<prefix>/config`
    pub config: String,
    /// `<prefix>/subnets/` (with the slash: `<prefix>/subnets-old/..` is not ours).
    pub subnets: String,
}

impl KeyLayout {
    pub fn new(prefix: &str) -> KeyLayout {
        KeyLayout {
            config: join_path(prefix, "config"),
            subnets: format!("{}/", join_path(prefix, "subnets")),
        }
    }

    /// The key of a lease's subnets, e.g. `/coreos.com/network/subnets/10.5.52.0-24`.
    pub fn subnet_key(&self, key: &SubnetKey) -> String {
        format!("{}{}", self.subnets, key)
    }

    /// The key of a lease, if it has an IPv4 subnet (etcd keys always start with one).
    pub fn lease_key(&self, lease: &Lease) -> Option<String> {
        lease.subnet.map(|v4| {
            self.subnet_key(&SubnetKey {
                v4,
                v6: lease.ipv6_subnet,
            })
        })
    }

    /// The subnets named by a full etcd key.
    pub fn parse_key(&self, key: &str) -> Result<SubnetKey, EntryError> {
        let rest = key
            .strip_prefix(&self.subnets)
            .ok_or_else(|| EntryError::BadKey {
                key: key.to_string(),
                reason: format!("not under {}", self.subnets),
            })?;
        if rest.contains('/') {
            return Err(EntryError::BadKey {
                key: key.to_string(),
                reason: "nested below a subnet key".into(),
            });
        }
        SubnetKey::parse(rest).map_err(|e| EntryError::BadKey {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }
}

/// A lease with only its subnets known (a deletion), as upstream emits it (spec 5.5).
pub fn lease_of_key(key: &SubnetKey) -> Lease {
    Lease {
        enable_ipv4: true,
        enable_ipv6: key.v6.is_some(),
        subnet: Some(key.v4),
        ipv6_subnet: key.v6,
        attrs: LeaseAttrs::default(),
        expiration: None,
    }
}

/// The lease stored at `key` with `value`; `ttl` is the remaining lease time in seconds (None:
/// the key has no etcd lease, a reservation).
pub fn lease_of_entry(
    layout: &KeyLayout,
    key: &str,
    value: &[u8],
    ttl: Option<i64>,
    now: SystemTime,
) -> Result<Lease, EntryError> {
    let subnets = layout.parse_key(key)?;
    let text = std::str::from_utf8(value).map_err(|e| EntryError::BadValue {
        key: key.to_string(),
        reason: format!("not UTF-8: {e}"),
    })?;
    let attrs = LeaseAttrs::from_json(text).map_err(|e| EntryError::BadValue {
        key: key.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Lease {
        attrs,
        expiration: ttl.map(|t| expiration_after(now, t)),
        ..lease_of_key(&subnets)
    })
}

/// `now + ttl` seconds (a negative TTL means "expiring now").
pub fn expiration_after(now: SystemTime, ttl_secs: i64) -> SystemTime {
    now + Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_join_matches_go() {
        assert_eq!(
            join_path("/coreos.com/network", "config"),
            "/coreos.com/network/config"
        );
        assert_eq!(
            join_path("/coreos.com/network/", "config"),
            "/coreos.com/network/config"
        );
        assert_eq!(
            join_path("coreos.com//network", "subnets"),
            "coreos.com/network/subnets"
        );
        assert_eq!(join_path("/a/./b/../c", "config"), "/a/c/config");
        assert_eq!(join_path("/", "config"), "/config");
        assert_eq!(join_path("", "config"), "config");
        assert_eq!(join_path("/..", "config"), "/config");
        assert_eq!(clean_path("../x"), "../x");
        assert_eq!(clean_path(""), ".");
    }

    #[test]
    fn key_layout_of_the_default_prefix() {
        let layout = KeyLayout::new("/coreos.com/network");
        assert_eq!(layout.config, "/coreos.com/network/config");
        assert_eq!(layout.subnets, "/coreos.com/network/subnets/");
    }

    #[test]
    fn keys_outside_subnets_or_nested_are_rejected_by_name() {
        let layout = KeyLayout::new("/coreos.com/network");
        let err = layout
            .parse_key("/coreos.com/network/subnets-old/10.1.5.0-24")
            .expect_err("outside");
        assert!(
            err.to_string()
                .contains("/coreos.com/network/subnets-old/10.1.5.0-24"),
            "{err}"
        );
        let err = layout
            .parse_key("/coreos.com/network/subnets/x/10.1.5.0-24")
            .expect_err("nested");
        assert!(matches!(err, EntryError::BadKey { .. }), "{err}");
    }

    fn layout() -> KeyLayout {
        KeyLayout::new("/coreos.com/network")
    }

    #[test]
    fn an_entry_becomes_a_lease_with_its_expiration() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let lease = lease_of_entry(
            &layout(),
            "/coreos.com/network/subnets/10.1.5.0-24",
            br#"{"PublicIP":"1.2.3.4","PublicIPv6":null}"#,
            Some(86_400),
            now,
        )
        .expect("valid entry");
        assert_eq!(lease.subnet, Some("10.1.5.0/24".parse().expect("net")));
        assert_eq!(lease.ipv6_subnet, None);
        assert!(lease.enable_ipv4 && !lease.enable_ipv6);
        assert_eq!(lease.attrs.public_ip.to_string(), "1.2.3.4");
        assert_eq!(lease.expiration, Some(now + Duration::from_secs(86_400)));
        assert_eq!(
            layout().lease_key(&lease).as_deref(),
            Some("/coreos.com/network/subnets/10.1.5.0-24")
        );
    }

    #[test]
    fn a_reservation_has_no_expiration_and_dual_stack_keys_round_trip() {
        let now = SystemTime::UNIX_EPOCH;
        let key = "/coreos.com/network/subnets/10.12.13.0-24&fd00:12:13::-56";
        let lease = lease_of_entry(
            &layout(),
            key,
            br#"{"PublicIP":"1.2.3.4","PublicIPv6":"fd00::1"}"#,
            None,
            now,
        )
        .expect("valid entry");
        assert_eq!(lease.expiration, None);
        assert!(lease.enable_ipv4 && lease.enable_ipv6);
        assert_eq!(lease.ipv6_subnet, Some("fd00:12:13::/56".parse().expect("net")));
        assert_eq!(layout().lease_key(&lease).as_deref(), Some(key));
    }

    #[test]
    fn bad_values_are_named_by_key() {
        let now = SystemTime::UNIX_EPOCH;
        let key = "/coreos.com/network/subnets/10.1.5.0-24";
        for value in [
            &b"{ not json"[..],
            br#"{"PublicIP":5}"#,
            br#"{"PublicIP":null}"#,
            b"\xff\xfe",
        ] {
            let err = lease_of_entry(&layout(), key, value, None, now).expect_err("bad value");
            assert!(matches!(err, EntryError::BadValue { .. }), "{err}");
            assert!(err.to_string().contains(key), "{err}");
        }
        let err = lease_of_entry(
            &layout(),
            "/coreos.com/network/subnets/10.1.5.300-24",
            b"{}",
            None,
            now,
        )
        .expect_err("bad key");
        assert!(matches!(err, EntryError::BadKey { .. }), "{err}");
    }

    #[test]
    fn a_deletion_carries_only_the_subnets() {
        let key = layout()
            .parse_key("/coreos.com/network/subnets/10.1.5.0-24")
            .expect("key");
        let lease = lease_of_key(&key);
        assert_eq!(lease.attrs, LeaseAttrs::default());
        assert_eq!(lease.subnet, Some("10.1.5.0/24".parse().expect("net")));
        assert!(lease.enable_ipv4 && !lease.enable_ipv6);
    }

    #[test]
    fn negative_ttls_mean_expiring_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
        assert_eq!(expiration_after(now, -1), now);
        assert_eq!(expiration_after(now, 3), now + Duration::from_secs(3));
    }
}
