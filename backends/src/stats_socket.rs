//! `--stats-socket PATH`: the backend's counters for whoever connects (`svctl domblkstat`,
//! `domifstat`, a person with `socat`). Each connection gets the counters as text, one
//! `key=value` per word, and is closed; nothing is read from the client.

use std::io::{self, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

/// Renders the counters at the moment a client connects.
pub type StatsText = Box<dyn Fn() -> String + Send>;

/// Bind `path` (a stale socket is replaced; mode 0600) and serve it on a thread of its own.
pub fn spawn(path: &Path, text: StatsText) -> io::Result<()> {
    serve(bind(path)?, text)
}

/// Bind the stats socket at `path` (private to our user), to [`serve`] later.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    crate::socket::bind_private(path)
}

/// Answer each connection to `listener` with the counters, on a thread of its own.
pub fn serve(listener: UnixListener, text: StatsText) -> io::Result<()> {
    std::thread::Builder::new()
        .name("stats-socket".into())
        .spawn(move || {
            for mut stream in listener.incoming().flatten() {
                // a client that does not read cannot hold the thread
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = writeln!(stream, "{}", text());
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn each_connection_gets_the_counters_of_that_moment() {
        let dir = std::env::temp_dir().join(format!("sv-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let n = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let m = n.clone();
        spawn(
            &path,
            Box::new(move || format!("requests={}", m.load(std::sync::atomic::Ordering::Relaxed))),
        )
        .unwrap();
        let read = || {
            let mut s = String::new();
            std::os::unix::net::UnixStream::connect(&path)
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
            s
        };
        assert_eq!(read(), "requests=0\n");
        n.store(7, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(read(), "requests=7\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn clients_that_neither_read_nor_go_away_do_not_delay_another() {
        let dir = std::env::temp_dir().join(format!("sv-stats-idle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        // nothing is read from a client, and a reply (16 KiB here, more than any backend's)
        // fits in the socket's buffer: a client that does not read costs no wait
        spawn(&path, Box::new(|| "x".repeat(16 << 10))).unwrap();
        let idle: Vec<_> = (0..3)
            .map(|_| std::os::unix::net::UnixStream::connect(&path).unwrap())
            .collect();
        let started = std::time::Instant::now();
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert_eq!(text.len(), (16 << 10) + 1);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        drop(idle);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
