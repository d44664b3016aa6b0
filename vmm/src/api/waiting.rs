//! A vmm started with only `--api-socket` has no VM yet. It answers `vmm.ping` and
//! `vmm.shutdown`, and waits for `PUT /api/v1/vm.restore {"source_url": "file:///DIR"}`
//! (Cloud Hypervisor's body): the main thread then starts the VM from that snapshot as
//! `--restore` would (paused unless `"resume": true`, as Cloud Hypervisor does), and the
//! request is answered once the VM is built. A snapshot that cannot be read is refused (400)
//! and the vmm keeps waiting; a VM that fails to build ends the process after the answer.
//! `PUT /api/v1/vm.receive-migration {"receiver_url": "tcp:ADDR:PORT"|"unix:PATH"}` (Cloud
//! Hypervisor's body) waits for a migration there instead, as `--incoming` does, and is
//! answered once the VM runs here (a bad URL: 400, still waiting; a failed migration: 500,
//! the process ends).
//!
//! With `"await_devices": true` (ours) the vmm waits, once the source has let go of its
//! backends, for `PUT /api/v1/vm.migration-devices` naming the sockets of the backends
//! started here meanwhile (a manager learns what to start from `GET vm.migration-info`:
//! the source's `metadata`, and the phase `released`); it is answered once they are
//! taken. Until the VM runs, `vm.migration-info` shows the incoming migration.
//!
//! The VM's own API server binds the same path: the main thread unlinks this server's socket
//! first, so the request in flight is answered on its connection while new ones reach the VM.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::oneshot;

use super::server::ApiServerError;
use ::api::types::{ApiError, MigrationDevices, RestoreConfig, VmReceiveMigrationData};

use crate::migration::Progress;
use std::sync::Arc;

/// What the waiting API asks of the main thread.
pub enum Request {
    /// Start the VM from this snapshot; the outcome goes back through `reply`.
    Restore {
        config: RestoreConfig,
        reply: oneshot::Sender<Outcome>,
    },
    /// Receive a migration on this URL; the outcome goes back through `reply`.
    Receive {
        config: VmReceiveMigrationData,
        reply: oneshot::Sender<Outcome>,
    },
    /// Where this host's backends listen (a migration told to `await_devices`).
    Devices {
        devices: MigrationDevices,
        reply: oneshot::Sender<Outcome>,
    },
    /// `vmm.shutdown`: end the process.
    Shutdown,
}

/// How a `vm.restore` ended.
pub enum Outcome {
    Started,
    /// The snapshot was refused; the vmm still waits.
    Refused(String),
    /// Building the VM failed; the vmm exits.
    Failed(String),
}

fn fail(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(ApiError { error: msg.into() })).into_response()
}

/// Bind `path` (mode 0600) and serve the waiting API on a thread of its own; the requests
/// come out of the returned channel. `progress` is what `vm.migration-info` shows.
pub fn spawn(
    path: &Path,
    progress: Arc<Progress>,
) -> Result<mpsc::Receiver<Request>, ApiServerError> {
    let (tx, rx) = mpsc::channel();
    super::server::serve_on_thread(path, "api-waiting", router(tx, progress))?;
    Ok(rx)
}

fn router(tx: mpsc::Sender<Request>, progress: Arc<Progress>) -> Router {
    let p = |s: &str| format!("{}/{s}", ::api::PREFIX);
    let restore_tx = tx.clone();
    let receive_tx = tx.clone();
    let devices_tx = tx.clone();
    Router::new()
        .route(
            &p("vm.migration-info"),
            get(move || {
                let info = progress.info();
                async move { Json(info) }
            }),
        )
        .route(
            &p("vm.migration-devices"),
            put(move |body| devices(devices_tx.clone(), body)),
        )
        .route(
            &p("vmm.ping"),
            get(|| async {
                Json(json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "pid": std::process::id(),
                    "vm": false,
                }))
            }),
        )
        .route(
            &p("vmm.shutdown"),
            put(move || async move {
                let _ = tx.send(Request::Shutdown);
                StatusCode::NO_CONTENT.into_response()
            }),
        )
        .route(
            &p("vm.restore"),
            put(move |body| restore(restore_tx.clone(), body)),
        )
        .route(
            &p("vm.receive-migration"),
            put(move |body| receive(receive_tx.clone(), body)),
        )
        .fallback(|| async {
            fail(
                StatusCode::NOT_FOUND,
                "no VM yet: this vmm waits for vm.restore (or was given no endpoint like this)",
            )
        })
}

async fn restore(
    tx: mpsc::Sender<Request>,
    body: Result<Json<RestoreConfig>, axum::extract::rejection::JsonRejection>,
) -> Response {
    forward(tx, body, |config, reply| Request::Restore { config, reply }).await
}

async fn receive(
    tx: mpsc::Sender<Request>,
    body: Result<Json<VmReceiveMigrationData>, axum::extract::rejection::JsonRejection>,
) -> Response {
    forward(tx, body, |config, reply| Request::Receive { config, reply }).await
}

async fn devices(
    tx: mpsc::Sender<Request>,
    body: Result<Json<MigrationDevices>, axum::extract::rejection::JsonRejection>,
) -> Response {
    forward(tx, body, |devices, reply| Request::Devices {
        devices,
        reply,
    })
    .await
}

/// Hand the request the body makes to the main thread and answer with its outcome.
async fn forward<T>(
    tx: mpsc::Sender<Request>,
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
    request: impl FnOnce(T, oneshot::Sender<Outcome>) -> Request,
) -> Response {
    let Json(config) = match body {
        Ok(b) => b,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let (reply, outcome) = oneshot::channel();
    if tx.send(request(config, reply)).is_err() {
        return fail(
            StatusCode::CONFLICT,
            "the vmm is no longer waiting for a VM",
        );
    }
    answer(outcome).await
}

async fn answer(outcome: oneshot::Receiver<Outcome>) -> Response {
    match outcome.await {
        Ok(Outcome::Started) => StatusCode::NO_CONTENT.into_response(),
        Ok(Outcome::Refused(e)) => fail(StatusCode::BAD_REQUEST, e),
        Ok(Outcome::Failed(e)) => fail(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(_) => fail(StatusCode::CONFLICT, "another request started a VM first"),
    }
}

/// Make the waiting server unreachable by name (its open connections stay answered), so the
/// VM's API server can bind `path`.
pub fn release(path: &PathBuf) {
    let _ = std::fs::remove_file(path);
}
