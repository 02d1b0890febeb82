//! subnet.env on a real filesystem: exact content, atomic write with upstream's modes, read-back.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use flanneld::lease::{Lease, LeaseAttrs};
use flanneld::netconf::NetConf;
use flanneld::subnet::env_file::{PreviousSubnets, read_previous, render, write_atomic};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn dual_lease() -> Lease {
    Lease {
        enable_ipv4: true,
        enable_ipv6: true,
        subnet: Some("10.42.7.0/24".parse().unwrap()),
        ipv6_subnet: Some("fd00:10:244:7::/64".parse().unwrap()),
        attrs: LeaseAttrs::default(),
        expiration: None,
    }
}

/// Everything that depends on the process umask lives in this one test (the umask is process-wide).
#[test]
fn write_modes_and_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let old_umask = unsafe { libc::umask(0o077) };

    // Fresh file under umask 077: exactly 0644, parents created.
    let path = tmp.path().join("run/flannel/subnet.env");
    let conf = NetConf::parse(
        r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let text = render(&conf, &dual_lease(), 1450, true);
    write_atomic(&path, text.as_bytes()).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), text);
    assert_eq!(mode(&path), 0o644);
    assert_eq!(dir_entries(path.parent().unwrap()), vec!["subnet.env"]);

    // An existing 0600 file keeps its mode on rewrite.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    write_atomic(&path, b"FLANNEL_MTU=1400\nFLANNEL_IPMASQ=false\n").unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "FLANNEL_MTU=1400\nFLANNEL_IPMASQ=false\n"
    );
    assert_eq!(dir_entries(path.parent().unwrap()), vec!["subnet.env"]);

    unsafe { libc::umask(old_umask) };

    // Read back what render wrote.
    write_atomic(&path, text.as_bytes()).unwrap();
    let prev = read_previous(&path);
    assert_eq!(
        prev,
        PreviousSubnets {
            network: Some("10.42.0.0/16".parse().unwrap()),
            subnet: Some("10.42.7.0/24".parse().unwrap()),
            ipv6_network: Some("fd00:10:244::/56".parse().unwrap()),
            ipv6_subnet: Some("fd00:10:244:7::/64".parse().unwrap()),
        }
    );
}

#[test]
fn read_back_tolerance() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("subnet.env");
    assert_eq!(read_previous(&path), PreviousSubnets::default());

    fs::write(
        &path,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.0/24,not-a-cidr,10.244.2.0/24\n",
    )
    .unwrap();
    let prev = read_previous(&path);
    assert_eq!(prev.network, Some("10.244.0.0/16".parse().unwrap()));
    assert_eq!(prev.subnet, None);

    fs::write(&path, "FLANNEL_SUBNET=not-a-cidr\n").unwrap();
    assert_eq!(read_previous(&path), PreviousSubnets::default());

    fs::write(&path, "FLANNEL_SUBNET=not-a-cidr,10.244.3.1/24\n").unwrap();
    assert_eq!(
        read_previous(&path).subnet,
        Some("10.244.3.0/24".parse().unwrap())
    );

    fs::write(
        &path,
        "# written by hand\nexport FLANNEL_SUBNET=\"10.5.72.1/24\"\nFLANNEL_IPV6_SUBNET='fd00::1/64' # v6\n",
    )
    .unwrap();
    let prev = read_previous(&path);
    assert_eq!(prev.subnet, Some("10.5.72.0/24".parse().unwrap()));
    assert_eq!(prev.ipv6_subnet, Some("fd00::/64".parse().unwrap()));

    // Wrong family for the key: ignored.
    fs::write(
        &path,
        "FLANNEL_SUBNET=fd00::1/64\nFLANNEL_IPV6_SUBNET=10.0.0.1/24\n",
    )
    .unwrap();
    assert_eq!(read_previous(&path), PreviousSubnets::default());

    // A line godotenv cannot parse makes the whole file unusable, as upstream.
    fs::write(&path, "FLANNEL_SUBNET=10.5.72.1/24\ngarbage\n").unwrap();
    assert_eq!(read_previous(&path), PreviousSubnets::default());

    // A directory where the file should be: no panic, nothing found.
    assert_eq!(read_previous(tmp.path()), PreviousSubnets::default());
}

#[test]
fn failed_writes_name_the_path_and_keep_the_old_file() {
    let tmp = tempfile::tempdir().unwrap();

    // Parent is a regular file: the directory cannot be created.
    let blocker = tmp.path().join("blocker");
    fs::write(&blocker, "x").unwrap();
    let err = write_atomic(&blocker.join("subnet.env"), b"A=1\n").unwrap_err();
    assert!(err.to_string().contains("blocker"), "{err}");

    // Target is a directory: the rename fails, the temp file is removed, the directory is untouched.
    let target = tmp.path().join("subnet.env");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("keep"), "old").unwrap();
    let err = write_atomic(&target, b"A=1\n").unwrap_err();
    assert!(err.to_string().contains("subnet.env"), "{err}");
    assert_eq!(dir_entries(tmp.path()), vec!["blocker", "subnet.env"]);
    assert_eq!(fs::read_to_string(target.join("keep")).unwrap(), "old");

    // No file name at all.
    assert!(write_atomic(Path::new("/"), b"A=1\n").is_err());
}
