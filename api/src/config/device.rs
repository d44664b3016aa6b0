//! A vhost-user device in the VM's configuration: the `--device` string, its checks, and
//! the id each device is known by (in the API, in snapshots, in `--restore` overrides).

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{ConfigError, MAX_QUEUE_SIZE, MAX_QUEUE_UNITS, MAX_VIRTIO_TYPE};

/// What is wrong with a device's settings ([`DeviceConfig::check`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceProblem {
    #[error("virtio type {0} is not a device id: expected 1 to {MAX_VIRTIO_TYPE} (the PCI device id is 0x1040 + type)")]
    VirtioType(u32),
    #[error("queues={0}: expected 1 to {MAX_QUEUE_UNITS}")]
    Queues(u16),
    #[error("queue_size={0}: expected a power of two from 1 to {MAX_QUEUE_SIZE}")]
    QueueSize(u16),
    #[error("id={0:?}: expected 1 to 32 of a-z, 0-9, '-' and '_', starting with a letter")]
    Id(String),
}

/// A virtio device served by a vhost-user backend process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// What the device is called (the API, snapshots, `--restore` overrides) [default: its
    /// type and its number among the devices of that type: `blk0`, `blk1`, `net0` …].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Virtio device type: 1 net, 2 blk, 5 balloon, or any other virtio id.
    #[serde(rename = "type")]
    pub virtio_type: u32,
    pub socket: PathBuf,
    /// How many queue *units* (not virtqueues): request queues for blk, rx/tx queue pairs for
    /// net, 3-queue sets (inflate, deflate, statistics) for the balloon, queues for other types.
    /// The vmm turns units into virtqueues with its device-type table (`vmm::virtio::device_type`).
    #[serde(default = "default_queues")]
    pub queues: u16,
    #[serde(default = "default_queue_size")]
    pub queue_size: u16,
    /// The backend's own control socket, if it has one (the balloon's: the API's balloon
    /// requests are passed to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<PathBuf>,
}

fn default_queues() -> u16 {
    1
}
fn default_queue_size() -> u16 {
    crate::backend::DEFAULT_QUEUE_SIZE
}

impl FromStr for DeviceConfig {
    type Err = ConfigError;
    /// `vhost-user,type=blk|net|balloon|<id>,socket=PATH[,queues=N][,queue_size=N][,id=ID]`
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::InvalidDevice(s.to_string());
        let mut parts = s.split(',');
        if parts.next() != Some("vhost-user") {
            return Err(bad());
        }
        let (mut virtio_type, mut socket, mut control, mut id) = (None, None, None, None);
        let (mut queues, mut queue_size) = (default_queues(), default_queue_size());
        for opt in parts {
            match opt.split_once('=').ok_or_else(bad)? {
                ("type", "net") => virtio_type = Some(1),
                ("type", "blk") => virtio_type = Some(2),
                ("type", "balloon") => virtio_type = Some(5),
                ("type", id) => virtio_type = Some(id.parse().map_err(|_| bad())?),
                ("socket", p) if !p.is_empty() => socket = Some(PathBuf::from(p)),
                ("queues", n) => queues = n.parse().map_err(|_| bad())?,
                ("queue_size", n) => queue_size = n.parse().map_err(|_| bad())?,
                ("control", p) if !p.is_empty() => control = Some(PathBuf::from(p)),
                ("id", v) => id = Some(v.to_string()),
                _ => return Err(bad()),
            }
        }
        let (Some(virtio_type), Some(socket)) = (virtio_type, socket) else {
            return Err(bad());
        };
        let device = DeviceConfig {
            id,
            virtio_type,
            socket,
            queues,
            queue_size,
            control,
        };
        device
            .check()
            .map_err(|problem| ConfigError::DeviceOption {
                option: s.to_string(),
                problem,
            })?;
        Ok(device)
    }
}

impl DeviceConfig {
    /// The checks every device passes, whether it comes from the command line, a config file
    /// or the API: a virtio type that makes a PCI device id, 1 to [`MAX_QUEUE_UNITS`] queue
    /// units, and a queue size that is a power of two up to [`MAX_QUEUE_SIZE`].
    pub fn check(&self) -> Result<(), DeviceProblem> {
        if !(1..=MAX_VIRTIO_TYPE).contains(&self.virtio_type) {
            return Err(DeviceProblem::VirtioType(self.virtio_type));
        }
        if !(1..=MAX_QUEUE_UNITS).contains(&self.queues) {
            return Err(DeviceProblem::Queues(self.queues));
        }
        if !self.queue_size.is_power_of_two() || self.queue_size > MAX_QUEUE_SIZE {
            return Err(DeviceProblem::QueueSize(self.queue_size));
        }
        match &self.id {
            Some(id) if !valid_id(id) => Err(DeviceProblem::Id(id.clone())),
            _ => Ok(()),
        }
    }
}

fn valid_id(id: &str) -> bool {
    id.len() <= 32
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// A device type's name in ids: `net`, `blk`, `balloon`, else `virtio` (as the vmm's
/// device-type table names them).
pub fn type_name(virtio_type: u32) -> &'static str {
    match virtio_type {
        1 => "net",
        2 => "blk",
        5 => "balloon",
        _ => "virtio",
    }
}

/// What each device is called: its `id`, or its type's name and its number among the
/// devices of that type without an id (`blk0`, `blk1`, `net0`, `balloon0`).
pub fn device_ids(devices: &[DeviceConfig]) -> Vec<String> {
    let mut counts = std::collections::HashMap::new();
    devices
        .iter()
        .map(|d| match &d.id {
            Some(id) => id.clone(),
            None => {
                let name = type_name(d.virtio_type);
                let n = counts.entry(name).or_insert(0);
                *n += 1;
                format!("{name}{}", *n - 1)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_named_by_id_or_by_type_and_number() {
        let devices: Vec<DeviceConfig> = [
            "vhost-user,type=blk,socket=/a",
            "vhost-user,type=net,socket=/b",
            "vhost-user,type=blk,socket=/c,id=data",
            "vhost-user,type=blk,socket=/d",
            "vhost-user,type=balloon,socket=/e",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(
            device_ids(&devices),
            ["blk0", "net0", "data", "blk1", "balloon0"]
        );
        for bad in ["", "Data", "0blk", "a b", "x/y", &"a".repeat(33)] {
            let s = format!("vhost-user,type=blk,socket=/a,id={bad}");
            assert!(s.parse::<DeviceConfig>().is_err(), "{bad:?}");
        }
    }
}
