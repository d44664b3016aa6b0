//! The domain schema's tests: validation, generated names and MACs, backend configurations.

use super::*;

#[test]
fn auto_formats_are_recorded_from_the_image() {
    let dir = std::env::temp_dir().join(format!("svctl-fmt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.qcow2"), b"QFI\xfb\0\0\0\x03").unwrap();
    std::fs::write(dir.join("b.img"), [0u8; 512]).unwrap();
    let disk = |name: &str, format: &str| Disk {
        path: dir.join(name),
        format: format.into(),
        readonly: false,
        queues: 1,
        backing_dirs: Vec::new(),
    };
    let mut d: Domain =
        serde_json::from_str(r#"{"name": "f", "memory": "64M", "kernel": "/k"}"#).unwrap();
    d.disks = vec![
        disk("a.qcow2", "auto"),
        disk("b.img", "auto"),
        disk("a.qcow2", "raw"), // an explicit format is kept
        disk("absent", "auto"), // unreadable: the backend's probe guards apply
    ];
    d.record_detected_formats();
    let formats: Vec<&str> = d.disks.iter().map(|d| d.format.as_str()).collect();
    assert_eq!(formats, ["auto", "raw", "raw", "auto"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_domain_derives_each_backends_configuration() {
    let d: Domain = serde_json::from_str(
        r#"{"name": "web", "uuid": "0123abcd-0000-4000-8000-000000000000", "memory": "512M",
            "kernel": "/k", "disks": [{"path": "/d.qcow2", "format": "qcow2", "queues": 2}],
            "nics": [{"bridge": "br0"}, {"tap": "t1", "mac": "52:54:00:00:00:07"}]}"#,
    )
    .unwrap();
    d.validate().unwrap();
    let rt = Runtime {
        dir: "/run/sv/web".into(),
        overlays: "/var/lib/sv/overlays/web".into(),
    };
    // what the supervisor writes is what each backend reads
    let text = serde_json::to_string(&d.blk_backend(0, &rt)).unwrap();
    let blk: BlkBackendConfig = serde_json::from_str(&text).unwrap();
    assert_eq!(blk.image, Some("/d.qcow2".into()));
    assert_eq!(
        (blk.format, blk.queues, blk.queue_size),
        (ImageFormat::Qcow2, 2, 256)
    );
    assert_eq!(blk.daemon.socket, Some(rt.disk_socket(0)));
    assert_eq!(blk.daemon.stats_socket, Some(rt.disk_stats(0)));
    let net0 = d.net_backend(0, &rt);
    assert_eq!(net0.create_tap.as_deref(), Some("sv0123abcdn0"));
    assert_eq!(
        (net0.bridge.as_deref(), net0.tap.as_deref()),
        (Some("br0"), None)
    );
    assert_eq!(net0.mac.unwrap().to_string(), d.mac(0));
    let net1 = d.net_backend(1, &rt);
    assert_eq!(
        (net1.tap.as_deref(), net1.create_tap.as_deref()),
        (Some("t1"), None)
    );
    assert_eq!(net1.mac.unwrap().0[5], 7);
    let balloon = d.balloon_backend(&rt).unwrap();
    assert_eq!(balloon.control, Some(rt.balloon_control()));
    assert_eq!(balloon.stats_interval, 1);
    // the vmm's devices have the same queue size as the backends
    let vm = vm_config(&d, &rt);
    assert!(vm
        .devices
        .iter()
        .all(|dev| dev.queue_size == DEFAULT_QUEUE_SIZE));
}

fn on_br0(uuid: &str) -> Domain {
    let mut d: Domain = serde_json::from_str(
        r#"{"name": "n", "memory": "512M", "kernel": "/k",
            "nics": [{"bridge": "br0"}, {"bridge": "br0"}]}"#,
    )
    .unwrap();
    d.uuid = uuid.into();
    d
}

#[test]
fn tap_names_and_macs_never_panic_on_a_uuid_that_is_not_one() {
    for uuid in ["", "abc", "éééééééééé", "0123abcd"] {
        let d = on_br0(uuid);
        let tap = d.tap_name(1);
        assert!(tap.is_ascii() && tap.len() <= 15, "{tap:?}");
        assert!(d.mac(1).parse::<MacAddress>().is_ok(), "{}", d.mac(1));
    }
}

#[test]
fn generated_macs_are_local_unicast_from_40_bits_of_the_uuid() {
    let d = on_br0("0123abcd-ef00-4000-8000-000000000000");
    assert_eq!(d.tap_name(0), "sv0123abcdn0");
    let mac: MacAddress = d.mac(0).parse().unwrap();
    assert_eq!(
        mac.0[0], 0x52,
        "locally administered (0x02), unicast (0x01 clear)"
    );
    assert_ne!(d.mac(0), d.mac(1), "each NIC its own");
    // any of the first 40 bits changes the MAC
    for (i, c) in [(0, 'f'), (2, 'f'), (4, 'f'), (6, 'f'), (9, '1')] {
        let mut other: Vec<char> = "0123abcd-ef00-4000-8000-000000000000".chars().collect();
        other[i] = c;
        let other = on_br0(&other.into_iter().collect::<String>());
        assert_ne!(other.mac(0), d.mac(0), "uuid digit {i}");
    }
}

#[test]
fn a_bad_mac_is_refused_when_the_domain_is_checked() {
    let d: Domain = serde_json::from_str(
        r#"{"name": "n", "memory": "512M", "kernel": "/k",
            "nics": [{"bridge": "br0", "mac": "01:00:5e:00:00:01"}]}"#,
    )
    .unwrap();
    let err = d.validate().unwrap_err().to_string();
    assert!(
        err.contains("nic 0") && err.contains("not a unicast MAC"),
        "{err}"
    );
}
