//! The verbs that show domains: list, dominfo, dumpconfig, domblklist, domiflist, dommemstat;
//! and setmem (the balloon), which works on a running domain through its vmm.

use api::config::ByteSize;
use serde_json::{json, Value};

use crate::domain::Domain;
use crate::lifecycle::{api, require_running, state};
use crate::live::{disk_rows, nic_rows, Row};
use crate::record::Record;
use crate::store::{DomState, Store};
use crate::Out;

fn vmm_pid(store: &Store, name: &str) -> Option<u32> {
    store.vmm(name).map(|v| v.pid)
}

/// The balloon backend's view (through the vmm): ram, target, balloon size.
fn balloon_info(store: &Store, name: &str) -> Option<Value> {
    api(store, name).get::<Value>("vm.balloon").ok()
}

pub fn list(store: &Store, all: bool, out: &Out) -> Result<(), String> {
    let mut rows = Vec::new();
    for name in store.names() {
        let st = state(store, &name);
        if !all && st == DomState::ShutOff {
            continue;
        }
        let id = vmm_pid(store, &name);
        rows.push((id, name, st));
    }
    let json = rows
        .iter()
        .map(|(id, name, st)| json!({"id": id, "name": name, "state": st.to_string()}))
        .collect::<Vec<_>>();
    let mut text = format!(
        " {:<8} {:<24} {}\n{}\n",
        "Id",
        "Name",
        "State",
        "-".repeat(46)
    );
    for (id, name, st) in &rows {
        let id = id.map_or("-".to_string(), |i| i.to_string());
        text += &format!(" {id:<8} {name:<24} {st}\n");
    }
    out.print(text, Value::Array(json));
    Ok(())
}

pub fn dominfo(store: &Store, name: &str, out: &Out) -> Result<(), String> {
    let d = store.load(name)?;
    let st = state(store, name);
    let pid = vmm_pid(store, name);
    // seconds of CPU the vmm has used (all its threads, vCPUs included)
    let cpu = pid
        .and_then(|p| crate::vcpus::TaskStat::read(&format!("/proc/{p}/stat")))
        .map(|s| s.cpu_s());
    let max_kib = d.memory.0 >> 10;
    let used_kib = match (st, balloon_info(store, name)) {
        (DomState::ShutOff, _) | (_, None) => max_kib,
        (_, Some(b)) => {
            // 0 until the guest's balloon driver has started the device
            let ram = b["ram_bytes"]
                .as_u64()
                .filter(|&r| r > 0)
                .unwrap_or(d.memory.0);
            ram.saturating_sub(b["balloon_bytes"].as_u64().unwrap_or(0)) >> 10
        }
    };
    let persistent = store.persistent(name);
    // each device's link to its backend process, from the running vmm
    let info = match st {
        DomState::ShutOff => None,
        _ => api(store, name).get::<api::types::VmInfo>("vm.info").ok(),
    };
    let ram_pages = info.as_ref().map(|i| i.ram_pages.to_string());
    // running: the vCPUs it has now (setvcpus --live)
    let vcpus = info.as_ref().map_or(d.vcpus, |i| i.cpus);
    let devices: Vec<api::types::DeviceInfo> = info.map(|i| i.devices).unwrap_or_default();
    let backends: Vec<Value> = devices
        .iter()
        .filter_map(|dev| {
            let b = dev.backend.as_ref()?;
            Some(json!({"device": dev.name, "connected": b.connected,
                        "reconnects": b.reconnects, "last_outage_ms": b.last_outage_ms}))
        })
        .collect();
    // the supervisor (if one runs) and its record of each backend process
    let (supervisor, record) = match st {
        DomState::ShutOff => (None, None),
        _ => (store.supervisor(name), store.record(name)),
    };
    let processes = backend_processes(record.as_ref(), supervisor.is_some());
    let j = json!({
        "id": pid, "name": d.name, "uuid": d.uuid, "state": st.to_string(), "vcpus": vcpus,
        "cpu_time_s": cpu, "max_memory_kib": max_kib, "used_memory_kib": used_kib,
        "ram_pages": ram_pages,
        "persistent": persistent, "autostart": d.autostart, "supervisor": supervisor,
        "backends": backends, "backend_processes": processes,
    });
    let supervisor_row = match (st, supervisor) {
        (DomState::ShutOff, _) => "-".to_string(),
        (_, Some(p)) => format!("running (pid {p})"),
        (_, None) => format!("none (`svctl start {name}` adopts the running domain)"),
    };
    let yn = |b: bool| if b { "yes" } else { "no" };
    let rows = [
        ("Id", pid.map_or("-".into(), |p| p.to_string())),
        ("Name", d.name.clone()),
        ("UUID", d.uuid.clone()),
        ("OS Type", "hvm".into()),
        ("State", st.to_string()),
        ("CPU(s)", vcpus.to_string()),
        ("CPU time", cpu.map_or("-".into(), |c| format!("{c:.1}s"))),
        ("Max memory", format!("{max_kib} KiB")),
        ("Used memory", format!("{used_kib} KiB")),
        ("Memory pages", ram_pages.unwrap_or_else(|| "-".into())),
        ("Persistent", yn(persistent).into()),
        (
            "Autostart",
            if d.autostart { "enable" } else { "disable" }.into(),
        ),
        ("Supervisor", supervisor_row),
    ];
    let backend_rows = devices.iter().filter_map(|dev| {
        let b = dev.backend.as_ref()?;
        let link = if b.connected {
            "connected"
        } else {
            "reconnecting"
        };
        let outage = b
            .last_outage_ms
            .map_or(String::new(), |ms| format!(", last outage {ms} ms"));
        Some((
            format!("Backend {}", dev.name),
            format!("{link}, {} reconnect(s){outage}", b.reconnects),
        ))
    });
    let process_rows = processes
        .as_object()
        .into_iter()
        .flatten()
        .map(|(what, v)| {
            let planned = match v["planned_restarts"].as_u64().unwrap_or(0) {
                0 => String::new(),
                n => format!(", {n} planned"),
            };
            (
                format!("Process {what}"),
                format!(
                    "{}, {} restart(s){planned}",
                    v["state"].as_str().unwrap_or("-"),
                    v["restarts"].as_u64().unwrap_or(0)
                ),
            )
        });
    let text: String = rows
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(backend_rows)
        .chain(process_rows)
        .map(|(k, v)| format!("{:<16}{v}\n", format!("{k}:")))
        .collect();
    out.print(text, j);
    Ok(())
}

/// Each backend process as the record has it: its PID, whether it runs (checked by its start
/// time), its restarts.
fn backend_processes(record: Option<&Record>, supervised: bool) -> Value {
    let procs = record.into_iter().flat_map(|r| &r.backends);
    let map = procs
        .map(|(what, b)| {
            let state = match (b.down, b.id().is_alive(), supervised) {
                (true, _, _) => "left down",
                (false, true, _) => "running",
                (false, false, true) => "restarting",
                (false, false, false) => "dead (no supervisor to restart it)",
            };
            let v = json!({"pid": b.pid, "state": state, "down": b.down,
                           "restarts": b.restarts, "planned_restarts": b.planned_restarts});
            (what.clone(), v)
        })
        .collect();
    Value::Object(map)
}

pub fn dumpconfig(store: &Store, name: &str, vmm: bool, out: &Out) -> Result<(), String> {
    let value = if vmm {
        require_running(store, name)?;
        api(store, name)
            .get::<Value>("vm.config")
            .map_err(|e| format!("domain '{name}': {e}"))?
    } else {
        serde_json::to_value(store.load(name)?).map_err(|e| e.to_string())?
    };
    let text = serde_json::to_string_pretty(&value).unwrap_or_default() + "\n";
    out.print(text, value);
    Ok(())
}

pub fn domblklist(store: &Store, name: &str, out: &Out) -> Result<(), String> {
    let d = store.load(name)?;
    let mut text = format!(" {:<8} {}\n{}\n", "Target", "Source", "-".repeat(40));
    let mut rows = Vec::new();
    for Row {
        name: target,
        device: disk,
        ..
    } in disk_rows(store, &d)
    {
        text += &format!(" {target:<8} {}\n", disk.path.display());
        rows.push(json!({"target": target, "source": disk.path, "format": disk.format, "readonly": disk.readonly}));
    }
    out.print(text, Value::Array(rows));
    Ok(())
}

pub fn domiflist(store: &Store, name: &str, out: &Out) -> Result<(), String> {
    let d: Domain = store.load(name)?;
    let mut text = format!(
        " {:<14} {:<8} {:<12} {:<8} {}\n{}\n",
        "Interface",
        "Type",
        "Source",
        "Model",
        "MAC",
        "-".repeat(64)
    );
    let mut rows = Vec::new();
    for Row {
        name: iface,
        device: (mac, nic),
        ..
    } in nic_rows(store, &d)
    {
        let (kind, source) = match (&nic.bridge, &nic.tap) {
            (Some(b), _) => ("bridge", b.clone()),
            (_, Some(t)) => ("ethernet", t.clone()),
            _ => ("-", "-".into()),
        };
        text += &format!(
            " {iface:<14} {kind:<8} {source:<12} {:<8} {mac}\n",
            "virtio"
        );
        rows.push(json!({"interface": iface, "type": kind, "source": source, "model": "virtio", "mac": mac}));
    }
    out.print(text, Value::Array(rows));
    Ok(())
}

pub fn setmem(store: &Store, name: &str, size: &str, out: &Out) -> Result<(), String> {
    let d = store.load(name)?;
    let size: ByteSize = size.parse().map_err(|e| format!("{e}"))?;
    if size > d.memory {
        return Err(format!(
            "domain '{name}': cannot set memory to {size}: above its maximum memory ({})",
            d.memory
        ));
    }
    if d.balloon.is_none() {
        return Err(format!("domain '{name}' has no balloon device"));
    }
    require_running(store, name)?;
    let reply = api(store, name)
        .put("vm.balloon", Some(&json!({"size": size.0})))
        .map_err(|e| format!("domain '{name}': {e}"))?;
    out.print(
        format!("Domain '{name}': memory target set to {size}\n"),
        reply,
    );
    Ok(())
}

pub fn dommemstat(store: &Store, name: &str, out: &Out) -> Result<(), String> {
    let d = store.load(name)?;
    if d.balloon.is_none() {
        return Err(format!("domain '{name}' has no balloon device"));
    }
    require_running(store, name)?;
    let client = api(store, name);
    let info: Value = client
        .get("vm.balloon")
        .map_err(|e| format!("domain '{name}': {e}"))?;
    let stats: Value = client
        .get("vm.balloon-stats?timeout_ms=3000")
        .map_err(|e| format!("domain '{name}': {e}"))?;
    let ram = info["ram_bytes"].as_u64().unwrap_or(0);
    let actual = ram.saturating_sub(info["balloon_bytes"].as_u64().unwrap_or(0)) >> 10;
    let mut text = format!("actual {actual}\n");
    let names = [
        ("swap_in", "swap_in"),
        ("swap_out", "swap_out"),
        ("major_faults", "major_fault"),
        ("minor_faults", "minor_fault"),
        ("free_memory", "unused"),
        ("total_memory", "available"),
        ("available_memory", "usable"),
        ("disk_caches", "disk_caches"),
    ];
    for (key, label) in names {
        if let Some(v) = stats["stats"][key].as_u64() {
            let v = if key.ends_with("memory") || key == "disk_caches" {
                v >> 10
            } else {
                v
            };
            text += &format!("{label} {v}\n");
        }
    }
    out.print(
        text,
        json!({"actual_kib": actual, "balloon": info, "stats": stats["stats"]}),
    );
    Ok(())
}

/// A backend's counters from its `--stats-socket`: every `key=value` word, summed by key
/// (the net backend has one line per queue pair).
fn backend_stats(socket: &std::path::Path) -> Result<Counters, String> {
    use std::io::Read;
    let mut text = String::new();
    std::os::unix::net::UnixStream::connect(socket)
        .and_then(|mut s| {
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            s.read_to_string(&mut text)
        })
        .map_err(|e| {
            format!(
                "cannot read the backend's counters at {}: {e}",
                socket.display()
            )
        })?;
    let mut out = Counters::new();
    for (k, v) in text.split_whitespace().filter_map(|w| w.split_once('=')) {
        if let Ok(v) = v.parse::<u64>() {
            *out.entry(k.to_string()).or_insert(0) += v;
        }
    }
    Ok(out)
}

/// Print `DEV key value` rows (virsh's layout) and the same as JSON.
fn print_stats(rows: Vec<(String, Vec<(&str, u64)>)>, out: &Out) {
    let mut text = String::new();
    let mut json = serde_json::Map::new();
    for (dev, values) in rows {
        let mut obj = serde_json::Map::new();
        for (k, v) in values {
            text += &format!("{dev} {k} {v}\n");
            obj.insert(k.to_string(), json!(v));
        }
        json.insert(dev, Value::Object(obj));
    }
    out.print(text, Value::Object(json));
}

type Counters = std::collections::BTreeMap<String, u64>;

/// One stats row per device (`(name, stats socket)`), or only the one named `only`; `rename`
/// turns a backend's counters into virsh's fields. `kind`: "disk"/"disks" for the errors.
fn device_stats(
    name: &str,
    devices: Vec<(String, std::path::PathBuf)>,
    only: Option<&str>,
    kind: (&str, &str),
    rename: impl Fn(&dyn Fn(&str) -> u64) -> Vec<(&'static str, u64)>,
    out: &Out,
) -> Result<(), String> {
    let mut rows = Vec::new();
    for (dev, socket) in devices {
        if only.is_some_and(|o| o != dev) {
            continue;
        }
        let s: Counters = backend_stats(&socket)?;
        rows.push((dev, rename(&|k| s.get(k).copied().unwrap_or(0))));
    }
    if rows.is_empty() {
        return Err(match only {
            Some(o) => format!("domain '{name}' has no {} {o}", kind.0),
            None => format!("domain '{name}' has no {}", kind.1),
        });
    }
    print_stats(rows, out);
    Ok(())
}

/// `domblkstat NAME [vdX]`: requests and bytes each way, flushes and errors, per disk.
pub fn domblkstat(store: &Store, name: &str, only: Option<&str>, out: &Out) -> Result<(), String> {
    let d = store.load(name)?;
    require_running(store, name)?;
    let rt = store.runtime(name);
    let disks = disk_rows(store, &d)
        .into_iter()
        .map(|r| (r.name, rt.stats(&r.backend)))
        .collect();
    device_stats(
        name,
        disks,
        only,
        ("disk", "disks"),
        |g| {
            vec![
                ("rd_req", g("reads")),
                ("rd_bytes", g("bytes_read")),
                ("wr_req", g("writes")),
                ("wr_bytes", g("bytes_written")),
                ("flush_operations", g("flushes")),
                ("errs", g("io_errors") + g("bad_requests")),
            ]
        },
        out,
    )
}

/// `domifstat NAME [IFACE]`: the guest's view (rx = what it received), per interface.
pub fn domifstat(store: &Store, name: &str, only: Option<&str>, out: &Out) -> Result<(), String> {
    let d = store.load(name)?;
    require_running(store, name)?;
    let rt = store.runtime(name);
    let nics = nic_rows(store, &d)
        .into_iter()
        .map(|r| (r.name, rt.stats(&r.backend)))
        .collect();
    device_stats(
        name,
        nics,
        only,
        ("interface", "network interfaces"),
        |g| {
            vec![
                ("rx_bytes", g("rx_bytes")),
                ("rx_packets", g("rx_packets")),
                ("rx_errs", 0),
                ("rx_drop", g("rx_dropped")),
                ("tx_bytes", g("tx_bytes")),
                ("tx_packets", g("tx_packets")),
                ("tx_errs", g("malformed_chains")),
                ("tx_drop", g("tx_dropped")),
            ]
        },
        out,
    )
}

/// The guest's name for disk `i`: vda, vdb, …
pub fn disk_target(i: usize) -> String {
    format!("vd{}", (b'a' + i as u8) as char)
}
