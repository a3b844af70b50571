//! Turns SIGINT and SIGTERM into a cancellation token that every task watches.

use tokio_util::sync::CancellationToken;
use tracing::info;

/// Returns a token cancelled on the first SIGINT or SIGTERM.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => info!("SIGINT: shutting down"),
                        _ = term.recv() => info!("SIGTERM: shutting down"),
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        t.cancel();
    });
    token
}
