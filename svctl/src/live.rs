//! The live definition of a running domain, `<runtime>/live.json`: the domain as its supervisor
//! started it, and the disks and NICs attached since (`svctl attach-disk`, `attach-interface`),
//! each with the name of its backend. The supervisor writes it (atomically) when it starts the
//! domain and at every attach and detach; an adopting supervisor reads it back (the added
//! devices' backends and taps are its to keep), and the verbs that show a running domain's
//! devices read it ([`disk_rows`], [`nic_rows`]: the running domain's, else the definition's).
//! The domain file in the store is the *persistent* definition: what the next
//! start boots; `--config` changes that one.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::domain::{Disk, Domain, Nic, Runtime};
use crate::info::disk_target;
use crate::store::Store;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Live {
    /// The domain as it started (its boot devices: `blk0`… by position).
    pub domain: Domain,
    #[serde(default)]
    pub disks: Vec<LiveDisk>,
    #[serde(default)]
    pub nics: Vec<LiveNic>,
}

/// A disk attached to the running domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveDisk {
    /// Its backend's name in the runtime dir and its device id in the vmm (`blk2`).
    pub backend: String,
    /// The name `attach-disk` gave it (`vdb`).
    pub target: String,
    pub disk: Disk,
}

/// A NIC attached to the running domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveNic {
    /// Its backend's name and device id (`net1`).
    pub backend: String,
    /// Its tap (made on its bridge by the supervisor, or the given one).
    pub tap: String,
    /// With its MAC filled in.
    pub nic: Nic,
}

/// One disk of the running domain, booted with or attached.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskView {
    pub backend: String,
    pub target: String,
    pub disk: Disk,
    pub attached: bool,
}

/// One NIC of the running domain, booted with or attached.
#[derive(Debug, Clone, PartialEq)]
pub struct NicView {
    pub backend: String,
    pub tap: String,
    pub mac: String,
    pub nic: Nic,
    pub attached: bool,
}

impl Live {
    pub fn new(domain: Domain) -> Live {
        Live {
            domain,
            disks: Vec::new(),
            nics: Vec::new(),
        }
    }

    /// The live definition of the domain running in `rt`, if its supervisor wrote one.
    pub fn read(rt: &Runtime) -> Option<Live> {
        let path = rt.live();
        let text = std::fs::read(&path).ok()?;
        serde_json::from_slice(&text)
            .map_err(|e| tracing::warn!("{}: {e}", path.display()))
            .ok()
    }

    /// Write it to `rt` in one step (a reader sees the old definition or the new one).
    pub fn write(&self, rt: &Runtime) -> Result<(), String> {
        write_atomically(&rt.live(), self)
    }

    /// Every disk: the boot ones, then the attached ones.
    pub fn disk_views(&self) -> Vec<DiskView> {
        let boot = self.domain.disks.iter().enumerate().map(|(i, d)| DiskView {
            backend: format!("blk{i}"),
            target: disk_target(i),
            disk: d.clone(),
            attached: false,
        });
        let added = self.disks.iter().map(|d| DiskView {
            backend: d.backend.clone(),
            target: d.target.clone(),
            disk: d.disk.clone(),
            attached: true,
        });
        boot.chain(added).collect()
    }

    /// Every NIC: the boot ones, then the attached ones.
    pub fn nic_views(&self) -> Vec<NicView> {
        let d = &self.domain;
        let boot = d.nics.iter().enumerate().map(|(i, n)| NicView {
            backend: format!("net{i}"),
            tap: d.tap_name(i),
            mac: d.mac(i),
            nic: n.clone(),
            attached: false,
        });
        let added = self.nics.iter().map(|n| NicView {
            backend: n.backend.clone(),
            tap: n.tap.clone(),
            mac: n.nic.mac.clone().unwrap_or_default(),
            nic: n.nic.clone(),
            attached: true,
        });
        boot.chain(added).collect()
    }

    /// The lowest free index for a new backend `prefix<N>`, past the boot devices' (`used`:
    /// the names taken).
    pub fn free_index(prefix: &str, boot: usize, used: &[&str]) -> usize {
        (boot..)
            .find(|n| !used.contains(&format!("{prefix}{n}").as_str()))
            .unwrap_or(boot)
    }
}

/// A device to show: its name for people, its backend's name (`blk1`), what it is.
pub struct Row<T> {
    pub name: String,
    pub backend: String,
    pub device: T,
}

/// The disks to show for a domain: the running one's (attached ones included) or the
/// definition's.
pub fn disk_rows(store: &Store, d: &Domain) -> Vec<Row<Disk>> {
    match running_live(store, &d.name) {
        Some(live) => live
            .disk_views()
            .into_iter()
            .map(|v| Row {
                name: v.target,
                backend: v.backend,
                device: v.disk,
            })
            .collect(),
        None => (0..d.disks.len())
            .map(|i| Row {
                name: disk_target(i),
                backend: format!("blk{i}"),
                device: d.disks[i].clone(),
            })
            .collect(),
    }
}

/// The NICs to show (named by their tap, with their MAC): the running domain's or the
/// definition's.
pub fn nic_rows(store: &Store, d: &Domain) -> Vec<Row<(String, Nic)>> {
    match running_live(store, &d.name) {
        Some(live) => live
            .nic_views()
            .into_iter()
            .map(|v| Row {
                name: v.tap,
                backend: v.backend,
                device: (v.mac, v.nic),
            })
            .collect(),
        None => (0..d.nics.len())
            .map(|i| Row {
                name: d.tap_name(i),
                backend: format!("net{i}"),
                device: (d.mac(i), d.nics[i].clone()),
            })
            .collect(),
    }
}

fn running_live(store: &Store, name: &str) -> Option<Live> {
    store.vmm(name)?;
    Live::read(&store.runtime(name))
}

/// The backend of an attached device of the running domain, named by its target (disks) or
/// its tap (NICs).
pub fn attached_backend(store: &Store, name: &str, device: &str) -> Option<String> {
    let live = running_live(store, name)?;
    let disks = live.disks.iter().map(|d| (&d.target, &d.backend));
    let nics = live.nics.iter().map(|n| (&n.tap, &n.backend));
    disks
        .chain(nics)
        .find(|(alias, backend)| *alias == device || *backend == device)
        .map(|(_, backend)| backend.clone())
}

fn write_atomically<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let err = |e: String| format!("cannot write {}: {e}", path.display());
    let text = serde_json::to_string_pretty(value).map_err(|e| err(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text + "\n")
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::TempRuntime;

    fn domain() -> Domain {
        serde_json::from_str(
            r#"{"name": "web", "uuid": "0123abcd-0000-4000-8000-000000000000", "memory": "512M",
                "kernel": "/k", "disks": [{"path": "/a.raw", "format": "raw"}],
                "nics": [{"bridge": "br0"}]}"#,
        )
        .expect("domain")
    }

    #[test]
    fn boot_and_attached_devices_are_listed_in_order_and_survive_a_round_trip() {
        let tmp = TempRuntime::new();
        let mut live = Live::new(domain());
        live.disks.push(LiveDisk {
            backend: "blk1".into(),
            target: "vdb".into(),
            disk: Disk {
                path: "/b.qcow2".into(),
                format: "qcow2".into(),
                readonly: false,
                queues: 1,
                backing_dirs: vec![],
            },
        });
        live.nics.push(LiveNic {
            backend: "net1".into(),
            tap: "sv0123abcdn1".into(),
            nic: Nic {
                bridge: Some("br1".into()),
                tap: None,
                mac: Some("52:01:23:ab:cd:01".into()),
                queues: 1,
            },
        });
        live.write(&tmp.0).expect("written");
        let back = Live::read(&tmp.0).expect("read back");
        assert_eq!(back, live);
        let disks: Vec<(String, String, bool)> = back
            .disk_views()
            .into_iter()
            .map(|v| (v.backend, v.target, v.attached))
            .collect();
        assert_eq!(
            disks,
            [
                ("blk0".into(), "vda".into(), false),
                ("blk1".into(), "vdb".into(), true)
            ]
        );
        let nics: Vec<(String, String)> = back
            .nic_views()
            .into_iter()
            .map(|v| (v.backend, v.mac))
            .collect();
        assert_eq!(
            nics,
            [
                ("net0".into(), "52:01:23:ab:cd:00".into()),
                ("net1".into(), "52:01:23:ab:cd:01".into())
            ]
        );
    }

    #[test]
    fn a_new_backend_takes_the_lowest_free_index_past_the_boot_devices() {
        assert_eq!(Live::free_index("blk", 2, &["blk0", "blk1"]), 2);
        assert_eq!(Live::free_index("blk", 1, &["blk0", "blk2", "net1"]), 1);
        assert_eq!(Live::free_index("net", 1, &["net0", "net1", "net2"]), 3);
    }

    #[test]
    fn no_or_a_broken_file_is_no_live_definition() {
        let tmp = TempRuntime::new();
        assert_eq!(Live::read(&tmp.0), None);
        std::fs::write(tmp.0.live(), "{").expect("write");
        assert_eq!(Live::read(&tmp.0), None);
    }
}
