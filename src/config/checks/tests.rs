use std::time::{Duration, SystemTime};

use super::*;
use crate::config::parse_host_port;

fn config(dir: &Path, scanner: &str, extra: &str) -> Config {
    let text = format!(
        r#"
gateway_id = "gw"
[trust]
allow_unsigned = true
[storage]
path = "{journal}"
[uplink]
broker = "127.0.0.1:1883"
client_id = "c"
topic_prefix = "p"
{extra}
[devices.scanner-1]
profile = "scanner-stx-etx"
tcp = "{scanner}"
[devices.plc-1]
profile = "sorter-plc"
tcp = "127.0.0.1:502"
[[lines]]
id = "L1"
scanner = "scanner-1"
plc = "plc-1"
lanes = [
  {{ lane = 1, role = "release" }},
  {{ lane = 2, role = "inspection" }},
  {{ lane = 3, role = "hold" }},
  {{ lane = 4, role = "exception" }},
]
"#,
        journal = dir.join("journal").display()
    );
    Config::parse("t.toml", &text).unwrap()
}

#[test]
fn a_storage_path_that_is_no_directory_is_an_error_at_check_and_at_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a journal").unwrap();
    for mode in [Mode::CheckConfig, Mode::Run] {
        let f = storage(&file, mode).expect("a regular file is refused");
        assert_eq!(
            (f.severity, f.key.as_str()),
            (Severity::Error, "storage.path")
        );
        assert!(f.reason.contains("is not a directory"), "{}", f.reason);
        // Below a regular file nothing can be created.
        let f = storage(&file.join("journal"), mode).expect("refused");
        assert_eq!(f.severity, Severity::Error);
        assert!(f.reason.contains("cannot be created"), "{}", f.reason);
    }
    // A directory, or one that can be created: fine.
    assert_eq!(storage(dir.path(), Mode::Run), None);
    assert_eq!(storage(&dir.path().join("new/journal"), Mode::Run), None);
}

#[test]
fn hosts_that_can_never_resolve_are_refused_and_unresolved_ones_warned() {
    for bad in ["scanner 1:5000", "a..b:502", "-x.example:1", "[::zz]:1"] {
        let e = parse_host_port(bad).unwrap_err();
        assert!(e.contains("can never resolve"), "{bad}: {e}");
    }
    for good in [
        "localhost:1",
        "plc_1.line-a.local:502",
        "10.0.0.7:502",
        "[::1]:1883",
    ] {
        assert!(parse_host_port(good).is_ok(), "{good}");
    }
    let dir = tempfile::tempdir().unwrap();
    // `.invalid` never resolves (RFC 2606).
    let c = config(dir.path(), "scanner-1.invalid:5000", "");
    let found = unresolved_hosts(&c, Duration::from_secs(10));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].severity, Severity::Warning);
    assert_eq!(found[0].key, "devices.scanner-1.tcp");
    assert!(
        found[0].reason.contains("scanner-1.invalid"),
        "{}",
        found[0].reason
    );
    // IP literals are not looked up.
    let c = config(dir.path(), "127.0.0.1:5000", "");
    assert!(unresolved_hosts(&c, Duration::from_secs(10)).is_empty());
}

fn cert(dir: &Path, name: &str, from: (i32, u8, u8), until: (i32, u8, u8)) -> PathBuf {
    let mut p = rcgen::CertificateParams::new(vec![format!("{name}.test")]).unwrap();
    p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    p.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
    let key = rcgen::KeyPair::generate().unwrap();
    let c = p.self_signed(&key).unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, c.pem()).unwrap();
    path
}

#[test]
fn expired_and_soon_expiring_certificates_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    // "Now" is 2026-06-01.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_272_000);
    let expired = cert(dir.path(), "expired", (2025, 1, 1), (2026, 5, 1));
    let soon = cert(dir.path(), "soon", (2025, 1, 1), (2026, 6, 11));
    let later = cert(dir.path(), "later", (2025, 1, 1), (2027, 6, 1));
    let future = cert(dir.path(), "future", (2026, 7, 1), (2027, 6, 1));
    let one = |p: &Path| certificate_file("uplink.tls.ca_file", p, now);
    let f = one(&expired);
    assert_eq!(f.len(), 1);
    assert!(
        f[0].reason.contains("expired on 2026-05-01"),
        "{}",
        f[0].reason
    );
    let f = one(&soon);
    assert!(f[0].reason.contains("in 10 day(s)"), "{}", f[0].reason);
    assert!(one(&later).is_empty());
    assert!(one(&future)[0]
        .reason
        .contains("not valid before 2026-07-01"));
    // A chain: each certificate is looked at.
    let chain = dir.path().join("chain.pem");
    let both = std::fs::read_to_string(&later).unwrap() + &std::fs::read_to_string(&soon).unwrap();
    std::fs::write(&chain, both).unwrap();
    let f = one(&chain);
    assert_eq!(f.len(), 1);
    assert!(
        f[0].reason.starts_with("certificate 2 of 2"),
        "{}",
        f[0].reason
    );

    // Through the configuration: the broker's CA and the client certificate.
    let key = dir.path().join("client.key");
    let mut p = rcgen::CertificateParams::new(vec!["gw.test".into()]).unwrap();
    p.not_before = rcgen::date_time_ymd(2025, 1, 1);
    p.not_after = rcgen::date_time_ymd(2026, 6, 20);
    let kp = rcgen::KeyPair::generate().unwrap();
    let client = dir.path().join("client.pem");
    std::fs::write(&client, p.self_signed(&kp).unwrap().pem()).unwrap();
    std::fs::write(&key, kp.serialize_pem()).unwrap();
    let tls = format!(
        "tls = {{ ca_file = \"{}\", cert_file = \"{}\", key_file = \"{}\" }}",
        later.display(),
        client.display(),
        key.display()
    );
    let c = config(dir.path(), "127.0.0.1:5000", &tls);
    let f = certificates(&c, now);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].key, "uplink.tls.cert_file");
    assert!(f[0].reason.contains("in 19 day(s)"), "{}", f[0].reason);
}
