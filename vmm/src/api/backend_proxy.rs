//! The endpoints a backend answers: the vmm passes them to the backend's control socket
//! (`control=PATH` in its `--device`) and answers with its reply. The balloon's target and
//! statistics, a disk's online resize.

use std::path::PathBuf;
use std::time::Duration;

use ::api::backend::control_request;
use ::api::types::{BalloonTarget, DiskResize};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::server::{fail, ApiContext, Ctx};
use crate::virtio::{TYPE_BALLOON, TYPE_BLOCK};

fn balloon_control(ctx: &ApiContext) -> Result<PathBuf, Box<Response>> {
    let dev = ctx
        .cfg
        .devices
        .iter()
        .find(|d| d.virtio_type == TYPE_BALLOON);
    match dev {
        None => Err(Box::new(fail(
            StatusCode::NOT_FOUND,
            "this VM has no balloon device",
        ))),
        Some(d) => d.control.clone().ok_or_else(|| {
            Box::new(fail(
                StatusCode::NOT_FOUND,
                "the balloon device has no control socket (control=PATH in its --device)",
            ))
        }),
    }
}

async fn proxy(path: PathBuf, req: Value, timeout: Duration) -> Response {
    proxy_for("balloon", "balloon", path, req, timeout).await
}

/// Pass `req` to the control socket at `path` of a `backend` (its kind: `blk`, `balloon`)
/// and answer with its reply; its errors are named after `device`.
async fn proxy_for(
    backend: &'static str,
    device: &str,
    path: PathBuf,
    req: Value,
    timeout: Duration,
) -> Response {
    let reply =
        tokio::task::spawn_blocking(move || control_request(backend, &path, &req, timeout)).await;
    match reply {
        Ok(Ok(v)) if v.get("ok") == Some(&Value::Bool(true)) => Json(v).into_response(),
        Ok(Ok(v)) => {
            let msg = v.get("error").and_then(Value::as_str).unwrap_or("failed");
            fail(StatusCode::BAD_REQUEST, format!("{device}: {msg}"))
        }
        Ok(Err(e)) => fail(StatusCode::BAD_GATEWAY, e),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub(super) async fn balloon_info(State(ctx): Ctx) -> Response {
    match balloon_control(&ctx) {
        Ok(path) => proxy(path, json!({"op": "info"}), Duration::from_secs(5)).await,
        Err(r) => *r,
    }
}

pub(super) async fn balloon_set(
    State(ctx): Ctx,
    body: Result<Json<BalloonTarget>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(target) = match body {
        Ok(b) => b,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let max = ctx.cfg.memory.size;
    if target.size > max {
        return fail(
            StatusCode::BAD_REQUEST,
            format!(
                "balloon target {} is above the VM's memory ({max})",
                target.size
            ),
        );
    }
    let path = match balloon_control(&ctx) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let req = json!({"op": "set-target", "bytes": target.size.0});
    proxy(path, req, Duration::from_secs(5)).await
}

/// `PUT vm.resize-disk {"id", "size"}`: the disk's backend grows the image (through its
/// control socket) and tells us over its vhost-user channel; we interrupt the guest
/// (config change), whose driver reads the new capacity.
pub(super) async fn resize_disk(
    State(ctx): Ctx,
    body: Result<Json<DiskResize>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e.body_text()),
    };
    // the devices it booted with, then those added since
    let mut ids = ::api::config::device_ids(&ctx.cfg.devices);
    let mut devs = ctx.cfg.devices.clone();
    for d in ctx.hotplug.iter().flat_map(|h| h.api_devices()) {
        ids.push(d.name.clone());
        devs.push(d.cfg.clone());
    }
    let Some(i) = ids.iter().position(|id| *id == req.id) else {
        let msg = format!(
            "the VM has no device {} (its devices: {})",
            req.id,
            ids.join(", ")
        );
        return fail(StatusCode::NOT_FOUND, msg);
    };
    let dev = &devs[i];
    if dev.virtio_type != TYPE_BLOCK {
        return fail(StatusCode::BAD_REQUEST, format!("{} is not a disk", req.id));
    }
    let Some(path) = dev.control.clone() else {
        let msg = format!(
            "{}'s backend has no control socket (control=PATH in its --device, \
             splitvisor-blk --control PATH)",
            req.id
        );
        return fail(StatusCode::CONFLICT, msg);
    };
    let op = json!({"op": "resize", "size": req.size.0});
    let reply = proxy_for("blk", &req.id, path, op, Duration::from_secs(60)).await;
    if reply.status() == StatusCode::OK {
        tracing::info!("{} grown to {}", req.id, req.size);
    }
    reply
}

#[derive(Deserialize)]
pub(super) struct StatsQuery {
    timeout_ms: Option<u64>,
}

pub(super) async fn balloon_stats(State(ctx): Ctx, Query(q): Query<StatsQuery>) -> Response {
    let path = match balloon_control(&ctx) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let timeout_ms = q.timeout_ms.unwrap_or(2000).min(30_000);
    let req = json!({"op": "stats", "timeout_ms": timeout_ms});
    proxy(path, req, Duration::from_millis(timeout_ms + 5000)).await
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A balloon control socket that answers each request with `reply`, sent in pieces of
    /// `chunk` bytes every `pause`.
    fn hostile_balloon(tag: &str, reply: Vec<u8>, chunk: usize, pause: Duration) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-balloon-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            for piece in reply.chunks(chunk) {
                if s.write_all(piece).is_err() {
                    return;
                }
                std::thread::sleep(pause);
            }
        });
        path
    }

    #[test]
    fn a_balloon_backend_cannot_make_the_vmm_read_without_bound() {
        let req = json!({"op": "info"});
        // 1 MiB with no end of line: refused at 64 KiB, not read to the end
        let path = hostile_balloon("long", vec![b'x'; 1 << 20], 1 << 20, Duration::ZERO);
        let err = control_request("balloon", &path, &req, Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("balloon backend (control socket"), "{err}");
        assert!(err.contains("longer than 65536 bytes"), "{err}");
        // a byte every 50 ms: the whole reply has a deadline, not each read
        let path = hostile_balloon("trickle", vec![b'y'; 100], 1, Duration::from_millis(50));
        let start = std::time::Instant::now();
        let err = control_request("balloon", &path, &req, Duration::from_millis(400)).unwrap_err();
        assert!(
            err.contains("did not finish its reply within 400 ms"),
            "{err}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        // an answer that is not JSON
        let path = hostile_balloon("garbage", b"nonsense\n".to_vec(), 64, Duration::ZERO);
        let err = control_request("balloon", &path, &req, Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("answered badly"), "{err}");
    }
}
