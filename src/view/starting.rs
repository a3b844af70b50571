//! The staff view's address while the daemon starts.
//!
//! Opening a large store takes time before anything else can run (sled rebuilds its page
//! table, and after a long run first replays the log written since its last open: 4-14 s
//! for a store of 10 million declarations, BENCHMARKS.md). A supervisor or a
//! load balancer must not take that silence for a dead process, nor a refused connection
//! for a stopped one. So the view's socket is bound first, and until the view itself runs
//! a small server answers on it: `/healthz` says the process is up, `/readyz` answers 503
//! with what is starting, and every other path 503 with `Retry-After`. Nothing of the
//! gateway's state is served, so no credentials are needed.
//!
//! The view then takes the same listening socket over ([`Starting::hand_over`]): a
//! connection that waits in the kernel's queue at that moment is served by the view.

use std::sync::{Arc, Mutex};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use super::config::ViewConfig;
use super::serve::serve;
use super::ViewError;
use crate::metrics::{HttpServer, Metrics};

/// Seconds a client is asked to wait before it asks again.
const RETRY_AFTER_S: &str = "5";

/// The small server answering on the view's address while the daemon starts.
pub struct Starting {
    phase: Arc<Mutex<String>>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The bound socket, kept for the view.
    listener: Option<std::net::TcpListener>,
}

impl Starting {
    /// Binds the view's address and answers on it; `phase` says what is starting.
    pub fn start(
        config: &ViewConfig,
        phase: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Starting, ViewError> {
        let bind = |source| ViewError::Bind {
            addr: config.listen,
            source,
        };
        let listener = std::net::TcpListener::bind(config.listen).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let serving =
            tokio::net::TcpListener::from_std(listener.try_clone().map_err(bind)?).map_err(bind)?;
        let phase = Arc::new(Mutex::new(phase.to_string()));
        let app = router(phase.clone());
        let app = if config.tls.is_some() {
            app.layer(axum::middleware::from_fn(super::strict_transport))
        } else {
            app
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(
            serving,
            app,
            config.budget,
            config.tls.clone(),
            metrics,
            HttpServer::View,
            stop.clone(),
        ));
        tracing::info!(addr = %config.listen, "staff view address answering while the daemon starts");
        Ok(Starting {
            phase,
            stop,
            task: Some(task),
            listener: Some(listener),
        })
    }

    /// What `/readyz` says is starting from now on.
    pub fn phase(&self, phase: &str) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase.to_string();
    }

    /// Stops accepting and gives the listening socket to the view. Requests in progress
    /// finish on their own.
    pub async fn hand_over(mut self) -> std::net::TcpListener {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.listener
            .take()
            .expect("the listener is taken once, here")
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        // A start that failed: stop answering.
        self.stop.cancel();
    }
}

fn router(phase: Arc<Mutex<String>>) -> Router {
    let text = move || {
        let p = phase.lock().unwrap_or_else(|e| e.into_inner()).clone();
        format!("not ready: starting: {p}\n")
    };
    let readyz = {
        let text = text.clone();
        move || {
            let body = text();
            async move { (StatusCode::SERVICE_UNAVAILABLE, body).into_response() }
        }
    };
    let rest = move || {
        let body = text();
        async move { unavailable(body) }
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(rest)
}

fn unavailable(body: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, RETRY_AFTER_S)],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower_service::Service;

    async fn call(app: &Router, path: &str) -> (StatusCode, Option<String>, String) {
        // A router is always ready: it is called without `poll_ready`.
        let r = app
            .clone()
            .call(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = r.status();
        let retry = r
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, retry, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn answers_health_and_says_what_is_starting() {
        let phase = Arc::new(Mutex::new("opening the journal store".to_string()));
        let app = router(phase.clone());
        assert_eq!(call(&app, "/healthz").await.0, StatusCode::OK);
        let (status, _, body) = call(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("opening the journal store"), "{body}");
        *phase.lock().unwrap() = "connecting the lines".into();
        assert!(call(&app, "/readyz")
            .await
            .2
            .contains("connecting the lines"));
        let (status, retry, _) = call(&app, "/api/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.as_deref(), Some(RETRY_AFTER_S));
    }
}
