//! The customs staff view: an HTTP server inside the daemon, on its tokio runtime. It owns
//! the live lane board, the parcel lookup, device health, the JSON API behind them,
//! `/metrics` (Prometheus), `/healthz` and `/readyz`.
//!
//! Read-only by construction: every route is a GET, and the view holds no handle that could
//! change a lane, a rule or a record. It reads the journal (lookups), the metrics, the rule
//! set in force, and the journal writer's feed of accepted records (the board); a slow or
//! absent browser never slows the decision path, because the feed is a bounded broadcast
//! the writer never waits on. The API is documented in `docs/view.md`.
//!
//! Access: when `[view]` has credentials, everything but `/healthz` and `/readyz` needs a
//! bearer token or basic auth; config load refuses a non-loopback address without them.
//! With `[view] tls` the view speaks HTTPS only ([`tls`]); its certificate is read again on
//! SIGHUP.
//!
//! Every error answer is `{"error": …}`, including the router's 405 and the HTTP parser's
//! 400, 414 and 431 ([`errors`]).

mod api;
mod assets;
pub mod auth;
pub mod barcode;
pub mod board;
mod charts;
mod config;
mod errors;
mod evidence;
pub mod export;
pub mod health;
pub mod i18n;
pub mod prometheus;
pub mod reasons;
mod reports;
pub mod serve;
pub mod shift;
pub mod starting;
pub mod throttle;
pub mod tls;
mod worklist;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bondline_devices::contract::{LaneRole, Record};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::journal::{Journal, JournalError};
use crate::metrics::{HttpServer, Metrics};

pub(crate) use config::parse_hash;
pub use config::{RawView, ViewConfig};

/// Board events buffered per page stream; a page further behind is told to reload its board.
const EVENTS_QUEUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("{0}")]
    BadRequest(String),
    /// A bad request with a stable code: its message is the catalogues' `error.<code>` with
    /// `args`, in the request's language (English in `error`).
    #[error("{}", i18n::Lang::En.catalogue().format(&format!("error.{code}"), &args.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()))]
    Invalid {
        code: &'static str,
        args: Vec<(&'static str, String)>,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Evidence(#[from] evidence::EvidenceError),
    #[error("a lookup task failed: {0}")]
    Task(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl IntoResponse for ViewError {
    fn into_response(self) -> Response {
        let text = match &self {
            ViewError::Invalid { code, args } => errors::ErrorText {
                code,
                args: args.clone(),
            },
            ViewError::BadRequest(detail) => errors::ErrorText {
                code: "bad_request",
                args: vec![("detail", detail.clone())],
            },
            ViewError::Evidence(evidence::EvidenceError::BadHash(_)) => errors::ErrorText {
                code: "bad_hash",
                args: Vec::new(),
            },
            ViewError::Evidence(evidence::EvidenceError::NotKept) => errors::ErrorText {
                code: "not_kept",
                args: Vec::new(),
            },
            ViewError::Evidence(evidence::EvidenceError::Mismatch) => errors::ErrorText {
                code: "evidence_mismatch",
                args: Vec::new(),
            },
            _ => errors::ErrorText {
                code: "internal",
                args: vec![("detail", self.to_string())],
            },
        };
        let status = match &self {
            ViewError::BadRequest(_) | ViewError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ViewError::Evidence(evidence::EvidenceError::BadHash(_)) => StatusCode::BAD_REQUEST,
            ViewError::Evidence(evidence::EvidenceError::NotKept) => StatusCode::NOT_FOUND,
            _ => {
                tracing::error!(error = %self, "staff view request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let mut r = (
            status,
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        r.extensions_mut().insert(text);
        r
    }
}

impl ViewError {
    /// A bad request with a stable code (`error.<code>` in the catalogues).
    pub fn invalid(code: &'static str, args: &[(&'static str, &str)]) -> ViewError {
        ViewError::Invalid {
            code,
            args: args.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        }
    }
}

/// One line as the view shows it.
#[derive(Debug, Clone)]
pub struct LineInfo {
    pub id: String,
    pub scanner: String,
    pub plc: String,
    /// The line's X-ray scanner, if it has one.
    pub xray: Option<String>,
    /// The line's cameras, by name.
    pub cameras: Vec<String>,
    /// Lane numbers and roles, in lane order.
    pub lanes: Vec<(u16, LaneRole)>,
}

/// What the view reads; nothing in it can change the line.
#[derive(Clone)]
pub struct ViewCtx {
    pub gateway: String,
    pub journal: Journal,
    pub metrics: Arc<Metrics>,
    pub rules: crate::policy::SharedRules,
    pub lines: Vec<LineInfo>,
    /// The journal writer's last accepted sequence; closed once the writer has stopped.
    pub accepted: watch::Receiver<u64>,
    /// The daemon's shutdown: streams end and the server stops when it fires.
    pub shutdown: CancellationToken,
    /// Whether unsigned platform messages are accepted (`[trust] allow_unsigned`).
    pub unsigned_allowed: bool,
    /// The clearance table, for `/readyz` while it loads.
    pub table: Arc<crate::rules::ClearanceTable>,
    /// Where X-ray image and camera snapshot originals are kept (`[evidence] dir`).
    pub evidence_dir: std::path::PathBuf,
}

/// Shared state of the handlers.
#[derive(Clone)]
struct Shared {
    ctx: ViewCtx,
    credentials: auth::Credentials,
    board: Arc<Mutex<board::Board>>,
    events: broadcast::Sender<board::Event>,
    lagged: Arc<AtomicU64>,
    started_ms: u64,
    /// Failed logins per source address.
    throttle: Arc<throttle::Throttle>,
    /// One permit per live board stream.
    streams: Arc<tokio::sync::Semaphore>,
    /// Local time zone and shifts for charts and exports.
    shifts: shift::ShiftPlan,
    /// Permits to read evidence originals.
    originals: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    fn board(&self) -> std::sync::MutexGuard<'_, board::Board> {
        self.board.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Binds the view's address, or takes `bound` (the socket [`starting::Starting`] answered
/// on while the daemon started), and serves it until shutdown. `feed` is the journal
/// writer's feed of accepted records, subscribed before the writer started so no record is
/// missed. Returns the bound address (the port is chosen when `listen` has port 0).
pub async fn start(
    config: &ViewConfig,
    ctx: ViewCtx,
    feed: broadcast::Receiver<Record>,
    bound: Option<std::net::TcpListener>,
) -> Result<SocketAddr, ViewError> {
    let bind = |source| ViewError::Bind {
        addr: config.listen,
        source,
    };
    // The socket [`starting::Starting`] answered on while the daemon started, if any.
    let listener = match bound {
        Some(l) => tokio::net::TcpListener::from_std(l).map_err(bind)?,
        None => tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(bind)?,
    };
    let addr = listener.local_addr().map_err(|source| ViewError::Bind {
        addr: config.listen,
        source,
    })?;
    let board = board::Board::new(ctx.lines.iter().map(|l| (l.id.clone(), l.lanes.clone())));
    let shared = Shared {
        credentials: config.credentials.clone(),
        board: Arc::new(Mutex::new(board)),
        events: broadcast::channel(EVENTS_QUEUE).0,
        lagged: Arc::new(AtomicU64::new(0)),
        started_ms: crate::metrics::unix_ms(std::time::SystemTime::now()),
        throttle: Arc::new(throttle::Throttle::new(
            config.login_failures_per_minute,
            HttpServer::View,
            ctx.metrics.clone(),
        )),
        streams: Arc::new(tokio::sync::Semaphore::new(config.max_event_streams)),
        shifts: config.shifts.clone(),
        originals: Arc::new(tokio::sync::Semaphore::new(evidence::CONCURRENT_READS)),
        ctx,
    };
    let preloaded = preload(&shared).await;
    tokio::spawn(feed_board(shared.clone(), feed, preloaded));
    let stop = shared.ctx.shutdown.clone();
    let shared_metrics = shared.ctx.metrics.clone();
    let budget = config.budget;
    let app = router(shared);
    // Over HTTPS, browsers are told to keep to it: a downgraded link would carry the
    // view's credentials in clear.
    let app = if config.tls.is_some() {
        app.layer(axum::middleware::from_fn(strict_transport))
    } else {
        app
    };
    let metrics = shared_metrics;
    tokio::spawn(serve::serve(
        listener,
        app,
        budget,
        config.tls.clone(),
        metrics,
        HttpServer::View,
        stop,
    ));
    tracing::info!(%addr, https = config.tls.is_some(), max_connections = budget.max_connections, "staff view listening");
    Ok(addr)
}

fn router(shared: Shared) -> Router {
    let protected = Router::new()
        .route("/", get(assets::board_page))
        .route("/parcel", get(assets::lookup_page))
        .route("/worklist", get(assets::worklist_page))
        .route("/api/barcode.svg", get(assets::barcode))
        .route("/assets/:name", get(assets::asset))
        .route("/api/board", get(api::board))
        .route("/api/events", get(api::events))
        .route("/api/health", get(api::health))
        .route("/api/rules", get(api::rules))
        .route("/api/parcels/:waybill", get(api::parcel))
        .route("/api/records", get(api::records))
        .route("/api/worklist", get(worklist::worklist_api))
        .route("/api/evidence/:sha256", get(evidence::original))
        .route("/metrics", get(api::metrics))
        .route("/charts", get(reports::charts_page))
        .route("/api/charts", get(reports::charts_api))
        .route("/api/shift", get(reports::shift_api))
        .route("/api/export.csv", get(reports::export_csv))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            require_auth,
        ));
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .merge(protected)
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn(errors::json_errors))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(shared)
}

async fn require_auth(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    match auth::gate(&shared.credentials, &shared.throttle, &request) {
        auth::Gate::Pass => return next.run(request).await,
        auth::Gate::Throttled(wait) => return throttled(wait),
        auth::Gate::Refused => {}
    }
    let challenge = if shared.credentials.has_users() {
        "Basic realm=\"bondline\", charset=\"UTF-8\""
    } else {
        "Bearer realm=\"bondline\""
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, challenge)],
        axum::Json(serde_json::json!({ "error": "credentials required" })),
    )
        .into_response()
}

/// The client's address, as the budgeted server records it.
pub(crate) fn peer_ip(request: &Request) -> Option<std::net::IpAddr> {
    request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// 429 for an address the failed-login throttle refuses.
pub(crate) fn throttled(wait: std::time::Duration) -> Response {
    let secs = wait.as_secs().max(1);
    let mut r = (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(serde_json::json!({
            "error": format!("too many failed logins from this address; try again in {secs} s")
        })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// Headers that cost nothing and close whole classes of browser attacks: only this origin's
/// scripts and styles run, no framing, no MIME sniffing, no caching of customs data.
async fn security_headers(request: Request, next: Next) -> Response {
    let is_asset = request.uri().path().starts_with("/assets/");
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, name: &'static str, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    set(h, "referrer-policy", "no-referrer");
    set(
        h,
        "cache-control",
        if is_asset { "no-cache" } else { "no-store" },
    );
    response
}

/// `Strict-Transport-Security` for a view served over HTTPS.
async fn strict_transport(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response.headers_mut().insert(
        "strict-transport-security",
        HeaderValue::from_static("max-age=31536000"),
    );
    response
}

/// Shows the latest stored records on the board at start, without counting them. Returns
/// the last sequence shown: the feed's copies of those are skipped.
async fn preload(shared: &Shared) -> u64 {
    let journal = shared.ctx.journal.clone();
    let limit = board::ROWS_PER_LINE * shared.ctx.lines.len().max(1);
    let loaded =
        tokio::task::spawn_blocking(move || journal.records_between(0, u64::MAX, limit)).await;
    match loaded {
        Ok(Ok((records, _))) => {
            let mut board = shared.board();
            let last = records.first().map_or(0, Record::seq);
            for r in records.iter().rev() {
                board.preload(r);
            }
            last
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "staff view: cannot show earlier records on the board");
            0
        }
        Err(e) => {
            tracing::warn!(error = %e, "staff view: cannot show earlier records on the board");
            0
        }
    }
}

/// Applies every accepted record to the board and passes the change to the open pages.
async fn feed_board(shared: Shared, mut feed: broadcast::Receiver<Record>, preloaded: u64) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let record = tokio::select! {
            _ = shared.ctx.shutdown.cancelled() => return,
            r = feed.recv() => r,
        };
        match record {
            Ok(r) if r.seq() <= preloaded => {}
            Ok(r) => {
                let update = shared.board().apply(&r);
                if let Some(u) = update {
                    if shared.events.receiver_count() > 0 {
                        match serde_json::to_string(&u) {
                            Ok(json) => {
                                let _ = shared.events.send(board::Event::Update(json.into()));
                            }
                            Err(e) => tracing::warn!(error = %e, "board update not serializable"),
                        }
                    }
                }
            }
            Err(RecvError::Lagged(n)) => {
                // The board misses these; the journal (lookup) has them. Pages reload.
                tracing::warn!(records = n, "staff view board fell behind the journal");
                crate::metrics::Metrics::add(&shared.lagged, 1);
                let _ = shared.events.send(board::Event::Resync);
            }
            Err(RecvError::Closed) => return,
        }
    }
}
