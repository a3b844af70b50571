//! The handshake against a model PLC, over random interleavings of writes, late and lost
//! acknowledges, reconnects, PLC restarts and gateway restarts.
//!
//! The model PLC takes every command it receives after a delay of its own (so acknowledges
//! may come out of order, long after the gateway gave up), keeps the last command in its
//! divert block and forgets everything when it restarts. The invariant is the handshake's
//! promise: an acknowledge is only ever attributed to the command whose taking put that value
//! in the register, and a sequence is never written while the PLC may still take an earlier
//! command with the same sequence.

use std::collections::HashMap;

use bondline_devices::plc::DivertCommand;
use proptest::prelude::*;

use super::*;

const HORIZON_MS: u64 = 10_000;
/// Longest the model PLC takes to acknowledge: below the horizon, as the horizon requires.
const MAX_DELAY_MS: u64 = 6_000;

#[derive(Debug, Clone)]
enum Op {
    /// Write the next command; `lost`: the write never reaches the PLC (the link fails).
    Write {
        delay_ms: u64,
        lost: bool,
    },
    Advance(u64),
    Read,
    GiveUp,
    LinkLost,
    PlcRestart,
    GatewayRestart,
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..=MAX_DELAY_MS, prop::bool::weighted(0.1))
            .prop_map(|(delay_ms, lost)| Op::Write { delay_ms, lost }),
        2 => (0u64..50).prop_map(|d| d * d).prop_map(Op::Advance),
        6 => Just(Op::Read),
        3 => Just(Op::GiveUp),
        1 => Just(Op::LinkLost),
        1 => Just(Op::PlcRestart),
        1 => Just(Op::GatewayRestart),
        1 => Just(Op::Expire),
    ]
}

/// A job of the test: its id doubles as the parcel id.
type Job = u32;

#[derive(Default)]
struct Plc {
    block: Option<DivertCommand>,
    ack: u16,
    /// The job whose taking wrote `ack`.
    ack_job: Option<Job>,
    /// Commands received and not yet taken: (seq, job, due).
    pending: Vec<(u16, Job, u64)>,
}

impl Plc {
    fn advance(&mut self, now: u64) {
        self.pending.sort_by_key(|p| p.2);
        while let Some(&(seq, job, due)) = self.pending.first() {
            if due > now {
                break;
            }
            self.pending.remove(0);
            self.ack = seq;
            self.ack_job = Some(job);
        }
    }
}

struct Gateway {
    hs: Handshake,
    /// Jobs that ended without their acknowledge, when they were written, not yet reported.
    gave_up: HashMap<Job, u64>,
}

fn command(job: Job) -> Command {
    Command {
        parcel: job,
        lane: 1,
        revision: Some(job),
    }
}

/// Checks an attribution against what the PLC actually did.
fn attributed(w: &Written, plc: &Plc) -> Result<(), TestCaseError> {
    let took = plc.ack_job;
    match w.command.revision {
        Some(job) => prop_assert_eq!(took, Some(job), "{:?} attributed wrongly", w),
        // An earlier run's command: its parcel is known for the last one only.
        None if w.command.parcel != 0 => {
            prop_assert_eq!(took, Some(w.command.parcel), "{:?} attributed wrongly", w)
        }
        None => {}
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut plc = Plc::default();
    let mut gw = Gateway {
        hs: Handshake::new(HORIZON_MS),
        gave_up: HashMap::new(),
    };
    let mut now = 1_000u64;
    let mut next_job: Job = 1;
    let c = gw.hs.connected(plc.block, plc.ack, now);
    prop_assert!(c.dropped.is_empty() && c.late.is_none());
    for op in ops {
        match op {
            Op::Write { delay_ms, lost } => {
                gw.hs.gave_up().into_iter().for_each(|w| {
                    gw.gave_up.insert(w.command.parcel, w.at_ms);
                });
                let job = next_job;
                next_job += 1;
                let Some(seq) = gw.hs.begin(command(job), now) else {
                    return Err(TestCaseError::fail("no sequence free"));
                };
                prop_assert!(
                    !plc.pending.iter().any(|p| p.0 == seq),
                    "sequence {} written while the PLC may still take its earlier use",
                    seq
                );
                if lost {
                    gw.hs.link_lost();
                    gw.gave_up.insert(job, now);
                    let c = gw.hs.connected(plc.block, plc.ack, now);
                    if let Some(w) = c.late {
                        attributed(&w, &plc)?;
                    }
                } else {
                    plc.block = Some(DivertCommand {
                        seq,
                        lane: 1,
                        parcel: job,
                    });
                    plc.pending.push((seq, job, now + delay_ms));
                }
            }
            Op::Advance(ms) => {
                now += ms;
                plc.advance(now);
            }
            Op::Read => {
                let shown = plc.ack_job;
                match gw.hs.seen(plc.ack) {
                    Ack::Mine(w) | Ack::Late(w) => {
                        attributed(&w, &plc)?;
                        if let Some(job) = w.command.revision {
                            gw.gave_up.remove(&job);
                        }
                    }
                    Ack::Nothing => {
                        // A late acknowledge the register shows is never passed over while
                        // its command is still in doubt.
                        if let Some(job) = shown {
                            if let Some(&at) = gw.gave_up.get(&job) {
                                prop_assert!(
                                    now.saturating_sub(at) >= HORIZON_MS
                                        || !gw
                                            .hs
                                            .in_doubt()
                                            .any(|w| w.command.revision == Some(job)),
                                    "late acknowledge of job {} not reported",
                                    job
                                );
                            }
                        }
                    }
                }
            }
            Op::GiveUp => {
                if let Some(w) = gw.hs.gave_up() {
                    gw.gave_up.insert(w.command.parcel, w.at_ms);
                }
            }
            Op::LinkLost => {
                gw.hs.link_lost();
                let c = gw.hs.connected(plc.block, plc.ack, now);
                if let Some(w) = c.late {
                    attributed(&w, &plc)?;
                }
            }
            Op::PlcRestart => {
                plc = Plc::default();
                gw.hs.link_lost();
                let c = gw.hs.connected(plc.block, plc.ack, now);
                prop_assert!(c.late.is_none());
                prop_assert!(!gw.hs.any_in_doubt(), "a blank PLC leaves nothing in doubt");
                gw.gave_up.clear();
            }
            Op::GatewayRestart => {
                gw = Gateway {
                    hs: Handshake::new(HORIZON_MS),
                    gave_up: HashMap::new(),
                };
                let c = gw.hs.connected(plc.block, plc.ack, now);
                if let Some(w) = c.late {
                    attributed(&w, &plc)?;
                }
            }
            Op::Expire => {
                gw.hs.expire(now);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn an_acknowledge_is_only_attributed_to_its_own_command(ops in prop::collection::vec(op(), 1..300)) {
        run(ops)?;
    }
}

fn cmd(parcel: u32) -> Command {
    command(parcel)
}

#[test]
fn a_late_acknowledge_after_a_reconnect_matches_no_new_command() {
    // The case of a PLC acknowledging 5 s late: command 5 times out, the link is made anew
    // (the PLC's ack still shows 4), and the next command must not reuse 5.
    let mut hs = Handshake::new(HORIZON_MS);
    hs.connected(
        Some(DivertCommand {
            seq: 4,
            lane: 1,
            parcel: 40,
        }),
        4,
        0,
    );
    assert_eq!(hs.begin(cmd(50), 0), Some(5));
    assert_eq!(hs.seen(4), Ack::Nothing);
    let w = hs.gave_up().expect("command 5 in doubt");
    hs.link_lost();
    hs.connected(
        Some(DivertCommand {
            seq: 5,
            lane: 1,
            parcel: 50,
        }),
        4,
        300,
    );
    assert_eq!(hs.begin(cmd(51), 300), Some(6));
    // Command 5's acknowledge arrives while 6 is waited for: late, and not 6's.
    assert_eq!(hs.seen(5), Ack::Late(w));
    assert!(matches!(hs.seen(6), Ack::Mine(m) if m.command.parcel == 51));
}

#[test]
fn sequences_in_doubt_and_the_shown_acknowledge_are_skipped_across_the_wrap() {
    let mut hs = Handshake::new(HORIZON_MS);
    hs.connected(
        Some(DivertCommand {
            seq: 65534,
            lane: 1,
            parcel: 1,
        }),
        65534,
        0,
    );
    assert_eq!(hs.begin(cmd(2), 0), Some(65535));
    hs.gave_up();
    // Next after 65535 is 1 (0 is never used).
    assert_eq!(hs.begin(cmd(3), 0), Some(1));
    hs.gave_up();
    // A gateway restart that only knows the PLC's registers: the block shows 1, ack 65534.
    let mut hs = Handshake::new(HORIZON_MS);
    let c = hs.connected(
        Some(DivertCommand {
            seq: 1,
            lane: 2,
            parcel: 3,
        }),
        65534,
        0,
    );
    assert!(c.late.is_none());
    assert_eq!(hs.in_doubt().count(), 2, "65535 and 1 may still be taken");
    assert_eq!(hs.begin(cmd(4), 0), Some(2));
    match hs.seen(65535) {
        Ack::Late(w) => assert_eq!(w.command.revision, None),
        other => panic!("expected a late acknowledge, got {other:?}"),
    }
}

#[test]
fn a_blank_plc_drops_commands_in_doubt_and_sequences_still_go_forward() {
    let mut hs = Handshake::new(HORIZON_MS);
    hs.connected(None, 0, 0);
    assert_eq!(hs.begin(cmd(1), 0), Some(1));
    hs.gave_up();
    let c = hs.connected(None, 0, 10);
    assert_eq!(c.dropped.len(), 1);
    assert!(!hs.any_in_doubt());
    assert_eq!(hs.begin(cmd(2), 10), Some(2));
}

#[test]
fn commands_in_doubt_expire_after_the_horizon() {
    let mut hs = Handshake::new(1_000);
    hs.connected(None, 0, 0);
    hs.begin(cmd(1), 0);
    hs.gave_up();
    assert_eq!(hs.expire(999), 0);
    assert_eq!(hs.expire(1_000), 1);
    assert_eq!(hs.seen(1), Ack::Nothing);
}

#[test]
fn an_unmoved_register_never_acknowledges_a_new_command() {
    // The register shows 7 and the PLC stopped taking anything: after every other sequence
    // has expired, 7 itself is still not handed out while the register shows it.
    let mut hs = Handshake::new(1);
    hs.connected(
        Some(DivertCommand {
            seq: 6,
            lane: 1,
            parcel: 6,
        }),
        7,
        0,
    );
    let mut now = 0;
    for parcel in 0..65_534u32 {
        let seq = hs.begin(cmd(parcel), now).expect("a free sequence");
        assert_ne!(seq, 7);
        hs.gave_up();
        now += 2;
        hs.expire(now);
    }
}

#[test]
fn a_sequence_in_doubt_is_skipped_when_the_cycle_comes_round() {
    let mut hs = Handshake::new(u64::MAX);
    hs.connected(None, 0, 0);
    assert_eq!(hs.begin(cmd(0), 0), Some(1));
    hs.gave_up();
    // Every other sequence is written and acknowledged at once.
    for parcel in 1..65_535u32 {
        let seq = hs.begin(cmd(parcel), 0).expect("a free sequence");
        assert!(matches!(hs.seen(seq), Ack::Mine(_)));
    }
    // The cycle is round: 1 is still in doubt, so the next command gets 2.
    assert_eq!(hs.begin(cmd(65_535), 0), Some(2));
}
