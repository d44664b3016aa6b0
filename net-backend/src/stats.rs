//! Per-queue-pair counters: packets and bytes each way, and what was dropped and why (a full
//! or missing guest ring, a malformed chain, a frame the tap refused).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct PairStats {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Packets from the tap that could not be delivered (too big for the guest's buffers).
    pub rx_dropped: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Guest packets not sent: malformed chains, bad sizes, refused by the tap.
    pub tx_dropped: AtomicU64,
}

pub struct NetStats {
    pub pairs: Vec<PairStats>,
    /// Chains from the guest that broke the rules (wrong direction, outside guest memory).
    pub malformed_chains: AtomicU64,
    pub ctrl_commands: AtomicU64,
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl NetStats {
    pub fn new(pairs: usize) -> NetStats {
        NetStats {
            pairs: (0..pairs).map(|_| PairStats::default()).collect(),
            malformed_chains: AtomicU64::new(0),
            ctrl_commands: AtomicU64::new(0),
        }
    }

    /// One line per queue pair, for the log (SIGUSR1) and tests.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .pairs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!(
                    "pair {i}: rx_packets={} rx_bytes={} rx_dropped={} tx_packets={} tx_bytes={} tx_dropped={}",
                    get(&p.rx_packets),
                    get(&p.rx_bytes),
                    get(&p.rx_dropped),
                    get(&p.tx_packets),
                    get(&p.tx_bytes),
                    get(&p.tx_dropped),
                )
            })
            .collect();
        out.push(format!(
            "malformed_chains={} ctrl_commands={}",
            get(&self.malformed_chains),
            get(&self.ctrl_commands)
        ));
        out
    }
}
