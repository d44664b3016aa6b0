//! The serial console: a 16550A UART at COM1 (vm-superio) whose interrupt is a KVM irqfd on
//! IRQ 4, connected to stdio, a pty, a Unix socket, a file, or nothing. Input is interactive:
//! a thread reads the source and feeds the UART's receive FIFO as the guest drains it.
//!
//! Output is written by the vCPU, inside the UART's lock, so it must never wait for a reader:
//! the pty and the socket are non-blocking, and what does not fit is dropped ([`Lossy`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::terminal;
use crate::config::SerialConfig;

pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_END: u16 = 0x3ff;
pub const COM1_IRQ: u32 = 4;
/// How long the input thread waits for the guest to drain a full receive FIFO.
const FIFO_RETRY: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("cannot open the serial output file {path}")]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on the serial socket")]
    Socket(#[source] ::api::unix_socket::BindError),
    #[error("cannot create a pty for the serial console")]
    Pty(#[source] io::Error),
    #[error("cannot start the serial input thread")]
    Thread(#[source] io::Error),
}

/// The UART's interrupt line: an eventfd registered with KVM as an irqfd.
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// A non-blocking writer that drops what does not fit: output goes to a reader who may not
/// keep up (or not read at all), and the vCPU writing it must not wait. The first drop is
/// logged; the count of dropped bytes is kept.
struct Lossy<W> {
    inner: W,
    /// Bytes given to `write_or_drop` that did not fit, or that `inner` refused.
    dropped: u64,
}

impl<W: Write> Lossy<W> {
    fn new(inner: W) -> Lossy<W> {
        Lossy { inner, dropped: 0 }
    }

    /// Write what fits of `buf` without waiting and drop the rest. An error other than "would
    /// block" is returned (the reader may be gone), its bytes counted as dropped.
    fn write_or_drop(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut rest = buf;
        let mut result = Ok(());
        while !rest.is_empty() {
            match self.inner.write(rest) {
                Ok(0) => break,
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if !rest.is_empty() {
            if self.dropped == 0 {
                tracing::warn!(
                    "serial console: the reader does not keep up; output that does not fit is \
                     dropped (logged once)"
                );
            }
            self.dropped += rest.len() as u64;
        }
        result
    }
}

/// The console socket's client, and the last [`HISTORY`] bytes of output, which a client
/// gets first when it connects (so `svctl console` shows what the guest printed before).
#[derive(Default)]
struct SocketOut {
    /// Non-blocking (see [`attach_client`]).
    stream: Option<Lossy<UnixStream>>,
    history: std::collections::VecDeque<u8>,
    /// Bytes dropped by clients that have left.
    dropped_before: u64,
}

const HISTORY: usize = 64 << 10;

type SocketClient = Arc<Mutex<SocketOut>>;

/// Where guest output goes.
enum Output {
    Stdout(io::Stdout),
    File(File),
    /// The pty's master, non-blocking (see [`open_pty`]).
    Pty(Lossy<File>),
    Socket(SocketClient),
    Sink,
}

impl Output {
    /// Output bytes dropped because the pty's or the socket's reader did not keep up.
    fn dropped(&self) -> u64 {
        match self {
            Output::Pty(pty) => pty.dropped,
            Output::Socket(client) => {
                let out = client.lock().unwrap_or_else(|e| e.into_inner());
                out.dropped_before + out.stream.as_ref().map_or(0, |s| s.dropped)
            }
            _ => 0,
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Stdout(s) => s.write(buf),
            Output::File(f) => f.write(buf),
            Output::Pty(pty) => {
                // an error is counted as dropped too; the next write tries again
                let _ = pty.write_or_drop(buf);
                Ok(buf.len())
            }
            Output::Socket(client) => {
                let mut out = client.lock().unwrap_or_else(|e| e.into_inner());
                out.history.extend(buf);
                let excess = out.history.len().saturating_sub(HISTORY);
                out.history.drain(..excess);
                if let Some(stream) = out.stream.as_mut() {
                    if stream.write_or_drop(buf).is_err() {
                        // the client went away: output goes to the history only until the
                        // next client
                        out.dropped_before += stream.dropped;
                        out.stream = None;
                    }
                }
                Ok(buf.len())
            }
            Output::Sink => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Stdout(s) => s.flush(),
            Output::File(f) => f.flush(),
            _ => Ok(()),
        }
    }
}

/// The COM1 device and its console plumbing.
pub struct Console {
    uart: Mutex<Serial<IrqLine, NoEvents, Output>>,
    saved_termios: Option<libc::termios>,
}

impl Console {
    /// Create the console for `cfg`, raising `irq` on interrupts, and start its input thread.
    pub fn new(cfg: &SerialConfig, irq: EventFd) -> Result<Arc<Console>, SerialError> {
        let mut input: Option<Box<dyn Read + Send>> = None;
        let mut socket = None;
        let mut saved_termios = None;
        let output = match cfg {
            SerialConfig::Stdio => {
                saved_termios = terminal::make_stdin_raw();
                // a dup of fd 0, so no lock on std's Stdin is held while the thread blocks
                input = terminal::dup_stdin().map(|f| Box::new(f) as Box<dyn Read + Send>);
                Output::Stdout(io::stdout())
            }
            SerialConfig::Pty => {
                let (master, path) = open_pty().map_err(SerialError::Pty)?;
                eprintln!("splitvisor: serial console on {}", path.display());
                let reader = master.try_clone().map_err(SerialError::Pty)?;
                input = Some(Box::new(WaitForInput(reader)));
                pty_output(master)
            }
            SerialConfig::File(path) => Output::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| SerialError::File {
                        path: path.clone(),
                        source,
                    })?,
            ),
            SerialConfig::Socket(path) => {
                let client: SocketClient = Arc::new(Mutex::new(SocketOut::default()));
                socket = Some((bind_socket(path)?, client.clone()));
                Output::Socket(client)
            }
            SerialConfig::Off => Output::Sink,
        };
        let console = Arc::new(Console {
            uart: Mutex::new(Serial::new(IrqLine(irq), output)),
            saved_termios,
        });
        if let Some(src) = input {
            let c = console.clone();
            spawn("serial-input", move || c.pump(src))?;
        }
        if let Some((listener, client)) = socket {
            let c = console.clone();
            spawn("serial-socket", move || c.serve_socket(listener, client))?;
        }
        Ok(console)
    }

    pub fn read(&self, offset: u8) -> u8 {
        self.uart
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(offset)
    }

    pub fn write(&self, offset: u8, value: u8) {
        let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = uart.write(offset, value) {
            tracing::debug!(error = ?e, "serial write failed");
        }
    }

    /// Output bytes dropped so far because the pty's or the socket's reader did not keep up.
    pub fn dropped_output(&self) -> u64 {
        let uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
        uart.writer().dropped()
    }

    /// The UART's state as it is now (see [`super::persist`]).
    pub fn state(&self) -> super::persist::SerialState {
        let uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
        uart.state().into()
    }

    /// Put the UART back as a snapshot had it (registers, unread input); where its output goes
    /// stays this console's.
    pub fn restore(&self, s: &super::persist::SerialState) -> Result<(), String> {
        if s.version > super::persist::SerialState::VERSION {
            return Err(format!(
                "the console's state has version {}; this splitvisor reads up to {}",
                s.version,
                super::persist::SerialState::VERSION
            ));
        }
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.receive_fifo.clone(),
        };
        let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
        let irq = uart
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(|e| e.to_string())?;
        // the live UART gives its output up to the restored one
        let old = std::mem::replace(
            &mut *uart,
            Serial::new(
                IrqLine(irq.try_clone().map_err(|e| e.to_string())?),
                Output::Sink,
            ),
        );
        *uart = Serial::from_state(&state, IrqLine(irq), NoEvents, old.into_writer())
            .map_err(|e| format!("the console's state cannot be restored: {e:?}"))?;
        Ok(())
    }

    /// Put the terminal back the way we found it (stdin was switched to raw mode).
    pub fn restore_terminal(&self) {
        if let Some(t) = &self.saved_termios {
            terminal::restore_stdin(t);
        }
    }

    /// Feed `src` into the receive FIFO until EOF, waiting while the guest has not drained it.
    fn pump(&self, mut src: Box<dyn Read + Send>) {
        let mut buf = [0u8; 64];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let mut pending = &buf[..n];
            while !pending.is_empty() {
                let written = {
                    let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
                    uart.enqueue_raw_bytes(pending).unwrap_or(0)
                };
                pending = &pending[written..];
                if written == 0 {
                    std::thread::sleep(FIFO_RETRY);
                }
            }
        }
    }

    /// One client at a time gets the console; the next one waits for it to leave.
    fn serve_socket(&self, listener: UnixListener, client: SocketClient) {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let Ok(reader) = stream.try_clone() else {
                continue;
            };
            if attach_client(&client, stream).is_err() {
                continue;
            }
            self.pump(Box::new(WaitForInput(reader)));
            let mut out = client.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(stream) = out.stream.take() {
                out.dropped_before += stream.dropped;
            }
        }
    }
}

/// The console's output to the pty `master` (non-blocking, see [`open_pty`]).
fn pty_output(master: File) -> Output {
    Output::Pty(Lossy::new(master))
}

/// Make `stream` the socket's client: it gets the history first, then the output. The
/// stream becomes non-blocking: a client that does not read must not stall the vCPU writing
/// to the UART, so what does not fit in the socket's buffer is dropped.
fn attach_client(client: &SocketClient, stream: UnixStream) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    let mut out = client.lock().unwrap_or_else(|e| e.into_inner());
    let mut stream = Lossy::new(stream);
    let (a, b) = out.history.as_slices();
    stream.write_or_drop(a)?;
    stream.write_or_drop(b)?;
    out.stream = Some(stream);
    Ok(())
}

/// A reader on a non-blocking fd (the pty's master, the socket's client: non-blocking for the
/// output's sake, and a dup shares that) that waits for input like a blocking one.
struct WaitForInput<R>(R);

impl<R: Read + AsRawFd> Read for WaitForInput<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut fd = libc::pollfd {
                        fd: self.0.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: `fd` is one pollfd we own and the count is 1; the descriptor
                    // stays open while `self.0` lives. A hang-up returns at once, and the
                    // read after it reports it.
                    if unsafe { libc::poll(&mut fd, 1, -1) } < 0 {
                        let e = io::Error::last_os_error();
                        if e.kind() != io::ErrorKind::Interrupted {
                            return Err(e);
                        }
                    }
                }
                result => return result,
            }
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), SerialError> {
    crate::threads::builder(name)
        .spawn(f)
        .map(|_| ())
        .map_err(SerialError::Thread)
}

fn bind_socket(path: &Path) -> Result<UnixListener, SerialError> {
    ::api::unix_socket::bind(path, None).map_err(SerialError::Socket)
}

/// A new pty: its master, non-blocking (see [`Lossy`]), and the path of its slave.
fn open_pty() -> io::Result<(File, PathBuf)> {
    // glibc's and musl's posix_openpt pass the flags on to open(2), O_NONBLOCK as O_CLOEXEC
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: posix_openpt takes flags only; the returned fd is checked and owned below.
    let fd = unsafe { libc::posix_openpt(flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    let master = unsafe { File::from_raw_fd(fd) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt/unlockpt act on our valid master fd; ptsname_r writes at most
    // name.len() bytes (NUL included) into the buffer we own.
    let ok = unsafe {
        libc::grantpt(master.as_raw_fd()) == 0
            && libc::unlockpt(master.as_raw_fd()) == 0
            && libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) == 0
    };
    if !ok {
        return Err(io::Error::last_os_error());
    }
    let bytes: Vec<u8> = name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    Ok((
        master,
        PathBuf::from(String::from_utf8_lossy(&bytes).into_owned()),
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Instant;

    use super::*;

    /// Write 1 MiB to `out` in 4 KiB pieces, as a vCPU would (in a thread: a write that blocks
    /// must not hang the test). The slowest write, or None if the writes did not end in 10 s.
    fn write_a_mebibyte(mut out: Output) -> Option<(Output, Duration)> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            for _ in 0..256 {
                let start = Instant::now();
                let _ = out.write(&[b'x'; 4096]);
                slowest = slowest.max(start.elapsed());
            }
            let _ = tx.send((out, slowest));
        });
        rx.recv_timeout(Duration::from_secs(10)).ok()
    }

    #[test]
    fn output_to_a_pty_nobody_reads_never_blocks() {
        let (master, _path) = open_pty().expect("pty");
        let (out, slowest) = write_a_mebibyte(pty_output(master))
            .expect("writing 1 MiB to a pty nobody reads did not return in 10 s");
        assert!(
            slowest < Duration::from_millis(200),
            "a write took {slowest:?}"
        );
        let dropped = out.dropped();
        assert!(dropped > 0 && dropped < 1 << 20, "{dropped} bytes dropped");
    }

    #[test]
    fn output_to_a_socket_client_that_does_not_read_never_blocks() {
        let (ours, _theirs) = UnixStream::pair().expect("socketpair");
        let client = SocketClient::default();
        attach_client(&client, ours).expect("attach");
        let (out, slowest) = write_a_mebibyte(Output::Socket(client.clone()))
            .expect("writing 1 MiB to a client that does not read did not return in 10 s");
        assert!(
            slowest < Duration::from_millis(200),
            "a write took {slowest:?}"
        );
        let dropped = out.dropped();
        assert!(dropped > 0 && dropped < 1 << 20, "{dropped} bytes dropped");
        let out = client.lock().unwrap();
        assert!(out.stream.is_some(), "the client stays connected");
        assert_eq!(out.history.len(), HISTORY, "the history is kept");
    }
}
