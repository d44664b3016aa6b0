//! The VM configuration: one set of serde types for the JSON config file (`--config`), the
//! command line (each option is parsed into these same types) and, later, the API.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod device;
pub use device::{device_ids, type_name, DeviceConfig, DeviceProblem};

/// Limits checked by [`VmConfig::validate`].
pub const MIN_MEMORY: u64 = 64 << 20;
pub const MAX_CPUS: u8 = 254;
/// Used when the config gives no command line.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=1";
/// What a process's seccomp filter does with a system call it does not allow
/// (`--seccomp`, docs/security.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// Kill the process (SIGSYS).
    #[default]
    On,
    /// Allow it, and have the kernel log it (to find what a filter lacks).
    Log,
    /// No filter.
    Off,
}

/// The largest virtio device type: a virtio-pci device's PCI device id is 0x1040 + type, 16 bits.
pub const MAX_VIRTIO_TYPE: u32 = 0xffff - 0x1040;
/// The most queue units a device may have (`queues`). A unit is at most 3 virtqueues (the
/// balloon's set; the vmm's device-type table has the count per type), and the device has an
/// MSI-X vector per virtqueue, one for net's control queue and one for configuration changes:
/// 64 units keep that within the 256 vectors the vmm's virtio-pci BAR has room for, and the
/// queue count far within the u16 it is counted in.
pub const MAX_QUEUE_UNITS: u16 = 64;
/// The largest virtqueue size (virtio 1.x, 2.6: a split queue has at most 32768 entries).
pub const MAX_QUEUE_SIZE: u16 = 32768;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "invalid size {0:?}: expected a number with an optional K, M, G or T suffix (e.g. 512M)"
    )]
    InvalidSize(String),
    #[error("invalid --memory option {0:?}: expected size[,hugepages=on|off][,shared=on|off][,mergeable=on|off]")]
    InvalidMemoryOption(String),
    #[error("invalid on/off value {value:?} for {key}")]
    InvalidSwitch { key: String, value: String },
    #[error("invalid --serial {0:?}: expected stdio, pty, socket=PATH, file=PATH or off")]
    InvalidSerial(String),
    #[error("invalid --device {0:?}: expected vhost-user,type=blk|net|balloon|<virtio id>,socket=PATH[,queues=N][,queue_size=N][,control=PATH]")]
    InvalidDevice(String),
    #[error("invalid --device {option:?}: {problem}")]
    DeviceOption {
        option: String,
        problem: DeviceProblem,
    },
    #[error("device {index} (socket {}): {problem}", socket.display())]
    Device {
        /// The device's place in the config's `devices`.
        index: usize,
        socket: PathBuf,
        problem: DeviceProblem,
    },
    #[error("device {index}: id {id:?} is already another device's")]
    DuplicateDeviceId { index: usize, id: String },
    #[error("invalid --on-reboot {0:?}: expected restart or exit")]
    InvalidOnReboot(String),
    #[error("no kernel given: use --kernel PATH or \"kernel\" in the config file")]
    NoKernel,
    #[error("--cpus {0} is out of range: a VM has 1 to {MAX_CPUS} vCPUs")]
    CpuCount(u8),
    #[error(
        "--max-cpus {max} is out of range: it is at least --cpus ({cpus}) and at most {MAX_CPUS}"
    )]
    MaxCpus { max: u8, cpus: u8 },
    #[error("--memory {0} is too small: a Linux guest needs at least {min} MiB", min = MIN_MEMORY >> 20)]
    MemoryTooSmall(ByteSize),
    #[error("--memory shared=off does not go with {0}")]
    PrivateRam(&'static str),
    #[error(
        "--memory shared=off: the vhost-user device on {} cannot map private guest RAM (leave shared=on)",
        .0.display()
    )]
    PrivateRamDevice(PathBuf),
    #[error(
        "--memory mergeable=on needs shared=off: KSM merges only private memory, never a shared file"
    )]
    MergeableShared,
    #[error("--memory {size} with hugepages=on is not a multiple of the 2 MiB huge page size")]
    HugepageAlignment { size: ByteSize },
}

/// A size in bytes, written as `512M`, `2G`, `1048576` …
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "SizeRepr", into = "String")]
pub struct ByteSize(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Bytes(u64),
    Text(String),
}

impl TryFrom<SizeRepr> for ByteSize {
    type Error = ConfigError;
    fn try_from(r: SizeRepr) -> Result<Self, ConfigError> {
        match r {
            SizeRepr::Bytes(b) => Ok(ByteSize(b)),
            SizeRepr::Text(s) => s.parse(),
        }
    }
}

impl FromStr for ByteSize {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::InvalidSize(s.to_string());
        let t = s.trim();
        let (num, shift) = match t.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let shift = match c.to_ascii_uppercase() {
                    'K' => 10,
                    'M' => 20,
                    'G' => 30,
                    'T' => 40,
                    _ => return Err(bad()),
                };
                (&t[..i], shift)
            }
            _ => (t, 0),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        n.checked_mul(1u64 << shift).map(ByteSize).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl From<ByteSize> for String {
    fn from(b: ByteSize) -> String {
        b.to_string()
    }
}

/// Guest RAM: a shared file the backends map, in 2 MiB pages where the host allows
/// (docs/architecture.md, "Guest RAM").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    pub size: ByteSize,
    /// `true`: hugetlbfs pages the operator reserved (an error without them); `false`: a
    /// plain memfd; not given: the vmm chooses, 2 MiB pages first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepages: Option<bool>,
    /// KSM (`MADV_MERGEABLE`): the kernel merges only private memory, so `shared=off` only.
    #[serde(default)]
    pub mergeable: bool,
    /// `false`: private anonymous RAM — no vhost-user devices, no snapshots (the lower bound
    /// of the boot benchmark, and what KSM can merge).
    #[serde(default = "shared_by_default")]
    pub shared: bool,
}

fn shared_by_default() -> bool {
    true
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            size: ByteSize(512 << 20),
            hugepages: None,
            mergeable: false,
            shared: true,
        }
    }
}

fn parse_switch(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(ConfigError::InvalidSwitch {
            key: key.to_string(),
            value: value.to_string(),
        }),
    }
}

impl FromStr for MemoryConfig {
    type Err = ConfigError;
    /// `SIZE[,hugepages=on|off][,shared=on|off][,mergeable=on|off]`
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let mut parts = s.split(',');
        let size = parts.next().unwrap_or_default().parse()?;
        let mut mem = MemoryConfig {
            size,
            ..MemoryConfig::default()
        };
        for opt in parts {
            match opt.split_once('=') {
                Some(("hugepages", v)) => mem.hugepages = Some(parse_switch("hugepages", v)?),
                Some(("shared", v)) => mem.shared = parse_switch("shared", v)?,
                Some(("mergeable", v)) => mem.mergeable = parse_switch("mergeable", v)?,
                _ => return Err(ConfigError::InvalidMemoryOption(s.to_string())),
            }
        }
        Ok(mem)
    }
}

/// What a guest reboot does (libvirt's `on_reboot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnReboot {
    /// Reset the machine and boot the kernel again in the same process; backends stay
    /// connected.
    #[default]
    Restart,
    /// End `splitvisor` with exit status 3 (QEMU's `-no-reboot`).
    Exit,
}

impl FromStr for OnReboot {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "restart" => Ok(OnReboot::Restart),
            "exit" => Ok(OnReboot::Exit),
            _ => Err(ConfigError::InvalidOnReboot(s.to_string())),
        }
    }
}

/// Where the 8250 serial console (COM1, ttyS0) goes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SerialConfig {
    /// Our stdin/stdout (raw mode when stdin is a terminal).
    #[default]
    Stdio,
    /// A new pseudo-terminal; its path is printed on stderr.
    Pty,
    /// A Unix socket server; one client at a time gets the console.
    Socket(PathBuf),
    /// Output appended to a file, no input.
    File(PathBuf),
    Off,
}

impl FromStr for SerialConfig {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.split_once('=') {
            None if s == "stdio" => Ok(SerialConfig::Stdio),
            None if s == "pty" => Ok(SerialConfig::Pty),
            None if s == "off" => Ok(SerialConfig::Off),
            Some(("socket", p)) if !p.is_empty() => Ok(SerialConfig::Socket(p.into())),
            Some(("file", p)) if !p.is_empty() => Ok(SerialConfig::File(p.into())),
            _ => Err(ConfigError::InvalidSerial(s.to_string())),
        }
    }
}

impl TryFrom<String> for SerialConfig {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, ConfigError> {
        s.parse()
    }
}

impl From<SerialConfig> for String {
    fn from(s: SerialConfig) -> String {
        match s {
            SerialConfig::Stdio => "stdio".into(),
            SerialConfig::Pty => "pty".into(),
            SerialConfig::Off => "off".into(),
            SerialConfig::Socket(p) => format!("socket={}", p.display()),
            SerialConfig::File(p) => format!("file={}", p.display()),
        }
    }
}

/// Everything that defines a VM. The JSON config file is this struct.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(default = "default_name")]
    pub name: String,
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: Option<String>,
    #[serde(default = "default_cpus")]
    pub cpus: u8,
    /// The most vCPUs the VM may have (`vm.resize` adds and removes vCPUs up to it while the
    /// guest runs; docs/hotplug.md); none: `cpus`, and no vCPU hotplug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpus: Option<u8>,
    #[serde(default)]
    pub memory: MemoryConfig,
    #[serde(default)]
    pub serial: SerialConfig,
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    #[serde(default)]
    pub on_reboot: OnReboot,
    /// Serve the JSON API (HTTP) on this Unix socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_socket: Option<PathBuf>,
    /// The vmm's seccomp filter (docs/security.md).
    #[serde(default)]
    pub seccomp: SeccompMode,
}

fn default_name() -> String {
    "splitvisor".into()
}
fn default_cpus() -> u8 {
    1
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            name: default_name(),
            kernel: None,
            initramfs: None,
            cmdline: None,
            cpus: default_cpus(),
            max_cpus: None,
            memory: MemoryConfig::default(),
            serial: SerialConfig::default(),
            devices: Vec::new(),
            on_reboot: OnReboot::default(),
            api_socket: None,
            seccomp: SeccompMode::On,
        }
    }
}

impl VmConfig {
    /// The most vCPUs the VM may have.
    pub fn max_vcpus(&self) -> u8 {
        self.max_cpus.unwrap_or(self.cpus).max(self.cpus)
    }

    /// Checks that need no host access (files and host memory are checked when used).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel.is_none() {
            return Err(ConfigError::NoKernel);
        }
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(ConfigError::CpuCount(self.cpus));
        }
        if let Some(max) = self.max_cpus {
            if max < self.cpus || max > MAX_CPUS {
                return Err(ConfigError::MaxCpus {
                    max,
                    cpus: self.cpus,
                });
            }
        }
        if self.memory.size.0 < MIN_MEMORY {
            return Err(ConfigError::MemoryTooSmall(self.memory.size));
        }
        if self.memory.hugepages == Some(true) && !self.memory.size.0.is_multiple_of(2 << 20) {
            return Err(ConfigError::HugepageAlignment {
                size: self.memory.size,
            });
        }
        if !self.memory.shared {
            if self.memory.hugepages == Some(true) {
                return Err(ConfigError::PrivateRam(
                    "hugepages=on (hugetlbfs RAM is a shared file)",
                ));
            }
            if let Some(device) = self.devices.first() {
                return Err(ConfigError::PrivateRamDevice(device.socket.clone()));
            }
        } else if self.memory.mergeable {
            return Err(ConfigError::MergeableShared);
        }
        for (index, device) in self.devices.iter().enumerate() {
            device.check().map_err(|problem| ConfigError::Device {
                index,
                socket: device.socket.clone(),
                problem,
            })?;
        }
        let ids = device_ids(&self.devices);
        if let Some((i, id)) = ids
            .iter()
            .enumerate()
            .find(|(i, id)| ids[..*i].contains(id))
        {
            return Err(ConfigError::DuplicateDeviceId {
                index: i,
                id: id.clone(),
            });
        }
        Ok(())
    }

    /// The kernel command line the guest gets.
    pub fn effective_cmdline(&self) -> &str {
        self.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!("512M".parse::<ByteSize>(), Ok(ByteSize(512 << 20)));
        assert_eq!("2g".parse::<ByteSize>(), Ok(ByteSize(2 << 30)));
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert!("12Q".parse::<ByteSize>().is_err());
        assert!("M".parse::<ByteSize>().is_err());
        assert!("99999999999T".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(1 << 30).to_string(), "1G");
        assert_eq!(ByteSize(1536 << 20).to_string(), "1536M");
    }

    #[test]
    fn memory_option() {
        let m: MemoryConfig = "1G,hugepages=on,mergeable=off".parse().unwrap();
        assert_eq!(m.size, ByteSize(1 << 30));
        assert!(m.hugepages == Some(true) && !m.mergeable && m.shared);
        let m: MemoryConfig = "1G,shared=off,mergeable=on".parse().unwrap();
        assert!(m.hugepages.is_none() && m.mergeable && !m.shared);
        assert!("1G,huge=on".parse::<MemoryConfig>().is_err());
        assert!("1G,hugepages=maybe".parse::<MemoryConfig>().is_err());
    }

    #[test]
    fn serial_option_round_trips() {
        for s in ["stdio", "pty", "off", "socket=/run/x.sock", "file=/tmp/log"] {
            let c: SerialConfig = s.parse().unwrap();
            assert_eq!(String::from(c), s);
        }
        assert!("socket=".parse::<SerialConfig>().is_err());
        assert!("tcp=1".parse::<SerialConfig>().is_err());
    }

    #[test]
    fn json_config_is_the_same_schema() {
        let json = r#"{"kernel": "/k", "cpus": 2, "memory": {"size": "1G", "mergeable": true},
                       "serial": "file=/tmp/console.log", "cmdline": "console=ttyS0"}"#;
        let exit: VmConfig =
            serde_json::from_str(r#"{"kernel": "/k", "on_reboot": "exit"}"#).unwrap();
        assert_eq!(exit.on_reboot, OnReboot::Exit);
        assert!("reboot".parse::<OnReboot>().is_err());
        let c: VmConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.cpus, 2);
        assert_eq!(c.memory.size, ByteSize(1 << 30));
        assert!(c.memory.mergeable);
        assert_eq!(c.serial, SerialConfig::File("/tmp/console.log".into()));
        assert_eq!(c.on_reboot, OnReboot::Restart);
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel": "/k", "cpu": 2}"#).is_err());
    }

    #[test]
    fn device_option() {
        let d: DeviceConfig = "vhost-user,type=blk,socket=/run/b.sock,queues=2"
            .parse()
            .unwrap();
        assert_eq!((d.virtio_type, d.queues, d.queue_size), (2, 2, 256));
        assert_eq!(d.socket, PathBuf::from("/run/b.sock"));
        let d: DeviceConfig = "vhost-user,type=26,socket=/s,queue_size=1024"
            .parse()
            .unwrap();
        assert_eq!((d.virtio_type, d.queue_size), (26, 1024));
        for bad in [
            "vfio,type=blk,socket=/s",
            "vhost-user,type=blk",
            "vhost-user,socket=/s",
            "vhost-user,type=blk,socket=/s,queue_size=100",
            "vhost-user,type=blk,socket=/s,queues=0",
            "vhost-user,type=disk,socket=/s",
        ] {
            assert!(bad.parse::<DeviceConfig>().is_err(), "{bad}");
        }
    }

    /// A config with a good device first and then the device `json` describes.
    fn config_with_device(json: &str) -> VmConfig {
        let good = "vhost-user,type=blk,socket=/run/good.sock".parse().unwrap();
        VmConfig {
            kernel: Some("/k".into()),
            devices: vec![good, serde_json::from_str(json).unwrap()],
            ..VmConfig::default()
        }
    }

    /// The JSON device `json` and the command-line device `option` are both refused, the
    /// config naming device 1 and its socket, both saying `what` is wrong.
    fn refused_on_both_paths(json: &str, option: &str, what: &str) {
        let err = config_with_device(json)
            .validate()
            .expect_err(&format!("the config file's device {json} was accepted"))
            .to_string();
        assert!(
            err.contains("device 1") && err.contains("/run/bad.sock") && err.contains(what),
            "{err:?} does not name device 1, its socket and {what:?}"
        );
        let err = option
            .parse::<DeviceConfig>()
            .expect_err(&format!("--device {option} was accepted"))
            .to_string();
        assert!(err.contains(what), "{err:?} does not say {what:?}");
    }

    #[test]
    fn a_device_type_beyond_the_pci_device_ids_is_refused() {
        // 0x1040 + type is the PCI device id: 0xefbf (61375) is the last type that fits
        for virtio_type in [61376u32, 65472, u32::MAX] {
            refused_on_both_paths(
                &format!(r#"{{"type": {virtio_type}, "socket": "/run/bad.sock"}}"#),
                &format!("vhost-user,type={virtio_type},socket=/run/bad.sock"),
                &format!("type {virtio_type}"),
            );
        }
        let mut c = config_with_device(r#"{"type": 61375, "socket": "/run/bad.sock"}"#);
        assert_eq!(c.validate(), Ok(()));
        c.devices[1].virtio_type = 0;
        assert_eq!(
            c.validate(),
            Err(ConfigError::Device {
                index: 1,
                socket: "/run/bad.sock".into(),
                problem: DeviceProblem::VirtioType(0),
            }),
            "virtio id 0 is reserved"
        );
    }

    #[test]
    fn a_device_queue_count_is_bounded() {
        refused_on_both_paths(
            r#"{"type": 2, "socket": "/run/bad.sock", "queues": 0}"#,
            "vhost-user,type=blk,socket=/run/bad.sock,queues=0",
            "queues=0",
        );
        // 21846 balloon queue sets are 65538 virtqueues: more than a u16 counts
        refused_on_both_paths(
            r#"{"type": 5, "socket": "/run/bad.sock", "queues": 21846}"#,
            "vhost-user,type=balloon,socket=/run/bad.sock,queues=21846",
            "queues=21846",
        );
        refused_on_both_paths(
            r#"{"type": 1, "socket": "/run/bad.sock", "queues": 65535}"#,
            "vhost-user,type=net,socket=/run/bad.sock,queues=65535",
            "queues=65535",
        );
        let c = config_with_device(r#"{"type": 5, "socket": "/run/bad.sock", "queues": 8}"#);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn a_device_queue_size_is_a_power_of_two() {
        for size in [0, 100, 65535] {
            refused_on_both_paths(
                &format!(r#"{{"type": 2, "socket": "/run/bad.sock", "queue_size": {size}}}"#),
                &format!("vhost-user,type=blk,socket=/run/bad.sock,queue_size={size}"),
                &format!("queue_size={size}"),
            );
        }
        for size in [1, 256, 32768] {
            let json = format!(r#"{{"type": 2, "socket": "/run/bad.sock", "queue_size": {size}}}"#);
            assert_eq!(config_with_device(&json).validate(), Ok(()), "{size}");
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let mut c = VmConfig {
            kernel: Some("/k".into()),
            ..VmConfig::default()
        };
        assert_eq!(c.validate(), Ok(()));
        c.cpus = 0;
        assert_eq!(c.validate(), Err(ConfigError::CpuCount(0)));
        c.cpus = 1;
        c.memory.size = ByteSize(16 << 20);
        assert_eq!(
            c.validate(),
            Err(ConfigError::MemoryTooSmall(ByteSize(16 << 20)))
        );
        c.kernel = None;
        assert_eq!(c.validate(), Err(ConfigError::NoKernel));
    }

    #[test]
    fn private_ram_refuses_devices_and_ksm_refuses_shared_ram() {
        let mut c = VmConfig {
            kernel: Some("/k".into()),
            ..VmConfig::default()
        };
        c.memory = "512M,mergeable=on".parse().unwrap();
        assert_eq!(c.validate(), Err(ConfigError::MergeableShared));
        c.memory = "512M,shared=off,mergeable=on".parse().unwrap();
        assert_eq!(c.validate(), Ok(()));
        c.memory = "512M,shared=off,hugepages=on".parse().unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::PrivateRam(_))));
        c.memory.hugepages = None;
        c.devices = vec!["vhost-user,type=blk,socket=/run/b.sock".parse().unwrap()];
        let err = c.validate().unwrap_err();
        assert_eq!(err, ConfigError::PrivateRamDevice("/run/b.sock".into()));
        assert!(err.to_string().contains("/run/b.sock"), "{err}");
        // the default is shared, and a config without the key (older ones) stays shared
        let m: MemoryConfig = serde_json::from_str(r#"{"size":"1G","hugepages":false}"#).unwrap();
        assert!(m.shared && m.hugepages == Some(false));
    }
}
