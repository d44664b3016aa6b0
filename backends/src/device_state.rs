//! VHOST_USER_PROTOCOL_F_DEVICE_STATE for every backend: with its rings stopped, the
//! frontend hands a pipe with SET_DEVICE_STATE_FD, and the device's state goes out through it
//! (save, for a snapshot) or comes in (load, for a restore); CHECK_DEVICE_STATE then says
//! whether that worked. The pipe is written or read by a thread of its own: the frontend
//! reads (or writes) only once SET_DEVICE_STATE_FD is answered, so doing it inside the
//! message handler would deadlock. CHECK_DEVICE_STATE joins that thread and, for a load,
//! hands the state to the device.
//!
//! The state is a small JSON document, versioned as a whole so that a later release can read
//! it or refuse it by name:
//!
//! ```text
//! {"format":"splitvisor-device-state","version":1,"device":"blk","state":{…}}
//! ```
//!
//! What `state` holds is each device's ([`DeviceState`]): what a restore must check (the
//! same disk, the same MAC) or give back to a new process (the queue pairs the guest enabled,
//! the balloon's target).

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
pub use vhost::vhost_user::message::{VhostTransferStateDirection, VhostTransferStatePhase};

/// The document's `format`.
pub const FORMAT: &str = "splitvisor-device-state";
/// The document's `version`: a newer one is refused.
pub const VERSION: u64 = 1;
/// The largest state read (a disk's or NIC's is well under 1 KiB; a balloon's lists its pages
/// as runs).
pub const MAX_STATE: u64 = 64 << 20;

/// A device whose state crosses DEVICE_STATE transfers.
pub trait DeviceState: Send + Sync + 'static {
    /// The device's name in the document ("blk", "net", "balloon").
    fn kind(&self) -> &'static str;
    /// The state to save; an error when the device cannot be saved now.
    fn save_state(&self) -> Result<Value, String>;
    /// Check a saved state against this device and take what it must; an error names what
    /// does not match.
    fn load_state(&self, state: &Value) -> Result<(), String>;
}

/// The two `VhostUserBackend` methods of DEVICE_STATE for a backend that is a
/// [`DeviceState`] and keeps its [`Transfer`] in `self.$field`.
#[macro_export]
macro_rules! device_state_methods {
    ($field:ident) => {
        fn set_device_state_fd(
            &self,
            direction: $crate::device_state::VhostTransferStateDirection,
            phase: $crate::device_state::VhostTransferStatePhase,
            file: std::fs::File,
        ) -> std::io::Result<Option<std::fs::File>> {
            self.$field.start(self, direction, phase, file)
        }

        fn check_device_state(&self) -> std::io::Result<()> {
            self.$field.check(self)
        }
    };
}

/// How the thread moving the bytes ended; a load's gives the state it read.
type Moving = mpsc::Receiver<Result<Option<Value>, String>>;

/// How long CHECK_DEVICE_STATE waits for the transfer (a real one takes milliseconds: the
/// frontend checks only once it has moved all the bytes).
const CHECK_LIMIT: Duration = Duration::from_secs(3);

/// The transfer of one connection: at most one in progress.
#[derive(Default)]
pub struct Transfer {
    pending: Mutex<Option<Moving>>,
}

impl Transfer {
    /// SET_DEVICE_STATE_FD: start moving `device`'s state through `file` on a thread.
    pub fn start(
        &self,
        device: &dyn DeviceState,
        direction: VhostTransferStateDirection,
        phase: VhostTransferStatePhase,
        file: File,
    ) -> io::Result<Option<File>> {
        if phase != VhostTransferStatePhase::STOPPED {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "device state moves only with the device stopped",
            ));
        }
        let mut pending = self.pending.lock().map_err(|_| lock_err())?;
        // a transfer never checked: its outcome is moot (its thread ends with its pipe)
        *pending = None;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new().name("device-state".into());
        if direction == VhostTransferStateDirection::SAVE {
            // taken now, while the rings are known stopped; written by the thread
            let doc = save_document(device)?;
            thread.spawn(move || tx.send(write_all(file, &doc).map(|()| None)))?;
        } else {
            let kind = device.kind();
            thread.spawn(move || tx.send(read_document(kind, file).map(Some)))?;
        }
        *pending = Some(rx);
        Ok(None)
    }

    /// CHECK_DEVICE_STATE: wait for the transfer and report how it ended; a loaded state is
    /// checked and taken by `device` here.
    pub fn check(&self, device: &dyn DeviceState) -> io::Result<()> {
        let moving = self.pending.lock().map_err(|_| lock_err())?.take();
        let outcome = match moving {
            None => Err("no device state transfer was started".to_string()),
            // a frontend that never closes its end of the pipe cannot hang the handler
            Some(rx) => rx.recv_timeout(CHECK_LIMIT).unwrap_or_else(|_| {
                Err(format!(
                    "the transfer did not end within {CHECK_LIMIT:?} (the frontend kept its \
                     end of the pipe open)"
                ))
            }),
        }
        .and_then(|loaded| match loaded {
            Some(state) => device.load_state(&state),
            None => Ok(()),
        });
        outcome.map_err(|e| {
            // the frontend learns only that it failed: the reason is logged here
            tracing::error!("device state: {e}");
            io::Error::other(e)
        })
    }
}

fn lock_err() -> io::Error {
    io::Error::other("device state lock poisoned")
}

/// The whole document for `device`, as bytes.
pub fn save_document(device: &dyn DeviceState) -> io::Result<Vec<u8>> {
    let state = device.save_state().map_err(io::Error::other)?;
    let doc =
        json!({"format": FORMAT, "version": VERSION, "device": device.kind(), "state": state});
    Ok(doc.to_string().into_bytes())
}

fn write_all(mut file: File, doc: &[u8]) -> Result<(), String> {
    file.write_all(doc)
        .map_err(|e| format!("cannot write the saved state: {e}"))
}

fn read_document(kind: &str, file: File) -> Result<Value, String> {
    let mut bytes = Vec::new();
    file.take(MAX_STATE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the saved state: {e}"))?;
    if bytes.len() as u64 > MAX_STATE {
        return Err(format!("the saved state is larger than {MAX_STATE} bytes"));
    }
    parse_document(kind, &bytes)
}

/// Check a document's envelope; its `state`.
pub fn parse_document(kind: &str, bytes: &[u8]) -> Result<Value, String> {
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the saved state is malformed: {e}"))?;
    if doc["format"] != FORMAT {
        return Err(format!("the saved state is not a {FORMAT} document"));
    }
    let version = doc["version"].as_u64().unwrap_or(0);
    if version == 0 || version > VERSION {
        return Err(format!(
            "the saved state has format version {version}; this backend reads 1 to {VERSION}"
        ));
    }
    if doc["device"] != kind {
        return Err(format!(
            "the saved state is a {} device's, this backend serves a {kind} device",
            doc["device"]
        ));
    }
    Ok(doc["state"].clone())
}

/// `state[key]` as what `get` makes of it, or an error naming the key.
pub fn field<T>(state: &Value, key: &str, get: impl Fn(&Value) -> Option<T>) -> Result<T, String> {
    get(&state[key]).ok_or_else(|| format!("the saved state has no valid \"{key}\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[derive(Default)]
    struct Counter(AtomicU64);

    impl DeviceState for Counter {
        fn kind(&self) -> &'static str {
            "counter"
        }
        fn save_state(&self) -> Result<Value, String> {
            Ok(json!({"n": self.0.load(Ordering::Relaxed)}))
        }
        fn load_state(&self, state: &Value) -> Result<(), String> {
            let n = field(state, "n", Value::as_u64)?;
            self.0.store(n, Ordering::Relaxed);
            Ok(())
        }
    }

    fn pipe() -> (File, File) {
        let (r, w) = std::io::pipe().unwrap();
        (
            File::from(std::os::fd::OwnedFd::from(r)),
            File::from(std::os::fd::OwnedFd::from(w)),
        )
    }

    #[test]
    fn a_state_saved_through_a_pipe_loads_into_another_device() {
        let (from, to) = (Arc::new(Counter::default()), Arc::new(Counter::default()));
        from.0.store(42, Ordering::Relaxed);
        let (save, load) = (Transfer::default(), Transfer::default());
        let (mut r, w) = pipe();
        save.start(
            &*from,
            VhostTransferStateDirection::SAVE,
            VhostTransferStatePhase::STOPPED,
            w,
        )
        .unwrap();
        let mut doc = Vec::new();
        r.read_to_end(&mut doc).unwrap();
        save.check(&*from).unwrap();
        let (r, mut w) = pipe();
        load.start(
            &*to,
            VhostTransferStateDirection::LOAD,
            VhostTransferStatePhase::STOPPED,
            r,
        )
        .unwrap();
        w.write_all(&doc).unwrap();
        drop(w);
        load.check(&*to).unwrap();
        assert_eq!(to.0.load(Ordering::Relaxed), 42);
    }

    #[test]
    fn foreign_newer_and_malformed_states_are_refused_by_name() {
        let cases = [
            (
                json!({"format": FORMAT, "version": 2, "device": "counter", "state": {}}),
                "format version 2",
            ),
            (
                json!({"format": FORMAT, "version": 1, "device": "blk", "state": {}}),
                "a \"blk\" device's",
            ),
            (
                json!({"format": "x", "version": 1}),
                "not a splitvisor-device-state",
            ),
            (
                json!({"format": FORMAT, "version": 1, "device": "counter", "state": {}}),
                "no valid \"n\"",
            ),
        ];
        for (doc, want) in cases {
            let load = Transfer::default();
            let (r, mut w) = pipe();
            let dev = Arc::new(Counter::default());
            load.start(
                &*dev,
                VhostTransferStateDirection::LOAD,
                VhostTransferStatePhase::STOPPED,
                r,
            )
            .unwrap();
            w.write_all(doc.to_string().as_bytes()).unwrap();
            drop(w);
            let err = load.check(&*dev).unwrap_err().to_string();
            assert!(err.contains(want), "{err} (wanted {want})");
        }
        let dev = Counter::default();
        assert!(Transfer::default().check(&dev).is_err(), "nothing started");
        // a frontend that keeps the write end open: CHECK answers, with an error, in time
        let load = Transfer::default();
        let (r, _held) = pipe();
        load.start(
            &dev,
            VhostTransferStateDirection::LOAD,
            VhostTransferStatePhase::STOPPED,
            r,
        )
        .unwrap();
        let t = std::time::Instant::now();
        let err = load.check(&dev).unwrap_err().to_string();
        assert!(err.contains("did not end"), "{err}");
        assert!(t.elapsed() < CHECK_LIMIT * 2);
    }
}
