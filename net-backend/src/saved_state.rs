//! The NIC's part of a snapshot (vhost-user DEVICE_STATE, `backends::device_state`): its MAC,
//! which a restore must find again (the guest keeps the one it read), and the queue pairs the
//! driver enabled on the control queue, which a new process takes back (the driver does not
//! ask again). Offloads are features, set again by the frontend's SET_FEATURES.

use std::sync::atomic::Ordering;

use backends::device_state::{field, DeviceState};
use serde_json::{json, Value};

use crate::vhu_net::VhostUserNet;

pub(crate) fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl DeviceState for VhostUserNet {
    fn kind(&self) -> &'static str {
        "net"
    }

    fn save_state(&self) -> Result<Value, String> {
        Ok(json!({
            "mac": mac_text(&self.config().mac),
            "pairs": self.pairs(),
            "pairs_in_use": self.pairs_in_use.load(Ordering::Relaxed),
        }))
    }

    fn load_state(&self, state: &Value) -> Result<(), String> {
        let mac = field(state, "mac", |v| v.as_str().map(String::from))?;
        let ours = mac_text(&self.config().mac);
        if mac != ours {
            return Err(format!(
                "the snapshot's NIC had MAC {mac}; this backend serves {ours} (start it with \
                 --mac {mac})"
            ));
        }
        let in_use = field(state, "pairs_in_use", Value::as_u64)? as usize;
        if in_use == 0 || in_use > self.pairs() {
            return Err(format!(
                "the snapshot's NIC had {in_use} queue pair(s) in use; this backend has {}",
                self.pairs()
            ));
        }
        self.pairs_in_use.store(in_use, Ordering::Relaxed);
        tracing::info!(pairs = in_use, "queue pairs in use, from the snapshot");
        // the NIC is here now (a migration or a restore): tell the network
        crate::announce::start(self.tap.clone(), self.config().mac);
        Ok(())
    }
}
