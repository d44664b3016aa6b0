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
    pub cpus: u8,
    pub memory_bytes: u64,
    /// How often the ACPI power button was pressed (`vm.shutdown`).
    pub power_button_presses: u64,
    pub devices: Vec<DeviceInfo>,
    pub config: VmConfig,
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
    /// The backend is gone or never came: the guest sees DEVICE_NEEDS_RESET.
    pub needs_reset: bool,
    pub counters: DeviceCounters,
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

/// Every error: a status code and this body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}
