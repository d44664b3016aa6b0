//! Harness: the vhost-user message stream into the block backend, over a socketpair, served by
//! the handler stack of the serve loop (input format, descriptors and limits in
//! `backends::fuzz_harness`). The device is `start_backend`'s over a 1 MiB raw image in a
//! memfd; the setup byte's bits 1-7 choose it: bits 1-2 queues − 1, bits 3-4 worker threads − 1
//! (at most the queues), bit 5 read-only, bit 6 io_uring (where the kernel has it), bit 7 a
//! queue size of 16 (else 256).

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use backends::fuzz_harness::{self as harness, Device, Message, Outcome};
use backends::serve::BackendFactory;
use vhost::vhost_user::message::FrontendReq;

use crate::disk::{self, Format, OpenOptions};
use crate::virtio_blk::CONFIG_SIZE;
use crate::{BlkFactory, DeviceOptions};

const IMAGE_SIZE: u64 = 1 << 20;

/// Run one input (see the module documentation).
pub fn messages(data: &[u8]) {
    harness::expect_set_up(run(data));
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

/// The serve loop's factory as `start_backend` makes it, over a raw image in a memfd, opened
/// by path as the backend opens its image.
fn factory(setup: Setup) -> io::Result<BlkFactory> {
    let image = harness::memory_file(IMAGE_SIZE)?;
    let path = PathBuf::from(format!("/proc/self/fd/{}", image.as_raw_fd()));
    let options = OpenOptions {
        readonly: setup.readonly,
        direct: false,
        format: Format::Raw,
        backing_dirs: Vec::new(),
    };
    let disk = disk::open(&path, &options).map_err(io::Error::other)?;
    let options = DeviceOptions {
        readonly: setup.readonly,
        serial: b"fuzz".to_vec(),
        queues: setup.queues,
        threads: setup.threads,
        queue_size: setup.queue_size,
        uring: setup.uring && crate::uring::available(),
        sched: backends::sched::SchedPolicy::Batch,
    };
    Ok(BlkFactory::new(disk, options))
}

/// Run one input and say what it did.
pub fn run(data: &[u8]) -> io::Result<Outcome> {
    let setup = Setup::from_byte(data.first().copied().unwrap_or(0));
    harness::drive("splitvisor-blk", factory(setup)?, data)
}

/// What the seeds need to know of the device `setup` makes.
fn device(setup: Setup) -> io::Result<Device> {
    let vu = factory(setup)?.create()?;
    Ok(Device::of(&vu, setup.byte(), CONFIG_SIZE))
}

/// The seeds: every backend's (one queue) and the vmm's start and stop of a four-queue device
/// on two threads, read-only, with io_uring and with small rings.
pub fn messages_seeds() -> Vec<(String, Vec<u8>)> {
    let base = Setup::from_byte(0);
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
    let Some((one, mut seeds)) = harness::backend_seeds(base, &variants, device) else {
        return Vec::new();
    };
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
    use backends::fuzz_harness::backend_checks::{check_vmm_start, serial, vmm_start_seeds};

    backends::vhost_user_harness_tests!("blk", messages_seeds, run);

    #[test]
    fn the_vmm_start_negotiates_the_block_device() {
        let _serial = serial();
        for (name, data) in vmm_start_seeds(messages_seeds()) {
            let setup = Setup::from_byte(data[0]);
            let d = device(setup).unwrap();
            assert_eq!(d.queues as usize, setup.queues, "{name}");
            let out = run(&data).unwrap();
            let config = check_vmm_start(&name, &out, &d);
            // read-only is offered as VIRTIO_BLK_F_RO (bit 5)
            assert_eq!(d.features & 1 << 5 != 0, setup.readonly, "{name}");
            // the config space: capacity in sectors, then the queue count at 34
            assert_eq!(config[..8], (IMAGE_SIZE >> 9).to_le_bytes(), "{name}");
            assert_eq!(
                config[34..36],
                (setup.queues as u16).to_le_bytes(),
                "{name}"
            );
            assert_eq!(
                out.swept, setup.threads,
                "{name}: one exit event per worker"
            );
        }
    }
}
