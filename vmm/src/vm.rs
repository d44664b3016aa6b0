//! Putting a VM together: KVM VM with in-kernel irqchip and PIT, shared-memfd RAM, the loaded
//! guest, the console, and one thread per vCPU; then running it until the guest ends, resetting
//! it in place whenever the guest reboots.

use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::api::server::{ApiContext, ApiDevice, ApiServerError};
use crate::boot::{self, BootError};
use crate::config::SerialConfig;
use crate::config::{ConfigError, OnReboot, VmConfig};
use crate::cpu::{self, CpuError};
use crate::devices::cpu_hotplug::CpuHotplugRegs;
use crate::devices::ged::{Ged, GED_IRQ};
use crate::devices::serial::{Console, SerialError, COM1_IRQ};
use crate::devices::Devices;
use crate::exit::{ExitHandle, VmExit};
use crate::irq_routing::IrqRouter;
use crate::layout::PCI_MMIO_START;
use crate::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::memory::{GuestRam, MemoryError};
use crate::pci::bus::PciBus;
use crate::power_on::{PowerOnError, PowerOnState};
use crate::run_control::RunControl;
use crate::snapshot::caps::KvmCaps;
use crate::snapshot::restore::{Restore, RestoreError};
use crate::vcpu_hotplug::VcpuHotplug;
use crate::vhost_user::reconnect::{self, SharedVhostUser};
use crate::vhost_user::VhostUserDevice;
use crate::virtio::absent_device::AbsentDevice;
use crate::virtio::device_type::QueueUnits;
use crate::virtio::pci::{VirtioPciDevice, BAR_SIZE};
use crate::virtio::VirtioDevice;
use crate::{signals, vcpu};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open /dev/kvm (is KVM available and accessible?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("--cpus {want} is more than this host's KVM allows ({max})")]
    TooManyCpus { want: u8, max: usize },
    #[error("KVM: cannot {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Cpu(#[from] CpuError),
    #[error(transparent)]
    Serial(#[from] SerialError),
    #[error("device {device}: {source}")]
    Transport {
        device: String,
        #[source]
        source: crate::virtio::pci::TransportError,
    },
    #[error(transparent)]
    Bus(#[from] crate::pci::bus::BusError),
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    PowerOn(#[from] PowerOnError),
    #[error(transparent)]
    Api(#[from] ApiServerError),
    #[error(transparent)]
    Restore(#[from] crate::snapshot::restore::RestoreError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// A restored VM's interrupt controllers, PIT, clock (moved on by the time the snapshot
/// spent on disk), console and PCI address latch; the clock it was given.
fn restore_platform(
    r: &Restore,
    vm: &VmFd,
    vcpus: &[kvm_ioctls::VcpuFd],
    devices: &Devices,
) -> Result<kvm_bindings::kvm_clock_data, RestoreError> {
    let p = r.platform()?;
    let elapsed = crate::snapshot::platform::unix_ns().saturating_sub(p.saved_at_unix_ns);
    crate::snapshot::platform::restore(vm, &p, elapsed)?;
    for vcpu in vcpus {
        // tell the guest its clock jumped (no soft-lockup warnings); EINVAL until the guest
        // enabled kvmclock: nothing to tell then
        let _ = vcpu.kvmclock_ctrl();
    }
    devices
        .serial
        .restore(&r.serial()?)
        .map_err(RestoreError::Serial)?;
    devices.pci.set_config_address(r.pci_latch()?);
    tracing::info!(
        dir = %r.dir().display(),
        elapsed_ms = elapsed / 1_000_000,
        "VM restored from its snapshot"
    );
    Ok(vm.get_clock().unwrap_or_default())
}

/// A running VM. [`Vm::run`] returns how the guest ended once the vCPU threads have stopped;
/// the process then exits.
pub struct Vm {
    vm: Arc<VmFd>,
    ram: GuestRam,
    cfg: VmConfig,
    console: Arc<Console>,
    exit: Arc<ExitHandle>,
    devices: Arc<Devices>,
    control: Arc<RunControl>,
    power_on: PowerOnState,
    vcpu_threads: Vec<std::thread::JoinHandle<kvm_ioctls::VcpuFd>>,
    /// The vCPUs added while the guest runs.
    vcpu_hotplug: Arc<VcpuHotplug>,
}

impl Vm {
    /// Build the VM from `cfg` and start its vCPUs.
    pub fn start(cfg: &VmConfig) -> Result<Vm, VmError> {
        Vm::build(cfg, None)
    }

    /// Build the VM snapshot `r` holds (its configuration `cfg`: the saved one, perhaps with
    /// another API socket or console) and start its vCPUs where they stopped (or paused).
    pub fn restore(r: &Restore, cfg: &VmConfig) -> Result<Vm, VmError> {
        Vm::build(cfg, Some(r))
    }

    /// What [`Vm::start`] and [`Vm::restore`] share: a restore takes RAM, devices, vCPUs,
    /// platform and console from the snapshot where a start boots the kernel.
    fn build(cfg: &VmConfig, restore: Option<&Restore>) -> Result<Vm, VmError> {
        // every check of the user's input comes before KVM is touched
        cfg.validate()?;
        let kernel = match restore {
            None => Some(boot::check_inputs(cfg)?),
            Some(_) => None,
        };
        let ram = match restore.and_then(Restore::take_ram) {
            Some(received) => received,
            None => GuestRam::new(&cfg.memory)?,
        };
        signals::block().map_err(VmError::Thread)?;
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let max = kvm.get_max_vcpus();
        if usize::from(cfg.cpus) > max {
            return Err(VmError::TooManyCpus {
                want: cfg.cpus,
                max,
            });
        }
        let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        let caps = KvmCaps::probe(&kvm, &vm);
        vm.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(kvm_err("set the TSS address"))?;
        vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("set the identity map address"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("create the in-kernel irqchip"))?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("create the in-kernel PIT"))?;
        let mut power_on = PowerOnState::save_platform(&vm)?;

        // SAFETY: `ram` goes into the returned Vm together with the VM, and the process exits
        // (after stopping the vCPUs) without dropping either.
        unsafe { ram.register_with(&vm) }.map_err(kvm_err("register guest memory"))?;
        tracing::info!(size = ram.size(), "guest memory registered");

        let entry = match kernel {
            Some(kernel) => Some(boot::load(&ram, cfg, kernel)?),
            None => None,
        };
        if let Some(r) = restore {
            r.memory(&ram)?;
        }

        let exit = Arc::new(ExitHandle::default());
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::Thread)?;
        vm.register_irqfd(&irq, COM1_IRQ)
            .map_err(kvm_err("register the serial irqfd"))?;
        let console = Console::new(&cfg.serial, irq)?;
        let button_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::Thread)?;
        vm.register_irqfd(&button_irq, GED_IRQ)
            .map_err(kvm_err("register the GED irqfd"))?;
        let ged = Arc::new(Ged::new(button_irq));
        let vm = Arc::new(vm);
        let mut api_devices = Vec::new();
        let router = Arc::new(IrqRouter::new(vm.clone()));
        let pci = PciBus::new();
        let mut vhost_devices = Vec::new();
        let names = crate::config::device_ids(&cfg.devices);
        for (i, (dev, name)) in cfg.devices.iter().zip(names).enumerate() {
            let mut channel = None;
            let (backend, shared): (Box<dyn VirtioDevice>, _) = match VhostUserDevice::connect(
                &name,
                &dev.socket,
                dev.virtio_type,
                QueueUnits(dev.queues),
                dev.queue_size,
                ram.memory().clone(),
            ) {
                Ok(mut b) => {
                    channel = b.take_backend_channel();
                    let shared = Arc::new(Mutex::new(b));
                    vhost_devices.push(shared.clone());
                    (Box::new(SharedVhostUser(shared.clone())), Some(shared))
                }
                Err(e) if restore.is_some() => {
                    return Err(RestoreError::Device {
                        device: name,
                        why: e.to_string(),
                    }
                    .into())
                }
                Err(e) => {
                    // the VM runs without this device; the guest sees it as needing a reset
                    eprintln!("splitvisor: error: {e}");
                    tracing::error!(device = %name, error = %e, "device has no backend");
                    let absent = AbsentDevice {
                        device_type: dev.virtio_type,
                    };
                    (Box::new(absent), None)
                }
            };
            let bar = PCI_MMIO_START + i as u64 * BAR_SIZE;
            let mut transport =
                VirtioPciDevice::new(&name, backend, router.clone(), bar).map_err(|source| {
                    VmError::Transport {
                        device: name.clone(),
                        source,
                    }
                })?;
            if shared.is_none() {
                transport.needs_reset();
            }
            if let Some(r) = restore {
                let state = r.device(&name)?;
                transport
                    .restore(&state)
                    .map_err(|why| RestoreError::Device {
                        device: name.clone(),
                        why,
                    })?;
            }
            let transport = Arc::new(Mutex::new(transport));
            let slot = pci.add(transport.clone())?;
            let (counters, status) = {
                let t = transport.lock().unwrap_or_else(|e| e.into_inner());
                (t.counters(), t.status())
            };
            api_devices.push(ApiDevice {
                name: name.clone(),
                cfg: dev.clone(),
                transport: transport.clone(),
                link: shared
                    .as_ref()
                    .map(|d| d.lock().unwrap_or_else(|e| e.into_inner()).link_status()),
                counters,
                last_status: std::sync::atomic::AtomicU8::new(status),
            });
            if let Some(channel) = channel {
                channel.spawn(transport.clone()).map_err(VmError::Thread)?;
            }
            if let Some(shared) = shared {
                reconnect::spawn(name.clone(), dev.socket.clone(), shared, transport)
                    .map_err(VmError::Thread)?;
            }
            tracing::info!(device = %name, slot, bar, "virtio-pci device added");
        }
        let devices = Arc::new(Devices {
            serial: console.clone(),
            pci,
            exit: exit.clone(),
            ged: ged.clone(),
            hotplug: Arc::default(),
            cpu_hotplug: Arc::new(CpuHotplugRegs::new(cfg.cpus, cfg.max_vcpus())),
        });

        let mut supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("read the supported CPUID"))?;
        if kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
            cpu::offer_tsc_deadline(&mut supported);
        }
        let mut vcpus = Vec::new();
        for id in 0..cfg.cpus {
            let vcpu = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("create a vCPU"))?;
            cpu::set_cpuid(&vcpu, &supported, id, cfg.max_vcpus())?;
            if let (Some(r), 0) = (restore, id) {
                // what a vCPU here really shows (PVM shows more than it calls supported)
                let here = vcpu
                    .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
                    .map_err(kvm_err("read a vCPU's CPUID"))?;
                let missing = crate::snapshot::cpuid_check::missing(&r.vcpu(0)?.cpuid, &here);
                if !missing.is_empty() {
                    return Err(RestoreError::CpuFeatures(missing).into());
                }
            }
            power_on.save_vcpu(&vcpu)?;
            match restore {
                Some(r) => crate::snapshot::vcpu_state::restore(id, &vcpu, &r.vcpu(id)?, &caps)
                    .map_err(RestoreError::from)?,
                None => cpu::configure(&vcpu, id, ram.memory(), entry.filter(|_| id == 0))?,
            }
            vcpus.push(vcpu);
        }
        let restored_clock = match restore {
            Some(r) => Some(restore_platform(r, &vm, &vcpus, &devices)?),
            None => None,
        };
        if restore.is_some() {
            for d in &api_devices {
                let t = d.transport.lock();
                t.unwrap_or_else(|e| e.into_inner())
                    .interrupt_started_queues();
            }
        }
        signals::spawn_handler(exit.clone()).map_err(VmError::Thread)?;
        signals::install_vcpu_kick_handler().map_err(VmError::Thread)?;
        let control = Arc::new(RunControl::new(vm.clone(), exit.clone()));
        let vcpu_hotplug = Arc::new(VcpuHotplug::new(
            vm.clone(),
            supported.clone(),
            (cfg.cpus, cfg.max_vcpus()),
            ram.memory().clone(),
            devices.clone(),
            control.clone(),
            cfg.seccomp,
        ));
        if let (Some(clock), Some(true)) = (restored_clock, restore.map(|r| r.paused)) {
            control.start_paused(clock);
        }
        if restore.is_some_and(Restore::is_migration) {
            // until the source commits, nothing here may run it (nor pause, nor snapshot)
            let _ = control.begin_snapshot();
        }
        let mut api = None;
        if let Some(path) = &cfg.api_socket {
            // private RAM (`shared=off`) has no file to read: no snapshots of it
            let memfd = ram
                .memfd()
                .map(std::fs::File::try_clone)
                .transpose()
                .map_err(VmError::Thread)?;
            let snapshot = memfd.map(|memfd| crate::snapshot::save::Handles {
                vm: vm.clone(),
                caps: caps.clone(),
                memfd,
                ram_size: ram.size(),
                control: control.clone(),
                devices: devices.clone(),
                transports: api_devices
                    .iter()
                    .map(|d| (d.name.clone(), d.transport.clone()))
                    .collect(),
                cfg: cfg.clone(),
                vhost: vhost_devices.clone(),
                regions: ram.regions(),
                ram_pages: ram.pages(),
                exit: exit.clone(),
                progress: Arc::default(),
            });
            // a restored VM's guest has the DSDT of the vmm that booted it
            let hotplug = restore.is_none().then(|| {
                Arc::new(crate::hotplug::Hotplug::new(
                    devices.clone(),
                    router.clone(),
                    control.clone(),
                    ram.memory().clone(),
                    crate::config::device_ids(&cfg.devices),
                    vcpu_hotplug.clone(),
                ))
            });
            let ctx = ApiContext {
                cfg: cfg.clone(),
                ram_pages: ram.pages(),
                started: std::time::Instant::now(),
                control: control.clone(),
                exit: exit.clone(),
                ged,
                devices: api_devices,
                snapshot: snapshot.map(Arc::new),
                hotplug,
            };
            api = Some((path.clone(), ctx));
        }
        let mut vm = Vm {
            vm,
            ram,
            cfg: cfg.clone(),
            console,
            exit,
            devices,
            control,
            power_on,
            vcpu_threads: Vec::new(),
            vcpu_hotplug,
        };
        vm.spawn_vcpus(vcpus)?;
        // the API last: whatever it is asked (a pause, a snapshot) finds every vCPU running
        if let Some((path, ctx)) = api {
            crate::api::server::spawn(&path, Arc::new(ctx))?;
        }
        tracing::info!(name = %cfg.name, cpus = cfg.cpus, "VM started");
        Ok(vm)
    }

    /// A migration's destination, once the source has committed: the VM is this process's
    /// (the API may pause and resume it), and with `run` its vCPUs start.
    pub fn take_over(&self, run: bool) -> Result<(), crate::run_control::RunError> {
        self.control.end_snapshot();
        if run {
            self.control.resume()?;
        }
        Ok(())
    }

    fn spawn_vcpus(&mut self, vcpus: Vec<kvm_ioctls::VcpuFd>) -> Result<(), VmError> {
        use std::os::unix::thread::JoinHandleExt;
        for (id, vcpu) in vcpus.into_iter().enumerate() {
            let thread = vcpu::spawn(
                id as u8,
                vcpu,
                self.devices.clone(),
                self.control.clone(),
                self.cfg.seccomp,
                Arc::default(),
            );
            self.vcpu_threads.push(thread.map_err(VmError::Thread)?);
        }
        let ids = self.vcpu_threads.iter().map(|t| t.as_pthread_t()).collect();
        self.control.set_threads(ids);
        Ok(())
    }

    /// Run until the guest powers off, crashes, or a stop signal arrives (and, with
    /// `on_reboot: exit`, until it reboots); then stop the vCPU threads (bounded) and restore
    /// the terminal.
    pub fn run(mut self) -> VmExit {
        loop {
            let exit = self.exit.wait();
            // no pause may kick these threads once they start ending
            self.control.set_threads(Vec::new());
            let threads = std::mem::take(&mut self.vcpu_threads);
            let vcpus = vcpu::stop_all(threads, std::time::Duration::from_secs(2));
            self.vcpu_hotplug.stop_all();
            if exit == VmExit::Reset && self.cfg.on_reboot == OnReboot::Restart {
                match vcpus {
                    Some(vcpus) => match self.reboot(vcpus) {
                        Ok(true) => continue,
                        Ok(false) => {} // a stop request came in during the reset
                        Err(e) => eprintln!("splitvisor: error: cannot reboot in place: {e}"),
                    },
                    None => {
                        eprintln!("splitvisor: error: cannot reboot in place: a vCPU did not stop")
                    }
                }
            }
            self.console.restore_terminal();
            if self.exit.wait() != VmExit::Migrated {
                // (after a migration the destination may serve the same paths now)
                self.remove_sockets();
            }
            return self.exit.wait();
        }
    }

    /// The sockets this process serves go with it.
    fn remove_sockets(&self) {
        if let Some(path) = &self.cfg.api_socket {
            let _ = std::fs::remove_file(path);
        }
        if let SerialConfig::Socket(path) = &self.cfg.serial {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Reset the machine to its power-on state and boot the kernel again. Devices first, so
    /// that the backends stop using guest memory (GET_VRING_BASE) before the kernel is
    /// reloaded into it. False if another exit was requested meanwhile.
    fn reboot(&mut self, vcpus: Vec<kvm_ioctls::VcpuFd>) -> Result<bool, VmError> {
        tracing::info!(name = %self.cfg.name, "guest rebooted: resetting the VM");
        self.devices.pci.power_on_reset();
        self.devices.ged.power_on_reset();
        self.devices.hotplug.power_on_reset();
        // back to the boot vCPUs (the added ones are parked: `vm.resize` adds them again)
        self.devices.cpu_hotplug.power_on_reset();
        let kernel = boot::check_inputs(&self.cfg)?;
        let entry = boot::load(&self.ram, &self.cfg, kernel)?;
        self.power_on.restore_platform(&self.vm)?;
        for (id, vcpu) in vcpus.iter().enumerate() {
            self.power_on.restore_vcpu(id, vcpu)?;
            cpu::configure(
                vcpu,
                id as u8,
                self.ram.memory(),
                (id == 0).then_some(entry),
            )?;
        }
        if !self.exit.restart() {
            return Ok(false);
        }
        self.spawn_vcpus(vcpus)?;
        Ok(true)
    }
}
