//! The balloon's part of a snapshot (vhost-user DEVICE_STATE, `backends::device_state`): the
//! target, what the driver says it gave, and which pages are in the balloon, so that a new
//! process knows them when the guest deflates after a restore; the guest RAM size, which a
//! restore must find again.

use std::sync::atomic::Ordering;

use backends::device_state::{field, DeviceState};
use serde_json::{json, Value};

use crate::vhu_balloon::VhostUserBalloon;

impl DeviceState for VhostUserBalloon {
    fn kind(&self) -> &'static str {
        "balloon"
    }

    fn save_state(&self) -> Result<Value, String> {
        let state = self.state();
        let runs = self.pages().map_err(|e| e.to_string())?.runs();
        Ok(json!({
            "ram_bytes": state.ram.load(Ordering::Relaxed),
            "num_pages": state.num_pages.load(Ordering::Relaxed),
            "actual": state.actual.load(Ordering::Relaxed),
            "pages": runs,
        }))
    }

    fn load_state(&self, saved: &Value) -> Result<(), String> {
        let state = self.state();
        let ram = field(saved, "ram_bytes", Value::as_u64)?;
        let ours = state.ram.load(Ordering::Relaxed);
        if ours != 0 && ram != ours {
            return Err(format!(
                "the snapshot's guest had {ram} bytes of RAM; this one has {ours}"
            ));
        }
        let page_count = |key| field(saved, key, |v| v.as_u64()?.try_into().ok());
        let (num_pages, actual): (u32, u32) = (page_count("num_pages")?, page_count("actual")?);
        let runs = field(saved, "pages", |v| {
            v.as_array()?
                .iter()
                .map(|r| Some((r.get(0)?.as_u64()?, r.get(1)?.as_u64()?)))
                .collect::<Option<Vec<_>>>()
        })?;
        let mut pages = self.pages().map_err(|e| e.to_string())?;
        for (start, count) in runs {
            if count > ram >> 12 || start.saturating_add(count) > (1 << 52) >> 12 {
                return Err(format!(
                    "the snapshot's balloon has a bad page run {start}+{count}"
                ));
            }
            pages.restore_run(start, count);
        }
        state.take_pages(num_pages, actual);
        Ok(())
    }
}
