//! End to end, extension backend (spec 9.6): real flanneld daemons in network namespaces with a
//! real etcd, each with the same four commands (a script that appends what it was given to the
//! node's own log, named by a variable of the daemon's environment). Checks the environment and
//! stdin of every command, that a node joining and leaving runs add and remove on the others, that
//! a failing add is retried until it succeeds, and that the lease carries the pre-startup output.

mod e2e_common;
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e_common::*;
use support::testbed::{ETCD_PREFIX, Testbed};

/// Appends `<op> NETWORK=.. SUBNET=.. IPV6SUBNET=.. PUBLIC_IP=.. PUBLIC_IPV6=.. stdin=<stdin>` to
/// `$EXT_LOG`; `pre` prints the node's data; `add` fails while `$EXT_FAIL` exists.
const SCRIPT: &str = r#"#!/bin/sh
op=$1
if [ "$op" = pre ]; then echo "data of $NODE_TAG <&>"; exit 0; fi
if [ "$op" = add ] && [ -e "$EXT_FAIL" ]; then echo "add refused for $SUBNET" >&2; exit 7; fi
input=$(cat)
echo "$op NETWORK=$NETWORK SUBNET=$SUBNET IPV6SUBNET=$IPV6SUBNET PUBLIC_IP=$PUBLIC_IP PUBLIC_IPV6=$PUBLIC_IPV6 arg2=$2 stdin=$input" >>"$EXT_LOG"
"#;

fn write_script(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("ext.sh");
    std::fs::write(&path, SCRIPT).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn config(script: &Path) -> String {
    let s = script.display();
    format!(
        r#"{{"Network": "{NETWORK}", "Backend": {{"Type": "extension",
            "PreStartupCommand": "{s} pre",
            "PostStartupCommand": "{s} post $NODE_TAG",
            "SubnetAddCommand": "{s} add ${{NODE_TAG}}",
            "SubnetRemoveCommand": "{s} remove"}}}}"#
    )
}

fn ext_log(tb: &Testbed, i: usize) -> PathBuf {
    tb.nodes[i].dir.join("ext.log")
}

fn fail_flag(tb: &Testbed, i: usize) -> PathBuf {
    tb.nodes[i].dir.join("fail-add")
}

fn log_lines(tb: &Testbed, i: usize) -> Vec<String> {
    std::fs::read_to_string(ext_log(tb, i))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn start_node(tb: &mut Testbed, i: usize) {
    let env = vec![
        ("EXT_LOG".to_string(), ext_log(tb, i).display().to_string()),
        ("EXT_FAIL".to_string(), fail_flag(tb, i).display().to_string()),
        ("NODE_TAG".to_string(), format!("node{}", i + 1)),
    ];
    tb.start_daemon_with_env(i, &env);
}

/// Waits until node `i`'s command log has a line equal to `line`.
fn wait_line(tb: &Testbed, i: usize, line: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if log_lines(tb, i).iter().any(|l| l == line) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{} never logged {line:?}; its command log:\n{}\ndaemon log:\n{}",
        tb.nodes[i].name,
        log_lines(tb, i).join("\n"),
        tb.nodes[i].log()
    );
}

/// The line the add (or remove) command on a node logs for `peer`.
fn peer_line(op: &str, arg2: &str, peer: &LeaseInfo, tag: &str) -> String {
    format!(
        "{op} NETWORK= SUBNET={} IPV6SUBNET=::/0 PUBLIC_IP={} PUBLIC_IPV6=<nil> arg2={arg2} stdin=data of {tag} <&>",
        peer.subnet(),
        peer.public_ip
    )
}

#[test]
fn extension_commands_get_their_environment_and_follow_nodes_joining_and_leaving() {
    const TEST: &str = "extension_commands";
    if !support::is_root() {
        return support::skip(TEST, "needs root (network namespaces)");
    }
    let Some(_serial) = serial_or_skip(TEST) else {
        return support::skip(TEST, "etcd or a network tool is missing");
    };
    let mut tb = testbed("e2eext", 3, "extension");
    let script = write_script(tb.path());
    tb.put_config(&config(&script));
    // node1's adds fail at first: they must be retried.
    std::fs::write(fail_flag(&tb, 0), "").unwrap();
    for i in 0..2 {
        start_node(&mut tb, i);
    }
    for i in 0..2 {
        tb.wait_subnet_env(i, STARTUP);
    }
    // node1 is not ready while its add fails (ready means every desired entry installed).
    wait_ready(&mut tb, 1, STARTUP);
    let one = lease_of(&tb, 0);
    let two = lease_of(&tb, 1);
    // The pre-startup output is the lease's BackendData (a JSON string, Go's escaping); the
    // published address is the interface's.
    assert_eq!(
        two.value,
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"extension","BackendData":"data of node2 \u003c\u0026\u003e"}}"#,
            tb.nodes[1].ip
        )
    );
    assert_eq!(
        std::fs::read_to_string(tb.nodes[1].subnet_file()).unwrap(),
        subnet_env_text(&two, 1500)
    );
    // Post-startup: NETWORK, own SUBNET and PUBLIC_IP, the v6 pair as upstream formats it unset;
    // `$NODE_TAG` in the command text expanded from the daemon's environment.
    wait_line(
        &tb,
        1,
        &format!(
            "post NETWORK={NETWORK} SUBNET={} IPV6SUBNET=::/0 PUBLIC_IP={} PUBLIC_IPV6=<nil> arg2=node2 stdin=",
            two.subnet(),
            tb.nodes[1].ip
        ),
        CONVERGE,
    );
    // node2 adds node1 with node1's data on stdin.
    wait_line(&tb, 1, &peer_line("add", "node2", &one, "node1"), CONVERGE);

    // node1's add for node2 fails and is retried until the flag goes.
    let deadline = Instant::now() + CONVERGE;
    while !tb.nodes[0].log().contains("add refused for") {
        assert!(
            Instant::now() < deadline,
            "no failed add on node1:\n{}",
            tb.nodes[0].log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !log_lines(&tb, 0).iter().any(|l| l.starts_with("add ")),
        "the failing add logged nothing"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(daemon_alive(&mut tb, 0), "a failing add is never fatal");
    assert!(
        !ready(&tb, 0),
        "node1 reports ready while its add for node2 keeps failing"
    );
    std::fs::remove_file(fail_flag(&tb, 0)).unwrap();
    wait_line(&tb, 0, &peer_line("add", "node1", &two, "node2"), CONVERGE);
    wait_ready(&mut tb, 0, STARTUP);
    println!("node1's add for node2 failed and was retried until it succeeded");

    // A node joining runs add on every other node.
    start_node(&mut tb, 2);
    tb.wait_subnet_env(2, STARTUP);
    wait_ready(&mut tb, 2, STARTUP);
    let three = lease_of(&tb, 2);
    wait_line(&tb, 0, &peer_line("add", "node1", &three, "node3"), CONVERGE);
    wait_line(&tb, 1, &peer_line("add", "node2", &three, "node3"), CONVERGE);

    // A node leaving (daemon stopped, lease deleted) runs remove with its data on the others.
    tb.stop_daemon(2, "TERM");
    tb.etcdctl(&["del", &format!("{ETCD_PREFIX}/subnets/{}", three.key)]);
    wait_line(&tb, 0, &peer_line("remove", "", &three, "node3"), CONVERGE);
    wait_line(&tb, 1, &peer_line("remove", "", &three, "node3"), CONVERGE);

    // Exactly one add per peer after success (no repeats in steady state), one remove.
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..2 {
        let lines = log_lines(&tb, i);
        let adds = lines.iter().filter(|l| l.starts_with("add ")).count();
        let removes = lines.iter().filter(|l| l.starts_with("remove ")).count();
        assert_eq!((adds, removes), (2, 1), "{}: {lines:#?}", tb.nodes[i].name);
    }
}
