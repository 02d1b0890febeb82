//! Network namespaces for tests: every test that touches the kernel creates its own namespaces with
//! unique names (`fl-<tag>-<pid>-<counter>`), connects them only to each other, and deletes them on
//! drop, even when the test panics. Nothing here may ever create an object in the root namespace.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `fl-<tag>-<pid>-<counter>` and brings `lo` up inside it.
    pub fn new(tag: &str) -> Netns {
        SWEEP.call_once(sweep_stale);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("fl-{tag}-{}-{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("running ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// Runs `argv` inside the namespace and returns its output (never panics on failure status).
    pub fn exec(&self, argv: &[&str]) -> Output {
        self.spawn_cmd(argv)
            .output()
            .unwrap_or_else(|e| panic!("running {argv:?} in {}: {e}", self.name))
    }

    /// Runs a shell script inside the namespace; panics with stdout and stderr when it fails.
    pub fn sh(&self, script: &str) -> String {
        match self.try_sh(script) {
            Ok(out) => out,
            Err(e) => panic!("in netns {}: {e}", self.name),
        }
    }

    /// Runs a shell script inside the namespace; `Err` carries the script, status, stdout and stderr.
    pub fn try_sh(&self, script: &str) -> Result<String, String> {
        let out = self.exec(&["sh", "-c", script]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "script {script:?} failed ({}): stdout: {stdout} stderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Runs `f` on a new OS thread that has first joined this namespace; returns its result and
    /// re-raises its panic. Sockets opened by `f` belong to this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        let handle = std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            // SAFETY: setns on a valid fd only changes this thread's network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns into {path}: {}", std::io::Error::last_os_error());
            drop(file);
            f()
        });
        match handle.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// A `Command` that runs `argv` inside the namespace (`ip netns exec <name> argv...`).
    pub fn spawn_cmd(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        // Daemons, etcd and pingers must not outlive a test process that is killed outright (its
        // Drop guards never run then). `ip netns exec`, `unshare` and `sh -c exec` all exec in
        // place, so the signal reaches the final program.
        // SAFETY: prctl is async-signal-safe and touches only the child being spawned.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Creates a veth pair inside `a` (`a_if`) whose peer `b_if` is moved into `b`; both ends up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    a.sh(&format!(
        "ip link add {a_if} type veth peer name {b_if} netns {} && ip link set {a_if} up",
        b.name
    ));
    b.sh(&format!("ip link set {b_if} up"));
}

/// Deletes `fl-*` namespaces left behind by test processes that are no longer alive.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("fl-") else {
            continue;
        };
        // fl-<tag>-<pid>-<counter>: the tag may contain '-', so take the pid from the end.
        let mut parts = rest.rsplitn(3, '-');
        let (Some(_counter), Some(pid), Some(_tag)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
