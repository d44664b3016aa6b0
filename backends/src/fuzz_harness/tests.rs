//! The driver against a device that serves nothing: the encoding, the vmm's start through the
//! relay and straight, reply acks, every seed, and what 200 inputs leave behind.

use std::io;
use std::sync::Arc;

use crate::guest_memory::GuestMemoryMmap;
use crate::guest_memory::Vring;
use vhost::vhost_user::message::{FrontendReq, VhostUserProtocolFeatures};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_queue::QueueT;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use super::backend_checks::{check_nothing_left_behind, check_seeds_run, serial};
use super::*;

/// A two-queue device on two worker threads that serves nothing.
struct Idle {
    mem: crate::guest_memory::GuestMemoryHandle,
}

const IDLE_FEATURES: u64 = 1 << 32 | 1 << 30; // VERSION_1 | PROTOCOL_FEATURES

impl VhostUserBackend for Idle {
    type Bitmap = crate::guest_memory::BitmapMmapRegion;
    type Vring = Vring;
    fn num_queues(&self) -> usize {
        2
    }
    fn max_queue_size(&self) -> usize {
        256
    }
    fn features(&self) -> u64 {
        IDLE_FEATURES
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }
    fn set_event_idx(&self, _enabled: bool) {}
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        crate::config_space::read(&[1, 2, 3, 4, 5, 6, 7, 8], offset, size)
    }
    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem.set(mem)
    }
    fn queues_per_thread(&self) -> Vec<u64> {
        vec![0b01, 0b10]
    }
    fn exit_event(&self, _thread: usize) -> Option<(EventConsumer, EventNotifier)> {
        crate::worker::exit_event()
    }
    fn handle_event(
        &self,
        _event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        _thread: usize,
    ) -> io::Result<()> {
        // what a device does first: look at the ring
        for v in vrings {
            let _ = v.get_ref().get_queue().ready();
        }
        Ok(())
    }
}

fn idle() -> Arc<Idle> {
    Arc::new(Idle {
        mem: Default::default(),
    })
}

fn device() -> Device {
    Device {
        setup: 0,
        features: IDLE_FEATURES,
        protocol: idle().protocol_features(),
        queues: 2,
        queue_size: 256,
        config_size: 8,
    }
}

#[test]
fn inputs_round_trip_through_the_encoding() {
    let messages = vec![
        Message::new(
            FrontendReq::SET_MEM_TABLE,
            mem_table(&[region(0, GUEST_RAM)]),
        ),
        Message::code(0x1234_5678, vec![7u8; 300]).need_reply(),
        Message::new(FrontendReq::SET_VRING_KICK, u64_body(1))
            .fds(FdKind::Socket, 3)
            .declaring(2),
    ];
    let input = decode(&encode(5, &messages));
    assert_eq!(input.setup, 5);
    assert_eq!(input.messages, messages);
    assert!(input.through_relay());
    // the natural descriptors: one memfd per region, an eventfd per vring fd request
    assert_eq!(messages[0].descriptors(), (FdKind::Memory, 1));
    assert_eq!(messages[2].descriptors(), (FdKind::Socket, 3));
    let no_fd = Message::new(FrontendReq::SET_VRING_CALL, u64_body(0x100));
    assert_eq!(no_fd.descriptors(), (FdKind::Event, 0));
}

#[test]
fn any_bytes_decode_within_the_limits() {
    let big = vec![0x7f_u8; 200_000];
    let input = decode(&big);
    assert!(input.messages.len() <= MAX_MESSAGES);
    let total: usize = input.messages.iter().map(|m| m.payload.len()).sum();
    assert!(total <= MAX_STREAM);
    // through the relay, declared sizes are padded to and count as much
    let declaring = Message::code(1, []).declaring(4000);
    let padded = decode(&encode(1, &vec![declaring; 20]));
    assert_eq!(padded.messages.len(), MAX_STREAM / 4000);
    assert_eq!(decode(&[]).messages, vec![]);
    // cut short: what is there
    let cut = decode(&[0, 0x40, 1, 0, 0xff, 0xff, 1, 2]);
    assert_eq!(cut.messages[0].payload, vec![1, 2]);
}

#[test]
fn the_vmm_start_negotiates_through_the_relay_and_straight() {
    let _serial = serial();
    let d = device();
    for (name, data) in d
        .seeds()
        .iter()
        .filter(|(n, _)| n.starts_with("vmm-start-stop"))
    {
        let out = drive_messages(idle(), data).unwrap();
        assert_eq!(out.ended, None, "{name}: the connection failed");
        assert!(out.completed, "{name}");
        let features = out.replies_to(FrontendReq::GET_FEATURES);
        assert!(!features.is_empty(), "{name}");
        assert!(features.iter().all(|r| r.u64() == Some(IDLE_FEATURES)));
        let protocol = out.replies_to(FrontendReq::GET_PROTOCOL_FEATURES);
        let offered = d.protocol | VhostUserProtocolFeatures::REPLY_ACK;
        assert_eq!(protocol[0].u64(), Some(offered.bits()), "{name}");
        assert_eq!(out.replies_to(FrontendReq::GET_QUEUE_NUM)[0].u64(), Some(2));
        let config = out.replies_to(FrontendReq::GET_CONFIG);
        assert_eq!(&config[0].body[12..], &[1, 2, 3, 4, 5, 6, 7, 8], "{name}");
        assert_eq!(out.replies_to(FrontendReq::GET_MAX_MEM_SLOTS).len(), 1);
        // both rings were set up and stopped: the whole start went through
        let bases = out.replies_to(FrontendReq::GET_VRING_BASE);
        assert_eq!(bases.len(), 2, "{name}: {:?}", out.replies);
        assert_eq!(out.swept, 2, "one leaked exit event per worker thread");
    }
}

#[test]
fn every_seed_runs_and_the_broken_ones_end_the_connection() {
    let _serial = serial();
    check_seeds_run(&device().seeds(), |data| drive_messages(idle(), data));
}

#[test]
fn reply_acks_answer_every_request_that_asked() {
    let _serial = serial();
    let data = encode(1, &device().start(true));
    let out = drive_messages(idle(), &data).unwrap();
    assert_eq!(out.ended, None);
    let acks = out
        .replies
        .iter()
        .filter(|r| r.code != FrontendReq::GET_FEATURES as u32 && r.body.len() == 8)
        .filter(|r| ![15, 17, 36].contains(&r.code));
    // every ack says success
    assert!(
        acks.clone().all(|r| r.u64() == Some(0)),
        "{:?}",
        out.replies
    );
    assert!(acks.count() >= 10);
}

#[test]
fn two_hundred_inputs_leave_no_thread_and_no_descriptor_behind() {
    let _serial = serial();
    let inputs = mutations(&device().seeds(), 200);
    let swept = check_nothing_left_behind("idle", &inputs, |data| drive_messages(idle(), data));
    assert_eq!(swept, 400, "two workers: two leaked exit events per input");
}

#[test]
fn the_largest_stream_fits_in_the_socket_before_anyone_reads() {
    let _serial = serial();
    // as many messages and bytes as an input can have, each with a descriptor
    let each = MAX_STREAM / MAX_MESSAGES;
    let m = Message::code(0, vec![0u8; each]).fds(FdKind::Event, 1);
    for relay in [0, 1] {
        let data = encode(relay, &vec![m.clone(); MAX_MESSAGES]);
        assert_eq!(decode(&data).messages.len(), MAX_MESSAGES);
        let out = drive_messages(idle(), &data).unwrap();
        assert!(out.sent >= MAX_MESSAGES, "relay {relay}: {out:?}");
        assert!(!out.completed);
    }
}
