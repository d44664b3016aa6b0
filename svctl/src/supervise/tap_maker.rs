//! The taps of a domain's NICs, made by the supervisor: the tap is created (or, for an
//! existing one, attached to), given its MTU, brought up and put on its bridge here, and each
//! `splitvisor-net` gets the queues' descriptors (`--tap-fd`). So the backend never needs
//! `CAP_NET_ADMIN`, and the supervisor, which keeps its own copies, keeps the tap (and its
//! bridge port) across backend restarts.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::domain::{Domain, Nic};

/// What tap NIC `i` of a domain uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapSpec {
    pub name: String,
    /// Create it (a NIC on a bridge); else it exists already (`tap=` in the domain).
    pub create: bool,
    pub bridge: Option<String>,
    pub queues: usize,
    pub mtu: u16,
}

impl TapSpec {
    pub fn of_nic(d: &Domain, i: usize) -> TapSpec {
        TapSpec::for_nic(d, &d.nics[i], i)
    }

    /// [`TapSpec::of_nic`] of `nic` as the domain's NIC `i` (one added while it runs too).
    pub fn for_nic(d: &Domain, nic: &Nic, i: usize) -> TapSpec {
        TapSpec {
            name: d.tap_name_for(nic, i),
            create: nic.bridge.is_some(),
            bridge: nic.bridge.clone(),
            queues: nic.queues.into(),
            mtu: api::backend::net::NetBackendConfig::default().mtu,
        }
    }
}

/// One NIC's tap, made on first use and held from then on.
#[derive(Debug)]
pub struct TapMaker {
    spec: TapSpec,
    held: Vec<OwnedFd>,
}

impl TapMaker {
    pub fn new(spec: TapSpec) -> TapMaker {
        TapMaker {
            spec,
            held: Vec::new(),
        }
    }

    /// Descriptors of the tap's queues for one backend process (copies of the held ones; the
    /// tap is made first if we hold none).
    pub fn fds(&mut self) -> Result<Vec<OwnedFd>, String> {
        if self.held.is_empty() {
            self.held = self.make().map_err(|e| api::error_chain(&e))?;
        }
        self.held
            .iter()
            .map(|f| {
                f.try_clone()
                    .map_err(|e| format!("tap {}: {e}", self.spec.name))
            })
            .collect()
    }

    fn make(&self) -> Result<Vec<OwnedFd>, tap::TapError> {
        let s = &self.spec;
        let tap = tap::Tap::open(&s.name, s.queues, s.create)?;
        if let Some(br) = &s.bridge {
            tap.add_to_bridge(br)?;
        }
        tap.set_mtu(s.mtu)?;
        tap.bring_up()?;
        tracing::info!(tap = %s.name, queues = s.queues, "tap made for the net backend");
        Ok(tap.into_fds())
    }
}

/// The arguments that name `fds` to the backend.
pub fn fd_args(fds: &[OwnedFd]) -> Vec<String> {
    fds.iter()
        .flat_map(|f| ["--tap-fd".to_string(), f.as_raw_fd().to_string()])
        .collect()
}

/// The raw numbers, for the child's side of the fork (which may not allocate).
pub fn raw(fds: &[OwnedFd]) -> Vec<RawFd> {
    fds.iter().map(AsRawFd::as_raw_fd).collect()
}
