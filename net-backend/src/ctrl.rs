//! The control queue, served by this backend (not the vmm, which knows nothing of virtio-net):
//! `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` attaches exactly the requested number of tap queues and
//! detaches the rest, so the kernel steers flows only to pairs the guest reads. Receive-mode
//! and MAC-filter commands are acknowledged (the tap hands the guest every frame and the
//! guest's stack filters); anything else is refused.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemoryMmap};

use crate::virtio_net::*;

/// The most command bytes read from one chain (MAC tables are the largest commands).
const MAX_COMMAND_LEN: usize = 4096;

/// A parsed control command.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    SetPairs(u16),
    /// RX mode / MAC filter: nothing to do for a tap.
    Accept,
    Unsupported {
        class: u8,
        command: u8,
    },
}

pub fn parse(bytes: &[u8]) -> Option<Command> {
    let (&class, rest) = bytes.split_first()?;
    let (&command, data) = rest.split_first()?;
    Some(match (class, command) {
        (CTRL_CLASS_MQ, CTRL_MQ_VQ_PAIRS_SET) => {
            let pairs = u16::from_le_bytes([*data.first()?, *data.get(1)?]);
            Command::SetPairs(pairs)
        }
        (CTRL_CLASS_RX | CTRL_CLASS_MAC, _) => Command::Accept,
        _ => Command::Unsupported { class, command },
    })
}

/// The command bytes (device-readable part) and the address of the ack byte (the first
/// device-writable buffer). `None`: a malformed chain.
pub fn read_command<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
) -> Option<(Vec<u8>, vm_memory::GuestAddress)>
where
    M: std::ops::Deref<Target = GuestMemoryMmap>,
{
    let mut bytes = Vec::new();
    for desc in chain {
        if desc.is_write_only() {
            if desc.len() == 0 {
                return None;
            }
            return Some((bytes, desc.addr()));
        }
        let len = desc.len() as usize;
        if bytes.len() + len > MAX_COMMAND_LEN {
            return None;
        }
        let start = bytes.len();
        bytes.resize(start + len, 0);
        mem.read_slice(&mut bytes[start..], desc.addr()).ok()?;
    }
    None // no room for the ack
}

/// Whether `pairs` is a valid VQ_PAIRS_SET for a device with `max` pairs.
pub fn pairs_ok(pairs: u16, max: usize) -> bool {
    (MQ_PAIRS_MIN..=MQ_PAIRS_MAX).contains(&pairs) && usize::from(pairs) <= max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse(&[4, 0, 2, 0]), Some(Command::SetPairs(2)));
        assert_eq!(parse(&[4, 0, 2]), None, "pairs field cut short");
        assert_eq!(parse(&[0, 1, 1]), Some(Command::Accept));
        assert_eq!(
            parse(&[2, 0, 1, 0]),
            Some(Command::Unsupported {
                class: 2,
                command: 0
            })
        );
        assert_eq!(parse(&[4]), None);
        assert!(pairs_ok(2, 2) && pairs_ok(1, 2));
        assert!(!pairs_ok(0, 2) && !pairs_ok(3, 2));
    }
}
