//! Where a migration goes or comes from: `tcp:HOST:PORT` or `unix:PATH` (Cloud
//! Hypervisor's and QEMU's spelling).

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use super::wire::Conn;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationUrl {
    Tcp(String),
    Unix(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("a migration address is tcp:HOST:PORT or unix:PATH, not {0:?}")]
    Form(String),
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {url}")]
    Listen {
        url: String,
        #[source]
        source: std::io::Error,
    },
}

impl std::str::FromStr for MigrationUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, UrlError> {
        let bad = || UrlError::Form(s.to_string());
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if !path.starts_with('/') {
                return Err(bad());
            }
            return Ok(MigrationUrl::Unix(PathBuf::from(path)));
        }
        let addr = s.strip_prefix("tcp:").ok_or_else(bad)?;
        let addr = addr.strip_prefix("//").unwrap_or(addr);
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(MigrationUrl::Tcp(addr.to_string()))
            }
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for MigrationUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrationUrl::Tcp(a) => write!(f, "tcp:{a}"),
            MigrationUrl::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// How long the source tries to reach a destination that is not listening yet.
const CONNECT_FOR: Duration = Duration::from_secs(5);

impl MigrationUrl {
    /// Connect (retrying for a few seconds: the destination may still be starting).
    pub fn connect(&self) -> Result<Conn, UrlError> {
        let err = |source| UrlError::Connect {
            url: self.to_string(),
            source,
        };
        let start = std::time::Instant::now();
        loop {
            let attempt = match self {
                MigrationUrl::Tcp(a) => a
                    .to_socket_addrs()
                    .and_then(|mut addrs| {
                        addrs.next().ok_or_else(|| {
                            std::io::Error::new(std::io::ErrorKind::NotFound, "no such host")
                        })
                    })
                    .and_then(|addr| TcpStream::connect_timeout(&addr, CONNECT_FOR))
                    .map(|s| {
                        let _ = s.set_nodelay(true);
                        Conn::Tcp(s)
                    }),
                MigrationUrl::Unix(p) => UnixStream::connect(p).map(Conn::Unix),
            };
            match attempt {
                Ok(c) => return Ok(c),
                Err(e) if start.elapsed() >= CONNECT_FOR => return Err(err(e)),
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && matches!(self, MigrationUrl::Tcp(_)) =>
                {
                    return Err(err(e))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Listen and take the first connection; a Unix socket is removed once it is taken.
    /// `listening` runs once the address is bound.
    pub fn accept_one(&self, listening: impl FnOnce()) -> Result<Conn, UrlError> {
        let err = |source| UrlError::Listen {
            url: self.to_string(),
            source,
        };
        match self {
            MigrationUrl::Tcp(a) => {
                let l = TcpListener::bind(a.as_str()).map_err(err)?;
                listening();
                tracing::info!("waiting for the migration stream on tcp:{a}");
                let (s, peer) = l.accept().map_err(err)?;
                tracing::info!(%peer, "migration stream connected");
                let _ = s.set_nodelay(true);
                Ok(Conn::Tcp(s))
            }
            MigrationUrl::Unix(p) => {
                let l = api::unix_socket::bind(p, Some(0o600))
                    .map_err(|e| err(std::io::Error::other(e.to_string())))?;
                listening();
                tracing::info!("waiting for the migration stream on unix:{}", p.display());
                let accepted = l.accept();
                let _ = std::fs::remove_file(p);
                Ok(Conn::Unix(accepted.map_err(err)?.0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_forms_parse_and_others_are_refused() {
        assert_eq!(
            "tcp:127.0.0.1:6000".parse::<MigrationUrl>().unwrap(),
            MigrationUrl::Tcp("127.0.0.1:6000".into())
        );
        assert_eq!(
            "tcp:[::1]:6000".parse::<MigrationUrl>().unwrap(),
            MigrationUrl::Tcp("[::1]:6000".into())
        );
        assert_eq!(
            "unix:/run/m.sock".parse::<MigrationUrl>().unwrap(),
            MigrationUrl::Unix("/run/m.sock".into())
        );
        for bad in [
            "tcp:host",
            "tcp::5",
            "tcp:h:99999",
            "unix:rel",
            "file:///x",
            "",
        ] {
            assert!(bad.parse::<MigrationUrl>().is_err(), "{bad}");
        }
    }
}
