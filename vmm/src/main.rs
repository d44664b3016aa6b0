//! `splitvisor`: boot a Linux guest under KVM.
//!
//! Exit status: 0 the guest powered off; 1 an error (bad configuration, missing files, KVM
//! failure); 2 a bad command line; 3 the guest rebooted with `--on-reboot exit` (or could not
//! be reset in place); 4 a vCPU crashed; 5 stopped by SIGTERM/SIGINT/SIGHUP or the API's `vm.stop`; 6 the VM
//! migrated away (`vm.send-migration`: the destination confirmed it runs there).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use vmm::config::{DeviceConfig, MemoryConfig, OnReboot, SerialConfig, VmConfig};
use vmm::exit::EXIT_ERROR;
use vmm::vm::Vm;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "splitvisor",
    version,
    about = "A KVM VMM whose virtio devices are vhost-user processes"
)]
struct Args {
    /// JSON config file (the same schema as these options; options given here override it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Kernel: a bzImage, or an ELF vmlinux (PVH entry when it has the note).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initramfs (cpio, optionally compressed).
    #[arg(long, value_name = "PATH")]
    initramfs: Option<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 panic=1"].
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Number of vCPUs (1-254) [default: 1].
    #[arg(long, value_name = "N")]
    cpus: Option<u8>,
    /// The most vCPUs the VM may have: `vm.resize` adds (and removes) vCPUs up to it while
    /// the guest runs [default: --cpus, no vCPU hotplug].
    #[arg(long, value_name = "N")]
    max_cpus: Option<u8>,
    /// Guest RAM: SIZE[,hugepages=on|off][,shared=off][,mergeable=on], e.g. 512M or
    /// 2G,hugepages=on [default: 512M in 2 MiB pages where the host allows, see vm.info's
    /// ram_pages]; shared=off (private RAM, no devices) is what mergeable=on (KSM) needs.
    #[arg(long, value_name = "SIZE[,OPTS]")]
    memory: Option<MemoryConfig>,
    /// Serial console: stdio, pty, socket=PATH, file=PATH or off [default: stdio].
    #[arg(long, value_name = "MODE")]
    serial: Option<SerialConfig>,
    /// A vhost-user device: vhost-user,type=blk|net|balloon|<virtio id>,socket=PATH[,queues=N][,queue_size=N][,id=ID].
    /// Repeatable; adds to the config file's devices. With --restore:
    /// vhost-user,id=ID,socket=PATH[,control=PATH], the snapshot's device ID (blk0, net0 …)
    /// on another backend socket.
    #[arg(long = "device", value_name = "DEVICE")]
    devices: Vec<String>,
    /// What a guest reboot does: restart (reset and boot again in place) or exit (status 3)
    /// [default: restart].
    #[arg(long, value_name = "restart|exit")]
    on_reboot: Option<OnReboot>,
    /// VM name (used in logs).
    #[arg(long)]
    name: Option<String>,
    /// Serve the JSON API (HTTP over this Unix socket, mode 0600); see docs/api.md.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// The vmm's seccomp filter: on (a system call it does not need kills it), log (the
    /// kernel only logs such calls) or off [default: on]; see docs/security.md.
    #[arg(long, value_enum)]
    seccomp: Option<vmm::config::SeccompMode>,
    /// Start the VM a snapshot holds (`vm.snapshot`'s directory; also `file:///DIR` or
    /// `source_url=file:///DIR`) where it stopped, reconnecting to its devices' sockets. The
    /// machine (kernel, CPUs, memory, devices) is the snapshot's; the API socket, console,
    /// name and seccomp mode may be given anew.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["config", "kernel", "initramfs", "cmdline", "cpus", "max_cpus", "memory"]
    )]
    restore: Option<String>,
    /// With --restore: leave the vCPUs paused (`vm.resume` starts them).
    #[arg(long, requires = "restore")]
    paused: bool,
    /// Wait for a migration on tcp:ADDR:PORT or unix:PATH (`vm.send-migration` at the
    /// source) and run the VM it brings, connecting to the devices' sockets it names (each
    /// overridable by --device vhost-user,id=ID,socket=PATH). The API socket, console,
    /// name and seccomp mode are this process's own.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with_all = ["config", "kernel", "initramfs", "cmdline", "cpus", "max_cpus", "memory", "restore"]
    )]
    incoming: Option<String>,
}

fn config_from(mut args: Args) -> anyhow::Result<VmConfig> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the config file {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("malformed config file {}", path.display()))?
        }
        None => VmConfig::default(),
    };
    apply_process_options(&mut cfg, &mut args);
    cfg.kernel = args.kernel.or(cfg.kernel);
    cfg.initramfs = args.initramfs.or(cfg.initramfs);
    cfg.cmdline = args.cmdline.or(cfg.cmdline);
    cfg.cpus = args.cpus.unwrap_or(cfg.cpus);
    cfg.max_cpus = args.max_cpus.or(cfg.max_cpus);
    cfg.memory = args.memory.unwrap_or(cfg.memory);
    for spec in &args.devices {
        let device: DeviceConfig = spec.parse()?;
        cfg.devices.push(device);
    }
    Ok(cfg)
}

/// What the command line may set over any configuration, a snapshot's too: the console,
/// the name, the reboot action, the API socket and the seccomp mode.
fn apply_process_options(cfg: &mut VmConfig, args: &mut Args) {
    if let Some(serial) = args.serial.take() {
        cfg.serial = serial;
    }
    if let Some(name) = args.name.take() {
        cfg.name = name;
    }
    cfg.on_reboot = args.on_reboot.unwrap_or(cfg.on_reboot);
    if let Some(path) = args.api_socket.take() {
        cfg.api_socket = Some(path);
    }
    cfg.seccomp = args.seccomp.unwrap_or(cfg.seccomp);
}

/// `--restore`: the snapshot, read and checked, and its configuration with what the command
/// line may change.
fn restore_from(
    mut args: Args,
    url: &str,
) -> anyhow::Result<(vmm::snapshot::restore::Restore, VmConfig)> {
    use vmm::snapshot::restore::{dir_of_url, Restore};
    let dir = dir_of_url(url)?;
    let r = Restore::open(&dir, args.paused)?;
    let mut cfg = r.config()?;
    for spec in &args.devices {
        move_device(&mut cfg, spec)?;
    }
    apply_process_options(&mut cfg, &mut args);
    Ok((r, cfg))
}

/// `--device vhost-user,id=ID,socket=PATH[,control=PATH]` with `--restore`: the snapshot's
/// device ID has its backend on another socket now.
fn move_device(cfg: &mut VmConfig, spec: &str) -> anyhow::Result<()> {
    let usage = || {
        anyhow::anyhow!(
            "--device {spec}: with --restore, expected vhost-user,id=ID,socket=PATH[,control=PATH]"
        )
    };
    let mut parts = spec.split(',');
    if parts.next() != Some("vhost-user") {
        return Err(usage());
    }
    let (mut id, mut socket, mut control) = (None, None, None);
    for part in parts {
        match part.split_once('=') {
            Some(("id", v)) => id = Some(v),
            Some(("socket", v)) if !v.is_empty() => socket = Some(PathBuf::from(v)),
            Some(("control", v)) if !v.is_empty() => control = Some(PathBuf::from(v)),
            _ => return Err(usage()),
        }
    }
    let (Some(id), Some(socket)) = (id, socket) else {
        return Err(usage());
    };
    relocate(cfg, id, socket, control).map_err(|e| anyhow::anyhow!("--device {spec}: {e}"))
}

/// Device `id` of a snapshot's (or a migrating VM's) configuration has its backend on
/// `socket` (and `control`) here.
fn relocate(
    cfg: &mut VmConfig,
    id: &str,
    socket: PathBuf,
    control: Option<PathBuf>,
) -> Result<(), String> {
    let ids = vmm::config::device_ids(&cfg.devices);
    let i = ids.iter().position(|d| d == id).ok_or_else(|| {
        format!(
            "the VM has no device {id} (its devices: {})",
            ids.join(", ")
        )
    })?;
    cfg.devices[i].socket = socket;
    if control.is_some() {
        cfg.devices[i].control = control;
    }
    Ok(())
}

/// How long a destination told to `await_devices` waits for `vm.migration-devices` once the
/// source has let go of its backends: well within the 60 s the source waits for Ready.
const DEVICES_WAIT: std::time::Duration = std::time::Duration::from_secs(40);

/// `"await_devices": true`: take `vm.migration-devices` from the waiting API (a request
/// naming an unknown device is refused and waited past).
fn await_devices(
    requests: &std::sync::mpsc::Receiver<vmm::api::waiting::Request>,
    cfg: &mut VmConfig,
) -> Result<(), String> {
    use std::sync::mpsc::RecvTimeoutError;
    use vmm::api::waiting::{Outcome, Request};
    let deadline = std::time::Instant::now() + DEVICES_WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match requests.recv_timeout(left) {
            Ok(Request::Devices { devices, reply }) => {
                let mut wanted = cfg.clone();
                let taken = devices
                    .devices
                    .into_iter()
                    .try_for_each(|d| relocate(&mut wanted, &d.id, d.socket, d.control));
                match taken {
                    Ok(()) => {
                        *cfg = wanted;
                        let _ = reply.send(Outcome::Started);
                        return Ok(());
                    }
                    Err(e) => {
                        let _ = reply.send(Outcome::Refused(e));
                    }
                }
            }
            Ok(Request::Restore { reply, .. } | Request::Receive { reply, .. }) => {
                let _ = reply.send(Outcome::Refused("a migration is being received".into()));
            }
            Ok(Request::Shutdown) => {
                return Err("vmm.shutdown came while the migration waited for its devices".into())
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "vm.migration-devices did not come within {} s of the source letting go \
                     of its backends",
                    DEVICES_WAIT.as_secs()
                ))
            }
            Err(RecvTimeoutError::Disconnected) => return Err("the API server ended".into()),
        }
    }
}

/// How an incoming migration ended, in `progress` (what `vm.migration-info` shows).
fn recorded(progress: &vmm::migration::Progress, result: anyhow::Result<Vm>) -> anyhow::Result<Vm> {
    match &result {
        Ok(_) => progress.end("completed"),
        Err(e) => progress.fail(format!("{e:#}")),
    }
    result
}

/// `--incoming URL` (or `vm.receive-migration`): receive the VM, build it (paused) and run it
/// once the source commits. `before_build` runs once the VM is received, before it is built;
/// with `devices` (`await_devices`), after `vm.migration-devices` has come from there.
fn incoming_vm(
    args: Args,
    url: &str,
    progress: &vmm::migration::Progress,
    devices: Option<&std::sync::mpsc::Receiver<vmm::api::waiting::Request>>,
    before_build: impl FnOnce(),
) -> anyhow::Result<Vm> {
    use vmm::migration::{receive, url::MigrationUrl};
    let url: MigrationUrl = url.parse()?;
    let adjust = |cfg: &mut VmConfig| -> Result<(), String> {
        let mut args = args.clone();
        // this process's own, never the source's (its API socket and console may be in use)
        cfg.api_socket = None;
        cfg.serial = SerialConfig::default();
        for spec in &args.devices {
            move_device(cfg, spec).map_err(|e| format!("{e:#}"))?;
        }
        apply_process_options(cfg, &mut args);
        Ok(())
    };
    let incoming = receive::receive(&url, &adjust, progress)?;
    let mut cfg = incoming.cfg.clone();
    if let Some(requests) = devices {
        if let Err(why) = await_devices(requests, &mut cfg) {
            incoming.fail(&why);
            return Err(anyhow::anyhow!(why));
        }
    }
    progress.set_phase("building");
    before_build();
    match Vm::restore(&incoming.restore, &cfg) {
        Ok(vm) => {
            incoming.finish(&|run| vm.take_over(run))?;
            Ok(vm)
        }
        Err(e) => {
            let msg = format!("{:#}", anyhow::Error::from(e));
            incoming.fail(&msg);
            Err(anyhow::anyhow!(msg))
        }
    }
}

/// Only `--api-socket`: no VM until `vm.restore` names a snapshot (`api/waiting.rs`);
/// `None` when `vmm.shutdown` came first.
fn wait_for_vm(args: Args) -> anyhow::Result<Option<Vm>> {
    use vmm::api::waiting::{self, Outcome, Request};
    let path = args.api_socket.clone().context("no API socket")?;
    vmm::confinement::install(args.seccomp.unwrap_or_default())?;
    let progress = std::sync::Arc::new(vmm::migration::Progress::default());
    let requests = waiting::spawn(&path, progress.clone())?;
    tracing::info!("no VM yet: waiting for vm.restore on {}", path.display());
    while let Ok(request) = requests.recv() {
        let (config, reply) = match request {
            Request::Shutdown => {
                waiting::release(&path);
                return Ok(None);
            }
            Request::Restore { config, reply } => (config, reply),
            Request::Devices { reply, .. } => {
                let _ = reply.send(Outcome::Refused(
                    "no migration waits for its devices (vm.receive-migration with \
                     \"await_devices\": true first)"
                        .into(),
                ));
                continue;
            }
            Request::Receive { config, reply } => {
                if let Err(e) = config
                    .receiver_url
                    .parse::<vmm::migration::url::MigrationUrl>()
                {
                    let _ = reply.send(Outcome::Refused(e.to_string()));
                    continue;
                }
                progress.begin_incoming();
                let devices = config.await_devices.then_some(&requests);
                let result = incoming_vm(
                    args.clone(),
                    &config.receiver_url,
                    &progress,
                    devices,
                    || waiting::release(&path),
                );
                let result = recorded(&progress, result);
                return match result {
                    Ok(vm) => {
                        let _ = reply.send(Outcome::Started);
                        Ok(Some(vm))
                    }
                    Err(e) => {
                        let _ = reply.send(Outcome::Failed(format!("{e:#}")));
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        Err(e)
                    }
                };
            }
        };
        let mut wanted = args.clone();
        wanted.paused = !config.resume;
        let (r, cfg) = match restore_from(wanted, &config.source_url) {
            Ok(prepared) => prepared,
            Err(e) => {
                let _ = reply.send(Outcome::Refused(format!("{e:#}")));
                continue;
            }
        };
        waiting::release(&path);
        return match Vm::restore(&r, &cfg) {
            Ok(vm) => {
                let _ = reply.send(Outcome::Started);
                Ok(Some(vm))
            }
            Err(e) => {
                let msg = format!("{:#}", anyhow::Error::from(e));
                let _ = reply.send(Outcome::Failed(msg.clone()));
                // the answer is written by the API thread: give it a moment before the exit
                std::thread::sleep(std::time::Duration::from_millis(200));
                Err(anyhow::anyhow!(msg))
            }
        };
    }
    Ok(None)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    api::unix_socket::restrict_umask();
    let args = Args::parse();
    init_logging();
    let waits = args.restore.is_none()
        && args.incoming.is_none()
        && args.config.is_none()
        && args.kernel.is_none()
        && args.api_socket.is_some();
    let result = match args.restore.clone() {
        None if args.incoming.is_some() => {
            let url = args.incoming.clone().unwrap_or_default();
            vmm::confinement::install(args.seccomp.unwrap_or_default())
                .map_err(anyhow::Error::from)
                .and_then(|()| {
                    let progress = vmm::migration::Progress::default();
                    progress.begin_incoming();
                    recorded(&progress, incoming_vm(args, &url, &progress, None, || {}))
                })
        }
        None if waits => match wait_for_vm(args) {
            Ok(Some(vm)) => Ok(vm),
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => Err(e),
        },
        Some(url) => restore_from(args, &url).and_then(|(r, cfg)| {
            vmm::confinement::install(cfg.seccomp)?;
            Ok(Vm::restore(&r, &cfg)?)
        }),
        None => config_from(args).and_then(|cfg| {
            vmm::confinement::install(cfg.seccomp)?;
            Ok(Vm::start(&cfg)?)
        }),
    };
    match result {
        Ok(vm) => {
            let exit = vm.run();
            if let vmm::exit::VmExit::Crash(why) = &exit {
                eprintln!("splitvisor: the guest crashed: {why}");
            }
            // the vCPU threads have stopped; exit with the status that says how the guest ended
            std::process::exit(exit.status());
        }
        Err(e) => {
            eprintln!("splitvisor: error: {e:#}");
            ExitCode::from(EXIT_ERROR as u8)
        }
    }
}
