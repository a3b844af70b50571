//! The PLC program's heartbeat watchdog: its own counter, and the controller's watched for
//! change, with fail-safe mode when it stands still. A task of its own beside whichever
//! server (TCP or RTU) serves the registers.

use std::future;
use std::time::{Duration, Instant};

use bondline_devices::plc::HeartbeatRegisters;
use tokio::time::MissedTickBehavior;

use super::PlcState;

/// The PLC program's heartbeat: counts its own register up every `interval_ms` and watches
/// the controller's. Runs until dropped.
pub(super) async fn heartbeat(state: PlcState, hb: Option<HeartbeatRegisters>) {
    let Some(hb) = hb else {
        return future::pending().await;
    };
    let interval = Duration::from_millis(hb.interval_ms.max(1));
    let timeout = Duration::from_millis(hb.timeout_ms.max(1));
    // Watch the controller's counter more often than it changes, so fail-safe mode ends
    // promptly and starts no later than a few milliseconds after the timeout.
    let check = (interval / 4).clamp(Duration::from_millis(2), Duration::from_millis(20));
    let mut count = tokio::time::interval(interval);
    count.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut watch = tokio::time::interval(check);
    watch.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = state.register(hb.controller);
    let mut last_change = Instant::now();
    let mut heard = false;
    state.set_fail_safe(true, false);
    loop {
        tokio::select! {
            _ = count.tick() => state.tick_plc_counter(hb.plc),
            _ = watch.tick() => {
                let now = state.register(hb.controller);
                if now != last {
                    last = now;
                    last_change = Instant::now();
                    heard = true;
                    state.set_fail_safe(false, true);
                } else if last_change.elapsed() >= timeout {
                    state.set_fail_safe(true, heard);
                }
            }
        }
    }
}
