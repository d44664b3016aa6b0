//! A JSON control socket (one object per line each way, on a Unix socket of mode 0600), as
//! the balloon and blk backends serve it: clients are served at the same time (a thread
//! each, at most [`MAX_CLIENTS`]; one more is told to come back later), and each request
//! line must arrive whole within [`LINE_TIMEOUT`] and be at most [`MAX_LINE`] bytes (else an
//! error reply and the connection is closed), so no client can hold up another. What a
//! request does is the backend's handler.

use std::io::{self, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::line::{self, LineError};
use serde_json::{json, Value};

/// Answers one request object.
pub type Handler = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

/// The longest request line (a real request is well under 100 bytes).
pub const MAX_LINE: usize = 64 << 10;
/// How long a client has to send a whole request line (counted from the connection, or from
/// the previous reply).
pub const LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at once.
pub const MAX_CLIENTS: usize = 16;

/// Serve the control socket at `path` on a thread of its own.
pub fn spawn(path: &Path, handler: Handler) -> io::Result<()> {
    serve_listener(bind(path)?, handler)
}

/// Bind the control socket at `path` (private to our user), to [`serve_listener`] later.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    crate::socket::bind_private(path)
}

/// Serve `listener`'s clients on a thread of its own.
pub fn serve_listener(listener: UnixListener, handler: Handler) -> io::Result<()> {
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || accept(listener, handler))?;
    Ok(())
}

/// One connection's claim on a [`MAX_CLIENTS`] slot, given back when it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn accept(listener: UnixListener, handler: Handler) {
    let clients = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("control socket: {e}");
                continue;
            }
        };
        if clients.fetch_add(1, Ordering::Relaxed) >= MAX_CLIENTS {
            clients.fetch_sub(1, Ordering::Relaxed);
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let msg = format!("too many control connections (at most {MAX_CLIENTS}); try again");
            let _ = writeln!(stream, "{}", error(msg));
            continue;
        }
        let (slot, handler) = (Slot(clients.clone()), handler.clone());
        let spawned = std::thread::Builder::new()
            .name("control-client".into())
            .spawn(move || {
                let _slot = slot;
                if let Err(e) = serve(stream, &handler) {
                    tracing::debug!("control connection ended: {e}");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("control socket: no thread for a client: {e}");
        }
    }
}

fn serve(stream: UnixStream, handler: &Handler) -> io::Result<()> {
    // a client that stops reading cannot hold its thread for long either
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let reply = match line::read_line(&mut reader, Instant::now() + LINE_TIMEOUT, MAX_LINE) {
            Ok(None) => return Ok(()),
            Ok(Some(line)) => match serde_json::from_slice::<Value>(&line) {
                Ok(req) => handler(&req),
                Err(e) => error(format!("malformed request: {e}")),
            },
            Err(LineError::Io(e)) => return Err(e),
            Err(LineError::TimedOut) => {
                let secs = LINE_TIMEOUT.as_secs();
                writeln!(
                    writer,
                    "{}",
                    error(format!("no complete request line within {secs} s"))
                )?;
                return Ok(());
            }
            Err(e) => {
                // the error, then the connection is closed
                writeln!(writer, "{}", error(format!("request: {e}")))?;
                return Ok(());
            }
        };
        writeln!(writer, "{reply}")?;
    }
}

/// The reply to a request that failed.
pub fn error(msg: impl Into<String>) -> Value {
    json!({"ok": false, "error": msg.into()})
}
