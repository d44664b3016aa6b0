//! `vm.add-device` and `vm.remove-device` ([`crate::hotplug`] does the work, off the
//! runtime thread: connecting to a backend and waiting for the guest's eject both block).

use std::sync::Arc;
use std::time::Duration;

use ::api::types::{AddDevice, PciDeviceInfo, RemoveDevice, VmResize};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::server::{fail, ApiContext, Ctx};
use crate::hotplug::{Hotplug, HotplugError};
use crate::vcpu_hotplug::VcpuHotplugError;

/// How long `vm.remove-device` waits for the guest's eject unless told.
const EJECT_WAIT: Duration = Duration::from_secs(10);
/// The longest wait a request may ask for.
const MAX_EJECT_WAIT: Duration = Duration::from_secs(300);

fn status(e: &HotplugError) -> StatusCode {
    match e {
        HotplugError::BadDevice { .. } => StatusCode::BAD_REQUEST,
        HotplugError::NotFound { .. } => StatusCode::NOT_FOUND,
        HotplugError::Conflict(_) | HotplugError::NotEjected { .. } => StatusCode::CONFLICT,
        HotplugError::Backend { .. } => StatusCode::BAD_GATEWAY,
        HotplugError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        HotplugError::Vcpus(e) => match e {
            VcpuHotplugError::OutOfRange { .. } => StatusCode::BAD_REQUEST,
            VcpuHotplugError::NotEjected { .. } => StatusCode::CONFLICT,
            VcpuHotplugError::Add { .. } | VcpuHotplugError::Stuck { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        },
    }
}

/// The request's body and the VM's hotplug, or the answer why not.
fn take<B>(
    ctx: &ApiContext,
    body: Result<Json<B>, JsonRejection>,
) -> Result<(Arc<Hotplug>, B), Box<Response>> {
    let Json(req) = body.map_err(|e| Box::new(fail(StatusCode::BAD_REQUEST, e.body_text())))?;
    let hotplug = ctx.hotplug.clone().ok_or_else(|| {
        Box::new(fail(
            StatusCode::CONFLICT,
            "this VM cannot add or remove devices (it was restored or migrated here)",
        ))
    })?;
    Ok((hotplug, req))
}

pub(super) async fn add_device(
    State(ctx): Ctx,
    body: Result<Json<AddDevice>, JsonRejection>,
) -> Response {
    let (hotplug, req) = match take(&ctx, body) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    blocking(
        move || hotplug.add(&req.device),
        |p| {
            let bdf = p.bdf();
            Json(PciDeviceInfo { id: p.id, bdf }).into_response()
        },
    )
    .await
}

/// Run `work` off the runtime thread; answer with `ok` of its result, or its error.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, HotplugError> + Send + 'static,
    ok: impl FnOnce(T) -> Response,
) -> Response {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(v)) => ok(v),
        Ok(Err(e)) => fail(status(&e), e.to_string()),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub(super) async fn remove_device(
    State(ctx): Ctx,
    body: Result<Json<RemoveDevice>, JsonRejection>,
) -> Response {
    let (hotplug, req) = match take(&ctx, body) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let wait = req
        .timeout_ms
        .map_or(EJECT_WAIT, Duration::from_millis)
        .min(MAX_EJECT_WAIT);
    blocking(
        move || hotplug.remove(&req.id, wait),
        |()| StatusCode::NO_CONTENT.into_response(),
    )
    .await
}

/// `vm.resize`: the vCPUs (`desired_vcpus`, or `cpus`) added or removed until the VM has
/// that many; 204 once it has (each removal waits for the guest's eject).
pub(super) async fn resize(
    State(ctx): Ctx,
    body: Result<Json<VmResize>, JsonRejection>,
) -> Response {
    let (hotplug, req) = match take(&ctx, body) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    if req.desired_ram.is_some() || req.desired_balloon.is_some() {
        return fail(
            StatusCode::BAD_REQUEST,
            "only desired_vcpus can be resized (memory: the balloon, vm.balloon)",
        );
    }
    let Some(want) = req.desired_vcpus.or(req.cpus) else {
        return fail(StatusCode::BAD_REQUEST, "give desired_vcpus");
    };
    let wait = req
        .timeout_ms
        .map_or(EJECT_WAIT, Duration::from_millis)
        .min(MAX_EJECT_WAIT);
    blocking(
        move || hotplug.resize_vcpus(want, wait),
        |_| StatusCode::NO_CONTENT.into_response(),
    )
    .await
}
