//! The extension backend's pure parts against spec 9.6 and Go's `os.Expand`, the command runner
//! against real processes (`sh`, `cat`, `printf` are only run as the commands under test), and the
//! command table's "installed = what succeeded" record.

use std::time::{Duration, Instant};

use super::command::{self, CommandError, argv, expand};
use super::*;
use crate::backend::testutil::{kernel_with_eth0, lease_of, netconf, own_lease};
use crate::netconf::BackendConfig;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name: &str| map.get(name).cloned()
}

#[test]
fn expansion_follows_go_os_expand() {
    let env = env_of(&[
        ("SUBNET", "198.18.2.0/24"),
        ("A", "x y"),
        ("_B1", "b"),
        ("1", "one"),
    ]);
    let cases = [
        ("$SUBNET", "198.18.2.0/24"),
        ("${SUBNET}", "198.18.2.0/24"),
        ("pre-${SUBNET}-post", "pre-198.18.2.0/24-post"),
        ("$SUBNET.x", "198.18.2.0/24.x"),
        ("$_B1$A", "bx y"),
        ("$UNSET", ""),
        ("a$UNSET-b", "a-b"),
        ("cost$", "cost$"),       // a trailing $ stays
        ("a$-b", "ab"),           // $- is a special one-character name (unset)
        ("$1x", "onex"),          // so is $1
        ("${}x", "x"),            // bad syntax: ${} eaten
        ("a${SUBNET", "aSUBNET"), // unterminated ${: only "${" is eaten
        ("$%", "$%"),             // $ before a non-name character stays
        ("$$", ""),               // $$ is a special name (unset)
        ("plain", "plain"),
    ];
    for (input, want) in cases {
        assert_eq!(expand(input, &env), want, "expanding {input:?}");
    }
}

#[test]
fn commands_are_split_on_whitespace_before_expansion() {
    let extra: BTreeMap<String, String> = [("SUBNET".to_string(), "198.18.2.0/24".to_string())].into();
    let env = env_of(&[("SPACED", "two words"), ("SUBNET", "from-process-env")]);
    assert_eq!(
        argv(
            "  /bin/route-add\t$SUBNET   via ${PUBLIC_IP}x $SPACED ",
            &extra,
            &env
        ),
        vec!["/bin/route-add", "198.18.2.0/24", "via", "x", "two words"],
        "extra variables win over the process environment; an expanded value is one word"
    );
    assert!(argv("   ", &extra, &env).is_empty());
}

fn peer(n: u16, data: &str) -> ExtensionPeer {
    let l = lease_of(n, "extension", None);
    ExtensionPeer {
        subnet: l.subnet,
        ipv6_subnet: None,
        public_ip: l.attrs.public_ip,
        public_ipv6: None,
        backend_data: data.into(),
    }
}

fn pairs(map: &BTreeMap<String, String>) -> Vec<(&str, &str)> {
    map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[test]
fn subnet_commands_get_subnet_public_ip_and_the_v6_pair() {
    let env = subnet_env(&peer(2, ""));
    assert_eq!(
        pairs(&env),
        vec![
            ("IPV6SUBNET", "::/0"),
            ("PUBLIC_IP", "192.0.2.2"),
            ("PUBLIC_IPV6", "<nil>"),
            ("SUBNET", "198.18.2.0/24"),
        ]
    );
    let mut dual = peer(2, "");
    dual.ipv6_subnet = Some("2001:db8:0:2::/64".parse().unwrap());
    dual.public_ipv6 = Some("2001:db8:ffff::2".parse().unwrap());
    let env = subnet_env(&dual);
    assert_eq!(env["IPV6SUBNET"], "2001:db8:0:2::/64");
    assert_eq!(env["PUBLIC_IPV6"], "2001:db8:ffff::2");
    // A v6-only lease: SUBNET is Go's zero IPv4 network.
    dual.subnet = None;
    assert_eq!(subnet_env(&dual)["SUBNET"], "0.0.0.0/0");
}

#[test]
fn post_startup_command_gets_network_subnet_and_public_addresses() {
    let mut own = own_lease("extension");
    own.attrs.public_ip = "192.0.2.1".parse().unwrap();
    let env = post_startup_env(Some("198.18.0.0/15".parse().unwrap()), &own);
    assert_eq!(
        pairs(&env),
        vec![
            ("IPV6SUBNET", "::/0"),
            ("NETWORK", "198.18.0.0/15"),
            ("PUBLIC_IP", "192.0.2.1"),
            ("PUBLIC_IPV6", "<nil>"),
            ("SUBNET", "198.18.1.0/24"),
        ]
    );
}

#[test]
fn backend_data_is_a_json_string_or_nothing() {
    assert_eq!(decode_backend_data(None).unwrap(), "");
    assert_eq!(decode_backend_data(Some(r#""a\u003cb\n""#)).unwrap(), "a<b\n");
    let err = decode_backend_data(Some(r#"{"VNI":1}"#)).unwrap_err();
    assert!(
        err.contains(r#"{"VNI":1}"#) && err.contains("not a JSON string"),
        "{err}"
    );
}

fn backend(cfg: ExtensionConfig) -> ExtensionBackend {
    let (_, ext) = kernel_with_eth0();
    ExtensionBackend::new(&cfg, &ext, &netconf(BackendConfig::Extension(cfg.clone())))
}

#[tokio::test]
async fn pre_startup_output_becomes_backend_data_and_the_interface_address_is_published() {
    let (k, mut ext) = kernel_with_eth0();
    ext.ext_addr = Some("203.0.113.9".parse().unwrap()); // --public-ip: ignored by upstream here
    let cfg = ExtensionConfig {
        pre_startup_command: "printf %s\\n \"<key>&\"".into(),
        ..ExtensionConfig::default()
    };
    let mut b = ExtensionBackend::new(&cfg, &ext, &netconf(BackendConfig::Extension(cfg.clone())));
    let attrs = b.prepare(&*k).await.unwrap();
    assert_eq!(
        attrs.to_json(),
        r#"{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"extension","BackendData":"\"\u003ckey\u003e\u0026\""}"#,
        "no shell: the quotes are part of the words; Go's JSON escaping"
    );
    let mut none = backend(ExtensionConfig::default());
    let attrs = none.prepare(&*k).await.unwrap();
    assert_eq!(
        attrs.to_json(),
        r#"{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"extension"}"#
    );
    assert_eq!(none.configure(&*k, &own_lease("extension")).await.unwrap(), 1500);
}

/// Writes an executable shell script `name` into `dir`; returns its path as text.
fn script(dir: &tempfile::TempDir, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn failing_startup_commands_are_fatal_and_say_which_command() {
    let dir = tempfile::tempdir().unwrap();
    let (k, _) = kernel_with_eth0();
    let mut b = backend(ExtensionConfig {
        pre_startup_command: script(&dir, "pre", "echo no key; exit 3"),
        ..ExtensionConfig::default()
    });
    let err = b.prepare(&*k).await.unwrap_err().to_string();
    assert!(
        err.contains("pre-startup") && err.contains("exit status: 3") && err.contains("no key"),
        "{err}"
    );
    let mut b = backend(ExtensionConfig {
        post_startup_command: "/nonexistent/post-startup".into(),
        ..ExtensionConfig::default()
    });
    let err = b
        .configure(&*k, &own_lease("extension"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("post-startup") && err.contains("/nonexistent/post-startup"),
        "{err}"
    );
}

#[test]
fn entries_are_one_peer_per_extension_lease() {
    let b = backend(ExtensionConfig::default());
    let mut l = lease_of(2, "extension", Some(r#""data for 2""#.into()));
    l.attrs.public_ipv6 = Some("2001:db8:ffff::2".parse().unwrap());
    let got = b.entries_for(&l, &Underlay::default());
    let mut want = peer(2, "data for 2");
    want.public_ipv6 = l.attrs.public_ipv6;
    assert_eq!(got, vec![Entry::Peer(PeerEntry::Extension(want))]);
    assert!(
        b.entries_for(&lease_of(3, "vxlan", None), &Underlay::default())
            .is_empty()
    );
    let bad = lease_of(4, "extension", Some("{}".into()));
    assert!(b.entries_for(&bad, &Underlay::default()).is_empty());
    assert_eq!(b.ownership(&own_lease("extension")), Ownership::default());
}

#[tokio::test]
async fn runs_without_a_shell_with_combined_trimmed_output_and_the_variables_in_its_env() {
    let dir = tempfile::tempdir().unwrap();
    let extra: BTreeMap<String, String> = [("SUBNET".to_string(), "198.18.2.0/24".to_string())].into();
    let s = script(
        &dir,
        "both",
        "echo out; echo err >&2; echo \"env $SUBNET arg $1 $2\"",
    );
    let out = command::run(
        &format!(" {s}  ${{SUBNET}} ';'  "),
        &extra,
        "",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(out.output, "out\nerr\nenv 198.18.2.0/24 arg 198.18.2.0/24 ';'");
    let err = command::run("", &extra, "", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Empty { .. }), "{err}");
    let err = command::run("$NOPE_UNSET_VAR arg", &extra, "", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Empty { .. }), "{err}");
}

#[tokio::test]
async fn stdin_of_any_size_reaches_the_command_without_deadlock() {
    // 4 MiB in and (echoed) out: far beyond a pipe's buffer in both directions at once.
    let big: String = "0123456789abcdef".repeat(256 * 1024);
    let out = command::run("cat", &BTreeMap::new(), &big, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(out.truncated, "more than the cap was printed");
    assert_eq!(out.output.len(), command::OUTPUT_CAP);
    assert!(big.starts_with(&out.output));
    let counted = command::run("wc -c", &BTreeMap::new(), &big, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(counted.output, (big.len() + 1).to_string(), "text plus a newline");
    // A command that never reads stdin still finishes.
    let quiet = command::run("true", &BTreeMap::new(), &big, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(quiet.output, "");
}

#[tokio::test]
async fn a_hanging_command_and_its_children_are_killed_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let hang = script(&dir, "hang", "sleep 30 & sleep 30");
    let started = Instant::now();
    let err = command::run(&hang, &BTreeMap::new(), "", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("did not finish within"), "{err}");
    // Not an assertion on speed: only that the background child did not keep us for 30 s.
    assert!(started.elapsed() < Duration::from_secs(25));
}

#[tokio::test]
async fn the_table_records_what_succeeded_and_runs_remove_with_the_recorded_peer() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let fail = dir.path().join("fail");
    let body = format!(
        "test ! -e {fail} && read d && echo \"$1 $SUBNET $PUBLIC_IP $d\" >>{log}",
        fail = fail.display(),
        log = log.display()
    );
    let s = script(&dir, "cmd", &body);
    let table = CommandTable::new(
        &format!("{s} add"),
        &format!("{s} remove"),
        Duration::from_secs(10),
    );
    let two = peer(2, "d2");
    std::fs::write(&fail, "").unwrap();
    let results = table
        .apply(&[PeerOp::Replace(PeerEntry::Extension(two.clone()))])
        .await;
    assert!(
        results[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("subnet add command failed")
    );
    assert!(
        table.installed().await.unwrap().is_empty(),
        "a failed add is not installed"
    );
    std::fs::remove_file(&fail).unwrap();
    let results = table
        .apply(&[PeerOp::Replace(PeerEntry::Extension(two.clone()))])
        .await;
    assert!(results[0].is_ok());
    assert_eq!(
        table.installed().await.unwrap(),
        vec![PeerEntry::Extension(two.clone())]
    );
    let results = table.apply(&[PeerOp::Delete(PeerEntry::Extension(two))]).await;
    assert!(results[0].is_ok());
    assert!(table.installed().await.unwrap().is_empty());
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "add 198.18.2.0/24 192.0.2.2 d2\nremove 198.18.2.0/24 192.0.2.2 d2\n"
    );
    // Without commands, peers are only recorded.
    let bare = CommandTable::new("", "", Duration::from_secs(1));
    assert!(
        bare.apply(&[PeerOp::Replace(PeerEntry::Extension(peer(3, "")))])
            .await[0]
            .is_ok()
    );
    assert_eq!(bare.installed().await.unwrap().len(), 1);
}
