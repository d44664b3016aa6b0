//! One bounded line from a Unix stream: the JSON-lines exchanges between splitvisor's
//! processes (the balloon's control socket, svctl's supervisor socket) read every request and
//! reply through here, so a peer that sends without end, or a byte at a time, costs the reader
//! at most `max` bytes and until `deadline` — a per-read timeout alone would let it trickle
//! forever.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Why no line came.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("a line longer than {max} bytes")]
    TooLong { max: usize },
    #[error("no complete line in time")]
    TimedOut,
    #[error("the peer closed the connection before a line")]
    Closed,
    #[error("cannot read the line")]
    Io(#[source] io::Error),
}

/// The next line (without its newline), or `None` when the stream ends first with nothing
/// read; it must arrive whole before `deadline` and be at most `max` bytes. Data after the
/// stream's end without a newline counts as the last line.
pub fn read_line(
    reader: &mut BufReader<UnixStream>,
    deadline: Instant,
    max: usize,
) -> Result<Option<Vec<u8>>, LineError> {
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LineError::TimedOut);
        }
        reader
            .get_ref()
            .set_read_timeout(Some(left))
            .map_err(LineError::Io)?;
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(LineError::TimedOut)
            }
            Err(e) => return Err(LineError::Io(e)),
        };
        if buf.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max {
            return Err(LineError::TooLong { max });
        }
        line.extend_from_slice(&buf[..take]);
        reader.consume(take + usize::from(done));
        if done {
            return Ok(Some(line));
        }
    }
}

/// [`read_line`] for a reply that must come: the end of the stream is [`LineError::Closed`].
pub fn read_reply(
    stream: &UnixStream,
    deadline: Instant,
    max: usize,
) -> Result<Vec<u8>, LineError> {
    let clone = stream.try_clone().map_err(LineError::Io)?;
    read_line(&mut BufReader::new(clone), deadline, max)?.ok_or(LineError::Closed)
}

/// Why a request over a socket got no usable reply (the system's error is part of the
/// message, so it reads whole wherever it is shown).
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("cannot send the request: {0}")]
    Send(io::Error),
    #[error("sent a reply longer than {max} bytes")]
    TooLong { max: usize },
    #[error("did not finish its reply within {} ms", .0.as_millis())]
    TimedOut(Duration),
    #[error("closed the connection without a reply")]
    Closed,
    #[error("cannot read the reply: {0}")]
    Read(io::Error),
}

/// Send `request` and a newline to the socket at `path`, and read the one-line reply, which
/// must come whole within `timeout` and be at most `max` bytes.
pub fn exchange(
    path: &Path,
    request: &str,
    timeout: Duration,
    max: usize,
) -> Result<Vec<u8>, ExchangeError> {
    let deadline = Instant::now() + timeout;
    let mut stream = UnixStream::connect(path).map_err(ExchangeError::Connect)?;
    stream
        .set_write_timeout(Some(timeout))
        .and_then(|_| stream.write_all(format!("{request}\n").as_bytes()))
        .map_err(ExchangeError::Send)?;
    read_reply(&stream, deadline, max).map_err(|e| match e {
        LineError::TooLong { max } => ExchangeError::TooLong { max },
        LineError::TimedOut => ExchangeError::TimedOut(timeout),
        LineError::Closed => ExchangeError::Closed,
        LineError::Io(e) => ExchangeError::Read(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UnixStream, BufReader<UnixStream>) {
        let (a, b) = UnixStream::pair().unwrap();
        (a, BufReader::new(b))
    }

    #[test]
    fn lines_are_read_one_at_a_time() {
        let (mut w, mut r) = pair();
        w.write_all(b"one\ntwo\nlast").unwrap();
        drop(w);
        let soon = || Instant::now() + Duration::from_secs(2);
        assert_eq!(read_line(&mut r, soon(), 16).unwrap().unwrap(), b"one");
        assert_eq!(read_line(&mut r, soon(), 16).unwrap().unwrap(), b"two");
        assert_eq!(read_line(&mut r, soon(), 16).unwrap().unwrap(), b"last");
        assert!(read_line(&mut r, soon(), 16).unwrap().is_none());
    }

    #[test]
    fn an_endless_line_stops_at_the_limit() {
        let (mut w, mut r) = pair();
        let writer = std::thread::spawn(move || {
            let chunk = [b'x'; 4096];
            while w.write_all(&chunk).is_ok() {}
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let err = read_line(&mut r, deadline, 65536).unwrap_err();
        assert!(matches!(err, LineError::TooLong { max: 65536 }), "{err}");
        drop(r);
        writer.join().unwrap();
    }

    #[test]
    fn a_trickling_peer_runs_out_of_time() {
        let (mut w, mut r) = pair();
        let writer = std::thread::spawn(move || {
            for _ in 0..30 {
                if w.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let start = Instant::now();
        let err = read_line(&mut r, start + Duration::from_millis(200), 1 << 20).unwrap_err();
        assert!(matches!(err, LineError::TimedOut), "{err}");
        assert!(start.elapsed() < Duration::from_secs(2));
        drop(r);
        writer.join().unwrap();
    }

    #[test]
    fn an_exchange_names_what_went_wrong() {
        let dir = std::env::temp_dir().join(format!("api-line-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            for reply in [&b"{\"ok\":true}\n"[..], &[b'y'; 100][..], b""] {
                let (mut s, _) = listener.accept().unwrap();
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line).unwrap();
                s.write_all(reply).unwrap();
            }
        });
        let ask = || exchange(&path, "{}", Duration::from_secs(2), 64);
        assert_eq!(ask().unwrap(), b"{\"ok\":true}");
        assert!(matches!(ask(), Err(ExchangeError::TooLong { max: 64 })));
        assert!(matches!(ask(), Err(ExchangeError::Closed)));
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(dir);
        assert!(matches!(ask(), Err(ExchangeError::Connect(_))));
    }

    #[test]
    fn a_reply_that_never_comes_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let err = read_reply(&b, Instant::now() + Duration::from_secs(1), 16).unwrap_err();
        assert!(matches!(err, LineError::Closed), "{err}");
    }
}
