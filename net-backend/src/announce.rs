//! The guest's MAC announced on the tap once a migration (or a restore) has brought the NIC
//! here: a RARP broadcast from the guest's MAC (QEMU's `qemu_announce_self` sends the same,
//! for backends that take VHOST_USER_SEND_RARP), so that a bridge or switch learns the port
//! the guest is behind now before the guest sends anything. Written into the tap as if the
//! guest had sent it; three times (now, after 100 ms and after 350 ms: QEMU repeats too).
//! Triggered by the device state a new NIC is given (DEVICE_STATE, `saved_state.rs`).

use std::sync::Arc;
use std::time::Duration;

use backends::guest_iovecs::GuestIovecs;

use crate::tap::Tap;

const RARP_ETHERTYPE: u16 = 0x8035;
const FRAME_LEN: usize = 60;
const PAUSES_MS: [u64; 3] = [0, 100, 250];

/// A RARP "reverse request" from `mac` to everyone (Ethernet minimum length, zero-padded).
pub fn rarp_frame(mac: &[u8; 6]) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(mac);
    f[12..14].copy_from_slice(&RARP_ETHERTYPE.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&3u16.to_be_bytes()); // reverse request
    f[22..28].copy_from_slice(mac); // sender hardware address
    f[32..38].copy_from_slice(mac); // target hardware address
    f
}

/// Announce `mac` on the tap's first queue, from a thread of its own.
pub fn start(tap: Arc<Tap>, mac: [u8; 6]) {
    let spawned = std::thread::Builder::new()
        .name("announce".into())
        .spawn(move || {
            let mut packet = vec![0u8; tap::VNET_HDR_LEN]; // no offloads
            packet.extend_from_slice(&rarp_frame(&mac));
            let mut sent = 0;
            for pause in PAUSES_MS {
                std::thread::sleep(Duration::from_millis(pause));
                let Some(fd) = tap.queue_fd(0) else { break };
                let mut buf = packet.clone();
                match crate::tap::write_packet(fd, &GuestIovecs::from_buf(&mut buf)) {
                    Ok(_) => sent += 1,
                    Err(e) => tracing::warn!("cannot announce the guest's MAC on the tap: {e}"),
                }
            }
            tracing::info!(
                mac = %crate::saved_state::mac_text(&mac),
                sent,
                "announced the guest's MAC on the tap (RARP)"
            );
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the MAC announcement: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_a_broadcast_rarp_request_from_the_mac() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let f = rarp_frame(&mac);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[20..22], &[0, 3]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[0; 4]);
        assert_eq!(&f[32..38], &mac);
        assert!(f[42..].iter().all(|&b| b == 0));
    }
}
