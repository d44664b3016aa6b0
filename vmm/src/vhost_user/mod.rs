//! The generic vhost-user frontend: any vhost-user backend process becomes a [`VirtioDevice`].
//! The whole negotiation sequence lives here (connect, owner, features, protocol features,
//! queue count, config space, memory table, rings); what the vmm knows of a device type (queues
//! per unit, config size, whose queue count wins) is the table in
//! [`crate::virtio::device_type`]. What a snapshot keeps of the device is in [`persist`]; how a
//! device survives its backend's restart is in [`reconnect`], with the backend's in-flight
//! record it hands over in [`inflight`].

mod call_deadline;
#[cfg(test)]
mod config_space_tests;
mod device_state;
mod dirty_log;
#[cfg(test)]
mod frontend_tests;
mod handover;
pub mod inflight;
#[cfg(test)]
mod inflight_tests;
pub mod persist;
pub mod reconnect;
mod suspend;
#[cfg(test)]
mod test_backend;

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};

pub mod backend_requests;
use backend_requests::BackendChannel;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::virtio::device_type::{DeviceType, QueueCountRule, QueueUnits};
use crate::virtio::{QueueSetup, VirtioDevice, VirtioDeviceState, F_VERSION_1};
use persist::VringState;

/// How long to wait for a backend's socket to appear.
pub const SOCKET_WAIT: Duration = Duration::from_secs(10);
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// VHOST_F_LOG_ALL: the backend logs its writes to guest memory (live migration).
const F_LOG_ALL: u64 = 1 << 26;
/// Feature bits between the vmm and the backend, never offered to the guest.
const VHOST_ONLY: u64 = F_PROTOCOL_FEATURES | F_LOG_ALL;

#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("device {device}: the backend socket {socket} did not appear within {SOCKET_WAIT:?}")]
    NoSocket { device: String, socket: PathBuf },
    #[error(
        "device {device}: the backend on {socket} does not offer {feature}, which splitvisor needs"
    )]
    MissingFeature {
        device: String,
        socket: PathBuf,
        feature: &'static str,
    },
    #[error("device {device}: vhost-user {step} failed on {socket}: {source}")]
    Protocol {
        device: String,
        socket: PathBuf,
        step: &'static str,
        source: vhost::Error,
    },
    #[error(
        "device {device}: guest memory has {regions} regions, the backend takes at most {max}"
    )]
    TooManyRegions {
        device: String,
        regions: usize,
        max: u64,
    },
    #[error("device {device}: the backend on {socket} cannot take over the device: {what}")]
    Reconnect {
        device: String,
        socket: PathBuf,
        what: String,
    },
    #[error(
        "device {device}: the backend on {socket} serves {count} queues; a device of its type takes 1 to {max}"
    )]
    QueueCount {
        device: String,
        socket: PathBuf,
        count: u64,
        max: usize,
    },
    #[error("device {device}: the {what} address {gpa:#x} is outside guest memory")]
    RingAddress {
        device: String,
        what: &'static str,
        gpa: u64,
    },
    #[error(
        "device {device}: the backend on {socket} answered GET_INFLIGHT_FD with an unusable \
         region: {problem}"
    )]
    Inflight {
        device: String,
        socket: PathBuf,
        problem: inflight::InflightProblem,
    },
}

/// Maps a vhost error of `step` to [`FrontendError::Protocol`] naming the device and socket.
fn protocol_err(
    device: &str,
    socket: &Path,
    step: &'static str,
) -> impl FnOnce(vhost::Error) -> FrontendError {
    let (device, socket) = (device.to_string(), socket.to_path_buf());
    move |source| FrontendError::Protocol {
        device,
        socket,
        step,
        source,
    }
}

pub struct VhostUserDevice {
    name: String,
    socket: PathBuf,
    frontend: Frontend,
    device_type: u32,
    queue_sizes: Vec<u16>,
    config_size: u32,
    backend_features: u64,
    protocol: VhostUserProtocolFeatures,
    /// What the last SET_FEATURES acknowledged (0 before the first activation).
    acked_features: u64,
    mem: GuestMemoryMmap,
    /// The rings the last activation started, in order; stopped again by a reset.
    vrings: Vec<VringState>,
    backend_channel: Option<BackendChannel>,
    /// Ends the current backend request channel's thread when the backend goes away.
    channel_closer: Option<backend_requests::ChannelCloser>,
    /// With CONFIGURE_MEM_SLOTS: whether ADD_MEM_REG has sent the regions on this connection.
    regions_added: bool,
    /// The queues the driver's last activation started (with their own handles on the kick
    /// and call eventfds), to start them again on a new connection.
    ring_setups: Vec<RingSetup>,
    /// The config space as last read from the backend, served while it cannot be reached.
    config_cache: Vec<u8>,
    /// Whether the backend is reachable, and the reconnect counters.
    link: reconnect::Link,
    /// How long one exchange with the backend may take ([`reconnect::CALL_TIMEOUT`]).
    call_timeout: Duration,
    /// With INFLIGHT_SHMFD: the backend's in-flight record, from the first activation's
    /// GET_INFLIGHT_FD to the driver's reset; every new connection gets the same one.
    inflight: Option<inflight::InflightRegion>,
    /// The backend's own state, taken by the last [`Self::suspend`] (DEVICE_STATE).
    saved_state: Option<Vec<u8>>,
    /// Between [`Self::suspend`] and [`Self::resume_suspended`]: a new connection leaves the
    /// rings stopped (a snapshot is reading guest memory), the resume starts them.
    suspended: bool,
    /// Between [`Self::release`] and [`Self::reclaim`]: a migration's destination has the
    /// backend; the reconnect thread does not connect.
    released: bool,
    /// The device was removed from the VM ([`Self::retire`]): never connected again.
    retired: bool,
    /// During a migration's pre-copy: LOG_ALL is in the features sent (`dirty_log.rs`), and
    /// the log file (with its size) every new memory table is followed by.
    logging: bool,
    log: Option<(std::fs::File, u64)>,
}

/// One queue as the driver set it up, kept for replaying it to a new backend connection.
struct RingSetup {
    index: usize,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    kick: vmm_sys_util::eventfd::EventFd,
    call: vmm_sys_util::eventfd::EventFd,
}

/// Connect to a backend socket that exists, retrying a few times while it is refused (the
/// backend may be between bind and listen).
fn connect_stream(path: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    let mut tries = 0;
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && tries < 5 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

/// Whether `path` exists, or appears within `within` ([`SOCKET_WAIT`] but in tests).
fn wait_for_socket(path: &Path, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The protocol features the frontend uses when the backend offers them.
const WANTED_PROTOCOL: VhostUserProtocolFeatures = VhostUserProtocolFeatures::MQ
    .union(VhostUserProtocolFeatures::REPLY_ACK)
    .union(VhostUserProtocolFeatures::CONFIG)
    .union(VhostUserProtocolFeatures::BACKEND_REQ)
    .union(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
    .union(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
    .union(VhostUserProtocolFeatures::DEVICE_STATE)
    .union(VhostUserProtocolFeatures::LOG_SHMFD);

/// What the driver-independent part of the negotiation learned from one connection.
struct Handshake {
    backend_features: u64,
    protocol: VhostUserProtocolFeatures,
    /// The backend's GET_QUEUE_NUM (with MQ).
    queue_num: Option<usize>,
    channel: Option<BackendChannel>,
}

/// SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM and SET_BACKEND_REQ_FD on a
/// new connection: the same sequence at start and at every reconnect, within `timeout`.
fn handshake(
    name: &str,
    socket: &Path,
    frontend: &mut Frontend,
    want: VhostUserProtocolFeatures,
    timeout: Duration,
) -> Result<Handshake, FrontendError> {
    let err = |step| protocol_err(name, socket, step);
    let _deadline = call_deadline::armed(name, frontend.as_raw_fd(), timeout);
    frontend.set_owner().map_err(err("SET_OWNER"))?;
    let backend_features = frontend.get_features().map_err(err("GET_FEATURES"))?;
    if backend_features & F_VERSION_1 == 0 {
        return Err(FrontendError::MissingFeature {
            device: name.into(),
            socket: socket.into(),
            feature: "VIRTIO_F_VERSION_1",
        });
    }
    let mut hs = Handshake {
        backend_features,
        protocol: VhostUserProtocolFeatures::empty(),
        queue_num: None,
        channel: None,
    };
    if backend_features & F_PROTOCOL_FEATURES == 0 {
        return Ok(hs);
    }
    // always GET before SET, also on a reconnect, or a backend never honours REPLY_ACK
    let offered = frontend
        .get_protocol_features()
        .map_err(err("GET_PROTOCOL_FEATURES"))?;
    hs.protocol = offered & want;
    frontend
        .set_protocol_features(hs.protocol)
        .map_err(err("SET_PROTOCOL_FEATURES"))?;
    if hs.protocol.contains(VhostUserProtocolFeatures::MQ) {
        let count = frontend.get_queue_num().map_err(err("GET_QUEUE_NUM"))?;
        let max = crate::virtio::pci::MAX_QUEUES;
        if !(1..=max as u64).contains(&count) {
            return Err(FrontendError::QueueCount {
                device: name.into(),
                socket: socket.into(),
                count,
                max,
            });
        }
        hs.queue_num = Some(count as usize);
    }
    if hs.protocol.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
        let reply_ack = hs.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
        let channel = BackendChannel::new(name, reply_ack)
            .map_err(|e| err("backend channel")(vhost::Error::VhostUserProtocol(e)))?;
        frontend
            .set_backend_request_fd(&channel.backend_end())
            .map_err(err("SET_BACKEND_REQ_FD"))?;
        hs.channel = Some(channel);
    }
    Ok(hs)
}

impl VhostUserDevice {
    /// Connect to the backend at `socket` and negotiate everything that does not depend on the
    /// driver: owner, features, protocol features, queue count (from `units` of the type's
    /// queues, or the backend's, see [`DeviceType::negotiated_queue_count`]).
    pub fn connect(
        name: &str,
        socket: &Path,
        device_type: u32,
        units: QueueUnits,
        queue_size: u16,
        mem: GuestMemoryMmap,
    ) -> Result<VhostUserDevice, FrontendError> {
        if !wait_for_socket(socket, SOCKET_WAIT) {
            return Err(FrontendError::NoSocket {
                device: name.into(),
                socket: socket.into(),
            });
        }
        let err = |step| protocol_err(name, socket, step);
        let kind = DeviceType::of(device_type);
        let stream = connect_stream(socket).map_err(|e| {
            err("connect")(vhost::Error::VhostUserProtocol(
                vhost::vhost_user::Error::SocketConnect(e),
            ))
        })?;
        let mut frontend = reconnect::new_frontend(stream);
        let call_timeout = reconnect::CALL_TIMEOUT;
        let hs = handshake(name, socket, &mut frontend, WANTED_PROTOCOL, call_timeout)?;
        let mut queue_count = kind.queue_count(units);
        if let Some(max) = hs.queue_num {
            let expected = kind.expected_backend_queue_count(units, hs.backend_features);
            if kind.queue_count_rule == QueueCountRule::Backend && max != expected {
                tracing::info!(
                    device = name,
                    queues = max,
                    "using the backend's queue count"
                );
            }
            queue_count = kind.negotiated_queue_count(units, max);
            if queue_count > kind.max_queues {
                return Err(FrontendError::QueueCount {
                    device: name.into(),
                    socket: socket.into(),
                    count: max as u64,
                    max: kind.max_queues,
                });
            }
        }
        let (backend_features, protocol, backend_channel) =
            (hs.backend_features, hs.protocol, hs.channel);
        let channel_closer = backend_channel.as_ref().and_then(|c| c.closer().ok());
        tracing::info!(device = name, socket = %socket.display(), features = format_args!("{backend_features:#x}"), ?protocol, queues = queue_count, "vhost-user backend connected");
        Ok(VhostUserDevice {
            name: name.into(),
            socket: socket.into(),
            frontend,
            device_type,
            queue_sizes: vec![queue_size; queue_count],
            config_size: kind.config_size,
            backend_features,
            protocol,
            acked_features: 0,
            mem,
            vrings: Vec::new(),
            backend_channel,
            channel_closer,
            regions_added: false,
            ring_setups: Vec::new(),
            config_cache: vec![0; kind.config_size as usize],
            link: reconnect::Link::default(),
            call_timeout,
            inflight: None,
            saved_state: None,
            suspended: false,
            released: false,
            retired: false,
            logging: false,
            log: None,
        })
    }

    /// The channel the backend sends its own requests on, to be served once the device's
    /// transport exists (see [`BackendChannel::spawn`]).
    pub fn take_backend_channel(&mut self) -> Option<BackendChannel> {
        self.backend_channel.take()
    }

    /// The connection to the backend, for [`reconnect`]'s watch.
    pub fn socket_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }

    /// Put the exchange about to start on the current connection under its deadline.
    fn deadline(&self) -> call_deadline::Armed {
        call_deadline::armed(&self.name, self.frontend.as_raw_fd(), self.call_timeout)
    }

    fn host_addr(&self, gpa: u64, what: &'static str) -> Result<u64, FrontendError> {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|_| FrontendError::RingAddress {
                device: self.name.clone(),
                what,
                gpa,
            })
    }

    /// Start the rings of the driver's last activation on the current connection:
    /// SET_FEATURES, the memory table, the in-flight region (with INFLIGHT_SHMFD), then per
    /// ring SET_VRING_NUM/ADDR/BASE/CALL/KICK/ENABLE.
    /// A fresh activation starts every ring at 0, a new connection under a running driver
    /// where the guest's used ring says the old backend got to, a suspended ring where
    /// GET_VRING_BASE stopped it ([`suspend::RingBase`]).
    fn start_rings(&mut self, from: suspend::RingBase) -> Result<(), FrontendError> {
        let saved: Vec<Option<u32>> = self.vrings.iter().map(|r| r.stop_base).collect();
        let (name, socket) = (self.name.clone(), self.socket.clone());
        let err = |step| protocol_err(&name, &socket, step);
        let _deadline = self.deadline();
        self.frontend
            .set_features(self.features_to_send())
            .map_err(err("SET_FEATURES"))?;
        let regions: Vec<VhostUserMemoryRegionInfo> = self
            .mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<_, _>>()
            .map_err(err("memory table"))?;
        if self
            .protocol
            .contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
        {
            // one region at a time (what memory hotplug will need); the backend keeps them
            // across driver resets, so only once per connection
            if !self.regions_added {
                let max = self
                    .frontend
                    .get_max_mem_slots()
                    .map_err(err("GET_MAX_MEM_SLOTS"))?;
                if regions.len() as u64 > max {
                    return Err(FrontendError::TooManyRegions {
                        device: name.clone(),
                        regions: regions.len(),
                        max,
                    });
                }
                for r in &regions {
                    self.frontend
                        .add_mem_region(r)
                        .map_err(err("ADD_MEM_REG"))?;
                }
                self.regions_added = true;
            }
        } else {
            self.frontend
                .set_mem_table(&regions)
                .map_err(err("SET_MEM_TABLE"))?;
        }
        self.resend_log()?;
        self.send_inflight_region()?;
        self.vrings.clear();
        for q in 0..self.ring_setups.len() {
            let r = &self.ring_setups[q];
            let (i, size, used) = (r.index, r.size, r.used);
            let config = VringConfigData {
                queue_max_size: self.queue_sizes.get(i).copied().unwrap_or(size),
                queue_size: size,
                flags: 0,
                desc_table_addr: self.host_addr(r.desc, "descriptor table")?,
                used_ring_addr: self.host_addr(r.used, "used ring")?,
                avail_ring_addr: self.host_addr(r.avail, "available ring")?,
                log_addr: None,
            };
            let base = match from {
                suspend::RingBase::Zero => 0,
                suspend::RingBase::UsedIndex => self.used_index(used)?,
                suspend::RingBase::Stopped => saved.get(q).copied().flatten().unwrap_or(0) as u16,
            };
            let r = &self.ring_setups[q];
            self.frontend
                .set_vring_num(i, size)
                .map_err(err("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(i, &config)
                .map_err(err("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(i, base)
                .map_err(err("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(i, &r.call)
                .map_err(err("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(i, &r.kick)
                .map_err(err("SET_VRING_KICK"))?;
            if self.backend_features & F_PROTOCOL_FEATURES != 0 {
                self.frontend
                    .set_vring_enable(i, true)
                    .map_err(err("SET_VRING_ENABLE"))?;
            }
            self.vrings.push(VringState {
                index: i as u32,
                size,
                start_base: u32::from(base),
                running: true,
                stop_base: None,
            });
        }
        Ok(())
    }
}

impl VirtioDevice for VhostUserDevice {
    fn device_type(&self) -> u32 {
        self.device_type
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        self.queue_sizes.clone()
    }

    fn features(&self) -> u64 {
        self.backend_features & !VHOST_ONLY
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let end = offset + data.len() as u64;
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG)
            || end > u64::from(self.config_size)
        {
            return;
        }
        // while the backend is away the guest reads the space as it was last seen
        if self.link.is_up() {
            let _ = self.refresh_config();
        }
        if let Some(src) = self.config_cache.get(offset as usize..end as usize) {
            data.copy_from_slice(src);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) || !self.link.is_up() {
            return;
        }
        let _deadline = self.deadline();
        // flags 0: the vhost-user spec's VHOST_SET_CONFIG_TYPE_FRONTEND (a driver's write).
        // The vhost crate's `WRITABLE` is the spec's 1, MIGRATION, which libvhost-user
        // backends (qemu-storage-daemon) refuse for a driver's write.
        match self
            .frontend
            .set_config(offset as u32, VhostUserConfigFlags::empty(), data)
        {
            Ok(()) => {
                // the copy a restarted backend is given ([`reconnect`]) has the write too
                let end = offset as usize + data.len();
                if let Some(dst) = self.config_cache.get_mut(offset as usize..end) {
                    dst.copy_from_slice(data);
                }
            }
            Err(e) => tracing::warn!(device = %self.name, error = %e, "SET_CONFIG failed"),
        }
    }

    fn activate(&mut self, features: u64, queues: &[QueueSetup]) -> Result<(), String> {
        self.vrings.clear();
        self.activate_from(features, queues, suspend::RingBase::Zero)
    }

    fn reset(&mut self) {
        self.ring_setups.clear();
        // the driver starts over: the next activation asks for a fresh in-flight record
        self.inflight = None;
        let up = self.link.is_up();
        let _deadline = (up && self.vrings.iter().any(|r| r.running)).then(|| self.deadline());
        let mut failed = false;
        for ring in self.vrings.iter_mut().filter(|r| r.running) {
            ring.running = false;
            if !up {
                continue; // the backend is gone: nothing runs the ring
            }
            let i = ring.index as usize;
            // GET_VRING_BASE stops the ring in the backend
            match self.frontend.get_vring_base(i) {
                Ok(base) => ring.stop_base = Some(base),
                Err(e) => {
                    let device = &self.name;
                    tracing::warn!(%device, queue = i, error = %e, "GET_VRING_BASE failed");
                    failed = true;
                }
            }
        }
        if failed {
            self.close_connection();
        }
    }

    fn state(&self) -> VirtioDeviceState {
        VirtioDeviceState::VhostUser(self.vhost_user_state())
    }
}
