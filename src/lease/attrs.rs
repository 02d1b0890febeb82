//! Lease attributes: the JSON value of a lease in etcd (and of the kube backend-data annotations),
//! byte-identical to upstream's Go encoding (spec section 3.2), plus the vxlan BackendData payload.
//! Pure code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::value::RawValue;

use super::LeaseError;
use super::gojson::{self, GoObject};
use crate::kernel::MacAddr;

/// What a node publishes about itself (spec 3.2). `backend_data` and `backend_v6_data` hold the
/// raw JSON text exactly as published (e.g. `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAttrs {
    /// `0.0.0.0` when unset, as upstream.
    pub public_ip: Ipv4Addr,
    pub public_ipv6: Option<Ipv6Addr>,
    /// Empty when unset (omitted from JSON).
    pub backend_type: String,
    pub backend_data: Option<String>,
    pub backend_v6_data: Option<String>,
}

impl Default for LeaseAttrs {
    fn default() -> Self {
        LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: None,
            backend_type: String::new(),
            backend_data: None,
            backend_v6_data: None,
        }
    }
}

const ATTR_FIELDS: &[&str] = &[
    "PublicIP",
    "PublicIPv6",
    "BackendType",
    "BackendData",
    "BackendV6Data",
];

impl LeaseAttrs {
    /// Upstream's JSON, byte for byte: `{"PublicIP":"..","PublicIPv6":null,...}`.
    ///
    /// Field order is fixed; `BackendType`, `BackendData` and `BackendV6Data` are omitted when empty.
    /// Backend data is written the way Go writes a `json.RawMessage`: compacted (whitespace outside
    /// strings dropped, `<`, `>`, `&` escaped) with every token kept, so data that is already compact,
    /// as everything upstream or we produce is, is copied unchanged.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(96);
        out.push_str("{\"PublicIP\":\"");
        out.push_str(&self.public_ip.to_string());
        out.push_str("\",\"PublicIPv6\":");
        match self.public_ipv6 {
            Some(ip) => {
                out.push('"');
                out.push_str(&ip.to_string());
                out.push('"');
            }
            None => out.push_str("null"),
        }
        if !self.backend_type.is_empty() {
            out.push_str(",\"BackendType\":");
            out.push_str(&gojson::go_json_string(&self.backend_type));
        }
        for (name, data) in [
            ("BackendData", &self.backend_data),
            ("BackendV6Data", &self.backend_v6_data),
        ] {
            if let Some(data) = data.as_deref().filter(|d| !d.is_empty()) {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":");
                out.push_str(&gojson::go_compact(data));
            }
        }
        out.push('}');
        out
    }

    /// Decode with case-insensitive keys; `"PublicIP":null` is an error.
    ///
    /// An absent `PublicIP` is `0.0.0.0` and an absent or `null` `PublicIPv6` is `None`, as upstream;
    /// `null` backend data counts as absent; unknown keys are ignored.
    pub fn from_json(json: &str) -> Result<LeaseAttrs, LeaseError> {
        let bad = |reason: String| LeaseError::BadAttrs {
            json: json.to_string(),
            reason,
        };
        let object = GoObject::parse(json).map_err(|e| bad(format!("not a JSON object: {e}")))?;
        let fields = object.fields(ATTR_FIELDS);

        let public_ip = match fields.get("PublicIP") {
            None => Ipv4Addr::UNSPECIFIED,
            Some(raw) => {
                decode_ipv4(raw).map_err(|reason| bad(format!("PublicIP {}: {reason}", raw.get())))?
            }
        };
        let public_ipv6 = match fields.non_null("PublicIPv6") {
            None => None,
            Some(raw) => {
                Some(decode_ipv6(raw).map_err(|reason| bad(format!("PublicIPv6 {}: {reason}", raw.get())))?)
            }
        };
        let backend_type = match fields.get("BackendType") {
            None => String::new(),
            Some(raw) => gojson::decode_string(raw)
                .map_err(|reason| bad(format!("BackendType {}: {reason}", raw.get())))?
                .unwrap_or_default(),
        };
        Ok(LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type,
            backend_data: fields.non_null("BackendData").map(|raw| raw.get().to_string()),
            backend_v6_data: fields.non_null("BackendV6Data").map(|raw| raw.get().to_string()),
        })
    }
}

fn decode_ipv4(raw: &RawValue) -> Result<Ipv4Addr, String> {
    let text = gojson::decode_string(raw)?.ok_or_else(|| "must be an IPv4 address, not null".to_string())?;
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(ip),
        // Go's ParseIP + To4 accepts the IPv4-mapped IPv6 form.
        Ok(IpAddr::V6(ip)) => ip
            .to_ipv4_mapped()
            .ok_or_else(|| "is not an IPv4 address".to_string()),
        Err(_) => Err("is not an IPv4 address".to_string()),
    }
}

fn decode_ipv6(raw: &RawValue) -> Result<Ipv6Addr, String> {
    let text = gojson::decode_string(raw)?.unwrap_or_default();
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => Ok(ip),
        // Go's ParseIP + To16 turns IPv4 text into its IPv4-mapped form.
        Ok(IpAddr::V4(ip)) => Ok(ip.to_ipv6_mapped()),
        Err(_) => Err("is not an IPv6 address".to_string()),
    }
}

/// The vxlan backend's BackendData, as upstream marshals it: `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`.
pub fn vxlan_backend_data(vni: u32, mac: &MacAddr) -> String {
    format!("{{\"VNI\":{vni},\"VtepMAC\":\"{mac}\"}}")
}

/// Decode a vxlan BackendData (keys case-insensitive): the VNI (0 when absent) and the VTEP MAC
/// (required; `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff`, any case).
pub fn parse_vxlan_backend_data(json: &str) -> Result<(u32, MacAddr), LeaseError> {
    let bad = |reason: String| LeaseError::BadBackendData {
        json: json.to_string(),
        reason,
    };
    let object = GoObject::parse(json).map_err(|e| bad(format!("not a JSON object: {e}")))?;
    let fields = object.fields(&["VNI", "VtepMAC"]);
    let vni = match fields.get("VNI") {
        None => 0,
        Some(raw) => {
            let value =
                gojson::decode_int(raw).map_err(|reason| bad(format!("VNI {}: {reason}", raw.get())))?;
            u32::try_from(value.unwrap_or(0))
                .map_err(|_| bad(format!("VNI {}: must be between 0 and 4294967295", raw.get())))?
        }
    };
    let raw_mac = fields
        .non_null("VtepMAC")
        .ok_or_else(|| bad("VtepMAC is missing".to_string()))?;
    let mac_text = gojson::decode_string(raw_mac)
        .map_err(|reason| bad(format!("VtepMAC {}: {reason}", raw_mac.get())))?
        .unwrap_or_default();
    let mac = mac_text
        .replace('-', ":")
        .parse::<MacAddr>()
        .map_err(|reason| bad(format!("VtepMAC: {reason}")))?;
    Ok((vni, mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(ip: &str) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: ip.parse().unwrap(),
            ..LeaseAttrs::default()
        }
    }

    #[test]
    fn bare_attrs_match_upstream_bytes() {
        assert_eq!(
            attrs("1.2.3.4").to_json(),
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":null}"#
        );
        assert_eq!(
            LeaseAttrs::default().to_json(),
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":null}"#
        );
    }

    #[test]
    fn backend_examples_match_upstream_bytes() {
        let mut vx = attrs("192.168.64.3");
        vx.backend_type = "vxlan".into();
        vx.backend_data = Some(vxlan_backend_data(1, &"c6:d2:32:6f:8f:44".parse().unwrap()));
        assert_eq!(
            vx.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
        let mut hg = attrs("10.0.0.1");
        hg.backend_type = "host-gw".into();
        assert_eq!(
            hg.to_json(),
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"host-gw"}"#
        );
        let mut dual = attrs("10.0.0.1");
        dual.public_ipv6 = Some("fd00:12:13::1".parse().unwrap());
        dual.backend_type = "wireguard".into();
        dual.backend_data = Some(r#"{"PublicKey":"abc=","Port":51820}"#.into());
        dual.backend_v6_data = Some(r#"{"PublicKey":"abc=","Port":51821}"#.into());
        assert_eq!(
            dual.to_json(),
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":"fd00:12:13::1","BackendType":"wireguard","BackendData":{"PublicKey":"abc=","Port":51820},"BackendV6Data":{"PublicKey":"abc=","Port":51821}}"#
        );
    }

    #[test]
    fn decode_round_trips_byte_for_byte() {
        for json in [
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":null}"#,
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":"fc00:0:0:1::","BackendType":"extension","BackendData":"a\u003cb","BackendV6Data":[1,2.50,{"x":null}]}"#,
        ] {
            assert_eq!(LeaseAttrs::from_json(json).unwrap().to_json(), json);
        }
    }

    #[test]
    fn decode_is_case_insensitive_and_ignores_unknown_keys() {
        let a = LeaseAttrs::from_json(
            r#"{"publicip":"10.0.0.2","PUBLICIPV6":"2001:db8::1","backendtype":"vxlan","backenddata":{"VNI":2},"Extra":[1]}"#,
        )
        .unwrap();
        assert_eq!(a.public_ip, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(a.public_ipv6, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(a.backend_type, "vxlan");
        assert_eq!(a.backend_data.as_deref(), Some(r#"{"VNI":2}"#));
    }

    #[test]
    fn decode_defaults_and_nulls() {
        let a =
            LeaseAttrs::from_json(r#"{"BackendData":null,"PublicIPv6":null,"BackendType":null}"#).unwrap();
        assert_eq!(a, LeaseAttrs::default());
    }

    #[test]
    fn decode_errors_name_the_json_and_problem() {
        let cases = [
            (r#"{"PublicIP":null}"#, "PublicIP null"),
            (r#"{"PublicIP":"1.2.3"}"#, "PublicIP \"1.2.3\""),
            (r#"{"PublicIP":"2001:db8::1"}"#, "not an IPv4"),
            (r#"{"PublicIP":12}"#, "expected a string"),
            (r#"{"PublicIP":"1.2.3.4","PublicIPv6":"nope"}"#, "PublicIPv6"),
            (r#"{"PublicIP":"1.2.3.4","BackendType":7}"#, "BackendType 7"),
            ("[]", "not a JSON object"),
            ("{", "not a JSON object"),
            ("null", "not a JSON object"),
        ];
        for (json, needle) in cases {
            let err = LeaseAttrs::from_json(json).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(&err, LeaseError::BadAttrs { json: j, .. } if j == json),
                "{text}"
            );
            assert!(text.contains(needle), "{json}: {text}");
        }
    }

    #[test]
    fn ipv6_text_follows_rfc5952() {
        for text in [
            "fc00:0:0:1::",
            "fd00:12:13::",
            "::ffff:1.2.3.4",
            "fc00::1",
            "::",
            "2001:db8::1:0:0:1",
        ] {
            let ip: Ipv6Addr = text.parse().unwrap();
            assert_eq!(ip.to_string(), text);
        }
        let ip: Ipv6Addr = "FC00:0000:0000:0001:0000:0000:0000:0000".parse().unwrap();
        assert_eq!(ip.to_string(), "fc00:0:0:1::");
    }

    #[test]
    fn vxlan_backend_data_round_trip() {
        let mac: MacAddr = "c6:d2:32:6f:8f:44".parse().unwrap();
        let data = vxlan_backend_data(1, &mac);
        assert_eq!(data, r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#);
        assert_eq!(parse_vxlan_backend_data(&data).unwrap(), (1, mac));
        assert_eq!(
            parse_vxlan_backend_data(r#"{"vni":7,"vtepmac":"C6-D2-32-6F-8F-44"}"#).unwrap(),
            (7, mac)
        );
        assert_eq!(
            parse_vxlan_backend_data(r#"{"VtepMAC":"c6:d2:32:6f:8f:44"}"#).unwrap(),
            (0, mac)
        );
    }

    #[test]
    fn vxlan_backend_data_errors() {
        for (json, needle) in [
            (r#"{"VNI":1}"#, "VtepMAC is missing"),
            (r#"{"VNI":1,"VtepMAC":"zz:d2:32:6f:8f:44"}"#, "VtepMAC"),
            (r#"{"VNI":-1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#, "VNI -1"),
            (r#"{"VNI":"1","VtepMAC":"c6:d2:32:6f:8f:44"}"#, "VNI \"1\""),
            ("[1]", "not a JSON object"),
        ] {
            let text = parse_vxlan_backend_data(json).unwrap_err().to_string();
            assert!(text.contains(needle), "{json}: {text}");
        }
    }
}
