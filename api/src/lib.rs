//! The contracts between splitvisor's processes, in one small crate that every side depends on
//! (so none links another's dependencies):
//! - [`config`]: [`config::VmConfig`], the one schema of the vmm's `--config` file, its command
//!   line and the API's `vm.config`;
//! - [`types`]: the API's request and response bodies;
//! - [`backend`]: each backend process's configuration (its command line and `--config` file,
//!   and what svctl's supervisor hands it);
//! - [`line`]: one bounded JSON line from a Unix stream (size and time limits);
//! - [`unix_socket`]: the one rule for binding a socket path (replace only a stale socket of
//!   ours);
//! - [`client`] (feature `client`): the blocking HTTP client `svctl` and the tests use.
//!
//! The server is the vmm's (`vmm/src/api/server.rs`); docs/api.md has an example per endpoint.

pub mod backend;
#[cfg(feature = "client")]
pub mod client;
pub mod config;
#[doc(hidden)]
pub mod fuzz_harness;
pub mod line;
pub mod types;
pub mod unix_socket;

/// Every endpoint lives under this prefix (as in Cloud Hypervisor's API).
pub const PREFIX: &str = "/api/v1";

/// An error and its causes on one line: "outer: cause: root cause" (every process's error
/// messages; the vmm and the backends re-export it).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
