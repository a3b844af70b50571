//! Forgetting old platform state, so a gateway that runs for months does not grow without
//! bound: see `Journal::purge_clearance` for what is forgotten and why that is safe.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::journal::Journal;
use crate::rules::history::day_of;
use crate::rules::ClearanceTable;

/// How often old state is looked for.
const INTERVAL: Duration = Duration::from_secs(3600);
/// Entries forgotten per step; the table's write lock is taken once per step, briefly.
const STEP: usize = 5_000;

/// Forgets state received more than `keep` ago, at start and then hourly, until `stop`.
pub async fn run(
    journal: Journal,
    table: Arc<RwLock<ClearanceTable>>,
    keep: Duration,
    stop: CancellationToken,
) {
    let keep_days = (keep.as_secs() / 86_400) as u32;
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let before = day_of(crate::metrics::unix_ms(SystemTime::now())).saturating_sub(keep_days);
        let mut total = 0;
        loop {
            let j = journal.clone();
            let step = tokio::task::spawn_blocking(move || j.purge_clearance(before, STEP)).await;
            let forgotten = match step {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "old declarations not forgotten; retrying later");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "clearance retention task failed");
                    break;
                }
            };
            {
                let mut t = table.write().unwrap_or_else(|e| e.into_inner());
                for w in &forgotten.waybills {
                    t.forget_waybill(w);
                }
                for id in &forgotten.instruction_ids {
                    t.forget_instruction_id(id);
                }
            }
            total += forgotten.waybills.len();
            if !forgotten.more || stop.is_cancelled() {
                break;
            }
            tokio::task::yield_now().await;
        }
        if total > 0 {
            tracing::info!(
                waybills = total,
                keep_days,
                "declarations older than the clearance period forgotten"
            );
        }
    }
}
