//! The host-install files of manifests/: the systemd unit, its example environment file (only real
//! flags' FLANNELD_* variables, every value valid) and the example net-conf.json.

use std::collections::{BTreeMap, BTreeSet};

use flanneld::cli::{self, CliOutcome, FLAGS};
use flanneld::netconf::NetConf;

use super::read;

#[test]
fn example_net_conf_is_valid() {
    let conf =
        NetConf::parse_and_check(&read("manifests/net-conf.json")).expect("valid example net-conf.json");
    assert_eq!(conf.backend_type, "vxlan");
    assert_eq!(
        conf.network.map(|n| n.to_string()).as_deref(),
        Some("10.244.0.0/16")
    );
}

/// `[Section]` -> key -> values (a key may repeat) of a systemd unit file.
fn unit_file(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut current = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_string());
            sections.entry(name.to_string()).or_default();
            continue;
        }
        let section = current
            .clone()
            .unwrap_or_else(|| panic!("{line:?} outside a section"));
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{line:?} is not key=value"));
        sections
            .entry(section)
            .or_default()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    sections
}

#[test]
fn systemd_unit_is_a_notify_service_reading_the_example_env_file() {
    let unit = unit_file(&read("manifests/flanneld.service"));
    assert_eq!(unit.keys().collect::<Vec<_>>(), ["Install", "Service", "Unit"]);
    let service = &unit["Service"];
    let one = |key: &str| -> &str {
        let values = service
            .get(key)
            .unwrap_or_else(|| panic!("Service.{key} missing"));
        assert_eq!(values.len(), 1, "Service.{key} once");
        values[0].as_str()
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("EnvironmentFile"), "-/etc/default/flanneld");
    assert_eq!(one("ExecStart"), "/usr/local/bin/flanneld");
    assert_eq!(one("Restart"), "always");
    assert_eq!(one("KillMode"), "mixed");
    assert_eq!(unit["Install"]["WantedBy"], ["multi-user.target"]);
    assert!(
        unit["Unit"]["After"]
            .iter()
            .any(|v| v.contains("network-online.target"))
    );
    assert!(
        unit["Unit"]["Before"]
            .iter()
            .any(|v| v.contains("docker.service"))
    );
}

/// (name, value, commented out) for every `FLANNELD_*` assignment of the example env file.
fn example_env() -> Vec<(String, String, bool)> {
    read("manifests/flanneld.env")
        .lines()
        .filter_map(|line| {
            let (body, commented) = match line.strip_prefix('#') {
                Some(rest) => (rest, true),
                None => (line, false),
            };
            let (name, value) = body.split_once('=')?;
            if !name.starts_with("FLANNELD_") {
                assert!(commented || line.trim().is_empty(), "unexpected line {line:?}");
                return None;
            }
            Some((name.to_string(), value.to_string(), commented))
        })
        .collect()
}

#[test]
fn example_env_file_names_every_flag_and_only_real_flags() {
    let by_env: BTreeMap<String, &cli::FlagSpec> = FLAGS.iter().map(|spec| (spec.env_name(), spec)).collect();
    let mut seen = BTreeSet::new();
    for (name, value, _) in example_env() {
        let spec = by_env
            .get(&name)
            .unwrap_or_else(|| panic!("{name} is not the variable of any flanneld flag"));
        assert!(seen.insert(name.clone()), "{name} appears twice");
        if !value.is_empty() {
            let mut flags = cli::Flags::default();
            spec.set(&mut flags, &value)
                .unwrap_or_else(|e| panic!("{name}={value:?} is not a valid -{} value: {e}", spec.name));
        }
    }
    // FLANNELD_VERSION has no effect (spec 1.3), so the example leaves it out.
    let missing: Vec<&String> = by_env
        .keys()
        .filter(|name| !seen.contains(*name) && *name != "FLANNELD_VERSION")
        .collect();
    assert!(missing.is_empty(), "flags without an example: {missing:?}");
}

#[test]
fn example_env_file_settings_apply_without_warnings() {
    let active: BTreeMap<String, String> = example_env()
        .into_iter()
        .filter(|(_, _, commented)| !commented)
        .map(|(name, value, _)| (name, value))
        .collect();
    let lookup = |name: &str| active.get(name).cloned();
    match cli::parse(&[], &lookup) {
        Ok(CliOutcome::Run { flags, env_warnings }) => {
            assert!(env_warnings.is_empty(), "{env_warnings:?}");
            assert!(flags.ip_masq);
            assert_eq!(flags.iface, ["eth0"]);
            assert_eq!(flags.healthz_port, 8081);
            assert!(flags.etcd_endpoints.starts_with("https://192.0.2.10:2379,"));
        }
        other => panic!("{other:?}"),
    }
}
