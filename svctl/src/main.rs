//! `svctl`: manage splitvisor domains the way virsh manages libvirt domains. A domain is a
//! JSON file in the store (see `store.rs`); a running domain is its vmm and its backends, kept
//! by a supervisor process (see `supervise/`) and recorded in its runtime dir (`record.rs`),
//! reached through the vmm's API.
//!
//! Output is for people; `--json` gives one JSON document per command for scripts. Errors
//! go to stderr as `svctl: error: …` with exit status 1 (2 for a bad command line).

mod attach;
mod backend_restart;
mod blockresize;
mod console;
mod define;
mod edit;
mod external_snapshot;
mod identity;
mod info;
mod lifecycle;
mod live;
mod migrate;
mod process;
mod record;
mod remote;
mod save;
mod shell;
mod snapshot;
mod store;
mod supervise;
mod systemd;
mod vcpus;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use store::Store;
use svctl::domain;

#[derive(Parser)]
#[command(
    name = "svctl",
    version,
    about = "Manage splitvisor virtual machines (virsh-like)"
)]
struct Args {
    /// Print JSON for scripts instead of text for people.
    #[arg(long, global = true)]
    json: bool,
    /// Run on another host: ssh://[user@]host[:port] (virsh's -c; default $SVCTL_DEFAULT_URI).
    #[arg(short = 'c', long = "connect", global = true, value_name = "URI")]
    connect: Option<String>,
    /// The verb; without one, an interactive shell (a script on stdin when it is not a
    /// terminal).
    #[command(subcommand)]
    verb: Option<Verb>,
}

#[derive(Subcommand)]
enum Verb {
    /// Define (or redefine) a domain from a JSON file.
    Define { file: PathBuf },
    /// Remove a stopped domain's definition.
    Undefine { name: String },
    /// Start a transient domain from a JSON file (forgotten when it stops).
    Create { file: PathBuf },
    /// Start a defined domain (one whose vmm runs without a supervisor is adopted by a new one).
    Start { name: String },
    /// List running domains (all with --all).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Show a domain's state and resources.
    Dominfo { name: String },
    /// Print a domain's UUID.
    Domuuid { name: String },
    /// Print a running domain's Id (its vmm's PID; `-` when shut off).
    Domid { name: String },
    /// Print the name of the domain with this UUID or Id.
    Domname { uuid_or_id: String },
    /// Print a domain's state: running, paused or shut off.
    Domstate { name: String },
    /// Edit a domain's definition in $VISUAL/$EDITOR (checked before it is saved; a bad
    /// edit is refused and the definition left as it was).
    Edit { name: String },
    /// Print the domain's definition (--vmm: the running vmm's configuration).
    Dumpconfig {
        name: String,
        #[arg(long)]
        vmm: bool,
    },
    /// Attach to the serial console (Ctrl-] detaches).
    Console { name: String },
    /// Pause the vCPUs.
    Suspend { name: String },
    /// Resume a paused domain.
    Resume { name: String },
    /// Ask the guest to power off (ACPI power button) and wait for it.
    Shutdown {
        name: String,
        /// Seconds to wait for the guest (0: do not wait).
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Ask the guest to reboot (ACPI power button; its power-off becomes a new boot).
    Reboot { name: String },
    /// Reset the domain at once (a hard reset; the guest boots again).
    Reset { name: String },
    /// Stop a domain at once (its definition is kept).
    Destroy { name: String },
    /// Save a running domain's state (memory, devices) to DIR and stop it (virsh save).
    Save { name: String, file: PathBuf },
    /// Start a domain again from what `save` wrote, where it was (virsh restore).
    Restore { file: PathBuf },
    /// Snapshot a domain: its qcow2 disks (internal snapshots) and, while it runs, its
    /// memory and devices (virsh snapshot-create-as).
    SnapshotCreateAs {
        name: String,
        snapshot: String,
        /// An external snapshot of the disks only: each goes on in a new qcow2 overlay and
        /// the image under it is the snapshot (raw disks too).
        #[arg(long)]
        disk_only: bool,
    },
    /// List a domain's snapshots: name, time, state, whether memory was saved.
    SnapshotList { name: String },
    /// Put a domain back as it was at a snapshot (running again if memory was saved).
    SnapshotRevert { name: String, snapshot: String },
    /// Delete a snapshot (its disk snapshots and saved state).
    SnapshotDelete { name: String, snapshot: String },
    /// Restart a backend on purpose (e.g. after an upgrade): drained, started again on its
    /// socket; DEVICE as dominfo names it (blk0), or vda, or the interface's name.
    BackendRestart { name: String, device: String },
    /// Move a running domain to another host's `svctl migrate-receive` (virsh migrate);
    /// its disks must be on storage both hosts see.
    Migrate {
        name: String,
        /// tcp:HOST:PORT or unix:PATH, as the destination listens.
        uri: String,
        /// Keep the guest running while its memory is copied (else it is paused first
        /// and resumed at the destination).
        #[arg(long)]
        live: bool,
        /// Same host (unix: URI): guest RAM's file is handed over, not copied.
        #[arg(long)]
        local: bool,
        /// The pause the guest may see, in milliseconds [default: 300].
        #[arg(long, value_name = "MS")]
        downtime: Option<u64>,
        /// Remove the domain's definition here once it runs there.
        #[arg(long)]
        undefinesource: bool,
    },
    /// Wait for a domain migrated from another host (its definition comes with it).
    MigrateReceive {
        name: String,
        /// tcp:ADDR:PORT or unix:PATH to listen on.
        #[arg(long, value_name = "URI")]
        listen: String,
        /// Seconds to wait for the source [default: 600].
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Return once the domain runs here (by default: once it listens).
        #[arg(long)]
        wait: bool,
    },
    /// Show a domain's running (or last) migration job (virsh domjobinfo).
    Domjobinfo { name: String },
    /// Set the memory a running guest keeps (balloon), e.g. 256M.
    Setmem { name: String, size: String },
    /// Memory statistics of a running guest (from its balloon).
    Dommemstat { name: String },
    /// Set the number of vCPUs: of the running domain (--live, the default while it runs), of
    /// its definition (--config), or its maximum (--maximum --config).
    Setvcpus {
        name: String,
        count: u8,
        /// The running domain (vCPU hotplug, up to its maximum).
        #[arg(long)]
        live: bool,
        /// The definition (the next start).
        #[arg(long)]
        config: bool,
        /// Set the most vCPUs it may have (with --config; `max_vcpus`).
        #[arg(long)]
        maximum: bool,
    },
    /// Each vCPU of a running domain: the host CPU it last ran on, its state, CPU time and
    /// affinity (virsh vcpuinfo).
    Vcpuinfo { name: String },
    /// Show the vCPUs' pinning, or pin vCPU VCPU to host CPUS (e.g. 0-2,4): the running
    /// domain's thread, the definition (--config, applied at every start), or both.
    Vcpupin {
        name: String,
        vcpu: Option<u32>,
        cpus: Option<String>,
        #[arg(long)]
        live: bool,
        #[arg(long)]
        config: bool,
    },
    /// The CPU time a running domain's processes used: the vmm (and its vCPU threads) and
    /// each backend, and the total (virsh cpu-stats --total).
    CpuStats { name: String },
    /// Grow a disk (vda, blk0 or its image's path) to SIZE, e.g. 20G: live, the guest sees
    /// it at once; shut off, the image is grown. Never shrinks.
    Blockresize {
        name: String,
        disk: String,
        size: String,
    },
    /// Attach a disk image (raw or qcow2) as TARGET (vdb…): to the running domain (the guest
    /// sees it at once), to its definition (--config), or both (--persistent).
    AttachDisk {
        name: String,
        source: PathBuf,
        target: String,
        /// raw or qcow2 [default: a raw image is raw, a qcow2 one is probed].
        #[arg(long, value_name = "FORMAT")]
        format: Option<String>,
        #[arg(long)]
        readonly: bool,
        #[command(flatten)]
        scope: attach::ScopeFlags,
    },
    /// Detach disk TARGET (vdb, its backend's name or its image's path) once the guest has
    /// let go of it.
    DetachDisk {
        name: String,
        target: String,
        #[command(flatten)]
        scope: attach::ScopeFlags,
    },
    /// Attach a network interface: TYPE `bridge` (a new tap on bridge SOURCE) or `ethernet`
    /// (the existing tap SOURCE).
    AttachInterface {
        name: String,
        #[arg(value_name = "TYPE")]
        kind: String,
        source: String,
        /// Its MAC [default: made from the domain's UUID].
        #[arg(long)]
        mac: Option<String>,
        #[command(flatten)]
        scope: attach::ScopeFlags,
    },
    /// Detach the network interface of TYPE (with MAC, if the domain has several).
    DetachInterface {
        name: String,
        #[arg(value_name = "TYPE")]
        kind: String,
        #[arg(long)]
        mac: Option<String>,
        #[command(flatten)]
        scope: attach::ScopeFlags,
    },
    /// List a domain's disks.
    Domblklist { name: String },
    /// List a domain's network interfaces.
    Domiflist { name: String },
    /// Block I/O counters of a running domain's disks (or one: vda…).
    Domblkstat {
        name: String,
        device: Option<String>,
    },
    /// Network counters of a running domain's interfaces (or one), as the guest sees them.
    Domifstat {
        name: String,
        interface: Option<String>,
    },
    /// Start the domain when the host boots (--disable: do not).
    Autostart {
        name: String,
        #[arg(long)]
        disable: bool,
    },
    /// Define a domain from options (like virt-install) and start it.
    Install(define::InstallArgs),
    /// (internal) run a domain's processes; `start` launches this.
    #[command(name = "__supervise", hide = true)]
    Supervise { name: String },
}

/// How a verb prints its result.
pub struct Out {
    json: bool,
}

impl Out {
    pub fn print(&self, text: String, value: Value) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
        } else {
            print!("{text}");
        }
    }
}

fn run(verb: Verb, out: &Out) -> Result<(), String> {
    let store = Store::open()?;
    let done = |text: String, name: &str| out.print(text, json!({"name": name, "ok": true}));
    match verb {
        Verb::Define { file } => define::define(&store, &file, out).map(|_| ()),
        Verb::Undefine { name } => define::undefine(&store, &name, out),
        Verb::Create { file } => {
            let d = lifecycle::create(&store, &file)?;
            done(
                format!("Domain '{}' created from {}\n", d.name, file.display()),
                &d.name,
            );
            Ok(())
        }
        Verb::Start { name } => {
            match lifecycle::start(&store, &name, None)? {
                lifecycle::Started::Afresh => out.print(
                    format!("Domain '{name}' started\n"),
                    json!({"name": name, "ok": true, "adopted": false}),
                ),
                lifecycle::Started::Adopted { vmm, supervisor } => out.print(
                    format!(
                        "Domain '{name}' adopted: its running vmm (pid {vmm}) has a new \
                         supervisor (pid {supervisor})\n"
                    ),
                    json!({"name": name, "ok": true, "adopted": true, "id": vmm,
                           "supervisor": supervisor}),
                ),
            }
            Ok(())
        }
        Verb::List { all } => info::list(&store, all, out),
        Verb::Dominfo { name } => info::dominfo(&store, &name, out),
        Verb::Domuuid { name } => identity::domuuid(&store, &name, out),
        Verb::Domid { name } => identity::domid(&store, &name, out),
        Verb::Domname { uuid_or_id } => identity::domname(&store, &uuid_or_id, out),
        Verb::Domstate { name } => identity::domstate(&store, &name, out),
        Verb::Edit { name } => edit::edit(&store, &name, out),
        Verb::Dumpconfig { name, vmm } => info::dumpconfig(&store, &name, vmm, out),
        Verb::Console { name } => {
            lifecycle::require_running(&store, &name)?;
            console::attach(&name, &store.runtime(&name).console())
        }
        Verb::Suspend { name } => {
            lifecycle::pause(&store, &name, true)?;
            done(format!("Domain '{name}' suspended\n"), &name);
            Ok(())
        }
        Verb::Resume { name } => {
            lifecycle::pause(&store, &name, false)?;
            done(format!("Domain '{name}' resumed\n"), &name);
            Ok(())
        }
        Verb::Reboot { name } => {
            lifecycle::reboot(&store, &name, true)?;
            done(format!("Domain '{name}' is being rebooted\n"), &name);
            Ok(())
        }
        Verb::Reset { name } => {
            lifecycle::reboot(&store, &name, false)?;
            done(format!("Domain '{name}' was reset\n"), &name);
            Ok(())
        }
        Verb::Shutdown { name, timeout } => {
            lifecycle::shutdown(&store, &name, Duration::from_secs(timeout))?;
            let what = if timeout == 0 {
                "is being shut down"
            } else {
                "has been shut down"
            };
            done(format!("Domain '{name}' {what}\n"), &name);
            Ok(())
        }
        Verb::Destroy { name } => {
            lifecycle::destroy(&store, &name)?;
            done(format!("Domain '{name}' destroyed\n"), &name);
            Ok(())
        }
        Verb::Save { name, file } => save::save(&store, &name, &file, out),
        Verb::Restore { file } => save::restore(&store, &file, out),
        Verb::SnapshotCreateAs {
            name,
            snapshot,
            disk_only,
        } => snapshot::create(&store, &name, &snapshot, disk_only, out),
        Verb::SnapshotList { name } => snapshot::list(&store, &name, out),
        Verb::SnapshotRevert { name, snapshot } => snapshot::revert(&store, &name, &snapshot, out),
        Verb::SnapshotDelete { name, snapshot } => snapshot::delete(&store, &name, &snapshot, out),
        Verb::BackendRestart { name, device } => {
            backend_restart::backend_restart(&store, &name, &device, out)
        }
        Verb::Migrate {
            name,
            uri,
            live,
            local,
            downtime,
            undefinesource,
        } => {
            let o = migrate::MigrateOptions {
                uri,
                live,
                local,
                downtime_ms: downtime,
                undefine_source: undefinesource,
            };
            migrate::migrate(&store, &name, &o, out)
        }
        Verb::MigrateReceive {
            name,
            listen,
            timeout,
            wait,
        } => migrate::receive(
            &store,
            &name,
            &listen,
            Duration::from_secs(timeout),
            wait,
            out,
        ),
        Verb::Domjobinfo { name } => migrate::domjobinfo(&store, &name, out),
        Verb::Setmem { name, size } => info::setmem(&store, &name, &size, out),
        Verb::Dommemstat { name } => info::dommemstat(&store, &name, out),
        Verb::Setvcpus {
            name,
            count,
            live,
            config,
            maximum,
        } => {
            let scope = define::VcpuScope {
                live,
                config,
                maximum,
            };
            define::setvcpus(&store, &name, count, scope, out)
        }
        Verb::Vcpuinfo { name } => vcpus::vcpuinfo(&store, &name, out),
        Verb::Vcpupin {
            name,
            vcpu,
            cpus,
            live,
            config,
        } => {
            let pin = match (vcpu, cpus.as_deref()) {
                (Some(v), Some(c)) => Some((v, c)),
                (None, None) => None,
                _ => return Err("vcpupin: give both VCPU and CPUS, or neither".into()),
            };
            vcpus::vcpupin(&store, &name, pin, vcpus::PinScope { live, config }, out)
        }
        Verb::CpuStats { name } => vcpus::cpu_stats(&store, &name, out),
        Verb::Blockresize { name, disk, size } => {
            blockresize::blockresize(&store, &name, &disk, &size, out)
        }
        Verb::AttachDisk {
            name,
            source,
            target,
            format,
            readonly,
            scope,
        } => {
            let a = attach::DiskArgs {
                source: &source,
                target: &target,
                format: format.as_deref(),
                readonly,
            };
            attach::attach_disk(&store, &name, &a, scope, out)
        }
        Verb::DetachDisk {
            name,
            target,
            scope,
        } => attach::detach_disk(&store, &name, &target, scope, out),
        Verb::AttachInterface {
            name,
            kind,
            source,
            mac,
            scope,
        } => attach::attach_interface(&store, &name, &kind, &source, mac.as_deref(), scope, out),
        Verb::DetachInterface {
            name,
            kind,
            mac,
            scope,
        } => attach::detach_interface(&store, &name, &kind, mac.as_deref(), scope, out),
        Verb::Domblklist { name } => info::domblklist(&store, &name, out),
        Verb::Domiflist { name } => info::domiflist(&store, &name, out),
        Verb::Domblkstat { name, device } => {
            info::domblkstat(&store, &name, device.as_deref(), out)
        }
        Verb::Domifstat { name, interface } => {
            info::domifstat(&store, &name, interface.as_deref(), out)
        }
        Verb::Autostart { name, disable } => define::autostart(&store, &name, !disable, out),
        Verb::Install(a) => define::install(&store, a, out),
        Verb::Supervise { name } => {
            let exit = supervise::supervise(&store, &name)?;
            // the supervisor's log (kept in <store>/logs/NAME/) says how the domain ended
            eprintln!("svctl: domain '{name}': splitvisor exited with {exit}");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    api::unix_socket::restrict_umask();
    let args = Args::parse();
    let uri = args
        .connect
        .clone()
        .or_else(|| std::env::var("SVCTL_DEFAULT_URI").ok());
    let remote = match uri.as_deref().map(remote::parse_uri).transpose() {
        Ok(r) => r.flatten(),
        Err(e) => {
            report(&e, &Out { json: args.json });
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Some(r) = remote {
        let argv: Vec<String> = std::env::args().skip(1).collect();
        return remote::run(&r, &remote::strip_connect(&argv), args.json);
    }
    let Some(verb) = args.verb else {
        return shell::run(args.json);
    };
    let out = Out { json: args.json };
    match run(verb, &out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e, &out);
            ExitCode::FAILURE
        }
    }
}

/// A verb's error: on stderr, and as `{"error": …}` on stdout with `--json`.
fn report(e: &str, out: &Out) {
    if out.json {
        println!("{}", json!({"error": e}));
    }
    eprintln!("svctl: error: {e}");
}
