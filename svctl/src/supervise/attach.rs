//! The supervisor's part of attaching and detaching devices while the domain runs
//! (`svctl attach-disk`, `attach-interface`, `detach-disk`, `detach-interface`): it starts the
//! new device's backend (its configuration file written as at boot, awaited on READY=1, a NIC's
//! tap made and held here), records it, and from then on keeps it running as any other backend;
//! on detach it stops it. The vmm's side (`vm.add-device`, `vm.remove-device`) is `svctl`'s
//! (`attach.rs`): waiting for the guest's eject must not stop the supervisor from watching.

use super::backend::Backend;
use super::config_files::{config_args, net_backend_without_tap, overlay_dir};
use super::control::{Attached, Reply};
use super::tap_maker::{TapMaker, TapSpec};
use super::{bin, teardown};
use crate::domain::{Disk, Nic, Runtime};
use crate::live::{Live, LiveDisk, LiveNic};

fn used_names(backends: &[Backend]) -> Vec<&str> {
    backends.iter().map(|b| b.name.as_str()).collect()
}

/// Write `what`'s configuration file and start it.
fn start(
    rt: &Runtime,
    what: &str,
    program: &str,
    config: Result<String, serde_json::Error>,
    tap: Option<TapMaker>,
) -> Result<Backend, String> {
    let path = rt.backend_config(what);
    let text = config.map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Backend::start(rt, what, bin(program), config_args(&path), tap).inspect_err(|_| {
        let _ = std::fs::remove_file(&path);
    })
}

pub(super) fn attach_disk(
    rt: &Runtime,
    backends: &mut Vec<Backend>,
    live: &mut Live,
    target: String,
    disk: Disk,
) -> Reply {
    let d = &live.domain;
    if let Some(v) = live.disk_views().iter().find(|v| v.target == target) {
        return Reply::Error(format!("target {target} is taken (by {})", v.backend));
    }
    let i = Live::free_index("blk", d.disks.len(), &used_names(backends));
    let what = format!("blk{i}");
    if let Err(e) = overlay_dir(d, rt) {
        return Reply::Error(e);
    }
    let config = serde_json::to_string_pretty(&d.blk_backend_for(&disk, i, rt));
    let backend = match start(rt, &what, "splitvisor-blk", config, None) {
        Ok(b) => b,
        Err(e) => return Reply::Error(format!("disk {}: {e}", disk.path.display())),
    };
    let device = format!(
        "vhost-user,type=blk,id={what},socket={},control={},queues={}",
        rt.disk_socket(i).display(),
        rt.disk_control(i).display(),
        disk.queues
    );
    let pid = backend.record().pid;
    backends.push(backend);
    live.disks.push(LiveDisk {
        backend: what.clone(),
        target,
        disk,
    });
    if let Err(e) = live.write(rt) {
        tracing::error!("{e}: an adopting supervisor would not know the attached disk");
    }
    tracing::info!(what, pid, "disk backend started for attach");
    Reply::Attached(Attached {
        backend: what,
        pid,
        device,
        tap: None,
        mac: None,
    })
}

pub(super) fn attach_nic(
    rt: &Runtime,
    backends: &mut Vec<Backend>,
    live: &mut Live,
    mut nic: Nic,
) -> Reply {
    let d = &live.domain;
    let i = Live::free_index("net", d.nics.len(), &used_names(backends));
    let what = format!("net{i}");
    let mac = d.mac_for(&nic, i);
    if let Some(v) = live.nic_views().iter().find(|v| v.mac == mac) {
        return Reply::Error(format!("MAC {mac} is taken (by {})", v.backend));
    }
    nic.mac = Some(mac.clone());
    let tap = d.tap_name_for(&nic, i);
    if let Some(v) = live.nic_views().iter().find(|v| v.tap == tap) {
        return Reply::Error(format!("tap {tap} is taken (by {})", v.backend));
    }
    let spec = TapSpec::for_nic(d, &nic, i);
    let config = serde_json::to_string_pretty(&net_backend_without_tap(d, &nic, i, rt));
    let backend = match start(
        rt,
        &what,
        "splitvisor-net",
        config,
        Some(TapMaker::new(spec)),
    ) {
        Ok(b) => b,
        Err(e) => return Reply::Error(format!("interface {tap}: {e}")),
    };
    let device = format!(
        "vhost-user,type=net,id={what},socket={},queues={}",
        rt.nic_socket(i).display(),
        nic.queues
    );
    let pid = backend.record().pid;
    backends.push(backend);
    live.nics.push(LiveNic {
        backend: what.clone(),
        tap: tap.clone(),
        nic,
    });
    if let Err(e) = live.write(rt) {
        tracing::error!("{e}: an adopting supervisor would not know the attached NIC");
    }
    tracing::info!(what, pid, tap, "net backend started for attach");
    Reply::Attached(Attached {
        backend: what,
        pid,
        device,
        tap: Some(tap),
        mac: Some(mac),
    })
}

pub(super) fn detach(
    rt: &Runtime,
    backends: &mut Vec<Backend>,
    live: &mut Live,
    what: &str,
) -> Reply {
    let attached =
        live.disks.iter().any(|d| d.backend == what) || live.nics.iter().any(|n| n.backend == what);
    if !attached {
        return Reply::Error(format!("{what} is not an attached device of the domain"));
    }
    live.disks.retain(|d| d.backend != what);
    live.nics.retain(|n| n.backend != what);
    if let Err(e) = live.write(rt) {
        tracing::error!("{e}: the live definition still names {what}");
    }
    let Some(at) = backends.iter().position(|b| b.name == what) else {
        return Reply::Detached(0);
    };
    // dropped with the backend: the NIC's tap (its last descriptors) goes away
    let backend = backends.remove(at);
    let pid = backend.record().pid;
    teardown::stop_backends(backend.into_process().into_iter().collect());
    let _ = std::fs::remove_file(rt.backend_config(what));
    tracing::info!(what, pid, "backend of a detached device stopped");
    Reply::Detached(pid)
}
