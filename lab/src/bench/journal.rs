//! `bondline-lab bench journal`: append throughput through the real writer (group commit,
//! chaining, flush) and the waybill index catching up behind it; and the backlog fill the
//! uplink benches (`drain`, `lines --backlog`) start from, with records of typical size.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bondline_devices::contract::{
    DivertOutcome, DivertStatus, LaneRole, ParcelRecord, ReadOutcome, SCHEMA,
};

use bondline::journal::{record_sink, Journal};
use bondline::metrics::Metrics;

/// Appends `records` through the real writer with the given flush window and prints the
/// rate, the group-commit latency and how fast the waybill index catches up.
pub(super) async fn run(
    records: u64,
    flush_window_ms: u64,
    dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let (_tmp, dir) = super::work_dir(dir)?;
    let (journal, elapsed, metrics) =
        fill_measured(&dir, records, Duration::from_millis(flush_window_ms)).await?;
    let size = journal.stats()?.size_on_disk;
    println!(
        "journal append: {records} records in {:.2} s = {:.0} records/s (flush window {flush_window_ms} ms, {:.0} MiB on disk)",
        elapsed.as_secs_f64(),
        records as f64 / elapsed.as_secs_f64(),
        size as f64 / (1024.0 * 1024.0)
    );
    println!(
        "group commit (transaction and flush): {}",
        metrics.journal_flush_latency.percentiles()
    );
    // The waybill index is written behind the writer; how fast it catches up.
    let start = Instant::now();
    journal.index_all()?;
    journal.flush().await?;
    let took = start.elapsed();
    println!(
        "waybill index behind the writer: {records} records indexed in {:.2} s = {:.0} records/s",
        took.as_secs_f64(),
        records as f64 / took.as_secs_f64()
    );
    Ok(())
}

/// A parcel record of typical size, scanned `n` ms after `base_ms`.
fn sample_record(base_ms: u64, n: u64) -> ParcelRecord {
    ParcelRecord {
        schema: SCHEMA,
        msg_id: String::new(),
        seq: 0,
        prev_hash: String::new(),
        gateway: "bench-gw".into(),
        line: "L1".into(),
        parcel: n as u32,
        read: ReadOutcome::Ok,
        waybill: Some(format!("BL{n:012}")),
        lane: 2,
        lane_role: LaneRole::Inspection,
        rule: "instruction".into(),
        reason: "customs ordered inspection: selected for inspection".into(),
        instruction_id: Some(format!("I-BL{n:012}")),
        scanned_at_ms: base_ms + n,
        decided_at_ms: base_ms + n,
        divert: DivertOutcome {
            status: DivertStatus::Acked,
            plc_seq: Some((n % 65535 + 1) as u16),
            detail: None,
            at_ms: base_ms + 1 + n,
            late: false,
        },
        revision: 0,
        deadline_ms: None,
        rule_set: None,
        rules_fired: Vec::new(),
        inputs: None,
    }
}

/// Appends `n` records through the real writer; returns when the last one is flushed.
pub(super) async fn fill(
    dir: &Path,
    n: u64,
    window: Duration,
) -> anyhow::Result<(Journal, Duration)> {
    let (journal, elapsed, _) = fill_measured(dir, n, window).await?;
    Ok((journal, elapsed))
}

/// [`fill`], with the writer's metrics (group commit latency).
pub(super) async fn fill_measured(
    dir: &Path,
    n: u64,
    window: Duration,
) -> anyhow::Result<(Journal, Duration, Arc<Metrics>)> {
    let journal = Journal::open(dir)?;
    let metrics = Arc::new(Metrics::default());
    let (sink, writer, mut accepted) = record_sink(journal.clone(), window, metrics.clone())?;
    let start_seq = *accepted.borrow();
    let writer = tokio::spawn(writer.run());
    let start = Instant::now();
    // Scanned now: a backlog from an outage is recent, so housekeeping's retention purge
    // leaves it alone after it is forwarded, as it would on a gateway.
    let base_ms = bondline::metrics::unix_ms(std::time::SystemTime::now());
    for i in 0..n {
        sink.push(sample_record(base_ms, i));
    }
    while *accepted.borrow_and_update() < start_seq + n {
        accepted.changed().await?;
    }
    let elapsed = start.elapsed();
    drop(sink);
    writer.await?;
    Ok((journal, elapsed, metrics))
}
