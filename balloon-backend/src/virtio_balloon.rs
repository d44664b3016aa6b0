//! virtio-balloon as the spec defines it (virtio 1.2 §5.5): feature bits, queue roles, the
//! config space and the statistics tags.

pub const VIRTIO_F_VERSION_1: u32 = 32;
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
pub const VIRTIO_BALLOON_F_FREE_PAGE_REPORTING: u32 = 5;

/// The balloon's unit: page frame numbers in the inflate/deflate queues are 4 KiB pages.
pub const PAGE_SHIFT: u32 = 12;
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// What a queue is for. The queues present are numbered in this order, without gaps (a
/// queue whose feature is not offered takes no index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRole {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

/// The queue roles for the features `features`, by index.
pub fn queue_roles(features: u64) -> Vec<QueueRole> {
    let mut roles = vec![QueueRole::Inflate, QueueRole::Deflate];
    if features & (1 << VIRTIO_BALLOON_F_STATS_VQ) != 0 {
        roles.push(QueueRole::Stats);
    }
    if features & (1 << VIRTIO_BALLOON_F_FREE_PAGE_REPORTING) != 0 {
        roles.push(QueueRole::Reporting);
    }
    roles
}

/// `struct virtio_balloon_config`: `num_pages` (the target the device asks for) and `actual`
/// (what the driver has in the balloon); both in 4 KiB pages.
pub const CONFIG_LEN: usize = 8;
pub const ACTUAL_OFFSET: u32 = 4;

pub fn config_bytes(num_pages: u32, actual: u32) -> [u8; CONFIG_LEN] {
    let mut b = [0u8; CONFIG_LEN];
    b[..4].copy_from_slice(&num_pages.to_le_bytes());
    b[4..].copy_from_slice(&actual.to_le_bytes());
    b
}

/// The statistics a Linux guest reports, by tag, with the names we report them under.
pub const STAT_NAMES: [&str; 10] = [
    "swap_in",
    "swap_out",
    "major_faults",
    "minor_faults",
    "free_memory",
    "total_memory",
    "available_memory",
    "disk_caches",
    "hugetlb_allocations",
    "hugetlb_failures",
];

/// Parse a stats buffer: `struct virtio_balloon_stat { le16 tag; le64 val; }` packed, 10
/// bytes each. Unknown tags are skipped; a trailing partial entry is ignored.
pub fn parse_stats(bytes: &[u8]) -> Vec<(&'static str, u64)> {
    bytes
        .chunks_exact(10)
        .filter_map(|e| {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let val = u64::from_le_bytes(e[2..10].try_into().ok()?);
            STAT_NAMES.get(usize::from(tag)).map(|n| (*n, val))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_features() {
        use QueueRole::*;
        assert_eq!(queue_roles(0), vec![Inflate, Deflate]);
        assert_eq!(queue_roles(1 << 1), vec![Inflate, Deflate, Stats]);
        assert_eq!(
            queue_roles(1 << 1 | 1 << 5),
            vec![Inflate, Deflate, Stats, Reporting]
        );
        assert_eq!(queue_roles(1 << 5), vec![Inflate, Deflate, Reporting]);
    }

    #[test]
    fn stats_parse() {
        let mut b = Vec::new();
        for (tag, val) in [(4u16, 100u64), (6, 200), (99, 1), (5, 300)] {
            b.extend_from_slice(&tag.to_le_bytes());
            b.extend_from_slice(&val.to_le_bytes());
        }
        b.push(7); // partial
        assert_eq!(
            parse_stats(&b),
            vec![
                ("free_memory", 100),
                ("available_memory", 200),
                ("total_memory", 300)
            ]
        );
        assert_eq!(config_bytes(5, 7), [5, 0, 0, 0, 7, 0, 0, 0]);
    }
}
