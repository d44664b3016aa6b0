//! The migration stream: a greeting, then frames, each `kind u8 | body length u64 | body`
//! (integers little-endian), over TCP or a Unix socket. docs/migration.md has the order in
//! which they come.
//!
//! ```text
//! source → destination                      destination → source
//! Hello  magic "SVMIGRAT", version u32
//! Config the VM's configuration (JSON, with the RAM's size and pages)
//!                                           Accepted  its RAM is made: send it
//! MemFd  (local only) guest RAM's file, by SCM_RIGHTS
//! Ram    offset u64 | bytes  (memfd offsets; repeated)
//! State  the state sections (snapshot/format.rs)
//! Released  the source has let go of the backends
//!                                           Ready    the VM is built, paused
//! Commit the source is done
//!                                           Running  the VM runs here now
//!                                           Failed   why (UTF-8); either side may send it
//! ```

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// The first bytes of every migration stream.
pub const MAGIC: [u8; 8] = *b"SVMIGRAT";
/// The stream's layout. A destination refuses a newer one.
pub const VERSION: u32 = 1;
/// The largest body a frame may have (a RAM frame carries at most 2 MiB; the state of 254
/// vCPUs is far below this).
pub const MAX_BODY: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the migration connection failed")]
    Io(#[from] io::Error),
    #[error("not a splitvisor migration stream (no {:?} greeting)", String::from_utf8_lossy(&MAGIC))]
    BadMagic,
    #[error(
        "the source speaks migration stream version {0}; this splitvisor reads up to {VERSION}"
    )]
    NewerVersion(u32),
    #[error("unknown frame kind {0} in the migration stream")]
    UnknownKind(u8),
    #[error("a {kind:?} frame of {len} bytes (at most {MAX_BODY})")]
    TooLong { kind: Kind, len: u64 },
    #[error("expected a {want:?} frame, got {got:?}")]
    Unexpected { want: &'static str, got: Kind },
    #[error("the peer failed: {0}")]
    PeerFailed(String),
    #[error("a local migration needs a unix: connection (the RAM's file is handed over)")]
    NotUnix,
    #[error("the source sent no guest RAM file")]
    NoMemFd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Config = 1,
    MemFd = 2,
    Ram = 3,
    State = 4,
    Released = 5,
    Ready = 6,
    Commit = 7,
    Running = 8,
    Failed = 9,
    Accepted = 10,
}

impl Kind {
    fn from_u8(k: u8) -> Result<Kind, WireError> {
        Ok(match k {
            1 => Kind::Config,
            2 => Kind::MemFd,
            3 => Kind::Ram,
            4 => Kind::State,
            5 => Kind::Released,
            6 => Kind::Ready,
            7 => Kind::Commit,
            8 => Kind::Running,
            9 => Kind::Failed,
            10 => Kind::Accepted,
            k => return Err(WireError::UnknownKind(k)),
        })
    }
}

/// One connection, TCP or Unix.
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A frame read: its kind, body, and the file it carried (MemFd).
pub struct Frame {
    pub kind: Kind,
    pub body: Vec<u8>,
    pub file: Option<std::fs::File>,
}

impl Conn {
    pub fn set_timeout(&self, t: Option<std::time::Duration>) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(t).and(s.set_write_timeout(t)),
            Conn::Unix(s) => s.set_read_timeout(t).and(s.set_write_timeout(t)),
        }
    }

    /// Close both directions (a blocked read on another handle returns).
    pub fn shutdown(&self) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }

    pub fn send_hello(&mut self) -> Result<(), WireError> {
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&VERSION.to_le_bytes());
        self.write_all(&hello)?;
        Ok(())
    }

    pub fn read_hello(&mut self) -> Result<(), WireError> {
        let mut hello = [0u8; 12];
        self.read_exact(&mut hello)?;
        if hello[..8] != MAGIC {
            return Err(WireError::BadMagic);
        }
        let version = u32::from_le_bytes(hello[8..].try_into().unwrap_or_default());
        if version > VERSION {
            return Err(WireError::NewerVersion(version));
        }
        Ok(())
    }

    pub fn send(&mut self, kind: Kind, body: &[u8]) -> Result<(), WireError> {
        self.send_parts(kind, &[body])
    }

    /// One frame whose body is `parts` one after the other.
    pub fn send_parts(&mut self, kind: Kind, parts: &[&[u8]]) -> Result<(), WireError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut head = [0u8; 9];
        head[0] = kind as u8;
        head[1..].copy_from_slice(&(len as u64).to_le_bytes());
        self.write_all(&head)?;
        for p in parts {
            self.write_all(p)?;
        }
        Ok(())
    }

    /// A MemFd frame: an empty body with `fd` attached (Unix only).
    pub fn send_fd(&mut self, fd: RawFd) -> Result<(), WireError> {
        let Conn::Unix(s) = self else {
            return Err(WireError::NotUnix);
        };
        let mut head = [0u8; 9];
        head[0] = Kind::MemFd as u8;
        s.send_with_fd(&head[..], fd).map_err(io::Error::from)?;
        Ok(())
    }

    pub fn recv(&mut self) -> Result<Frame, WireError> {
        let mut head = [0u8; 9];
        let mut file = None;
        match self {
            Conn::Unix(s) => {
                // the header arrives with the file when it carries one
                let (n, fd) = s.recv_with_fd(&mut head[..]).map_err(io::Error::from)?;
                file = fd;
                if n == 0 {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                }
                if n < head.len() {
                    let rest = &mut head[n..];
                    s.read_exact(rest)?;
                }
            }
            Conn::Tcp(s) => s.read_exact(&mut head)?,
        }
        let kind = Kind::from_u8(head[0])?;
        let len = u64::from_le_bytes(head[1..].try_into().unwrap_or_default());
        if len > MAX_BODY {
            return Err(WireError::TooLong { kind, len });
        }
        let mut body = vec![0u8; len as usize];
        self.read_exact(&mut body)?;
        if kind == Kind::Failed {
            return Err(WireError::PeerFailed(
                String::from_utf8_lossy(&body).into_owned(),
            ));
        }
        Ok(Frame { kind, body, file })
    }

    /// The next frame, which must be of kind `want`.
    pub fn expect(&mut self, want: Kind) -> Result<Frame, WireError> {
        let f = self.recv()?;
        if f.kind != want {
            return Err(WireError::Unexpected {
                want: kind_name(want),
                got: f.kind,
            });
        }
        Ok(f)
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Config => "Config",
        Kind::MemFd => "MemFd",
        Kind::Ram => "Ram",
        Kind::State => "State",
        Kind::Released => "Released",
        Kind::Ready => "Ready",
        Kind::Commit => "Commit",
        Kind::Running => "Running",
        Kind::Failed => "Failed",
        Kind::Accepted => "Accepted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn frames_and_a_file_cross_a_unix_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Conn::Unix(a), Conn::Unix(b));
        a.send_hello().unwrap();
        a.send(Kind::Config, b"{}").unwrap();
        let f = std::fs::File::open("/proc/self/status").unwrap();
        a.send_fd(f.as_raw_fd()).unwrap();
        a.send_parts(Kind::Ram, &[&7u64.to_le_bytes(), b"page"])
            .unwrap();
        a.send(Kind::Failed, b"no room").unwrap();
        b.read_hello().unwrap();
        assert_eq!(b.expect(Kind::Config).unwrap().body, b"{}");
        assert!(b.expect(Kind::MemFd).unwrap().file.is_some());
        let ram = b.expect(Kind::Ram).unwrap();
        assert_eq!(&ram.body[8..], b"page");
        match b.recv() {
            Err(WireError::PeerFailed(why)) => assert_eq!(why, "no room"),
            other => panic!("{:?}", other.map(|f| f.kind)),
        }
    }

    #[test]
    fn a_bad_greeting_a_newer_version_and_a_huge_frame_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Conn::Unix(a), Conn::Unix(b));
        a.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        assert!(matches!(b.read_hello(), Err(WireError::BadMagic)));
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Conn::Unix(a), Conn::Unix(b));
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&(VERSION + 1).to_le_bytes());
        a.write_all(&hello).unwrap();
        assert!(matches!(b.read_hello(), Err(WireError::NewerVersion(_))));
        let mut head = vec![Kind::State as u8];
        head.extend_from_slice(&(MAX_BODY + 1).to_le_bytes());
        a.write_all(&head).unwrap();
        assert!(matches!(b.recv(), Err(WireError::TooLong { .. })));
        a.write_all(&[42u8; 9]).unwrap();
        assert!(matches!(b.recv(), Err(WireError::UnknownKind(42))));
    }
}
