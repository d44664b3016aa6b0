//! The verbs that change the domain store: define, undefine, install, setvcpus, autostart.

use std::path::{Path, PathBuf};

use api::config::ByteSize;
use serde_json::json;

use crate::domain::{self, Balloon, Disk, Domain, Nic};
use crate::store::Store;
use crate::Out;

pub fn define(store: &Store, file: &Path, out: &Out) -> Result<Domain, String> {
    let mut d = domain::read(file)?;
    d.validate().map_err(|e| e.to_string())?;
    if let Ok(old) = store.load(&d.name) {
        // redefining keeps the identity
        if d.uuid.is_empty() {
            d.uuid = old.uuid;
        }
    }
    if d.uuid.is_empty() {
        d.uuid = domain::new_uuid();
    }
    complete(store, &mut d)?;
    store.save(&d)?;
    out.print(
        format!("Domain '{}' defined from {}\n", d.name, file.display()),
        json!({"name": d.name, "uuid": d.uuid}),
    );
    Ok(d)
}

/// What a definition gets before it is saved (`define`, `edit`): the disks' formats and the
/// NICs' MACs recorded, and no MAC twice on a bridge.
pub fn complete(store: &Store, d: &mut Domain) -> Result<(), String> {
    d.record_detected_formats();
    d.record_generated_macs();
    store.check_macs(d)
}

pub fn undefine(store: &Store, name: &str, out: &Out) -> Result<(), String> {
    store.load(name)?;
    if !store.persistent(name) {
        return Err(format!(
            "domain '{name}' is transient: it goes away when it stops"
        ));
    }
    if crate::lifecycle::state(store, name) != crate::store::DomState::ShutOff {
        return Err(format!(
            "domain '{name}' is running: destroy or shut it down first"
        ));
    }
    store.remove(name)?;
    let _ = std::fs::remove_dir_all(store.dir.join("logs").join(name));
    out.print(
        format!("Domain '{name}' has been undefined\n"),
        json!({"name": name}),
    );
    Ok(())
}

/// What `setvcpus`' flags said.
pub struct VcpuScope {
    pub live: bool,
    pub config: bool,
    /// The most vCPUs (`max_vcpus`), not the count.
    pub maximum: bool,
}

/// `setvcpus NAME N`: the running domain's vCPUs (vCPU hotplug, up to its `max_vcpus`), its
/// definition's (`--config`), or the definition's maximum (`--maximum --config`).
pub fn setvcpus(
    store: &Store,
    name: &str,
    n: u8,
    scope: VcpuScope,
    out: &Out,
) -> Result<(), String> {
    let mut d = store.load(name)?;
    let running = crate::lifecycle::state(store, name) != crate::store::DomState::ShutOff;
    let (live, config) = match (scope.live, scope.config) {
        (false, false) => (running && !scope.maximum, !running || scope.maximum),
        s => s,
    };
    if config && !store.persistent(name) {
        return Err(format!(
            "domain '{name}' is transient: it has no definition to change"
        ));
    }
    if scope.maximum {
        if live {
            return Err(format!(
                "domain '{name}': the maximum is for the next start (--config)"
            ));
        }
        if n < d.vcpus {
            return Err(format!(
                "domain '{name}': a maximum of {n} is below its {} vCPU(s)",
                d.vcpus
            ));
        }
        d.max_vcpus = Some(n);
        d.validate().map_err(|e| e.to_string())?;
        store.save(&d)?;
        out.print(
            format!("Domain '{name}': at most {n} vCPU(s) from the next start\n"),
            json!({"name": name, "max_vcpus": n}),
        );
        return Ok(());
    }
    if live {
        if !running {
            return Err(format!("domain '{name}' is not running (use --config)"));
        }
        let body = json!({"desired_vcpus": n, "timeout_ms": 20_000});
        crate::lifecycle::api(store, name)
            .with_timeout(std::time::Duration::from_secs(120))
            .put("vm.resize", Some(&body))
            .map_err(|e| format!("domain '{name}': {e}"))?;
    }
    if config {
        d.vcpus = n;
        d.validate().map_err(|e| e.to_string())?;
        store.save(&d)?;
    }
    let when = match (live, config) {
        (true, true) => "now and from the next start",
        (true, false) => "now",
        _ => "from the next start",
    };
    out.print(
        format!("Domain '{name}': {n} vCPU(s) {when}\n"),
        json!({"name": name, "vcpus": n, "live": live, "config": config}),
    );
    Ok(())
}

pub fn autostart(store: &Store, name: &str, enable: bool, out: &Out) -> Result<(), String> {
    let mut d = store.load(name)?;
    if !store.persistent(name) {
        return Err(format!("domain '{name}' is transient: it cannot autostart"));
    }
    d.autostart = enable;
    store.save(&d)?;
    let systemd = crate::systemd::set_enabled(name, enable)?;
    let how = if enable {
        "marked as autostarted"
    } else {
        "unmarked as autostarted"
    };
    let unit = systemd.map(|u| format!(" ({u})")).unwrap_or_default();
    out.print(
        format!("Domain '{name}' {how}{unit}\n"),
        json!({"name": name, "autostart": enable}),
    );
    Ok(())
}

/// `install`'s options, as virt-install spells them.
#[derive(clap::Args)]
pub struct InstallArgs {
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value = "512M")]
    pub memory: String,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// The most vCPUs `setvcpus --live` may give it [default: --vcpus].
    #[arg(long, value_name = "N")]
    pub max_vcpus: Option<u8>,
    /// path=IMG[,format=raw|qcow2|auto][,readonly=on][,queues=N]; repeatable.
    #[arg(long = "disk")]
    pub disks: Vec<String>,
    /// bridge=BR|tap=TAP[,mac=MAC][,queues=N]; repeatable.
    #[arg(long = "network")]
    pub networks: Vec<String>,
    #[arg(long)]
    pub kernel: PathBuf,
    #[arg(long)]
    pub initramfs: Option<PathBuf>,
    #[arg(long)]
    pub cmdline: Option<String>,
    /// No balloon device.
    #[arg(long)]
    pub no_balloon: bool,
}

fn opts(spec: &str) -> Vec<(String, String)> {
    spec.split(',')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => ("path".to_string(), kv.to_string()),
        })
        .collect()
}

fn disk(spec: &str) -> Result<Disk, String> {
    let mut d = Disk {
        path: PathBuf::new(),
        format: "auto".into(),
        readonly: false,
        queues: 1,
        backing_dirs: Vec::new(),
    };
    for (k, v) in opts(spec) {
        match k.as_str() {
            "path" => d.path = PathBuf::from(v),
            "format" => d.format = v,
            "readonly" => d.readonly = matches!(v.as_str(), "on" | "yes" | "true"),
            "queues" => {
                d.queues = v
                    .parse()
                    .map_err(|_| format!("--disk {spec}: bad queues"))?
            }
            _ => return Err(format!("--disk {spec}: unknown option {k}")),
        }
    }
    if d.path.as_os_str().is_empty() {
        return Err(format!("--disk {spec}: no path"));
    }
    Ok(d)
}

fn nic(spec: &str) -> Result<Nic, String> {
    let mut n = Nic {
        bridge: None,
        tap: None,
        mac: None,
        queues: 1,
    };
    for (k, v) in opts(spec) {
        match k.as_str() {
            "bridge" => n.bridge = Some(v),
            "tap" => n.tap = Some(v),
            "mac" => n.mac = Some(v),
            "queues" => {
                n.queues = v
                    .parse()
                    .map_err(|_| format!("--network {spec}: bad queues"))?
            }
            _ => {
                return Err(format!(
                    "--network {spec}: expected bridge=BR or tap=TAP[,mac=MAC][,queues=N]"
                ))
            }
        }
    }
    Ok(n)
}

/// `install`: define a domain from options and start it.
pub fn install(store: &Store, a: InstallArgs, out: &Out) -> Result<(), String> {
    domain::check_name(&a.name).map_err(|e| e.to_string())?;
    if store.exists(&a.name) {
        return Err(format!("domain '{}' already exists", a.name));
    }
    let memory: ByteSize = a.memory.parse().map_err(|e| format!("--memory: {e}"))?;
    let mut d = Domain {
        name: a.name.clone(),
        uuid: domain::new_uuid(),
        vcpus: a.vcpus,
        max_vcpus: a.max_vcpus,
        memory,
        kernel: a.kernel,
        initramfs: a.initramfs,
        cmdline: a.cmdline,
        disks: a.disks.iter().map(|s| disk(s)).collect::<Result<_, _>>()?,
        nics: a
            .networks
            .iter()
            .map(|s| nic(s))
            .collect::<Result<_, _>>()?,
        balloon: (!a.no_balloon).then(Balloon::default),
        autostart: false,
        seccomp: Default::default(),
        backend_user: None,
        vcpupin: Default::default(),
    };
    d.validate().map_err(|e| e.to_string())?;
    d.record_detected_formats();
    d.record_generated_macs();
    store.check_macs(&d)?;
    store.save(&d)?;
    if let Err(e) = crate::lifecycle::start(store, &d.name, None) {
        return Err(format!(
            "{e} (the domain stays defined; fix it and `svctl start {}`)",
            d.name
        ));
    }
    out.print(
        format!("Domain '{}' installed and started\n", d.name),
        json!({"name": d.name, "uuid": d.uuid, "state": "running"}),
    );
    Ok(())
}
