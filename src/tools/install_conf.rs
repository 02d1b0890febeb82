//! `install-conf <src> <dest>`: installs a file (the CNI network config from the ConfigMap) at
//! `dest` atomically, so the container runtime never reads a half-written config (spec section 12;
//! pain point 1.1: a partial or missing conflist leaves every pod of the node in ContainerCreating).
//!
//! Steps, as upstream's image tool: remove stale temp files of earlier interrupted runs
//! (`<dir>/.<name>.tmp*`), copy `src` into a new temp file `.<name>.tmp<random>` in the
//! destination directory (same filesystem, so the rename is atomic), fsync, give it the source's
//! permission bits, rename over `dest`, then fsync the directory. The source is followed through
//! symlinks (ConfigMap mounts are symlinks into `..data/`). On failure the temp file is removed and
//! `dest` is left as it was. Nothing else is touched.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why an install failed; every message names the source file.
#[derive(Debug, thiserror::Error)]
pub enum InstallConfError {
    #[error("installing {src:?} as {dest:?}: {step}: {source}")]
    Io {
        src: PathBuf,
        dest: PathBuf,
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("installing {src:?}: the source is not a regular file")]
    SourceNotAFile { src: PathBuf },
    #[error("installing {src:?}: destination {dest:?} does not name a file")]
    DestinationNotAFile { src: PathBuf, dest: PathBuf },
}

/// Entry point: `args[0]` is the invoked name, then exactly `<src> <dest>`. Prints a usage line
/// (exit 1) for any other argument count and the error (exit 1) when the install fails.
pub fn install_conf_main(args: &[String]) -> i32 {
    let program = args.first().map(String::as_str).unwrap_or("install-conf");
    let [src, dest] = args.get(1..).unwrap_or_default() else {
        eprintln!("usage: {program} <src> <dest>");
        return 1;
    };
    match install(Path::new(src), Path::new(dest)) {
        Ok(warnings) => {
            for warning in warnings {
                eprintln!("{program}: warning: {warning}");
            }
            0
        }
        Err(err) => {
            eprintln!("{program}: {err}");
            1
        }
    }
}

/// Installs `src` at `dest` atomically (see the module doc). Returns warnings about steps that
/// failed without affecting the result (stale temp removal, directory fsync).
pub fn install(src: &Path, dest: &Path) -> Result<Vec<String>, InstallConfError> {
    let io_err = |step: String| {
        let (src, dest) = (src.to_path_buf(), dest.to_path_buf());
        move |source| InstallConfError::Io {
            src,
            dest,
            step,
            source,
        }
    };
    let name = dest.file_name().and_then(|name| name.to_str()).ok_or_else(|| {
        InstallConfError::DestinationNotAFile {
            src: src.to_path_buf(),
            dest: dest.to_path_buf(),
        }
    })?;
    let dir = match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let temp_prefix = temp_prefix(name);

    let mut source = File::open(src).map_err(io_err("opening the source".into()))?;
    let source_meta = source
        .metadata()
        .map_err(io_err("reading the source's metadata".into()))?;
    if !source_meta.is_file() {
        return Err(InstallConfError::SourceNotAFile {
            src: src.to_path_buf(),
        });
    }
    let mode = source_meta.permissions().mode() & 0o7777;

    let mut warnings = remove_stale_temps(dir, &temp_prefix);
    let (mut temp, temp_path) = create_temp(dir, &temp_prefix)
        .map_err(io_err(format!("creating a temp file in {}", dir.display())))?;
    let written = (|| {
        io::copy(&mut source, &mut temp).map_err(io_err(format!("copying into {}", temp_path.display())))?;
        temp.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(format!(
                "setting mode {mode:o} on {}",
                temp_path.display()
            )))?;
        temp.sync_all()
            .map_err(io_err(format!("syncing {}", temp_path.display())))?;
        drop(temp);
        fs::rename(&temp_path, dest).map_err(io_err(format!(
            "renaming {} over the destination",
            temp_path.display()
        )))
    })();
    if let Err(err) = written {
        // Best effort: the error above is what matters; a leftover is removed by the next run.
        let _ = fs::remove_file(&temp_path);
        return Err(err);
    }
    if let Err(err) = File::open(dir).and_then(|dir| dir.sync_all()) {
        warnings.push(format!("syncing directory {}: {err}", dir.display()));
    }
    Ok(warnings)
}

/// The name prefix of this tool's temp files for destination file `name`.
pub fn temp_prefix(name: &str) -> String {
    format!(".{name}.tmp")
}

/// Removes regular files in `dir` whose name starts with `prefix` (left by an interrupted run);
/// returns a warning for each one that could not be removed.
fn remove_stale_temps(dir: &Path, prefix: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        // Creating the temp file reports an unreadable directory with the real error.
        return Vec::new();
    };
    let mut warnings = Vec::new();
    for entry in entries.flatten() {
        let is_stale = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(prefix))
            && entry.file_type().is_ok_and(|kind| kind.is_file());
        if is_stale {
            if let Err(err) = fs::remove_file(entry.path()) {
                warnings.push(format!(
                    "removing stale temp file {}: {err}",
                    entry.path().display()
                ));
            }
        }
    }
    warnings
}

/// Creates a new, exclusive, owner-only temp file `<prefix><random>` in `dir`.
fn create_temp(dir: &Path, prefix: &str) -> io::Result<(File, PathBuf)> {
    let mut last_err = None;
    for _ in 0..16 {
        let path = dir.join(format!("{prefix}{}", rand::random::<u32>()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => return Ok((file, path)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => last_err = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no free temp file name")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_prefix_is_hidden_and_named_after_the_destination() {
        assert_eq!(temp_prefix("10-flannel.conflist"), ".10-flannel.conflist.tmp");
    }

    #[test]
    fn wrong_argument_counts_are_usage_errors() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(install_conf_main(&[]), 1);
        assert_eq!(install_conf_main(&args(&["install-conf"])), 1);
        assert_eq!(install_conf_main(&args(&["install-conf", "a"])), 1);
        assert_eq!(install_conf_main(&args(&["install-conf", "a", "b", "c"])), 1);
    }
}
