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
//! {"op":"resize","size":2147483648}     -> {"ok":true,"old_bytes":…,"capacity_bytes":…,"frontend_told":true}
//! anything wrong                         -> {"ok":false,"error":"…"}
//! ```
//!
//! Internal snapshots need a qcow2 image. A snapshot is made between two guest writes (the
//! image's metadata lock holds writes back while it is made); for a snapshot that matches
//! the guest's memory, pause the guest and stop its rings first (`vm.snapshot` does both).
//! `reopen` makes an external snapshot (`reopen.rs`): a new qcow2 overlay over the image
//! served until now, in `--overlay-dir`, served from then on.
//! `resize` grows the image (raw: the file; qcow2: its virtual size, the L1 table with it) and
//! tells the frontend, whose guest sees the new capacity (`resize.rs`); it never shrinks.
//! Applying a snapshot is not offered here: the disk would change under a running guest
//! (`svctl snapshot-revert` applies it with the domain stopped).

use std::io;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};

pub use backends::control_socket::bind;
use backends::control_socket::error;
use backends::frontend_channel::FrontendChannel;
use serde_json::{json, Value};

use crate::blk::BlkDevice;
use crate::disk::qcow2::{Qcow2Disk, SnapshotInfo};
use crate::reopen::{self, Served};

/// Serve `listener`'s clients on a thread of its own; `served` names the image (a `reopen`
/// changes it); `channel` reaches the frontend (a `resize` tells it).
pub fn serve_listener(
    listener: UnixListener,
    device: Arc<BlkDevice>,
    channel: Arc<Mutex<FrontendChannel>>,
    served: Served,
) -> io::Result<()> {
    let served = Mutex::new(served);
    backends::control_socket::serve_listener(
        listener,
        Arc::new(move |req| match req.get("op").and_then(Value::as_str) {
            Some("reopen") => reopen_request(req, &device, &served),
            Some("resize") => resize_request(req, &device, &channel),
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

/// `{"op":"resize","size":BYTES}`: grow the disk to that size.
fn resize_request(req: &Value, device: &BlkDevice, channel: &Mutex<FrontendChannel>) -> Value {
    let Some(size) = req.get("size").and_then(Value::as_u64) else {
        return error("resize needs \"size\": the new size in bytes");
    };
    match crate::resize::grow(device, channel, size) {
        Ok(g) => json!({
            "ok": true,
            "old_bytes": g.old,
            "capacity_bytes": g.new,
            "frontend_told": g.frontend_told,
        }),
        Err(e) => error(format!("cannot grow the disk to {size} bytes: {e}")),
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
             reopen, resize)"
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
            Default::default(),
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
        // resize: grows, never shrinks; qemu-img sees the new size
        let r = ask(json!({"op": "resize", "size": 8 << 20}));
        assert_eq!(r["capacity_bytes"], 8 << 20, "{r}");
        assert_eq!(r["old_bytes"], 4 << 20, "{r}");
        assert_eq!(r["frontend_told"], false, "no frontend: {r}");
        let r = ask(json!({"op": "resize", "size": 2 << 20}));
        assert!(r["error"].as_str().unwrap().contains("shrinking"), "{r}");
        let r = ask(json!({"op": "resize"}));
        assert!(
            r["error"].as_str().unwrap().contains("needs \"size\""),
            "{r}"
        );
        assert_eq!(ask(json!({"op": "info"}))["capacity_bytes"], 8 << 20);
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
        let r = resize_request(
            &json!({"op": "resize", "size": 16 << 20}),
            &ro,
            &Default::default(),
        );
        assert!(r["error"].as_str().unwrap().contains("read-only"), "{r}");
        let r = resize_request(
            &json!({"op": "resize", "size": 3 << 20}),
            &raw_dev,
            &Default::default(),
        );
        assert_eq!(r["capacity_bytes"], 3 << 20, "{r}");
        assert_eq!(std::fs::metadata(&raw).unwrap().len(), 3 << 20);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
