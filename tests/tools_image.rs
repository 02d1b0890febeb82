//! The container image, checked without a Docker engine (spec section 12): the Dockerfile is parsed
//! and must create every path the Kubernetes manifest runs; its final-stage steps are replayed into
//! a temp directory with the real flanneld binary, which must run from the image's paths; the
//! iptables backend selector it installs is run against fake backends.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FLANNELD: &str = env!("CARGO_BIN_EXE_flanneld");

fn repo_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// One Dockerfile instruction: upper-cased keyword and its argument text (continuations joined).
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

/// The instructions of each stage (a stage starts at FROM), in order.
fn stages(dockerfile: &str) -> Vec<Vec<Instruction>> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(current.is_empty(), "the Dockerfile ends inside a continued line");
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instruction = Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_string(),
        };
        if instruction.keyword == "FROM" {
            stages.push(Vec::new());
        }
        match stages.last_mut() {
            Some(stage) => stage.push(instruction),
            // ARGs before the first FROM (base image names).
            None => assert_eq!(instruction.keyword, "ARG", "{instruction:?} before FROM"),
        }
    }
    stages
}

/// `ln -s[f] TARGET LINK` pairs of a RUN command (commands joined with `&&`).
fn symlinks_of(run: &str) -> Vec<(String, String)> {
    run.split("&&")
        .filter_map(|command| {
            let words: Vec<&str> = command.split_whitespace().collect();
            match words.as_slice() {
                ["ln", "-s" | "-sf", target, link] => Some((target.to_string(), link.to_string())),
                _ => None,
            }
        })
        .collect()
}

/// What the final stage creates: destination path -> how (`copy:<source>` or `link:<target>`).
fn final_stage_paths() -> BTreeMap<String, String> {
    let stages = stages(&repo_file("Dockerfile"));
    let last = stages.last().expect("a final stage");
    let mut created = BTreeMap::new();
    for instruction in last {
        match instruction.keyword.as_str() {
            "COPY" => {
                let words: Vec<&str> = instruction
                    .args
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let [source, dest] = words.as_slice() else {
                    panic!("COPY with one source and one destination: {instruction:?}")
                };
                created.insert(dest.to_string(), format!("copy:{source}"));
            }
            "RUN" => {
                for (target, link) in symlinks_of(&instruction.args) {
                    created.insert(link, format!("link:{target}"));
                }
            }
            _ => {}
        }
    }
    created
}

/// Commands the manifest runs from our image (containers and init containers).
fn manifest_commands() -> Vec<(String, Vec<String>)> {
    let text = repo_file("manifests/kube-flannel.yml");
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let doc: serde_json::Value =
            serde_json::to_value(<serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc).unwrap())
                .unwrap();
        let pod = &doc["spec"]["template"]["spec"];
        for list in ["initContainers", "containers"] {
            for container in pod[list].as_array().into_iter().flatten() {
                let image = container["image"].as_str().unwrap_or("");
                if !image.starts_with("ghcr.io/flanneld-rs/flanneld:") {
                    continue;
                }
                let strings = |v: &serde_json::Value| -> Vec<String> {
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .map(|s| s.as_str().expect("string").to_string())
                        .collect()
                };
                let command = strings(&container["command"]);
                let mut argv = command.clone();
                argv.extend(strings(&container["args"]));
                out.push((command.first().cloned().unwrap_or_default(), argv));
            }
        }
    }
    out
}

#[test]
fn the_dockerfile_has_a_rust_builder_and_a_slim_debian_final_stage() {
    let text = repo_file("Dockerfile");
    let stages = stages(&text);
    assert_eq!(stages.len(), 2, "builder + final");
    assert!(text.contains("ARG RUST_IMAGE=rust:1-bookworm"));
    assert!(text.contains("ARG BASE_IMAGE=debian:bookworm-slim"));
    assert_eq!(stages[0][0].args, "${RUST_IMAGE} AS builder");
    assert_eq!(stages[1][0].args, "${BASE_IMAGE}");

    let builder_runs: String = stages[0]
        .iter()
        .filter(|i| i.keyword == "RUN")
        .map(|i| i.args.clone())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(builder_runs.contains("protobuf-compiler libprotobuf-dev"));
    assert!(builder_runs.contains("cargo build --release --locked --bin flanneld"));
    assert!(builder_runs.contains("install -D -m 0755 target/release/flanneld /out/flanneld"));

    let final_runs: String = stages[1]
        .iter()
        .filter(|i| i.keyword == "RUN")
        .map(|i| i.args.clone())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        final_runs.contains("install -y --no-install-recommends iptables nftables iproute2 ca-certificates")
    );
    let entrypoint: Vec<&Instruction> = stages[1].iter().filter(|i| i.keyword == "ENTRYPOINT").collect();
    assert_eq!(entrypoint.len(), 1);
    assert_eq!(entrypoint[0].args, r#"["/opt/bin/flanneld"]"#);
}

#[test]
fn the_image_creates_every_path_the_manifest_and_the_entrypoint_use() {
    let created = final_stage_paths();
    assert_eq!(created["/opt/bin/flanneld"], "copy:/out/flanneld");
    assert_eq!(created["/opt/bin/install-conf"], "link:flanneld");
    assert_eq!(created["/opt/bin/mk-docker-opts.sh"], "link:flanneld");
    assert_eq!(
        created["/usr/sbin/iptables-wrapper"],
        "copy:manifests/image/iptables-wrapper.sh"
    );
    for tool in [
        "iptables",
        "iptables-save",
        "iptables-restore",
        "ip6tables",
        "ip6tables-save",
        "ip6tables-restore",
    ] {
        assert_eq!(
            created[&format!("/usr/sbin/{tool}")],
            "link:iptables-wrapper",
            "{tool}"
        );
    }

    let commands = manifest_commands();
    assert_eq!(commands.len(), 2, "install-cni and kube-flannel run our image");
    for (command, _) in &commands {
        assert!(
            created.contains_key(command),
            "{command} is not created by the Dockerfile"
        );
    }
    // Every link points at something the image has (relative targets live beside the link).
    for (path, how) in &created {
        if let Some(target) = how.strip_prefix("link:") {
            let dir = Path::new(path).parent().expect("absolute path");
            let resolved = dir.join(target).to_string_lossy().into_owned();
            assert!(
                created.contains_key(&resolved),
                "{path} -> {target}: {resolved} is not in the image"
            );
        }
    }
    // Files copied from the build context exist and are not excluded by .dockerignore.
    let ignored = repo_file(".dockerignore");
    for source in created.values().filter_map(|how| how.strip_prefix("copy:")) {
        if source.starts_with("/out/") {
            continue;
        }
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(source).is_file(),
            "{source}"
        );
        let top = source.split('/').next().unwrap_or(source);
        assert!(
            !ignored.lines().any(|l| l.trim_end_matches('/') == top),
            "{source} is dockerignored"
        );
    }
    for needed in ["src", "Cargo.toml", "Cargo.lock", "manifests"] {
        assert!(
            !ignored.lines().any(|l| l.trim_end_matches('/') == needed),
            "{needed} is dockerignored"
        );
    }
}

/// A temp directory laid out like the final stage: the real binary at opt/bin/flanneld, the
/// Dockerfile's links under opt/bin replayed (the /usr/sbin ones are covered by the wrapper test).
fn image_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("opt/bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy(FLANNELD, bin.join("flanneld")).unwrap();
    for (path, how) in final_stage_paths() {
        if let (Some(target), Some(name)) = (how.strip_prefix("link:"), path.strip_prefix("/opt/bin/")) {
            symlink(target, bin.join(name)).unwrap();
        }
    }
    root
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env_clear()
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()))
}

#[test]
fn the_binary_runs_from_the_image_path() {
    let root = image_root();
    let out = run(&root.path().join("opt/bin/flanneld"), &["--version"]);
    assert!(out.status.success(), "{out:?}");
    let version = String::from_utf8_lossy(&out.stderr);
    assert_eq!(version.trim(), flanneld::cli::VERSION);
}

#[test]
fn install_conf_from_the_image_path_installs_the_manifests_cni_config() {
    let root = image_root();
    let tool = root.path().join("opt/bin/install-conf");
    let (_, argv) = manifest_commands()
        .into_iter()
        .find(|(command, _)| command == "/opt/bin/install-conf")
        .expect("the install-cni init container");
    let cni_conf = "{\"name\": \"cbr0\"}\n";
    let rooted = |p: &str| root.path().join(p.trim_start_matches('/'));
    let src = rooted(&argv[1]);
    let dest = rooted(&argv[2]);
    fs::create_dir_all(src.parent().unwrap()).unwrap();
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    fs::write(&src, cni_conf).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o644)).unwrap();

    let out = run(&tool, &[src.to_str().unwrap(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::read_to_string(&dest).unwrap(), cni_conf);

    let out = run(&tool, &[src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"), "{out:?}");
}

#[test]
fn mk_docker_opts_from_the_image_path_writes_docker_options() {
    let root = image_root();
    let tool = root.path().join("opt/bin/mk-docker-opts.sh");
    let env = root.path().join("subnet.env");
    fs::write(
        &env,
        "FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    let out_file = root.path().join("docker_opts.env");
    // Only the combined line: the route check then reads the host table, which is harmless.
    let out = run(
        &tool,
        &[
            "-c",
            "-f",
            env.to_str().unwrap(),
            "-d",
            out_file.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success() || String::from_utf8_lossy(&out.stderr).contains("routing table"),
        "{out:?}"
    );
    assert_eq!(
        fs::read_to_string(&out_file).unwrap(),
        "DOCKER_OPTS=\" --bip=198.18.74.1/24 --ip-masq=true --mtu=1472\"\n"
    );
}

/// A fake `xtables-<mode>-multi` that prints `save_output` for `*-save` applets and otherwise
/// records the applet and arguments it ran with.
fn fake_backend(dir: &Path, mode: &str, save_output: &str) {
    let path = dir.join(format!("xtables-{mode}-multi"));
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in\n  *-save) printf '%s' '{save_output}' ;;\n  *) echo \"{mode} $*\" ;;\nesac\n"
    );
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Lays out sbin/ as the image does, runs `sbin/<called>` and returns (stdout, link targets).
fn run_wrapper(legacy_save: &str, nft_save: &str, called: &str) -> (String, BTreeMap<String, PathBuf>) {
    let root = tempfile::tempdir().unwrap();
    let sbin = root.path().join("sbin");
    fs::create_dir(&sbin).unwrap();
    fs::write(
        sbin.join("iptables-wrapper"),
        repo_file("manifests/image/iptables-wrapper.sh"),
    )
    .unwrap();
    fs::set_permissions(sbin.join("iptables-wrapper"), fs::Permissions::from_mode(0o755)).unwrap();
    let links = [
        "iptables",
        "iptables-save",
        "iptables-restore",
        "ip6tables",
        "ip6tables-save",
        "ip6tables-restore",
    ];
    for link in links {
        symlink("iptables-wrapper", sbin.join(link)).unwrap();
    }
    fake_backend(&sbin, "legacy", legacy_save);
    fake_backend(&sbin, "nft", nft_save);

    let out = Command::new(sbin.join(called))
        .args(["-t", "nat", "-S"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("running the wrapper");
    assert!(out.status.success(), "{out:?}");
    let targets = links
        .iter()
        .map(|link| (link.to_string(), fs::read_link(sbin.join(link)).unwrap()))
        .collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), targets)
}

#[test]
fn iptables_wrapper_follows_the_kubelet_hint_then_the_rule_count() {
    let hint = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n";
    let rules = "*nat\n-A POSTROUTING -j KUBE-POSTROUTING\n-A KUBE-POSTROUTING -j RETURN\nCOMMIT\n";
    let cases = [
        // (legacy save output, nft save output, chosen backend)
        (hint, rules, "legacy"),
        (rules, hint, "nft"),
        (rules, "", "legacy"),
        ("", rules, "nft"),
        ("", "", "nft"),
    ];
    for (legacy, nft, want) in cases {
        let (stdout, targets) = run_wrapper(legacy, nft, "iptables");
        assert_eq!(
            stdout,
            format!("{want} iptables -t nat -S\n"),
            "legacy={legacy:?} nft={nft:?}"
        );
        for (link, target) in targets {
            assert_eq!(target, PathBuf::from(format!("xtables-{want}-multi")), "{link}");
        }
    }
    // Called under another name, it runs that applet.
    let (stdout, _) = run_wrapper("", rules, "ip6tables-restore");
    assert_eq!(stdout, "nft ip6tables-restore -t nat -S\n");
}
