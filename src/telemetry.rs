//! Logging through `tracing`: readable text on a terminal, JSON lines under systemd (which
//! sets `JOURNAL_STREAM`) or when asked. `RUST_LOG` filters as usual; the default is `info`.
//!
//! Lines are written to stderr by a thread of their own (`tracing-appender`'s non-blocking
//! writer), never by the thread that logs: the floor thread logs a link that goes down or a
//! parcel that misses its deadline, and under systemd stderr is journald's socket, which
//! blocks for as long as journald is behind (a busy disk). A thread that logs only hands the
//! line over; when [`QUEUED_LINES`] wait already, the line is dropped and counted
//! ([`dropped_lines`], `bondline_log_lines_dropped_total`), so no burst of logging can stall
//! the decision path. What the gateway must keep is in the journal, not in its log.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON under systemd, text otherwise.
    Auto,
    Text,
    Json,
}

/// Log lines that may wait for the writer thread before new ones are dropped.
pub const QUEUED_LINES: usize = 16_384;

/// The writer's count of dropped lines, once [`init`] has installed it.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped because the writer thread was that far behind.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Keeps the writer thread; dropping it (the end of `main`) gives the thread about a second
/// to write out what is queued; lines still queued then are lost.
#[must_use = "the log's writer thread stops when this is dropped"]
pub struct LogGuard {
    _writer: Option<WorkerGuard>,
}

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is not set.
pub fn init(format: LogFormat, default_filter: &str) -> LogGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
    };
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("bondline-log")
        .finish(std::io::stderr());
    let counter = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests, demo) keeps the first subscriber and its writer.
    match installed {
        Ok(()) => {
            let _ = DROPPED.set(counter);
            LogGuard {
                _writer: Some(guard),
            }
        }
        Err(_) => LogGuard { _writer: None },
    }
}
