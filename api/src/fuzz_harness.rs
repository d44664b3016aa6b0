//! Fuzz harness over the configuration schemas: entry point that
//! `fuzz/fuzz_targets/vm_config.rs` calls with libFuzzer's bytes and that
//! `integration-tests/tests/fuzz_corpora.rs` replays over the committed corpus. Any byte string
//! must return normally: a panic here is a bug in the parsers or their checks.

use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::balloon::BalloonBackendConfig;
use crate::backend::blk::BlkBackendConfig;
use crate::backend::net::NetBackendConfig;
use crate::config::{ByteSize, DeviceConfig, MemoryConfig, SerialConfig, VmConfig};

/// [`vm_config_run`], for libFuzzer.
pub fn vm_config(data: &[u8]) {
    vm_config_run(data);
}

/// Input: byte 0 picks the parser, the rest is its text. 0: a vmm `--config` file
/// ([`VmConfig`]); 1: a `--device` option; 2: `--memory`; 3: `--serial`; 4: a size; 5–7: the
/// blk, net and balloon backends' `--config` files. What parses must survive the round trip
/// (written out and read back, it is the same value), and a `--device` option that parses
/// must pass the checks a config file's devices pass. Returns whether the text parsed.
pub fn vm_config_run(data: &[u8]) -> bool {
    let Some((&which, text)) = data.split_first() else {
        return false;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return false;
    };
    match which % 8 {
        0 => json_round_trip::<VmConfig>(text)
            .inspect(|c| {
                let _ = c.validate();
                let _ = c.effective_cmdline();
            })
            .is_some(),
        1 => DeviceConfig::from_str(text)
            .ok()
            .inspect(|d| {
                assert_eq!(
                    d.check(),
                    Ok(()),
                    "--device {text} parsed but fails its checks"
                );
                json_round_trip::<DeviceConfig>(&serde_json::to_string(d).expect("serializes"));
            })
            .is_some(),
        2 => MemoryConfig::from_str(text)
            .ok()
            .inspect(|m| {
                let json = serde_json::to_string(m).expect("serializes");
                assert_eq!(json_round_trip::<MemoryConfig>(&json).as_ref(), Some(m));
            })
            .is_some(),
        3 => SerialConfig::from_str(text)
            .ok()
            .inspect(|s| {
                let again: String = s.clone().into();
                assert_eq!(
                    SerialConfig::from_str(&again).ok().as_ref(),
                    Some(s),
                    "{again}"
                );
            })
            .is_some(),
        4 => ByteSize::from_str(text)
            .ok()
            .inspect(|b| {
                assert_eq!(ByteSize::from_str(&b.to_string()).ok(), Some(*b));
            })
            .is_some(),
        5 => json_round_trip::<BlkBackendConfig>(text).is_some(),
        6 => json_round_trip::<NetBackendConfig>(text).is_some(),
        _ => json_round_trip::<BalloonBackendConfig>(text).is_some(),
    }
}

/// `text` as a `T`, if it is one; then written out, it must read back as the same value.
fn json_round_trip<T>(text: &str) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let value: T = serde_json::from_str(text).ok()?;
    let written = serde_json::to_string(&value).expect("a parsed configuration serializes");
    let again: T = serde_json::from_str(&written)
        .unwrap_or_else(|e| panic!("{written} does not read back: {e}"));
    assert_eq!(again, value, "the round trip through {written} changed it");
    Some(value)
}

/// Seeds: the configurations the docs and tests use, and the values the checks refuse.
pub fn vm_config_seeds() -> Vec<(String, Vec<u8>)> {
    [
        (
            "vm-full",
            0u8,
            r#"{"name": "vm", "kernel": "/boot/vmlinuz", "initramfs": "/boot/initrd",
                "cmdline": "console=ttyS0", "cpus": 2,
                "memory": {"size": "1G", "hugepages": true, "mergeable": false},
                "serial": "socket=/run/s.sock", "on_reboot": "restart",
                "devices": [{"type": 2, "socket": "/run/blk0.sock", "queues": 2, "queue_size": 256},
                            {"type": 5, "socket": "/run/b.sock", "control": "/run/b.ctl"}],
                "api_socket": "/run/api.sock"}"#,
        ),
        ("vm-minimal", 0, r#"{"kernel": "/k"}"#),
        (
            "vm-bad-device",
            0,
            r#"{"kernel": "/k", "devices": [{"type": 65535, "socket": "/s", "queues": 65535, "queue_size": 100}]}"#,
        ),
        ("device-blk", 1, "vhost-user,type=blk,socket=/run/blk0.sock,queues=4,queue_size=128"),
        ("device-id", 1, "vhost-user,type=65472,socket=/s"),
        ("device-control", 1, "vhost-user,type=balloon,socket=/s,control=/c"),
        ("memory", 2, "512M,hugepages=on,mergeable=off"),
        ("serial-socket", 3, "socket=/run/console.sock"),
        ("serial-pty", 3, "pty"),
        ("size-huge", 4, "99999999999T"),
        (
            "blk-backend",
            5,
            r#"{"image": "/d.qcow2", "format": "qcow2", "queues": 2, "daemon": {"socket": "/s"}}"#,
        ),
        (
            "net-backend",
            6,
            r#"{"tap": "tap0", "mac": "52:54:00:12:34:56", "queues": 2, "daemon": {"socket": "/s"}}"#,
        ),
        ("balloon-backend", 7, r#"{"control": "/c", "daemon": {"socket": "/s"}}"#),
    ]
    .into_iter()
    .map(|(name, which, text)| {
        let mut bytes = vec![which];
        bytes.extend(text.as_bytes());
        (name.to_string(), bytes)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_seeds_run_and_parse_as_expected() {
        let seeds: std::collections::HashMap<_, _> = vm_config_seeds().into_iter().collect();
        for name in [
            "vm-full",
            "vm-minimal",
            "device-blk",
            "memory",
            "serial-socket",
        ] {
            assert!(vm_config_run(&seeds[name]), "{name} did not parse");
        }
        assert!(!vm_config_run(&seeds["size-huge"]));
        assert!(
            !vm_config_run(&seeds["device-id"]),
            "virtio id 0xffc0 makes no PCI id"
        );
        for seed in seeds.values() {
            vm_config_run(seed);
        }
    }
}
