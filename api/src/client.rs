//! A blocking client of the API (for `svctl` and tests): one HTTP/1.1 request per call over
//! the Unix socket, through hyper on the client's own current-thread runtime.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the vmm API at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the vmm API at {path} did not answer within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("HTTP to the vmm API failed: {0}")]
    Http(String),
    /// The vmm answered with an error status and this message.
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error("the vmm API answered with a body we cannot read: {0}")]
    Body(String),
}

pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
    /// Built once (callers poll, e.g. `svctl start` waiting for `vmm.ping`); None if the OS
    /// refused, reported at the first request.
    runtime: Option<tokio::runtime::Runtime>,
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>) -> ApiClient {
        ApiClient {
            socket: socket.into(),
            timeout: Duration::from_secs(40),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok(),
        }
    }

    /// The same client, waiting at most `timeout` for each answer (a snapshot of a large
    /// guest takes longer than the default 40 s).
    pub fn with_timeout(mut self, timeout: Duration) -> ApiClient {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET` an endpoint (`"vm.info"`, …) and decode the JSON answer.
    pub fn get<T: DeserializeOwned>(&self, endpoint: &str) -> Result<T, ClientError> {
        let body = self.request("GET", endpoint, None)?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Body(e.to_string()))
    }

    /// `PUT` an endpoint with an optional JSON body; the answer's JSON (or null if none).
    pub fn put(&self, endpoint: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let bytes = self.request("PUT", endpoint, body.map(Value::to_string))?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Body(e.to_string()))
    }

    fn request(
        &self,
        method: &str,
        endpoint: &str,
        body: Option<String>,
    ) -> Result<Bytes, ClientError> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| ClientError::Http("cannot create a tokio runtime".into()))?;
        let fut = self.send(method, endpoint, body);
        match runtime.block_on(async { tokio::time::timeout(self.timeout, fut).await }) {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                path: self.socket.clone(),
                timeout: self.timeout,
            }),
        }
    }

    async fn send(
        &self,
        method: &str,
        endpoint: &str,
        body: Option<String>,
    ) -> Result<Bytes, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let http = |e: hyper::Error| ClientError::Http(e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}/{endpoint}", crate::PREFIX))
            .header("host", "localhost");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let res = sender.send_request(req).await.map_err(http)?;
        let status = res.status();
        let bytes = res.into_body().collect().await.map_err(http)?.to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<crate::types::ApiError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Api {
                status: status.as_u16(),
                message,
            });
        }
        Ok(bytes)
    }
}
