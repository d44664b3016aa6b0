//! The host side of a guest's link: a tap device with a virtio-net header on every packet
//! (`IFF_VNET_HDR`) and one file descriptor per queue pair (`IFF_MULTI_QUEUE`), plus the few
//! interface settings its maker applies (MTU, up, bridge port).
//!
//! Two users: `splitvisor-net`, which serves the queues (and, given a name, opens or creates
//! the tap itself, which needs `CAP_NET_ADMIN`), and svctl's supervisor, which makes the tap
//! and hands the backend its descriptors (`--tap-fd`), so that the backend needs no
//! capability at all (docs/security.md). Hand-written ioctls: no maintained crate covers vnet
//! headers, multi-queue and offloads together (Cloud Hypervisor and Firecracker carry their
//! own code for this too).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const IFF_MULTI_QUEUE: i16 = 0x0100;
const IFF_ATTACH_QUEUE: i16 = 0x0200;
const IFF_DETACH_QUEUE: i16 = 0x0400;
const IFF_UP: i16 = 0x1;
const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const SIOCGIFMTU: libc::c_ulong = 0x8921;
const SIOCSIFMTU: libc::c_ulong = 0x8922;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// Offloads the guest can take (TUNSETOFFLOAD): the tap may hand it such packets.
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;

/// The virtio-net header every packet carries (`struct virtio_net_hdr_v1`, 12 bytes).
pub const VNET_HDR_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid interface name {0:?}: 1 to 15 characters, no '/' or whitespace")]
    Name(String),
    #[error("cannot open /dev/net/tun (is the tun module loaded, and are we root?)")]
    OpenTun(#[source] io::Error),
    #[error("cannot attach to tap {name}")]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("network interface {0} already exists (use --tap to attach to it)")]
    Exists(String),
    #[error("descriptor {fd} is not a tap queue")]
    NotTap {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("descriptor {fd} is a queue of {name}, which is not a tap with virtio-net headers and no packet information (flags {flags:#x})")]
    WrongKind { fd: RawFd, name: String, flags: i16 },
    #[error("descriptors {first} and {other} are queues of different devices ({first_name} and {other_name})")]
    Mixed {
        first: RawFd,
        first_name: String,
        other: RawFd,
        other_name: String,
    },
    #[error("no tap descriptor given")]
    NoQueues,
    #[error("tap {name}: cannot {what}")]
    Setup {
        name: String,
        what: String,
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq`: the name and a 24-byte union (flags, MTU or ifindex here).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }
    fn with_i16(name: &str, v: i16) -> IfReq {
        let mut r = IfReq::new(name);
        r.data[..2].copy_from_slice(&v.to_ne_bytes());
        r
    }
    fn with_i32(name: &str, v: i32) -> IfReq {
        let mut r = IfReq::new(name);
        r.data[..4].copy_from_slice(&v.to_ne_bytes());
        r
    }
    fn i16(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }
    fn i32(&self) -> i32 {
        i32::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }
    fn name(&self) -> String {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

fn ioctl_ptr<T>(fd: RawFd, req: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a live, properly sized struct of the type the ioctl `req` expects
    // (ifreq or an int), so the kernel reads and writes only inside it.
    let rc = unsafe { libc::ioctl(fd, req, arg as *mut T) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A socket for interface ioctls (any socket will do; closed when dropped).
fn control_socket() -> io::Result<File> {
    // SAFETY: socket() takes no pointers; the new descriptor is owned by the File below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name.contains('/')
        && !name.chars().any(char::is_whitespace)
}

fn exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// One tap device, one descriptor per queue pair (non-blocking).
pub struct Tap {
    name: String,
    queues: Vec<File>,
}

impl Tap {
    /// Attach to tap `name` with `queues` descriptors; `create`: the tap must not exist yet
    /// and is created here (it goes away when the process exits).
    pub fn open(name: &str, queues: usize, create: bool) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::Name(name.to_string()));
        }
        if create && exists(name) {
            return Err(TapError::Exists(name.to_string()));
        }
        let mut files = Vec::new();
        for _ in 0..queues.max(1) {
            files.push(Self::open_queue(name, queues > 1)?);
        }
        let tap = Tap {
            name: name.to_string(),
            queues: files,
        };
        Ok(tap)
    }

    /// A stand-in for tests and fuzzing: `queues` are descriptors that read and write whole
    /// packets (one end of a datagram socket pair each, as `queue_tests.rs` uses), not tap
    /// queues, so the tap's own settings (offloads, queue attach) fail on them and are logged.
    #[doc(hidden)]
    pub fn stand_in(queues: Vec<File>) -> Tap {
        Tap {
            name: "stand-in".to_string(),
            queues,
        }
    }

    /// Serve queues someone else opened (`--tap-fd`, one descriptor per queue pair, all of
    /// one tap): each must be a tap queue with virtio-net headers and no packet information.
    /// Needs no privilege; the maker has set the MTU, brought the link up and bridged it.
    pub fn from_fds(fds: Vec<OwnedFd>) -> Result<Tap, TapError> {
        let mut name: Option<(RawFd, String)> = None;
        let mut queues = Vec::with_capacity(fds.len());
        for fd in fds {
            let raw = fd.as_raw_fd();
            let mut req = IfReq::new("");
            ioctl_ptr(raw, TUNGETIFF, &mut req)
                .map_err(|source| TapError::NotTap { fd: raw, source })?;
            let (this, flags) = (req.name(), req.i16());
            let needed = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
            if flags & needed != needed {
                return Err(TapError::WrongKind {
                    fd: raw,
                    name: this,
                    flags,
                });
            }
            match &name {
                Some((first, first_name)) if *first_name != this => {
                    return Err(TapError::Mixed {
                        first: *first,
                        first_name: first_name.clone(),
                        other: raw,
                        other_name: this,
                    })
                }
                Some(_) => {}
                None => name = Some((raw, this.clone())),
            }
            let file = File::from(fd);
            set_nonblocking(&file).map_err(|source| TapError::Setup {
                name: this.clone(),
                what: "make a queue non-blocking".into(),
                source,
            })?;
            set_vnet_hdr_len(&file, &this)?;
            queues.push(file);
        }
        let (_, name) = name.ok_or(TapError::NoQueues)?;
        Ok(Tap { name, queues })
    }

    /// The queues' descriptors, for handing to the process that serves them.
    pub fn into_fds(self) -> Vec<OwnedFd> {
        self.queues.into_iter().map(OwnedFd::from).collect()
    }

    fn open_queue(name: &str, multi: bool) -> Result<File, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let attach = |flags: i16| {
            let mut req = IfReq::with_i16(name, flags);
            ioctl_ptr(file.as_raw_fd(), TUNSETIFF, &mut req)
        };
        let base = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        // a single-queue tap made by someone else refuses IFF_MULTI_QUEUE; one queue is
        // all we need then
        attach(base | IFF_MULTI_QUEUE)
            .or_else(|e| if multi { Err(e) } else { attach(base) })
            .map_err(|source| TapError::Attach {
                name: name.to_string(),
                source,
            })?;
        set_vnet_hdr_len(&file, name)?;
        Ok(file)
    }

    fn setup_err(&self, what: &str) -> impl FnOnce(io::Error) -> TapError {
        let name = self.name.clone();
        let what = what.to_string();
        move |source| TapError::Setup { name, what, source }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    pub fn queue_fd(&self, pair: usize) -> Option<RawFd> {
        self.queues.get(pair).map(AsRawFd::as_raw_fd)
    }

    /// Which offloads the tap may use on packets to the guest (`TUN_F_*`).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        let fd = self.queues[0].as_raw_fd();
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let rc = unsafe { libc::ioctl(fd, TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
        if rc < 0 {
            return Err(self.setup_err("set offloads")(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Let the kernel steer packets to queue `pair` (or stop it, for a disabled pair).
    pub fn set_queue_enabled(&self, pair: usize, enabled: bool) -> Result<(), TapError> {
        if self.queues.len() < 2 {
            return Ok(()); // a single-queue tap cannot detach its only queue
        }
        let Some(q) = self.queues.get(pair) else {
            return Ok(());
        };
        let flags = if enabled {
            IFF_ATTACH_QUEUE
        } else {
            IFF_DETACH_QUEUE
        };
        let mut req = IfReq::with_i16("", flags);
        match ioctl_ptr(q.as_raw_fd(), TUNSETQUEUE, &mut req) {
            // attaching an attached queue (or detaching a detached one) is EINVAL: no change
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            r => r.map_err(self.setup_err("attach or detach a queue")),
        }
    }

    /// Set the link's MTU, unless it has it already (reading needs no privilege, setting
    /// needs `CAP_NET_ADMIN`: a tap made with the right MTU by its owner needs nothing).
    pub fn set_mtu(&self, mtu: u16) -> Result<(), TapError> {
        let sock = control_socket().map_err(self.setup_err("open a control socket"))?;
        let mut req = IfReq::new(&self.name);
        ioctl_ptr(sock.as_raw_fd(), SIOCGIFMTU, &mut req)
            .map_err(self.setup_err("read the MTU"))?;
        if req.i32() == i32::from(mtu) {
            return Ok(());
        }
        let mut req = IfReq::with_i32(&self.name, i32::from(mtu));
        ioctl_ptr(sock.as_raw_fd(), SIOCSIFMTU, &mut req)
            .map_err(self.setup_err(&format!("set the MTU to {mtu}")))
    }

    /// Bring the link up, unless it is up already (as [`Tap::set_mtu`]: only a change needs
    /// `CAP_NET_ADMIN`).
    pub fn bring_up(&self) -> Result<(), TapError> {
        let sock = control_socket().map_err(self.setup_err("open a control socket"))?;
        let mut req = IfReq::new(&self.name);
        ioctl_ptr(sock.as_raw_fd(), SIOCGIFFLAGS, &mut req)
            .map_err(self.setup_err("read the interface flags"))?;
        if req.i16() & IFF_UP != 0 {
            return Ok(());
        }
        let mut req = IfReq::with_i16(&self.name, req.i16() | IFF_UP);
        ioctl_ptr(sock.as_raw_fd(), SIOCSIFFLAGS, &mut req).map_err(self.setup_err("bring it up"))
    }

    /// Make the tap a port of bridge `bridge`.
    pub fn add_to_bridge(&self, bridge: &str) -> Result<(), TapError> {
        if !valid_name(bridge) {
            return Err(TapError::Name(bridge.to_string()));
        }
        let what = format!("join bridge {bridge}");
        let name = std::ffi::CString::new(self.name.as_str())
            .map_err(|_| TapError::Name(self.name.clone()))?;
        // SAFETY: if_nametoindex reads the NUL-terminated name we own.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(self.setup_err(&what)(io::Error::last_os_error()));
        }
        let sock = control_socket().map_err(self.setup_err("open a control socket"))?;
        let mut req = IfReq::with_i32(bridge, index as i32);
        ioctl_ptr(sock.as_raw_fd(), SIOCBRADDIF, &mut req).map_err(self.setup_err(&what))
    }
}

fn set_vnet_hdr_len(file: &File, name: &str) -> Result<(), TapError> {
    let mut hdr_len = VNET_HDR_LEN as libc::c_int;
    ioctl_ptr(file.as_raw_fd(), TUNSETVNETHDRSZ, &mut hdr_len).map_err(|source| TapError::Setup {
        name: name.to_string(),
        what: "set the virtio-net header size".into(),
        source,
    })
}

fn set_nonblocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL take integers, no memory; `fd` is open for the call.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
