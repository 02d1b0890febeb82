//! Small helper programs shipped inside the flanneld binary for the container image and the
//! Docker integration: `install-conf` (atomic CNI config install, used by the DaemonSet's
//! `install-cni` init container), `mk-docker-opts` (subnet.env -> Docker daemon options), and
//! `doctor` (alias `diag`: what is wrong with this node's overlay).
//! Spec section 12 (packaging facts).
//!
//! Each tool is a `*_main(args) -> exit status` function where `args[0]` is the name the tool was
//! invoked as (only used in usage messages) and the rest are its arguments, so the binary can
//! dispatch both `flanneld install-conf ...` (pass the arguments from the subcommand word on) and an
//! argv[0]-named symlink such as `/opt/bin/install-conf` (pass the whole argv; see
//! [`Tool::for_program`]). The tools never change the network or the kernel; mk-docker-opts only
//! reads the routing table (`ip route show`), doctor reads the kernel and the datastore and sends
//! ICMP echo requests.

pub mod doctor;
pub mod install_conf;
pub mod mk_docker_opts;

pub use doctor::doctor_main;
pub use install_conf::install_conf_main;
pub use mk_docker_opts::mk_docker_opts_main;

/// A helper program built into the flanneld binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    InstallConf,
    MkDockerOpts,
    /// `doctor`, and `diag` (its former name) as an alias.
    Doctor,
}

/// The program names (basename of argv[0]) under which the image installs symlinks to flanneld,
/// with the tool each one runs. `mk-docker-opts.sh` is upstream's script name; `mk-docker-opts`
/// (the subcommand word) is accepted as well.
pub const PROGRAM_NAMES: &[(&str, Tool)] = &[
    ("install-conf", Tool::InstallConf),
    ("mk-docker-opts.sh", Tool::MkDockerOpts),
    ("mk-docker-opts", Tool::MkDockerOpts),
    ("doctor", Tool::Doctor),
    ("diag", Tool::Doctor),
];

impl Tool {
    /// The tool to run when the binary was invoked as `argv0` (a path or a bare name), or `None`
    /// for the daemon itself (`flanneld`, or any other name).
    pub fn for_program(argv0: &str) -> Option<Tool> {
        let basename = argv0.rsplit('/').next().unwrap_or(argv0);
        PROGRAM_NAMES
            .iter()
            .find(|(name, _)| *name == basename)
            .map(|(_, tool)| *tool)
    }

    /// Runs the tool; `args[0]` is the invoked name. Returns the process exit status.
    pub fn run(self, args: &[String]) -> i32 {
        match self {
            Tool::InstallConf => install_conf_main(args),
            Tool::MkDockerOpts => mk_docker_opts_main(args),
            Tool::Doctor => doctor_main(args),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names_select_their_tool_by_basename() {
        for argv0 in ["install-conf", "/opt/bin/install-conf", "./install-conf"] {
            assert_eq!(Tool::for_program(argv0), Some(Tool::InstallConf), "{argv0}");
        }
        for argv0 in [
            "mk-docker-opts.sh",
            "/opt/bin/mk-docker-opts.sh",
            "mk-docker-opts",
        ] {
            assert_eq!(Tool::for_program(argv0), Some(Tool::MkDockerOpts), "{argv0}");
        }
        for argv0 in ["doctor", "diag", "/opt/bin/diag"] {
            assert_eq!(Tool::for_program(argv0), Some(Tool::Doctor), "{argv0}");
        }
    }

    #[test]
    fn the_daemon_and_unknown_names_select_no_tool() {
        for argv0 in [
            "flanneld",
            "/opt/bin/flanneld",
            "",
            "/",
            "install-conf/",
            "xinstall-conf",
        ] {
            assert_eq!(Tool::for_program(argv0), None, "{argv0:?}");
        }
    }

    #[test]
    fn every_subcommand_word_of_the_cli_maps_to_a_tool() {
        // The binary relies on this: a subcommand word always runs its tool.
        for word in crate::cli::SUBCOMMANDS {
            assert!(Tool::for_program(word).is_some(), "{word}");
        }
    }
}
