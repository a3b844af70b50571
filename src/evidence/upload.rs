//! The image upload endpoint: `POST /xray/{device}/{scan_id}/{view}` with the image as body.
//!
//! For X-ray workstations that push their images instead of writing to a spool. It has its
//! own listener, apart from the staff view, on purpose: the view is read-only by
//! construction and may face a wider network; this endpoint writes evidence and faces the
//! X-ray workstation only. A bearer token (stored as its SHA-256) is required whenever it is
//! configured, and configuration refuses an address beyond loopback without one.
//!
//! Answers: 201 `{sha256, bytes, error}` once the original is durably kept and its records
//! handed on (a corrupt image is kept too, and answered 201 with its `error`); 401 without
//! the token; 404 for an unknown device; 400 for a bad scan id or view; 415 unless the body
//! is `image/jpeg` or `image/png`; 413 beyond [`super::MAX_IMAGE_BYTES`]; 503 when the
//! original cannot be kept (try again), or when the gateway shuts down while the body is
//! still arriving; 408 when the body takes longer than [`BODY_TIMEOUT`]; 429 after too many
//! wrong tokens from one address in a minute (see [`crate::view::throttle`]). Sending the
//! same image again is harmless. Connections are budgeted like the staff view's
//! ([`crate::view::serve`]): `upload.max_connections` at once, a header timeout, an idle
//! timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bondline_devices::contract::ImageSource;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::ingest::{Incoming, IngestError, Ingestor};
use super::process::{check_scan_id, check_view};
use crate::view::auth::Credentials;

/// How long a body may take to arrive; a stalled upload must not hold a connection, and with
/// it the journal's sink, forever.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// The endpoint's connections: a workstation sends one scan's views at a time over a few
/// connections; more than this is a misbehaving client (see [`crate::view::serve`]).
pub const DEFAULT_MAX_CONNECTIONS: usize = 32;
/// Time for a request head, and how long an idle keep-alive connection stays open.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed tokens per source address and minute before it is answered 429.
const LOGIN_FAILURES_PER_MINUTE: u32 = 10;

#[derive(Clone)]
struct Shared {
    ingestor: Ingestor,
    credentials: Credentials,
    throttle: Arc<crate::view::throttle::Throttle>,
    max_bytes: usize,
    /// A body still arriving at shutdown is refused (503) so the server can stop.
    shutdown: CancellationToken,
    /// Bodies read into memory at once, at most: each may be up to `max_bytes`.
    bodies: Arc<tokio::sync::Semaphore>,
}

/// Uploads whose bodies are read at once; more wait for a turn (a workstation sends one
/// scan's views at a time, so this only bounds memory against a misbehaving client).
const BODIES_AT_ONCE: usize = 4;

/// The 201 answer.
#[derive(Debug, Serialize)]
struct Accepted {
    sha256: String,
    bytes: u64,
    error: Option<String>,
}

/// The endpoint's routes; bodies above `max_bytes` are refused with 413. A body still
/// arriving when `shutdown` fires is refused with 503, so the server stops promptly.
pub fn router(
    ingestor: Ingestor,
    credentials: Credentials,
    max_bytes: usize,
    shutdown: CancellationToken,
) -> Router {
    let throttle = crate::view::throttle::Throttle::new(
        LOGIN_FAILURES_PER_MINUTE,
        crate::metrics::HttpServer::Upload,
        ingestor.metrics(),
    );
    let shared = Shared {
        ingestor,
        credentials,
        throttle: Arc::new(throttle),
        max_bytes,
        shutdown,
        bodies: Arc::new(tokio::sync::Semaphore::new(BODIES_AT_ONCE)),
    };
    Router::new()
        .route("/xray/:device/:scan_id/:view", post(upload))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_bytes))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ))
        .with_state(shared)
}

/// Serves on `listener` until `shutdown` with `max_connections` at most (more wait in the
/// listen queue); requests in progress are finished. The body of an upload has
/// [`BODY_TIMEOUT`]; a connection that moves no byte for that long is closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    max_connections: usize,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
) {
    let budget = crate::view::serve::Budget {
        max_connections,
        header_timeout: HEADER_TIMEOUT,
        idle_timeout: BODY_TIMEOUT,
    };
    crate::view::serve::serve(
        listener,
        app,
        budget,
        None,
        metrics,
        crate::metrics::HttpServer::Upload,
        shutdown,
    )
    .await;
}

/// Binds `addr` now, so a taken port is reported at start. Call within a tokio runtime.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let std = std::net::TcpListener::bind(addr)?;
    std.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(std)
}

fn error(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": text.into() }))).into_response()
}

async fn require_token(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    use crate::view::auth::{gate, Gate};
    match gate(&shared.credentials, &shared.throttle, &request) {
        Gate::Pass => return next.run(request).await,
        Gate::Throttled(wait) => return crate::view::throttled(wait),
        Gate::Refused => {}
    }
    let mut r = error(StatusCode::UNAUTHORIZED, "a bearer token is required");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"bondline-xray\""),
    );
    r
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint; images go to POST /xray/{device}/{scan_id}/{view} (docs/xray.md)",
    )
}

async fn upload(
    State(s): State<Shared>,
    Path((device, scan_id, view)): Path<(String, String, String)>,
    request: Request,
) -> Response {
    let received = Instant::now();
    if !s.ingestor.knows(&device) {
        return error(
            StatusCode::NOT_FOUND,
            format!("no X-ray device named `{device}` on this gateway"),
        );
    }
    let scan_id = match check_scan_id(&scan_id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = check_view(&view) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    let ext = match content_type.as_deref() {
        Some("image/jpeg") => "jpg",
        Some("image/png") => "png",
        _ => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be an image with Content-Type image/jpeg or image/png",
            )
        }
    };
    // Refused before a byte of the body is read when the client says how much is coming.
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > s.max_bytes as u64) {
        return too_large(s.max_bytes);
    }
    let Ok(_turn) = s.bodies.clone().acquire_owned().await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is shutting down; send the image again",
        );
    };
    let read = tokio::select! {
        r = tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(request, &())) => r,
        _ = s.shutdown.cancelled() => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "the gateway is shutting down; send the image again")
        }
    };
    let body = match read {
        Ok(Ok(b)) => b,
        Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return too_large(s.max_bytes)
        }
        Ok(Err(rejection)) => return error(rejection.status(), rejection.body_text()),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
        }
    };
    let image = Incoming {
        file_name: format!("{scan_id}_{view}.{ext}"),
        device,
        scan_id,
        view,
        source: ImageSource::Upload,
        bytes: body.into(),
        received,
    };
    // Its own task: a client that hangs up does not cut an image off between being kept and
    // being handed to its line.
    let ingestor = s.ingestor.clone();
    let done = tokio::spawn(async move { ingestor.ingest(image).await }).await;
    match done {
        Ok(Ok(done)) => (
            StatusCode::CREATED,
            Json(Accepted {
                sha256: done.sha256,
                bytes: done.bytes,
                error: done.error,
            }),
        )
            .into_response(),
        Ok(Err(e @ IngestError::UnknownDevice(_))) => error(StatusCode::NOT_FOUND, e.to_string()),
        Ok(Err(e)) => {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            r
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn too_large(max: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("an image may have at most {max} bytes"),
    )
}
