//! The `flanneld` binary: turns the command line and environment into a [`Config`], starts
//! logging and runs the daemon, mapping every outcome to an exit status (spec 1, 11.1 step 1).
//!
//! Thin on purpose: parsing lives in `flanneld::cli`, validation in `flanneld::config`, the
//! startup sequence in `flanneld::daemon`. Exit statuses: 0 help/version/clean exit, 2 bad
//! command line (upstream: 0), 1 bad configuration or daemon failure (the daemon's own code).

use std::process::ExitCode;

use flanneld::cli::{self, CliOutcome};
use flanneld::config::Config;
use flanneld::logging;

fn main() -> ExitCode {
    flanneld::memory::limit_arenas();
    // Installed under another name (the image's /opt/bin/install-conf, /opt/bin/mk-docker-opts.sh
    // links): behave as that tool.
    let argv0 = std::env::args().next().unwrap_or_default();
    if let Some(tool) = flanneld::tools::Tool::for_program(&argv0) {
        let argv: Vec<String> = std::env::args().collect();
        return exit_code(tool.run(&argv));
    }
    let args = match cli::args_from_os(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(err) => return usage_error(&err),
    };
    // Every subcommand word is a tool (checked by the tools' unit tests).
    if let Some(tool) = cli::subcommand(&args).and_then(flanneld::tools::Tool::for_program) {
        return exit_code(tool.run(&args));
    }
    let env = |name: &str| std::env::var(name).ok();
    let (flags, mut env_warnings) = match cli::parse(&args, &env) {
        Ok(CliOutcome::Run { flags, env_warnings }) => (flags, env_warnings),
        Ok(CliOutcome::Help(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(CliOutcome::Version) => {
            // Upstream prints the version to stderr.
            eprintln!("{}", cli::VERSION);
            return ExitCode::SUCCESS;
        }
        Err(err) => return usage_error(&err),
    };
    env_warnings.extend(cli::non_utf8_env_warnings(std::env::vars_os()));

    logging::init(flags.v);
    for warning in &env_warnings {
        tracing::warn!(%warning, "rejected a FLANNELD_* environment variable; startup continues");
    }
    let config = match Config::from_flags(&flags) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("flanneld: {err}");
            return exit_code(err.exit_code());
        }
    };
    tracing::info!(config = %config.redacted_summary(), version = cli::VERSION, "starting flanneld");

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(flanneld::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "flanneld stopped on a fatal error");
            exit_code(err.exit_code())
        }
    }
}

/// A command-line error: the message, a hint, exit 2.
fn usage_error(err: &cli::CliError) -> ExitCode {
    eprintln!("flanneld: {err}");
    eprintln!("run 'flanneld --help' for usage");
    exit_code(err.exit_code())
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
