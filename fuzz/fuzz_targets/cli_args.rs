//! Command line and FLANNELD_* environment: NUL-separated arguments, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (args, env) = text.split_once('\u{1}').unwrap_or((text, ""));
    let args: Vec<String> = args.split('\0').map(str::to_string).collect();
    let env: Vec<(String, String)> = env
        .split('\0')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let _ = flanneld::cli::parse(&args, &lookup);
});
