//! `svctl blockresize NAME DISK SIZE` (virsh blockresize): grow a disk. While the domain
//! runs, the vmm's `vm.resize-disk` has the disk's splitvisor-blk grow the image, and the
//! guest sees the new capacity at once (then `resize2fs` grows a filesystem on it, mounted);
//! while it is shut off the image is grown here, with the same code. Never shrinks.

use api::config::ByteSize;
use blk_backend::disk::{self, OpenOptions};
use serde_json::json;

use crate::backend_restart::backend_name;
use crate::domain::Domain;
use crate::info::disk_target;
use crate::lifecycle::{api, state};
use crate::store::{DomState, Store};
use crate::Out;

/// Disk DISK's index: its target (`vda`), its backend's name (`blk0`) or its image's path.
fn disk_index(d: &Domain, disk: &str) -> Result<usize, String> {
    if let Some(i) = d.disks.iter().position(|x| x.path.as_os_str() == disk) {
        return Ok(i);
    }
    let name = backend_name(d, disk)?;
    name.strip_prefix("blk")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("domain '{}': {disk} is not a disk", d.name))
}

pub fn blockresize(
    store: &Store,
    name: &str,
    disk: &str,
    size: &str,
    out: &Out,
) -> Result<(), String> {
    let d = store.load(name)?;
    let i = disk_index(&d, disk)?;
    let size: ByteSize = size.parse().map_err(|e| format!("{e}"))?;
    let target = disk_target(i);
    let what = |e: String| format!("domain '{name}': disk {target}: {e}");
    if d.disks[i].readonly {
        return Err(what("the disk is read-only".into()));
    }
    let (old, new, live) = if state(store, name) == DomState::ShutOff {
        let (old, new) = grow_image(&d, i, size.0).map_err(what)?;
        (old, new, false)
    } else {
        let body = json!({"id": format!("blk{i}"), "size": size.0});
        let reply = api(store, name)
            .put("vm.resize-disk", Some(&body))
            .map_err(|e| what(e.to_string()))?;
        let old = reply["old_bytes"].as_u64().unwrap_or_default();
        (
            old,
            reply["capacity_bytes"].as_u64().unwrap_or(size.0),
            true,
        )
    };
    out.print(
        format!("Block device '{target}' is resized\n"),
        json!({"domain": name, "disk": target, "old_bytes": old, "capacity_bytes": new, "live": live}),
    );
    Ok(())
}

/// Grow disk `i`'s image while nothing serves it: `(old, new)` sizes.
fn grow_image(d: &Domain, i: usize, size: u64) -> Result<(u64, u64), String> {
    let x = &d.disks[i];
    let opts = OpenOptions {
        readonly: false,
        direct: false,
        format: clap::ValueEnum::from_str(&x.format, false).unwrap_or(disk::Format::Auto),
        backing_dirs: x.backing_dirs.clone(),
    };
    let image = disk::open(&x.path, &opts).map_err(|e| api::error_chain(&e))?;
    let old = image.capacity();
    let new = image
        .grow(size)
        .map_err(|e| format!("cannot grow {} to {size} bytes: {e}", x.path.display()))?;
    image
        .close()
        .map_err(|e| format!("{}: {e}", x.path.display()))?;
    Ok((old, new))
}
