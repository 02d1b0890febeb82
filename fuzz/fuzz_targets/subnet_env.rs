//! subnet.env as read back at restart: never panics.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(vars) = flanneld::subnet::env_file::parse_env(text) {
        for value in vars.values() {
            let _ = flanneld::subnet::env_file::parse_cidr_list(value);
        }
    }
});
