//! The serial console: a 16550A UART at COM1 (vm-superio) whose interrupt is a KVM irqfd on
//! IRQ 4, connected to stdio, a pty, a Unix socket, a file, or nothing. Input is interactive:
//! a thread reads the source and feeds the UART's receive FIFO as the guest drains it.

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

/// The console socket's client, and the last [`HISTORY`] bytes of output, which a client
/// gets first when it connects (so `svctl console` shows what the guest printed before).
#[derive(Default)]
struct SocketOut {
    stream: Option<UnixStream>,
    history: std::collections::VecDeque<u8>,
}

const HISTORY: usize = 64 << 10;

type SocketClient = Arc<Mutex<SocketOut>>;

/// Where guest output goes.
enum Output {
    Stdout(io::Stdout),
    File(File),
    Socket(SocketClient),
    Sink,
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Stdout(s) => s.write(buf),
            Output::File(f) => f.write(buf),
            Output::Socket(client) => {
                let mut out = client.lock().unwrap_or_else(|e| e.into_inner());
                out.history.extend(buf);
                let excess = out.history.len().saturating_sub(HISTORY);
                out.history.drain(..excess);
                if let Some(stream) = out.stream.as_mut() {
                    if stream.write_all(buf).is_err() {
                        // the client went away (or stopped reading for a second): output goes
                        // to the history only until the next client
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
                input = Some(Box::new(master.try_clone().map_err(SerialError::Pty)?));
                Output::File(master)
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

    /// The UART's state as it is now (see [`super::persist`]).
    pub fn state(&self) -> super::persist::SerialState {
        let uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
        uart.state().into()
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
            // a client that does not read must not stall the vCPU writing to the UART
            let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(1)));
            {
                let mut out = client.lock().unwrap_or_else(|e| e.into_inner());
                let mut stream = stream;
                let (a, b) = out.history.as_slices();
                if stream
                    .write_all(a)
                    .and_then(|_| stream.write_all(b))
                    .is_err()
                {
                    continue;
                }
                out.stream = Some(stream);
            }
            self.pump(Box::new(reader));
            client.lock().unwrap_or_else(|e| e.into_inner()).stream = None;
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), SerialError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
        .map_err(SerialError::Thread)
}

fn bind_socket(path: &Path) -> Result<UnixListener, SerialError> {
    ::api::unix_socket::bind(path, None).map_err(SerialError::Socket)
}

fn open_pty() -> io::Result<(File, PathBuf)> {
    // SAFETY: posix_openpt takes flags only; the returned fd is checked and owned below.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
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
