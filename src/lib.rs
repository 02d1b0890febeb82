//! flanneld: a drop-in Rust re-implementation of the flannel node daemon.
//!
//! The flow (see `../shared/design.md`):
//!
//! ```text
//! flags+env -> Config -> Daemon -> SubnetManager (etcd | kube) --lease batches--> LeaseWatcher
//!                          |                                                        |
//!                          +-> Backend.prepare/configure -> entries_for(lease) -> Reconciler -> Netlink
//!                          +-> TrafficManager (iptables-restore | nft)
//!                          +-> subnet.env, http (/healthz, /readyz, /metrics), sd_notify
//! ```
//!
//! Pure decisions live in `cli`, `config`, `netconf`, `lease`, `iface`, `subnet::alloc`,
//! `subnet::env_file` and the backends' `entries_for`; kernel changes are applied in one place,
//! `backend::reconcile`, through the `kernel::Netlink` seam.

pub mod backend;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod http;
pub mod iface;
pub mod kernel;
pub mod lease;
pub mod logging;
pub mod memory;
pub mod netconf;
pub mod redact;
pub mod sdnotify;
pub mod status;
pub mod subnet;
pub mod supervisor;
pub mod tools;
pub mod traffic;
