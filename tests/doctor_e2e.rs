mod e2e_common;
mod support;

use e2e_common::*;
use support::testbed::{ETCD_IP, Testbed};

fn doctor(tb: &Testbed, i: usize, extra: &[&str]) -> (i32, String) {
    let node = &tb.nodes[i];
    let mut argv: Vec<String> = vec![
        env!("CARGO_BIN_EXE_flanneld").into(),
        "doctor".into(),
        format!("--etcd-endpoints=http://{ETCD_IP}:2379"),
        format!("--subnet-file={}", node.subnet_file().display()),
    ];
    argv.extend(node.args.iter().cloned());
    argv.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = node.ns.exec(&refs);
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn scratch_doctor() {
    let Some(_serial) = serial_or_skip("scratch") else {
        return;
    };
    let mut tb = testbed("scr", 3, "vxlan");
    tb.add_ipv6_underlay();
    tb.put_config(r#"{"Network": "198.18.0.0/16", "EnableIPv6": true, "IPv6Network": "2001:db8:1::/48", "Backend": {"Type": "vxlan"}}"#);
    start(&mut tb, &[0, 1, 2]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let t = std::time::Instant::now();
    let (code, out) = doctor(&tb, 0, &[]);
    println!("{code} {:?}\n{out}", t.elapsed());
    let (code, out) = doctor(&tb, 1, &["--json"]);
    println!("{code}\n{out}");
}
