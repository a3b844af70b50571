//! The spool watcher and the upload endpoint against a real journal in a temp dir, a real
//! evidence directory, and a line channel standing in for the line task.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bondline_devices::contract::{ImageRecord, ImageSource, Record, IMAGE_CHUNK_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ingest::{Ingestor, Route};
use super::process::tests::{jpeg, png};
use super::spool::{Watcher, REJECTED_DIR};
use super::EvidenceConfig;
use crate::journal::{record_sink, Journal};
use crate::metrics::Metrics;
use crate::view::auth::Credentials;

const WAIT: Duration = Duration::from_secs(20);

struct Rig {
    dir: tempfile::TempDir,
    journal: Journal,
    metrics: Arc<Metrics>,
    ingestor: Ingestor,
    rx: mpsc::Receiver<ImageRecord>,
    evidence: PathBuf,
    spool: PathBuf,
    shutdown: CancellationToken,
}

fn rig(max_forward_bytes: u64) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("journal");
    let journal = Journal::open(&store).unwrap();
    let metrics = Arc::new(Metrics::default());
    let (sink, writer, _) =
        record_sink(journal.clone(), Duration::from_millis(1), metrics.clone()).unwrap();
    tokio::spawn(writer.run());
    let mut cfg = EvidenceConfig::defaults(&store);
    cfg.max_forward_bytes = max_forward_bytes;
    let (tx, rx) = mpsc::channel(64);
    let routes = HashMap::from([(
        "xr-1".to_string(),
        Route {
            line: "L1".into(),
            tx,
        },
    )]);
    let ingestor = Ingestor::new(&cfg, "gw".into(), routes, sink, metrics.clone());
    let spool = dir.path().join("spool");
    Rig {
        evidence: cfg.dir.clone(),
        spool,
        journal,
        metrics,
        ingestor,
        rx,
        shutdown: CancellationToken::new(),
        dir,
    }
}

impl Rig {
    fn watch(&self) {
        let w = Watcher::new(
            "xr-1".into(),
            self.spool.clone(),
            self.ingestor.clone(),
            self.metrics.clone(),
            2,
        );
        tokio::spawn(w.run(self.shutdown.clone()));
    }

    async fn next_image(&mut self) -> ImageRecord {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("an image record in time")
            .expect("the channel is open")
    }

    /// The journal's chunk records of `sha256`, once there are `n` of them.
    async fn chunks(&self, sha256: &str, n: usize) -> Vec<u8> {
        let found = wait_for(|| {
            let chunks = self.chunk_records(sha256);
            (chunks.len() == n).then_some(chunks)
        })
        .await;
        let mut joined = Vec::new();
        for (i, c) in found.iter().enumerate() {
            assert_eq!((c.index as usize, c.count as usize), (i, n));
            assert_eq!((c.line.as_str(), c.waybill.as_deref()), ("L1", None));
            joined.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(&c.data_b64)
                    .unwrap(),
            );
        }
        joined
    }

    fn chunk_records(&self, sha256: &str) -> Vec<bondline_devices::contract::ImageChunkRecord> {
        let (head, _) = self.journal.chain_head().unwrap();
        (1..=head)
            .filter_map(|s| self.journal.record(s).unwrap())
            .filter_map(|r| match r {
                Record::ImageChunk(c) if c.sha256 == sha256 => Some(c),
                _ => None,
            })
            .collect()
    }

    fn kept_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for fan in std::fs::read_dir(&self.evidence).into_iter().flatten() {
            for f in std::fs::read_dir(fan.unwrap().path()).unwrap() {
                out.push(f.unwrap().path());
            }
        }
        out
    }
}

/// Polls `f` every 20 ms until it gives a value; panics after [`WAIT`].
async fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < WAIT, "condition not met in {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(crate::journal::sha256(bytes))
}

#[tokio::test]
async fn spool_images_before_and_after_start_are_kept_forwarded_and_removed() {
    let mut rig = rig(8192 * 1024);
    std::fs::create_dir_all(&rig.spool).unwrap();
    let first = jpeg(1200, 900);
    std::fs::write(rig.spool.join("17_top.jpg"), &first).unwrap();
    rig.watch();

    let r = rig.next_image().await;
    assert_eq!(
        (
            r.device.as_str(),
            r.scan_id,
            r.view.as_str(),
            r.line.as_str()
        ),
        ("xr-1", 17, "top", "L1")
    );
    assert_eq!(
        (r.source, r.parcel, r.waybill.as_deref()),
        (ImageSource::Spool, None, None)
    );
    assert_eq!(
        (r.file_name.as_str(), r.gateway.as_str()),
        ("17_top.jpg", "gw")
    );
    assert_eq!(r.sha256, sha(&first));
    assert_eq!(r.bytes, first.len() as u64);
    assert_eq!(
        (r.format.as_deref(), r.width, r.height),
        (Some("jpeg"), Some(1200), Some(900))
    );
    assert_eq!(r.error, None);
    let thumb = base64::engine::general_purpose::STANDARD
        .decode(r.thumbnail_jpeg_b64.as_ref().unwrap())
        .unwrap();
    let thumb = image::load_from_memory(&thumb).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (160, 120));
    let kept = PathBuf::from(r.kept_at.as_ref().unwrap());
    assert_eq!(
        kept,
        rig.evidence
            .join(&r.sha256[..2])
            .join(format!("{}.jpg", r.sha256))
    );
    assert_eq!(std::fs::read(&kept).unwrap(), first);
    let n = first.len().div_ceil(IMAGE_CHUNK_BYTES);
    assert_eq!(r.chunks as usize, n);
    assert_eq!(rig.chunks(&r.sha256, n).await, first);
    wait_for(|| (!rig.spool.join("17_top.jpg").exists()).then_some(())).await;

    // Written under a temporary name, then renamed: only the final name is taken.
    let second = png(300, 200);
    std::fs::write(rig.spool.join("18_side.png.part"), &second).unwrap();
    std::fs::write(rig.spool.join(".19_top.jpg"), &first).unwrap();
    std::fs::rename(
        rig.spool.join("18_side.png.part"),
        rig.spool.join("18_side.png"),
    )
    .unwrap();
    let r = rig.next_image().await;
    assert_eq!((r.scan_id, r.view.as_str()), (18, "side"));
    assert_eq!((r.format.as_deref(), r.error), (Some("png"), None));
    assert!(r.kept_at.unwrap().ends_with(".png"));
    wait_for(|| (!rig.spool.join("18_side.png").exists()).then_some(())).await;
    assert!(
        rig.spool.join(".19_top.jpg").exists(),
        "a dotfile is left alone"
    );
    assert!(rig.rx.try_recv().is_err(), "nothing else was taken");
    assert_eq!(Metrics::get(&rig.metrics.images_ingested), 2);
    assert_eq!(rig.metrics.image_ingest_latency.count(), 2);
    rig.shutdown.cancel();
}

#[tokio::test]
async fn a_corrupt_spool_file_is_kept_and_forwarded_with_its_error() {
    let mut rig = rig(8192 * 1024);
    std::fs::create_dir_all(&rig.spool).unwrap();
    let whole = jpeg(640, 480);
    let cut = &whole[..whole.len() / 2];
    std::fs::write(rig.spool.join("20_top.jpg"), cut).unwrap();
    rig.watch();
    let r = rig.next_image().await;
    let e = r.error.as_deref().unwrap();
    assert!(e.starts_with("truncated JPEG: "), "{e}");
    assert_eq!((r.format, r.thumbnail_jpeg_b64), (None, None));
    assert_eq!(r.sha256, sha(cut));
    assert_eq!(std::fs::read(r.kept_at.unwrap()).unwrap(), cut);
    assert_eq!(rig.chunks(&r.sha256, r.chunks as usize).await, cut);
    wait_for(|| (!rig.spool.join("20_top.jpg").exists()).then_some(())).await;
    assert_eq!(Metrics::get(&rig.metrics.images_with_errors), 1);
    rig.shutdown.cancel();
}

#[tokio::test]
async fn a_badly_named_file_is_moved_aside_and_counted() {
    let mut rig = rig(8192 * 1024);
    std::fs::create_dir_all(&rig.spool).unwrap();
    std::fs::write(rig.spool.join("parcel photo.jpg"), jpeg(32, 32)).unwrap();
    std::fs::write(rig.spool.join("21_top.jpg"), jpeg(32, 32)).unwrap();
    rig.watch();
    let r = rig.next_image().await;
    assert_eq!(r.scan_id, 21);
    let moved = rig.spool.join(REJECTED_DIR).join("parcel photo.jpg");
    wait_for(|| moved.exists().then_some(())).await;
    assert!(!rig.spool.join("parcel photo.jpg").exists());
    assert_eq!(Metrics::get(&rig.metrics.images_rejected), 1);
    assert!(rig.rx.try_recv().is_err());
    rig.shutdown.cancel();
}

#[tokio::test]
async fn the_same_bytes_twice_are_kept_once_and_a_large_original_stays_local() {
    let mut rig = rig(4 * 1024);
    std::fs::create_dir_all(&rig.spool).unwrap();
    let big = jpeg(800, 600);
    assert!(big.len() > 4 * 1024);
    std::fs::write(rig.spool.join("30_top.jpg"), &big).unwrap();
    std::fs::write(rig.spool.join("31_top.jpeg"), &big).unwrap();
    rig.watch();
    let a = rig.next_image().await;
    let b = rig.next_image().await;
    assert_eq!(a.sha256, b.sha256);
    assert_eq!(a.kept_at, b.kept_at);
    assert_eq!(
        (a.chunks, b.chunks),
        (0, 0),
        "over max_forward_kb: kept only"
    );
    assert_eq!(rig.kept_files().len(), 1);
    // A small image after them is forwarded; the journal keeps order, so once its chunk is
    // there, any chunk of the large one would be too.
    let small = png(4, 4);
    std::fs::write(rig.spool.join("32_top.png"), &small).unwrap();
    let c = rig.next_image().await;
    assert_eq!(c.chunks, 1);
    assert_eq!(rig.chunks(&c.sha256, 1).await, small);
    assert!(rig.chunk_records(&a.sha256).is_empty());
    assert_eq!(rig.kept_files().len(), 2);
    rig.shutdown.cancel();
}

#[tokio::test]
async fn a_missing_spool_is_a_health_problem_until_it_appears() {
    let mut rig = rig(8192 * 1024);
    rig.watch();
    let down = wait_for(|| {
        rig.metrics
            .links()
            .get("spool:xr-1")
            .filter(|l| !l.up)
            .cloned()
    })
    .await;
    assert!(down.last_error.unwrap().contains("cannot read spool"));
    std::fs::create_dir_all(&rig.spool).unwrap();
    std::fs::write(rig.spool.join("40_top.png"), png(40, 40)).unwrap();
    assert_eq!(rig.next_image().await.scan_id, 40);
    assert!(rig.metrics.links()["spool:xr-1"].up);
    rig.shutdown.cancel();
}

#[tokio::test]
async fn an_unwritable_evidence_dir_leaves_the_file_in_the_spool() {
    let mut rig = rig(8192 * 1024);
    std::fs::create_dir_all(&rig.spool).unwrap();
    // A plain file where the evidence directory should be: nothing can be kept.
    std::fs::write(&rig.evidence, b"not a directory").unwrap();
    std::fs::write(rig.spool.join("50_top.jpg"), jpeg(40, 40)).unwrap();
    rig.watch();
    wait_for(|| (Metrics::get(&rig.metrics.images_store_failed) > 0).then_some(())).await;
    assert!(rig.spool.join("50_top.jpg").exists());
    assert!(rig.rx.try_recv().is_err(), "nothing handed on");
    assert!(!rig.metrics.links()["evidence"].up);
    // Once it can be written, the file is taken on a later try.
    std::fs::remove_file(&rig.evidence).unwrap();
    assert_eq!(rig.next_image().await.scan_id, 50);
    assert!(rig.metrics.links()["evidence"].up);
    rig.shutdown.cancel();
}

#[tokio::test]
async fn a_stopped_line_does_not_lose_the_image_record() {
    let rig = rig(8192 * 1024);
    let Rig {
        rx,
        journal,
        ingestor,
        dir: _dir,
        metrics,
        ..
    } = rig;
    drop(rx);
    let done = ingestor
        .ingest(super::Incoming {
            device: "xr-1".into(),
            scan_id: 60,
            view: "top".into(),
            source: ImageSource::Upload,
            file_name: "60_top.png".into(),
            bytes: png(20, 20),
            received: std::time::Instant::now(),
        })
        .await
        .unwrap();
    let image = wait_for(|| {
        let (head, _) = journal.chain_head().unwrap();
        (1..=head).find_map(|s| match journal.record(s).unwrap() {
            Some(Record::Image(i)) => Some(i),
            _ => None,
        })
    })
    .await;
    assert_eq!((image.sha256, image.parcel), (done.sha256, None));
    assert_eq!(Metrics::get(&metrics.images_unrouted), 1);
}

// ---- upload ---------------------------------------------------------------------------

const TOKEN: &str = "xray-station-secret";

async fn upload_server(rig: &Rig, max_bytes: usize) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let creds = Credentials::new(Some(crate::journal::sha256(TOKEN.as_bytes())), Vec::new());
    let app = super::upload::router(rig.ingestor.clone(), creds, max_bytes, rig.shutdown.clone());
    tokio::spawn(super::upload::serve(
        listener,
        app,
        super::upload::DEFAULT_MAX_CONNECTIONS,
        Default::default(),
        rig.shutdown.clone(),
    ));
    addr
}

/// One HTTP/1.1 POST on a fresh connection; `body` None sends the headers only.
async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: Option<&[u8]>,
) -> (u16, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    if let Some(b) = body {
        s.write_all(b).await.unwrap();
    }
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

type Headers = Vec<(&'static str, String)>;

fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

fn jpeg_type() -> (&'static str, String) {
    ("Content-Type", "image/jpeg".into())
}

#[tokio::test]
async fn an_upload_needs_the_token_and_is_kept_and_handed_on() {
    let mut rig = rig(8192 * 1024);
    let addr = upload_server(&rig, 1024 * 1024).await;
    let img = jpeg(320, 240);
    let path = "/xray/xr-1/42/top";

    let (status, _) = post(addr, path, &[jpeg_type()], Some(&img)).await;
    assert_eq!(status, 401, "no token");
    let (status, _) = post(addr, path, &[jpeg_type(), bearer("guess")], Some(&img)).await;
    assert_eq!(status, 401, "wrong token");
    assert!(rig.rx.try_recv().is_err());

    let (status, body) = post(addr, path, &[jpeg_type(), bearer(TOKEN)], Some(&img)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["sha256"], sha(&img));
    assert_eq!(body["bytes"], img.len());
    assert!(body["error"].is_null());
    let r = rig.next_image().await;
    assert_eq!(
        (r.scan_id, r.view.as_str(), r.source),
        (42, "top", ImageSource::Upload)
    );
    assert_eq!(r.file_name, "42_top.jpg");
    assert_eq!(std::fs::read(r.kept_at.unwrap()).unwrap(), img);
    assert_eq!(rig.chunks(&r.sha256, r.chunks as usize).await, img);

    // A corrupt image is accepted, kept, and answered with its error.
    let (status, body) = post(
        addr,
        "/xray/xr-1/43/side",
        &[("Content-Type", "image/png".into()), bearer(TOKEN)],
        Some(b"\x89PNG\r\n\x1a\n garbage"),
    )
    .await;
    assert_eq!(status, 201);
    assert!(body["error"].as_str().unwrap().contains("PNG"), "{body}");
    assert!(rig.next_image().await.error.is_some());
    rig.shutdown.cancel();
}

#[tokio::test]
async fn guessing_the_upload_token_is_throttled_per_address() {
    let rig = rig(8192 * 1024);
    let addr = upload_server(&rig, 1024 * 1024).await;
    let img = jpeg(32, 32);
    let path = "/xray/xr-1/44/top";
    for i in 0..10 {
        let (status, _) = post(
            addr,
            path,
            &[jpeg_type(), bearer(&format!("g{i}"))],
            Some(&img),
        )
        .await;
        assert_eq!(status, 401, "guess {i}");
    }
    // The eleventh try is refused before its token is checked, even the right one.
    let (status, body) = post(addr, path, &[jpeg_type(), bearer(TOKEN)], Some(&img)).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("failed logins"),
        "{body}"
    );
    rig.shutdown.cancel();
}

#[tokio::test]
async fn bad_uploads_are_refused_with_their_reason() {
    let mut rig = rig(8192 * 1024);
    let max = 64 * 1024;
    let addr = upload_server(&rig, max).await;
    let img = jpeg(64, 64);
    let auth = bearer(TOKEN);
    let cases: [(&str, Headers, u16); 6] = [
        ("/xray/xr-9/1/top", vec![jpeg_type(), auth.clone()], 404),
        ("/xray/xr-1/abc/top", vec![jpeg_type(), auth.clone()], 400),
        (
            "/xray/xr-1/99999999999/top",
            vec![jpeg_type(), auth.clone()],
            400,
        ),
        ("/xray/xr-1/1/Top", vec![jpeg_type(), auth.clone()], 400),
        (
            "/xray/xr-1/1/top",
            vec![("Content-Type", "text/plain".into()), auth.clone()],
            415,
        ),
        ("/elsewhere", vec![jpeg_type(), auth.clone()], 404),
    ];
    for (path, headers, want) in cases {
        let (status, body) = post(addr, path, &headers, Some(&img)).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    // Announced larger than the limit: refused before the body is sent.
    let (status, _) = post(
        addr,
        "/xray/xr-1/1/top",
        &[
            jpeg_type(),
            auth.clone(),
            ("Content-Length", (max + 1).to_string()),
        ],
        None,
    )
    .await;
    assert_eq!(status, 413);
    assert!(rig.rx.try_recv().is_err());
    assert_eq!(Metrics::get(&rig.metrics.images_ingested), 0);
    rig.shutdown.cancel();
}

#[tokio::test]
async fn start_runs_watchers_and_the_upload_endpoint_until_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("journal")).unwrap();
    let metrics = Arc::new(Metrics::default());
    let (sink, writer, _) =
        record_sink(journal.clone(), Duration::from_millis(1), metrics.clone()).unwrap();
    let writer = tokio::spawn(writer.run());
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let mut cfg = EvidenceConfig::defaults(&dir.path().join("journal"));
    cfg.upload = Some(super::UploadConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        credentials: Credentials::default(),
        max_connections: super::upload::DEFAULT_MAX_CONNECTIONS,
    });
    let (tx, mut rx) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let tasks = super::start(
        &cfg,
        "gw".into(),
        HashMap::from([(
            "xr-1".to_string(),
            super::Destination {
                line: "L1".into(),
                spool: Some(spool.clone()),
                tx,
            },
        )]),
        sink,
        metrics,
        shutdown.clone(),
    )
    .unwrap();
    assert_eq!(tasks.len(), 2);
    std::fs::write(spool.join("7_top.png"), png(16, 16)).unwrap();
    let r = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.scan_id, 7);
    shutdown.cancel();
    for t in tasks {
        tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
    }
    // Every sink is gone with the tasks: the journal writer ends too.
    tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
    assert!(Path::new(&r.kept_at.unwrap()).exists());
}

#[tokio::test]
async fn the_xray_simulators_spool_files_are_taken_as_written() {
    use bondline_simulators::xray::{ImageFormat, ImageSpec, XrayImages};
    let mut rig = rig(8192 * 1024);
    let jpegs = XrayImages::new(&rig.spool, ImageSpec::default()).unwrap();
    let pngs = XrayImages::new(
        &rig.spool,
        ImageSpec {
            format: ImageFormat::Png,
            views: vec!["side".into()],
            ..ImageSpec::default()
        },
    )
    .unwrap();
    jpegs.write(1001, true).unwrap();
    pngs.write(1002, false).unwrap();
    jpegs.write_corrupt(1003, "top").unwrap();
    jpegs.write_truncated(1004, "top").unwrap();
    rig.watch();
    let mut seen = HashMap::new();
    for _ in 0..5 {
        let r = rig.next_image().await;
        seen.insert((r.scan_id, r.view.clone()), r);
    }
    for key in [(1001, "top"), (1001, "side")] {
        let r = &seen[&(key.0, key.1.to_string())];
        assert_eq!(
            (r.format.as_deref(), r.error.as_deref()),
            (Some("jpeg"), None)
        );
        assert_eq!((r.width, r.height), (Some(640), Some(480)));
    }
    assert_eq!(seen[&(1002, "side".into())].format.as_deref(), Some("png"));
    let corrupt = seen[&(1003, "top".into())].error.clone().unwrap();
    assert_eq!(corrupt, "not a JPEG or PNG image");
    let truncated = seen[&(1004, "top".into())].error.clone().unwrap();
    assert!(truncated.starts_with("truncated JPEG: "), "{truncated}");
    wait_for(|| {
        let left = std::fs::read_dir(&rig.spool).unwrap().count();
        (left == 0).then_some(())
    })
    .await;
    rig.shutdown.cancel();
}

#[tokio::test]
async fn a_stalled_upload_does_not_hold_up_shutdown() {
    let rig = rig(8192 * 1024);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = super::upload::router(
        rig.ingestor.clone(),
        Credentials::default(),
        1024 * 1024,
        rig.shutdown.clone(),
    );
    let server = tokio::spawn(super::upload::serve(
        listener,
        app,
        super::upload::DEFAULT_MAX_CONNECTIONS,
        Default::default(),
        rig.shutdown.clone(),
    ));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Announces 1000 bytes and sends 10: the handler waits for the rest.
    let head = format!(
        "POST /xray/xr-1/1/top HTTP/1.1\r\nHost: {addr}\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n0123456789"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    rig.shutdown.cancel();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("the server stops although a body is still due")
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 503"),
        "either closed before the request was read, or refused: {text}"
    );
    assert_eq!(Metrics::get(&rig.metrics.images_ingested), 0);
}
