//! The vmm's API on a real splitvisor process under the host's own /dev/kvm (PVM here is fine:
//! none of this needs the guest to get far): info, config, pause/resume and their errors,
//! the power button, balloon errors, unknown endpoints, and a hard stop that ends the process
//! with status 5 and removes the socket.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api::client::{ApiClient, ClientError};
use api::types::{VmInfo, VmState};
use integration_tests::kit::Kit;
use serde_json::json;

fn bin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/release")
        .join(name)
}

struct Vmm {
    child: Child,
    dir: PathBuf,
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(tag: &str) -> (Vmm, ApiClient) {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: this test runs splitvisor under the host's KVM"
    );
    let kit = Kit::locate().expect("the guest kit (scripts/guest-kit.sh)");
    let dir = std::env::temp_dir().join(format!("sv-api-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("api.sock");
    let child = Command::new(bin("splitvisor"))
        .arg("--kernel")
        .arg(kit.path("l2/vmlinuz"))
        .arg("--initramfs")
        .arg(kit.path("l2/initramfs-min.cpio.gz"))
        .args([
            "--memory", "256M", "--cpus", "2", "--serial", "off", "--name", tag,
        ])
        .arg("--api-socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("target/release/splitvisor (cargo build --release)");
    let vmm = Vmm { child, dir };
    let client = ApiClient::new(&socket);
    let t = Instant::now();
    while client.get::<serde_json::Value>("vmm.ping").is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "no API within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    (vmm, client)
}

fn api_error(r: Result<serde_json::Value, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Api { status, message }) => (status, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn info_and_config_describe_the_running_vm() {
    let (vmm, api) = start("info");
    let mode = std::fs::metadata(api.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the API socket is for its owner only");
    let info: VmInfo = api.get("vm.info").unwrap();
    assert_eq!(info.name, "info");
    assert_eq!(info.state, VmState::Running);
    assert_eq!(info.cpus, 2);
    assert_eq!(info.memory_bytes, 256 << 20);
    assert_eq!(info.pid, vmm.child.id());
    assert!(info.devices.is_empty());
    let config: serde_json::Value = api.get("vm.config").unwrap();
    assert_eq!(config["memory"]["size"], "256M");
    assert_eq!(config["cpus"], 2);
    assert_eq!(config, serde_json::to_value(&info.config).unwrap());
    let (status, msg) = api_error(api.get("vm.nothing"));
    assert_eq!((status, msg.as_str()), (404, "no such endpoint"));
}

#[test]
fn pause_and_resume_with_their_errors() {
    let (_vmm, api) = start("pause");
    api.put("vm.pause", None).unwrap();
    let info: VmInfo = api.get("vm.info").unwrap();
    assert_eq!(info.state, VmState::Paused);
    assert_eq!(
        api_error(api.put("vm.pause", None)),
        (409, "the VM is already paused".into())
    );
    let (status, msg) = api_error(api.put("vm.shutdown", None));
    assert_eq!(status, 409);
    assert!(msg.contains("paused"), "{msg}");
    api.put("vm.resume", None).unwrap();
    let info: VmInfo = api.get("vm.info").unwrap();
    assert_eq!(info.state, VmState::Running);
    assert_eq!(
        api_error(api.put("vm.resume", None)),
        (409, "the VM is not paused".into())
    );
    // pause again after a resume: the vCPUs park each time
    api.put("vm.pause", None).unwrap();
    api.put("vm.resume", None).unwrap();
}

#[test]
fn power_button_and_balloon_errors() {
    let (_vmm, api) = start("button");
    api.put("vm.shutdown", None).unwrap();
    let info: VmInfo = api.get("vm.info").unwrap();
    assert_eq!(info.power_button_presses, 1);
    let (status, msg) = api_error(api.get("vm.balloon"));
    assert_eq!(
        (status, msg.as_str()),
        (404, "this VM has no balloon device")
    );
    let (status, msg) = api_error(api.put("vm.balloon", Some(&json!({"size": "lots"}))));
    assert_eq!(status, 400);
    assert!(msg.contains("invalid size"), "{msg}");
    let (status, msg) = api_error(api.put("vm.balloon", Some(&json!({"size": "1G"}))));
    assert_eq!(status, 400);
    assert!(msg.contains("above the VM's memory (256M)"), "{msg}");
}

#[test]
fn stop_ends_the_process_with_status_5_and_removes_the_socket() {
    let (mut vmm, api) = start("stop");
    api.put("vm.stop", None).unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = vmm.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(5));
    assert!(!api.socket().exists(), "the API socket is left behind");
}

#[test]
fn every_vmm_thread_runs_under_its_seccomp_filter() {
    let (vmm, client) = start("seccomp");
    let _: serde_json::Value = client.get("vm.info").expect("the API answers");
    let threads = integration_tests::proc_status::thread_field(vmm.child.id(), "Seccomp");
    // the main thread, two vCPUs, the API's runtime, the signal thread …
    assert!(threads.len() >= 4, "{threads:?}");
    for (comm, mode) in &threads {
        assert_eq!(mode.as_deref(), Some("2"), "thread {comm}: {threads:?}");
    }
    // each vCPU thread has one filter more than the rest: its own, stricter one
    let filters = integration_tests::proc_status::thread_field(vmm.child.id(), "Seccomp_filters");
    let count = |comm: &str| {
        filters
            .iter()
            .find(|(c, _)| c == comm)
            .and_then(|(_, n)| n.as_deref()?.parse::<u32>().ok())
    };
    let main = count("splitvisor").expect("the main thread's filters");
    for vcpu in ["vcpu0", "vcpu1"] {
        assert_eq!(count(vcpu), Some(main + 1), "{vcpu}: {filters:?}");
    }
}

#[test]
fn a_snapshot_is_written_whole_and_the_vm_is_left_as_it_was() {
    use vmm::snapshot::format::Sections;
    let (vmm, client) = start("snapshot");
    let dir = vmm.dir.join("snap");
    let url = format!("file://{}", dir.display());
    let took = Instant::now();
    client
        .put("vm.snapshot", Some(&json!({"destination_url": url})))
        .expect("vm.snapshot");
    eprintln!(
        "snapshot of a 256 MiB, 2-vCPU guest in {:?}",
        took.elapsed()
    );
    let info: VmInfo = client.get("vm.info").unwrap();
    assert_eq!(
        info.state,
        VmState::Running,
        "running before, running after"
    );

    let state = std::fs::read(dir.join("state.bin")).expect("state.bin");
    let sections = Sections::read(&state).expect("an intact state file");
    let names: Vec<&str> = sections.names().collect();
    for want in [
        "config", "memory", "pci-bus", "platform", "serial", "vcpu/0", "vcpu/1",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["name"], "snapshot");
    // the RAM file is as long as the RAM, but only what the guest wrote takes room
    let mem = std::fs::metadata(dir.join("memory.bin")).unwrap();
    assert_eq!(mem.len(), 256 << 20);
    use std::os::unix::fs::MetadataExt;
    assert!(
        mem.blocks() * 512 < 200 << 20,
        "memory.bin takes {} bytes",
        mem.blocks() * 512
    );

    // never over another snapshot; a paused VM stays paused
    let again = client.put("vm.snapshot", Some(&json!({"destination_url": url})));
    let (status, message) = api_error(again);
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("not empty"), "{message}");
    client.put("vm.pause", None).unwrap();
    let dir2 = vmm.dir.join("snap2");
    client
        .put(
            "vm.snapshot",
            Some(&json!({"destination_url": dir2.display().to_string()})),
        )
        .expect("vm.snapshot of a paused VM");
    let info: VmInfo = client.get("vm.info").unwrap();
    assert_eq!(info.state, VmState::Paused);
    assert!(dir2.join("state.bin").exists());
}

/// `splitvisor --restore DIR` with `extra` arguments, its API on `socket`.
fn restored(dir: &Path, socket: &Path, extra: &[&str]) -> Vmm {
    let child = Command::new(bin("splitvisor"))
        .arg("--restore")
        .arg(format!("file://{}", dir.display()))
        .arg("--api-socket")
        .arg(socket)
        .args(extra)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("target/release/splitvisor");
    Vmm {
        child,
        dir: socket.parent().unwrap().join("restored-scratch"),
    }
}

/// A running VM (kept running) and a snapshot of it, in its scratch dir's `snap`.
fn snapshot_of(tag: &str) -> (Vmm, PathBuf) {
    let (vmm, client) = start(tag);
    let snap = vmm.dir.join("snap");
    client
        .put(
            "vm.snapshot",
            Some(&json!({"destination_url": snap.display().to_string()})),
        )
        .expect("vm.snapshot");
    (vmm, snap)
}

#[test]
fn a_snapshot_restores_into_a_new_process_running_or_paused_and_a_damaged_one_is_refused() {
    let (vmm, snap) = snapshot_of("restore");
    let dir = vmm.dir.clone();
    let socket = dir.join("restored.sock");
    for (extra, want) in [
        (&[][..], VmState::Running),
        (&["--paused"][..], VmState::Paused),
    ] {
        let mut child = restored(&snap, &socket, extra);
        let api = ApiClient::new(&socket);
        let t = Instant::now();
        let info = loop {
            if let Ok(info) = api.get::<VmInfo>("vm.info") {
                break info;
            }
            if let Some(status) = child.child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                let _ = child.child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("the restored vmm exited ({status}): {err}");
            }
            assert!(t.elapsed() < Duration::from_secs(20), "no API within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            (info.state, info.cpus, info.name.as_str()),
            (want, 2, "restore")
        );
        if want == VmState::Paused {
            api.put("vm.resume", None).expect("resume");
            assert_eq!(
                api.get::<VmInfo>("vm.info").unwrap().state,
                VmState::Running
            );
        }
        let _ = child.child.kill();
        let _ = child.child.wait();
    }
    // one flipped byte: refused, one line naming what is wrong, nothing started
    let state = snap.join("state.bin");
    let mut bytes = std::fs::read(&state).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&state, &bytes).unwrap();
    let out = Command::new(bin("splitvisor"))
        .arg("--restore")
        .arg(&snap)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("damaged"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    drop(vmm);
}

#[test]
fn a_vmm_with_only_an_api_socket_waits_for_vm_restore() {
    let (vmm, snap) = snapshot_of("waiting");
    let socket = vmm.dir.join("waiting.sock");
    let child = Command::new(bin("splitvisor"))
        .arg("--api-socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("target/release/splitvisor");
    let waiting = Vmm {
        child,
        dir: vmm.dir.join("waiting-scratch"),
    };
    let api = ApiClient::new(&socket);
    let t = Instant::now();
    let ping = loop {
        if let Ok(p) = api.get::<serde_json::Value>("vmm.ping") {
            break p;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no API within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(ping["vm"], false, "{ping}");
    let (status, message) = api_error(api.get::<serde_json::Value>("vm.info"));
    assert_eq!(status, 404, "{message}");
    // a snapshot that is not there: refused, and the vmm still waits
    let missing = vmm.dir.join("no-such-snapshot");
    let body = json!({"source_url": format!("file://{}", missing.display())});
    let (status, message) = api_error(api.put("vm.restore", Some(&body)));
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("no-such-snapshot"), "{message}");
    assert!(api.get::<serde_json::Value>("vmm.ping").is_ok());
    // Cloud Hypervisor's body: the VM comes back paused, `vm.resume` runs it
    let body = json!({"source_url": format!("file://{}", snap.display())});
    api.put("vm.restore", Some(&body)).expect("vm.restore");
    let info: VmInfo = api.get("vm.info").expect("the VM's own API");
    assert_eq!(
        (info.state, info.cpus, info.name.as_str()),
        (VmState::Paused, 2, "waiting")
    );
    api.put("vm.resume", None).expect("vm.resume");
    let info: VmInfo = api.get("vm.info").unwrap();
    assert_eq!(info.state, VmState::Running);
    drop(waiting);
    drop(vmm);
}

#[test]
fn a_snapshot_whose_cpu_features_the_host_lacks_is_refused_by_name() {
    use vmm::snapshot::format::Sections;
    use vmm::snapshot::vcpu_state::{VcpuState, VERSION};
    let (vmm, snap) = snapshot_of("cpuid");
    // the guest was shown every feature bit of leaf 7 EBX: no host has them all
    let path = snap.join("state.bin");
    let mut sections = Sections::read(&std::fs::read(&path).unwrap()).unwrap();
    for id in 0..2 {
        let name = format!("vcpu/{id}");
        let mut state: VcpuState =
            serde_json::from_slice(sections.get(&name, VERSION).unwrap()).unwrap();
        for e in state
            .cpuid
            .iter_mut()
            .filter(|e| e.function == 7 && e.index == 0)
        {
            e.ebx = u32::MAX;
        }
        sections.put(&name, VERSION, serde_json::to_vec(&state).unwrap());
    }
    std::fs::write(&path, sections.to_bytes()).unwrap();
    let out = Command::new(bin("splitvisor"))
        .arg("--restore")
        .arg(&snap)
        .arg("--api-socket")
        .arg(vmm.dir.join("never.sock"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("lacks features") && err.contains("leaf 0x7 ebx bit"),
        "{err}"
    );
    assert!(!vmm.dir.join("never.sock").exists(), "an API was served");
}
