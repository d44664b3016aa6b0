//! `splitvisor-net`'s configuration (docs/backends.md).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{defaults_from_clap, DaemonConfig, DEFAULT_QUEUE_SIZE};

/// A unicast MAC address, written `52:54:00:12:34:56`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddress(pub [u8; 6]);

/// Why a MAC address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a unicast MAC address like 52:54:00:12:34:56")]
pub struct InvalidMac(pub String);

impl FromStr for MacAddress {
    type Err = InvalidMac;
    fn from_str(s: &str) -> Result<Self, InvalidMac> {
        let bad = || InvalidMac(s.to_string());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut mac {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() || mac[0] & 1 != 0 {
            return Err(bad()); // trailing parts, or a multicast address
        }
        Ok(MacAddress(mac))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl TryFrom<String> for MacAddress {
    type Error = InvalidMac;
    fn try_from(s: String) -> Result<Self, InvalidMac> {
        s.parse()
    }
}

impl From<MacAddress> for String {
    fn from(m: MacAddress) -> String {
        m.to_string()
    }
}

/// vhost-user-net backend in front of a tap device: give exactly one of `tap`, `create_tap`
/// and `tap_fd` (checked by the backend, so that a config file may supply it).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetBackendConfig {
    #[command(flatten)]
    pub daemon: DaemonConfig,
    /// Use this existing tap device (multi-queue when --queues > 1).
    #[arg(long, value_name = "NAME", conflicts_with = "create_tap")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// Create a tap device with this name (it goes away when the backend exits).
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_tap: Option<String>,
    /// Serve the tap queue open on this descriptor, inherited from the process that made the
    /// tap (svctl does): one per queue pair, repeatable. The backend then needs no
    /// privilege; the maker sets the MTU, brings the link up and bridges it.
    #[arg(long = "tap-fd", value_name = "FD", conflicts_with_all = ["tap", "create_tap"])]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tap_fd: Vec<i32>,
    /// Make the created tap a port of this bridge.
    #[arg(long, value_name = "BRIDGE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// The guest's MAC address [default: 52:54:00 + 3 random bytes].
    #[arg(long, value_name = "MAC")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddress>,
    /// MTU of the link (tap and guest).
    #[arg(long, default_value_t = 1500)]
    pub mtu: u16,
    /// Number of queue pairs (one worker thread and one tap queue each).
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// Descriptors per queue.
    #[arg(long, default_value_t = usize::from(DEFAULT_QUEUE_SIZE))]
    pub queue_size: usize,
}

defaults_from_clap!(NetBackendConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_parse_and_print() {
        let m: MacAddress = "52:54:00:ab:CD:0f".parse().unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "01:00:5e:00:00:01",
            "5:54:00:ab:cd:0f",
        ] {
            assert!(bad.parse::<MacAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn json_config() {
        let c: NetBackendConfig = serde_json::from_str(
            r#"{"create_tap": "vm0", "bridge": "br0", "mac": "52:54:00:12:34:56", "queues": 2}"#,
        )
        .unwrap();
        assert_eq!(c.mac.unwrap().0[5], 0x56);
        assert_eq!((c.mtu, c.queues, c.queue_size), (1500, 2, 256));
        assert!(
            serde_json::from_str::<NetBackendConfig>(r#"{"mac": "ff:ff:ff:ff:ff:ff"}"#).is_err()
        );
    }
}
