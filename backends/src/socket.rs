//! Where a backend's vhost-user listening socket comes from: a path we bind, a descriptor our
//! parent bound for us (`--socket-fd N`), or systemd socket activation (`LISTEN_FDS`).

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use vhost::vhost_user::Listener;

/// Bind a Unix socket only its owner may use (mode 0600) at `path` (replacing only a stale
/// socket of ours: [`api::unix_socket`]): for the small side sockets backends serve (stats,
/// control).
pub fn bind_private(path: &std::path::Path) -> std::io::Result<UnixListener> {
    Ok(api::unix_socket::bind(path, Some(0o600))?)
}

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Where the vhost-user socket comes from: the socket part of a backend's
/// [`DaemonConfig`](api::backend::DaemonConfig).
#[derive(Debug, Clone)]
pub struct SocketArgs {
    /// Path of the vhost-user socket to create and listen on.
    pub socket: Option<PathBuf>,
    /// An inherited listening socket to use instead.
    pub socket_fd: Option<RawFd>,
}

impl From<&api::backend::DaemonConfig> for SocketArgs {
    fn from(d: &api::backend::DaemonConfig) -> SocketArgs {
        SocketArgs {
            socket: d.socket.clone(),
            socket_fd: d.socket_fd,
        }
    }
}

/// Why the listening socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot listen on the vhost-user socket")]
    Bind(#[source] api::unix_socket::BindError),
    #[error("cannot listen on the vhost-user socket {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: vhost::vhost_user::Error,
    },
    #[error("no vhost-user socket: give --socket PATH or --socket-fd N (or \"socket\" in the config file), or start under systemd socket activation")]
    NoSocket,
    #[error("descriptor {0} is not an open listening Unix socket")]
    NotAListeningSocket(RawFd),
}

/// Where the listener came from, for the log line that says where we listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSource {
    Path(PathBuf),
    InheritedFd(RawFd),
    Systemd(RawFd),
}

impl std::fmt::Display for SocketSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketSource::Path(p) => write!(f, "{}", p.display()),
            SocketSource::InheritedFd(fd) => write!(f, "inherited descriptor {fd}"),
            SocketSource::Systemd(fd) => write!(f, "systemd socket (descriptor {fd})"),
        }
    }
}

impl SocketArgs {
    /// Which socket these options (and the environment) select.
    pub fn source(&self) -> Option<SocketSource> {
        if let Some(fd) = self.socket_fd {
            return Some(SocketSource::InheritedFd(fd));
        }
        if let Some(fd) = systemd_listen_fd() {
            return Some(SocketSource::Systemd(fd));
        }
        self.socket.clone().map(SocketSource::Path)
    }

    /// Open the listener. A path is bound now, so connections queue from here on even before
    /// the first accept.
    pub fn listen(&self) -> Result<(Listener, SocketSource), SocketError> {
        let source = self.source().ok_or(SocketError::NoSocket)?;
        let listener = match &source {
            SocketSource::Path(path) => {
                // vhost's Listener removes the file when dropped; it must not replace what is there
                api::unix_socket::clear_stale(path).map_err(SocketError::Bind)?;
                Listener::new(path, false).map_err(|source| SocketError::Listen {
                    path: path.clone(),
                    source,
                })?
            }
            SocketSource::InheritedFd(fd) | SocketSource::Systemd(fd) => {
                Listener::from(adopt_listening_socket(*fd)?)
            }
        };
        Ok((listener, source))
    }
}

/// The descriptor systemd passed us, if `LISTEN_PID` names this process and `LISTEN_FDS` ≥ 1.
fn systemd_listen_fd() -> Option<RawFd> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    (pid == std::process::id() && fds >= 1).then_some(LISTEN_FDS_START)
}

/// Take ownership of `fd` after checking it is a listening Unix stream socket.
fn adopt_listening_socket(fd: RawFd) -> Result<UnixListener, SocketError> {
    if fd < 0 || !is_listening_unix_socket(fd) {
        return Err(SocketError::NotAListeningSocket(fd));
    }
    // SAFETY: `fd` is an open listening socket (checked above) that was handed to this process
    // to own; nothing else in the process uses it, so the listener may close it on drop.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    // inherited sockets may come without close-on-exec
    let _ = set_cloexec(fd);
    Ok(listener)
}

fn sockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, a c_int we own; a bad
    // descriptor just returns an error.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

fn is_listening_unix_socket(fd: RawFd) -> bool {
    sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN) == Some(libc::AF_UNIX)
        && sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && sockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1)
}

fn set_cloexec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only read and set the descriptor's flags.
    let rc = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC)
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn an_inherited_listening_socket_is_adopted() {
        let dir = std::env::temp_dir().join(format!("sv-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.sock");
        let fd = UnixListener::bind(&path).unwrap().into_raw_fd();
        let args = SocketArgs {
            socket: None,
            socket_fd: Some(fd),
        };
        let (_l, source) = args.listen().unwrap();
        assert_eq!(source, SocketSource::InheritedFd(fd));
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_descriptor_that_is_not_a_listening_socket_is_refused() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let args = SocketArgs {
            socket: None,
            socket_fd: Some(fd),
        };
        let err = args.listen().err().unwrap();
        assert!(err
            .to_string()
            .contains("not an open listening Unix socket"));
        let args = SocketArgs {
            socket: None,
            socket_fd: Some(987),
        };
        assert!(args.listen().is_err());
    }
}
