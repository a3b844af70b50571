//! The lab's commands run as a user runs them: the README's demo line, and small runs of the
//! benches, so a bench that stops working fails here rather than when someone measures.

use std::process::Command;

fn lab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bondline-lab"))
}

/// Runs `bondline-lab ARGS`; its stdout, after asserting it succeeded.
fn run(args: &[&str]) -> String {
    let out = lab()
        .args(args)
        .args(["--log-format", "text"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bondline-lab {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{stdout}");
    stdout
}

#[test]
fn every_command_has_help() {
    for cmd in ["demo", "bench"] {
        let out = lab().args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
}

/// The README's first command, run as a new user would: the whole demo line for half a
/// minute, at twice the default rate (parcels 125 ms apart, closer than the X-ray join
/// window, with unreadable items among them: before the join counted parcels that already had
/// their verdict, an unreadable item's verdict shifted every later one onto the next parcel
/// and released X-ray suspects). Every rule kind of the demo rule set (the X-ray one
/// included) decides some parcel, and no parcel reaches the release lane against the plan. Lanes that differ from the plan
/// otherwise (a parcel sent to inspection because a loaded machine made it late) are shown,
/// not failed on: the demo runs beside the rest of the suite.
#[test]
fn the_demo_line_runs_every_rule_kind_and_releases_nothing_against_its_plan() {
    let out = lab()
        .args([
            "demo",
            "--duration",
            "30",
            "--quiet",
            "--log-format",
            "text",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{stdout}");
    assert!(stdout.contains("lane differs from plan"), "{stdout}");
    assert!(!stdout.contains("RELEASED AGAINST PLAN"), "{stdout}");
    assert!(
        stdout.contains("every rule kind of demo-2026-11 fired at least once"),
        "{stdout}"
    );
    assert!(stdout.contains("xray_suspect"), "{stdout}");
}

/// `bench journal`: the writer's append rate and the index behind it, printed.
#[test]
fn bench_journal_runs_and_prints_its_rates() {
    let out = run(&["bench", "journal", "--records", "3000"]);
    assert!(out.contains("journal append: 3000 records in"), "{out}");
    assert!(
        out.contains("waybill index behind the writer: 3000 records"),
        "{out}"
    );
}

/// `bench drain`: raw publishing and the daemon's uplink, each to a Mosquitto it starts.
#[test]
fn bench_drain_runs_the_uplink_to_the_end() {
    let out = run(&["bench", "drain", "--records", "2000"]);
    assert!(out.contains("raw rumqttc QoS1: 2000 publishes"), "{out}");
    assert!(
        out.contains("uplink drain (the daemon, drain_rate unpaced): 2000 records"),
        "{out}"
    );
}
