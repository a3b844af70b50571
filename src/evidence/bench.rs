//! `bondline-lab bench images`: ingest throughput of X-ray views, printed, not asserted.
//!
//! Views are synthetic but X-ray-like (a bright gradient with translucent overlapping
//! objects, a few dense ones, and sensor noise), made by a small deterministic generator
//! here so the bench depends on nothing else, and encoded once as JPEG and once as PNG.
//! Two measurements per format:
//!
//! 1. the CPU path: [`super::process::process`] (hash, structure check, decode, thumbnail)
//!    and the chunk records (base64), on 1 thread and on `workers` threads;
//! 2. the whole ingest through [`super::Ingestor`]: the same work on the blocking pool,
//!    plus the durable write (fsync) to a temporary evidence directory, the records pushed
//!    to a real journal, and the image record handed to a line channel.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bondline_devices::contract::ImageSource;
use futures::StreamExt as _;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{GrayImage, ImageEncoder, Luma};

use super::ingest::{chunk_records, Incoming, Ingestor, Route};
use super::process::{process, DEFAULT_THUMBNAIL_PX};
use super::EvidenceConfig;
use crate::journal::{record_sink, Journal};
use crate::metrics::Metrics;

/// A small deterministic generator (SplitMix64): the same seed gives the same view.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`hi > lo`).
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next() % u64::from(hi - lo)) as u32
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// An object in the tunnel: a box or an ellipse that lets `transmit` of the beam through.
struct Shape {
    ellipse: bool,
    x0: u32,
    y0: u32,
    x1: u32,
    y1: u32,
    transmit: f32,
}

impl Shape {
    fn covers(&self, x: u32, y: u32) -> bool {
        if x < self.x0 || x >= self.x1 || y < self.y0 || y >= self.y1 {
            return false;
        }
        if !self.ellipse {
            return true;
        }
        let (cx, cy) = (
            (self.x0 + self.x1) as f32 / 2.0,
            (self.y0 + self.y1) as f32 / 2.0,
        );
        let (rx, ry) = (
            (self.x1 - self.x0) as f32 / 2.0,
            (self.y1 - self.y0) as f32 / 2.0,
        );
        let (dx, dy) = ((x as f32 - cx) / rx, (y as f32 - cy) / ry);
        dx * dx + dy * dy <= 1.0
    }
}

/// A greyscale X-ray-like view of `w`×`h` (both at least 16): a bright background with a
/// gradient, a parcel's worth of translucent objects, a few dense ones, and noise.
pub fn synthetic_view(w: u32, h: u32, seed: u64) -> GrayImage {
    let mut rng = Rng(seed ^ 0x005E_ED0F_B0D1);
    let mut shapes = Vec::new();
    let objects = rng.range(4, 10);
    for i in 0..objects {
        let dense = i < 2;
        let (sw, sh) = if dense {
            (
                rng.range(w / 40 + 1, w / 12 + 2),
                rng.range(h / 40 + 1, h / 12 + 2),
            )
        } else {
            (
                rng.range(w / 10 + 1, w / 2 + 2),
                rng.range(h / 10 + 1, h / 2 + 2),
            )
        };
        let x0 = rng.range(0, w.saturating_sub(sw).max(1));
        let y0 = rng.range(0, h.saturating_sub(sh).max(1));
        shapes.push(Shape {
            ellipse: rng.next() % 2 == 0,
            x0,
            y0,
            x1: (x0 + sw).min(w),
            y1: (y0 + sh).min(h),
            transmit: if dense {
                0.08 + 0.1 * rng.unit()
            } else {
                0.45 + 0.4 * rng.unit()
            },
        });
    }
    GrayImage::from_fn(w, h, |x, y| {
        let mut v = 245.0 - 30.0 * (y as f32 / h as f32) - 8.0 * (x as f32 / w as f32);
        for s in &shapes {
            if s.covers(x, y) {
                v *= s.transmit;
            }
        }
        // Cheap per-pixel noise from the position and the seed.
        let n = (x.wrapping_mul(374_761_393) ^ y.wrapping_mul(668_265_263) ^ seed as u32)
            .wrapping_mul(1_274_126_177);
        v += ((n >> 28) as f32) - 7.5;
        Luma([v.clamp(0.0, 255.0) as u8])
    })
}

/// The view encoded as JPEG (quality 90) and as PNG.
pub fn encode(view: &GrayImage) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(view)?;
    let mut png = Vec::new();
    PngEncoder::new(&mut png).write_image(
        view.as_raw(),
        view.width(),
        view.height(),
        image::ExtendedColorType::L8,
    )?;
    Ok((jpeg, png))
}

/// Parses `WxH`.
pub fn parse_size(s: &str) -> anyhow::Result<(u32, u32)> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .context("size is WIDTHxHEIGHT, such as 1600x1200")?;
    let (w, h): (u32, u32) = (w.trim().parse()?, h.trim().parse()?);
    if !(16..=8192).contains(&w) || !(16..=8192).contains(&h) {
        bail!("width and height must be 16 to 8192");
    }
    Ok((w, h))
}

/// Runs the bench: `views` views of `w`×`h`, `workers` at once.
pub async fn run(
    views: usize,
    (w, h): (u32, u32),
    workers: usize,
    dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    if views == 0 || workers == 0 {
        bail!("--views and --workers must be at least 1");
    }
    let made = tokio::task::spawn_blocking(move || {
        (0..views)
            .map(|i| encode(&synthetic_view(w, h, i as u64)))
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .await??;
    let (jpegs, pngs): (Vec<Vec<u8>>, Vec<Vec<u8>>) = made.into_iter().unzip();
    let avg =
        |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>() as f64 / v.len() as f64 / 1024.0;
    println!(
        "images: {views} synthetic X-ray views of {w}x{h}, JPEG q90 avg {:.0} KiB, PNG avg {:.0} KiB; thumbnails {DEFAULT_THUMBNAIL_PX} px",
        avg(&jpegs),
        avg(&pngs)
    );
    let jpegs = Arc::new(jpegs);
    let pngs = Arc::new(pngs);
    for (name, set) in [("JPEG", &jpegs), ("PNG", &pngs)] {
        for threads in [1, workers] {
            let shared = set.clone();
            let took = tokio::task::spawn_blocking(move || cpu_path(&shared, threads)).await??;
            report(
                &format!("{name} process + chunk records, {threads} thread(s)"),
                set.len(),
                set,
                took,
            );
            if workers == 1 {
                break;
            }
        }
    }
    let (_tmp, base) = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            (None, d)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("bondline-bench-images-")
                .tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    for (name, set) in [("JPEG", &jpegs), ("PNG", &pngs)] {
        let took = full_ingest(set, workers, &base.join(name.to_lowercase())).await?;
        report(
            &format!("{name} full ingest (fsync'd store in {}, journal, line channel), {workers} worker(s)", base.display()),
            set.len(),
            set,
            took,
        );
    }
    Ok(())
}

fn report(what: &str, n: usize, set: &[Vec<u8>], took: Duration) {
    let bytes: usize = set.iter().map(Vec::len).sum();
    let s = took.as_secs_f64();
    println!(
        "{what}: {n} views in {s:.2} s = {:.1} views/s ({:.1} MiB/s of originals, {:.1} ms of wall time per view)",
        n as f64 / s,
        bytes as f64 / (1024.0 * 1024.0) / s,
        1000.0 * s / n as f64,
    );
}

/// Processes every image and makes its chunk records, `threads` images at a time.
fn cpu_path(set: &[Vec<u8>], threads: usize) -> anyhow::Result<Duration> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let start = Instant::now();
    let failed = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut failed = 0usize;
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(bytes) = set.get(i) else { break };
                        let p = process(bytes, DEFAULT_THUMBNAIL_PX);
                        failed += usize::from(p.error.is_some());
                        std::hint::black_box(chunk_records(bytes, &p.sha256, "bench-gw", "L1"));
                    }
                    failed
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(1))
            .sum::<usize>()
    });
    let took = start.elapsed();
    if failed > 0 {
        bail!("{failed} synthetic views did not process");
    }
    Ok(took)
}

/// Ingests every image through the real ingest path into `dir`.
async fn full_ingest(
    set: &Arc<Vec<Vec<u8>>>,
    workers: usize,
    dir: &std::path::Path,
) -> anyhow::Result<Duration> {
    let metrics = Arc::new(Metrics::default());
    let journal = Journal::open(&dir.join("journal"))?;
    let (sink, writer, _accepted) =
        record_sink(journal, Duration::from_millis(2), metrics.clone())?;
    let writer = tokio::spawn(writer.run());
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let line = tokio::spawn(async move {
        let mut n = 0usize;
        while rx.recv().await.is_some() {
            n += 1;
        }
        n
    });
    let mut cfg = EvidenceConfig::defaults(&dir.join("journal"));
    cfg.workers = workers;
    let routes = HashMap::from([(
        "xr-1".to_string(),
        Route {
            line: "L1".into(),
            tx,
        },
    )]);
    let ingestor = Ingestor::new(&cfg, "bench-gw".into(), routes, sink, metrics.clone());
    let start = Instant::now();
    let results: Vec<_> = futures::stream::iter(set.iter().enumerate())
        .map(|(i, bytes)| {
            let ingestor = ingestor.clone();
            let image = Incoming {
                device: "xr-1".into(),
                scan_id: i as u32,
                view: "top".into(),
                source: ImageSource::Spool,
                file_name: format!("{i}_top.img"),
                bytes: bytes.clone(),
                received: Instant::now(),
            };
            async move { ingestor.ingest(image).await }
        })
        .buffer_unordered(workers.max(1) * 2)
        .collect()
        .await;
    let took = start.elapsed();
    for r in results {
        r?;
    }
    drop(ingestor);
    let handed = line.await?;
    writer.await?;
    if handed != set.len() {
        bail!("{handed} of {} image records reached the line", set.len());
    }
    println!(
        "  per image, arrival to kept, chunked and handed to its line: {}",
        metrics.image_ingest_latency.percentiles()
    );
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_views_are_deterministic_and_decode() {
        let a = synthetic_view(200, 150, 3);
        assert_eq!(a, synthetic_view(200, 150, 3));
        assert_ne!(a, synthetic_view(200, 150, 4));
        let (jpeg, png) = encode(&a).unwrap();
        for bytes in [jpeg, png] {
            let p = process(&bytes, 160);
            assert_eq!(p.error, None);
            assert_eq!((p.width, p.height), (Some(200), Some(150)));
        }
        assert_eq!(parse_size("1600x1200").unwrap(), (1600, 1200));
        assert!(parse_size("1600").is_err());
        assert!(parse_size("8x8").is_err());
    }
}
