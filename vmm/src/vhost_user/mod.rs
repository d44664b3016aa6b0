//! The generic vhost-user frontend: any vhost-user backend process becomes a [`VirtioDevice`].
//! The whole negotiation sequence lives here (connect, owner, features, protocol features,
//! queue count, config space, memory table, rings); what the vmm knows of a device type (queues
//! per unit, config size, whose queue count wins) is the table in
//! [`crate::virtio::device_type`]. What a snapshot keeps of the device is in [`persist`].

pub mod monitor;
pub mod persist;

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
    #[error("device {device}: the {what} address {gpa:#x} is outside guest memory")]
    RingAddress {
        device: String,
        what: &'static str,
        gpa: u64,
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
    /// With CONFIGURE_MEM_SLOTS: whether ADD_MEM_REG has sent the regions on this connection.
    regions_added: bool,
}

fn wait_for_socket(path: &Path) -> bool {
    let start = Instant::now();
    while start.elapsed() < SOCKET_WAIT {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
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
        if !wait_for_socket(socket) {
            return Err(FrontendError::NoSocket {
                device: name.into(),
                socket: socket.into(),
            });
        }
        let err = |step| protocol_err(name, socket, step);
        let kind = DeviceType::of(device_type);
        let mut queue_count = kind.queue_count(units);
        let mut frontend = Frontend::connect(socket, 64).map_err(err("connect"))?;
        frontend.set_owner().map_err(err("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(err("GET_FEATURES"))?;
        if backend_features & F_VERSION_1 == 0 {
            return Err(FrontendError::MissingFeature {
                device: name.into(),
                socket: socket.into(),
                feature: "VIRTIO_F_VERSION_1",
            });
        }
        let mut protocol = VhostUserProtocolFeatures::empty();
        let mut backend_channel = None;
        if backend_features & F_PROTOCOL_FEATURES != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(err("GET_PROTOCOL_FEATURES"))?;
            let wanted = VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::BACKEND_REQ
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
            protocol = offered & wanted;
            frontend
                .set_protocol_features(protocol)
                .map_err(err("SET_PROTOCOL_FEATURES"))?;
            if protocol.contains(VhostUserProtocolFeatures::MQ) {
                let max = frontend.get_queue_num().map_err(err("GET_QUEUE_NUM"))? as usize;
                let expected = kind.expected_backend_queue_count(units, backend_features);
                if kind.queue_count_rule == QueueCountRule::Backend && max != expected {
                    tracing::info!(
                        device = name,
                        queues = max,
                        "using the backend's queue count"
                    );
                }
                queue_count = kind.negotiated_queue_count(units, max);
            }
            if protocol.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
                let reply_ack = protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
                let channel = BackendChannel::new(name, reply_ack)
                    .map_err(|e| err("backend channel")(vhost::Error::VhostUserProtocol(e)))?;
                frontend
                    .set_backend_request_fd(&channel.backend_end())
                    .map_err(err("SET_BACKEND_REQ_FD"))?;
                backend_channel = Some(channel);
            }
        }
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
            regions_added: false,
        })
    }

    /// The channel the backend sends its own requests on, to be served once the device's
    /// transport exists (see [`BackendChannel::spawn`]).
    pub fn take_backend_channel(&mut self) -> Option<BackendChannel> {
        self.backend_channel.take()
    }

    /// The connection to the backend, for [`monitor`].
    pub fn socket_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
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

    fn setup(&mut self, features: u64, queues: &[QueueSetup]) -> Result<(), FrontendError> {
        let (name, socket) = (self.name.clone(), self.socket.clone());
        let err = |step| protocol_err(&name, &socket, step);
        let acked = features | (self.backend_features & F_PROTOCOL_FEATURES);
        self.frontend
            .set_features(acked)
            .map_err(err("SET_FEATURES"))?;
        self.acked_features = acked;
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
        for q in queues {
            let config = VringConfigData {
                queue_max_size: self.queue_sizes.get(q.index).copied().unwrap_or(q.size),
                queue_size: q.size,
                flags: 0,
                desc_table_addr: self.host_addr(q.desc, "descriptor table")?,
                used_ring_addr: self.host_addr(q.used, "used ring")?,
                avail_ring_addr: self.host_addr(q.avail, "available ring")?,
                log_addr: None,
            };
            let i = q.index;
            let base = 0;
            self.frontend
                .set_vring_num(i, q.size)
                .map_err(err("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(i, &config)
                .map_err(err("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(i, base)
                .map_err(err("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(i, q.call)
                .map_err(err("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(i, q.kick)
                .map_err(err("SET_VRING_KICK"))?;
            if self.backend_features & F_PROTOCOL_FEATURES != 0 {
                self.frontend
                    .set_vring_enable(i, true)
                    .map_err(err("SET_VRING_ENABLE"))?;
            }
            self.vrings.push(VringState {
                index: i as u32,
                size: q.size,
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
        self.backend_features & !F_PROTOCOL_FEATURES
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let end = offset + data.len() as u64;
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG)
            || end > u64::from(self.config_size)
        {
            return;
        }
        // QEMU's convention: fetch the whole space from offset 0, then slice it
        let size = self.config_size;
        match self.frontend.get_config(
            0,
            size,
            VhostUserConfigFlags::WRITABLE,
            &vec![0u8; size as usize],
        ) {
            Ok((_, payload)) => {
                if let Some(src) = payload.get(offset as usize..end as usize) {
                    data.copy_from_slice(src);
                }
            }
            Err(e) => tracing::warn!(device = %self.name, error = %e, "GET_CONFIG failed"),
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return;
        }
        if let Err(e) =
            self.frontend
                .set_config(offset as u32, VhostUserConfigFlags::WRITABLE, data)
        {
            tracing::warn!(device = %self.name, error = %e, "SET_CONFIG failed");
        }
    }

    fn activate(&mut self, features: u64, queues: &[QueueSetup]) -> Result<(), String> {
        self.vrings.clear();
        self.setup(features, queues).map_err(|e| e.to_string())
    }

    fn reset(&mut self) {
        for ring in self.vrings.iter_mut().filter(|r| r.running) {
            ring.running = false;
            let i = ring.index as usize;
            // GET_VRING_BASE stops the ring in the backend
            match self.frontend.get_vring_base(i) {
                Ok(base) => ring.stop_base = Some(base),
                Err(e) => {
                    let device = &self.name;
                    tracing::warn!(%device, queue = i, error = %e, "GET_VRING_BASE failed");
                }
            }
        }
    }

    fn state(&self) -> VirtioDeviceState {
        VirtioDeviceState::VhostUser(self.vhost_user_state())
    }
}
