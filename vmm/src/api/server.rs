//! The API server: an axum router on a current-thread tokio runtime, on a thread of its own.
//! Handlers only read shared state or call into [`RunControl`], [`Ged`] and
//! [`ExitHandle`]; nothing here touches a vCPU or a device's data path.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{backend_proxy, hotplug};
use crate::config::{DeviceConfig, VmConfig};
use crate::devices::ged::Ged;
use crate::exit::{ExitHandle, VmExit};
use crate::run_control::RunControl;
use crate::virtio::pci::VirtioPciDevice;
use crate::virtio::STATUS_DEVICE_NEEDS_RESET;
use ::api::types::{
    ApiError, BackendLink, DeviceCounters, DeviceInfo, InterruptUse, RebootRequest, VmInfo, VmState,
};

/// What the handlers can see of the VM.
pub struct ApiContext {
    pub cfg: VmConfig,
    /// The pages behind guest RAM, as [`crate::memory::backing`] chose them.
    pub ram_pages: api::types::RamPages,
    pub started: Instant,
    pub control: Arc<RunControl>,
    pub exit: Arc<ExitHandle>,
    /// The Generic Event Device: the power button, hotplug events.
    pub ged: Arc<Ged>,
    pub devices: Vec<ApiDevice>,
    /// What `vm.snapshot` reads the VM through (`None`: an API without a VM behind it, the
    /// fuzz harness's).
    pub snapshot: Option<Arc<crate::snapshot::save::Handles>>,
    /// Devices added and removed while the VM runs (`None`: a restored or migrated VM, or the
    /// fuzz harness's API without a VM).
    pub hotplug: Option<Arc<crate::hotplug::Hotplug>>,
}

pub struct ApiDevice {
    pub name: String,
    pub cfg: DeviceConfig,
    pub transport: Arc<Mutex<VirtioPciDevice>>,
    /// The backend connection's status (None: no backend was reachable at start).
    pub link: Option<Arc<crate::vhost_user::reconnect::LinkStatus>>,
    /// The transport's exit counters (atomics: read without its lock).
    pub counters: Arc<crate::virtio::pci::Counters>,
    /// The device status last read, reported while a vCPU holds the transport.
    pub last_status: std::sync::atomic::AtomicU8,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("cannot serve the API")]
    Bind(#[source] ::api::unix_socket::BindError),
    #[error("cannot serve the API on {path}")]
    Listener {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the API thread: {0}")]
    Thread(#[source] std::io::Error),
}

pub(super) type Ctx = State<Arc<ApiContext>>;

pub(super) fn fail(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(ApiError { error: msg.into() })).into_response()
}

/// Bind `path` (a stale socket is replaced, mode 0600) and serve the API on a new thread.
pub fn spawn(path: &Path, ctx: Arc<ApiContext>) -> Result<(), ApiServerError> {
    serve_on_thread(path, "api", router(ctx))
}

/// Bind `path` (as [`spawn`] does) and serve `app` on a thread named `thread`.
pub fn serve_on_thread(path: &Path, thread: &str, app: Router) -> Result<(), ApiServerError> {
    let std_listener = ::api::unix_socket::bind(path, Some(0o600)).map_err(ApiServerError::Bind)?;
    std_listener
        .set_nonblocking(true)
        .map_err(|source| ApiServerError::Listener {
            path: path.to_path_buf(),
            source,
        })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // its blocking pool's threads (`run_blocking`): see crate::threads
        .thread_stack_size(crate::threads::STACK_SIZE)
        .build()
        .map_err(ApiServerError::Thread)?;
    crate::threads::builder(thread)
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::UnixListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!("API socket: {e}"),
                };
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!("API server stopped: {e}");
                }
            })
        })
        .map_err(ApiServerError::Thread)?;
    Ok(())
}

pub fn router(ctx: Arc<ApiContext>) -> Router {
    let p = |s: &str| format!("{}/{s}", ::api::PREFIX);
    Router::new()
        .route(&p("vmm.ping"), get(ping))
        .route(&p("vm.info"), get(info))
        .route(&p("vm.config"), get(config))
        .route(&p("vm.pause"), put(pause))
        .route(&p("vm.resume"), put(resume))
        .route(&p("vm.shutdown"), put(shutdown))
        .route(&p("vm.reboot"), put(reboot))
        .route(&p("vm.stop"), put(stop))
        .route(
            &p("vm.balloon"),
            get(backend_proxy::balloon_info).put(backend_proxy::balloon_set),
        )
        .route(&p("vm.balloon-stats"), get(backend_proxy::balloon_stats))
        .route(&p("vm.resize-disk"), put(backend_proxy::resize_disk))
        .route(&p("vm.add-device"), put(hotplug::add_device))
        .route(&p("vm.remove-device"), put(hotplug::remove_device))
        .route(&p("vm.resize"), put(hotplug::resize))
        .route(&p("vm.snapshot"), put(snapshot))
        .route(&p("vm.send-migration"), put(send_migration))
        .route(&p("vm.cancel-migration"), put(cancel_migration))
        .route(&p("vm.migration-info"), get(migration_info))
        .fallback(|| async { fail(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(ctx)
}

async fn ping() -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION"), "pid": std::process::id()}))
}

/// How long `vm.info` waits for a device a vCPU is busy with (e.g. a call to a backend that
/// does not answer, bounded by the frontend's call timeout) before it reports the device's
/// last known status instead: the API never waits on a backend.
const DEVICE_LOCK_WAIT: Duration = Duration::from_millis(200);

fn device_info(d: &ApiDevice) -> DeviceInfo {
    let waited = Instant::now();
    let transport = loop {
        match d.transport.try_lock() {
            Ok(t) => break Some(t),
            Err(std::sync::TryLockError::Poisoned(e)) => break Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if waited.elapsed() < DEVICE_LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(std::sync::TryLockError::WouldBlock) => break None,
        }
    };
    let status = match &transport {
        Some(t) => {
            d.last_status.store(t.status(), Ordering::Relaxed);
            t.status()
        }
        None => d.last_status.load(Ordering::Relaxed),
    };
    let c = d.counters.clone();
    drop(transport);
    DeviceInfo {
        name: d.name.clone(),
        virtio_type: d.cfg.virtio_type,
        socket: d.cfg.socket.clone(),
        queues: d.cfg.queues,
        status,
        needs_reset: status & STATUS_DEVICE_NEEDS_RESET != 0,
        counters: DeviceCounters {
            bar_exits: c.bar_exits.load(Ordering::Relaxed),
            notify_exits: c.notify_exits.load(Ordering::Relaxed),
            config_reads: c.config_reads.load(Ordering::Relaxed),
            activations: c.activations.load(Ordering::Relaxed),
        },
        backend: d.link.as_ref().map(|l| BackendLink {
            connected: l.is_up(),
            reconnects: l.reconnects(),
            last_outage_ms: l.last_outage().map(|d| d.as_millis() as u64),
        }),
    }
}

async fn info(State(ctx): Ctx) -> Json<VmInfo> {
    Json(VmInfo {
        name: ctx.cfg.name.clone(),
        state: if ctx.control.paused() {
            VmState::Paused
        } else {
            VmState::Running
        },
        pid: std::process::id(),
        uptime_ms: ctx.started.elapsed().as_millis() as u64,
        cpus: ctx
            .hotplug
            .as_ref()
            .map_or(ctx.cfg.cpus, |h| h.vcpu_count()),
        max_cpus: ctx.cfg.max_vcpus(),
        memory_bytes: ctx.cfg.memory.size.0,
        ram_pages: ctx.ram_pages,
        power_button_presses: ctx.ged.presses(),
        devices: ctx
            .devices
            .iter()
            .map(device_info)
            .chain(
                ctx.hotplug
                    .iter()
                    .flat_map(|h| h.api_devices())
                    .map(|d| device_info(&d)),
            )
            .collect(),
        config: ctx.cfg.clone(),
        interrupts: ctx.hotplug.as_ref().map(|h| {
            let (gsis, msi_routes) = h.interrupts();
            InterruptUse { gsis, msi_routes }
        }),
    })
}

async fn config(State(ctx): Ctx) -> Json<VmConfig> {
    Json(ctx.cfg.clone())
}

/// Pausing waits (bounded) for every vCPU to stop: off the runtime thread.
async fn pause(State(ctx): Ctx) -> Response {
    run_blocking(move || ctx.control.pause()).await
}

async fn resume(State(ctx): Ctx) -> Response {
    run_blocking(move || ctx.control.resume()).await
}

async fn run_blocking(
    f: impl FnOnce() -> Result<(), crate::run_control::RunError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => fail(StatusCode::CONFLICT, e.to_string()),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Snapshot the VM into `destination_url` (running or paused; left as it was). Blocking work
/// (stopping the rings, writing the RAM): off the runtime thread.
async fn snapshot(
    State(ctx): Ctx,
    body: Result<Json<::api::types::VmSnapshotConfig>, axum::extract::rejection::JsonRejection>,
) -> Response {
    use crate::snapshot::save::{self, SnapshotError};
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if let Some(r) = refuse_with_added_devices(&ctx, "snapshotted") {
        return r;
    }
    let dir = match save::dir_of_url(&req.destination_url) {
        Ok(d) => d,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let Some(handles) = ctx.snapshot.clone() else {
        return fail(
            StatusCode::CONFLICT,
            "this API serves no VM to snapshot, or its RAM is private (--memory shared=off)",
        );
    };
    match tokio::task::spawn_blocking(move || save::save(&handles, &dir)).await {
        Ok(Ok(_)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e @ (SnapshotError::Exists(_) | SnapshotError::Url(_)))) => {
            fail(StatusCode::BAD_REQUEST, e.to_string())
        }
        Ok(Err(e)) => fail(StatusCode::CONFLICT, crate::error_chain(&e)),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A VM with devices added while it runs is not snapshotted or migrated yet (its snapshot
/// would not name them): 409.
fn refuse_with_added_devices(ctx: &ApiContext, what: &str) -> Option<Response> {
    let added = ctx.hotplug.as_ref().is_some_and(|h| h.has_added());
    added.then(|| {
        let why = format!(
            "devices or vCPUs were added to this VM while it runs; it cannot be {what} until \
             they are removed"
        );
        fail(StatusCode::CONFLICT, why)
    })
}

/// Migrate the VM to the vmm waiting at `destination_url`; answered once the VM runs there,
/// then this vmm exits (status 6). Blocking work: off the runtime thread.
async fn send_migration(
    State(ctx): Ctx,
    body: Result<Json<::api::types::VmSendMigrationData>, axum::extract::rejection::JsonRejection>,
) -> Response {
    use crate::migration::send::{self, SendRequest};
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let url = match req.destination_url.parse() {
        Ok(u) => u,
        Err(e) => return fail(StatusCode::BAD_REQUEST, format!("{e}")),
    };
    if let Some(r) = refuse_with_added_devices(&ctx, "migrated") {
        return r;
    }
    let Some(handles) = ctx.snapshot.clone() else {
        return fail(
            StatusCode::CONFLICT,
            "this API serves no VM to migrate, or its RAM is private (--memory shared=off)",
        );
    };
    let req = SendRequest {
        url,
        local: req.local,
        downtime: Duration::from_millis(req.downtime_ms.unwrap_or(300)),
        metadata: req.metadata,
    };
    match tokio::task::spawn_blocking(move || send::send(&handles, &req)).await {
        Ok(Ok(report)) => {
            let exit = ctx.exit.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                exit.request(VmExit::Migrated);
            });
            Json(report).into_response()
        }
        Ok(Err(e)) => fail(StatusCode::CONFLICT, crate::error_chain(&e)),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Stop the running migration: the VM carries on here (409 if none runs, or it is past the
/// point where it can be undone).
async fn cancel_migration(State(ctx): Ctx) -> Response {
    match &ctx.snapshot {
        Some(h) if h.progress.request_cancel() => StatusCode::NO_CONTENT.into_response(),
        _ => fail(StatusCode::CONFLICT, "no migration is running"),
    }
}

/// The running (or last) migration's progress.
async fn migration_info(State(ctx): Ctx) -> Response {
    match &ctx.snapshot {
        Some(h) => Json(h.progress.info()).into_response(),
        None => Json(::api::types::MigrationInfo {
            phase: "none".into(),
            ..Default::default()
        })
        .into_response(),
    }
}

/// Graceful: press the ACPI power button; the guest powers off by itself (or not).
async fn shutdown(State(ctx): Ctx) -> Response {
    if ctx.control.paused() {
        return fail(
            StatusCode::CONFLICT,
            "the VM is paused: resume it first, a paused guest cannot see the power button",
        );
    }
    // a shutdown asked after an ACPI reboot: the power-off is one
    ctx.exit.set_power_off_reboots(false);
    match ctx.ged.press() {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `PUT vm.reboot`: reset the VM at once and boot it again in place (Cloud Hypervisor's
/// `ch-remote reboot`). `{"acpi": true}` (ours): press the power button instead and boot
/// the guest again once it has powered off (a clean reboot, libvirt's for a guest without
/// an agent). With `--on-reboot exit` the vmm exits (status 3) instead of booting again.
async fn reboot(State(ctx): Ctx, body: axum::body::Bytes) -> Response {
    let req: RebootRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RebootRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return fail(StatusCode::BAD_REQUEST, format!("invalid body: {e}")),
        }
    };
    if ctx.control.paused() {
        return fail(StatusCode::CONFLICT, "the VM is paused: resume it first");
    }
    if !req.acpi {
        ctx.exit.request(VmExit::Reset);
        return StatusCode::NO_CONTENT.into_response();
    }
    ctx.exit.set_power_off_reboots(true);
    match ctx.ged.press() {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            ctx.exit.set_power_off_reboots(false);
            fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// Hard stop: the vmm stops the vCPUs and exits (status 5) right after answering.
async fn stop(State(ctx): Ctx) -> Response {
    let exit = ctx.exit.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        exit.request(VmExit::Stopped);
    });
    StatusCode::NO_CONTENT.into_response()
}
