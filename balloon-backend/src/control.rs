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
//! guest that does not answer cannot block the caller. The socket itself (clients, line
//! limits, timeouts) is `backends::control_socket`.

use std::io;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub use backends::control_socket::{bind, error, LINE_TIMEOUT, MAX_CLIENTS, MAX_LINE};
use serde_json::{json, Value};

use crate::state::BalloonState;

const MAX_TIMEOUT_MS: u64 = 30_000;

/// Serve the control socket at `path` on a thread of its own.
pub fn spawn(path: &Path, state: Arc<BalloonState>) -> io::Result<()> {
    serve_listener(bind(path)?, state)
}

/// Serve `listener`'s clients on a thread of its own.
pub fn serve_listener(listener: UnixListener, state: Arc<BalloonState>) -> io::Result<()> {
    backends::control_socket::serve_listener(listener, Arc::new(move |req| handle(req, &state)))
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

/// A request to the control socket (the client side lives with the backend's contract).
pub use api::backend::balloon::control_request as request;

/// How long to wait for the reply to a request whose stats timeout is `stats_ms`.
pub fn reply_timeout(stats_ms: u64) -> Duration {
    Duration::from_millis(stats_ms.min(MAX_TIMEOUT_MS) + 5000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

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

    /// A control socket serving a fresh state at a path of its own.
    fn serving(tag: &str) -> (std::path::PathBuf, Arc<BalloonState>) {
        let dir = std::env::temp_dir().join(format!("sv-ctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        let state = Arc::new(BalloonState::default());
        spawn(&path, state.clone()).unwrap();
        (path, state)
    }

    /// Send `bytes` (from a thread: the server may close before taking them all) and read the
    /// reply line, waiting at most `wait`.
    fn exchange(path: &Path, bytes: Vec<u8>, wait: Duration) -> io::Result<String> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(wait))?;
        let mut writer = stream.try_clone()?;
        let sender = std::thread::spawn(move || {
            let _ = writer.write_all(&bytes);
        });
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        let _ = sender.join();
        Ok(line)
    }

    #[test]
    fn a_silent_client_does_not_delay_another() {
        let (path, _state) = serving("silent");
        let _silent = UnixStream::connect(&path).unwrap();
        let _half = UnixStream::connect(&path).unwrap();
        (&_half).write_all(b"{\"op\":").unwrap();
        let started = Instant::now();
        let reply = exchange(
            &path,
            b"{\"op\":\"info\"}\n".to_vec(),
            Duration::from_secs(2),
        )
        .expect("no answer within 2 s while another client sends nothing");
        assert!(reply.contains("\"ok\":true"), "{reply}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn an_over_long_line_gets_an_error_and_the_connection_closes() {
        let (path, _state) = serving("long");
        // 1 MiB and no end of line: refused once 64 KiB have come, without waiting for more
        let reply = exchange(&path, vec![b' '; 1 << 20], Duration::from_secs(3))
            .expect("no answer within 3 s to an over-long line");
        let v: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(v["ok"], false);
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("longer than 65536 bytes"),
            "{v}"
        );
        // a request just under the limit is still served
        let mut fine = format!("{{\"op\":\"info\"}}{}", " ".repeat(MAX_LINE - 20)).into_bytes();
        fine.push(b'\n');
        let reply = exchange(&path, fine, Duration::from_secs(3)).unwrap();
        assert!(reply.contains("\"ok\":true"), "{reply}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn clients_beyond_the_cap_are_turned_away_at_once() {
        let (path, _state) = serving("cap");
        let silent: Vec<_> = (0..MAX_CLIENTS)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let reply = exchange(
            &path,
            b"{\"op\":\"info\"}\n".to_vec(),
            Duration::from_secs(2),
        )
        .expect("no answer within 2 s");
        assert!(reply.contains("too many"), "{reply}");
        drop(silent);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_client_that_does_not_finish_its_line_in_time_is_told_so() {
        let (path, _state) = serving("slow");
        let started = Instant::now();
        let reply = exchange(
            &path,
            b"{\"op\":".to_vec(),
            LINE_TIMEOUT + Duration::from_secs(3),
        )
        .expect("no answer to an unfinished line");
        let v: Value = serde_json::from_str(&reply).unwrap();
        assert!(v["error"].as_str().unwrap().contains("within"), "{v}");
        let took = started.elapsed();
        assert!(
            took >= LINE_TIMEOUT && took < LINE_TIMEOUT + Duration::from_secs(2),
            "{took:?}"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// A killed daemon leaves its control socket file behind, with nobody listening on it:
    /// the next daemon serves on the same path (svctl and the vmm know only that path).
    #[test]
    fn a_control_socket_left_by_a_killed_daemon_is_served_again() {
        let dir = std::env::temp_dir().join(format!("sv-ctl-stale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        // the killed process's socket: closed by the kernel, the file left
        drop(backends::socket::bind_private(&path).unwrap());
        assert!(path.exists());
        assert!(UnixStream::connect(&path).is_err(), "nobody listens");

        let state = Arc::new(BalloonState::default());
        state.ram.store(1 << 30, Ordering::Relaxed);
        spawn(&path, state).expect("the stale socket is replaced");
        let req = json!({"op": "set-target", "bytes": 512u64 << 20});
        let reply = request(&path, &req, reply_timeout(0)).unwrap();
        assert_eq!(reply["target_bytes"], 512u64 << 20, "{reply}");
        // while it serves, a second daemon on the path is refused, not given the path
        let second = spawn(&path, Arc::new(BalloonState::default()));
        assert_eq!(second.unwrap_err().kind(), io::ErrorKind::AddrInUse);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
