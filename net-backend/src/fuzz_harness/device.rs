//! The queue harness's device mode: the net device itself, [`VhostUserNet`], over a stand-in
//! tap ([`Tap::stand_in`] on the device ends of the fake tap's socket pairs), with pair 0's
//! worker vrings (receive, transmit, control) over the driver's rings, served through
//! `handle_event` as the worker thread does: a guest kick, or the tap's readiness when a
//! packet arrives. So the loops of `vhu_net.rs` and `backends::queue::drain` run as they are,
//! with `acked_features` and the queue-pair attach (which fail on a stand-in and are logged;
//! for the same reason only the first tap queue is attached, and flows are not steered here:
//! the direct mode covers that).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use backends::guest_memory::Vring;
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_queue::QueueT;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;

use super::driver::Driver;
use super::queues::{Config, Report};
use crate::stats::NetStats;
use crate::tap::Tap;
use crate::vhu_net::VhostUserNet;
use crate::virtio_net::*;

pub(super) struct DeviceSide {
    device: VhostUserNet,
    /// Pair 0's worker's vrings, by its local index: receive, transmit, control.
    vrings: Vec<Vring>,
}

impl DeviceSide {
    /// The device on `taps` (one per queue pair), its features acked as `config` says.
    pub(super) fn new(
        driver: &Driver,
        taps: &[std::os::unix::net::UnixDatagram],
        config: Config,
        stats: Arc<NetStats>,
    ) -> Option<DeviceSide> {
        let mut queues = Vec::new();
        for tap in taps {
            queues.push(File::from(OwnedFd::from(tap.try_clone().ok()?)));
        }
        let tap = Arc::new(Tap::stand_in(queues));
        let net_config = NetConfig {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            status: VIRTIO_NET_S_LINK_UP,
            max_virtqueue_pairs: taps.len() as u16,
            mtu: 1500,
        };
        let device = VhostUserNet::new(tap, net_config, 256, stats);
        let memory = GuestMemoryAtomic::new(driver.mem.clone());
        device.update_memory(memory.clone()).ok()?;
        let mut acked = [
            VIRTIO_F_VERSION_1,
            VIRTIO_NET_F_CTRL_VQ,
            VIRTIO_NET_F_MQ,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
        ]
        .iter()
        .fold(0u64, |f, bit| f | 1 << bit);
        if config.mergeable {
            acked |= 1 << VIRTIO_NET_F_MRG_RXBUF;
        }
        if config.event_idx {
            acked |= 1 << VIRTIO_RING_F_EVENT_IDX;
        }
        device.acked_features(acked);
        device.set_event_idx(config.event_idx);
        let vrings = driver.vrings(&memory, driver.rings.len(), config.event_idx)?;
        Some(DeviceSide { device, vrings })
    }

    /// The guest kicks queue `q` (pair 0's local index).
    pub(super) fn kick(&self, q: usize, report: &mut Report) {
        self.event(q as u16, report);
    }

    /// The tap has packets for pair 0.
    pub(super) fn tap_ready(&self, report: &mut Report) {
        self.event(self.device.tap_event() as u16, report);
    }

    fn event(&self, event: u16, report: &mut Report) {
        if self
            .device
            .handle_event(event, EventSet::IN, &self.vrings, 0)
            .is_err()
        {
            report.errors += 1;
        }
    }

    /// Used-ring entries added per queue (mod 2^16).
    pub(super) fn used(&self) -> [usize; 3] {
        let mut used = [0; 3];
        for (u, vring) in used.iter_mut().zip(&self.vrings) {
            *u = usize::from(vring.get_ref().get_queue().next_used());
        }
        used
    }
}
