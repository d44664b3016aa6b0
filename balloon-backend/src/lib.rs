//! `splitvisor-balloon`: the vhost-user balloon device process.
//!
//! Not built yet: issue #7 adds the device, its `splitvisor-balloon` binary and its
//! tests. The crate exists so the workspace shows the process split from the start.
