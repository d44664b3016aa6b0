//! The files a starting domain's processes read: each backend's `--config` file
//! (`<runtime>/blk0.json` …, the domain's translation into `api::backend` types) and the vmm's
//! (`<runtime>/vm.json`, its `VmConfig`).

use std::path::Path;

use super::tap_maker::TapSpec;
use crate::domain::{vm_config, Domain, Nic, Runtime};

/// NIC `i`'s backend as the supervisor starts it: the tap comes from the supervisor as
/// descriptors (`--tap-fd`, added at each start), so the file names none.
pub(super) fn net_backend_without_tap(
    d: &Domain,
    nic: &Nic,
    i: usize,
    rt: &Runtime,
) -> api::backend::net::NetBackendConfig {
    api::backend::net::NetBackendConfig {
        tap: None,
        create_tap: None,
        bridge: None,
        ..d.net_backend_for(nic, i, rt)
    }
}

/// Each backend of the domain: its name in the runtime dir, its program and its
/// configuration (what the program's `--config` file holds).
fn backend_configs(
    d: &Domain,
    rt: &Runtime,
) -> Result<Vec<(String, &'static str, String)>, String> {
    let json = |v: Result<String, serde_json::Error>| v.map_err(|e| e.to_string());
    let mut out = Vec::new();
    for i in 0..d.disks.len() {
        let cfg = json(serde_json::to_string_pretty(&d.blk_backend(i, rt)))?;
        out.push((format!("blk{i}"), "splitvisor-blk", cfg));
    }
    for i in 0..d.nics.len() {
        let cfg = json(serde_json::to_string_pretty(&net_backend_without_tap(
            d, &d.nics[i], i, rt,
        )))?;
        out.push((format!("net{i}"), "splitvisor-net", cfg));
    }
    if let Some(b) = d.balloon_backend(rt) {
        let cfg = json(serde_json::to_string_pretty(&b))?;
        out.push(("balloon".into(), "splitvisor-balloon", cfg));
    }
    Ok(out)
}

/// A program's arguments: `--config` and its configuration file.
pub(super) fn config_args(path: &Path) -> Vec<String> {
    vec!["--config".to_string(), path.display().to_string()]
}

/// How to start one backend: its name in the runtime dir, its program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BackendCommand {
    pub what: String,
    pub program: &'static str,
    pub args: Vec<String>,
    /// A net backend's tap, which the supervisor makes.
    pub tap: Option<TapSpec>,
}

/// The taps the supervisor makes, by backend name (`net0` …).
pub(super) fn tap_specs(d: &Domain) -> Vec<(String, TapSpec)> {
    (0..d.nics.len())
        .map(|i| (format!("net{i}"), TapSpec::of_nic(d, i)))
        .collect()
}

/// Write every backend's configuration file, `<runtime>/<name>.json` (all of them before the
/// first backend starts, so that a failure here leaves nothing running); how to start each.
pub(super) fn write_backend_configs(
    d: &Domain,
    rt: &Runtime,
) -> Result<Vec<BackendCommand>, String> {
    let mut configs = Vec::new();
    for (what, program, cfg) in backend_configs(d, rt)? {
        let cfg_path = rt.backend_config(&what);
        std::fs::write(&cfg_path, cfg)
            .map_err(|e| format!("cannot write {}: {e}", cfg_path.display()))?;
        let tap = tap_specs(d)
            .into_iter()
            .find_map(|(name, spec)| (name == what).then_some(spec));
        configs.push(BackendCommand {
            what,
            program,
            args: config_args(&cfg_path),
            tap,
        });
    }
    if !d.disks.is_empty() {
        overlay_dir(d, rt)?;
    }
    Ok(configs)
}

/// The directory the disks' backends make external snapshots' overlays in (and are confined
/// to for that): it must exist, private, and belong to the user they run as.
pub(super) fn overlay_dir(d: &Domain, rt: &Runtime) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = &rt.overlays;
    let err = |e: std::io::Error| format!("cannot create {}: {e}", dir.display());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    let meta = std::fs::symlink_metadata(dir).map_err(err)?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if let Some(spec) = d.backend_user() {
        let id = confine::privileges::resolve(&spec).map_err(|e| e.to_string())?;
        std::os::unix::fs::chown(&rt.overlays, Some(id.uid), Some(id.gid))
            .map_err(|e| format!("cannot give {} to {spec}: {e}", rt.overlays.display()))?;
    }
    Ok(())
}

/// Write the vmm's configuration file, `<runtime>/vm.json`; the vmm's arguments.
pub(super) fn write_vmm_config(d: &Domain, rt: &Runtime) -> Result<Vec<String>, String> {
    let cfg_path = rt.dir.join("vm.json");
    let cfg = serde_json::to_string_pretty(&vm_config(d, rt)).map_err(|e| e.to_string())?;
    std::fs::write(&cfg_path, cfg)
        .map_err(|e| format!("cannot write {}: {e}", cfg_path.display()))?;
    Ok(config_args(&cfg_path))
}

#[cfg(test)]
mod tests {
    use api::backend::balloon::BalloonBackendConfig;
    use api::backend::blk::BlkBackendConfig;
    use api::backend::net::NetBackendConfig;
    use api::config::VmConfig;
    use serde::de::DeserializeOwned;

    use super::super::TempRuntime;
    use super::*;

    fn domain(json: &str) -> Domain {
        serde_json::from_str(json).expect("domain")
    }

    fn web() -> Domain {
        domain(
            r#"{"name": "web", "uuid": "0123abcd-0000-4000-8000-000000000000", "memory": "512M",
                "kernel": "/k", "disks": [{"path": "/a.raw", "format": "raw"},
                {"path": "/b.qcow2", "format": "qcow2", "readonly": true, "queues": 2}],
                "nics": [{"bridge": "br0"}], "balloon": {"stats_interval": 5}}"#,
        )
    }

    /// The file as the backend reads it (its `--config`).
    fn read<T: DeserializeOwned>(path: &str) -> T {
        let text = std::fs::read_to_string(path).expect("config file");
        serde_json::from_str(&text).expect("the backend's config type")
    }

    fn config_path(args: &[String]) -> &str {
        match args {
            [flag, path] if flag == "--config" => path,
            _ => panic!("not `--config FILE`: {args:?}"),
        }
    }

    #[test]
    fn each_backend_gets_its_derived_config_file() {
        let (d, tmp) = (web(), TempRuntime::new());
        let rt = &tmp.0;
        let started = write_backend_configs(&d, rt).expect("configs");
        let at = |what: &str| rt.dir.join(format!("{what}.json")).display().to_string();
        let want: Vec<BackendCommand> = [
            ("blk0", "splitvisor-blk"),
            ("blk1", "splitvisor-blk"),
            ("net0", "splitvisor-net"),
            ("balloon", "splitvisor-balloon"),
        ]
        .iter()
        .map(|(what, program)| {
            let args = vec!["--config".to_string(), at(what)];
            BackendCommand {
                what: what.to_string(),
                program,
                args,
                tap: (*what == "net0").then(|| TapSpec::of_nic(&d, 0)),
            }
        })
        .collect();
        assert_eq!(started, want);
        for (i, started) in started[..2].iter().enumerate() {
            let blk: BlkBackendConfig = read(config_path(&started.args));
            assert_eq!(blk, d.blk_backend(i, rt), "blk{i}");
        }
        let net: NetBackendConfig = read(config_path(&started[2].args));
        assert_eq!(net, net_backend_without_tap(&d, &d.nics[0], 0, rt));
        let balloon: BalloonBackendConfig = read(config_path(&started[3].args));
        assert_eq!(Some(balloon), d.balloon_backend(rt));
    }

    #[test]
    fn a_domain_without_devices_starts_no_backend() {
        let d = domain(r#"{"name": "bare", "memory": "512M", "kernel": "/k", "balloon": null}"#);
        let tmp = TempRuntime::new();
        assert_eq!(write_backend_configs(&d, &tmp.0).expect("configs"), []);
        let files = std::fs::read_dir(&tmp.0.dir).expect("dir").count();
        assert_eq!(files, 0, "no file written");
    }

    #[test]
    fn the_vmm_gets_the_domains_vm_config() {
        let (d, tmp) = (web(), TempRuntime::new());
        let rt = &tmp.0;
        let args = write_vmm_config(&d, rt).expect("vm.json");
        let path = rt.dir.join("vm.json");
        assert_eq!(args, ["--config".to_string(), path.display().to_string()]);
        let vm: VmConfig = read(config_path(&args));
        assert_eq!(vm, vm_config(&d, rt));
        assert_eq!(vm.devices.len(), 4, "two disks, a NIC and the balloon");
    }

    #[test]
    fn an_unwritable_runtime_dir_is_reported_with_the_path() {
        let rt = Runtime {
            dir: "/nonexistent/svctl-runtime".into(),
            overlays: "/nonexistent/overlays".into(),
        };
        let err = write_backend_configs(&web(), &rt).expect_err("refused");
        assert!(
            err.starts_with("cannot write /nonexistent/svctl-runtime/blk0.json: "),
            "{err}"
        );
        let err = write_vmm_config(&web(), &rt).expect_err("refused");
        assert!(
            err.starts_with("cannot write /nonexistent/svctl-runtime/vm.json: "),
            "{err}"
        );
    }
}
