//! `splitvisor-net`: the vhost-user net device process.
//!
//! Not built yet: issue #6 adds the device, its `splitvisor-net` binary and its
//! tests. The crate exists so the workspace shows the process split from the start.
