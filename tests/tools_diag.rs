//! `flanneld diag` run inside a test network namespace: reports subnet.env and the kernel view,
//! exit 0 when subnet.env is valid, 1 when it is missing.

mod support;

use support::netns::Netns;

fn diag(ns: &Netns, args: &[&str]) -> std::process::Output {
    let mut argv = vec![env!("CARGO_BIN_EXE_flanneld"), "diag"];
    argv.extend_from_slice(args);
    ns.exec(&argv)
}

#[test]
fn diag_reports_subnet_env_and_kernel_state() {
    if !support::is_root() {
        support::skip(&support::current_test(), "needs root for a network namespace");
        return;
    }
    let ns = Netns::new("diag");
    ns.sh(
        "ip link add eth0 type veth peer name eth1 && ip link set eth0 up && ip addr add 192.0.2.1/24 dev eth0 && \
         ip link add flannel.1 type vxlan id 1 dev eth0 local 192.0.2.1 nolearning dstport 8472 && ip link set flannel.1 up && \
         ip route add 198.18.2.0/24 via 198.18.2.0 dev flannel.1 onlink proto boot",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("subnet.env");
    std::fs::write(
        &file,
        "FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    let out = diag(&ns, &["-subnet-file", file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("FLANNEL_SUBNET=198.18.1.1/24"), "{stdout}");
    assert!(stdout.contains("flannel.1 (vxlan): up mtu 1450"), "{stdout}");
    assert!(
        stdout.contains("routes inside 198.18.0.0/16 (protocol 70 or boot, as flanneld installs them): 1"),
        "{stdout}"
    );

    let missing = diag(
        &ns,
        &["-subnet-file", dir.path().join("nope.env").to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&missing.stdout);
    assert_eq!(missing.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("missing or unreadable"), "{stdout}");

    let unreachable = diag(
        &ns,
        &["-subnet-file", file.to_str().unwrap(), "-healthz", "127.0.0.1:1"],
    );
    let stdout = String::from_utf8_lossy(&unreachable.stdout);
    assert_eq!(unreachable.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("not reachable"), "{stdout}");
}
