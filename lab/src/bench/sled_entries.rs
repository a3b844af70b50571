//! `bondline-lab bench sled-entries`: what sled 0.34 costs per stored entry, on disk and in
//! the resident memory of a fresh open, for a given value size. The journal's footprint per
//! held declaration (issue #16) follows from it: sled's memory after an open grows with the
//! number of entries, not with their bytes.

use std::path::{Path, PathBuf};
use std::time::Instant;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// The journal's own sled settings, for the figures to be the journal's.
fn config(dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .cache_capacity(bondline::journal::CACHE_BYTES)
        .flush_every_ms(Some(500))
}

pub(super) fn run(entries: u64, value_bytes: usize, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let (_tmp, dir) = super::work_dir(dir)?;
    let store = dir.join("sled-entries");
    let _ = std::fs::remove_dir_all(&store);
    let started = Instant::now();
    {
        let db = config(&store).open()?;
        let tree = db.open_tree("entries")?;
        let value = vec![0x5au8; value_bytes];
        for i in 0..entries {
            // Waybill-like keys, in no particular order.
            let key = format!(
                "BL{:014}",
                i.wrapping_mul(2_654_435_761) % 100_000_000_000_000
            );
            tree.insert(key.as_bytes(), &value[..])?;
        }
        db.flush()?;
    }
    let filled = started.elapsed();
    // Opened again in a process of its own: this one's memory holds the fill.
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["bench", "sled-open", "--dir"])
        .arg(&store)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "the open failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let f: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [open_ms, before, after, bytes] = f[..] else {
        anyhow::bail!("unexpected answer from the open: {line}");
    };
    let per_million = 1_000_000.0 / entries.max(1) as f64;
    println!(
        "sled: {entries} entries of {value_bytes} bytes filled in {:.1} s; on disk {:.0} MB ({:.0} bytes per entry); a fresh open: {open_ms:.0} ms, RSS {before:.0} → {after:.0} MiB ({:.1} MiB per million entries)",
        filled.as_secs_f64(),
        bytes / 1e6,
        bytes / entries.max(1) as f64,
        (after - before) * per_million,
    );
    let _ = std::fs::remove_dir_all(&store);
    Ok(())
}

/// The child's side: opens the store and prints the open's time, RSS before and after, and
/// the size on disk.
pub(super) fn open(dir: &Path, read_all: bool) -> anyhow::Result<()> {
    let before = rss_mib();
    let started = Instant::now();
    let db = config(dir).open()?;
    let open_ms = started.elapsed().as_secs_f64() * 1e3;
    let after = rss_mib();
    if read_all {
        for name in db.tree_names() {
            let tree = db.open_tree(&name)?;
            let (mut entries, mut bytes) = (0u64, 0u64);
            for entry in tree.iter() {
                let (k, v) = entry?;
                entries += 1;
                bytes += (k.len() + v.len()) as u64;
            }
            if entries > 0 {
                eprintln!(
                    "read {}: {entries} entries, {:.0} MiB of keys and values; RSS now {:.0} MiB",
                    String::from_utf8_lossy(&name),
                    bytes as f64 / 1048576.0,
                    rss_mib()
                );
            }
        }
    }
    println!("{open_ms} {before} {after} {}", db.size_on_disk()?);
    Ok(())
}
