//! `sv-fake-backend`: a vhost-user backend that offers exactly the virtio feature bits it is
//! told to and serves nothing, for testing how the vmm treats a backend it cannot use (e.g.
//! one without VIRTIO_F_VERSION_1).
//!
//! sv-fake-backend --socket PATH --features 0x40000000

use std::path::PathBuf;

use anyhow::{Context, Result};
use backends::guest_memory::{BitmapMmapRegion, GuestMemoryHandle, GuestMemoryMmap, Vring};
use clap::Parser;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon};
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

#[derive(Debug, Parser)]
#[command(name = "sv-fake-backend")]
struct Args {
    #[arg(long)]
    socket: PathBuf,
    /// Virtio feature bits to offer (hex with 0x, or decimal).
    #[arg(long, value_parser = parse_u64)]
    features: u64,
}

fn parse_u64(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| e.to_string())
}

struct Fake {
    features: u64,
    /// Kept like a real backend's, though nothing reads it.
    mem: GuestMemoryHandle,
}

impl VhostUserBackend for Fake {
    type Bitmap = BitmapMmapRegion;
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        1
    }
    fn max_queue_size(&self) -> usize {
        256
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK
    }
    fn set_event_idx(&self, _enabled: bool) {}
    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> std::io::Result<()> {
        self.mem.set(mem)
    }
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        backends::worker::exit_event()
    }
    fn handle_event(
        &self,
        _device_event: u16,
        _evset: EventSet,
        _vrings: &[Vring],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        Ok(())
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let backend = std::sync::Arc::new(Fake {
        features: args.features,
        mem: GuestMemoryHandle::new(),
    });
    let mut daemon = VhostUserDaemon::new(
        "sv-fake-backend".into(),
        backend,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    daemon
        .serve(&args.socket)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("serving {}", args.socket.display()))
}
