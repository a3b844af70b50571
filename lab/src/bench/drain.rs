//! `bondline-lab bench drain`: a backlog drained by the daemon's own uplink, beside raw rumqttc.
//!
//! The uplink is not assembled by hand here: the whole daemon is started ([`App::start`])
//! on the filled journal, with one idle line (a PLC simulator that is never sent a parcel and
//! a scanner socket that never sends a frame), so the uplink gets its `accepted` watch from
//! the real journal writer, shares the runtime with the writer, housekeeping and the waybill
//! index, and reads, publishes and clears the outbox exactly as in production. Only the pace
//! (`uplink.drain_rate`) is set from the command line, because the daemon's default of 5,000
//! records/s would measure the pace rather than the uplink.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use bondline::app::App;
use bondline::metrics::Metrics;

/// What one drain measured.
pub struct DrainRun {
    /// From the daemon's start to an empty outbox.
    pub elapsed: Duration,
    /// From the broker connection to an empty outbox.
    pub connected_for: Duration,
    /// Records forwarded (PUBACK-matched and cleared from the outbox).
    pub forwarded: u64,
}

/// Starts the daemon on the journal in `store` (already holding the backlog), lets its uplink
/// drain the outbox to `host:port`, and stops it.
pub async fn daemon_drain(
    store: &Path,
    host: &str,
    port: u16,
    inflight: u16,
    drain_rate: u32,
) -> anyhow::Result<DrainRun> {
    let floor = super::idle_floor::IdleFloor::start().await?;
    let config = format!(
        "gateway_id = \"bench-gw\"\n[trust]\nallow_unsigned = true\n[storage]\npath = \"{}\"\n\
         [uplink]\nbroker = \"{host}:{port}\"\nclient_id = \"bondline-bench-drain\"\n\
         topic_prefix = \"bench/drain\"\ninflight = {inflight}\ndrain_rate = {drain_rate}\n\
         {}",
        store.display(),
        floor.config()
    );
    let config = bondline::config::Config::parse("bench-drain.toml", &config)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let stop = CancellationToken::new();
    let start = Instant::now();
    let app = App::start(config, stop.clone()).await?;
    let metrics = app.metrics.clone();
    let mut connected = None;
    // Polled, not awaited on a signal: the outbox is only observable through the metrics.
    let outcome = loop {
        if connected.is_none() && metrics.uplink_ready.load(Ordering::Relaxed) {
            connected = Some(Instant::now());
        }
        if Metrics::get(&metrics.backlog) == 0 {
            break Ok(());
        }
        if start.elapsed() > Duration::from_secs(3600) {
            break Err(anyhow::anyhow!(
                "the backlog did not drain within an hour ({} records left)",
                Metrics::get(&metrics.backlog)
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let elapsed = start.elapsed();
    let connected_for = connected.map_or(elapsed, |c| c.elapsed());
    let forwarded = Metrics::get(&metrics.records_forwarded);
    stop.cancel();
    app.wait().await?;
    floor.stop().await;
    outcome?;
    Ok(DrainRun {
        elapsed,
        connected_for,
        forwarded,
    })
}
