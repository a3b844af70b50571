//! Idle connections against the staff view, for `bench lines --idle-http N`: N clients that
//! connect and never send a byte, as a crowd of stalled browsers or a port scanner does. Each
//! one re-connects as soon as the view closes it (header or idle timeout), so N connections
//! stand against the view for the whole run, accepted or waiting in the listen queue.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a client tries to connect before it counts a failure and tries again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Counts {
    /// Connections established (the first ones and the re-connections).
    opened: AtomicU64,
    /// Connections the view closed.
    closed_by_view: AtomicU64,
    /// Connection attempts that failed or timed out.
    failed: AtomicU64,
    /// Connections open now.
    open: AtomicU64,
}

/// The clients, running until [`IdleHttp::finish`].
pub(super) struct IdleHttp {
    target: usize,
    counts: Arc<Counts>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// What the clients saw.
pub(super) struct IdleReport {
    pub target: usize,
    pub opened: u64,
    pub closed_by_view: u64,
    pub failed: u64,
    pub open_at_end: u64,
}

impl std::fmt::Display for IdleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} idle clients: {} connections opened, {} closed by the view and re-opened, {} attempts failed, {} open at the end",
            self.target, self.opened, self.closed_by_view, self.failed, self.open_at_end
        )
    }
}

impl IdleHttp {
    /// Starts `n` clients against `addr` and waits until each has connected once (or failed).
    pub async fn start(addr: SocketAddr, n: usize) -> IdleHttp {
        let counts = Arc::new(Counts::default());
        let stop = CancellationToken::new();
        let (first_tx, mut first_rx) = tokio::sync::mpsc::channel::<()>(n.max(1));
        let tasks = (0..n)
            .map(|_| {
                let counts = counts.clone();
                let stop = stop.clone();
                let first = first_tx.clone();
                tokio::spawn(async move {
                    stop.run_until_cancelled(hold(addr, &counts, Some(first)))
                        .await;
                })
            })
            .collect();
        drop(first_tx);
        for _ in 0..n {
            if first_rx.recv().await.is_none() {
                break;
            }
        }
        IdleHttp {
            target: n,
            counts,
            stop,
            tasks,
        }
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.counts.open.load(Ordering::Relaxed)
    }

    /// Stops the clients (closing their connections) and reports.
    pub async fn finish(self) -> IdleReport {
        let open_at_end = self.open();
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        let c = &self.counts;
        IdleReport {
            target: self.target,
            opened: c.opened.load(Ordering::Relaxed),
            closed_by_view: c.closed_by_view.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            open_at_end,
        }
    }
}

/// One client: connect, send nothing, wait for the view to close, connect again.
async fn hold(addr: SocketAddr, counts: &Counts, mut first: Option<tokio::sync::mpsc::Sender<()>>) {
    let mut buf = [0u8; 512];
    loop {
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await;
        if let Some(tx) = first.take() {
            let _ = tx.send(()).await;
        }
        let mut stream = match connected {
            Ok(Ok(s)) => s,
            _ => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        counts.opened.fetch_add(1, Ordering::Relaxed);
        counts.open.fetch_add(1, Ordering::Relaxed);
        // Whatever the view sends (a 408, say) is read and ignored; end of stream or an
        // error means it closed the connection.
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        counts.open.fetch_sub(1, Ordering::Relaxed);
        counts.closed_by_view.fetch_add(1, Ordering::Relaxed);
    }
}
