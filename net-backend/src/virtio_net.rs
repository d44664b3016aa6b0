//! virtio-net as the spec defines it (virtio 1.2 §5.1): feature bits, the header in front of
//! every packet, the device config space, and the control queue's commands.

pub const VIRTIO_NET_F_CSUM: u32 = 0;
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
pub const VIRTIO_NET_F_MTU: u32 = 3;
pub const VIRTIO_NET_F_MAC: u32 = 5;
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
pub const VIRTIO_NET_F_GUEST_ECN: u32 = 9;
pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
pub const VIRTIO_NET_F_HOST_ECN: u32 = 13;
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
pub const VIRTIO_NET_F_STATUS: u32 = 16;
pub const VIRTIO_NET_F_CTRL_VQ: u32 = 17;
pub const VIRTIO_NET_F_MQ: u32 = 22;
pub const VIRTIO_F_VERSION_1: u32 = 32;
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// `struct virtio_net_hdr_v1`: with VERSION_1 every packet has this 12-byte header, the same
/// layout the tap's `IFF_VNET_HDR` uses (so headers pass through untouched).
pub const NET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header (how many buffers a merged packet spans).
pub const NUM_BUFFERS_OFFSET: usize = 10;

/// The largest frame either way: a 64 KiB GSO packet plus Ethernet and VLAN headers.
pub const MAX_FRAME_LEN: usize = 65535 + 14 + 4;
/// A packet on the rings: header + frame.
pub const MAX_PACKET_LEN: usize = NET_HDR_LEN + MAX_FRAME_LEN;
/// Shortest frame worth sending: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;

pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Control queue: `struct virtio_net_ctrl_hdr { class, command }`, then data, then one
/// device-writable ack byte.
pub const CTRL_CLASS_RX: u8 = 0;
pub const CTRL_CLASS_MAC: u8 = 1;
pub const CTRL_CLASS_VLAN: u8 = 2;
pub const CTRL_CLASS_ANNOUNCE: u8 = 3;
pub const CTRL_CLASS_MQ: u8 = 4;
pub const CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
pub const CTRL_OK: u8 = 0;
pub const CTRL_ERR: u8 = 1;
pub const MQ_PAIRS_MIN: u16 = 1;
pub const MQ_PAIRS_MAX: u16 = 0x8000;

/// `struct virtio_net_config` up to `mtu` (the fields this device offers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub mac: [u8; 6],
    pub status: u16,
    pub max_virtqueue_pairs: u16,
    pub mtu: u16,
}

impl NetConfig {
    pub const LEN: usize = 12;

    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..6].copy_from_slice(&self.mac);
        b[6..8].copy_from_slice(&self.status.to_le_bytes());
        b[8..10].copy_from_slice(&self.max_virtqueue_pairs.to_le_bytes());
        b[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        b
    }

    /// GET_CONFIG: `size` bytes from `offset`, zeros for the fields of the spec's longer
    /// `virtio_net_config` we do not fill (speed, duplex, the RSS fields…), which frontends ask
    /// for (Cloud Hypervisor reads 17 bytes, up to `duplex`).
    pub fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        backends::config_space::read(&self.to_bytes(), offset, size)
    }
}

/// A MAC address written `52:54:00:12:34:56` (unicast only).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    s.parse::<api::backend::net::MacAddress>().ok().map(|m| m.0)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    api::backend::net::MacAddress(*mac).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's `struct virtio_net_config` in full (virtio 1.3: up to `supported_hash_types`).
    const SPEC_CONFIG_LEN: usize = 24;

    #[test]
    fn get_config_answers_every_window_of_the_spec_config_space() {
        let c = NetConfig {
            mac: [0x52, 0x54, 0, 1, 2, 3],
            status: 1,
            max_virtqueue_pairs: 2,
            mtu: 1500,
        };
        let mut spec = c.to_bytes().to_vec();
        spec.resize(SPEC_CONFIG_LEN, 0);
        let wrong = backends::config_space::first_wrong_window(&spec, |o, s| c.read(o, s));
        assert_eq!(wrong, None);
        // what Cloud Hypervisor asks for: 17 bytes, our 12 then speed and duplex as zeros
        let ch = c.read(0, 17);
        assert_eq!((&ch[..6], &ch[12..]), (&c.mac[..], &[0u8; 5][..]));
        // past the struct altogether: still exactly the size asked, zeros
        assert_eq!(c.read(SPEC_CONFIG_LEN as u32, 8), vec![0; 8]);
    }

    #[test]
    fn mac_parses_and_prints() {
        let m = parse_mac("52:54:00:ab:CD:0f").unwrap();
        assert_eq!(m, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(format_mac(&m), "52:54:00:ab:cd:0f");
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "01:00:5e:00:00:01",
            "zz:54:00:ab:cd:0f",
            "5:54:00:ab:cd:0f",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn config_layout() {
        let c = NetConfig {
            mac: [2, 0, 0, 0, 0, 1],
            status: VIRTIO_NET_S_LINK_UP,
            max_virtqueue_pairs: 2,
            mtu: 9000,
        };
        let read = |offset, size| backends::config_space::read(&c.to_bytes(), offset, size);
        assert_eq!(read(0, 6), vec![2, 0, 0, 0, 0, 1]);
        assert_eq!(read(6, 2), vec![1, 0]);
        assert_eq!(read(8, 2), vec![2, 0]);
        assert_eq!(read(10, 2), 9000u16.to_le_bytes().to_vec());
        // past the end: zeroes, exactly as many bytes as asked (GET_CONFIG's rule)
        assert_eq!(read(10, 4), vec![0x28, 0x23, 0, 0]);
        assert_eq!(read(64, 4), vec![0; 4]);
    }
}
