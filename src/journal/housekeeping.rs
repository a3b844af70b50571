//! The journal's housekeeping task: measures capacity every second, raises alarms on changes
//! of level, looks for platform log files removed under the daemon, and purges forwarded records (by age normally, oldest first whatever their age
//! when space runs short). The policy itself is in [`super::capacity`].

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::capacity::{free_bytes, level, next_mark, store_room, write_budget, Level, Limits};
use super::Journal;
use crate::alarm::Alarms;
use crate::metrics::{unix_ms, Metrics};

/// What housekeeping needs from `[storage]`.
#[derive(Debug, Clone)]
pub struct Housekeeping {
    pub path: PathBuf,
    pub limits: Limits,
    pub retention: Duration,
    pub interval: Duration,
}

/// Batches purged at most per round, so one round stays short. Entries hold at most
/// [`super::ENTRY_BYTES`] of records: a round purges up to 4 MiB of them.
const PURGE_BATCHES: usize = 1024;
/// A level other than ok is alarmed again after this long.
const REMIND: Duration = Duration::from_secs(300);

/// What a short-disk episode carries from one measurement to the next.
#[derive(Debug, Default)]
struct Short {
    /// See [`next_mark`].
    mark: Option<u64>,
    /// The other trees' bytes, read when the episode began ([`Journal::other_bytes`]).
    other: Option<u64>,
}

/// Checks the platform log's files for ones removed under the daemon and raises what it
/// finds ([`Journal::check_platform_files`]). Off the runtime's threads: writing a removed
/// file back copies a day's file.
async fn check_files(journal: &Journal, alarms: &Alarms) {
    let j = journal.clone();
    match tokio::task::spawn_blocking(move || j.check_platform_files()).await {
        Ok(Ok(found)) => found.into_iter().for_each(|text| alarms.raise(text)),
        Ok(Err(e)) => warn!(error = %e, "the platform log's files cannot be checked"),
        Err(e) => warn!(error = %e, "the platform log's files cannot be checked"),
    }
}

impl Housekeeping {
    pub async fn run(
        self,
        journal: Journal,
        metrics: Arc<Metrics>,
        alarms: Alarms,
        shutdown: CancellationToken,
    ) {
        let mut last = Level::Ok;
        let mut short = Short::default();
        let mut last_alarm = std::time::Instant::now();
        let mut tick = tokio::time::interval(self.interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // What was found since the last check is reported before the stop.
                    check_files(&journal, &alarms).await;
                    return;
                }
                _ = tick.tick() => {}
            }
            let mut now = self.measure(&journal, &metrics, &mut short);
            // Make room first, then judge again: purging forwarded records can only help.
            let before = if now >= Level::NearlyFull {
                u64::MAX
            } else {
                unix_ms(SystemTime::now()).saturating_sub(self.retention.as_millis() as u64)
            };
            match journal.purge_forwarded(before, PURGE_BATCHES) {
                Ok(0) => {}
                Ok(n) => {
                    Metrics::add(&metrics.records_purged, n);
                    now = self.measure(&journal, &metrics, &mut short);
                }
                Err(e) => warn!(error = %e, "journal purge failed"),
            }
            check_files(&journal, &alarms).await;
            metrics.journal_level.store(now.as_u8(), Ordering::Relaxed);
            let changed = now != last;
            if changed || (now != Level::Ok && last_alarm.elapsed() >= REMIND) {
                if now == Level::Ok {
                    info!("journal capacity back to ok");
                } else {
                    alarms.raise(format!(
                        "journal {}: {} MiB of records and {} MiB of platform state (quota {} MiB for both), {} MiB free on disk (minimum {} MiB), {} record(s) held in memory, {} waiting for the platform",
                        now.as_str().replace('_', " "),
                        Metrics::get(&metrics.journal_live_bytes) >> 20,
                        Metrics::get(&metrics.journal_platform_bytes) >> 20,
                        self.limits.quota_bytes >> 20,
                        Metrics::get(&metrics.journal_free_bytes) >> 20,
                        self.limits.min_free_bytes >> 20,
                        Metrics::get(&metrics.records_held),
                        Metrics::get(&metrics.backlog),
                    ));
                    last_alarm = std::time::Instant::now();
                }
                last = now;
            }
        }
    }

    fn measure(&self, journal: &Journal, metrics: &Metrics, short: &mut Short) -> Level {
        let live = journal.live_bytes();
        // The consumers' day totals are platform state too (a year of buyers).
        let platform = journal
            .platform_bytes()
            .saturating_add(journal.consumer_days_bytes());
        let free = match free_bytes(&self.path) {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "cannot measure free disk space; assuming full");
                0
            }
        };
        let room = if free < self.limits.min_free_bytes {
            // The other trees change little while the disk is short: read once per episode.
            let other = *short.other.get_or_insert_with(|| journal.other_bytes());
            store_room(journal.file_bytes(), other)
        } else {
            short.other = None;
            u64::MAX
        };
        short.mark = next_mark(self.limits, free, room, short.mark);
        metrics
            .journal_write_budget
            .store(write_budget(short.mark), Ordering::Relaxed);
        metrics.journal_live_bytes.store(live, Ordering::Relaxed);
        metrics
            .journal_platform_bytes
            .store(platform, Ordering::Relaxed);
        metrics.journal_free_bytes.store(free, Ordering::Relaxed);
        level(
            self.limits,
            live,
            platform,
            free,
            short.mark,
            Metrics::get(&metrics.journal_next_write),
        )
    }
}
