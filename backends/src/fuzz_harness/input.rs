//! The input format (see the module documentation): messages, their encoding and decoding,
//! and structure-aware mutations for the unit tests.

use vhost::vhost_user::message::FrontendReq;

use super::test_inputs::Rng;
use super::{FRONTEND_VA, MAX_MESSAGES, MAX_PAYLOAD, MAX_STREAM, NEED_REPLY};

/// The descriptors a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// What the request takes (see the module documentation).
    Natural,
    /// The guest-RAM memfd.
    Memory,
    Event,
    /// One end of a fresh socket pair (the frontend keeps the other until the input ends).
    Socket,
}

/// One frontend message of an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub code: u32,
    /// The header's flags XOR 1.
    pub flags: u8,
    pub payload: Vec<u8>,
    /// `None`: the request's own number of descriptors.
    pub fds: Option<u8>,
    pub kind: FdKind,
    /// The body size the header declares, when it is not the payload's.
    pub declared: Option<u16>,
}

impl Message {
    pub fn new(req: FrontendReq, payload: impl Into<Vec<u8>>) -> Message {
        Message::code(req as u32, payload)
    }

    /// A message with any request code, including ones no frontend sends.
    pub fn code(code: u32, payload: impl Into<Vec<u8>>) -> Message {
        Message {
            code,
            flags: 0,
            payload: payload.into(),
            fds: None,
            kind: FdKind::Natural,
            declared: None,
        }
    }

    /// Ask for a reply ack (NEED_REPLY).
    pub fn need_reply(mut self) -> Message {
        self.flags |= NEED_REPLY;
        self
    }

    /// The input's flags byte (the header's flags XOR 1).
    pub fn flags(mut self, flags: u8) -> Message {
        self.flags = flags;
        self
    }

    /// Attach `count` (at most 6) descriptors of `kind` instead of the request's own.
    pub fn fds(mut self, kind: FdKind, count: u8) -> Message {
        self.kind = kind;
        self.fds = Some(count.min(6));
        self
    }

    /// Declare a body of `size` bytes in the header, whatever the payload's length.
    pub fn declaring(mut self, size: u16) -> Message {
        self.declared = Some(size);
        self
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let long_code = self.code > 0xff;
        let long_len = self.payload.len() > 0xff;
        let kind = match self.kind {
            FdKind::Natural => 0,
            FdKind::Memory => 1,
            FdKind::Event => 2,
            FdKind::Socket => 3,
        };
        let count = self.fds.map_or(0, |n| n.min(6) + 1);
        let op = u8::from(long_code) << 7
            | u8::from(long_len) << 6
            | u8::from(self.declared.is_some()) << 5
            | kind << 3
            | count;
        out.push(op);
        if long_code {
            out.extend_from_slice(&self.code.to_le_bytes());
        } else {
            out.push(self.code as u8);
        }
        out.push(self.flags);
        if let Some(d) = self.declared {
            out.extend_from_slice(&d.to_le_bytes());
        }
        let payload = &self.payload[..self.payload.len().min(MAX_PAYLOAD)];
        if long_len {
            out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        } else {
            out.push(payload.len() as u8);
        }
        out.extend_from_slice(payload);
    }

    /// How many descriptors of which kind go with the message.
    pub(super) fn descriptors(&self) -> (FdKind, usize) {
        use FrontendReq as R;
        let code = FrontendReq::try_from(self.code).ok();
        let natural_kind = match code {
            Some(R::SET_MEM_TABLE | R::ADD_MEM_REG | R::SET_LOG_BASE | R::SET_INFLIGHT_FD) => {
                FdKind::Memory
            }
            Some(R::SET_BACKEND_REQ_FD | R::GPU_SET_SOCKET | R::SET_DEVICE_STATE_FD) => {
                FdKind::Socket
            }
            _ => FdKind::Event,
        };
        let kind = match self.kind {
            FdKind::Natural => natural_kind,
            k => k,
        };
        let word = |at: usize| {
            self.payload
                .get(at..at + 8)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        };
        let natural_count = match code {
            // num_regions (the handler refuses more than 32)
            Some(R::SET_MEM_TABLE) => (word(0) as u32).min(32) as usize,
            Some(R::SET_VRING_KICK | R::SET_VRING_CALL | R::SET_VRING_ERR) => {
                usize::from(word(0) & 0x100 == 0)
            }
            Some(
                R::ADD_MEM_REG
                | R::SET_LOG_BASE
                | R::SET_LOG_FD
                | R::SET_INFLIGHT_FD
                | R::SET_BACKEND_REQ_FD
                | R::GPU_SET_SOCKET
                | R::SET_DEVICE_STATE_FD,
            ) => 1,
            _ => 0,
        };
        (kind, self.fds.map_or(natural_count, usize::from))
    }
}

/// A decoded input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub setup: u8,
    pub messages: Vec<Message>,
}

impl Input {
    /// Whether the connection runs through the relay (setup bit 0).
    pub fn through_relay(&self) -> bool {
        self.setup & 1 != 0
    }
}

/// The input that decodes to `setup` and `messages` (the format in the module documentation).
pub fn encode(setup: u8, messages: &[Message]) -> Vec<u8> {
    let mut out = vec![setup];
    for m in messages {
        m.encode(&mut out);
    }
    out
}

/// Decode any bytes (a message cut short by the end of the input keeps what is there).
pub fn decode(data: &[u8]) -> Input {
    let mut r = Reader(data);
    let setup = r.u8().unwrap_or(0);
    let framed = setup & 1 != 0;
    let mut messages = Vec::new();
    let mut budget = MAX_STREAM;
    while messages.len() < MAX_MESSAGES && budget > 0 {
        let Some(op) = r.u8() else { break };
        let code = if op & 0x80 != 0 {
            r.u32()
        } else {
            r.u8().map(u32::from)
        };
        let (Some(code), Some(flags)) = (code, r.u8()) else {
            break;
        };
        let declared = if op & 0x20 != 0 {
            let Some(d) = r.u16() else { break };
            Some(d)
        } else {
            None
        };
        let len = if op & 0x40 != 0 {
            r.u16().map(usize::from)
        } else {
            r.u8().map(usize::from)
        };
        let len = len.unwrap_or(0).min(MAX_PAYLOAD).min(budget);
        let payload = r.take(len).to_vec();
        // through the relay a body is padded to its declared size (see `write_message`)
        let padded = declared
            .map(usize::from)
            .filter(|d| framed && *d <= vhost::vhost_user::message::MAX_MSG_SIZE);
        let cost = padded.map_or(payload.len(), |d| d.max(payload.len()));
        if cost > budget {
            break;
        }
        budget -= cost;
        let kind = match op >> 3 & 3 {
            0 => FdKind::Natural,
            1 => FdKind::Memory,
            2 => FdKind::Event,
            _ => FdKind::Socket,
        };
        messages.push(Message {
            code,
            flags,
            payload,
            fds: (op & 7).checked_sub(1),
            kind,
            declared,
        });
    }
    Input { setup, messages }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        (self.0.len() >= N).then(|| self.take(N).try_into().unwrap_or([0; N]))
    }
    fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }
    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }
}

/// `count` inputs made from `seeds` the way a structure-aware fuzzer would (other request
/// codes, flags, descriptors and sizes; payload words set to edge values; messages dropped,
/// repeated and swapped; bits flipped), the same on every run: for the leak, time and smoke
/// checks of the unit tests.
pub fn mutations(seeds: &[(String, Vec<u8>)], count: usize) -> Vec<Vec<u8>> {
    if seeds.is_empty() {
        return Vec::new();
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d_u64 ^ count as u64);
    let mut next = |n: usize| rng.below(n);
    const EDGES: [u64; 10] = [
        0,
        1,
        0xff,
        0x100,
        4096,
        0xffff_ffff,
        1 << 47,
        1 << 63,
        u64::MAX,
        FRONTEND_VA,
    ];
    (0..count)
        .map(|_| {
            let mut input = decode(&seeds[next(seeds.len())].1);
            for _ in 0..1 + next(4) {
                let n = input.messages.len();
                let i = next(n);
                let m = input.messages.get_mut(i);
                match (next(10), m) {
                    (0, _) => input.setup ^= 1 << next(8),
                    (1, Some(m)) => m.code = next(48) as u32,
                    (2, Some(m)) => m.flags ^= 1 << next(8),
                    (3, Some(m)) if m.payload.len() >= 4 => {
                        let at = next(m.payload.len() / 4) * 4;
                        let v = EDGES[next(EDGES.len())].to_le_bytes();
                        let end = (at + 8).min(m.payload.len());
                        m.payload[at..end].copy_from_slice(&v[..end - at]);
                    }
                    (4, Some(_)) => drop(input.messages.remove(i)),
                    (5, Some(m)) => {
                        let copy = m.clone();
                        input.messages.insert(next(n + 1), copy);
                    }
                    (6, Some(_)) => input.messages.swap(i, next(n)),
                    (7, Some(m)) => {
                        let kinds = [
                            FdKind::Natural,
                            FdKind::Memory,
                            FdKind::Event,
                            FdKind::Socket,
                        ];
                        m.kind = kinds[next(4)];
                        m.fds = [None, Some(next(7) as u8)][next(2)];
                    }
                    (8, Some(m)) => {
                        m.declared = Some(EDGES[next(EDGES.len())] as u16 ^ next(64) as u16)
                    }
                    (_, Some(m)) if !m.payload.is_empty() => {
                        let at = next(m.payload.len());
                        m.payload[at] ^= 1 << next(8);
                    }
                    _ => {}
                }
            }
            encode(input.setup, &input.messages)
        })
        .collect()
}
