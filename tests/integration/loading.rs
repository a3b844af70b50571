//! A restart with a large stored clearance table, with the real binary: the daemon answers
//! `/healthz` and `/readyz` (503, saying what is loading) at once, decides a parcel of a
//! waybill whose state is not loaded yet fail closed (hold, `state_loading`), and once the
//! table is loaded decides the same waybill as its stored state says.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bondline::journal::integrity::{default_key_file, IntegrityKey};
use bondline::journal::Journal;
use bondline_devices::contract::{Action, Declaration, Instruction, LaneRole, SCHEMA};
use bondline_simulators::platform::PlatformSim;
use tokio::io::AsyncWriteExt;

use crate::harness::{http_get, stx_etx, view_ready, wait_until, Daemon, ViewLine};

const PREFIX: &str = "bondline/test-gw";
/// The built-in `sorter-plc` profile's heartbeat register, which the daemon writes.
const HEARTBEAT: u16 = 120;
/// Declarations stored before the restart: as many as a debug build stores in some 20 s,
/// so that its load outlasts the first scans.
const STORED: usize = 200_000;

fn declaration(w: &str, i: usize) -> Declaration {
    Declaration {
        order_id: None,
        pieces: None,
        schema: SCHEMA,
        waybill: w.into(),
        enterprise: format!("E{}", i % 50),
        consumer: Some(format!("c-{}", i % 40_000)),
        identity_verified: true,
        value_minor: Some(1000 + i as u64 % 500),
        currency: Some("CNY".into()),
        gross_weight_g: None,
        items: vec![],
        signature: None,
    }
}

fn release(w: &str, id: &str) -> Instruction {
    Instruction {
        schema: SCHEMA,
        instruction_id: id.into(),
        waybill: w.into(),
        action: Action::Release,
        reason: String::new(),
        issued_at_ms: Some(1),
        signature: None,
    }
}

/// Starts the daemon on a store the test holds (its lock taken, so the daemon's open waits
/// up to 10 s and its lines start without it), waits until its line is connected (the
/// scanner accepted, the PLC's heartbeat register moving: a parcel scanned before that is
/// recorded `link_down`, with no command), scans `waybill` and waits for its command.
async fn scan_before_the_store_opens(
    config: &std::path::Path,
    log: &std::path::Path,
    scanner: &tokio::net::TcpListener,
    plc: &bondline_simulators::plc::PlcState,
    waybill: &str,
) -> (Daemon, tokio::net::TcpStream) {
    let read_log = || std::fs::read_to_string(log).unwrap_or_default();
    let daemon = Daemon::start(config, log);
    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(6), scanner.accept())
        .await
        .unwrap_or_else(|_| panic!("the lines connect before the store is open\n{}", read_log()))
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || plc.register(HEARTBEAT) != 0).await,
        "the PLC link comes up before the store is open\n{}",
        read_log()
    );
    stream.write_all(&stx_etx().encode(waybill)).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || !plc.diverts().is_empty()).await,
        "the parcel is commanded before the store is open\n{}",
        read_log()
    );
    (daemon, stream)
}

/// The parcel record of `waybill` in the spill beside `store`, if there.
fn spilled_record(
    store: &std::path::Path,
    waybill: &str,
) -> Option<bondline_devices::contract::ParcelRecord> {
    bondline::journal::read_spill(&bondline::journal::spill_dir(store))
        .1
        .into_iter()
        .find_map(|r| {
            r.as_parcel()
                .filter(|p| p.waybill.as_deref() == Some(waybill))
                .cloned()
        })
}

/// The first parcel record of `waybill` the platform receives (within 30 s).
async fn first_record_of(
    platform: &PlatformSim,
    waybill: &str,
    log: &std::path::Path,
) -> bondline_devices::contract::ParcelRecord {
    let first = || {
        platform
            .records()
            .into_iter()
            .find(|r| r.waybill.as_deref() == Some(waybill))
    };
    assert!(
        wait_until(Duration::from_secs(30), || first().is_some()).await,
        "no record of {waybill}\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    first().expect("checked above")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_large_table_holds_parcels_until_loaded_then_decides_them() {
    let ViewLine {
        dir: _dir,
        mosquitto,
        stop: _stop,
        scanner,
        store,
        config,
        view,
        log,
        ..
    } = ViewLine::start().await;
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // The stored state a busy gateway leaves behind, tagged as the daemon tags it: every
    // waybill declared, every other one released. LOAD-REL is released, LOAD-DECL only
    // declared.
    let filled = Instant::now();
    {
        let (key, created) = IntegrityKey::load_or_create(&default_key_file(&store)).unwrap();
        assert!(created);
        let j = Journal::open(&store).unwrap();
        j.set_integrity_key(key, true);
        j.load_clearance().unwrap();
        for i in 0..STORED {
            let w = format!("LD{i:08}");
            j.store_declaration(&declaration(&w, i)).unwrap();
            if i % 2 == 0 {
                j.store_instruction(&release(&w, &format!("I-{i}")))
                    .unwrap();
            }
        }
        j.store_declaration(&declaration("LOAD-REL", 1)).unwrap();
        j.store_instruction(&release("LOAD-REL", "I-LOAD-REL"))
            .unwrap();
        j.store_declaration(&declaration("LOAD-DECL", 2)).unwrap();
        j.flush().await.unwrap();
        // A first start's complete load, as the daemon's would have been: it records the
        // table's size for the next start's progress.
        j.load_clearance().unwrap();
    }
    eprintln!("stored {STORED} declarations in {:?}", filled.elapsed());

    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, "platform-loading")
        .await
        .unwrap();
    let started = Instant::now();
    let daemon = Daemon::start(&config, &log);
    // The view answers while the table loads: up, not ready, and says what it waits for
    // (before that, while the store opens, its address answers that the daemon is starting).
    let mut ready = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            ready = http_get(view, "/readyz");
            matches!(&ready, Some((_, b)) if !b.contains("starting"))
        })
        .await,
        "{ready:?}\n{}",
        read_log()
    );
    let answered = started.elapsed();
    let (status, body) = ready.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("clearance table loading") && body.contains("stored entries"),
        "{body}"
    );

    assert_eq!(http_get(view, "/healthz").map(|(s, _)| s), Some(200));
    eprintln!("/readyz answered 503 after {answered:?}: {body}");

    // A parcel of a released waybill, scanned while its state is not loaded: held.
    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(30), scanner.accept())
        .await
        .expect("the daemon connects to the scanner")
        .unwrap();
    let framing = stx_etx();
    stream.write_all(&framing.encode("LOAD-REL")).await.unwrap();
    // Still loading after the scan: the parcel was decided before the load ended.
    let still = http_get(view, "/readyz");
    assert!(
        matches!(&still, Some((503, b)) if b.contains("clearance table loading")),
        "the load ended before the scan could be decided during it: {still:?}"
    );

    // The load ends: ready, and the same waybill is now released.
    assert!(
        view_ready(view, Duration::from_secs(300)).await,
        "{:?}\n{}",
        http_get(view, "/readyz"),
        read_log()
    );
    eprintln!("loaded and ready after {:?}", started.elapsed());
    let first = first_record_of(&platform, "LOAD-REL", &log).await;
    assert_eq!(
        (first.lane_role, first.rule.as_str()),
        (LaneRole::Hold, "state_loading"),
        "{first:?}"
    );
    assert!(first.reason.contains("loading"), "{}", first.reason);

    stream.write_all(&framing.encode("LOAD-REL")).await.unwrap();
    stream
        .write_all(&framing.encode("LOAD-DECL"))
        .await
        .unwrap();
    let decided = |p: &PlatformSim| {
        let records = p.records();
        let released = records
            .iter()
            .any(|r| r.waybill.as_deref() == Some("LOAD-REL") && r.lane_role == LaneRole::Release);
        let declared = records
            .iter()
            .find(|r| r.waybill.as_deref() == Some("LOAD-DECL"))
            .map(|r| (r.lane_role, r.rule.clone()));
        (released, declared)
    };
    assert!(
        wait_until(Duration::from_secs(30), || {
            let (released, declared) = decided(&platform);
            released && declared.is_some()
        })
        .await,
        "{:?}\n{}",
        platform.records(),
        read_log()
    );
    let (_, declared) = decided(&platform);
    assert_eq!(
        declared,
        Some((LaneRole::Hold, "awaiting_release".to_string())),
        "a declared waybill without its release is held for its instruction, as before"
    );
    assert_eq!(daemon.terminate(), Some(0), "{}", read_log());
}

/// A store that is slow to open (here another process holds its lock, which the daemon
/// waits for; on a gateway, sled rebuilding the page table of a large store): the view's
/// address answers at once, `/healthz` up and `/readyz` 503 saying the store is opening, and
/// the same address becomes the view, ready, once the store is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_answers_while_the_store_opens() {
    let ViewLine {
        dir: _dir,
        mosquitto: _mosquitto,
        stop: _stop,
        scanner: _scanner,
        store,
        config,
        view,
        log,
        ..
    } = ViewLine::start().await;
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    std::fs::create_dir_all(&store).unwrap();
    let held = Journal::open(&store).unwrap();

    let daemon = Daemon::start(&config, &log);
    // The daemon waits up to 10 s for the lock: the view must answer well within that.
    let mut answer = None;
    assert!(
        wait_until(Duration::from_secs(8), || {
            answer = http_get(view, "/readyz");
            answer.is_some()
        })
        .await,
        "{}",
        read_log()
    );
    let health = http_get(view, "/healthz");
    let other = http_get(view, "/api/health");
    drop(held);
    let (status, body) = answer.unwrap();
    eprintln!("while the store was held: /readyz {status}: {body}");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("opening the journal store"), "{body}");
    assert_eq!(health.map(|(s, _)| s), Some(200));
    assert_eq!(other.map(|(s, _)| s), Some(503));

    assert!(
        view_ready(view, Duration::from_secs(60)).await,
        "{:?}\n{}",
        http_get(view, "/readyz"),
        read_log()
    );
    // The view itself now: its board's API answers.
    assert_eq!(http_get(view, "/api/health").map(|(s, _)| s), Some(200));
    assert_eq!(daemon.terminate(), Some(0), "{}", read_log());
}

/// A store slow to open (its lock held here, as in the test above): the lines start anyway
/// and hold every parcel, fail closed, with their records synced to the spill; a crash
/// (SIGKILL) while the store is still opening loses none of them, and the next start stores
/// and forwards them first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lines_hold_parcels_while_the_store_opens_and_a_crash_keeps_their_records() {
    let ViewLine {
        dir: _dir,
        mosquitto,
        scanner,
        store,
        config,
        view,
        log,
        plc,
        stop: _stop,
    } = ViewLine::start().await;
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    std::fs::create_dir_all(&store).unwrap();
    let held = Journal::open(&store).unwrap();
    let opened_at = Instant::now();

    // The daemon waits up to 10 s for the store's lock; everything below happens well
    // within that, or the test fails rather than passing on a daemon that gave up.
    let (daemon, _stream) =
        scan_before_the_store_opens(&config, &log, &scanner, &plc, "OPENING-1").await;
    let divert = plc.diverts()[0];
    let readyz = http_get(view, "/readyz");
    let spill = bondline::journal::spill_dir(&store);
    let mut spilled = None;
    assert!(
        wait_until(Duration::from_secs(2), || {
            spilled = spilled_record(&store, "OPENING-1");
            spilled.is_some()
        })
        .await,
        "the parcel's record is in the spill\n{}",
        read_log()
    );
    let still_held = opened_at.elapsed();
    daemon.kill();
    drop(held);
    assert!(
        still_held < Duration::from_secs(9),
        "the store's lock was held long enough: {still_held:?}"
    );
    eprintln!("while the store was held: /readyz {readyz:?}; divert {divert:?}");
    assert!(
        matches!(&readyz, Some((503, b)) if b.contains("the lines hold every parcel")),
        "{readyz:?}"
    );
    let record = spilled.expect("checked above");
    assert_eq!(
        (record.lane_role, record.rule.as_str(), record.parcel),
        (LaneRole::Hold, "state_loading", divert.parcel),
        "{record:?}"
    );
    assert_eq!(divert.lane, record.lane, "{record:?}");

    // The next start stores the spill first and forwards the record.
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, "platform-opening")
        .await
        .unwrap();
    let daemon = Daemon::start(&config, &log);
    let stored = first_record_of(&platform, "OPENING-1", &log).await;
    assert_eq!(
        (stored.lane_role, stored.rule.as_str(), stored.parcel),
        (LaneRole::Hold, "state_loading", divert.parcel)
    );
    assert!(
        bondline::journal::read_spill(&spill).0.is_empty(),
        "the spill file goes once stored"
    );
    assert_eq!(daemon.terminate(), Some(0), "{}", read_log());
}

/// Only one daemon drives a floor: a second one started on the same store (a mistyped unit,
/// a manual start beside the service) waits for the store's owner lock, exits with an error
/// naming it, and never connects to the line's scanner or PLC, even though the first one's
/// store is open and the second would otherwise start its lines without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_store_never_drives_the_floor() {
    let ViewLine {
        dir,
        mosquitto: _mosquitto,
        scanner,
        config,
        log,
        plc,
        stop: _stop,
        ..
    } = ViewLine::start().await;
    let read_log = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let first = Daemon::start(&config, &log);
    let (_stream, _) = tokio::time::timeout(Duration::from_secs(30), scanner.accept())
        .await
        .expect("the first daemon connects to the scanner")
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || plc.register(HEARTBEAT) != 0).await,
        "{}",
        read_log(&log)
    );

    let second_log = dir.path().join("second.log");
    let second = Daemon::start(&config, &second_log);
    let code = tokio::task::spawn_blocking(move || second.exit_within(Duration::from_secs(30)))
        .await
        .unwrap();
    let said = read_log(&second_log);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("owner lock") && said.contains("another bondline runs on this store"),
        "{said}"
    );
    assert!(
        !said.contains("scanner connected") && !said.contains("PLC connected"),
        "{said}"
    );
    let again = tokio::time::timeout(Duration::from_millis(500), scanner.accept()).await;
    assert!(again.is_err(), "the second daemon connected to the scanner");
    // The first runs on, undisturbed.
    assert_eq!(first.terminate(), Some(0), "{}", read_log(&log));
}

/// A store that never opens (its lock held past the daemon's wait, as a damaged or stuck
/// store would): the lines that started without it hold their parcels, and when the open
/// fails the daemon stops them and exits with an error, their records in the spill for the
/// next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_never_opens_stops_the_early_lines_and_keeps_their_records() {
    let ViewLine {
        dir: _dir,
        mosquitto: _mosquitto,
        scanner,
        store,
        config,
        log,
        plc,
        stop: _stop,
        ..
    } = ViewLine::start().await;
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    std::fs::create_dir_all(&store).unwrap();
    let held = Journal::open(&store).unwrap();
    let (daemon, _stream) =
        scan_before_the_store_opens(&config, &log, &scanner, &plc, "NEVER-OPEN-1").await;
    // The daemon gives up on the lock after 10 s.
    let code = tokio::task::spawn_blocking(move || daemon.exit_within(Duration::from_secs(30)))
        .await
        .unwrap();
    drop(held);
    let said = read_log();
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("stopping the lines that started without it"),
        "{said}"
    );
    let record = spilled_record(&store, "NEVER-OPEN-1")
        .unwrap_or_else(|| panic!("the parcel's record is in the spill\n{said}"));
    assert_eq!(
        (record.lane_role, record.rule.as_str()),
        (LaneRole::Hold, "state_loading")
    );
}

/// Fail closed while the store opens: a waybill the store holds as declared and released,
/// scanned by a line that started before the store was open, is held (`state_loading`) and
/// never commanded to the release lane then; once the store is open and the table loaded,
/// the same waybill scanned again is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_waybill_is_held_while_the_store_opens_and_released_once_loaded() {
    let ViewLine {
        dir: _dir,
        mosquitto: _mosquitto,
        scanner,
        store,
        config,
        view,
        log,
        plc,
        stop: _stop,
    } = ViewLine::start().await;
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    {
        let (key, created) = IntegrityKey::load_or_create(&default_key_file(&store)).unwrap();
        let j = Journal::open(&store).unwrap();
        j.set_integrity_key(key, created);
        j.load_clearance().unwrap();
        j.store_declaration(&declaration("EARLY-REL", 1)).unwrap();
        j.store_instruction(&release("EARLY-REL", "I-EARLY-REL"))
            .unwrap();
        j.flush().await.unwrap();
        j.load_clearance().unwrap();
    }
    let held = Journal::open(&store).unwrap();
    let (daemon, mut stream) =
        scan_before_the_store_opens(&config, &log, &scanner, &plc, "EARLY-REL").await;
    // Past its deadline (1.2 s) while the store is still held: the hold stays.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let early: Vec<_> = plc.diverts();
    drop(held);
    const RELEASE_LANE: u16 = 1;
    const HOLD_LANE: u16 = 3;
    assert!(
        early.iter().all(|d| d.lane == HOLD_LANE),
        "only holds before the store is open: {early:?}"
    );

    assert!(
        view_ready(view, Duration::from_secs(60)).await,
        "{:?}\n{}",
        http_get(view, "/readyz"),
        read_log()
    );
    // The early parcel passed its gate held; its deadline is gone, so no release for it.
    let seen = plc.divert_count();
    stream
        .write_all(&stx_etx().encode("EARLY-REL"))
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || plc
            .diverts_since(seen)
            .iter()
            .any(|d| d.lane == RELEASE_LANE))
        .await,
        "released once loaded: {:?}\n{}",
        plc.diverts(),
        read_log()
    );
    let parcels: std::collections::HashSet<u32> = early.iter().map(|d| d.parcel).collect();
    assert!(
        plc.diverts()
            .iter()
            .filter(|d| d.lane == RELEASE_LANE)
            .all(|d| !parcels.contains(&d.parcel)),
        "the parcel held while the store opened is never released: {:?}",
        plc.diverts()
    );
    assert_eq!(daemon.terminate(), Some(0), "{}", read_log());
}
