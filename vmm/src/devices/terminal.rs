//! The host terminal behind `--serial stdio`: raw mode while the VM runs (keys go to the
//! guest, Ctrl-C included), restored on exit.

use std::fs::File;
use std::os::fd::FromRawFd;

/// Switch stdin to raw mode if it is a terminal; returns the settings to restore.
pub fn make_stdin_raw() -> Option<libc::termios> {
    // SAFETY: isatty only inspects fd 0.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
        return None;
    }
    // SAFETY: termios is plain old data; tcgetattr fills it for fd 0 and we check the result.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above, `saved` is a valid termios to write into.
    if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
        return None;
    }
    let mut raw = saved;
    // SAFETY: cfmakeraw edits the termios we own; tcsetattr applies it to fd 0.
    let ok = unsafe {
        libc::cfmakeraw(&mut raw);
        libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) == 0
    };
    ok.then_some(saved)
}

pub fn restore_stdin(saved: &libc::termios) {
    // SAFETY: applies a termios previously read from fd 0 back to fd 0.
    unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
}

/// A separately owned descriptor for stdin.
pub fn dup_stdin() -> Option<File> {
    // SAFETY: dup of fd 0; the new descriptor is checked and then owned by the File.
    let fd = unsafe { libc::dup(libc::STDIN_FILENO) };
    // SAFETY: fd is a fresh descriptor nothing else owns.
    (fd >= 0).then(|| unsafe { File::from_raw_fd(fd) })
}
