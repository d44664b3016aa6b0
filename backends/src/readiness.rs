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
    if let Some(path) = pidfile {
        write_pidfile(path)?;
    }
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
        let socket = socket.to_string_lossy().into_owned();
        sd_notify(&socket, "READY=1").map_err(|source| ReadinessError::Notify {
            path: socket.clone(),
            source,
        })?;
    }
    Ok(())
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

/// Send one sd_notify datagram; `@name` is an abstract socket.
fn sd_notify(socket: &str, message: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(message.as_bytes(), &addr)?;
    } else {
        sock.send_to(message.as_bytes(), socket)?;
    }
    Ok(())
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
