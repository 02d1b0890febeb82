//! Subnet keys (etcd key suffixes): parsing never panics; a parsed key prints as a key that parses
//! to the same value.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(key) = flanneld::lease::SubnetKey::parse(text) {
        let again = flanneld::lease::SubnetKey::parse(&key.to_string()).expect("our own key");
        assert_eq!(again, key);
    }
});
