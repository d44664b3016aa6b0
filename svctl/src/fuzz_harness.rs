//! Fuzz harness over domain files: entry point that `fuzz/fuzz_targets/domain_json.rs` calls
//! with libFuzzer's bytes and that `integration-tests/tests/fuzz_corpora.rs` replays over the
//! committed corpus. Any byte string must return normally: a panic here is a bug in svctl.

use std::path::Path;

use crate::domain::{self, Runtime};

/// [`domain_json_run`], for libFuzzer.
pub fn domain_json(data: &[u8]) {
    domain_json_run(data);
}

/// The input is a domain file's text. It is read as `svctl` reads one; a domain that passes
/// `validate` must then make a vmm configuration and backend configurations that pass their
/// own checks (what `svctl start` would hand them), and its MACs must parse and be checked for
/// clashes. Returns whether the domain was valid, for tests.
pub fn domain_json_run(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(mut d) = domain::parse(text, Path::new("fuzz.json")) else {
        return false;
    };
    if d.validate().is_err() {
        return false;
    }
    let rt = Runtime {
        dir: "/run/splitvisor/fuzz".into(),
        overlays: "/var/lib/splitvisor/overlays/fuzz".into(),
    };
    let vm = domain::vm_config(&d, &rt);
    if let Err(e) = vm.validate() {
        panic!("a valid domain makes an invalid vmm configuration: {e}\n{text}");
    }
    for i in 0..d.disks.len() {
        let blk = d.blk_backend(i, &rt);
        serde_json::to_string(&blk).expect("a blk backend configuration serializes");
    }
    for i in 0..d.nics.len() {
        let _ = d.tap_name(i);
        let net = d.net_backend(i, &rt);
        serde_json::to_string(&net).expect("a net backend configuration serializes");
    }
    let _ = d.balloon_backend(&rt);
    d.record_generated_macs();
    let again = d.clone();
    let _ = d.check_mac_clash(std::slice::from_ref(&again));
    true
}

/// Seeds: the domains the unit tests and the docs use, and broken ones.
pub fn domain_json_seeds() -> Vec<(String, Vec<u8>)> {
    [
        (
            "full",
            r#"{"name": "web", "uuid": "0123abcd-0000-4000-8000-000000000000", "memory": "512M",
                "kernel": "/k", "disks": [{"path": "/d.qcow2", "format": "qcow2", "queues": 2}],
                "nics": [{"bridge": "br0"}, {"tap": "t1", "mac": "52:54:00:00:00:07"}],
                "balloon": {"free_page_reporting": true}}"#,
        ),
        ("minimal", r#"{"name": "a", "memory": 268435456, "kernel": "/k"}"#),
        (
            "short-uuid",
            r#"{"name": "a", "uuid": "12", "memory": "1G", "kernel": "/k"}"#,
        ),
        (
            "many-queues",
            r#"{"name": "a", "memory": "1G", "kernel": "/k", "disks": [{"path": "/d", "queues": 65535}]}"#,
        ),
        (
            "same-mac-twice",
            r#"{"name": "a", "memory": "1G", "kernel": "/k",
                "nics": [{"bridge": "b", "mac": "52:00:00:00:00:01"}, {"bridge": "b", "mac": "52:00:00:00:00:01"}]}"#,
        ),
        ("not-json", "{\"name\": \"a\", "),
    ]
    .into_iter()
    .map(|(name, text)| (name.to_string(), text.as_bytes().to_vec()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_seeds_run_and_valid_ones_are_seen_valid() {
        let seeds: std::collections::HashMap<_, _> = domain_json_seeds().into_iter().collect();
        assert!(domain_json_run(&seeds["full"]));
        assert!(domain_json_run(&seeds["minimal"]));
        assert!(!domain_json_run(&seeds["short-uuid"]));
        assert!(!domain_json_run(&seeds["not-json"]));
        for seed in seeds.values() {
            domain_json_run(seed);
        }
    }
}
