//! Dual-stack create races. An etcd key names both subnets (`<v4>-<len>&<v6>-<len>`, spec 3.1), so
//! the create-if-absent transaction of spec 5.3 only stops a second node from taking the same
//! *pair*: two nodes that start together and pick the same IPv6 subnet (or the same IPv4 subnet)
//! with different partners both succeed (upstream has this hole). After creating its key, a node
//! lists the leases again: if another lease overlaps either of its subnets and was written earlier
//! (lower mod revision; renewals come a day later), it deletes its own key and picks again. The
//! earlier key always stays, so exactly one of two racing nodes retries.

use ipnet::IpNet;

use super::Listed;
use crate::lease::Lease;

fn subnets(lease: &Lease) -> Vec<IpNet> {
    lease
        .subnet
        .map(IpNet::V4)
        .into_iter()
        .chain(lease.ipv6_subnet.map(IpNet::V6))
        .collect()
}

/// The key of an earlier lease that overlaps the lease just created at `key` (so ours must go),
/// or `None` when ours may stay. `Some(key)` with our own key when ours is gone already.
pub(crate) fn earlier_overlapping<'a>(key: &'a str, listed: &'a [Listed]) -> Option<&'a str> {
    let Some(ours) = listed.iter().find(|l| l.key == key) else {
        return Some(key);
    };
    let mine = subnets(&ours.lease);
    listed
        .iter()
        .filter(|l| l.key != key && l.mod_revision < ours.mod_revision)
        .find(|l| {
            subnets(&l.lease)
                .iter()
                .any(|theirs| mine.iter().any(|m| m.contains(theirs) || theirs.contains(m)))
        })
        .map(|l| l.key.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    fn listed(v4: &str, v6: &str, rev: i64) -> Listed {
        let lease = Lease {
            enable_ipv4: true,
            enable_ipv6: true,
            subnet: Some(v4.parse().unwrap()),
            ipv6_subnet: Some(v6.parse().unwrap()),
            attrs: LeaseAttrs::default(),
            expiration: None,
        };
        Listed {
            key: format!("/p/subnets/{}", lease.key()),
            lease,
            mod_revision: rev,
            leased: true,
        }
    }

    #[test]
    fn the_later_of_two_overlapping_leases_retries() {
        let a = listed("198.18.2.0/24", "2001:db8:1:3::/64", 10);
        let b = listed("198.18.81.0/24", "2001:db8:1:3::/64", 11);
        let c = listed("198.18.9.0/24", "2001:db8:1:9::/64", 5);
        let all = [a.clone(), b.clone(), c.clone()];
        assert_eq!(earlier_overlapping(&b.key, &all), Some(a.key.as_str()));
        assert_eq!(earlier_overlapping(&a.key, &all), None, "the earlier one stays");
        assert_eq!(earlier_overlapping(&c.key, &all), None, "no overlap");
        // The same IPv4 subnet with another IPv6 partner is caught too.
        let d = listed("198.18.9.0/24", "2001:db8:1:77::/64", 12);
        assert_eq!(
            earlier_overlapping(&d.key, &[c.clone(), d.clone()]),
            Some(c.key.as_str())
        );
        // Our key vanished meanwhile: it cannot stay.
        assert_eq!(
            earlier_overlapping("/p/subnets/gone", &all),
            Some("/p/subnets/gone")
        );
    }
}
