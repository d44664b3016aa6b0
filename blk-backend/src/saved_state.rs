//! The disk's part of a snapshot (vhost-user DEVICE_STATE, `backends::device_state`): what a
//! restore must find again — a disk of the same size and format, writable or not as before —
//! and that nothing was in flight when it was taken. The image's path is not compared: a
//! restore may serve a copy of the disk from elsewhere (two VMs from one snapshot).

use backends::device_state::{field, DeviceState};
use serde_json::{json, Value};

use crate::vhu_blk::VhostUserBlk;

impl VhostUserBlk {
    fn format(&self) -> &'static str {
        if self.device().disk.get().qcow2().is_some() {
            "qcow2"
        } else {
            "raw"
        }
    }
}

impl DeviceState for VhostUserBlk {
    fn kind(&self) -> &'static str {
        "blk"
    }

    fn save_state(&self) -> Result<Value, String> {
        let in_flight = self.in_flight();
        if in_flight > 0 {
            return Err(format!(
                "{in_flight} request(s) still in flight: the rings must be stopped first"
            ));
        }
        let d = self.device();
        Ok(json!({
            "capacity": d.disk.get().capacity(),
            "format": self.format(),
            "readonly": d.readonly,
            "serial": String::from_utf8_lossy(&d.serial),
        }))
    }

    fn load_state(&self, state: &Value) -> Result<(), String> {
        let d = self.device();
        let capacity = field(state, "capacity", Value::as_u64)?;
        let format = field(state, "format", |v| v.as_str().map(String::from))?;
        let readonly = field(state, "readonly", Value::as_bool)?;
        let ours = (d.disk.get().capacity(), self.format(), d.readonly);
        if (capacity, format.as_str(), readonly) != ours {
            let ro = |r: bool| if r { ", read-only" } else { "" };
            return Err(format!(
                "the snapshot's disk was {format} of {capacity} bytes{}; this backend serves \
                 {} of {} bytes{}",
                ro(readonly),
                ours.1,
                ours.0,
                ro(ours.2)
            ));
        }
        if state["serial"].as_str() != Some(&*String::from_utf8_lossy(&d.serial)) {
            tracing::warn!("the snapshot's disk had another serial: the guest sees a new one");
        }
        Ok(())
    }
}
