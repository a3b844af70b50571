//! Tasks that keep the store in shape behind the lines, off the decision path: the waybill
//! index written behind the journal's writer, the allocator's memory given back after a
//! burst, and housekeeping (capacity levels, retention of forwarded records). They use the
//! journal, so they stop with the uplink, after the last record is stored.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::alarm::Alarms;
use crate::config::Config;
use crate::journal::capacity::Limits;
use crate::journal::{Housekeeping, Journal};
use crate::metrics::Metrics;

/// Starts the store's background tasks in `set`, until `stop`.
pub(super) fn keep_store(
    set: &mut JoinSet<()>,
    config: &Config,
    journal: &Journal,
    metrics: &Arc<Metrics>,
    alarms: &Alarms,
    stop: &CancellationToken,
) {
    set.spawn(index_behind_writer(journal.clone(), stop.clone()));
    set.spawn(crate::memory::run(metrics.clone(), stop.clone()));
    let housekeeping = Housekeeping {
        path: config.storage.path.clone(),
        limits: Limits {
            quota_bytes: config.storage.quota_bytes,
            min_free_bytes: config.storage.min_free_bytes,
        },
        retention: config.storage.retention,
        interval: Duration::from_secs(1),
    };
    set.spawn(housekeeping.run(
        journal.clone(),
        metrics.clone(),
        alarms.clone(),
        stop.clone(),
    ));
}

/// The waybill index, written behind the journal writer (see journal::lookup), until `stop`.
async fn index_behind_writer(journal: Journal, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let j = journal.clone();
        match tokio::task::spawn_blocking(move || j.index_pending(1024)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "waybill index not updated; lookups read the batches")
            }
            Err(e) => tracing::warn!(error = %e, "waybill index task failed"),
        }
    }
}
