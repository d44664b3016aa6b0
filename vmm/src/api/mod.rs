//! The vmm's management API: JSON over HTTP/1.1 on a Unix socket (`--api-socket PATH`, mode
//! 0600). The server ([`server`]) runs an axum router on a thread of its own; [`client`] is
//! what `svctl` and the tests use; [`types`] are the bodies both sides share. The VM's
//! configuration in `vm.config` and `vm.info` is [`crate::config::VmConfig`], the very type the
//! config file is parsed into. docs/api.md has an example per endpoint.

pub mod client;
pub mod server;
pub mod types;

/// Every endpoint lives under this prefix (as in Cloud Hypervisor's API).
pub const PREFIX: &str = "/api/v1";
