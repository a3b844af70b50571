//! Stored state is verified before it is used, end to end with the real binary: a stored
//! hold edited into a release on disk (with sled, the daemon stopped) releases nothing, and a
//! consistent rewrite of the journal's chain fails `journal verify` and raises an alarm at
//! start while the line keeps deciding.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bondline::journal::integrity::{default_key_file, IntegrityKey};
use bondline::journal::Journal;
use bondline_devices::contract::{
    Action, AlertKind, Declaration, EventKind, Instruction, LaneRole, Record, SCHEMA,
};
use bondline_simulators::platform::PlatformSim;
use tokio::io::AsyncWriteExt;

use crate::harness::{http_get, stx_etx, view_ready, wait_until, Daemon, Mosquitto, ViewLine};

const PREFIX: &str = "bondline/test-gw";

fn declaration(w: &str) -> Declaration {
    Declaration {
        schema: SCHEMA,
        waybill: w.into(),
        enterprise: "E1".into(),
        consumer: Some(format!("c-{w}")),
        identity_verified: true,
        value_minor: Some(1000),
        currency: Some("CNY".into()),
        gross_weight_g: None,
        items: vec![],
        order_id: None,
        pieces: None,
        signature: None,
    }
}

fn instruction(w: &str, id: &str, action: Action) -> Instruction {
    Instruction {
        schema: SCHEMA,
        instruction_id: id.into(),
        waybill: w.into(),
        action,
        reason: String::new(),
        issued_at_ms: Some(1),
        signature: None,
    }
}

fn bondline(args: &[&str], config: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bondline"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn open_sled(store: &Path) -> sled::Db {
    sled::Config::new().path(store).open().unwrap()
}

/// A line with a view, a scanner the test writes to and a platform on a real Mosquitto.
struct Line {
    _dir: tempfile::TempDir,
    store: std::path::PathBuf,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    view: SocketAddr,
    scanner: tokio::net::TcpListener,
    platform: PlatformSim,
    _mosquitto: Mosquitto,
    _stop: tokio_util::sync::DropGuard,
}

async fn line() -> Line {
    let ViewLine {
        dir,
        mosquitto,
        scanner,
        store,
        config,
        view,
        log,
        stop,
        ..
    } = ViewLine::start().await;
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, "platform-integrity")
        .await
        .unwrap();
    Line {
        store,
        log,
        config,
        view,
        scanner,
        platform,
        _mosquitto: mosquitto,
        _stop: stop,
        _dir: dir,
    }
}

impl Line {
    /// Scans `waybills` and returns the lane role of each parcel record.
    async fn scan(&self, waybills: &[&str]) -> Vec<LaneRole> {
        let (mut stream, _) = tokio::time::timeout(Duration::from_secs(30), self.scanner.accept())
            .await
            .expect("the daemon connects to the scanner")
            .unwrap();
        let framing = stx_etx();
        for w in waybills {
            stream.write_all(&framing.encode(w)).await.unwrap();
        }
        let seen = |p: &PlatformSim| {
            waybills
                .iter()
                .all(|w| p.records().iter().any(|r| r.waybill.as_deref() == Some(*w)))
        };
        assert!(
            wait_until(Duration::from_secs(30), || seen(&self.platform)).await,
            "records: {:?}\n{}",
            self.platform.records(),
            self.read_log()
        );
        let records = self.platform.records();
        waybills
            .iter()
            .map(|w| {
                records
                    .iter()
                    .find(|r| r.waybill.as_deref() == Some(*w))
                    .unwrap()
                    .lane_role
            })
            .collect()
    }

    async fn wait_not_ready(&self, containing: &str) -> String {
        let mut last = None;
        let ok = wait_until(Duration::from_secs(30), || {
            last = http_get(self.view, "/readyz");
            matches!(&last, Some((503, body)) if body.contains(containing))
        })
        .await;
        assert!(ok, "/readyz: {last:?}\n{}", self.read_log());
        last.unwrap().1
    }

    fn read_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_hold_edited_into_a_release_releases_nothing() {
    let line = line().await;
    // The gateway's stored state, as a first start would leave it: a declared parcel held by
    // the platform, and one released.
    {
        let (key, created) = IntegrityKey::load_or_create(&default_key_file(&line.store)).unwrap();
        assert!(created);
        let j = Journal::open(&line.store).unwrap();
        j.set_integrity_key(key, true);
        j.load_clearance().unwrap();
        for w in ["INTEG01", "INTEG02"] {
            j.store_declaration(&declaration(w)).unwrap();
        }
        j.store_instruction(&instruction("INTEG02", "I-2", Action::Release))
            .unwrap();
        j.flush().await.unwrap();
        // The hold in a block of its own, the last of the platform log.
        j.store_instruction(&instruction("INTEG01", "I-1", Action::Hold))
            .unwrap();
        j.flush().await.unwrap();
    }
    // The intruder, with the daemon stopped: INTEG01's hold turned into a release in place,
    // the rest of the entry kept.
    {
        // The last block of the platform log's segment holds it: its payload edited, its
        // checksum made anew (the integrity tag kept).
        let dir = std::path::PathBuf::from(format!("{}-platform", line.store.display()));
        let segment = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "log"))
            .expect("a segment");
        let bytes = std::fs::read(&segment).unwrap();
        // Blocks, then the zeros the segment grows by.
        let mut at = 0;
        let mut last = 0;
        while at < bytes.len() && bytes[at] != 0 {
            last = at;
            at += 9 + u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        }
        let stored = &bytes[last + 9..at];
        assert!(stored.windows(3).any(|w| w == b"I-1"), "the hold's block");
        let hold = stored
            .windows(6)
            .position(|w| w == b"\"hold\"")
            .expect("the stored hold");
        let mut edited = stored[..hold].to_vec();
        edited.extend_from_slice(b"\"release\"");
        edited.extend_from_slice(&stored[hold + 6..]);
        let mut out = bytes[..last].to_vec();
        out.push(0xB1);
        out.extend_from_slice(&(edited.len() as u32).to_be_bytes());
        // The block's checksum covers its length and payload.
        let mut crc = crc32fast::Hasher::new();
        crc.update(&(edited.len() as u32).to_be_bytes());
        crc.update(&edited);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
        out.extend_from_slice(&edited);
        out.resize(bytes.len().max(out.len()), 0);
        std::fs::write(&segment, out).unwrap();
    }
    // `journal verify` with the key names it.
    let (code, out, err) = bondline(&["journal", "verify"], &line.config);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("instruction for waybill INTEG01"), "{out}");

    let daemon = Daemon::start(&line.config, &line.log);
    let body = line.wait_not_ready("stored state refused").await;
    assert!(body.contains("INTEG01"), "{body}");
    let roles = line.scan(&["INTEG01", "INTEG02"]).await;
    assert_ne!(
        roles[0],
        LaneRole::Release,
        "the edited hold releases nothing"
    );
    assert_eq!(
        roles[1],
        LaneRole::Release,
        "genuine stored state still works"
    );
    let alerted = wait_until(Duration::from_secs(20), || {
        line.platform.all_records().iter().any(|r| {
            matches!(r, Record::Alert(a) if a.alert == AlertKind::StoredStateRefused
                && a.waybill.as_deref() == Some("INTEG01"))
        }) && line
            .platform
            .events()
            .iter()
            .any(|e| e.kind == EventKind::Alarm && e.detail.starts_with("stored_state_refused"))
    })
    .await;
    assert!(
        alerted,
        "{:?}\n{:?}",
        line.platform.events(),
        line.read_log()
    );
    assert_eq!(daemon.terminate(), Some(0), "{}", line.read_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistent_rewrite_of_the_chain_fails_verify_and_alarms_while_the_line_decides() {
    let line = line().await;
    // A fresh store: the daemon creates the key (mode 0600) and is ready.
    let daemon = Daemon::start(&line.config, &line.log);
    let key_file = default_key_file(&line.store);
    let ready = view_ready(line.view, Duration::from_secs(30)).await;
    assert!(ready, "{}", line.read_log());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    line.scan(&["CHAIN01", "CHAIN02", "CHAIN03", "CHAIN04"])
        .await;
    assert_eq!(daemon.terminate(), Some(0), "{}", line.read_log());
    let (code, out, err) = bondline(&["journal", "verify"], &line.config);
    assert_eq!(code, Some(0), "{out}{err}");

    // The intruder rewrites a parcel record and every later prev_hash, the stored head and
    // the head mark, without the key.
    {
        let db = open_sled(&line.store);
        let batches = db.open_tree("batches").unwrap();
        let mut records: Vec<Vec<u8>> = Vec::new();
        for entry in batches.iter() {
            let (_, v) = entry.unwrap();
            let mut rest = &v[..];
            while !rest.is_empty() {
                let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                records.push(rest[4..4 + len].to_vec());
                rest = &rest[4 + len..];
            }
        }
        assert!(records.len() >= 4, "{} records", records.len());
        batches.clear().unwrap();
        let mut prev = bondline::journal::GENESIS_HASH;
        let mut seq = 0u64;
        let mut edited = false;
        for (i, bytes) in records.iter().enumerate() {
            let mut r: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            if i >= 1 && !edited && r["kind"] == "parcel" {
                r["reason"] = serde_json::json!("edited on disk");
                edited = true;
            }
            r["prev_hash"] = serde_json::json!(hex::encode(prev));
            seq = r["seq"].as_u64().unwrap();
            let bytes = serde_json::to_vec(&r).unwrap();
            prev = bondline::journal::chain_hash(&bytes);
            let mut value = (bytes.len() as u32).to_be_bytes().to_vec();
            value.extend_from_slice(&bytes);
            batches.insert(seq.to_be_bytes(), value).unwrap();
        }
        assert!(edited, "a parcel record after the first");
        let meta = db.open_tree("meta").unwrap();
        let mut head = seq.to_be_bytes().to_vec();
        head.extend_from_slice(&prev);
        meta.insert("head", head).unwrap();
        db.flush().unwrap();
        // The head mark beside the store too, so nothing looks truncated.
        std::fs::write(
            line.store.join(bondline::journal::HEAD_MARK),
            format!("{seq} {}\n", hex::encode(prev)),
        )
        .unwrap();
    }
    // The hash chain alone passes; the keyed head does not.
    let (code, out, err) = bondline(&["journal", "verify"], &line.config);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("head_tag"), "{out}");

    // The daemon starts, alarms, is not ready, and the line keeps deciding.
    let daemon = Daemon::start(&line.config, &line.log);
    line.wait_not_ready("journal integrity").await;
    let roles = line.scan(&["CHAIN05"]).await;
    assert_eq!(roles, vec![LaneRole::Hold], "undeclared: held");
    let alarmed = wait_until(Duration::from_secs(20), || {
        line.platform
            .events()
            .iter()
            .any(|e| e.kind == EventKind::Alarm && e.detail.starts_with("journal_chain_broken"))
    })
    .await;
    assert!(alarmed, "{:?}", line.platform.events());
    let health = http_get(line.view, "/api/health").unwrap().1;
    assert!(health.contains("journal integrity"), "{health}");
    assert_eq!(daemon.terminate(), Some(0), "{}", line.read_log());

    // The problem stays (across restarts) until an operator acknowledges it.
    let (code, out, _) = bondline(&["journal", "acknowledge"], &line.config);
    assert_eq!(code, Some(0));
    assert!(out.contains("acknowledged"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untagged_store_is_adopted_at_the_start_that_creates_the_key_and_an_open_key_is_refused()
{
    let line = line().await;
    // State stored by a build without integrity tags: a declared, released waybill.
    {
        let j = Journal::open(&line.store).unwrap();
        j.store_declaration(&declaration("ADOPT01")).unwrap();
        j.store_instruction(&instruction("ADOPT01", "I-A", Action::Release))
            .unwrap();
        j.flush().await.unwrap();
    }
    let key_file = default_key_file(&line.store);
    assert!(!key_file.exists());
    let daemon = Daemon::start(&line.config, &line.log);
    let ready = view_ready(line.view, Duration::from_secs(30)).await;
    assert!(
        ready,
        "{:?}\n{}",
        http_get(line.view, "/readyz"),
        line.read_log()
    );
    assert_eq!(line.scan(&["ADOPT01"]).await, vec![LaneRole::Release]);
    let alarmed = wait_until(Duration::from_secs(20), || {
        line.platform
            .events()
            .iter()
            .any(|e| e.kind == EventKind::Alarm && e.detail.contains("adopted"))
    })
    .await;
    assert!(alarmed, "{:?}", line.platform.events());
    assert_eq!(daemon.terminate(), Some(0), "{}", line.read_log());
    assert!(
        !bondline::journal::integrity::adoption_marker(&key_file).exists(),
        "the load ended the adoption"
    );
    let (code, out, err) = bondline(&["journal", "verify"], &line.config);
    assert_eq!(code, Some(0), "tagged now: {out}{err}");

    // A key others can read: exit 64 naming the key and the file.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let (code, _, err) = bondline(&["run"], &line.config);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("storage.integrity_key_file"), "{err}");
    assert!(err.contains(&key_file.display().to_string()), "{err}");
}

/// A platform log file dated a year ahead (written while the clock was set ahead, then
/// corrected) cannot be forgotten before its date: the real binary starts, keeps it, and
/// raises an alarm naming the date and the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_log_dated_ahead_of_the_clock_raises_an_alarm() {
    let ViewLine {
        dir: _dir,
        mosquitto: _mosquitto,
        store,
        config,
        view,
        log,
        stop: _stop,
        ..
    } = ViewLine::start().await;
    let today =
        bondline::rules::history::day_of(bondline::metrics::unix_ms(std::time::SystemTime::now()));
    let mut platform_dir = store.clone().into_os_string();
    platform_dir.push("-platform");
    let ahead = std::path::PathBuf::from(platform_dir).join(format!("day-{:06}.log", today + 365));
    std::fs::create_dir_all(ahead.parent().unwrap()).unwrap();
    std::fs::write(&ahead, b"").unwrap();
    let daemon = Daemon::start(&config, &log);
    assert!(view_ready(view, Duration::from_secs(30)).await);
    // Named by the file's date, which does not move if the test runs across midnight.
    let (y, m, d) = bondline::rules::calendar::civil_from_days(i64::from(today + 365));
    let named =
        format!("days ahead of the clock (its newest file is for {y:04}-{m:02}-{d:02} UTC)");
    let alarmed = wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&named)
    })
    .await;
    assert!(
        alarmed,
        "no alarm:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(ahead.exists(), "the file dated ahead was removed");
    daemon.kill();
}

/// The platform log's file being written to, removed under the running daemon (a clean-up
/// script): written back from the open file with an alarm, so that after a crash the
/// platform's release still stands, and nothing is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_log_file_removed_under_the_daemon_is_written_back() {
    let line = line().await;
    let daemon = Daemon::start(&line.config, &line.log);
    assert!(view_ready(line.view, Duration::from_secs(30)).await);
    line.platform
        .publish_raw(
            "declarations",
            serde_json::to_vec(&declaration("GONE01")).unwrap(),
        )
        .await
        .unwrap();
    line.platform
        .publish_instruction_as_is(&instruction("GONE01", "I-GONE01", Action::Release))
        .await
        .unwrap();
    let dir = std::path::PathBuf::from(format!("{}-platform", line.store.display()));
    let segment = || {
        std::fs::read_dir(&dir).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "log"))
        })
    };
    let holds = |what: &[u8]| {
        segment()
            .and_then(|p| std::fs::read(p).ok())
            .is_some_and(|b| b.windows(what.len()).any(|w| w == what))
    };
    assert!(
        wait_until(Duration::from_secs(30), || holds(b"I-GONE01")).await,
        "the release is stored:\n{}",
        line.read_log()
    );
    let removed = segment().unwrap();
    std::fs::remove_file(&removed).unwrap();
    let written_back = wait_until(Duration::from_secs(30), || {
        removed.exists() && line.read_log().contains("written back from the open file")
    })
    .await;
    assert!(written_back, "{}", line.read_log());
    assert!(holds(b"I-GONE01"));
    // A crash now, then a start: the release stands and nothing is refused. (The first
    // daemon's scanner connection is taken first, so that the scan goes to the second.)
    let first = tokio::time::timeout(Duration::from_secs(30), line.scanner.accept()).await;
    assert!(
        matches!(first, Ok(Ok(_))),
        "the daemon connects to the scanner"
    );
    daemon.kill();
    drop(first);
    let _daemon = Daemon::start(&line.config, &line.log);
    assert!(
        view_ready(line.view, Duration::from_secs(30)).await,
        "/readyz: {:?}\n{}",
        http_get(line.view, "/readyz"),
        line.read_log()
    );
    assert_eq!(line.scan(&["GONE01"]).await, vec![LaneRole::Release]);
}
