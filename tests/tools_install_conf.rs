//! install-conf against the real filesystem (spec section 12): atomic install with the source's
//! mode, stale temp removal, and clear errors that leave the destination untouched.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use flanneld::tools::install_conf::{InstallConfError, install, install_conf_main, temp_prefix};

const CNI_CONF: &str = "{\n  \"name\": \"cbr0\",\n  \"cniVersion\": \"0.3.1\"\n}\n";

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn installs_the_content_with_the_source_mode_and_leaves_no_temp_file() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("cni-conf.json");
    fs::write(&src, CNI_CONF).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o640)).unwrap();
    let net_d = tmp.path().join("net.d");
    fs::create_dir(&net_d).unwrap();
    let dest = net_d.join("10-flannel.conflist");

    let status = install_conf_main(&args(&[
        "install-conf",
        src.to_str().unwrap(),
        dest.to_str().unwrap(),
    ]));
    assert_eq!(status, 0);
    assert_eq!(fs::read_to_string(&dest).unwrap(), CNI_CONF);
    assert_eq!(mode_of(&dest), 0o640);
    assert_eq!(names_in(&net_d), vec!["10-flannel.conflist"]);
}

#[test]
fn replaces_an_existing_destination_and_takes_the_new_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.json");
    fs::write(&src, CNI_CONF).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o644)).unwrap();
    let dest = tmp.path().join("dest.conflist");
    fs::write(
        &dest,
        "old content that is longer than the new one, to catch a missing truncate\n".repeat(3),
    )
    .unwrap();
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o600)).unwrap();

    install(&src, &dest).expect("install");
    assert_eq!(fs::read_to_string(&dest).unwrap(), CNI_CONF);
    assert_eq!(mode_of(&dest), 0o644);
}

#[test]
fn follows_a_configmap_style_symlinked_source() {
    let tmp = tempfile::tempdir().unwrap();
    // A ConfigMap volume: cni-conf.json -> ..data/cni-conf.json, ..data -> ..2024_01_01/
    let data = tmp.path().join("..2024_01_01");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("cni-conf.json"), CNI_CONF).unwrap();
    symlink("..2024_01_01", tmp.path().join("..data")).unwrap();
    symlink("..data/cni-conf.json", tmp.path().join("cni-conf.json")).unwrap();
    let dest = tmp.path().join("out.conflist");

    install(&tmp.path().join("cni-conf.json"), &dest).expect("install");
    assert_eq!(fs::read_to_string(&dest).unwrap(), CNI_CONF);
    assert!(!fs::symlink_metadata(&dest).unwrap().file_type().is_symlink());
}

#[test]
fn removes_stale_temp_files_of_interrupted_runs_only() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.json");
    fs::write(&src, CNI_CONF).unwrap();
    let net_d = tmp.path().join("net.d");
    fs::create_dir(&net_d).unwrap();
    let prefix = temp_prefix("10-flannel.conflist");
    fs::write(net_d.join(&prefix), "stale").unwrap();
    fs::write(net_d.join(format!("{prefix}12345")), "stale").unwrap();
    // Not ours: another file's temp, another plugin's config, a directory with our prefix.
    fs::write(net_d.join(".99-other.conflist.tmp1"), "other").unwrap();
    fs::write(net_d.join("99-other.conflist"), "other").unwrap();
    fs::create_dir(net_d.join(format!("{prefix}dir"))).unwrap();

    install(&src, &net_d.join("10-flannel.conflist")).expect("install");
    assert_eq!(
        names_in(&net_d),
        vec![
            ".10-flannel.conflist.tmpdir".to_string(),
            ".99-other.conflist.tmp1".to_string(),
            "10-flannel.conflist".to_string(),
            "99-other.conflist".to_string(),
        ]
    );
}

#[test]
fn a_missing_source_is_an_error_naming_it_and_the_destination_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("no-such-cni-conf.json");
    let dest = tmp.path().join("10-flannel.conflist");
    fs::write(&dest, "previous\n").unwrap();

    let err = install(&src, &dest).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("no-such-cni-conf.json"), "{text}");
    assert!(text.contains("opening the source"), "{text}");
    assert_eq!(fs::read_to_string(&dest).unwrap(), "previous\n");
    assert_eq!(names_in(tmp.path()), vec!["10-flannel.conflist"]);

    let status = install_conf_main(&args(&[
        "install-conf",
        src.to_str().unwrap(),
        dest.to_str().unwrap(),
    ]));
    assert_eq!(status, 1);
}

#[test]
fn a_directory_source_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = install(tmp.path(), &tmp.path().join("out")).unwrap_err();
    assert!(matches!(err, InstallConfError::SourceNotAFile { .. }), "{err}");
    assert!(err.to_string().contains(&format!("{:?}", tmp.path())), "{err}");
}

#[test]
fn a_missing_destination_directory_is_an_error_naming_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.json");
    fs::write(&src, CNI_CONF).unwrap();
    let err = install(&src, &tmp.path().join("missing-dir/10-flannel.conflist")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("src.json") && text.contains("missing-dir"),
        "{text}"
    );
    assert!(text.contains("creating a temp file"), "{text}");
}

#[test]
fn a_destination_that_is_a_directory_is_an_error_and_no_temp_is_left() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.json");
    fs::write(&src, CNI_CONF).unwrap();
    let dest = tmp.path().join("10-flannel.conflist");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("keep"), "inside").unwrap();

    let err = install(&src, &dest).unwrap_err();
    assert!(err.to_string().contains("renaming"), "{err}");
    assert_eq!(names_in(tmp.path()), vec!["10-flannel.conflist", "src.json"]);
    assert_eq!(fs::read_to_string(dest.join("keep")).unwrap(), "inside");
}

#[test]
fn a_destination_without_a_file_name_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.json");
    fs::write(&src, CNI_CONF).unwrap();
    let err = install(&src, Path::new("/")).unwrap_err();
    assert!(
        matches!(err, InstallConfError::DestinationNotAFile { .. }),
        "{err}"
    );
    let err = install(&src, &tmp.path().join("..")).unwrap_err();
    assert!(
        matches!(err, InstallConfError::DestinationNotAFile { .. }),
        "{err}"
    );
}
