//! A platform backlog queued at a real Mosquitto while the gateway was down (300,000
//! declarations by default; `BONDLINE_TEST_BACKLOG` sets another count) drains completely
//! into the real binary on one connection, while the gateway's own records keep being
//! forwarded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bondline::app::{App, CHECK_AFTER_BACKLOG};
use bondline::config::Config;
use bondline::journal::{record_sink, Journal};
use bondline::metrics::Metrics;
use bondline_devices::contract::{AlertKind, AlertRecord};
use tokio_util::sync::CancellationToken;

use bondline_devices::contract::{Declaration, DeclaredItem, SCHEMA};
use bondline_simulators::plan::{Mix, Plan, PlanKind};
use bondline_simulators::platform::PlatformSim;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

use crate::harness::{
    config_text, floor, loopback_port, metric, metrics_text, wait_until, Daemon, Floor,
    LineDevices, Mosquitto, ScannerAt, Setup,
};

const PREFIX: &str = "bondline/backlog-gw";

fn backlog_count() -> u64 {
    std::env::var("BONDLINE_TEST_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000)
}

/// Publishes `n` distinct declarations at QoS 1 and waits for every PUBACK.
async fn publish_declarations(broker: SocketAddr, n: u64) {
    let mut opts = MqttOptions::new("backlog-publisher", broker.ip().to_string(), broker.port());
    opts.set_inflight(1000)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 4096);
    let publisher = tokio::spawn(async move {
        for k in 0..n {
            let d = Declaration {
                order_id: None,
                pieces: None,
                schema: SCHEMA,
                waybill: format!("BL{k:09}"),
                enterprise: "ENT-BACKLOG".into(),
                consumer: Some(format!("C{}", k % 5000)),
                identity_verified: true,
                value_minor: Some(12_000),
                currency: Some("CNY".into()),
                gross_weight_g: Some(800),
                items: vec![DeclaredItem {
                    description: "books".into(),
                    quantity: 1,
                }],
                signature: None,
            };
            client
                .publish(
                    format!("{PREFIX}/declarations"),
                    QoS::AtLeastOnce,
                    false,
                    serde_json::to_vec(&d).unwrap(),
                )
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0u64;
    while acked < n {
        match tokio::time::timeout(Duration::from_secs(60), events.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publishing the backlog: {e} after {acked} acknowledged"),
            Err(_) => panic!("the broker stopped acknowledging after {acked} of {n}"),
        }
    }
    let client = publisher.await.unwrap();
    let _ = client.disconnect().await;
}

/// A gateway on a line that ran once (leaving its persistent session and subscriptions at the
/// broker) and is down, with everything a test needs to start it again.
struct Away {
    dir: tempfile::TempDir,
    _mosquitto: Mosquitto,
    _floor: Floor,
    broker: SocketAddr,
    platform: PlatformSim,
    setup: Setup,
    config: std::path::PathBuf,
    view: SocketAddr,
}

/// Runs a gateway once until it forwarded `records`, and kills it.
async fn ran_once(seed: u64, client: &str, records: usize) -> Away {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path()).await;
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, client).await.unwrap();
    let floor = floor(
        Plan::with_mix(seed, Mix::only(PlanKind::Undeclared)),
        20.0,
        None,
    )
    .await;
    let setup = Setup::on_floor(dir.path(), mosquitto.port, &floor)
        .prefix(PREFIX)
        .view("");
    let config = setup.write();
    let view = setup.view_addr();
    let daemon = Daemon::start(&config, &dir.path().join("daemon-1.log"));
    assert!(
        wait_until(Duration::from_secs(30), || platform.records().len()
            >= records)
        .await,
        "no records from the first run"
    );
    daemon.kill();
    Away {
        dir,
        _mosquitto: mosquitto,
        _floor: floor,
        broker,
        platform,
        setup,
        config,
        view,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_backlog_queued_while_down_drains_on_one_connection_while_records_flow() {
    let n = backlog_count();
    // A first run leaves the gateway's persistent session (and subscriptions) at the broker.
    let away = ran_once(61, "platform-backlog", 5).await;
    let (dir, broker, platform, config, view) = (
        &away.dir,
        away.broker,
        &away.platform,
        &away.config,
        away.view,
    );

    // The platform's orders pile up at the broker while the gateway is down.
    let started = Instant::now();
    publish_declarations(broker, n).await;
    eprintln!("{n} declarations queued in {:?}", started.elapsed());

    let daemon = Daemon::start(config, &dir.path().join("daemon-2.log"));
    let restarted = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || metric(
            view,
            "bondline_uplink_ready"
        ) == Some(1.0))
        .await,
        "the gateway did not connect again"
    );
    let records_at_return = platform.records().len();
    // Records keep being forwarded while the backlog drains: seen while messages are still
    // in flight.
    let mut records_during = None;
    let drained = wait_until(Duration::from_secs(900), || {
        let ingested = metric(view, "bondline_platform_ingested_total").unwrap_or(0.0);
        if ingested >= n as f64 / 2.0 && ingested < n as f64 && records_during.is_none() {
            records_during = Some(platform.records().len());
        }
        ingested >= n as f64
    })
    .await;
    let text = metrics_text(view).unwrap_or_default();
    assert!(drained, "backlog not drained:\n{text}");
    eprintln!(
        "{n} platform messages drained in {:?} ({:.0}/s)",
        restarted.elapsed(),
        n as f64 / restarted.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string(dir.path().join("daemon-2.log")).unwrap_or_default();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert_eq!(
        metric(view, "bondline_uplink_disconnects_total"),
        Some(0.0),
        "the backlog must drain on one connection; the daemon's warnings:\n{}",
        warnings.join("\n")
    );
    assert_eq!(
        metric(view, "bondline_platform_messages_total"),
        Some(n as f64),
        "every declaration counted once, as distinct:\n{text}"
    );
    assert_eq!(
        metric(view, "bondline_platform_rejected_total"),
        Some(0.0),
        "{text}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || metric(
            view,
            "bondline_platform_in_flight"
        ) == Some(0.0))
        .await,
        "messages left in flight"
    );
    assert!(!log.contains("cannot acknowledge"), "{log}");
    if n >= 20_000 {
        let during = records_during.expect("the drain was observed half-way");
        assert!(
            during > records_at_return,
            "no record forwarded during the first half of the drain ({records_at_return} at return)"
        );
    }
    assert!(
        wait_until(Duration::from_secs(30), || platform.records().len()
            > records_at_return)
        .await,
        "records not forwarded after the drain"
    );
    daemon.kill();
}

/// What the gateway acknowledged of a platform backlog survives a SIGKILL in the middle of
/// the drain: the broker delivers again only what was not acknowledged, so a declaration
/// acknowledged before it was durable would be gone for good. After the kill and a second
/// drain, the store (read as the next start reads it) holds every declaration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_a_platform_backlog_loses_no_acknowledged_declaration() {
    let n = 30_000u64;
    let away = ran_once(62, "platform-backlog-kill", 2).await;
    let (dir, broker, config, view) = (&away.dir, away.broker, &away.config, away.view);
    publish_declarations(broker, n).await;

    // Killed a third of the way through.
    let daemon = Daemon::start(config, &dir.path().join("daemon-2.log"));
    let mut acked = 0.0;
    assert!(
        wait_until(Duration::from_secs(300), || {
            acked = metric(view, "bondline_platform_ingested_total").unwrap_or(0.0);
            acked >= n as f64 / 3.0
        })
        .await,
        "the drain did not start"
    );
    daemon.kill();
    // The broker delivers the rest again (at least what was not acknowledged).
    let daemon = Daemon::start(config, &dir.path().join("daemon-3.log"));
    let rest = n as f64 - acked;
    assert!(
        wait_until(Duration::from_secs(300), || metric(
            view,
            "bondline_platform_ingested_total"
        )
        .unwrap_or(0.0)
            >= rest)
        .await,
        "the rest was not delivered again"
    );
    assert!(
        wait_until(Duration::from_secs(30), || metric(
            view,
            "bondline_platform_in_flight"
        ) == Some(0.0))
        .await,
        "messages left in flight"
    );
    daemon.kill();
    let journal = bondline::journal::Journal::open(&away.setup.store()).unwrap();
    let table = journal.load_clearance().unwrap();
    let missing: Vec<String> = (0..n)
        .map(|k| format!("BL{k:09}"))
        .filter(|w| table.known(w).declaration.is_none())
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "declarations acknowledged before the kill and lost (first of them): {missing:?}"
    );
    assert_eq!(table.declarations() as u64, n);
}

/// While the line sorts, platform messages arriving at full speed are taken in at
/// `platform_rate_while_sorting` and no faster (the decision path keeps a core's worth of
/// room), and still all of them on one connection: they wait their turn, none is refused or
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_flood_beside_a_sorting_line_is_paced_and_taken_in_completely() {
    const N: u64 = 4_000;
    const RATE: u64 = 500;
    // The first run's floor keeps scanning 20 parcels/s: the line sorts throughout.
    let Away {
        dir,
        _mosquitto,
        _floor,
        broker,
        platform: _platform,
        setup,
        view,
        ..
    } = ran_once(63, "platform-paced", 3).await;
    let config = setup
        .uplink(&format!("platform_rate_while_sorting = {RATE}"))
        .write();
    let daemon = Daemon::start(&config, &dir.path().join("daemon-2.log"));
    // Connected, and the line sorting: the pace applies before the first message arrives.
    assert!(
        wait_until(Duration::from_secs(30), || metric(
            view,
            "bondline_uplink_ready"
        ) == Some(1.0)
            && metric(view, "bondline_platform_ingest_paced") == Some(1.0))
        .await,
        "the gateway did not connect, or the pace never applied:\n{}",
        metrics_text(view).unwrap_or_default()
    );
    let started = Instant::now();
    publish_declarations(broker, N).await;
    let drained = wait_until(Duration::from_secs(120), || {
        metric(view, "bondline_platform_ingested_total").unwrap_or(0.0) >= N as f64
    })
    .await;
    let took = started.elapsed();
    let text = metrics_text(view).unwrap_or_default();
    assert!(drained, "not all taken in:\n{text}");
    // A lower bound only (a slow machine takes longer, never shorter): the first batch (a
    // second's worth at most) goes at once, and the last needs no budget after it.
    let least = Duration::from_secs_f64((N - 2 * RATE) as f64 / RATE as f64);
    assert!(
        took >= least,
        "{N} messages taken in {took:?} beside a sorting line, faster than {RATE}/s allows ({least:?})"
    );
    assert_eq!(
        metric(view, "bondline_platform_messages_total"),
        Some(N as f64),
        "{text}"
    );
    assert_eq!(
        metric(view, "bondline_clearance_declarations"),
        Some(N as f64),
        "every declaration held in the table:\n{text}"
    );
    assert_eq!(
        metric(view, "bondline_platform_rejected_total"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(view, "bondline_uplink_disconnects_total"),
        Some(0.0),
        "{text}"
    );
    daemon.kill();
}

/// A stop while the chain check at start waits for a record backlog to drain (the broker
/// away): the check lets go of its record sink at once, so the journal writer can end (and
/// spill what it holds) and the daemon stops, instead of waiting out the check's deferral
/// of up to ten minutes, past systemd's stop timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_the_chain_check_waits_for_a_backlog_is_not_held_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("journal");
    let n = CHECK_AFTER_BACKLOG + 500;
    {
        let journal = Journal::open(&store).unwrap();
        let metrics = Arc::new(Metrics::default());
        let (sink, writer, mut accepted) =
            record_sink(journal, Duration::from_millis(2), metrics).unwrap();
        let writer = tokio::spawn(writer.run());
        let now = bondline::metrics::unix_ms(std::time::SystemTime::now());
        for i in 0..n {
            sink.push(AlertRecord::new(
                "test-gw",
                "",
                AlertKind::LateAcknowledge,
                format!("backlog filler {i}"),
                now,
            ));
        }
        while *accepted.borrow_and_update() < n {
            accepted.changed().await.unwrap();
        }
        drop(sink);
        writer.await.unwrap();
    }
    let nowhere = SocketAddr::from(([127, 0, 0, 1], loopback_port()));
    let text = config_text(
        &store,
        loopback_port(),
        PREFIX,
        &LineDevices {
            scanner: ScannerAt::Tcp(nowhere),
            plc: nowhere,
        },
    );
    let stop = CancellationToken::new();
    let app = App::start(
        Config::parse("chain-check.toml", &text).unwrap(),
        stop.clone(),
    )
    .await
    .unwrap();
    let m = app.metrics.clone();
    assert!(
        wait_until(Duration::from_secs(30), || Metrics::get(&m.backlog)
            > CHECK_AFTER_BACKLOG)
        .await,
        "the backlog is seen: {}",
        Metrics::get(&m.backlog)
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(60), app.wait())
        .await
        .expect("the daemon stops while the chain check waits for the backlog")
        .expect("the journal is flushed at stop");
}
