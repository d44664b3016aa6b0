//! The vmm's management API: JSON over HTTP/1.1 on a Unix socket (`--api-socket PATH`, mode
//! 0600). The server ([`server`]) runs an axum router on a thread of its own. The bodies, the
//! configuration type and the client are the `api` crate's, shared with `svctl`: the VM's
//! configuration in `vm.config` and `vm.info` is [`api::config::VmConfig`], the very type the
//! config file is parsed into. docs/api.md has an example per endpoint.

mod backend_proxy;
mod hotplug;
pub mod server;
pub mod waiting;

pub use ::api::{types, PREFIX};
