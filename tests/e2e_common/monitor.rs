//! Records what the kernel reports on a node while something happens: `ip monitor label route neigh`
//! and `bridge monitor fdb` run inside the node's namespace, writing to files. A sentinel (a route
//! in a private table and an FDB entry on eth0, added and deleted at once; nothing flanneld owns)
//! marks the start and the end, so the recording provably covers the whole interval and nothing
//! written before the end is still buffered when it is read.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use super::time_until;
use crate::support::netns::Netns;

const START: (&str, &str) = ("203.0.113.7", "02:00:5e:00:53:07");
const END: (&str, &str) = ("203.0.113.8", "02:00:5e:00:53:08");

pub struct Monitor {
    children: Vec<Child>,
    route_neigh: PathBuf,
    fdb: PathBuf,
}

fn spawn(ns: &Netns, argv: &[&str], out: &Path) -> Child {
    let file = std::fs::File::create(out).unwrap_or_else(|e| panic!("creating {}: {e}", out.display()));
    ns.spawn_cmd(argv)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {argv:?} in {}: {e}", ns.name))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn mark(ns: &Netns, (ip, mac): (&str, &str)) {
    ns.sh(&format!(
        "ip route add {ip}/32 dev lo table 4242 && ip route del {ip}/32 dev lo table 4242 && \
         bridge fdb add {mac} dev eth0 self permanent && bridge fdb del {mac} dev eth0 self permanent"
    ));
}

impl Monitor {
    /// Starts both monitors in `ns` (files `<dir>/<label>.monitor` and `.fdbmonitor`) and returns
    /// once both have seen the start sentinel.
    pub fn start(ns: &Netns, dir: &Path, label: &str) -> Monitor {
        let route_neigh = dir.join(format!("{label}.monitor"));
        let fdb = dir.join(format!("{label}.fdbmonitor"));
        let children = vec![
            spawn(ns, &["ip", "monitor", "label", "route", "neigh"], &route_neigh),
            spawn(ns, &["bridge", "monitor", "fdb"], &fdb),
        ];
        let monitor = Monitor {
            children,
            route_neigh,
            fdb,
        };
        // The monitors subscribe some time after they start: repeat the sentinel until both saw it.
        let seen = time_until(Duration::from_secs(10), || {
            mark(ns, START);
            std::thread::sleep(Duration::from_millis(50));
            read(&monitor.route_neigh).contains(START.0) && read(&monitor.fdb).contains(START.1)
        });
        assert!(
            seen.is_some(),
            "ip/bridge monitor in {} never reported the start sentinel",
            ns.name
        );
        monitor
    }

    /// Marks the end, waits until both monitors reported it, stops them and returns every line
    /// reported between the sentinels (fdb monitor lines prefixed with `[FDB]`).
    pub fn finish(mut self, ns: &Netns) -> Vec<String> {
        mark(ns, END);
        let seen = time_until(Duration::from_secs(10), || {
            read(&self.route_neigh).contains(END.0) && read(&self.fdb).contains(END.1)
        });
        assert!(
            seen.is_some(),
            "ip/bridge monitor in {} never reported the end sentinel",
            ns.name
        );
        self.stop();
        let between = |text: String, (start_ip, start_mac): (&str, &str), prefix: &str| {
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            let from = lines
                .iter()
                .rposition(|l| l.contains(start_ip) || l.contains(start_mac))
                .map_or(0, |p| p + 1);
            lines
                .into_iter()
                .skip(from)
                .take_while(|l| !l.contains(END.0) && !l.contains(END.1))
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("{prefix}{l}"))
                .collect::<Vec<_>>()
        };
        let mut out = between(read(&self.route_neigh), START, "");
        out.extend(between(read(&self.fdb), START, "[FDB]"));
        out
    }

    fn stop(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop();
    }
}
