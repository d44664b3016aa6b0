//! The control queue, served by this backend (not the vmm, which knows nothing of virtio-net):
//! `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` attaches exactly the requested number of tap queues and
//! detaches the rest, so the kernel steers flows only to pairs the guest reads. Receive-mode
//! and MAC-filter commands are acknowledged (the tap hands the guest every frame and the
//! guest's stack filters); anything else is refused.

use backends::descriptor_chain::{ChainBuffers, ChainError, OutOfOrder};
use backends::guest_memory::GuestMemoryMmap;
use virtio_queue::DescriptorChain;
use vm_memory::GuestAddress;

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

/// Why a control chain carries no command we can answer.
#[derive(Debug, thiserror::Error)]
pub enum MalformedCommand {
    #[error("the control chain is malformed")]
    Chain(#[source] ChainError),
    #[error("the control chain has no device-writable byte for the ack")]
    NoAck,
}

/// The command bytes (the device-readable part, at most 4 KiB) and the address of the ack
/// byte (the first device-writable buffer). Further device-writable buffers are not used, and
/// a device-readable descriptor after the ack ends the chain: it and what follows are never
/// read.
pub fn read_command<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
) -> Result<(Vec<u8>, GuestAddress), MalformedCommand>
where
    M: std::ops::Deref<Target = GuestMemoryMmap>,
{
    let bufs = ChainBuffers::new(chain, OutOfOrder::EndChain).map_err(MalformedCommand::Chain)?;
    let ack = bufs
        .writable()
        .first()
        .filter(|b| b.len > 0)
        .ok_or(MalformedCommand::NoAck)?;
    let bytes = bufs
        .read_readable(mem, MAX_COMMAND_LEN)
        .map_err(MalformedCommand::Chain)?;
    Ok((bytes, ack.addr))
}

/// Whether `pairs` is a valid VQ_PAIRS_SET for a device with `max` pairs.
pub fn pairs_ok(pairs: u16, max: usize) -> bool {
    (MQ_PAIRS_MIN..=MQ_PAIRS_MAX).contains(&pairs) && usize::from(pairs) <= max
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Bytes;

    const WRITE: u16 = 2; // VRING_DESC_F_WRITE

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn read(mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Result<(Vec<u8>, u64), String> {
        let q = MockSplitQueue::new(mem, 16);
        read_command(q.build_desc_chain(descs).unwrap(), mem)
            .map(|(bytes, ack)| (bytes, ack.0))
            .map_err(|e| backends::error_chain(&e))
    }

    #[test]
    fn a_command_is_read_up_to_its_ack_byte() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_slice(&[4, 0], GuestAddress(0x1000)).unwrap();
        mem.write_slice(&[2, 0], GuestAddress(0x2000)).unwrap();
        let cmd = [desc(0x1000, 2, 0), desc(0x2000, 2, 0)];
        let ack = desc(0x3000, 1, WRITE);
        assert_eq!(
            read(&mem, &[cmd[0], cmd[1], ack]),
            Ok((vec![4, 0, 2, 0], 0x3000))
        );
        // what follows the ack is not looked at, a readable descriptor outside memory included
        let junk = desc(1 << 40, 8, 0);
        assert_eq!(read(&mem, &[cmd[0], ack, junk]), Ok((vec![4, 0], 0x3000)));
        // no ack byte, an empty one, or too long a command: malformed
        assert!(read(&mem, &cmd)
            .unwrap_err()
            .contains("no device-writable byte"));
        assert!(read(&mem, &[cmd[0], desc(0x3000, 0, WRITE)]).is_err());
        let long = desc(0x1000, MAX_COMMAND_LEN as u32 + 1, 0);
        assert!(read(&mem, &[long, ack])
            .unwrap_err()
            .contains("more than the 4096"));
        assert!(read(&mem, &[desc(1 << 40, 2, 0), ack])
            .unwrap_err()
            .contains("outside guest memory"));
    }

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
