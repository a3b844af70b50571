//! The broker link over TLS with client certificates and a password: records arrive; a
//! certificate renewed on disk is used after SIGHUP without losing a record; a gateway whose
//! certificate the broker does not trust delivers nothing and keeps everything.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bondline_simulators::plan::{Mix, Plan, PlanKind};
use bondline_simulators::platform::PlatformSim;
use rcgen::{CertificateParams, DnType, IsCa, KeyPair, SanType};

use crate::harness::{
    config_text, floor, loopback_port, wait_until, Daemon, LineDevices, Mosquitto, ScannerAt,
};

const PREFIX: &str = "bondline/test-gw";

pub(crate) struct Ca {
    pub(crate) cert: rcgen::Certificate,
    key: KeyPair,
}

pub(crate) fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A certificate signed by `ca`, written as PEM to `<dir>/<name>.pem` and `<name>.key`.
pub(crate) fn issue(ca: &Ca, dir: &Path, name: &str, server: bool) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    if server {
        p.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
        ];
    }
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    write(&dir.join(format!("{name}.pem")), &cert.pem());
    write(&dir.join(format!("{name}.key")), &key.serialize_pem());
}

/// Readable by the broker, which drops to its own user.
fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_travel_over_tls_with_client_certificates_and_survive_a_certificate_renewal() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pki = dir.path();
    let trusted = ca("bondline test CA");
    let rogue = ca("someone else");
    write(&pki.join("ca.pem"), &trusted.cert.pem());
    write(&pki.join("rogue-ca.pem"), &rogue.cert.pem());
    issue(&trusted, pki, "broker", true);
    issue(&trusted, pki, "gateway", false);
    issue(&trusted, pki, "gateway-renewed", false);
    issue(&rogue, pki, "intruder", false);
    let passwords = pki.join("passwords");
    let ok = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["gw-test", "s3cret"])
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::set_permissions(&passwords, std::fs::Permissions::from_mode(0o644)).unwrap();
    write(&pki.join("gw-password"), "s3cret\n");

    let tls_port = loopback_port();
    let extra = format!(
        "listener {tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\ncafile {ca}\ncertfile {crt}\nkeyfile {key}\nrequire_certificate true\n",
        pw = passwords.display(),
        ca = pki.join("ca.pem").display(),
        crt = pki.join("broker.pem").display(),
        key = pki.join("broker.key").display(),
    );
    let mosquitto = Mosquitto::start_with(dir.path(), &extra).await;
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            tls_port
        ))
        .is_ok())
        .await
    );
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, "platform-tls")
        .await
        .unwrap();
    let plan = Plan::with_mix(77, Mix::only(PlanKind::Undeclared));

    // A gateway with a trusted certificate: parcels arrive over TLS.
    let f = floor(plan.clone(), 10.0, Some(40)).await;
    let config = dir.path().join("bondline.toml");
    std::fs::write(
        &config,
        tls_config(dir.path(), "journal", "gateway", tls_port, f.scanner, f.plc),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");
    let daemon = Daemon::start(&config, &log);
    assert!(
        platform.wait_for_records(10, Duration::from_secs(30)).await,
        "over TLS: {} records; log: {}",
        platform.records().len(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // The certificate is renewed on disk; SIGHUP reconnects with it; nothing is lost.
    std::fs::copy(pki.join("gateway-renewed.pem"), pki.join("live.pem")).unwrap();
    std::fs::copy(pki.join("gateway-renewed.key"), pki.join("live.key")).unwrap();
    daemon.hangup();
    assert!(
        platform.wait_for_records(40, Duration::from_secs(30)).await,
        "after the renewal: {} records",
        platform.records().len()
    );
    assert_eq!(daemon.terminate(), Some(0));
    let stats = journal_stats(&dir.path().join("journal"));
    // Parcel records and the PLC's dispositions: all acknowledged by the broker.
    assert!(stats["records"].as_u64() >= Some(40), "{stats}");
    assert_eq!(stats["backlog"], 0, "{stats}");

    // A gateway with a certificate from another CA: the broker refuses it; its records stay.
    let f3 = floor(plan.clone(), 20.0, Some(5)).await;
    let text = tls_config(
        dir.path(),
        "journal-intruder",
        "intruder",
        tls_port,
        f3.scanner,
        f3.plc,
    )
    .replace(
        "client_id = \"bondline-test-",
        "client_id = \"bondline-intruder-",
    );
    let config = dir.path().join("intruder.toml");
    std::fs::write(&config, text).unwrap();
    let before = platform.records().len();
    let intruder_log = dir.path().join("intruder.log");
    let intruder = Daemon::start(&config, &intruder_log);
    // Its five parcels scanned and its connection refused, not a guess at how long that takes.
    f3.scanner_task.await.unwrap().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(
            &intruder_log
        )
        .unwrap_or_default()
        .contains("broker link down"))
        .await,
        "the intruder never tried the broker"
    );
    assert_eq!(intruder.terminate(), Some(0));
    assert_eq!(
        platform.records().len(),
        before,
        "an untrusted gateway got through"
    );
    let stats = journal_stats(&dir.path().join("journal-intruder"));
    assert!(stats["records"].as_u64() >= Some(5), "{stats}");
    assert_eq!(
        stats["backlog"], stats["records"],
        "every record kept for delivery: {stats}"
    );

    // A gateway that does not trust the broker's certificate (a broker impostor, from its
    // side) sends it nothing, says why, and keeps its records.
    let f4 = floor(plan.clone(), 20.0, Some(5)).await;
    let text = tls_config(
        dir.path(),
        "journal-wary",
        "gateway",
        tls_port,
        f4.scanner,
        f4.plc,
    )
    .replace(
        &format!("ca_file = \"{}\"", dir.path().join("ca.pem").display()),
        &format!(
            "ca_file = \"{}\"",
            dir.path().join("rogue-ca.pem").display()
        ),
    );
    let config = dir.path().join("wary.toml");
    std::fs::write(&config, text).unwrap();
    let before = platform.records().len();
    let wary_log = dir.path().join("wary.log");
    let wary = Daemon::start(&config, &wary_log);
    f4.scanner_task.await.unwrap().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(
            &wary_log
        )
        .unwrap_or_default()
        .contains("broker link down"))
        .await,
        "the gateway never tried the broker"
    );
    assert_eq!(wary.terminate(), Some(0));
    assert_eq!(
        platform.records().len(),
        before,
        "sent to an untrusted broker"
    );
    let log = std::fs::read_to_string(&wary_log).unwrap_or_default();
    assert!(
        log.contains("broker link down") && log.to_lowercase().contains("certificate"),
        "{log}"
    );
    let stats = journal_stats(&dir.path().join("journal-wary"));
    assert!(stats["records"].as_u64() >= Some(5), "{stats}");
    assert_eq!(stats["backlog"], stats["records"], "{stats}");
    // The broker password never reaches a log, whatever went wrong.
    for log in ["daemon.log", "intruder.log", "wary.log"] {
        let text = std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();
        assert!(!text.contains("s3cret"), "{log} holds the broker password");
    }
}

/// A daemon configuration on the broker's TLS listener, with the password and the client
/// certificate `cert` (copied to `live.pem`/`live.key`, which a renewal overwrites).
fn tls_config(
    dir: &Path,
    journal: &str,
    cert: &str,
    tls_port: u16,
    scanner: SocketAddr,
    plc: SocketAddr,
) -> String {
    let live_cert = dir.join("live.pem");
    let live_key = dir.join("live.key");
    std::fs::copy(dir.join(format!("{cert}.pem")), &live_cert).unwrap();
    std::fs::copy(dir.join(format!("{cert}.key")), &live_key).unwrap();
    config_text(
        &dir.join(journal),
        tls_port,
        PREFIX,
        &LineDevices {
            scanner: ScannerAt::Tcp(scanner),
            plc,
        },
    )
    .replace(
        "reconnect_max_s = 2",
        &format!(
            "reconnect_max_s = 2\nusername = \"gw-test\"\npassword_file = \"{}\"\ntls = {{ ca_file = \"{}\", cert_file = \"{}\", key_file = \"{}\" }}",
            dir.join("gw-password").display(),
            dir.join("ca.pem").display(),
            live_cert.display(),
            live_key.display()
        ),
    )
}

fn journal_stats(store: &Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_bondline"))
        .args(["journal", "--store"])
        .arg(store)
        .arg("stats")
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The client key goes missing while the daemon runs: every reconnect attempt fails the
/// same way, and the platform gets one alarm about it, not one per attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_client_key_raises_one_alarm_not_one_per_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pki = dir.path();
    let trusted = ca("bondline test CA");
    write(&pki.join("ca.pem"), &trusted.cert.pem());
    issue(&trusted, pki, "broker", true);
    issue(&trusted, pki, "gateway", false);
    let passwords = pki.join("passwords");
    let ok = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["gw-test", "s3cret"])
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::set_permissions(&passwords, std::fs::Permissions::from_mode(0o644)).unwrap();
    write(&pki.join("gw-password"), "s3cret\n");
    let tls_port = loopback_port();
    let extra = format!(
        "listener {tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\ncafile {ca}\ncertfile {crt}\nkeyfile {key}\nrequire_certificate true\n",
        pw = passwords.display(),
        ca = pki.join("ca.pem").display(),
        crt = pki.join("broker.pem").display(),
        key = pki.join("broker.key").display(),
    );
    let mut mosquitto = Mosquitto::start_with(dir.path(), &extra).await;
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let platform = PlatformSim::connect(broker, PREFIX, "platform-key")
        .await
        .unwrap();
    let plan = Plan::with_mix(78, Mix::only(PlanKind::Undeclared));
    let f = floor(plan, 10.0, Some(10)).await;
    let config = dir.path().join("bondline.toml");
    std::fs::write(
        &config,
        tls_config(dir.path(), "journal", "gateway", tls_port, f.scanner, f.plc),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");
    let daemon = Daemon::start(&config, &log);
    assert!(
        platform.wait_for_records(3, Duration::from_secs(30)).await,
        "connected over TLS first"
    );

    // The key disappears; the broker restarts, so the gateway must reconnect, and fails.
    std::fs::remove_file(pki.join("live.key")).unwrap();
    mosquitto.restart().await;
    let failures = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("cannot connect to the broker")
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(30), || failures() >= 6).await,
        "the reconnects did not fail repeatedly: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The key is back: the gateway reconnects and sends its queued alarms.
    std::fs::copy(pki.join("gateway.key"), pki.join("live.key")).unwrap();
    let alarms = || {
        platform
            .events()
            .iter()
            .filter(|e| {
                e.kind == bondline_devices::contract::EventKind::Alarm
                    && e.detail.contains("cannot connect to the broker")
            })
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(30), || alarms() >= 1).await,
        "no alarm reached the platform; events: {:?}",
        platform.events()
    );
    // The queued alarms went out together: wait until the platform's events stop coming.
    assert!(
        crate::harness::settle(Duration::from_secs(20), Duration::from_millis(1500), || {
            platform.events().len() as u64
        })
        .await
    );
    let attempts = failures();
    assert_eq!(
        alarms(),
        1,
        "{attempts} failed attempts (in the log) became {} alarms",
        alarms()
    );
    println!("{attempts} log lines for the failed reconnects, 1 alarm to the platform");
    assert_eq!(daemon.terminate(), Some(0));
}
