//! Harness: the vhost-user message stream into the block backend, over a socketpair, served by
//! the handler stack of the serve loop (input format, descriptors and limits in
//! `backends::fuzz_harness`). The device is `start_backend`'s over a 1 MiB raw image in a
//! memfd; the setup byte's bits 1-7 choose it: bits 1-2 queues − 1, bits 3-4 worker threads − 1
//! (at most the queues), bit 5 read-only, bit 6 io_uring (where the kernel has it), bit 7 a
//! queue size of 16 (else 256).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use backends::fuzz_harness::{self as harness, Device, Message, Outcome};
use backends::serve::BackendFactory;
use vhost::vhost_user::message::FrontendReq;
use vhost_user_backend::{VhostUserBackend, VringEpollHandler};
use vmm_sys_util::epoll::EventSet;

use crate::blk::{BlkDevice, MAX_SEGMENTS};
use crate::disk::{self, Format, OpenOptions};
use crate::stats::Stats;
use crate::vhu_blk::{self, VhostUserBlk};
use crate::virtio_blk::{BlkConfig, CONFIG_SIZE, SECTOR_SHIFT};
use crate::SIZE_MAX;

const IMAGE_SIZE: u64 = 1 << 20;

/// Run one input (see the module documentation).
pub fn messages(data: &[u8]) {
    if let Err(e) = run(data) {
        panic!("the vhost-user harness could not set up (not the input's doing): {e}");
    }
}

/// The device the setup byte chooses.
#[derive(Debug, Clone, Copy)]
struct Setup {
    queues: usize,
    threads: usize,
    readonly: bool,
    uring: bool,
    queue_size: usize,
}

impl Setup {
    fn from_byte(b: u8) -> Setup {
        let queues = 1 + usize::from(b >> 1 & 3);
        Setup {
            queues,
            threads: (1 + usize::from(b >> 3 & 3)).min(queues),
            readonly: b & 1 << 5 != 0,
            uring: b & 1 << 6 != 0,
            queue_size: if b & 1 << 7 != 0 { 16 } else { 256 },
        }
    }

    fn byte(&self) -> u8 {
        ((self.queues - 1) as u8) << 1
            | ((self.threads - 1) as u8) << 3
            | u8::from(self.readonly) << 5
            | u8::from(self.uring) << 6
            | u8::from(self.queue_size == 16) << 7
    }
}

/// The serve loop's factory as `lib.rs` makes it (`BlkFactory` and `start_backend`).
struct Factory {
    device: Arc<BlkDevice>,
    config: BlkConfig,
    setup: Setup,
}

impl Factory {
    fn new(setup: Setup) -> io::Result<Factory> {
        // the image: a memfd, opened by path as the backend opens its image
        let image = harness::memory_file(IMAGE_SIZE)?;
        let path = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&image)
        ));
        let options = OpenOptions {
            readonly: setup.readonly,
            direct: false,
            format: Format::Raw,
        };
        let disk = disk::open(&path, &options).map_err(io::Error::other)?;
        let capacity = disk.capacity();
        let seg_max = setup.queue_size as u32 - 2;
        let device = Arc::new(BlkDevice {
            disk,
            readonly: setup.readonly,
            serial: b"fuzz".to_vec(),
            max_request_bytes: u64::from(seg_max) * u64::from(SIZE_MAX),
            stats: Arc::new(Stats::default()),
        });
        let config = BlkConfig {
            capacity: capacity >> SECTOR_SHIFT,
            size_max: SIZE_MAX,
            seg_max,
            blk_size: 512,
            physical_block_exp: 3,
            min_io_size: 1,
            opt_io_size: 0,
            num_queues: setup.queues as u16,
            max_discard_sectors: u32::MAX >> 9,
            max_discard_seg: MAX_SEGMENTS,
            discard_sector_alignment: 8,
            max_write_zeroes_sectors: u32::MAX >> 9,
            max_write_zeroes_seg: MAX_SEGMENTS,
            write_zeroes_may_unmap: 1,
        };
        let setup = Setup {
            uring: setup.uring && crate::uring::available(),
            ..setup
        };
        Ok(Factory {
            device,
            config,
            setup,
        })
    }
}

impl BackendFactory for Factory {
    type Backend = Arc<VhostUserBlk>;

    fn create(&mut self) -> io::Result<Self::Backend> {
        let s = self.setup;
        Ok(Arc::new(VhostUserBlk::new(
            self.device.clone(),
            self.config.clone(),
            s.queues,
            s.threads,
            s.queue_size,
            s.uring,
        )?))
    }

    fn attach(
        &mut self,
        backend: &Self::Backend,
        workers: &[Arc<VringEpollHandler<Self::Backend>>],
    ) -> io::Result<()> {
        for (queue, fd) in backend.completion_fds().into_iter().enumerate() {
            let (Some(fd), Some(worker)) = (fd, workers.get(backend.thread_of(queue))) else {
                continue;
            };
            let event = u64::from(vhu_blk::completion_event(self.setup.queues, queue));
            worker.register_listener(fd, EventSet::IN, event)?;
        }
        Ok(())
    }
}

/// Run one input and say what it did.
pub fn run(data: &[u8]) -> io::Result<Outcome> {
    let setup = Setup::from_byte(data.first().copied().unwrap_or(0));
    harness::drive("splitvisor-blk", Factory::new(setup)?, data)
}

/// What the seeds need to know of the device `setup` makes.
fn device(setup: Setup) -> io::Result<Device> {
    let vu = Factory::new(setup)?.create()?;
    Ok(Device {
        setup: setup.byte(),
        features: vu.features(),
        protocol: vu.protocol_features(),
        queues: setup.queues as u32,
        queue_size: setup.queue_size as u32,
        config_size: CONFIG_SIZE as u32,
    })
}

/// The seeds: every backend's (one queue) and the vmm's start and stop of a four-queue device
/// on two threads, read-only, with io_uring and with small rings.
pub fn messages_seeds() -> Vec<(String, Vec<u8>)> {
    let base = Setup::from_byte(0);
    let Ok(one) = device(base) else {
        return Vec::new();
    };
    let mut seeds = one.seeds();
    let variants = [
        (
            "mq-4-queues-2-threads",
            Setup {
                queues: 4,
                threads: 2,
                ..base
            },
        ),
        (
            "read-only",
            Setup {
                readonly: true,
                ..base
            },
        ),
        (
            "io-uring-2-queues",
            Setup {
                queues: 2,
                threads: 2,
                uring: true,
                ..base
            },
        ),
        (
            "queue-size-16",
            Setup {
                queue_size: 16,
                ..base
            },
        ),
    ];
    for (name, setup) in variants {
        if let Ok(d) = device(setup) {
            let life = [d.start(false), d.stop()].concat();
            seeds.push(d.seed(&format!("vmm-start-stop-{name}"), true, &life));
        }
    }
    // a write to the config space the block device does not define: ignored
    let writes = [
        one.handshake(false),
        vec![Message::new(
            FrontendReq::SET_CONFIG,
            harness::config(32, 1, &[1]),
        )],
        one.activate(true, false),
        one.stop(),
    ]
    .concat();
    seeds.push(one.seed("config-write-writeback", true, &writes));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::fuzz_harness::{mutations, Footprint};
    use std::sync::Mutex;
    use std::time::Instant;

    /// Tests that count threads and descriptors run one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn every_seed_runs_and_only_the_broken_ones_end_early() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let seeds = messages_seeds();
        assert!(seeds.len() > 30);
        for (name, data) in seeds {
            let out = run(&data).unwrap();
            assert!(out.sent >= harness::decode(&data).messages.len(), "{name}");
            assert_eq!(
                out.completed,
                !name.starts_with("broken-"),
                "{name}: {out:?}"
            );
        }
    }

    #[test]
    fn the_vmm_start_negotiates_the_block_device() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        for (name, data) in messages_seeds() {
            if !name.starts_with("vmm-start-stop") {
                continue;
            }
            let setup = Setup::from_byte(data[0]);
            let d = device(setup).unwrap();
            let out = run(&data).unwrap();
            assert!(out.completed && out.ended.is_none(), "{name}: {out:?}");
            let features = out.replies_to(FrontendReq::GET_FEATURES)[0].u64().unwrap();
            assert_eq!(features, d.features, "{name}");
            // read-only is offered as VIRTIO_BLK_F_RO (bit 5)
            assert_eq!(features & 1 << 5 != 0, setup.readonly, "{name}");
            let queues = out.replies_to(FrontendReq::GET_QUEUE_NUM)[0].u64();
            assert_eq!(queues, Some(setup.queues as u64), "{name}");
            // the config space: capacity in sectors, then the queue count at 34
            let config = &out.replies_to(FrontendReq::GET_CONFIG)[0].body[12..];
            assert_eq!(config[..8], (IMAGE_SIZE >> 9).to_le_bytes(), "{name}");
            assert_eq!(
                config[34..36],
                (setup.queues as u16).to_le_bytes(),
                "{name}"
            );
            // every ring was set up, then stopped
            let bases = out.replies_to(FrontendReq::GET_VRING_BASE);
            assert_eq!(bases.len(), setup.queues, "{name}");
            assert_eq!(
                out.swept, setup.threads,
                "{name}: one exit event per worker"
            );
        }
    }

    #[test]
    fn two_hundred_inputs_leave_no_thread_and_no_descriptor_behind() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let inputs = mutations(&messages_seeds(), 200);
        messages(&inputs[0]);
        let before = Footprint::now();
        let started = Instant::now();
        for data in &inputs {
            messages(data);
        }
        let elapsed = started.elapsed();
        let after = before.settled_after();
        eprintln!("blk, 200 inputs in {elapsed:?}: {before:?} -> {after:?}");
        assert!(
            after.threads <= before.threads + 4,
            "{before:?} -> {after:?}"
        );
        assert!(after.fds <= before.fds + 8, "{before:?} -> {after:?}");
    }
}
