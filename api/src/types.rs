//! Request and response bodies of the API (shared by the server and its clients).

use serde::{Deserialize, Serialize};

use crate::config::{ByteSize, VmConfig};

/// `GET /api/v1/vm.info`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    /// `running` or `paused`.
    pub state: VmState,
    pub pid: u32,
    pub uptime_ms: u64,
    /// The vCPUs it has now (`vm.resize` changes it).
    pub cpus: u8,
    /// The most it may have.
    #[serde(default)]
    pub max_cpus: u8,
    pub memory_bytes: u64,
    /// The page size guest RAM got (docs/architecture.md, "Guest RAM").
    pub ram_pages: RamPages,
    /// How often the ACPI power button was pressed (`vm.shutdown`).
    pub power_button_presses: u64,
    pub devices: Vec<DeviceInfo>,
    pub config: VmConfig,
    /// The interrupt resources the devices hold (a VM that can hotplug; added and removed
    /// devices give theirs back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupts: Option<InterruptUse>,
}

/// GSIs handed out to devices' MSI-X vectors, and routes in KVM's MSI routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterruptUse {
    pub gsis: usize,
    pub msi_routes: usize,
}

/// The pages behind guest RAM: 2 MiB transparent huge pages, 2 MiB hugetlbfs pages the
/// operator reserved, or 4 KiB pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RamPages {
    #[serde(rename = "2M-thp")]
    Thp2M,
    #[serde(rename = "2M-hugetlb")]
    Hugetlb2M,
    #[serde(rename = "4K")]
    Small4K,
}

impl std::fmt::Display for RamPages {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            RamPages::Thp2M => "2M-thp",
            RamPages::Hugetlb2M => "2M-hugetlb",
            RamPages::Small4K => "4K",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    Running,
    Paused,
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            VmState::Running => "running",
            VmState::Paused => "paused",
        })
    }
}

/// One virtio-pci device and its vmm-side counters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub virtio_type: u32,
    pub socket: std::path::PathBuf,
    pub queues: u16,
    /// The device status byte the guest's driver wrote (4 = DRIVER_OK set).
    pub status: u8,
    /// No backend was reachable when the VM started (or it refused the driver's setup): the
    /// guest sees DEVICE_NEEDS_RESET. A backend that goes away later is reconnected instead
    /// (see `backend`).
    pub needs_reset: bool,
    pub counters: DeviceCounters,
    /// The backend connection (absent for a device that never had one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendLink>,
}

/// A device's link to its vhost-user backend process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackendLink {
    /// false while the backend is away and the vmm reconnects (the guest sees a pause).
    pub connected: bool,
    /// Successful reconnections since the VM started.
    pub reconnects: u64,
    /// How long the last finished outage lasted (hang-up to rings running again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outage_ms: Option<u64>,
}

/// How often the guest reached the vmm instead of the backend (flat while I/O runs).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceCounters {
    pub bar_exits: u64,
    pub notify_exits: u64,
    pub config_reads: u64,
    pub activations: u64,
}

/// `PUT /api/v1/vm.balloon`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonTarget {
    /// What the guest should be left with, e.g. `"256M"` (or a number of bytes).
    pub size: ByteSize,
}

/// `PUT /api/v1/vm.add-device`: a device to add while the VM runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDevice {
    /// As `--device` takes it: `vhost-user,type=blk,id=blk1,socket=PATH[,queues=N]…`.
    pub device: String,
}

/// What `vm.add-device` answers (Cloud Hypervisor's `PciDeviceInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDeviceInfo {
    pub id: String,
    /// `0000:00:SS.0`
    pub bdf: String,
}

/// `PUT /api/v1/vm.remove-device`: eject a device that was added.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveDevice {
    pub id: String,
    /// How long to wait for the guest to eject it [default: 10 000].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// `PUT /api/v1/vm.resize`: Cloud Hypervisor's body (`desired_vcpus`), `cpus` taken too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmResize {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_vcpus: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u8>,
    /// Memory hotplug is not there yet: a request for it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_ram: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_balloon: Option<u64>,
    /// How long to wait for the guest to give up each vCPU removed [default: 10 000].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// `PUT /api/v1/vm.reboot` (the body is optional: none is a reset).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebootRequest {
    /// Press the power button and boot the guest again once it has powered off, instead
    /// of resetting it at once.
    #[serde(default)]
    pub acpi: bool,
}

/// `PUT /api/v1/vm.resize-disk`: grow a disk while the guest runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskResize {
    /// The disk's device id (`blk0`, or the `id=` it was given).
    pub id: String,
    /// The new size, e.g. `"2G"` (or a number of bytes); never smaller than now.
    /// (`desired_size`, Cloud Hypervisor's name for it, is taken too.)
    #[serde(alias = "desired_size")]
    pub size: ByteSize,
}

/// `PUT /api/v1/vm.snapshot` (Cloud Hypervisor's body: `ch-remote snapshot` sends it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmSnapshotConfig {
    /// `file:///DIR`: the directory the snapshot is written to (it must not exist, or be
    /// empty).
    pub destination_url: String,
}

/// `PUT /api/v1/vm.restore` (Cloud Hypervisor's body; its other fields are accepted and
/// ignored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreConfig {
    /// `file:///DIR`: a directory `vm.snapshot` wrote.
    pub source_url: String,
    /// Run the vCPUs at once; by default the restored VM waits paused for `vm.resume`, as
    /// Cloud Hypervisor's does (`ch-remote restore` then `ch-remote resume`).
    #[serde(default)]
    pub resume: bool,
}

/// `PUT /api/v1/vm.send-migration` (Cloud Hypervisor's body, `ch-remote send-migration`;
/// `downtime_ms` is ours).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmSendMigrationData {
    /// `tcp:HOST:PORT` or `unix:PATH`: where the destination vmm listens (`--incoming`).
    pub destination_url: String,
    /// Hand guest RAM's file over (same host, `unix:` only) instead of copying it.
    #[serde(default)]
    pub local: bool,
    /// The pause the guest may see, in milliseconds [default: 300].
    #[serde(default)]
    pub downtime_ms: Option<u64>,
    /// Ours: any JSON, carried to the destination as it is and shown there by
    /// `vm.migration-info` (svctl sends the domain's definition this way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// `PUT /api/v1/vm.receive-migration` (Cloud Hypervisor's body).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmReceiveMigrationData {
    /// `tcp:ADDR:PORT` or `unix:PATH`: where to listen for the source.
    pub receiver_url: String,
    /// Ours: once the source has let go of its backends, wait (40 s at most) for
    /// `vm.migration-devices` (the sockets of the backends started here meanwhile) before
    /// building the VM.
    #[serde(default)]
    pub await_devices: bool,
}

/// `PUT /api/v1/vm.migration-devices` (ours), on a destination told to `await_devices`:
/// where this host's backends listen, by device id; the devices not named keep the sockets
/// the source's configuration gives.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MigrationDevices {
    pub devices: Vec<MigrationDevice>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationDevice {
    pub id: String,
    pub socket: std::path::PathBuf,
    /// The backend's control socket (blk, balloon), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<std::path::PathBuf>,
}

/// What `vm.send-migration` answers once the VM runs at the destination (the source then
/// exits with status 6).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationReport {
    /// `local` (RAM's file handed over), `precopy` (RAM copied while the guest ran, then
    /// the pages it wrote) or `stop-and-copy` (RAM copied while it was paused).
    pub mode: String,
    /// Guest RAM bytes sent.
    pub ram_bytes: u64,
    /// Dirty-page rounds after the first pass.
    pub rounds: u32,
    pub total_ms: u64,
    /// From the pause here to the destination's confirmation that the VM runs there.
    pub downtime_ms: u64,
    /// Where the downtime went: stopping the vCPUs and rings and reading the state here,
    /// sending the last pages (or the memfd) and the state, the destination building the VM
    /// and taking the backends over, and the commit until it runs.
    #[serde(default)]
    pub stop_ms: u64,
    #[serde(default)]
    pub copy_ms: u64,
    #[serde(default)]
    pub destination_ms: u64,
    #[serde(default)]
    pub resume_ms: u64,
}

/// `GET /api/v1/vm.migration-info` (ours, what `svctl domjobinfo` shows): the last or the
/// running migration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MigrationInfo {
    pub running: bool,
    /// `outgoing` (this vmm sends the VM), `incoming` (a vmm waiting for one; the VM's own
    /// API shows its outgoing migrations) or empty (none yet).
    #[serde(default)]
    pub direction: String,
    /// Outgoing: `none`, `connecting`, `ram` (first pass), `dirty` (rounds), `stopped` (the
    /// VM paused, its state being sent), `handover`, then `completed`, `failed` or
    /// `cancelled`. Incoming: `starting`, `listening` (bound), `ram`, `released` (the source
    /// let go of its backends: waiting for `vm.migration-devices` if told to), `building`,
    /// then `completed` or `failed`.
    pub phase: String,
    pub ram_bytes: u64,
    pub rounds: u32,
    /// The last round's dirty pages.
    pub dirty_pages: u64,
    pub expected_downtime_ms: u64,
    pub elapsed_ms: u64,
    /// Incoming: the source's `metadata` (once its configuration has come).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Why the last migration failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every error: a status code and this body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}
