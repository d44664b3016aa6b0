//! The generic vhost-user frontend: any vhost-user backend process becomes a [`VirtioDevice`].
//! The whole negotiation sequence lives here (connect, owner, features, protocol features,
//! queue count, config space, memory table, rings); the vmm knows only a device's type, queue
//! count and config size.

pub mod monitor;

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};

pub mod backend_requests;
use backend_requests::BackendChannel;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::virtio::{QueueSetup, VirtioDevice, F_VERSION_1, TYPE_BALLOON, TYPE_BLOCK, TYPE_NET};

/// How long to wait for a backend's socket to appear.
pub const SOCKET_WAIT: Duration = Duration::from_secs(10);
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// virtio-net's control queue: it comes after the queue pairs.
const F_NET_CTRL_VQ: u64 = 1 << 17;

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

/// Per-type defaults: `(queues per --device queues=N unit, config space size)`.
pub fn type_defaults(device_type: u32) -> (u16, u32) {
    match device_type {
        TYPE_NET => (2, 12),    // an rx/tx pair per queue; mac, status, max pairs, mtu
        TYPE_BLOCK => (1, 60),  // struct virtio_blk_config
        TYPE_BALLOON => (3, 8), // inflate, deflate, stats; num_pages, actual
        _ => (1, 0),
    }
}

/// Stands in for a device whose backend could not be reached at start: it offers no features
/// (not even VIRTIO_F_VERSION_1), so the guest's driver rejects it cleanly, and it reports
/// DEVICE_NEEDS_RESET. The VM and its other devices run normally.
pub struct AbsentDevice {
    pub device_type: u32,
}

impl VirtioDevice for AbsentDevice {
    fn device_type(&self) -> u32 {
        self.device_type
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![1]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, _features: u64, _queues: &[QueueSetup]) -> Result<(), String> {
        Err("the device has no backend".into())
    }
    fn reset(&mut self) {}
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
    mem: GuestMemoryMmap,
    active: Vec<usize>,
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
    /// driver: owner, features, protocol features, queue count.
    pub fn connect(
        name: &str,
        socket: &Path,
        device_type: u32,
        queues: u16,
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
        let (per_unit, config_size) = type_defaults(device_type);
        let mut count = usize::from(queues.max(1) * per_unit);
        // the largest count this connection can end up with (a net backend's, see below)
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
                count = if device_type == TYPE_NET || device_type == TYPE_BALLOON {
                    // the guest lays these queues out from what the backend offers (a net
                    // device's max_virtqueue_pairs and control queue, a balloon's stats and
                    // reporting queues): follow the backend
                    if max != count + usize::from(backend_features & F_NET_CTRL_VQ != 0) {
                        tracing::info!(
                            device = name,
                            queues = max,
                            "using the backend's queue count"
                        );
                    }
                    max
                } else {
                    count.min(max)
                };
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
        tracing::info!(device = name, socket = %socket.display(), features = format_args!("{backend_features:#x}"), ?protocol, queues = count, "vhost-user backend connected");
        Ok(VhostUserDevice {
            name: name.into(),
            socket: socket.into(),
            frontend,
            device_type,
            queue_sizes: vec![queue_size; count],
            config_size,
            backend_features,
            protocol,
            mem,
            active: Vec::new(),
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
        self.frontend
            .set_features(features | (self.backend_features & F_PROTOCOL_FEATURES))
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
            self.frontend
                .set_vring_num(i, q.size)
                .map_err(err("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(i, &config)
                .map_err(err("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(i, 0)
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
            self.active.push(i);
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
        self.active.clear();
        self.setup(features, queues).map_err(|e| e.to_string())
    }

    fn reset(&mut self) {
        for i in std::mem::take(&mut self.active) {
            // GET_VRING_BASE stops the ring in the backend
            if let Err(e) = self.frontend.get_vring_base(i) {
                tracing::warn!(device = %self.name, queue = i, error = %e, "GET_VRING_BASE failed");
            }
        }
    }
}
