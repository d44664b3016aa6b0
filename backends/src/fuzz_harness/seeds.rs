//! What the backends' seeds are written with: the bodies of the vhost crate's messages, and
//! the sequences our vmm (and QEMU) send, valid and broken, for any device.

use std::io;

use vhost::vhost_user::message::{
    FrontendReq, VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfig,
    VhostUserConfigFlags, VhostUserInflight, VhostUserLog, VhostUserMemory, VhostUserMemoryRegion,
    VhostUserProtocolFeatures, VhostUserSingleMemoryRegion, VhostUserTransferDeviceState,
    VhostUserU64, VhostUserVringAddr, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost_user_backend::VhostUserBackend;
use vm_memory::ByteValued;

use super::{encode, FdKind, Message, FRONTEND_VA, GUEST_RAM};

/// The bytes of one of the vhost crate's message bodies.
pub fn body<T: ByteValued>(value: &T) -> Vec<u8> {
    value.as_slice().to_vec()
}

/// `messages` without GET/SET_INFLIGHT_FD.
pub fn without_inflight(messages: &[Message]) -> Vec<Message> {
    let inflight = [
        FrontendReq::GET_INFLIGHT_FD as u32,
        FrontendReq::SET_INFLIGHT_FD as u32,
    ];
    messages
        .iter()
        .filter(|m| !inflight.contains(&m.code))
        .cloned()
        .collect()
}

/// A `VhostUserInflight` body (size and offset 0) with its 4 bytes of tail padding written as
/// zeroes: [`body`] would copy whatever the padding holds, and seeds must be the same bytes
/// on every run.
pub fn inflight_body(num_queues: u16, queue_size: u16) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b.extend(num_queues.to_le_bytes());
    b.extend(queue_size.to_le_bytes());
    b.extend([0u8; 4]);
    assert_eq!(b.len(), std::mem::size_of::<VhostUserInflight>());
    b
}

pub fn u64_body(value: u64) -> Vec<u8> {
    body(&VhostUserU64::new(value))
}

pub fn vring_state(index: u32, num: u32) -> Vec<u8> {
    body(&VhostUserVringState::new(index, num))
}

/// A region of the seeds' guest RAM layout: `len` bytes at guest address `gpa`, mapped by the
/// frontend at `FRONTEND_VA + gpa`, at offset `gpa` of the memfd.
pub fn region(gpa: u64, len: u64) -> VhostUserMemoryRegion {
    VhostUserMemoryRegion::new(gpa, len, FRONTEND_VA + gpa, gpa)
}

/// SET_MEM_TABLE's body.
pub fn mem_table(regions: &[VhostUserMemoryRegion]) -> Vec<u8> {
    let mut b = body(&VhostUserMemory::new(regions.len() as u32));
    for r in regions {
        b.extend_from_slice(r.as_slice());
    }
    b
}

/// ADD_MEM_REG's (and REM_MEM_REG's) body.
pub fn single_region(r: &VhostUserMemoryRegion) -> Vec<u8> {
    let (gpa, len, va, off) = (r.guest_phys_addr, r.memory_size, r.user_addr, r.mmap_offset);
    body(&VhostUserSingleMemoryRegion::new(gpa, len, va, off))
}

/// Queue `q`'s rings in the frontend's address space: (descriptors, available, used), room
/// for 256 entries each, from 64 KiB into guest RAM.
pub fn ring_addresses(q: u32) -> (u64, u64, u64) {
    let base = FRONTEND_VA + 0x1_0000 + u64::from(q) * 0x4000;
    (base, base + 0x1000, base + 0x2000)
}

pub fn vring_addr(q: u32) -> Vec<u8> {
    let (desc, avail, used) = ring_addresses(q);
    let flags = VhostUserVringAddrFlags::empty();
    body(&VhostUserVringAddr::new(q, flags, desc, used, avail, 0))
}

/// GET_CONFIG's (or SET_CONFIG's) body: `size` bytes from `offset`, zero or `data`.
pub fn config(offset: u32, size: u32, data: &[u8]) -> Vec<u8> {
    let mut b = body(&VhostUserConfig::new(
        offset,
        size,
        VhostUserConfigFlags::WRITABLE,
    ));
    let mut payload = data.to_vec();
    payload.resize(size as usize, 0);
    b.extend_from_slice(&payload);
    b
}

/// What the seeds need to know of a device.
#[derive(Debug, Clone)]
pub struct Device {
    /// The input's setup byte without bit 0 (the backend's own choices).
    pub setup: u8,
    /// The backend's GET_FEATURES.
    pub features: u64,
    /// The backend's GET_PROTOCOL_FEATURES (without the REPLY_ACK the vhost crate adds).
    pub protocol: VhostUserProtocolFeatures,
    pub queues: u32,
    pub queue_size: u32,
    pub config_size: u32,
}

/// The protocol features our vmm asks for (vmm/src/vhost_user/mod.rs, `WANTED_PROTOCOL`).
pub const VMM_PROTOCOL: VhostUserProtocolFeatures = VhostUserProtocolFeatures::MQ
    .union(VhostUserProtocolFeatures::REPLY_ACK)
    .union(VhostUserProtocolFeatures::CONFIG)
    .union(VhostUserProtocolFeatures::BACKEND_REQ)
    .union(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
    .union(VhostUserProtocolFeatures::INFLIGHT_SHMFD);

impl Device {
    /// What the seeds need to know of `backend`, which setup byte `setup` chose, and whose
    /// config space is `config_size` bytes.
    pub fn of<B: VhostUserBackend>(backend: &B, setup: u8, config_size: usize) -> Device {
        Device {
            setup,
            features: backend.features(),
            protocol: backend.protocol_features(),
            queues: backend.num_queues() as u32,
            queue_size: backend.max_queue_size() as u32,
            config_size: config_size as u32,
        }
    }

    /// What the vmm acks: the features it wants that the backend offers (with REPLY_ACK, which
    /// the vhost crate always offers).
    pub fn acked_protocol(&self) -> VhostUserProtocolFeatures {
        (self.protocol | VhostUserProtocolFeatures::REPLY_ACK) & VMM_PROTOCOL
    }

    /// SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES (acking `protocol`). `ack`:
    /// NEED_REPLY on every request that allows one, as QEMU sends them with REPLY_ACK.
    pub fn negotiate(&self, protocol: VhostUserProtocolFeatures, ack: bool) -> Vec<Message> {
        use FrontendReq as R;
        vec![
            acked(Message::new(R::SET_OWNER, []), ack),
            Message::new(R::GET_FEATURES, []),
            Message::new(R::GET_PROTOCOL_FEATURES, []),
            acked(
                Message::new(R::SET_PROTOCOL_FEATURES, u64_body(protocol.bits())),
                ack,
            ),
        ]
    }

    /// Our vmm's handshake on a new connection (vmm/src/vhost_user/mod.rs `handshake`), and
    /// the config read of the driver's probe.
    pub fn handshake(&self, ack: bool) -> Vec<Message> {
        use FrontendReq as R;
        let p = self.acked_protocol();
        let mut m = self.negotiate(p, ack);
        if p.contains(VhostUserProtocolFeatures::MQ) {
            m.push(Message::new(R::GET_QUEUE_NUM, []));
        }
        if p.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
            m.push(acked(Message::new(R::SET_BACKEND_REQ_FD, []), ack));
        }
        if p.contains(VhostUserProtocolFeatures::CONFIG) {
            m.push(Message::new(
                R::GET_CONFIG,
                config(0, self.config_size, &[]),
            ));
        }
        m
    }

    /// The vmm's start of the rings once the driver is ready (`start_rings`): SET_FEATURES,
    /// the memory table (`first`: on a connection's first start; one ADD_MEM_REG with
    /// CONFIGURE_MEM_SLOTS, which the vmm sends only once), every ring set up and enabled.
    pub fn activate(&self, first: bool, ack: bool) -> Vec<Message> {
        use FrontendReq as R;
        let mut m = vec![acked(
            Message::new(R::SET_FEATURES, u64_body(self.features)),
            ack,
        )];
        m.extend(self.memory(first, ack));
        m.extend(self.inflight());
        for q in 0..self.queues {
            m.extend(self.ring(q).into_iter().map(|r| acked(r, ack)));
        }
        m
    }

    /// With INFLIGHT_SHMFD: GET_INFLIGHT_FD, then SET_INFLIGHT_FD with the region placed just
    /// past the guest RAM in its memfd (the natural descriptor), where it starts zeroed;
    /// mutations of its offset move it into the RAM the input writes.
    fn inflight(&self) -> Vec<Message> {
        use FrontendReq as R;
        if !self
            .acked_protocol()
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
        {
            return Vec::new();
        }
        let (queues, size) = (self.queues as u16, self.queue_size as u16);
        let area = (16 + 16 * u64::from(size)).div_ceil(64) * 64;
        let mut set = inflight_body(queues, size);
        set[..8].copy_from_slice(&(area * u64::from(queues)).to_le_bytes());
        set[8..16].copy_from_slice(&GUEST_RAM.to_le_bytes());
        vec![
            Message::new(R::GET_INFLIGHT_FD, inflight_body(queues, size)),
            Message::new(R::SET_INFLIGHT_FD, set),
        ]
    }

    fn memory(&self, first: bool, ack: bool) -> Vec<Message> {
        use FrontendReq as R;
        let slots = self
            .acked_protocol()
            .contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);
        if !slots {
            let table = mem_table(&[region(0, GUEST_RAM)]);
            return vec![acked(Message::new(R::SET_MEM_TABLE, table), ack)];
        }
        if !first {
            return Vec::new();
        }
        let ram = single_region(&region(0, GUEST_RAM));
        vec![
            Message::new(R::GET_MAX_MEM_SLOTS, []),
            acked(Message::new(R::ADD_MEM_REG, ram), ack),
        ]
    }

    /// The handshake and the first start.
    pub fn start(&self, ack: bool) -> Vec<Message> {
        [self.handshake(ack), self.activate(true, ack)].concat()
    }

    /// One ring's setup: NUM, ADDR, BASE, CALL, KICK, ENABLE.
    pub fn ring(&self, q: u32) -> Vec<Message> {
        use FrontendReq as R;
        vec![
            Message::new(R::SET_VRING_NUM, vring_state(q, self.queue_size)),
            Message::new(R::SET_VRING_ADDR, vring_addr(q)),
            Message::new(R::SET_VRING_BASE, vring_state(q, 0)),
            Message::new(R::SET_VRING_CALL, u64_body(u64::from(q))),
            Message::new(R::SET_VRING_KICK, u64_body(u64::from(q))),
            Message::new(R::SET_VRING_ENABLE, vring_state(q, 1)),
        ]
    }

    /// The stop at a guest reset or shutdown: GET_VRING_BASE on every ring.
    pub fn stop(&self) -> Vec<Message> {
        (0..self.queues)
            .map(|q| Message::new(FrontendReq::GET_VRING_BASE, vring_state(q, 0)))
            .collect()
    }

    /// A seed: its name (a file name: `[a-z0-9-]`) and its input.
    pub fn seed(&self, name: &str, relay: bool, messages: &[Message]) -> (String, Vec<u8>) {
        let setup = self.setup & !1 | u8::from(relay);
        (name.to_string(), encode(setup, messages))
    }

    /// The vmm's start and stop, through the relay, named `vmm-start-stop-<variant>`.
    pub fn start_stop_seed(&self, variant: &str) -> (String, Vec<u8>) {
        let life = [self.start(false), self.stop()].concat();
        self.seed(&format!("vmm-start-stop-{variant}"), true, &life)
    }

    /// Seeds every backend shares: the vmm's start and stop (through the relay and straight),
    /// QEMU's with reply acks, a guest reboot, the legacy start without protocol features,
    /// memory-table changes, config-space access, requests the backends do not support, and
    /// broken streams (each named `broken-*`, each ends the connection).
    pub fn seeds(&self) -> Vec<(String, Vec<u8>)> {
        use FrontendReq as R;
        let life = [self.start(false), self.stop()].concat();
        let reboot = [life.clone(), self.activate(false, false), self.stop()].concat();
        let with_acks = [self.start(true), self.stop()].concat();
        // no PROTOCOL_FEATURES acked: SET_FEATURES enables every ring at once
        let legacy = [
            vec![
                Message::new(R::SET_OWNER, []),
                Message::new(R::GET_FEATURES, []),
                Message::new(R::SET_FEATURES, u64_body(self.features & !F_PROTOCOL)),
                Message::new(R::SET_MEM_TABLE, mem_table(&[region(0, GUEST_RAM)])),
            ],
            self.ring(0)[..5].to_vec(),
            self.stop(),
        ]
        .concat();
        let slots = self.acked_protocol() | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        let half = GUEST_RAM / 2;
        let more = single_region(&region(GUEST_RAM, GUEST_RAM));
        let memory_changes = [
            self.negotiate(slots, false),
            vec![
                Message::new(R::SET_FEATURES, u64_body(self.features)),
                Message::new(
                    R::SET_MEM_TABLE,
                    mem_table(&[region(0, half), region(half, half)]),
                ),
                Message::new(R::SET_MEM_TABLE, mem_table(&[region(0, GUEST_RAM)])),
                Message::new(R::ADD_MEM_REG, more.clone()),
                Message::new(R::REM_MEM_REG, more),
            ],
            self.ring(0),
            self.stop(),
        ]
        .concat();
        let config_space = [
            self.negotiate(self.acked_protocol(), false),
            vec![
                Message::new(R::GET_CONFIG, config(0, self.config_size, &[])),
                Message::new(R::GET_CONFIG, config(4, 4, &[])),
                Message::new(R::GET_CONFIG, config(self.config_size, 8, &[])),
                Message::new(R::GET_CONFIG, config(0, 256, &[])),
                Message::new(R::SET_CONFIG, config(4, 4, &[1, 0, 0, 0])).need_reply(),
                Message::new(R::GET_CONFIG, config(0, self.config_size, &[])),
            ],
        ]
        .concat();
        // everything acked, offered or not (the handler checks only what was acked)
        let all = VhostUserProtocolFeatures::all();
        let unsupported = [
            self.negotiate(all, false),
            self.activate(true, false),
            vec![
                Message::new(
                    R::SET_DEVICE_STATE_FD,
                    body(&VhostUserTransferDeviceState::new(
                        VhostTransferStateDirection::SAVE,
                        VhostTransferStatePhase::STOPPED,
                    )),
                ),
                Message::new(R::CHECK_DEVICE_STATE, []),
                Message::new(R::SET_VRING_ERR, u64_body(0)),
                Message::new(R::SET_VRING_CALL, u64_body(0x100)),
                Message::new(R::SET_VRING_KICK, u64_body(0)).fds(FdKind::Socket, 1),
                Message::new(R::RESET_DEVICE, []),
                Message::new(R::RESET_OWNER, []),
            ],
        ]
        .concat();
        let mut seeds = vec![
            self.seed("vmm-start-stop", true, &life),
            // straight to the handler, which does not serve the inflight messages (the relay
            // does): as a frontend that did not ask for them
            self.seed("vmm-start-stop-direct", false, &without_inflight(&life)),
            self.seed("vmm-handshake-only", true, &self.handshake(false)),
            self.seed("qemu-reply-acks", true, &with_acks),
            self.seed("guest-reboot", true, &reboot),
            self.seed("legacy-no-protocol-features", false, &legacy),
            self.seed("memory-table-changes", true, &memory_changes),
            self.seed("config-space", true, &config_space),
            self.seed(
                "unsupported-requests",
                false,
                &without_inflight(&unsupported),
            ),
        ];
        seeds.extend(self.broken_seeds());
        seeds
    }

    fn broken_seeds(&self) -> Vec<(String, Vec<u8>)> {
        use FrontendReq as R;
        // the handshake, features and memory, but no ring yet
        let ready = [self.handshake(false), self.activate(true, false)].concat();
        let ready = &ready[..ready.len() - 6 * self.queues as usize];
        let then = |tail: Vec<Message>| [ready.to_vec(), tail].concat();
        let ring_with = |kick: Message| {
            let mut r = self.ring(0);
            r[4] = kick;
            then(r)
        };
        let table = || mem_table(&[region(0, GUEST_RAM)]);
        let stray_ring = VhostUserVringAddr::new(
            0,
            VhostUserVringAddrFlags::empty(),
            FRONTEND_VA - 0x1000,
            FRONTEND_VA + GUEST_RAM,
            FRONTEND_VA + 8 * GUEST_RAM,
            0,
        );
        // what the backends do not offer, acked anyway
        let everything = [
            self.negotiate(VhostUserProtocolFeatures::all(), false),
            self.activate(true, false),
        ]
        .concat();
        let with_everything = |m: Message| [everything.clone(), vec![m]].concat();
        let list: Vec<(&str, bool, Vec<Message>)> = vec![
            // a log too small for guest memory (one byte: 8 pages of its 256)
            (
                "dirty-log-base",
                true,
                with_everything(Message::new(
                    R::SET_LOG_BASE,
                    body(&VhostUserLog::new(1, 0)),
                )),
            ),
            (
                "inflight-fd",
                false,
                with_everything(Message::new(R::GET_INFLIGHT_FD, inflight_body(1, 256))),
            ),
            (
                "short-body",
                false,
                vec![Message::new(R::SET_FEATURES, [1, 0, 0, 0])],
            ),
            (
                "declared-longer",
                false,
                then(vec![
                    Message::new(R::SET_VRING_NUM, vring_state(0, 8)).declaring(64)
                ]),
            ),
            (
                "declared-longer-relayed",
                true,
                then(vec![
                    Message::new(R::SET_VRING_NUM, vring_state(0, 8)).declaring(64)
                ]),
            ),
            (
                "oversized",
                true,
                vec![Message::new(R::SET_CONFIG, vec![0u8; 5000])],
            ),
            (
                "version",
                false,
                vec![Message::new(R::GET_FEATURES, []).flags(0x3)],
            ),
            (
                "reply-flag",
                true,
                vec![Message::new(R::GET_FEATURES, []).flags(0x4)],
            ),
            ("unknown-request", true, vec![Message::code(250, [])]),
            (
                "huge-request-code",
                false,
                vec![Message::code(0x8000_0001, [])],
            ),
            (
                "mem-table-without-fd",
                true,
                then(vec![
                    Message::new(R::SET_MEM_TABLE, table()).fds(FdKind::Memory, 0)
                ]),
            ),
            (
                "mem-table-eventfd",
                true,
                then(vec![
                    Message::new(R::SET_MEM_TABLE, table()).fds(FdKind::Event, 1)
                ]),
            ),
            (
                "overlapping-regions",
                true,
                then(vec![Message::new(
                    R::SET_MEM_TABLE,
                    mem_table(&[region(0, GUEST_RAM), region(GUEST_RAM / 2, GUEST_RAM)]),
                )]),
            ),
            (
                "ring-outside-memory",
                true,
                then(vec![Message::new(R::SET_VRING_ADDR, body(&stray_ring))]),
            ),
            (
                "vring-index",
                true,
                then(vec![Message::new(R::SET_VRING_NUM, vring_state(200, 8))]),
            ),
            (
                "enable-past-last-ring",
                true,
                then(vec![Message::new(
                    R::SET_VRING_ENABLE,
                    vring_state(self.queues, 1),
                )]),
            ),
            (
                "queue-size",
                true,
                then(vec![Message::new(
                    R::SET_VRING_NUM,
                    vring_state(0, self.queue_size * 2),
                )]),
            ),
            (
                "kick-is-memory",
                true,
                ring_with(Message::new(R::SET_VRING_KICK, u64_body(0)).fds(FdKind::Memory, 1)),
            ),
            (
                "kick-without-fd",
                true,
                ring_with(Message::new(R::SET_VRING_KICK, u64_body(0)).fds(FdKind::Event, 0)),
            ),
            (
                "fds-on-get-features",
                true,
                vec![Message::new(R::GET_FEATURES, []).fds(FdKind::Event, 2)],
            ),
            (
                "set-owner-twice",
                true,
                vec![
                    Message::new(R::SET_OWNER, []),
                    Message::new(R::SET_OWNER, []).need_reply(),
                ],
            ),
            (
                "unoffered-features",
                true,
                then(vec![Message::new(R::SET_FEATURES, u64_body(u64::MAX))]),
            ),
            (
                "enable-value",
                true,
                then(vec![Message::new(R::SET_VRING_ENABLE, vring_state(0, 2))]),
            ),
        ];
        list.into_iter()
            .map(|(name, relay, m)| self.seed(&format!("broken-{name}"), relay, &m))
            .collect()
    }
}

/// Named inputs: (name, bytes).
pub type Seeds = Vec<(String, Vec<u8>)>;

/// A backend's seeds: every backend's ([`Device::seeds`]) for the device `base` makes, then
/// the vmm's start and stop of the device each variant makes (named after it; one that cannot
/// be made is left out). `None` when `base` makes no device. Also returns `base`'s device, for
/// the backend's own seeds.
pub fn backend_seeds<S: Copy>(
    base: S,
    variants: &[(&str, S)],
    device: impl Fn(S) -> io::Result<Device>,
) -> Option<(Device, Seeds)> {
    let one = device(base).ok()?;
    let mut seeds = one.seeds();
    for &(name, setup) in variants {
        if let Ok(d) = device(setup) {
            seeds.push(d.start_stop_seed(name));
        }
    }
    Some((one, seeds))
}

/// VHOST_USER_F_PROTOCOL_FEATURES, the feature bit that enables the protocol features.
const F_PROTOCOL: u64 = 1 << 30;

fn acked(m: Message, ack: bool) -> Message {
    if ack {
        m.need_reply()
    } else {
        m
    }
}
