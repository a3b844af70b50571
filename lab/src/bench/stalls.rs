//! The machine's own scheduling tail during a bench run: a thread at the simulators'
//! priority (real-time when allowed) that asks to wake every millisecond and counts how late
//! it wakes, as `cyclictest` does. A late wake-up here is one that no program on the machine
//! could have avoided (on a virtual machine: its vCPU run elsewhere by the hypervisor), so a
//! run with many is a run whose latency tail says more about the machine than the daemon.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the probe asks to wake.
const PERIOD: Duration = Duration::from_millis(1);

/// What the probe saw.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(super) struct Stalls {
    pub wakeups: u64,
    pub late_300us: u64,
    pub late_1ms: u64,
    pub late_5ms: u64,
    pub max_us: u64,
}

impl std::fmt::Display for Stalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} wake-ups every ms: {} late by more than 300 µs, {} by more than 1 ms, {} by more than 5 ms, the latest {:.1} ms late",
            self.wakeups,
            self.late_300us,
            self.late_1ms,
            self.late_5ms,
            self.max_us as f64 / 1000.0
        )
    }
}

/// The probe's thread, running until [`StallProbe::finish`].
pub(super) struct StallProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Stalls>,
}

impl StallProbe {
    pub(super) fn start() -> std::io::Result<StallProbe> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("bench-stall-probe".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    bondline::threads::urgent();
                    let mut s = Stalls::default();
                    while !stop.load(Ordering::Relaxed) {
                        let due = Instant::now() + PERIOD;
                        std::thread::sleep(PERIOD);
                        let late = Instant::now().saturating_duration_since(due);
                        s.wakeups += 1;
                        s.late_300us += u64::from(late > Duration::from_micros(300));
                        s.late_1ms += u64::from(late > Duration::from_millis(1));
                        s.late_5ms += u64::from(late > Duration::from_millis(5));
                        s.max_us = s.max_us.max(late.as_micros() as u64);
                    }
                    s
                }
            })?;
        Ok(StallProbe { stop, thread })
    }

    pub(super) fn finish(self) -> Stalls {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}
