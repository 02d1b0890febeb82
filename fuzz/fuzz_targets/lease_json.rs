//! Lease attributes JSON (etcd values): decoding never panics, and what decodes re-encodes to JSON
//! that decodes to the same attributes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(attrs) = flanneld::lease::LeaseAttrs::from_json(text) {
        let again = flanneld::lease::LeaseAttrs::from_json(&attrs.to_json()).expect("our own JSON");
        assert_eq!(again, attrs);
    }
    let _ = flanneld::lease::parse_vxlan_backend_data(text);
});
