//! `svctl vcpuinfo`, `vcpupin` and `cpu-stats`. A running domain's vCPUs are the vmm's threads
//! named `vcpu<N>` (vmm/src/vcpu.rs): their state, CPU time, the host CPU they last ran on and
//! their affinity come from /proc and sched_getaffinity, and pinning is sched_setaffinity on
//! the thread — how libvirt pins QEMU's vCPU threads. `vcpupin --config` records the pinning
//! in the domain (`vcpupin`), which the supervisor applies at every start ([`apply_pins`]).

use std::collections::BTreeMap;

use serde_json::json;

use svctl::cpulist::{format_cpulist, parse_cpulist};

use crate::domain::Domain;
use crate::lifecycle::require_running;
use crate::store::Store;
use crate::Out;

/// One vCPU thread of the vmm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuThread {
    pub vcpu: u32,
    pub tid: u32,
}

/// The vCPU threads of vmm `pid`, by vCPU number.
pub fn vcpu_threads(pid: u32) -> Vec<VcpuThread> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out: Vec<VcpuThread> = tasks
        .flatten()
        .filter_map(|t| {
            let tid: u32 = t.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let vcpu = comm.trim().strip_prefix("vcpu")?.parse().ok()?;
            Some(VcpuThread { vcpu, tid })
        })
        .collect();
    out.sort_by_key(|t| t.vcpu);
    out
}

/// What /proc says of a process or thread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskStat {
    /// R, S, D…
    pub state: char,
    pub user_s: f64,
    pub system_s: f64,
    /// The host CPU it last ran on.
    pub cpu: u32,
}

impl TaskStat {
    /// From the text of a `stat` file.
    pub fn parse(stat: &str) -> Option<TaskStat> {
        let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let ticks = |i: usize| Some(f.get(i)?.parse::<u64>().ok()? as f64 / hz);
        Some(TaskStat {
            state: f.first()?.chars().next()?,
            user_s: ticks(11)?,
            system_s: ticks(12)?,
            cpu: f.get(36)?.parse().ok()?,
        })
    }

    pub fn read(path: &str) -> Option<TaskStat> {
        TaskStat::parse(&std::fs::read_to_string(path).ok()?)
    }

    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.system_s
    }
}

/// Seconds to the millisecond (sums of clock ticks print as 0.21000000000000002 otherwise).
fn ms(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

/// The host's CPUs (configured, online or not).
fn host_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.clamp(1, libc::CPU_SETSIZE as i64) as usize
}

/// Thread `tid`'s CPUs.
fn affinity(tid: u32) -> std::io::Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; sched_getaffinity writes at most
    // size_of::<cpu_set_t>() bytes into it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(tid as i32, std::mem::size_of_val(&set), &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        set
    };
    // SAFETY: CPU_ISSET reads the set we own, each index below CPU_SETSIZE.
    Ok((0..host_cpus())
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Pin thread `tid` to `cpus`.
fn set_affinity(tid: u32, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: CPU_SET writes into the set we own, each index checked below CPU_SETSIZE by
    // parse_cpulist; sched_setaffinity reads size_of::<cpu_set_t>() bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(tid as i32, std::mem::size_of_val(&set), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn running_vcpus(store: &Store, name: &str) -> Result<(u32, Vec<VcpuThread>), String> {
    require_running(store, name)?;
    let pid = store
        .vmm(name)
        .map(|v| v.pid)
        .ok_or_else(|| format!("domain '{name}' has no vmm yet"))?;
    Ok((pid, vcpu_threads(pid)))
}

/// `vcpuinfo NAME`: each vCPU's host CPU, state, CPU time and affinity, as virsh shows them.
pub fn vcpuinfo(store: &Store, name: &str, out: &Out) -> Result<(), String> {
    let (pid, threads) = running_vcpus(store, name)?;
    let (mut text, mut rows) = (String::new(), Vec::new());
    let n = host_cpus();
    for t in threads {
        let Some(st) = TaskStat::read(&format!("/proc/{pid}/task/{}/stat", t.tid)) else {
            continue;
        };
        let cpus = affinity(t.tid).unwrap_or_default();
        let map: String = (0..n)
            .map(|c| if cpus.contains(&c) { 'y' } else { '-' })
            .collect();
        let state = match st.state {
            'R' => "running",
            _ => "blocked",
        };
        text += &format!(
            "VCPU:           {}\nCPU:            {}\nState:          {state}\nCPU time:       {:.1}s\nCPU Affinity:   {map}\nThread:         {}\n\n",
            t.vcpu, st.cpu, st.cpu_s(), t.tid
        );
        rows.push(
            json!({"vcpu": t.vcpu, "cpu": st.cpu, "state": state, "cpu_time_s": ms(st.cpu_s()),
                         "affinity": format_cpulist(&cpus), "thread": t.tid}),
        );
    }
    out.print(text, json!(rows));
    Ok(())
}

/// What `vcpupin`'s flags said: the running domain, the definition, or both.
pub struct PinScope {
    pub live: bool,
    pub config: bool,
}

/// `vcpupin NAME [VCPU CPULIST]`: show or set the vCPUs' pinning.
pub fn vcpupin(
    store: &Store,
    name: &str,
    pin: Option<(u32, &str)>,
    scope: PinScope,
    out: &Out,
) -> Result<(), String> {
    let mut d = store.load(name)?;
    let running = crate::lifecycle::state(store, name) != crate::store::DomState::ShutOff;
    let (live, config) = match (scope.live, scope.config) {
        (false, false) => (running, !running),
        s => s,
    };
    let Some((vcpu, list)) = pin else {
        return show_pins(store, name, &d, live, out);
    };
    if vcpu >= u32::from(d.vcpus) {
        return Err(format!(
            "domain '{name}' has vCPUs 0-{} (no vCPU {vcpu})",
            d.vcpus - 1
        ));
    }
    let cpus = parse_cpulist(list, host_cpus()).map_err(|e| format!("domain '{name}': {e}"))?;
    if live {
        let (_, threads) = running_vcpus(store, name)?;
        let t = threads
            .iter()
            .find(|t| t.vcpu == vcpu)
            .ok_or_else(|| format!("domain '{name}': no thread for vCPU {vcpu}"))?;
        set_affinity(t.tid, &cpus)
            .map_err(|e| format!("domain '{name}': cannot pin vCPU {vcpu}: {e}"))?;
    }
    if config {
        if !store.persistent(name) {
            return Err(format!(
                "domain '{name}' is transient: it has no definition to change"
            ));
        }
        d.vcpupin.insert(vcpu, format_cpulist(&cpus));
        d.validate().map_err(|e| e.to_string())?;
        store.save(&d)?;
    }
    let list = format_cpulist(&cpus);
    out.print(
        format!("vCPU {vcpu} of domain '{name}' pinned to CPUs {list}\n"),
        json!({"domain": name, "vcpu": vcpu, "cpus": list, "live": live, "config": config}),
    );
    Ok(())
}

fn show_pins(store: &Store, name: &str, d: &Domain, live: bool, out: &Out) -> Result<(), String> {
    let all = format_cpulist(&(0..host_cpus()).collect::<Vec<_>>());
    let mut pins: BTreeMap<u32, String> = (0..u32::from(d.vcpus))
        .map(|v| (v, d.vcpupin.get(&v).cloned().unwrap_or_else(|| all.clone())))
        .collect();
    if live {
        let (_, threads) = running_vcpus(store, name)?;
        for t in threads {
            if let Ok(cpus) = affinity(t.tid) {
                pins.insert(t.vcpu, format_cpulist(&cpus));
            }
        }
    }
    let mut text = format!(" {:<6} {}\n{}\n", "VCPU", "CPU Affinity", "-".repeat(24));
    for (v, l) in &pins {
        text += &format!(" {v:<6} {l}\n");
    }
    let rows: Vec<_> = pins
        .iter()
        .map(|(v, l)| json!({"vcpu": v, "cpus": l}))
        .collect();
    out.print(text, json!(rows));
    Ok(())
}

/// Pin the vCPU threads of vmm `pid` as domain `d` says (the supervisor, at start). The
/// threads appear as the vmm builds the VM: waited for, bounded.
pub fn apply_pins(d: &Domain, pid: u32) {
    if d.vcpupin.is_empty() {
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut threads = vcpu_threads(pid);
    while threads.len() < usize::from(d.vcpus) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        threads = vcpu_threads(pid);
    }
    for (vcpu, list) in &d.vcpupin {
        let applied = parse_cpulist(list, host_cpus()).and_then(|cpus| {
            let t = threads
                .iter()
                .find(|t| t.vcpu == *vcpu)
                .ok_or(format!("no thread for vCPU {vcpu}"))?;
            set_affinity(t.tid, &cpus).map_err(|e| e.to_string())
        });
        match applied {
            Ok(()) => tracing::info!(vcpu, cpus = %list, "vCPU pinned"),
            Err(e) => tracing::warn!(vcpu, "vCPU not pinned: {e}"),
        }
    }
}

/// `cpu-stats NAME`: the CPU time the domain's processes used — the vmm (its vCPU threads
/// apart) and each backend — and the total.
pub fn cpu_stats(store: &Store, name: &str, out: &Out) -> Result<(), String> {
    let (pid, threads) = running_vcpus(store, name)?;
    let mut procs: Vec<(String, u32)> = vec![("vmm".into(), pid)];
    if let Some(rec) = store.record(name) {
        procs.extend(
            rec.backends
                .iter()
                .filter(|(_, b)| b.id().is_alive())
                .map(|(what, b)| (what.clone(), b.pid)),
        );
    }
    let vcpu_s: f64 = threads
        .iter()
        .filter_map(|t| TaskStat::read(&format!("/proc/{pid}/task/{}/stat", t.tid)))
        .map(|s| s.cpu_s())
        .sum();
    let (mut user, mut system) = (0.0, 0.0);
    let mut text = String::new();
    let mut rows = Vec::new();
    for (what, p) in &procs {
        let Some(st) = TaskStat::read(&format!("/proc/{p}/stat")) else {
            continue;
        };
        user += st.user_s;
        system += st.system_s;
        text += &format!(
            "{what} (pid {p}):\n\tcpu_time {:>12.3} seconds\n",
            st.cpu_s()
        );
        rows.push(
            json!({"process": what, "pid": p, "cpu_time_s": ms(st.cpu_s()),
                         "user_time_s": ms(st.user_s), "system_time_s": ms(st.system_s)}),
        );
    }
    text += &format!(
        "Total:\n\tcpu_time {:>12.3} seconds\n\tuser_time {:>11.3} seconds\n\tsystem_time {:>9.3} seconds\n\tvcpu_time {:>11.3} seconds\n",
        user + system,
        user,
        system,
        vcpu_s
    );
    out.print(
        text,
        json!({"domain": name, "processes": rows,
               "total": {"cpu_time_s": ms(user + system), "user_time_s": ms(user),
                         "system_time_s": ms(system), "vcpu_time_s": ms(vcpu_s)}}),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_threads_stat_and_affinity_are_read_and_pinning_round_trips() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let st = TaskStat::read(&format!("/proc/self/task/{tid}/stat")).expect("stat");
        assert_eq!(st.state, 'R', "this thread runs");
        let mine = affinity(tid).expect("affinity");
        assert!(!mine.is_empty());
        set_affinity(tid, &mine[..1]).expect("pinned");
        assert_eq!(affinity(tid).expect("affinity"), mine[..1]);
        set_affinity(tid, &mine).expect("unpinned");
    }

    #[test]
    fn vcpu_threads_are_found_by_name() {
        let t = std::thread::Builder::new()
            .name("vcpu7".into())
            .spawn(|| std::thread::sleep(std::time::Duration::from_millis(500)))
            .expect("thread");
        std::thread::sleep(std::time::Duration::from_millis(50));
        let found = vcpu_threads(std::process::id());
        t.join().expect("joined");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].vcpu, 7);
    }
}
