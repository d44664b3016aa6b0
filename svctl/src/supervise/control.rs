//! The supervisor's control socket, `<runtime>/supervisor.sock`: `svctl` asks the running
//! supervisor for what only it can do (a planned backend restart must not look like a backend
//! that died). One JSON request line per connection, one JSON reply line.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::domain::{Disk, Nic};

/// How long the supervisor waits for a client's whole request line.
const REQUEST_LIMIT: Duration = Duration::from_secs(2);
/// The longest request or reply line (real ones are under 1 KiB).
const MAX_LINE: usize = 64 << 10;

/// Why a request to the supervisor failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the supervisor at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the supervisor did not answer")]
    Exchange(#[source] api::line::ExchangeError),
    #[error("the supervisor's answer cannot be read")]
    Reply(#[source] serde_json::Error),
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: api::unix_socket::BindError,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case")]
pub enum Request {
    /// Stop a backend (SIGTERM: it finishes its in-flight requests), start it again with the
    /// same arguments on the same socket.
    BackendRestart { device: String },
    /// Start the backend of a disk being attached (`target` is its name for people) and add
    /// it to the live definition; the vmm is told by `svctl` (`vm.add-device`).
    AttachDisk { target: String, disk: Disk },
    /// Make the tap of a NIC being attached, start its backend, add it to the live definition.
    AttachNic { nic: Nic },
    /// Stop the backend of an attached device the guest has let go of (or that the vmm could
    /// not add) and drop it from the live definition.
    Detach { backend: String },
}

/// A device's backend, started for `attach-disk` / `attach-interface`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    /// Its name in the runtime dir and its id in the vmm (`blk1`).
    pub backend: String,
    pub pid: u32,
    /// What `vm.add-device` is given.
    pub device: String,
    /// A NIC's tap and MAC.
    #[serde(default)]
    pub tap: Option<String>,
    #[serde(default)]
    pub mac: Option<String>,
}

/// What a planned restart did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartReport {
    pub device: String,
    pub old_pid: u32,
    pub new_pid: u32,
    /// SIGTERM to the old process's exit.
    pub drain_ms: u64,
    /// SIGTERM to the new process's READY=1.
    pub restart_ms: u64,
    /// The old process did not exit within the drain limit and was killed (the new one
    /// resubmits what it left in flight).
    pub killed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Restarted(RestartReport),
    Attached(Attached),
    /// The backend of a detached device has ended (its PID).
    Detached(u32),
    Error(String),
}

/// The supervisor's end: a non-blocking listener.
pub struct ControlSocket {
    listener: UnixListener,
}

impl ControlSocket {
    pub fn bind(path: &Path) -> Result<ControlSocket, ControlError> {
        let bind_err = |source| ControlError::Bind {
            path: path.into(),
            source,
        };
        let listener = api::unix_socket::bind(path, Some(0o600)).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(|source| {
            bind_err(api::unix_socket::BindError::Bind {
                path: path.into(),
                source,
            })
        })?;
        Ok(ControlSocket { listener })
    }

    /// For `poll`: readable when a client waits.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// The next client's request, if one waits (a malformed one is answered here).
    pub fn next(&self) -> Option<(UnixStream, Request)> {
        let (stream, _) = self.listener.accept().ok()?;
        let deadline = Instant::now() + REQUEST_LIMIT;
        let read = match stream.set_nonblocking(false) {
            Ok(()) => api::line::read_reply(&stream, deadline, MAX_LINE),
            Err(e) => Err(api::line::LineError::Io(e)),
        };
        let line = match read {
            Ok(line) => line,
            Err(e) => {
                tracing::warn!("control socket: no request read: {e}");
                return None;
            }
        };
        match serde_json::from_slice(&line) {
            Ok(req) => Some((stream, req)),
            Err(e) => {
                answer(stream, &Reply::Error(format!("bad request: {e}")));
                None
            }
        }
    }
}

/// Send `reply` to the client (that may have given up: then it is dropped).
pub fn answer(mut stream: UnixStream, reply: &Reply) {
    let text = serde_json::to_string(reply).unwrap_or_default();
    if let Err(e) = stream.write_all(format!("{text}\n").as_bytes()) {
        tracing::warn!("control socket: the client went away before the reply: {e}");
    }
}

/// Ask the supervisor listening at `path`; wait up to `limit` for its reply.
pub fn request(path: &Path, req: &Request, limit: Duration) -> Result<Reply, ControlError> {
    let line = serde_json::to_string(req).map_err(ControlError::Reply)?;
    let reply = api::line::exchange(path, &line, limit, MAX_LINE).map_err(|e| match e {
        api::line::ExchangeError::Connect(source) => ControlError::Connect {
            path: path.into(),
            source,
        },
        e => ControlError::Exchange(e),
    })?;
    serde_json::from_slice(&reply).map_err(ControlError::Reply)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::time::Instant;

    use super::super::TempRuntime;
    use super::*;
    use crate::process::poll_readable;

    /// Serve one client on `sock` as the supervisor's loop does (poll, then `next`).
    fn serve_one(sock: &ControlSocket, reply: impl FnOnce(Request) -> Reply) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let _ = poll_readable(&[sock.fd()], Duration::from_millis(100));
            if let Some((stream, req)) = sock.next() {
                answer(stream, &reply(req));
                return true;
            }
        }
        false
    }

    #[test]
    fn a_request_reaches_the_supervisor_and_its_reply_comes_back() {
        let tmp = TempRuntime::new();
        let path = tmp.0.dir.join("supervisor.sock");
        let sock = ControlSocket::bind(&path).expect("bound");
        let report = RestartReport {
            device: "blk0".into(),
            old_pid: 10,
            new_pid: 11,
            drain_ms: 3,
            restart_ms: 40,
            killed: false,
        };
        let sent = report.clone();
        let client = std::thread::spawn(move || {
            let req = Request::BackendRestart {
                device: "blk0".into(),
            };
            request(&path, &req, Duration::from_secs(10))
        });
        let mut got = None;
        assert!(serve_one(&sock, |req| {
            got = Some(req);
            Reply::Restarted(sent)
        }));
        assert_eq!(
            got,
            Some(Request::BackendRestart {
                device: "blk0".into()
            })
        );
        let reply = client.join().expect("client").expect("reply");
        assert_eq!(reply, Reply::Restarted(report));
    }

    #[test]
    fn a_malformed_request_gets_an_error_reply() {
        let tmp = TempRuntime::new();
        let path = tmp.0.dir.join("supervisor.sock");
        let sock = ControlSocket::bind(&path).expect("bound");
        let client = std::thread::spawn(move || {
            let mut s = UnixStream::connect(&path).expect("connect");
            s.write_all(b"{\"verb\": \"reboot_host\"}\n").expect("send");
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).expect("reply");
            line
        });
        let start = Instant::now();
        while !client.is_finished() && start.elapsed() < Duration::from_secs(10) {
            let _ = poll_readable(&[sock.fd()], Duration::from_millis(100));
            assert!(sock.next().is_none(), "a bad request was handed on");
        }
        let line = client.join().expect("client");
        let reply: Reply = serde_json::from_str(&line).expect("a reply");
        assert!(
            matches!(&reply, Reply::Error(e) if e.starts_with("bad request: unknown variant `reboot_host`")),
            "{reply:?}"
        );
    }

    #[test]
    fn no_supervisor_is_an_error_naming_the_socket() {
        let tmp = TempRuntime::new();
        let path = tmp.0.dir.join("supervisor.sock");
        let req = Request::BackendRestart {
            device: "blk0".into(),
        };
        let err = request(&path, &req, Duration::from_secs(1)).expect_err("nobody listens");
        assert_eq!(
            err.to_string(),
            format!("cannot reach the supervisor at {}", path.display())
        );
    }
}
