//! The control socket (`--control PATH`): what the host (`svctl snapshot-*`, a person) asks
//! of the image while it is served. One JSON object per line each way; the socket itself
//! (clients, line limits, timeouts) is `backends::control_socket`.
//!
//! ```text
//! {"op":"info"}                          -> {"ok":true,"image":…,"format":"qcow2","capacity_bytes":…,"readonly":false}
//! {"op":"flush"}                         -> {"ok":true}
//! {"op":"snapshot-list"}                 -> {"ok":true,"snapshots":[{"id":"1","name":"s1","date_sec":…,"disk_size":…,"vm_state_size":0}]}
//! {"op":"snapshot-create","name":"s1"}   -> {"ok":true,"snapshot":{…}}
//! {"op":"snapshot-delete","name":"s1"}   -> {"ok":true}
//! {"op":"reopen","image":"/ovl/d.s1.qcow2"} -> {"ok":true,"image":…,"backing":…}
//! anything wrong                         -> {"ok":false,"error":"…"}
//! ```
//!
//! Internal snapshots need a qcow2 image. A snapshot is made between two guest writes (the
//! image's metadata lock holds writes back while it is made); for a snapshot that matches
//! the guest's memory, pause the guest and stop its rings first (`vm.snapshot` does both).
//! `reopen` makes an external snapshot (`reopen.rs`): a new qcow2 overlay over the image
//! served until now, in `--overlay-dir`, served from then on.
//! Applying a snapshot is not offered here: the disk would change under a running guest
//! (`svctl snapshot-revert` applies it with the domain stopped).

use std::io;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};

pub use backends::control_socket::bind;
use backends::control_socket::error;
use serde_json::{json, Value};

use crate::blk::BlkDevice;
use crate::disk::qcow2::{Qcow2Disk, SnapshotInfo};
use crate::reopen::{self, Served};

/// Serve `listener`'s clients on a thread of its own; `served` names the image (a `reopen`
/// changes it).
pub fn serve_listener(
    listener: UnixListener,
    device: Arc<BlkDevice>,
    served: Served,
) -> io::Result<()> {
    let served = Mutex::new(served);
    backends::control_socket::serve_listener(
        listener,
        Arc::new(move |req| match req.get("op").and_then(Value::as_str) {
            Some("reopen") => reopen_request(req, &device, &served),
            Some("info") => {
                let mut info = handle(req, &device);
                if let Ok(s) = served.lock() {
                    info["image"] = json!(s.image);
                }
                info
            }
            _ => handle(req, &device),
        }),
    )
}

/// `{"op":"reopen","image":"/overlays/disk.snap1.qcow2"}`: switch to a new overlay there.
fn reopen_request(req: &Value, device: &BlkDevice, served: &Mutex<Served>) -> Value {
    let Some(image) = req.get("image").and_then(Value::as_str) else {
        return error("reopen needs \"image\": the new overlay's absolute path");
    };
    let Ok(mut served) = served.lock() else {
        return error("the control state is poisoned");
    };
    let base = served.image.clone();
    match reopen::reopen(device, &mut served, std::path::Path::new(image)) {
        Ok(()) => json!({"ok": true, "image": image, "backing": base}),
        Err(e) => error(api::error_chain(&e)),
    }
}

/// A snapshot as the control socket and `svctl` show it.
pub fn snapshot_json(s: &SnapshotInfo) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "date_sec": s.date_sec,
        "disk_size": s.disk_size,
        "vm_state_size": s.vm_state_size,
    })
}

/// Answer one request.
pub fn handle(req: &Value, device: &BlkDevice) -> Value {
    let op = req.get("op").and_then(Value::as_str);
    let name = req.get("name").and_then(Value::as_str);
    match op {
        Some("info") => json!({
            "ok": true,
            "format": if device.disk.get().qcow2().is_some() { "qcow2" } else { "raw" },
            "capacity_bytes": device.disk.get().capacity(),
            "readonly": device.readonly,
        }),
        Some("flush") => match device.disk.get().flush() {
            Ok(()) => json!({"ok": true}),
            Err(e) => error(format!("flush failed: {e}")),
        },
        Some("snapshot-list") => with_qcow2(device, |q| {
            let list = q.snapshots()?;
            Ok(json!({"ok": true, "snapshots": list.iter().map(snapshot_json).collect::<Vec<_>>()}))
        }),
        Some(op @ ("snapshot-create" | "snapshot-delete")) => {
            let Some(name) = name else {
                return error(format!("{op} needs \"name\": a string"));
            };
            if device.readonly {
                return error("the disk is served read-only");
            }
            with_qcow2(device, |q| {
                if op == "snapshot-create" {
                    let made = q.create_snapshot(name)?;
                    Ok(json!({"ok": true, "snapshot": snapshot_json(&made)}))
                } else {
                    q.delete_snapshot(name)?;
                    Ok(json!({"ok": true}))
                }
            })
        }
        Some(other) => error(format!(
            "unknown op {other:?} (info, flush, snapshot-list, snapshot-create, snapshot-delete, \
             reopen)"
        )),
        None => error("a request needs \"op\""),
    }
}

fn with_qcow2(
    device: &BlkDevice,
    f: impl FnOnce(&Qcow2Disk) -> Result<Value, crate::disk::qcow2::SnapshotError>,
) -> Value {
    match device.disk.get().qcow2() {
        None => error("internal snapshots need a qcow2 image; this disk is raw"),
        Some(q) => f(q).unwrap_or_else(|e| error(api::error_chain(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{open, Format, OpenOptions};
    use crate::stats::Stats;

    fn rw_opts() -> OpenOptions {
        OpenOptions {
            readonly: false,
            direct: false,
            format: Format::Auto,
            backing_dirs: Vec::new(),
        }
    }

    fn device(image: &std::path::Path, readonly: bool) -> BlkDevice {
        let opts = OpenOptions {
            readonly,
            ..rw_opts()
        };
        BlkDevice {
            disk: crate::blk::DiskSlot::new(open(image, &opts).unwrap()),
            readonly,
            io_in_flight: Default::default(),
            serial: Vec::new(),
            max_request_bytes: 1 << 20,
            stats: Arc::new(Stats::default()),
        }
    }

    #[test]
    fn snapshots_are_made_listed_and_deleted_over_the_socket() {
        let dir = std::env::temp_dir().join(format!("sv-blk-ctl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("disk.qcow2");
        let made = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image)
            .arg("4M")
            .status()
            .expect("qemu-img is needed (scripts/install-deps.sh installs it)");
        assert!(made.success());
        let raw = dir.join("disk.raw");
        std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
        let socket = dir.join("ctl.sock");
        let served = Served {
            image: image.clone(),
            opts: rw_opts(),
            overlay_dir: None,
        };
        serve_listener(
            bind(&socket).unwrap(),
            Arc::new(device(&image, false)),
            served,
        )
        .unwrap();
        let ask = |req: Value| {
            let timeout = std::time::Duration::from_secs(5);
            api::backend::blk::control_request(&socket, &req, timeout).unwrap()
        };
        let r = ask(json!({"op": "snapshot-create", "name": "before"}));
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["snapshot"]["name"], "before");
        assert_eq!(r["snapshot"]["disk_size"], 4 << 20);
        let r = ask(json!({"op": "snapshot-create", "name": "before"}));
        assert_eq!(
            r["error"], "the image already has a snapshot named \"before\"",
            "{r}"
        );
        assert_eq!(ask(json!({"op": "flush"})), json!({"ok": true}));
        let r = ask(json!({"op": "snapshot-list"}));
        assert_eq!(r["snapshots"][0]["id"], "1", "{r}");
        assert_eq!(ask(json!({"op": "info"}))["format"], "qcow2");
        assert!(ask(json!({"op": "snapshot-delete"}))["error"]
            .as_str()
            .unwrap()
            .contains("needs \"name\""));
        let r = ask(json!({"op": "snapshot-delete", "name": "before"}));
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(ask(json!({"op": "snapshot-list"}))["snapshots"], json!([]));
        // what qemu-img sees afterwards: a clean image
        let check = std::process::Command::new("qemu-img")
            .arg("check")
            .arg(&image)
            .output()
            .unwrap();
        assert!(check.status.success(), "{check:?}");
        // a raw disk and a read-only one say why not
        let raw_dev = device(&raw, false);
        let r = handle(&json!({"op": "snapshot-create", "name": "x"}), &raw_dev);
        assert!(
            r["error"].as_str().unwrap().contains("need a qcow2 image"),
            "{r}"
        );
        let ro = device(&image, true);
        let r = handle(&json!({"op": "snapshot-create", "name": "x"}), &ro);
        assert_eq!(r["error"], "the disk is served read-only");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
