//! A 17 MiB platform message through real Mosquitto to the real binary. Within the gateway's
//! read limit it is read, refused with a journaled alert and acknowledged: no disconnect.
//! Above it (the broker let it through, against docs/mqtt.md) it ends the session it is
//! delivered in; the gateway reports it, reads it once in the next session to refuse and
//! acknowledge it, and parks no record because of it.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bondline_devices::contract::{AlertKind, Record};
use bondline_simulators::plan::{Mix, Plan, PlanKind};
use bondline_simulators::platform::PlatformSim;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

use crate::harness::{floor, metric, wait_until, Daemon, Mosquitto, Setup};

const PREFIX: &str = "bondline/oversized-gw";
const BIG: usize = 17 * 1024 * 1024;

/// Publishes one message of `BIG` bytes to the instructions topic and waits for its PUBACK.
async fn publish_big(broker: SocketAddr) {
    let mut opts = MqttOptions::new(
        "oversized-publisher",
        broker.ip().to_string(),
        broker.port(),
    );
    opts.set_max_packet_size(BIG + 1024, BIG + 1024);
    let (client, mut events) = AsyncClient::new(opts, 4);
    client
        .publish(
            format!("{PREFIX}/instructions"),
            QoS::AtLeastOnce,
            false,
            vec![b'x'; BIG],
        )
        .await
        .unwrap();
    let acked = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("publishing the big message: {e}"),
            }
        }
    })
    .await;
    assert!(acked.is_ok(), "the broker did not take the big message");
}

/// Alert records about platform messages the platform received, deduplicated by sequence.
fn rejections(platform: &PlatformSim) -> Vec<String> {
    let mut seen = std::collections::BTreeMap::new();
    for r in platform.all_records() {
        if let Record::Alert(a) = r {
            if a.alert == AlertKind::RejectedMessage {
                seen.insert(a.seq, a.detail);
            }
        }
    }
    seen.into_values().collect()
}

/// A daemon, its devices and broker, and the platform, after the big message was published.
struct Rig {
    daemon: Daemon,
    platform: PlatformSim,
    view: SocketAddr,
    published_ms: u64,
    _floor: crate::harness::Floor,
    _mosquitto: Mosquitto,
    _dir: tempfile::TempDir,
}

async fn run(uplink_extra: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path()).await;
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, "platform-oversized")
        .await
        .unwrap();
    let floor = floor(
        Plan::with_mix(51, Mix::only(PlanKind::Undeclared)),
        20.0,
        None,
    )
    .await;
    let setup = Setup::on_floor(dir.path(), mosquitto.port, &floor)
        .prefix(PREFIX)
        .uplink(uplink_extra)
        .view("");
    let daemon = setup.start();
    let view = setup.view_addr();
    assert!(
        wait_until(Duration::from_secs(20), || platform.records().len() >= 10).await,
        "no records before the big message"
    );
    publish_big(broker).await;
    let published_ms = bondline::metrics::unix_ms(SystemTime::now());
    Rig {
        daemon,
        platform,
        view,
        published_ms,
        _floor: floor,
        _mosquitto: mosquitto,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_17_mib_message_within_the_read_limit_is_refused_without_a_disconnect() {
    let rig = run("").await;
    let (platform, view, published_ms) = (&rig.platform, rig.view, rig.published_ms);
    assert!(
        wait_until(Duration::from_secs(30), || rejections(platform)
            .iter()
            .any(|d| d.contains("over the limit")))
        .await,
        "no rejected_message alert for the big message: {:?}",
        rejections(platform)
    );
    // Records made after it keep arriving on the same session.
    assert!(
        wait_until(Duration::from_secs(20), || platform
            .records()
            .iter()
            .filter(|r| r.scanned_at_ms > published_ms)
            .count()
            >= 20)
        .await
    );
    assert_eq!(metric(view, "bondline_uplink_disconnects_total"), Some(0.0));
    assert_eq!(metric(view, "bondline_records_parked_total"), Some(0.0));
    assert_eq!(rig.daemon.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_above_the_read_limit_ends_one_session_and_parks_no_record() {
    let rig = run("max_incoming_kib = 16384\n").await;
    let (platform, view, published_ms) = (&rig.platform, rig.view, rig.published_ms);
    // It ends the session it arrives in; the next session reads it once and refuses it
    // like any oversized message: both are journaled and reach the platform.
    assert!(
        wait_until(Duration::from_secs(60), || {
            let r = rejections(platform);
            r.iter().any(|d| d.contains("max_incoming_kib"))
                && r.iter().any(|d| d.contains("over the limit"))
        })
        .await,
        "no alerts for the unreadable message: {:?}",
        rejections(platform)
    );
    // Records go out after it, none parked because of it.
    assert!(
        wait_until(Duration::from_secs(60), || platform
            .records()
            .iter()
            .filter(|r| r.scanned_at_ms > published_ms)
            .count()
            >= 20)
        .await,
        "records stopped reaching the platform"
    );
    let r = rejections(platform);
    assert_eq!(
        r.iter().filter(|d| d.contains("max_incoming_kib")).count(),
        1,
        "reported once: {r:?}"
    );
    // Acknowledged once read: the broker stopped delivering it, one session was lost.
    assert_eq!(metric(view, "bondline_uplink_disconnects_total"), Some(1.0));
    assert_eq!(metric(view, "bondline_records_parked_total"), Some(0.0));
    assert_eq!(rig.daemon.terminate(), Some(0));
}
