//! `svctl console NAME`: attach to the domain's serial console (the vmm's console socket).
//! The vmm sends what the guest printed recently first. On a terminal, input is raw and
//! Ctrl-] detaches; otherwise input is copied until it ends, and then the console detaches.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

const DETACH: u8 = 0x1d; // Ctrl-]

struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        // SAFETY: isatty/tcgetattr/cfmakeraw/tcsetattr on fd 0 with termios structs we own.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(0, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(RawTerminal { saved })
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter` on fd 0.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

/// Wait up to 200 ms for input (so that a console whose domain ends is noticed even when no
/// key is pressed).
fn input_ready() -> bool {
    let mut fds = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own, for a bounded time.
    let n = unsafe { libc::poll(&mut fds, 1, 200) };
    // an error or hang-up counts as ready: the read that follows reports it
    n != 0
}

pub fn attach(name: &str, socket: &Path) -> Result<(), String> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "domain '{name}': cannot open its console {}: {e}",
            socket.display()
        )
    })?;
    let raw = RawTerminal::enter();
    if raw.is_some() {
        eprint!("Connected to domain '{name}'\r\nEscape character is ^] (Ctrl + ])\r\n");
    }
    let mut reader = stream.try_clone().map_err(|e| e.to_string())?;
    let output = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut out = std::io::stdout();
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                break;
            }
        }
    });
    let mut input = std::io::stdin();
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1024];
    loop {
        if output.is_finished() {
            break; // the vmm closed the console: the domain ended
        }
        if !input_ready() {
            continue;
        }
        let n = match input.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let data = &buf[..n];
        if raw.is_some() {
            if let Some(pos) = data.iter().position(|&b| b == DETACH) {
                let _ = writer.write_all(&data[..pos]);
                break;
            }
        }
        if writer.write_all(data).is_err() {
            break;
        }
    }
    drop(raw);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = output.join();
    Ok(())
}
