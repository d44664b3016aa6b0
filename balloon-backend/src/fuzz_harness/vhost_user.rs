//! Harness: the vhost-user message stream into the balloon backend, over a socketpair, served
//! by the handler stack of the serve loop (input format, descriptors and limits in
//! `backends::fuzz_harness`). The device is the factory's in `lib.rs`, over a fresh
//! [`BalloonState`]; the setup byte's bits 1-7 choose it: bit 1 DEFLATE_ON_OOM, bit 2 free
//! page reporting (a fourth queue), bit 3 a target already set (`num_pages` non-zero).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use backends::fuzz_harness::{self as harness, Device, Message, Outcome};
use backends::serve::{BackendFactory, DaemonConfig};
use vhost::vhost_user::message::FrontendReq;

use crate::state::BalloonState;
use crate::virtio_balloon::{ACTUAL_OFFSET, CONFIG_LEN};
use crate::{BalloonFactory, Config};

/// `num_pages` with bit 3 of the setup byte: 64 MiB asked back.
const TARGET_PAGES: u32 = 16384;

/// Run one input (see the module documentation).
pub fn messages(data: &[u8]) {
    harness::expect_set_up(run(data));
}

/// The device the setup byte chooses.
#[derive(Debug, Clone, Copy)]
struct Setup {
    deflate_on_oom: bool,
    reporting: bool,
    target: bool,
}

impl Setup {
    fn from_byte(b: u8) -> Setup {
        Setup {
            deflate_on_oom: b & 1 << 1 != 0,
            reporting: b & 1 << 2 != 0,
            target: b & 1 << 3 != 0,
        }
    }

    fn byte(&self) -> u8 {
        u8::from(self.deflate_on_oom) << 1
            | u8::from(self.reporting) << 2
            | u8::from(self.target) << 3
    }
}

/// The serve loop's factory as `start_backend` makes it, over a fresh state (with a target
/// when `setup` says so), without a control socket.
fn factory(setup: Setup) -> BalloonFactory {
    let state = Arc::new(BalloonState::default());
    if setup.target {
        state.num_pages.store(TARGET_PAGES, Ordering::Relaxed);
    }
    let config = Config {
        control: None,
        deflate_on_oom: setup.deflate_on_oom,
        free_page_reporting: setup.reporting,
        stats_interval: 0,
        daemon: DaemonConfig::default(),
    };
    BalloonFactory {
        state,
        config,
        control: None,
    }
}

/// Run one input and say what it did, with the balloon's state after it.
fn run_with_state(data: &[u8]) -> io::Result<(Outcome, Arc<BalloonState>)> {
    let setup = Setup::from_byte(data.first().copied().unwrap_or(0));
    let factory = factory(setup);
    let state = factory.state.clone();
    let outcome = harness::drive("splitvisor-balloon", factory, data)?;
    Ok((outcome, state))
}

/// Run one input and say what it did.
pub fn run(data: &[u8]) -> io::Result<Outcome> {
    run_with_state(data).map(|(outcome, _)| outcome)
}

/// What the seeds need to know of the device `setup` makes.
fn device(setup: Setup) -> io::Result<Device> {
    let vu = factory(setup).create()?;
    Ok(Device::of(&vu, setup.byte(), CONFIG_LEN))
}

/// The seeds: every backend's (inflate, deflate and stats queues), the vmm's start and stop with
/// free page reporting and DEFLATE_ON_OOM, the driver writing `actual`, and guest RAM in two
/// regions with a hole (guest RAM counts only the regions).
pub fn messages_seeds() -> Vec<(String, Vec<u8>)> {
    use FrontendReq as R;
    let base = Setup::from_byte(0);
    let variants = [
        (
            "free-page-reporting",
            Setup {
                reporting: true,
                ..base
            },
        ),
        (
            "deflate-on-oom-with-target",
            Setup {
                deflate_on_oom: true,
                target: true,
                ..base
            },
        ),
    ];
    let Some((one, mut seeds)) = harness::backend_seeds(base, &variants, device) else {
        return Vec::new();
    };
    let actual = harness::config(ACTUAL_OFFSET, 4, &1234u32.to_le_bytes());
    let driver_writes = [
        one.start(false),
        vec![
            Message::new(R::SET_CONFIG, actual).need_reply(),
            Message::new(R::GET_CONFIG, harness::config(0, CONFIG_LEN as u32, &[])),
        ],
        one.stop(),
    ]
    .concat();
    seeds.push(one.seed("driver-writes-actual", true, &driver_writes));
    let gap = harness::GUEST_RAM;
    let table = harness::mem_table(&[harness::region(0, gap), harness::region(4 * gap, gap)]);
    let with_hole = [
        one.handshake(false),
        vec![
            Message::new(R::SET_FEATURES, harness::u64_body(one.features)),
            Message::new(R::SET_MEM_TABLE, table),
        ],
        one.ring(0),
        one.stop(),
    ]
    .concat();
    seeds.push(one.seed("guest-ram-with-a-hole", true, &with_hole));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::fuzz_harness::backend_checks::{check_vmm_start, serial, vmm_start_seeds};
    use backends::fuzz_harness::test_inputs::seed_named;
    use vhost::vhost_user::message::VhostUserMemoryRegion;

    fn seed(name: &str) -> Vec<u8> {
        seed_named(messages_seeds(), name)
    }

    backends::vhost_user_harness_tests!("balloon", messages_seeds, run);

    #[test]
    fn the_vmm_start_negotiates_the_balloon() {
        let _serial = serial();
        for (name, data) in vmm_start_seeds(messages_seeds()) {
            let setup = Setup::from_byte(data[0]);
            let d = device(setup).unwrap();
            // inflate, deflate, stats, and reporting when offered
            assert_eq!(d.queues, 3 + u32::from(setup.reporting), "{name}");
            let (out, state) = run_with_state(&data).unwrap();
            let config = check_vmm_start(&name, &out, &d);
            let pages = if setup.target { TARGET_PAGES } else { 0 };
            assert_eq!(config[..4], pages.to_le_bytes(), "{name}");
            // the memory table reached the device: it knows the guest's RAM
            assert_eq!(
                state.ram.load(Ordering::Relaxed),
                harness::GUEST_RAM,
                "{name}"
            );
            assert_eq!(out.swept, 1, "{name}: one worker thread");
        }
    }

    #[test]
    fn the_driver_writes_actual_through_set_config() {
        let _serial = serial();
        let (out, state) = run_with_state(&seed("driver-writes-actual")).unwrap();
        assert!(out.completed, "{out:?}");
        assert_eq!(state.actual.load(Ordering::Relaxed), 1234);
        let config = out.replies_to(FrontendReq::GET_CONFIG);
        assert_eq!(config.last().unwrap().body[12 + 4..], 1234u32.to_le_bytes());
        // a hole in guest RAM counts only the regions
        let (out, state) = run_with_state(&seed("guest-ram-with-a-hole")).unwrap();
        assert!(out.completed, "{out:?}");
        assert_eq!(state.ram.load(Ordering::Relaxed), 2 * harness::GUEST_RAM);
    }

    /// A frontend's region at the top of the address space. The page bitmap was once sized by
    /// the highest guest address (2^48 bytes here) and the process aborted on the allocation.
    /// The bookkeeping now grows with the guest RAM present, so nothing refuses the region:
    /// serving it is right (a memory table may put RAM anywhere; the guest just cannot name
    /// its pages in 32-bit page frame numbers, which `pages.rs` counts as outside RAM). The
    /// table is taken, its RAM counted, and the connection goes on to the end of the stream.
    #[test]
    fn a_region_at_the_top_of_the_address_space_is_served_without_an_abort() {
        use FrontendReq as R;
        let _serial = serial();
        let d = device(Setup::from_byte(0)).unwrap();
        let top = VhostUserMemoryRegion::new(1 << 63, harness::GUEST_RAM, harness::FRONTEND_VA, 0);
        let m = [
            d.handshake(false),
            vec![
                Message::new(R::SET_FEATURES, harness::u64_body(d.features)),
                Message::new(R::SET_MEM_TABLE, harness::mem_table(&[top])).need_reply(),
            ],
        ]
        .concat();
        let (out, state) = run_with_state(&harness::encode(1, &m)).unwrap();
        assert!(out.completed && out.ended.is_none(), "{out:?}");
        let ack = out.replies_to(R::SET_MEM_TABLE);
        assert_eq!(ack.first().and_then(|r| r.u64()), Some(0), "{out:?}");
        assert_eq!(state.ram.load(Ordering::Relaxed), harness::GUEST_RAM);
    }

    /// A memory table whose region is larger than the file behind it (4 MiB over a 1 MiB
    /// memfd), then a ring 2 MiB in: reading the ring's used index there (SET_VRING_ADDR does)
    /// is a read past the end of the file, SIGBUS, the process dead. The table is refused
    /// (`GuestMemoryHandle::set`), which ends the connection before the ring is read; the same
    /// stream over a memfd as large as the region goes to the end.
    #[test]
    fn a_region_larger_than_its_file_ends_the_connection_before_a_ring_is_read() {
        use vhost::vhost_user::message::{VhostUserVringAddr, VhostUserVringAddrFlags};
        use FrontendReq as R;
        let _serial = serial();
        let region_len = 4 * harness::GUEST_RAM;
        let d = device(Setup::from_byte(0)).unwrap();
        let rings = harness::FRONTEND_VA + region_len / 2;
        let flags = VhostUserVringAddrFlags::empty();
        let addr = VhostUserVringAddr::new(0, flags, rings, rings + 0x2000, rings + 0x1000, 0);
        let table = harness::mem_table(&[harness::region(0, region_len)]);
        let m = [
            d.handshake(false),
            vec![
                Message::new(R::SET_FEATURES, harness::u64_body(d.features)),
                Message::new(R::SET_MEM_TABLE, table).need_reply(),
                Message::new(R::SET_VRING_NUM, harness::vring_state(0, 16)),
                Message::new(R::SET_VRING_ADDR, harness::body(&addr)).need_reply(),
            ],
        ]
        .concat();
        for relay in [1, 0] {
            let data = harness::encode(relay, &m);
            let run_over = |ram_len: u64| {
                let factory = factory(Setup::from_byte(0));
                let state = factory.state.clone();
                let out = harness::drive_with_ram("splitvisor-balloon", factory, &data, ram_len);
                (out.unwrap(), state)
            };
            let (out, state) = run_over(harness::GUEST_RAM);
            assert!(!out.completed && out.ended.is_some(), "{relay}: {out:?}");
            let ack = out.replies_to(R::SET_MEM_TABLE);
            assert_eq!(ack.first().and_then(|r| r.u64()), Some(1), "{out:?}");
            assert!(out.replies_to(R::SET_VRING_ADDR).is_empty(), "{out:?}");
            assert_eq!(state.ram.load(Ordering::Relaxed), 0, "never counted");
            // the same stream over a file as large as the region is served to its end
            let (out, state) = run_over(region_len);
            assert!(out.completed && out.ended.is_none(), "{relay}: {out:?}");
            let ack = out.replies_to(R::SET_VRING_ADDR);
            assert_eq!(ack.first().and_then(|r| r.u64()), Some(0), "{out:?}");
            assert_eq!(state.ram.load(Ordering::Relaxed), region_len);
        }
    }
}
