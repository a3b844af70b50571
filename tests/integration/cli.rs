//! The `bondline` binary's command line, run as a user would.

use std::process::Command;

fn bondline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bondline"))
}

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/bondline.toml");

#[test]
fn check_config_accepts_the_example() {
    let out = bondline().args(["check-config", EXAMPLE]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

/// Every rule set shipped in deploy/ passes check-config with the example configuration.
#[test]
fn check_config_accepts_every_shipped_rule_set() {
    let dir = tempfile::tempdir().unwrap();
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    let mut checked = 0;
    for entry in std::fs::read_dir(deploy).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("rules") && name.ends_with(".toml")) {
            continue;
        }
        let config = dir.path().join(format!("with-{name}"));
        let text = std::fs::read_to_string(EXAMPLE).unwrap().replacen(
            "gateway_id = ",
            &format!("rules_file = \"{}\"\ngateway_id = ", path.display()),
            1,
        );
        std::fs::write(&config, text).unwrap();
        let out = bondline()
            .args(["check-config", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 1);
}

/// Writes the example with one substitution and checks the exit code and the message.
fn check_broken(from: &str, to: &str, key: &str, reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    assert!(text.contains(from), "example lacks {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    let out = bondline()
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(path.to_str().unwrap()),
        "file not named: {err}"
    );
    assert!(err.contains(key), "key {key} not named: {err}");
    assert!(err.contains(reason), "reason {reason:?} missing: {err}");
}

#[test]
fn check_config_names_a_misspelt_key() {
    check_broken(
        "keep_alive_s = 15",
        "keep_alive_secs = 15",
        "uplink.keep_alive_secs",
        "unknown field",
    );
}

#[test]
fn check_config_names_unusable_tls_material_and_half_credentials() {
    check_broken(
        "drain_rate = 5000",
        "drain_rate = 5000\ntls = { ca_file = \"/nonexistent/ca.pem\" }",
        "uplink.tls",
        "/nonexistent/ca.pem",
    );
    check_broken(
        "drain_rate = 5000",
        "drain_rate = 5000\nusername = \"gw-01\"",
        "uplink.password_file",
        "needed with username",
    );
}

#[test]
fn check_config_names_an_ingest_pace_out_of_range() {
    check_broken(
        "platform_rate_while_sorting = 15000",
        "platform_rate_while_sorting = 2000000",
        "uplink.platform_rate_while_sorting",
        "must be 0 (no limit) to 1000000",
    );
}

#[test]
fn check_config_names_a_bad_port() {
    check_broken(
        "192.0.2.10:502",
        "192.0.2.10:70000",
        "devices.plc-1.tcp",
        "not a number from 1 to 65535",
    );
}

#[test]
fn run_with_a_bad_config_exits_64() {
    let out = bondline()
        .args(["run", "--config", "/nonexistent/bondline.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/bondline.toml"));
}

#[test]
fn every_command_has_help() {
    for cmd in ["run", "check-config", "journal", "explain", "report"] {
        let out = bondline().args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
}

/// A stopped gateway's journal with `n` records of held parcels, written by the real writer.
fn journal_with_records(dir: &std::path::Path, n: u64) {
    use bondline_devices::contract::LaneRole;
    crate::harness::write_journal(
        dir,
        (0..n).map(|i| {
            crate::harness::parcel_record("gw-cli", i, 1_000_000 + i * 1000, LaneRole::Hold).into()
        }),
    );
}

#[test]
fn journal_commands_inspect_export_verify_and_replay_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("journal");
    journal_with_records(&store, 20);
    let run = |args: &[&str]| {
        let out = bondline()
            .arg("journal")
            .arg("--store")
            .arg(&store)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, out, err) = run(&["stats"]);
    assert_eq!(code, Some(0), "{err}");
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["records"], 20);
    assert_eq!(stats["backlog"], 20);
    assert_eq!(stats["oldest_unforwarded"][0], 1);

    let (code, out, _) = run(&["verify"]);
    assert_eq!(code, Some(0), "{out}");

    // Records scanned at 1_005_000 ..< 1_010_000 are seqs 6..=10.
    let (code, out, err) = run(&[
        "export", "--from", "1005000", "--to", "1010000", "--format", "csv",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 6, "{out}");
    assert!(
        rows[1].starts_with("6,gw-cli-6,parcel,L1,5,BL00000005,3,hold,undeclared"),
        "{out}"
    );
    let (code, out, _) = run(&[
        "export",
        "--from",
        "1970-01-01T00:16:40Z",
        "--to",
        "1970-01-01T00:16:42Z",
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 2, "RFC 3339 bounds: {out}");

    let (code, out, _) = run(&["replay", "3", "5"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("3 record(s)"), "{out}");

    // Edit one stored record in place (the batch format is documented in the journal module)
    // and verification must fail, naming the record after it.
    {
        let db = sled::open(&store).unwrap();
        let batches = db.open_tree("batches").unwrap();
        let (key, value) = batches.first().unwrap().unwrap();
        // Same length, so the batch framing stays intact: only the content changes.
        let (from, to) = (&b"\"reason\":\"no "[..], &b"\"reason\":\"NO "[..]);
        let mut bytes = value.to_vec();
        let at = bytes
            .windows(from.len())
            .position(|w| w == from)
            .expect("a record with a reason");
        bytes[at..at + to.len()].copy_from_slice(to);
        batches.insert(key, bytes).unwrap();
        db.flush().unwrap();
    }
    let (code, out, _) = run(&["verify"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("\"problem\": \"broken\""), "{out}");
}

#[test]
fn journal_commands_explain_a_missing_store() {
    let out = bondline()
        .args(["journal", "--store", "/nonexistent/journal", "stats"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no journal here"));
}

/// Copies a closed store directory, as an auditor copies it off a gateway.
fn copy_store(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_store(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `bondline journal verify` on copies of a store: one with a group of records dropped from
/// the middle, one with two groups swapped. Both fail, naming what is wrong.
#[test]
fn journal_verify_finds_dropped_and_reordered_records_in_a_copied_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("journal");
    journal_with_records(&store, 60);
    let verify = |store: &std::path::Path| {
        let out = bondline()
            .args(["journal", "--store"])
            .arg(store)
            .arg("verify")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = verify(&store);
    assert_eq!(code, Some(0), "{out}");

    let dropped = dir.path().join("dropped");
    copy_store(&store, &dropped);
    {
        let db = sled::open(&dropped).unwrap();
        let batches = db.open_tree("batches").unwrap();
        let keys: Vec<_> = batches.iter().keys().map(|k| k.unwrap()).collect();
        assert!(
            keys.len() >= 3,
            "{} batches: too few to drop a middle one",
            keys.len()
        );
        batches.remove(&keys[1]).unwrap();
        db.flush().unwrap();
    }
    let (code, out) = verify(&dropped);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("\"problem\": \"gap\""), "{out}");

    let swapped = dir.path().join("swapped");
    copy_store(&store, &swapped);
    {
        let db = sled::open(&swapped).unwrap();
        let batches = db.open_tree("batches").unwrap();
        let entries: Vec<_> = batches.iter().map(|e| e.unwrap()).collect();
        batches.insert(&entries[1].0, entries[2].1.clone()).unwrap();
        batches.insert(&entries[2].0, entries[1].1.clone()).unwrap();
        db.flush().unwrap();
    }
    let (code, out) = verify(&swapped);
    assert_eq!(code, Some(1), "{out}");
    // Batches [4..6] and [7..9] swapped: one reordering, reported once.
    assert_eq!(out.matches("\"problem\"").count(), 1, "{out}");
    assert!(out.contains("\"problem\": \"out_of_order\""), "{out}");
}

/// `storage.path` naming a regular file: a configuration error (64) naming the key, both
/// for check-config and for run (sled used to fail at start with exit 1, and
/// `Restart=on-failure` looped).
#[test]
fn a_storage_path_that_is_a_file_is_a_configuration_error_at_check_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let path = dir.path().join("file-store.toml");
    let text = std::fs::read_to_string(EXAMPLE).unwrap().replacen(
        "path = \"/var/lib/bondline/journal\"",
        &format!("path = \"{}\"", file.display()),
        1,
    );
    std::fs::write(&path, text).unwrap();
    for cmd in [&["check-config"][..], &["run", "--config"][..]] {
        let out = bondline().args(cmd).arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{cmd:?}: {err}");
        assert!(err.contains("key `storage.path`"), "{cmd:?}: {err}");
        assert!(err.contains("is not a directory"), "{cmd:?}: {err}");
    }
}

/// A host that can never resolve is an error; one that does not resolve now, a warning.
#[test]
fn check_config_refuses_impossible_hosts_and_warns_about_unresolved_ones() {
    check_broken(
        "tcp = \"192.0.2.10:502\"",
        "tcp = \"plc 1:502\"",
        "devices.plc-1.tcp",
        "can never resolve",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unresolved.toml");
    let text = std::fs::read_to_string(EXAMPLE).unwrap().replacen(
        "tcp = \"192.0.2.10:502\"",
        "tcp = \"plc-1.invalid:502\"",
        1,
    );
    std::fs::write(&path, text).unwrap();
    let out = bondline().arg("check-config").arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("warning:")
            && stdout.contains("key `devices.plc-1.tcp`: host `plc-1.invalid` does not resolve"),
        "{stdout}"
    );
}

/// A 100,000-character value is not echoed whole.
#[test]
fn check_config_cuts_long_values_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.toml");
    let text = std::fs::read_to_string(EXAMPLE).unwrap().replacen(
        "gateway_id = \"gw-01\"",
        &format!("gateway_id = \"{}\"", "g".repeat(100_000)),
        1,
    );
    std::fs::write(&path, text).unwrap();
    let out = bondline().arg("check-config").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64));
    assert!(err.len() < 400, "{} bytes echoed", err.len());
    assert!(err.contains("(100000 characters)"), "{err}");
}

/// An unknown `[calendar] time_zone`: a configuration error (64) naming the file, the key and
/// the value, at check and at run, before anything is counted in a wrong calendar.
#[test]
fn an_unknown_time_zone_exits_64_naming_the_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zone.toml");
    let text = std::fs::read_to_string(EXAMPLE).unwrap().replacen(
        "time_zone = \"Asia/Shanghai\"",
        "time_zone = \"Asia/Xanadu\"",
        1,
    );
    assert!(text.contains("Asia/Xanadu"));
    std::fs::write(&path, text).unwrap();
    for cmd in [&["check-config"][..], &["run", "--config"][..]] {
        let out = bondline().args(cmd).arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{cmd:?}: {err}");
        assert!(err.contains("zone.toml"), "{cmd:?}: {err}");
        assert!(err.contains("calendar.time_zone"), "{cmd:?}: {err}");
        assert!(err.contains("Asia/Xanadu"), "{cmd:?}: {err}");
    }
}
