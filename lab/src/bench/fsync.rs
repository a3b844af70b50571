//! `bondline-lab bench fsync`: what a durable write of one release intent costs on this disk
//! at its cheapest: a 1 KiB `pwrite` and `fdatasync` into a file written full of zeros first,
//! so that no write changes its metadata (nothing for the filesystem's journal). Run it beside
//! a load (a draining backlog) to compare with the intents store's own flush
//! (`bondline_intent_flush_latency_seconds`).

use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The file's size; writes go round it 4 KiB apart.
const SIZE: u64 = 16 << 20;
/// Time between two writes.
const EVERY: Duration = Duration::from_millis(20);

pub(super) fn run(seconds: u64, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let (_tmp, dir) = super::work_dir(dir)?;
    let path = dir.join("fsync-probe.bin");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)?;
    let zeros = vec![0u8; 1 << 20];
    for i in 0..SIZE / zeros.len() as u64 {
        file.write_all_at(&zeros, i * zeros.len() as u64)?;
    }
    file.sync_all()?;
    let histogram = bondline::metrics::Histogram::default();
    let record = [b'x'; 1024];
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut offset = 0u64;
    while Instant::now() < end {
        let started = Instant::now();
        file.write_all_at(&record, offset)?;
        file.sync_data()?;
        histogram.record(started.elapsed());
        offset = (offset + 4096) % SIZE;
        std::thread::sleep(EVERY);
    }
    drop(file);
    std::fs::remove_file(&path)?;
    println!(
        "1 KiB pwrite + fdatasync into a pre-zeroed file, every {} ms for {seconds} s: {}",
        EVERY.as_millis(),
        histogram.percentiles()
    );
    Ok(())
}
