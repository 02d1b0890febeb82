//! Process-wide logging: a `tracing` fmt subscriber writing to stderr (upstream's klog always logs
//! to stderr, spec 11.4), with the level taken from `-v` unless `RUST_LOG` is set.
//!
//! `-v` raises only this crate's level (0 info, 1..=4 debug, >= 5 trace); other crates stay at
//! info, because `-v 10` (used by upstream's functional tests) would otherwise flood the log with
//! HTTP/2 and gRPC frames. `RUST_LOG` replaces the whole filter when it is set and valid.
//! This module never decides what is logged, only where and at which level.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The filter directives used when `RUST_LOG` is not set.
pub fn default_directives(verbosity: i32) -> String {
    let level = match verbosity {
        i32::MIN..=0 => "info",
        1..=4 => "debug",
        _ => "trace",
    };
    format!("info,{}={level}", env!("CARGO_CRATE_NAME"))
}

/// Installs the global subscriber. Safe to call more than once: later calls change nothing.
pub fn init(verbosity: i32) {
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.trim().is_empty());
    let mut rejected_rust_log = None;
    let filter = match rust_log.as_deref().map(EnvFilter::try_new) {
        Some(Ok(filter)) => filter,
        Some(Err(err)) => {
            rejected_rust_log = Some(err.to_string());
            EnvFilter::new(default_directives(verbosity))
        }
        None => EnvFilter::new(default_directives(verbosity)),
    };
    let installed = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .try_init()
        .is_ok();
    if let (true, Some(reason)) = (installed, rejected_rust_log) {
        tracing::warn!(
            rust_log = rust_log.as_deref().unwrap_or(""),
            %reason,
            verbosity,
            "ignoring RUST_LOG, using the -v level instead"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_maps_to_our_crate_level() {
        assert_eq!(default_directives(0), "info,flanneld=info");
        assert_eq!(default_directives(-1), "info,flanneld=info");
        assert_eq!(default_directives(1), "info,flanneld=debug");
        assert_eq!(default_directives(4), "info,flanneld=debug");
        assert_eq!(default_directives(5), "info,flanneld=trace");
        assert_eq!(default_directives(10), "info,flanneld=trace");
        for verbosity in [i32::MIN, 0, 3, 10, i32::MAX] {
            assert!(EnvFilter::try_new(default_directives(verbosity)).is_ok());
        }
    }

    #[test]
    fn init_twice_is_harmless() {
        init(0);
        init(7);
        tracing::info!("logging initialised twice");
    }
}
