//! The control socket: how the host (the vmm's API, `svctl setmem`/`dommemstat`, a person)
//! sets the balloon's target and reads the guest's statistics. One JSON object per line each
//! way on a Unix socket (mode 0600):
//!
//! ```text
//! {"op":"set-target","bytes":268435456}  -> {"ok":true,"target_bytes":268435456}
//! {"op":"info"}                          -> {"ok":true,"ram_bytes":…,"target_bytes":…,"balloon_bytes":…,"counters":{…}}
//! {"op":"stats","timeout_ms":2000}       -> {"ok":true,"stats":{"free_memory":…,…},"age_ms":0}
//! anything wrong                         -> {"ok":false,"error":"…"}
//! ```
//!
//! A stats request waits at most its timeout (default 2 s, at most 30 s) for the guest, so a
//! guest that does not answer cannot block the caller.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::state::BalloonState;

const MAX_TIMEOUT_MS: u64 = 30_000;

/// Serve the control socket at `path` on a thread of its own.
pub fn spawn(path: &Path, state: Arc<BalloonState>) -> io::Result<()> {
    let listener = backends::socket::bind_private(path)?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        if let Err(e) = serve(stream, &state) {
                            tracing::debug!("control connection ended: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("control socket: {e}"),
                }
            }
        })?;
    Ok(())
}

fn serve(stream: UnixStream, state: &BalloonState) -> io::Result<()> {
    // a client that stops reading or writing cannot hold the control thread for long
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        let reply = match serde_json::from_str::<Value>(&line?) {
            Ok(req) => handle(&req, state),
            Err(e) => error(format!("malformed request: {e}")),
        };
        writeln!(writer, "{reply}")?;
    }
    Ok(())
}

fn error(msg: impl Into<String>) -> Value {
    json!({"ok": false, "error": msg.into()})
}

/// Answer one request.
pub fn handle(req: &Value, state: &BalloonState) -> Value {
    match req.get("op").and_then(Value::as_str) {
        Some("set-target") => {
            let Some(bytes) = req.get("bytes").and_then(Value::as_u64) else {
                return error("set-target needs \"bytes\": a number");
            };
            match state.set_target(bytes) {
                Ok(()) => json!({"ok": true, "target_bytes": state.target()}),
                Err(e) => error(e.to_string()),
            }
        }
        Some("info") => {
            let c = &state.counters;
            let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            json!({
                "ok": true,
                "ram_bytes": state.ram.load(Ordering::Relaxed),
                "target_bytes": state.target(),
                "balloon_bytes": state.balloon_bytes(),
                "counters": {
                    "inflated_pages": n(&c.inflated_pages),
                    "deflated_pages": n(&c.deflated_pages),
                    "released_bytes": n(&c.released_bytes),
                    "reported_bytes": n(&c.reported_bytes),
                    "invalid": n(&c.invalid),
                    "duplicate": n(&c.duplicate),
                    "malformed_chains": n(&c.malformed_chains),
                },
            })
        }
        Some("stats") => {
            let ms = req
                .get("timeout_ms")
                .and_then(Value::as_u64)
                .unwrap_or(2000)
                .min(MAX_TIMEOUT_MS);
            match state.request_stats(Duration::from_millis(ms)) {
                Ok((values, age)) => {
                    json!({"ok": true, "stats": values, "age_ms": age.as_millis() as u64})
                }
                Err(e) => error(e.to_string()),
            }
        }
        Some(other) => error(format!("unknown op {other:?} (set-target, info, stats)")),
        None => error("a request needs \"op\""),
    }
}

/// Send one request to the control socket at `path` and return the reply.
pub fn request(path: &Path, req: &Value) -> io::Result<Value> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_millis(MAX_TIMEOUT_MS + 5000)))?;
    writeln!(stream, "{req}")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_and_answered() {
        let state = BalloonState::default();
        let r = handle(&json!({"op": "set-target", "bytes": 1}), &state);
        assert_eq!(r["ok"], false);
        assert!(r["error"].as_str().unwrap().contains("not known yet"));
        state.ram.store(1 << 30, Ordering::Relaxed);
        let r = handle(&json!({"op": "set-target", "bytes": 512u64 << 20}), &state);
        assert_eq!(r, json!({"ok": true, "target_bytes": 512u64 << 20}));
        let r = handle(&json!({"op": "info"}), &state);
        assert_eq!(r["target_bytes"], 512u64 << 20);
        assert_eq!(r["counters"]["invalid"], 0);
        let r = handle(&json!({"op": "stats", "timeout_ms": 10}), &state);
        assert_eq!(r["ok"], false);
        assert_eq!(handle(&json!({"op": "grow"}), &state)["ok"], false);
        assert_eq!(handle(&json!({"x": 1}), &state)["ok"], false);
        assert_eq!(handle(&json!({"op": "set-target"}), &state)["ok"], false);
    }
}
