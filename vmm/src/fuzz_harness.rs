//! Fuzz harnesses of the vmm: entry points that `fuzz/fuzz_targets/` call with libFuzzer's
//! bytes and that `integration-tests/tests/fuzz_corpora.rs` replays over the committed
//! corpora. Each takes any byte string and must return normally: a panic, hang or unbounded
//! allocation here is a bug in the code under test, never in the input.
//!
//! - [`virtio_pci`]: what a guest can do to a virtio-pci device — config-space accesses through
//!   the 0xcf8/0xcfc ports, BAR reads and writes of every width (common configuration, ISR,
//!   device configuration, notification area, MSI-X table and PBA), machine resets — against
//!   the real transport and PCI bus, with the test wiring instead of KVM.
//! - [`api_bodies`]: any method, path, query and body into the real API router.

use std::sync::{Arc, Mutex, OnceLock};

use crate::pci::bus::{PciBus, CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT};
use crate::pci::PciDevice;
use crate::virtio::pci::test_utils::{driver_sets_up, wired_transport};
use crate::virtio::pci::{VirtioPciDevice, BAR_SIZE};

/// Reads the input a byte or an integer at a time; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        first
    }
    fn le(&mut self, len: usize) -> u64 {
        (0..len).fold(0, |v, i| v | u64::from(self.byte()) << (8 * i))
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Guest accesses per input: enough for a driver's whole setup sequence several times over.
const MAX_OPS: usize = 512;

/// Where the virtio device sits on the fuzzed bus (slot 0 is the host bridge).
const SLOT: u32 = 1;

/// [`virtio_pci_run`], for libFuzzer.
pub fn virtio_pci(data: &[u8]) {
    virtio_pci_run(data);
}

/// Input: byte 0 picks 1–4 queues, then one little-endian u16 maximum size per queue (any
/// value, as a backend may offer); then operations until the input ends, each an opcode byte
/// and its operands: 0 config-address write (u32), 1 config-data write (port offset, width,
/// value), 2 config-data read, 3 BAR write (offset u16, width, value), 4 BAR read, 5 a
/// driver's canonical setup sequence, 6 machine reset, 7 a BAR access at a raw bus address.
/// The machine is reset once before the operations (the transport registers its
/// notifications at the BAR's power-on address until config space is first written, by
/// design); from then on, after every operation, the queue notifications must be registered
/// inside BAR 0 as it decodes now, or nowhere. Returns the number of device activations, for tests.
pub fn virtio_pci_run(data: &[u8]) -> usize {
    let mut input = Input(data);
    let queues = 1 + usize::from(input.byte() % 4);
    let sizes: Vec<u16> = (0..queues).map(|_| input.le(2) as u16).collect();
    let (transport, activations, _, notify) = wired_transport(&sizes);
    let transport = Arc::new(Mutex::new(transport));
    let bus = PciBus::new();
    let slot = bus.add(transport.clone()).expect("an empty bus has room") as u32;
    assert_eq!(slot, SLOT);
    bus.power_on_reset();
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let width = |w: u8| 1usize << (w % 4); // 1, 2, 4 or 8 bytes
        match input.byte() % 8 {
            0 => {
                let address = input.le(4) as u32;
                bus.pio_write(CONFIG_ADDRESS_PORT, &address.to_le_bytes());
            }
            1 => {
                let port = CONFIG_DATA_PORT + u16::from(input.byte() % 4);
                let len = width(input.byte()).min(4);
                let value = input.le(len);
                bus.pio_write(port, &value.to_le_bytes()[..len]);
            }
            2 => {
                let port = CONFIG_DATA_PORT + u16::from(input.byte() % 4);
                let mut buf = [0u8; 4];
                bus.pio_read(port, &mut buf[..width(input.byte()).min(4)]);
            }
            3 => {
                let base = bar_base(&transport);
                let offset = input.le(2) % BAR_SIZE;
                let len = width(input.byte());
                let value = input.le(len);
                bus.mmio_write(base.wrapping_add(offset), &value.to_le_bytes()[..len]);
            }
            4 => {
                let base = bar_base(&transport);
                let offset = input.le(2) % BAR_SIZE;
                let mut buf = [0u8; 8];
                bus.mmio_read(base.wrapping_add(offset), &mut buf[..width(input.byte())]);
            }
            5 => driver_sets_up(&mut lock(&transport)),
            6 => bus.power_on_reset(),
            _ => {
                let addr = input.le(8);
                let len = width(input.byte());
                if input.byte() & 1 == 0 {
                    bus.mmio_write(addr, &input.le(len).to_le_bytes()[..len]);
                } else {
                    bus.mmio_read(addr, &mut [0u8; 8][..len]);
                }
            }
        }
        let t = lock(&transport);
        let decoding = t.config().memory_enabled().then(|| t.config().bar_addr(0));
        for at in notify.lock().expect("notify").iter().flatten() {
            let inside =
                decoding.is_some_and(|bar| (bar..bar.saturating_add(BAR_SIZE)).contains(at));
            assert!(
                inside,
                "a notification at {at:#x} outside BAR 0 ({decoding:x?})"
            );
        }
    }
    let count = activations.lock().expect("activations").len();
    count
}

fn lock(t: &Arc<Mutex<VirtioPciDevice>>) -> std::sync::MutexGuard<'_, VirtioPciDevice> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

fn bar_base(t: &Arc<Mutex<VirtioPciDevice>>) -> u64 {
    lock(t).config().bar_addr(0)
}

/// Seeds: the driver's setup through the ports and the BAR as a guest kernel does it, a BAR
/// move, 64-bit queue address writes, MSI-X table writes, a reset in the middle.
pub fn virtio_pci_seeds() -> Vec<(String, Vec<u8>)> {
    let config_write = |reg: u32, value: u32| {
        let mut v = vec![0];
        v.extend((1u32 << 31 | SLOT << 11 | reg).to_le_bytes());
        v.extend([1, 0, 2]);
        v.extend(value.to_le_bytes());
        v
    };
    let bar_write = |offset: u16, width_code: u8, value: u64| {
        let mut v = vec![3];
        v.extend(offset.to_le_bytes());
        v.push(width_code);
        v.extend(&value.to_le_bytes()[..1 << width_code]);
        v
    };
    let header = |queues: u8, size: u16| {
        let mut v = vec![queues - 1];
        for _ in 0..queues {
            v.extend(size.to_le_bytes());
        }
        v
    };
    let mut setup = header(2, 256);
    setup.extend(config_write(0x04, 0x06)); // memory decoding, bus master
    for (off, w, value) in [
        (0x14u16, 0u8, 0x03u64), // status: ACKNOWLEDGE | DRIVER
        (0x08, 2, 1),
        (0x0c, 2, 1), // VERSION_1
        (0x14, 0, 0x0b),
        (0x16, 1, 0), // queue_select 0
        (0x18, 1, 64),
        (0x20, 3, 0x1_0000_1000), // 64-bit descriptor address
        (0x28, 3, 0x2000),
        (0x30, 3, 0x3000),
        (0x1c, 1, 1),
        (0x14, 0, 0x0f), // DRIVER_OK
    ] {
        setup.extend(bar_write(off, w, value));
    }
    let mut moved = setup.clone();
    moved.extend(config_write(0x10, 0xd000_0000));
    moved.extend(config_write(0x14, 0x1));
    moved.extend([4, 0x00, 0x30, 2]); // a 4-byte read of the new BAR's notify area
    let mut reset = header(1, 8);
    reset.extend([5, 6, 5]);
    let mut msix = header(3, 1024);
    msix.extend([5]);
    for entry in 0..4u16 {
        msix.extend(bar_write(0x8000 + entry * 16 + 12, 2, 1)); // mask
        msix.extend(bar_write(0x8000 + entry * 16, 3, 0xfee0_0000));
    }
    vec![
        ("setup-through-ports".into(), setup),
        ("bar-moved-above-4g".into(), moved),
        ("setup-reset-setup".into(), reset),
        ("msix-table-writes".into(), msix),
        (
            "odd-queue-sizes".into(),
            vec![3, 0, 0, 3, 0, 0xff, 0xff, 0, 0x80, 5],
        ),
    ]
}

/// The paths of every route, then a few that are not routes.
const PATHS: &[&str] = &[
    "vmm.ping",
    "vm.info",
    "vm.config",
    "vm.pause",
    "vm.resume",
    "vm.shutdown",
    "vm.stop",
    "vm.balloon",
    "vm.balloon-stats",
    "vm.snapshot",
    "vm.send-migration",
    "vm.cancel-migration",
    "vm.migration-info",
    "vm.resize-disk",
    "vm.add-device",
    "vm.remove-device",
    "vm.reboot",
    "vm.resize",
    "",
];

const METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD"];

/// [`api_bodies_run`], for libFuzzer.
pub fn api_bodies(data: &[u8]) {
    api_bodies_run(data);
}

/// Input: byte 0 picks the method, byte 1 the path, byte 2 the query's length n, the next n
/// bytes the query string, the rest the JSON body. The request goes to the real router over
/// a VM without vCPUs or devices (one KVM VM per process; the router needs its clock).
/// Returns the response's status code (None if the bytes make no valid URI), for tests.
pub fn api_bodies_run(data: &[u8]) -> Option<u16> {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    let mut input = Input(data);
    let method = METHODS[usize::from(input.byte()) % METHODS.len()];
    let path = PATHS[usize::from(input.byte()) % PATHS.len()];
    let query_len = usize::from(input.byte() % 64).min(input.0.len());
    let (query, body) = input.0.split_at(query_len);
    let mut uri = format!("{}/{path}", ::api::PREFIX);
    if !query.is_empty() {
        uri.push('?');
        uri.push_str(std::str::from_utf8(query).ok()?);
    }
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .ok()?;
    let router = crate::api::server::router(Arc::new(api_context()));
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    });
    let response = runtime.block_on(router.oneshot(request)).ok()?;
    Some(response.status().as_u16())
}

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
static VM: OnceLock<Arc<kvm_ioctls::VmFd>> = OnceLock::new();

/// A fresh context (run state, exit, power button) over the process's one VM.
fn api_context() -> crate::api::server::ApiContext {
    let vm = VM.get_or_init(|| {
        let kvm = kvm_ioctls::Kvm::new().expect("the API harness needs /dev/kvm");
        Arc::new(kvm.create_vm().expect("a KVM VM"))
    });
    let exit = Arc::new(crate::exit::ExitHandle::default());
    let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    crate::api::server::ApiContext {
        cfg: crate::config::VmConfig::default(),
        ram_pages: api::types::RamPages::Small4K,
        started: std::time::Instant::now(),
        control: Arc::new(crate::run_control::RunControl::new(
            vm.clone(),
            exit.clone(),
        )),
        exit,
        ged: Arc::new(crate::devices::ged::Ged::new(irq)),
        devices: Vec::new(),
        snapshot: None,
        hotplug: None,
    }
}

/// Seeds: every route with its usual method, the balloon target bodies svctl sends, and
/// broken JSON.
pub fn api_bodies_seeds() -> Vec<(String, Vec<u8>)> {
    let request = |method: usize, path: usize, query: &str, body: &str| {
        let mut v = vec![method as u8, path as u8, query.len() as u8];
        v.extend(query.as_bytes());
        v.extend(body.as_bytes());
        v
    };
    let mut seeds: Vec<(String, Vec<u8>)> = PATHS
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.is_empty())
        .map(|(i, p)| {
            (
                format!("get-{}", p.replace('.', "-")),
                request(0, i, "", ""),
            )
        })
        .collect();
    seeds.extend([
        ("pause-resume".into(), request(1, 3, "", "")),
        (
            "balloon-target".into(),
            request(1, 7, "", r#"{"size":"256M"}"#),
        ),
        (
            "balloon-target-bytes".into(),
            request(1, 7, "", r#"{"size":268435456}"#),
        ),
        (
            "balloon-target-huge".into(),
            request(1, 7, "", r#"{"size":"99999999T"}"#),
        ),
        ("balloon-bad-json".into(), request(1, 7, "", r#"{"size":"#)),
        (
            "stats-timeout".into(),
            request(0, 8, "timeout_ms=18446744073709551615", ""),
        ),
        ("stop".into(), request(1, 6, "", "{}")),
        (
            "resize-disk".into(),
            request(1, 13, "", r#"{"id":"blk0","size":"1G"}"#),
        ),
        (
            "add-device".into(),
            request(1, 14, "", r#"{"device":"vhost-user,type=blk,socket=/s"}"#),
        ),
        (
            "remove-device".into(),
            request(1, 15, "", r#"{"id":"blk1","timeout_ms":100}"#),
        ),
        ("reboot-acpi".into(), request(1, 16, "", r#"{"acpi":true}"#)),
        (
            "resize-disk-bad-size".into(),
            request(1, 13, "", r#"{"id":"blk0","size":"1Q"}"#),
        ),
    ]);
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_pci_seeds_run_and_the_setup_activates_the_device() {
        for (name, seed) in virtio_pci_seeds() {
            let activations = virtio_pci_run(&seed);
            if name == "setup-through-ports" || name == "setup-reset-setup" {
                assert!(
                    activations >= 1,
                    "{name}: the driver's setup activated nothing"
                );
            }
        }
    }

    #[test]
    fn api_bodies_reach_the_handlers() {
        let seeds: std::collections::HashMap<_, _> = api_bodies_seeds().into_iter().collect();
        assert_eq!(api_bodies_run(&seeds["get-vmm-ping"]), Some(200));
        assert_eq!(api_bodies_run(&seeds["balloon-bad-json"]), Some(400));
        assert_eq!(api_bodies_run(&seeds["balloon-target-huge"]), Some(400));
        // a valid target below the memory size gets past the body: no balloon device here
        assert_ne!(api_bodies_run(&seeds["balloon-target"]), Some(400));
        // a well-formed resize names the missing disk; a bad size is refused before that
        assert_eq!(api_bodies_run(&seeds["resize-disk"]), Some(404));
        assert_eq!(api_bodies_run(&seeds["resize-disk-bad-size"]), Some(400));
        // no VM to add devices to: refused with the reason
        assert_eq!(api_bodies_run(&seeds["add-device"]), Some(409));
        assert_eq!(api_bodies_run(&seeds["remove-device"]), Some(409));
        // the last path is no route
        assert_eq!(api_bodies_run(&[5, (PATHS.len() - 1) as u8, 0]), Some(404));
    }
}
