//! The HTTP servers' budgets: how many connections, for how long, and what an idle one costs.
//!
//! The staff view and the X-ray upload endpoint share the daemon's process with the device
//! links, so they must never take what a line needs: file descriptors above all (a PLC that
//! cannot reconnect because the view holds every descriptor sends parcels to `link_down`).
//! Hence, for every connection:
//!
//! - **A connection limit.** A connection is accepted only with a permit; when all are taken,
//!   the server stops accepting and new connections wait in the kernel's listen queue, where
//!   they hold no descriptor of ours (beyond the queue the kernel drops the SYN and the client
//!   retries). The limit is logged once per burst, and counted.
//! - **A header timeout** (hyper's `header_read_timeout`): a client has that long from the
//!   connection, or from the end of its previous response, to send a whole request head. It
//!   also ends idle keep-alive connections, and TLS handshakes get the same time.
//! - **An idle timeout**: a connection that moves no byte either way for that long is closed,
//!   whatever it is doing (a reader that stopped reading an event stream, a stalled body).
//!
//! Requests carry the peer address as `ConnectInfo<SocketAddr>`, for the login throttle.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::tls::ViewTls;
use crate::metrics::{HttpServer, HttpStats, Metrics};

/// What one server may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Connections open at once, at most.
    pub max_connections: usize,
    /// Time for a whole request head (and for a TLS handshake).
    pub header_timeout: Duration,
    /// Time a connection may move no byte at all.
    pub idle_timeout: Duration,
}

impl Budget {
    /// The staff view's defaults (`[view]` in docs/view.md).
    pub const DEFAULT: Budget = Budget {
        max_connections: 256,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
    };
}

/// Serves `app` on `listener` within `budget` (over TLS when `tls` is given) until `stop`;
/// requests in progress at `stop` are finished. `name` names the server in the log.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    budget: Budget,
    tls: Option<ViewTls>,
    metrics: Arc<Metrics>,
    server: HttpServer,
    stop: CancellationToken,
) {
    let name = server.name();
    let permits = Arc::new(Semaphore::new(budget.max_connections.max(1)));
    let mut at_limit = false;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if !at_limit {
                    at_limit = true;
                    Metrics::add(&metrics.http(server).connection_limit_reached, 1);
                    tracing::warn!(
                        server = name,
                        limit = budget.max_connections,
                        "connection limit reached; new connections wait until one closes"
                    );
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                }
            }
        };
        // The burst is over once half the permits are free again.
        if at_limit && permits.available_permits() >= budget.max_connections / 2 {
            at_limit = false;
        }
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: the process is short of descriptors. Waiting a
                    // little lets closing connections give some back.
                    warn_accept(name, &e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let stop = stop.clone();
        let metrics = metrics.clone();
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            let _permit = permit;
            let stats = metrics.http(server);
            Metrics::add(&stats.connections, 1);
            match acceptor {
                None => connection(tcp, peer, app, budget, stats, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(budget.header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => connection(s, peer, app, budget, stats, stop).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, server = name, "TLS handshake failed")
                        }
                        Err(_) => {
                            Metrics::add(&stats.timed_out, 1);
                            tracing::debug!(%peer, server = name, "TLS handshake timed out")
                        }
                    }
                }
            }
            Metrics::sub(&stats.connections, 1);
        });
    }
}

/// Accept errors, logged at most once a second: under descriptor exhaustion they repeat.
fn warn_accept(name: &str, e: &std::io::Error) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = millis();
    let last = LAST.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 1000 || last == 0 {
        LAST.store(now.max(1), Ordering::Relaxed);
        tracing::warn!(server = name, error = %e, "accept failed");
    }
}

/// One HTTP/1.1 connection within the budget's timeouts.
async fn connection<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    budget: Budget,
    stats: &HttpStats,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The HTTP parser's own bodiless errors (400, 414, 431) get a JSON body too.
    let io = Watched::new(super::errors::JsonParseErrors::new(io));
    let last = io.last.clone();
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            tower_service::Service::call(&mut app, req)
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(spread(budget.header_timeout))
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut check = tokio::time::interval(budget.idle_timeout.min(Duration::from_secs(1)));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        Metrics::add(&stats.timed_out, 1);
                    }
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                }
                return;
            }
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = check.tick() => {
                let idle = Duration::from_millis(millis().saturating_sub(last.load(Ordering::Relaxed)));
                if idle >= budget.idle_timeout {
                    Metrics::add(&stats.timed_out, 1);
                    tracing::debug!(%peer, ?idle, "HTTP connection closed: idle");
                    return;
                }
            }
        }
    }
}

/// Milliseconds since the first call: a cheap clock for activity stamps.
fn millis() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A stream that stamps the time of every byte it moves.
struct Watched<I> {
    inner: I,
    last: Arc<AtomicU64>,
}

impl<I> Watched<I> {
    fn new(inner: I) -> Watched<I> {
        Watched {
            inner,
            last: Arc::new(AtomicU64::new(millis())),
        }
    }

    fn touch(&self) {
        self.last.store(millis(), Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A connection's header timeout: drawn between three quarters of the budget and the budget.
/// Connections opened together (a flood, a port scan, a wall of browsers after a restart)
/// then do not all time out, close and let the next ones in within the same millisecond,
/// which would be one burst of kernel and runtime work for every thread of the gateway.
fn spread(timeout: Duration) -> Duration {
    use rand::Rng as _;
    timeout.mul_f64(rand::thread_rng().gen_range(0.75..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_timeout_is_never_longer_than_the_budget() {
        let budget = Duration::from_secs(10);
        let drawn: Vec<Duration> = (0..1000).map(|_| spread(budget)).collect();
        assert!(drawn
            .iter()
            .all(|d| *d >= budget.mul_f64(0.75) && *d <= budget));
        // Spread, not one value: connections opened together close over 2.5 s.
        let (min, max) = (drawn.iter().min().unwrap(), drawn.iter().max().unwrap());
        assert!(*max - *min > Duration::from_secs(2), "{min:?}..{max:?}");
    }
}
