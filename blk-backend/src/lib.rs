//! `splitvisor-blk`: the vhost-user blk device process.
//!
//! Not built yet: issue #5 adds the device, its `splitvisor-blk` binary and its
//! tests. The crate exists so the workspace shows the process split from the start.
