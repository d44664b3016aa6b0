//! The destination's side of a migration (`splitvisor --incoming URL`, or
//! `vm.receive-migration` on a vmm started with only `--api-socket`): take one connection,
//! make guest RAM as the source's configuration says (or map the memfd it hands over), put
//! each Ram frame into it, read the state, wait until the source has let go of the
//! backends ([`receive`]); the caller builds the VM paused from the [`Incoming`]'s
//! [`Restore`] (connecting to the backends), then [`Incoming::finish`] runs it once the
//! source has committed.

use std::time::Duration;

use super::ram::RamReceiver;
use super::url::MigrationUrl;
use super::wire::{Conn, Kind, WireError};
use super::{MigrationError, Progress, StreamConfig};
use crate::config::VmConfig;
use crate::memory::GuestRam;
use crate::snapshot::restore::Restore;

/// How long the source may be silent between two frames.
const PEER_TIMEOUT: Duration = Duration::from_secs(60);

/// A migration received up to the point where the VM can be built.
pub struct Incoming {
    pub restore: Restore,
    /// The source's configuration, as `adjust` changed it.
    pub cfg: VmConfig,
    /// The VM was paused at the source: it stays paused here.
    pub paused: bool,
    conn: Conn,
}

/// Listen on `url`, take the source's stream up to Released. `adjust` changes the
/// source's configuration before anything is built (this vmm's API socket and console,
/// devices on other sockets); an error it returns is sent back to the source. `progress`
/// (begun incoming) follows the phases up to `released`.
pub fn receive(
    url: &MigrationUrl,
    adjust: &dyn Fn(&mut VmConfig) -> Result<(), String>,
    progress: &Progress,
) -> Result<Incoming, MigrationError> {
    let mut conn = url.accept_one(|| progress.set_phase("listening"))?;
    conn.set_timeout(Some(PEER_TIMEOUT))
        .map_err(WireError::from)?;
    match receive_on(&mut conn, url, adjust, progress) {
        Ok((restore, cfg, paused)) => Ok(Incoming {
            restore,
            cfg,
            paused,
            conn,
        }),
        Err(e) => {
            let _ = conn.send(Kind::Failed, crate::error_chain(&e).as_bytes());
            Err(e)
        }
    }
}

fn receive_on(
    conn: &mut Conn,
    url: &MigrationUrl,
    adjust: &dyn Fn(&mut VmConfig) -> Result<(), String>,
    progress: &Progress,
) -> Result<(Restore, VmConfig, bool), MigrationError> {
    conn.read_hello()?;
    let head = conn.expect(Kind::Config)?;
    let head: StreamConfig = serde_json::from_slice(&head.body).map_err(MigrationError::Config)?;
    progress.set_metadata(head.metadata.clone());
    let mut cfg = head.config.clone();
    adjust(&mut cfg).map_err(MigrationError::Refused)?;
    if cfg.memory.size.0 != head.ram_size {
        return Err(MigrationError::Refused(format!(
            "the source's RAM is {} bytes but its configuration says {}",
            head.ram_size, cfg.memory.size.0
        )));
    }
    // accepted once the RAM is made (a local migration's comes later, with the VM paused)
    let ram = if head.local {
        conn.send(Kind::Accepted, &[])?;
        let frame = conn.expect(Kind::MemFd)?;
        let file = frame.file.ok_or(WireError::NoMemFd)?;
        GuestRam::from_file(&cfg.memory, file, head.ram_pages)?
    } else {
        let ram = GuestRam::new(&cfg.memory)?;
        conn.send(Kind::Accepted, &[])?;
        ram
    };
    progress.set_phase("ram");
    let mut into = RamReceiver::new(&ram);
    let state = loop {
        let frame = conn.recv()?;
        match frame.kind {
            Kind::Ram => {
                let before = into.bytes;
                into.put(&frame.body)?;
                progress.add_ram(into.bytes - before);
            }
            Kind::State => break frame.body,
            got => {
                return Err(WireError::Unexpected {
                    want: "Ram or State",
                    got,
                }
                .into())
            }
        }
    };
    tracing::info!(
        ram_bytes = into.bytes,
        "migration: guest RAM and state received"
    );
    conn.expect(Kind::Released)?;
    progress.set_phase("released");
    let restore = Restore::received(&format!("the migration stream from {url}"), &state, ram)?;
    Ok((restore, cfg, head.paused))
}

impl Incoming {
    /// The VM is built (paused): tell the source, wait for its commit, take the VM over
    /// (`take_over(run)`, run unless it was paused there) and confirm.
    pub fn finish(
        mut self,
        take_over: &dyn Fn(bool) -> Result<(), crate::run_control::RunError>,
    ) -> Result<(), MigrationError> {
        self.conn.send(Kind::Ready, &[])?;
        self.conn.expect(Kind::Commit)?;
        // committed: the VM is ours now, whatever happens to the connection
        take_over(!self.paused)?;
        if let Err(e) = self.conn.send(Kind::Running, &[]) {
            tracing::warn!("cannot confirm to the source (the VM runs here all the same): {e}");
        }
        tracing::info!("migration received: the VM runs here");
        Ok(())
    }

    /// Building the VM failed: tell the source (it takes its backends back).
    pub fn fail(mut self, why: &str) {
        let _ = self.conn.send(Kind::Failed, why.as_bytes());
    }
}
