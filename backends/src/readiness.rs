//! Telling whoever started us that we accept connections: systemd's `sd_notify("READY=1")`
//! (when `NOTIFY_SOCKET` is set) and a pidfile written only at that point, so that "the
//! pidfile exists" means "connecting now works".

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

/// Why readiness could not be signalled.
#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    #[error("cannot write the pidfile {path}")]
    Pidfile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot notify systemd on NOTIFY_SOCKET={path}")]
    Notify {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Signal readiness: write `pidfile` (if any), then notify systemd (if `NOTIFY_SOCKET` is set).
pub fn notify_ready(pidfile: Option<&Path>) -> Result<(), ReadinessError> {
    prepare(pidfile)?.send()
}

/// Readiness made ready to send: the pidfile written and systemd's socket connected while
/// we can still reach them (a backend that gives up its privileges may no longer), the
/// `READY=1` itself sent by [`Readiness::send`] once it really serves.
pub struct Readiness {
    notify: Option<(UnixDatagram, String)>,
}

/// Write `pidfile` (if any) and connect to `NOTIFY_SOCKET` (if set).
pub fn prepare(pidfile: Option<&Path>) -> Result<Readiness, ReadinessError> {
    if let Some(path) = pidfile {
        write_pidfile(path)?;
    }
    let notify = match std::env::var_os("NOTIFY_SOCKET") {
        None => None,
        Some(socket) => {
            let socket = socket.to_string_lossy().into_owned();
            let sock = connect(&socket).map_err(|source| ReadinessError::Notify {
                path: socket.clone(),
                source,
            })?;
            Some((sock, socket))
        }
    };
    Ok(Readiness { notify })
}

impl Readiness {
    /// Tell systemd (or svctl's supervisor) `READY=1`.
    pub fn send(self) -> Result<(), ReadinessError> {
        if let Some((sock, path)) = self.notify {
            sock.send(b"READY=1")
                .map_err(|source| ReadinessError::Notify { path, source })?;
        }
        Ok(())
    }
}

/// Write our PID to `path` atomically (temporary file, then rename).
pub fn write_pidfile(path: &Path) -> Result<(), ReadinessError> {
    let err = |source| ReadinessError::Pidfile {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id())).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Remove the pidfile at exit (best effort).
pub fn remove_pidfile(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// A datagram socket connected to sd_notify's `socket`; `@name` is an abstract socket.
fn connect(socket: &str) -> std::io::Result<UnixDatagram> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.connect_addr(&addr)?;
    } else {
        sock.connect(socket)?;
    }
    Ok(sock)
}

/// Send one sd_notify datagram.
#[cfg(test)]
fn sd_notify(socket: &str, message: &str) -> std::io::Result<()> {
    connect(socket)?.send(message.as_bytes()).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_notify_reaches_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("sv-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        sd_notify(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 32];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let pidfile = dir.join("pid");
        write_pidfile(&pidfile).unwrap();
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(pid, std::process::id());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_pidfile_is_named_in_the_error() {
        let err = write_pidfile(Path::new("/nonexistent-dir/x.pid")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/x.pid"));
    }
}
