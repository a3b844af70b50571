//! Giving memory back after a burst.
//!
//! A burst of frames fills, for seconds, every queue between the scanner and the broker: the
//! lines' channels, the journal writer's queue, the uplink's batches, sled's write buffers.
//! Each of them is bounded or drains, but glibc's allocator keeps the freed memory in its
//! per-thread arenas and returns it to the system only when the top of a heap happens to be
//! free. Measured (`bondline-lab bench burst`, BENCHMARKS.md): without this, VmRSS stayed at the
//! peak of the largest burst and crept up with each one as fragments accumulated.
//!
//! [`run`] watches the records the journal accepts; once none has come for [`QUIET`] after
//! some did, it asks the allocator to return its free memory (`malloc_trim`). That walks the
//! heaps once (a few milliseconds, on a blocking thread, never on the decision path) per
//! quiet spell, not per record.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How long without a new record counts as quiet.
pub const QUIET: Duration = Duration::from_secs(2);
/// How often the record count is looked at.
const TICK: Duration = Duration::from_millis(500);
/// Records accepted since the last trim that make the next quiet spell worth a trim: a
/// trickle of a parcel now and then leaves nothing to give back.
const WORTH_IT: u64 = 1000;

/// Trims the allocator after each quiet spell that follows some work, until `stop`.
pub async fn run(metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let count = || Metrics::get(&metrics.records_accepted);
    let mut trimmed_at = count();
    let mut last = trimmed_at;
    let mut still = Duration::ZERO;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = count();
        if now != last {
            last = now;
            still = Duration::ZERO;
            continue;
        }
        still += TICK;
        if still >= QUIET && now.saturating_sub(trimmed_at) >= WORTH_IT {
            trimmed_at = now;
            let _ = tokio::task::spawn_blocking(give_back).await;
        }
    }
}

/// Allocator arenas, at most. glibc gives each thread that meets a locked arena a new one,
/// up to eight per core, and memory freed in one arena serves only that arena: after bursts
/// handled by different runtime threads each arena keeps its own high-water mark. The
/// daemon's allocations are not contended enough for more arenas to pay.
const ARENAS: i32 = 2;

/// Caps the allocator's arenas (see [`ARENAS`]); call before the runtime starts its threads.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a glibc tunable; called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Returns the allocator's free memory to the system, where the allocator can.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only walks glibc's own heaps under their
    // locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
