//! The uplink's return after a long broker outage: it probes the broker cheaply while its
//! session backs off, and sends again within seconds of the broker's return, not after the
//! rest of a backoff drawn while the broker was down.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bondline::metrics::Metrics;
use bondline_simulators::plan::Plan;
use bondline_simulators::platform::PlatformSim;
use tokio_util::sync::CancellationToken;

use crate::harness::{floor, wait_until, Mosquitto, Setup};

const PREFIX: &str = "bondline/test-gw";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_the_broker_within_seconds_of_its_return_after_a_long_outage() {
    crate::harness::init_logs();
    let dir = tempfile::tempdir().unwrap();
    // Mosquitto keeps the platform's session across its restart, as a production broker
    // would, so what the gateway sends before the platform is back is queued for it.
    let store = dir.path().join("mosquitto-db");
    std::fs::create_dir(&store).unwrap();
    std::fs::set_permissions(&store, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let persist = format!(
        "persistence true\npersistence_location {}/\nautosave_interval 1",
        store.display()
    );
    let mut mosquitto = Mosquitto::start_with(dir.path(), &persist).await;
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect_persistent(broker, PREFIX, "platform-return")
        .await
        .unwrap();
    let floor = floor(Plan::new(23), 20.0, None).await;
    // A long backoff, shortened from the default 30 s so the test is quick: after a 15-s
    // outage the session's next attempt may be drawn up to 16 s away.
    let stop = CancellationToken::new();
    let app = Setup::on_floor(dir.path(), mosquitto.port, &floor)
        .replace("reconnect_max_s = 2", "reconnect_max_s = 20")
        .start_app(&stop)
        .await;
    let metrics = app.metrics.clone();
    let forwarded = || Metrics::get(&metrics.records_forwarded);
    assert!(
        wait_until(Duration::from_secs(20), || forwarded() >= 20).await,
        "records are not forwarded before the outage: {}",
        metrics.summary()
    );

    mosquitto.stop_gracefully();
    // Fixed: the outage itself, the scenario's length, not a wait for something to happen.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let before = forwarded();
    let accepted_during = Metrics::get(&metrics.records_accepted);
    mosquitto.restart().await;
    let back = Instant::now();
    // PUBACKs for records made during the outage: they reached the broker.
    let resumed = wait_until(Duration::from_secs(30), || forwarded() > before + 10).await;
    let took = back.elapsed();
    println!("records reached the broker {took:?} after its return");
    assert!(
        resumed,
        "nothing forwarded after the broker's return: {}",
        metrics.summary()
    );
    assert!(
        took < Duration::from_secs(10),
        "the gateway took {took:?} to send again after the broker's return"
    );

    // And they reach the platform: every record accepted up to the broker's return.
    let arrived = wait_until(Duration::from_secs(60), || {
        let seqs: HashSet<u64> = platform.all_records().iter().map(|r| r.seq()).collect();
        (1..=accepted_during).all(|s| seqs.contains(&s))
    })
    .await;
    assert!(
        arrived,
        "records 1..={accepted_during} did not all reach the platform"
    );
    floor.stop_scanner.cancel();
    stop.cancel();
    app.wait().await.unwrap();
}
