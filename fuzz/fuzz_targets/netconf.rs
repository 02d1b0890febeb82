//! net-conf.json (etcd `<prefix>/config` or --net-config-path): parse and check never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = flanneld::netconf::NetConf::parse_and_check(text);
    }
});
