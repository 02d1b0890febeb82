//! The subnet key: the etcd key suffix naming a lease, `10.5.52.0-24` or `10.12.13.0-24&fd00:12:13::-56`
//! (spec section 3.1). Parsing uses upstream's regular expression with Go's match semantics so the
//! same keys are accepted and rejected. Pure code.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use ipnet::{Ipv4Net, Ipv6Net};
use regex::Regex;

use super::LeaseError;

/// The subnet(s) a lease is for; the text form is the etcd key suffix.
///
/// The v4 address is kept as written: upstream does not mask a key like `10.1.2.5-24`, so neither do
/// we (it still prints back as `10.1.2.5-24`). An IPv6 part of `::/0` is "empty" upstream and is
/// neither parsed into `v6` nor printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    pub v4: Ipv4Net,
    pub v6: Option<Ipv6Net>,
}

/// Upstream's `subnetRegex`, with `\d` spelled `[0-9]` because Go's `\d` is ASCII-only while the
/// regex crate's is Unicode. The unescaped dots are upstream's and kept (they match any character;
/// the address parse then rejects non-dots). Unanchored at the start like Go's `FindStringSubmatch`,
/// which returns the leftmost match: `xyz10.1.2.0-24` is therefore accepted as `10.1.2.0/24`, as
/// upstream does. Both engines use leftmost-first semantics, so the captured parts are the same.
static SUBNET_KEY_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"([0-9]+\.[0-9]+.[0-9]+.[0-9]+)-([0-9]+)(?:&([a-f0-9:]+)-([0-9]+))?$")
        .unwrap_or_else(|e| unreachable!("constant subnet key pattern: {e}"))
});

impl SubnetKey {
    /// Parse `a.b.c.d-len` or `a.b.c.d-len&v6-len6` with upstream's accept/reject rules (spec 3.1).
    pub fn parse(text: &str) -> Result<SubnetKey, LeaseError> {
        let bad = |reason: &str| LeaseError::BadSubnetKey {
            key: text.to_string(),
            reason: reason.to_string(),
        };
        let caps = SUBNET_KEY_RE
            .captures(text)
            .ok_or_else(|| bad("expected <ipv4>-<prefix length>[&<ipv6>-<prefix length>]"))?;
        let group = |i: usize| caps.get(i).map(|m| m.as_str()).unwrap_or("");

        let v4_text = group(1);
        let v4_addr: Ipv4Addr = v4_text
            .parse()
            .map_err(|_| bad(&format!("{v4_text:?} is not an IPv4 address")))?;
        let v4_len = parse_len(group(2), 31).ok_or_else(|| {
            bad(&format!(
                "IPv4 prefix length {:?} is not a number between 0 and 31",
                group(2)
            ))
        })?;
        let v4 = Ipv4Net::new(v4_addr, v4_len).map_err(|_| bad("IPv4 prefix length out of range"))?;

        let v6 = match caps.get(3) {
            None => None,
            Some(m) => {
                let v6_text = m.as_str();
                let v6_addr: Ipv6Addr = v6_text
                    .parse()
                    .map_err(|_| bad(&format!("{v6_text:?} is not an IPv6 address")))?;
                let v6_len = parse_len(group(4), 127).ok_or_else(|| {
                    bad(&format!(
                        "IPv6 prefix length {:?} is not a number between 0 and 127",
                        group(4)
                    ))
                })?;
                let net =
                    Ipv6Net::new(v6_addr, v6_len).map_err(|_| bad("IPv6 prefix length out of range"))?;
                (!is_empty_v6(&net)).then_some(net)
            }
        };
        Ok(SubnetKey { v4, v6 })
    }

    /// The key for a lease's subnets (upstream `MakeSubnetKey`).
    pub fn new(v4: Ipv4Net, v6: Option<Ipv6Net>) -> SubnetKey {
        SubnetKey { v4, v6 }
    }
}

/// Go's `strconv.ParseUint(s, 10, bitSize)`: decimal digits (leading zeros allowed), `<= max`.
fn parse_len(text: &str, max: u8) -> Option<u8> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let trimmed = text.trim_start_matches('0');
    if trimmed.len() > 3 {
        return None;
    }
    let value: u16 = if trimmed.is_empty() {
        0
    } else {
        trimmed.parse().ok()?
    };
    u8::try_from(value).ok().filter(|v| *v <= max)
}

/// Upstream's `IP6Net.Empty()`: address `::` and prefix 0.
pub(crate) fn is_empty_v6(net: &Ipv6Net) -> bool {
    net.addr().is_unspecified() && net.prefix_len() == 0
}

impl std::fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.v4.addr(), self.v4.prefix_len())?;
        if let Some(v6) = self.v6.filter(|n| !is_empty_v6(n)) {
            write!(f, "&{}-{}", v6.addr(), v6.prefix_len())?;
        }
        Ok(())
    }
}

impl std::str::FromStr for SubnetKey {
    type Err = LeaseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SubnetKey::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn v6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    #[test]
    fn parses_v4_and_dual_keys() {
        assert_eq!(
            SubnetKey::parse("10.5.52.0-24").unwrap(),
            SubnetKey {
                v4: v4("10.5.52.0/24"),
                v6: None
            }
        );
        let dual = SubnetKey::parse("10.12.13.0-24&fd00:12:13::-56").unwrap();
        assert_eq!(dual.v4, v4("10.12.13.0/24"));
        assert_eq!(dual.v6, Some(v6("fd00:12:13::/56")));
    }

    #[test]
    fn rejects_upstream_invalid_list() {
        for key in [
            "10",
            "10.12.13.0",
            "10.12.13-24",
            "10.12.13.300-24",
            "10.12.13.0-24hi",
            "&2001::-56",
            "10.12.13.0-24&:12:13:-56",
            "10.12.13.0-24&20011::-56",
            "10.12.13.0-24&2001-56",
            "10.12.13.0-24&2001::",
            "10.12.13.0-24&2001::-56hi",
        ] {
            let err = SubnetKey::parse(key).unwrap_err();
            assert!(
                matches!(&err, LeaseError::BadSubnetKey { key: k, .. } if k == key),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn prefix_length_bounds_follow_bit_sizes() {
        assert!(SubnetKey::parse("10.0.0.0-31").is_ok());
        assert!(SubnetKey::parse("10.0.0.0-32").is_err());
        assert!(SubnetKey::parse("10.0.0.0-0").is_ok());
        assert_eq!(SubnetKey::parse("10.0.0.0-024").unwrap().v4, v4("10.0.0.0/24"));
        assert!(SubnetKey::parse("10.0.0.0-99999999999999999999999").is_err());
        assert!(SubnetKey::parse("10.0.0.0-24&fd00::-127").is_ok());
        assert!(SubnetKey::parse("10.0.0.0-24&fd00::-128").is_err());
    }

    #[test]
    fn go_regex_quirks_are_kept() {
        // Leftmost match of an unanchored pattern: a prefix is ignored, as upstream does.
        assert_eq!(SubnetKey::parse("xyz10.1.2.0-24").unwrap().v4, v4("10.1.2.0/24"));
        assert_eq!(
            SubnetKey::parse("/coreos.com/network/subnets/10.1.2.0-24")
                .unwrap()
                .v4,
            v4("10.1.2.0/24")
        );
        // `1.2.3.4.5-24`: the leftmost match starts at "2.3.4.5".
        assert_eq!(SubnetKey::parse("1.2.3.4.5-24").unwrap().v4, v4("2.3.4.5/24"));
        // Unescaped dots match anything, then the address parse rejects it.
        assert!(SubnetKey::parse("10.1x2y0-24").is_err());
        // Unicode digits are not `\d` in Go.
        assert!(SubnetKey::parse("10.1.2.\u{0663}-24").is_err());
        // Uppercase hex is outside [a-f\d:].
        assert!(SubnetKey::parse("10.1.2.0-24&FD00::-64").is_err());
        // Leading zeros in an octet are rejected by Go's ParseIP.
        assert!(SubnetKey::parse("10.01.2.0-24").is_err());
    }

    #[test]
    fn host_bits_are_kept_as_written() {
        let key = SubnetKey::parse("10.1.2.5-24").unwrap();
        assert_eq!(key.v4.addr(), Ipv4Addr::new(10, 1, 2, 5));
        assert_eq!(key.to_string(), "10.1.2.5-24");
    }

    #[test]
    fn empty_v6_part_is_absent() {
        let key = SubnetKey::parse("10.1.2.0-24&::-0").unwrap();
        assert_eq!(key.v6, None);
        assert_eq!(
            SubnetKey {
                v4: v4("10.1.2.0/24"),
                v6: Some(v6("::/0"))
            }
            .to_string(),
            "10.1.2.0-24"
        );
    }

    #[test]
    fn round_trip_is_identity() {
        for key in [
            SubnetKey {
                v4: v4("10.5.52.0/24"),
                v6: None,
            },
            SubnetKey {
                v4: v4("10.12.13.0/24"),
                v6: Some(v6("fd00:12:13::/56")),
            },
            SubnetKey {
                v4: v4("198.18.0.0/31"),
                v6: Some(v6("2001:db8:0:1::/64")),
            },
            SubnetKey {
                v4: v4("0.0.0.0/0"),
                v6: Some(v6("fc00:0:0:1::/127")),
            },
        ] {
            let text = key.to_string();
            assert_eq!(SubnetKey::parse(&text).unwrap(), key, "{text}");
        }
        assert_eq!(
            SubnetKey {
                v4: v4("10.12.13.0/24"),
                v6: Some(v6("fd00:12:13::/56"))
            }
            .to_string(),
            "10.12.13.0-24&fd00:12:13::-56"
        );
    }
}
