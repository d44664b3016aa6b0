//! Fuzzing the vhost-user message stream into a backend: libFuzzer's bytes decoded into the
//! messages a frontend sends (with descriptors for memory regions, vring eventfds and
//! channels), one connection served by the real handler stack — vhost-user-backend's daemon,
//! behind our [`relay`](crate::relay) as [`serve`](crate::serve) runs it, or straight — and
//! the replies read back; plus the encoders the backends' seeds are written with.
//!
//! # Input
//!
//! ```text
//! input   = setup:u8 message*                                   (little endian throughout)
//! setup   = bit 0: 1 = through the relay, as the serve loop runs a connection;
//!                  0 = straight to the handler (any byte stream, framing errors included)
//!           bits 1-7: the backend's own choices (queues, read-only, ...: see its harness)
//! message = op:u8 code flags:u8 [declared:u16] len payload[len]
//! op      = bit 7: code is a u32 (else a u8)         bit 6: len is a u16 (else a u8)
//!           bit 5: the header declares `declared` bytes (else `len`)
//!           bits 3-4: descriptor kind: 0 the request's own, 1 guest RAM, 2 eventfd, 3 socket
//!           bits 0-2: descriptor count: 0 the request's own, n: n - 1 descriptors
//! flags   = the header's flags XOR 1 (0 is a plain version-1 request, 0x08 asks for an ack)
//! ```
//!
//! "The request's own" descriptors are what a frontend attaches: one guest-RAM descriptor per
//! region of SET_MEM_TABLE (its `num_regions`) and for ADD_MEM_REG, SET_LOG_BASE and
//! SET_INFLIGHT_FD; an eventfd for SET_VRING_KICK/CALL/ERR (none with the payload's
//! invalid-descriptor bit) and SET_LOG_FD; a socket for SET_BACKEND_REQ_FD, GPU_SET_SOCKET and
//! SET_DEVICE_STATE_FD. At most [`MAX_MESSAGES`] messages and [`MAX_STREAM`] payload bytes.
//!
//! # One input, one connection
//!
//! The whole stream is written before the handler reads its first message, so what the
//! handler reads does not depend on timing. Straight to the handler, the frontend then hangs
//! up its sending side and reads replies until the handler closes. Through the relay (which
//! ends a connection as soon as the frontend hangs up, as it must), the header's size always
//! frames the bytes written (a body is cut or zero-padded to it) and a final GET_FEATURES
//! marks the end: replies are read until its answer, or until the connection ends.
//!
//! Guest RAM is one sparse memfd as large as a file can be: every region a message can
//! declare lies inside it, so the fuzzer's regions are served and it looks further. (vhost-
//! user-backend maps a region without comparing it with its file: a frontend that declares a
//! region larger than its descriptor and puts a ring past the file's end would kill the
//! backend with SIGBUS at SET_VRING_ADDR, which reads the used index there. Our backends refuse
//! such a table in `GuestMemoryHandle::set`; [`drive_with_ram`] runs an input over a smaller
//! memfd to show it.) Ring memory stays zero: the queue contents are the queue fuzzers'
//! business, not this one's.
//!
//! After each input every thread the stack started is joined (the daemon's connection thread
//! and the vring workers, by their exit events; the relay's two threads end by themselves once
//! both sockets are shut) and every descriptor is closed — including the workers' exit-event
//! descriptors, which vhost-user-backend 0.24 never closes (see `crate::worker`). A handler
//! that neither answers nor closes for 10 s is a panic; a stack that hangs elsewhere (a vring
//! worker that never leaves its loop cannot be joined) ends the process with a message after
//! 20 s, so that a fuzzer keeps the input and a test run does not hang.
//!
//! Files: `input.rs` (the format, and mutations for the tests), `seeds.rs` (message bodies and
//! the vmm's sequences, for every backend's seeds), `driver.rs` (one connection),
//! `backend_checks.rs` (what the backends' tests of their harness check alike).
//!
//! # The queue harnesses' shared parts
//!
//! The net and balloon queue harnesses read their inputs with [`bytes`] and play the guest
//! driver with [`guest_driver`] (guest memory, split rings, chains, the driver's hostile
//! moves), whose seeds [`driver_seed`] writes; [`test_inputs`] makes the inputs of every
//! harness's unit tests.

pub mod backend_checks;
pub mod bytes;
mod driver;
pub mod driver_seed;
pub mod guest_driver;
mod input;
mod seeds;
pub mod test_inputs;
#[cfg(test)]
mod tests;

pub use driver::{
    drive, drive_messages, drive_with_ram, expect_set_up, memory_file, Footprint, Outcome, Reply,
};
pub use input::{decode, encode, mutations, FdKind, Input, Message};
pub use seeds::{
    backend_seeds, body, config, mem_table, region, ring_addresses, single_region, u64_body,
    vring_addr, vring_state, Device, Seeds, VMM_PROTOCOL,
};

/// At most this many messages per input (the vmm's start and stop of a net device with four
/// queue pairs is 71).
pub const MAX_MESSAGES: usize = 128;
/// At most this many payload bytes per message (twice the largest the handler accepts).
pub const MAX_PAYLOAD: usize = 8192;
/// At most this many body bytes per input (payloads, and the padding up to a declared size
/// through the relay): the stream must fit in the socket's buffer (212992 bytes by default,
/// each message costing ~800 more), since it is written before anyone reads.
pub const MAX_STREAM: usize = 32 * 1024;
/// The input's `flags` bit asking for a reply ack (the header's NEED_REPLY).
pub const NEED_REPLY: u8 = 0x8;
/// Where the seeds' frontend says guest RAM is mapped in its own address space.
pub const FRONTEND_VA: u64 = 0x7f00_0000_0000;
/// The seeds' guest RAM: one region of this size at guest address 0.
pub const GUEST_RAM: u64 = 1 << 20;
