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
    for cmd in ["run", "check-config", "demo"] {
        let out = bondline().args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
}
