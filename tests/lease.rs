//! Leases through the public API: subnet keys, lease JSON as stored in etcd, and the watcher fed
//! the way a subnet manager feeds it (snapshot, events, re-list).

use flanneld::kernel::MacAddr;
use flanneld::lease::{
    Lease, LeaseAttrs, LeaseBatch, LeaseError, LeaseEvent, LeaseWatcher, SubnetKey, go_json_string,
    parse_vxlan_backend_data, vxlan_backend_data,
};

fn vxlan_lease(key: &str, ip: &str, mac: &str) -> Lease {
    let key = SubnetKey::parse(key).unwrap();
    let mac: MacAddr = mac.parse().unwrap();
    Lease {
        enable_ipv4: true,
        enable_ipv6: key.v6.is_some(),
        subnet: Some(key.v4),
        ipv6_subnet: key.v6,
        attrs: LeaseAttrs {
            public_ip: ip.parse().unwrap(),
            backend_type: "vxlan".into(),
            backend_data: Some(vxlan_backend_data(1, &mac)),
            ..LeaseAttrs::default()
        },
        expiration: None,
    }
}

#[test]
fn upstream_subnet_key_cases() {
    let key = SubnetKey::parse("10.12.13.0-24&fd00:12:13::-56").unwrap();
    assert_eq!(key.v4.to_string(), "10.12.13.0/24");
    assert_eq!(key.v6.unwrap().to_string(), "fd00:12:13::/56");
    assert_eq!(key.to_string(), "10.12.13.0-24&fd00:12:13::-56");
    let err = SubnetKey::parse("10.12.13.0-24hi").unwrap_err();
    assert_eq!(
        err,
        LeaseError::BadSubnetKey {
            key: "10.12.13.0-24hi".into(),
            reason: "expected <ipv4>-<prefix length>[&<ipv6>-<prefix length>]".into()
        }
    );
    assert!(
        SubnetKey::parse("10.5.52.0-32")
            .unwrap_err()
            .to_string()
            .contains("between 0 and 31")
    );
}

#[test]
fn stored_etcd_value_is_byte_identical() {
    let attrs = LeaseAttrs {
        public_ip: "1.2.3.4".parse().unwrap(),
        ..LeaseAttrs::default()
    };
    assert_eq!(attrs.to_json(), r#"{"PublicIP":"1.2.3.4","PublicIPv6":null}"#);
    let stored = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
    let decoded = LeaseAttrs::from_json(stored).unwrap();
    assert_eq!(decoded.to_json(), stored);
    let (vni, mac) = parse_vxlan_backend_data(decoded.backend_data.as_deref().unwrap()).unwrap();
    assert_eq!((vni, mac.to_string().as_str()), (1, "c6:d2:32:6f:8f:44"));
    assert!(LeaseAttrs::from_json(r#"{"PublicIP":null,"PublicIPv6":null}"#).is_err());
}

#[test]
fn extension_backend_data_uses_go_escaping() {
    let data = go_json_string("ip route add <x> && echo");
    assert_eq!(data, r#""ip route add \u003cx\u003e \u0026\u0026 echo""#);
    let attrs = LeaseAttrs {
        public_ip: "10.0.0.1".parse().unwrap(),
        backend_type: "extension".into(),
        backend_data: Some(data.clone()),
        ..LeaseAttrs::default()
    };
    let json = attrs.to_json();
    assert_eq!(
        json,
        format!(
            r#"{{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"extension","BackendData":{data}}}"#
        )
    );
    assert_eq!(LeaseAttrs::from_json(&json).unwrap(), attrs);
}

#[test]
fn watcher_follows_a_manager_stream() {
    let own = vxlan_lease("10.5.1.0-24", "192.0.2.1", "02:00:00:00:00:01");
    let a = vxlan_lease("10.5.2.0-24", "192.0.2.2", "02:00:00:00:00:02");
    let b = vxlan_lease("10.5.3.0-24", "192.0.2.3", "02:00:00:00:00:03");
    let c = vxlan_lease("10.5.4.0-24", "192.0.2.4", "02:00:00:00:00:04");
    let mut w = LeaseWatcher::new(own.clone());

    // First item: the full list, own lease included by the manager.
    let out = w.apply(LeaseBatch::Snapshot(vec![own.clone(), a.clone(), b.clone()]));
    assert_eq!(
        out,
        vec![LeaseEvent::Added(a.clone()), LeaseEvent::Added(b.clone())]
    );

    // Own renewal, a new peer, an expired peer (the deletion carries no attributes).
    let expired_b = Lease {
        attrs: LeaseAttrs::default(),
        ..b.clone()
    };
    let out = w.apply(LeaseBatch::Events(vec![
        LeaseEvent::Added(own.clone()),
        LeaseEvent::Added(c.clone()),
        LeaseEvent::Removed(expired_b),
    ]));
    assert_eq!(
        out,
        vec![LeaseEvent::Added(c.clone()), LeaseEvent::Removed(b.clone())]
    );

    // Compaction: re-list. `a` left meanwhile, `b` came back.
    let out = w.apply(LeaseBatch::Snapshot(vec![b.clone(), c.clone(), own]));
    assert_eq!(out, vec![LeaseEvent::Added(b.clone()), LeaseEvent::Removed(a)]);
    assert_eq!(w.known(), &[b, c]);
}
