//! mk-docker-opts end to end over real files (spec section 12, upstream's dist/mk_docker_opts_test.go
//! cases over dist/sample_subnet.env), and its route check against a real routing table in a
//! network namespace.

mod support;

use std::fs;
use std::io;
use std::path::Path;

use flanneld::tools::mk_docker_opts::{MkDockerOptsError, ip_route_show, run};
use support::netns::Netns;

/// Upstream's dist/sample_subnet.env.
const SAMPLE_SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n";

const DEFAULT_OUTPUT: &str = "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\n\
                              DOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
                              DOCKER_OPT_MTU=\"--mtu=1472\"\n\
                              DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n";

fn no_routes() -> io::Result<String> {
    Ok(String::new())
}

/// `mk-docker-opts.sh -f <dir>/subnet.env -d <out>`.
fn tool_args(dir: &Path, out: &Path) -> Vec<String> {
    let env_file = dir.join("subnet.env");
    [
        "mk-docker-opts.sh",
        "-f",
        env_file.to_str().unwrap(),
        "-d",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Runs the tool with `-f <dir>/subnet.env -d <dir>/docker_opts.env` plus `extra`, with an empty
/// environment and routing table; returns the result and the output file's content.
fn run_in(dir: &Path, extra: &[&str]) -> (Result<(), MkDockerOptsError>, Option<String>) {
    let out = dir.join("docker_opts.env");
    let mut args = tool_args(dir, &out);
    args.extend(extra.iter().map(|s| s.to_string()));
    let result = run(&args, &[], &no_routes);
    (result, fs::read_to_string(&out).ok())
}

fn sample_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("subnet.env"), SAMPLE_SUBNET_ENV).unwrap();
    dir
}

#[test]
fn upstream_cases_byte_for_byte() {
    let cases: &[(&[&str], &str)] = &[
        (&[], DEFAULT_OUTPUT),
        (
            &["-i"],
            "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\n",
        ),
        (
            &["-c"],
            "DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n",
        ),
        (
            &["-k", "CUSTOM_KEY"],
            "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\n\
             CUSTOM_KEY=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n",
        ),
        (
            &["-m"],
            "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\nDOCKER_OPTS=\" --bip=10.1.74.1/24 --mtu=1472\"\n",
        ),
    ];
    let dir = sample_dir();
    for (flags, want) in cases {
        let (result, got) = run_in(dir.path(), flags);
        result.unwrap_or_else(|e| panic!("{flags:?}: {e}"));
        assert_eq!(got.as_deref(), Some(*want), "{flags:?}");
    }
}

#[test]
fn the_output_file_is_replaced_not_appended() {
    let dir = sample_dir();
    fs::write(dir.path().join("docker_opts.env"), "OLD=\"x\"\n".repeat(50)).unwrap();
    let (result, got) = run_in(dir.path(), &[]);
    result.unwrap();
    assert_eq!(got.as_deref(), Some(DEFAULT_OUTPUT));
}

#[test]
fn the_env_file_written_by_flanneld_with_ipv6_lines_is_read() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("subnet.env"),
        "FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.5.1/24\nFLANNEL_IPV6_NETWORK=2001:db8:42::/56\n\
         FLANNEL_IPV6_SUBNET=2001:db8:42::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    )
    .unwrap();
    let (result, got) = run_in(dir.path(), &["-c"]);
    result.unwrap();
    assert_eq!(
        got.as_deref(),
        Some("DOCKER_OPTS=\" --bip=198.18.5.1/24 --ip-masq=false --mtu=1450\"\n")
    );
}

#[test]
fn environment_variables_join_the_options_and_the_file_wins() {
    let dir = sample_dir();
    let out = dir.path().join("docker_opts.env");
    let args = tool_args(dir.path(), &out);
    let env = vec![
        ("DOCKER_OPT_DEBUG".to_string(), "--debug".to_string()),
        ("DOCKER_OPTS".to_string(), "--log-level=warn".to_string()),
        ("FLANNEL_MTU".to_string(), "9000".to_string()),
        ("PATH".to_string(), "/usr/bin".to_string()),
    ];
    run(&args, &env, &no_routes).unwrap();
    assert_eq!(
        fs::read_to_string(&out).unwrap(),
        "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\n\
         DOCKER_OPT_DEBUG=\"--debug\"\n\
         DOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
         DOCKER_OPT_MTU=\"--mtu=1472\"\n\
         DOCKER_OPTS=\"--log-level=warn  --bip=10.1.74.1/24 --debug --ip-masq=true --mtu=1472\"\n"
    );
}

#[test]
fn a_missing_env_file_is_an_error_naming_it_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (result, got) = run_in(dir.path(), &[]);
    let err = result.unwrap_err();
    assert!(matches!(err, MkDockerOptsError::ReadEnvFile { .. }), "{err}");
    assert!(err.to_string().contains("subnet.env"), "{err}");
    assert_eq!(got, None);
}

#[test]
fn an_unparsable_env_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("subnet.env"),
        "FLANNEL_SUBNET=10.1.74.1/24\nthis is not an assignment\n",
    )
    .unwrap();
    let (result, got) = run_in(dir.path(), &[]);
    let err = result.unwrap_err();
    assert!(matches!(err, MkDockerOptsError::ParseEnvFile { .. }), "{err}");
    assert!(err.to_string().contains("subnet.env"), "{err}");
    assert_eq!(got, None);
}

#[test]
fn an_invalid_ipmasq_keeps_the_previous_output_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("subnet.env"),
        "FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_IPMASQ=maybe\n",
    )
    .unwrap();
    fs::write(dir.path().join("docker_opts.env"), "PREVIOUS=\"1\"\n").unwrap();
    let (result, got) = run_in(dir.path(), &[]);
    assert!(matches!(result, Err(MkDockerOptsError::InvalidIpMasq { .. })));
    assert_eq!(got.as_deref(), Some("PREVIOUS=\"1\"\n"));
}

#[test]
fn an_unwritable_output_is_an_error_naming_it() {
    let dir = sample_dir();
    let out = dir.path().join("no-such-dir/docker_opts.env");
    let args = tool_args(dir.path(), &out);
    let err = run(&args, &[], &no_routes).unwrap_err();
    assert!(matches!(err, MkDockerOptsError::WriteDockerEnv { .. }), "{err}");
    assert!(err.to_string().contains("no-such-dir/docker_opts.env"), "{err}");
}

#[test]
fn usage_errors_write_nothing() {
    let dir = sample_dir();
    for flags in [&["-h"][..], &["-x"], &["-k"]] {
        let (result, got) = run_in(dir.path(), flags);
        assert!(
            matches!(result, Err(MkDockerOptsError::Usage { .. })),
            "{flags:?}"
        );
        assert_eq!(got, None, "{flags:?}");
    }
}

#[test]
fn a_failing_route_listing_only_skips_the_check() {
    let dir = sample_dir();
    let out = dir.path().join("docker_opts.env");
    let args = tool_args(dir.path(), &out);
    let failing = || -> io::Result<String> { Err(io::Error::other("no ip binary")) };
    run(&args, &[], &failing).unwrap();
    assert_eq!(fs::read_to_string(&out).unwrap(), DEFAULT_OUTPUT);
}

/// The real `ip route show` inside a namespace: a route to the Docker bridge's subnet via a
/// gateway is reported (after the file is written, as upstream); without it the run succeeds.
#[test]
fn a_gateway_route_to_the_subnet_in_the_real_table_is_an_error() {
    let ns = Netns::new("mkdopts");
    ns.sh(
        "ip link add mdo0 type veth peer name mdo1 && ip link set mdo0 up && ip link set mdo1 up && \
         ip addr add 192.0.2.1/24 dev mdo0",
    );
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("subnet.env"),
        "FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.74.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    let out = dir.path().join("docker_opts.env");
    let args = tool_args(dir.path(), &out);

    let clean = {
        let args = args.clone();
        ns.run(move || run(&args, &[], &ip_route_show))
    };
    clean.expect("no conflicting route yet");

    ns.sh("ip route add 198.18.74.0/24 via 192.0.2.7 dev mdo0");
    let conflict = ns.run(move || run(&args, &[], &ip_route_show)).unwrap_err();
    match &conflict {
        MkDockerOptsError::RouteConflict { subnet, routes, .. } => {
            assert_eq!(subnet, "198.18.74.0/24");
            assert!(
                routes.contains("198.18.74.0/24 via 192.0.2.7 dev mdo0"),
                "{routes}"
            );
        }
        other => panic!("want a route conflict, got {other}"),
    }
    // The options are written before the check, as upstream.
    assert_eq!(
        fs::read_to_string(&out).unwrap(),
        "DOCKER_OPT_BIP=\"--bip=198.18.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
         DOCKER_OPT_MTU=\"--mtu=1450\"\nDOCKER_OPTS=\" --bip=198.18.74.1/24 --ip-masq=true --mtu=1450\"\n"
    );
}
