use super::duplicates;
use super::effects::{Divert, Effect, Now, Turn};
use super::scan::stricter;
use super::*;
use crate::floor::{LaneStates, PlcEvent, ScanEvent, ScanRead};
use crate::metrics::unix_ms;
use crate::rules::engine::RuleSet;
use bondline_devices::contract::{Action, Declaration, Instruction, Record};
use bondline_devices::contract::{DivertOutcome, DivertStatus, LaneRole, SCHEMA};
use bondline_devices::plc::LANE_FULL;
use bondline_devices::plc::{Disposition, DispositionCode};
use proptest::prelude::*;
use std::collections::VecDeque;
use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;
use std::time::{Duration, Instant};

const WAYBILLS: [&str; 3] = ["BL000001", "BL000002", "BL000003"];
const RELEASE_LANE: u16 = 1;

/// A line with the built-in rule set, numbered lanes (1 release … 4 exception), no
/// cameras and no X-ray: only the machine, no task and no channel.
fn machine() -> Line {
    let ctx = LineCtx {
        gateway: "gw".into(),
        line: "L1".into(),
        lanes: LaneMap::numbered(),
        geometry: Geometry {
            travel: Duration::from_millis(2_000),
            margin: Duration::from_millis(200),
            disposition_timeout: Duration::from_secs(5),
        },
        table: Arc::new(ClearanceTable::default()),
        rules: Arc::new(arc_swap::ArcSwap::from_pointee(RuleSet::builtin())),
        lane_states: Arc::new(LaneStates::default()),
        metrics: Arc::new(Metrics::default()),
        dispositions: true,
        weighing: false,
        calendar: Default::default(),
        beat: crate::service::Liveness::default().register("line"),
        xray: None,
        cameras: None,
        recent: HashMap::new(),
        released: Arc::new(duplicates::Released::new(duplicates::Settings {
            recirculation: false,
            ..Default::default()
        })),
    };
    Line::new(ctx, HashMap::new(), 1_000)
}

fn declaration(waybill: &str) -> Declaration {
    serde_json::from_value(serde_json::json!({
        "schema": SCHEMA,
        "waybill": waybill,
        "enterprise": "E1",
        "identity_verified": true,
    }))
    .unwrap()
}

fn instruction(waybill: &str, action: Action, n: u64) -> Instruction {
    Instruction {
        schema: SCHEMA,
        instruction_id: format!("i-{n}"),
        waybill: waybill.into(),
        action,
        reason: String::new(),
        issued_at_ms: Some(n),
        signature: None,
    }
}

/// What can happen around a line, in any order.
#[derive(Debug, Clone)]
enum Op {
    /// A parcel with this waybill (an index past the list: a no-read).
    Scan(usize),
    Declare(usize),
    /// 0 release, 1 inspect, 2 hold.
    Order(usize, u8),
    /// A lane reported full (or free again).
    Lane(u16, bool),
    /// The PLC link's queue refuses commands from now (or takes them again).
    QueueFull(bool),
    /// The PLC answers its oldest command: acknowledged, or timed out.
    Answer(bool),
    /// The PLC reports its oldest answered parcel in a lane.
    Dispose(u16),
    Wait(u64),
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize).prop_map(Op::Scan),
        2 => (0..3usize).prop_map(Op::Declare),
        3 => (0..3usize, 0..3u8).prop_map(|(w, a)| Op::Order(w, a)),
        1 => (1..5u16, any::<bool>()).prop_map(|(l, f)| Op::Lane(l, f)),
        1 => any::<bool>().prop_map(Op::QueueFull),
        3 => any::<bool>().prop_map(Op::Answer),
        1 => (1..5u16).prop_map(Op::Dispose),
        3 => (0..1_500u64).prop_map(Op::Wait),
        1 => Just(Op::Tick),
    ]
}

/// The world around the machine: the platform's current word, the lanes, the PLC's
/// queue, and every release command given so far.
struct World {
    line: Line,
    now: Now,
    declared: BTreeSet<String>,
    orders: BTreeMap<String, Action>,
    full: BTreeSet<u16>,
    queue_full: bool,
    jobs: VecDeque<Divert>,
    answered: VecDeque<u32>,
    released: BTreeMap<String, BTreeSet<u32>>,
    stamp: u64,
    /// Alerts seen by [`answer`].
    alerts: Vec<String>,
}

impl World {
    fn new() -> World {
        World {
            line: machine(),
            now: Now {
                instant: Instant::now(),
                wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            },
            declared: BTreeSet::new(),
            orders: BTreeMap::new(),
            full: BTreeSet::new(),
            queue_full: false,
            jobs: VecDeque::new(),
            answered: VecDeque::new(),
            released: BTreeMap::new(),
            stamp: 0,
            alerts: Vec::new(),
        }
    }

    /// One turn of the machine, its effects carried out as the line task does, every
    /// command checked against the promises.
    fn turn(&mut self, handler: impl FnOnce(&mut Line, &mut Turn)) {
        let mut turn = Turn::at(self.now);
        handler(&mut self.line, &mut turn);
        let mut queue: VecDeque<Effect> = turn.effects.into();
        while let Some(effect) = queue.pop_front() {
            let Effect::Divert(d) = effect else {
                continue;
            };
            self.check(&d);
            if self.queue_full {
                let mut answer = Turn::at(self.now);
                self.line.divert_refused(d.parcel, &mut answer);
                for e in answer.effects.into_iter().rev() {
                    queue.push_front(e);
                }
            } else {
                self.line.in_flight += 1;
                self.jobs.push_back(d);
            }
        }
    }

    /// Fail closed and one release one parcel: a command to the release lane only for a
    /// waybill declared and ordered released now, before its deadline, to a lane not
    /// full, written ahead, and for one parcel of the waybill at most.
    fn check(&mut self, d: &Divert) {
        let role = self.line.ctx.lanes.role_of(d.lane);
        let record_lane = d.intent.as_ref().map(|r| (r.lane, r.lane_role));
        if d.lane != RELEASE_LANE {
            assert!(d.intent.is_none(), "only a release is written ahead");
            // A command after a release for the same parcel takes it back, past the
            // deadline if need be; any other keeps to its deadline.
            let had_release = self.released.values().any(|p| p.contains(&d.parcel));
            assert_eq!(d.withdraws_release, had_release, "{d:?}");
            return;
        }
        assert!(!d.withdraws_release);
        assert_eq!(role, Some(LaneRole::Release));
        let waybill = self
            .line
            .tracker
            .get(d.parcel)
            .and_then(|t| t.waybill().map(str::to_string))
            .expect("a released parcel is tracked and has a waybill");
        assert!(
            self.declared.contains(&waybill),
            "{waybill} released undeclared"
        );
        assert_eq!(
            self.orders.get(&waybill),
            Some(&Action::Release),
            "{waybill} released without a release order in force"
        );
        assert!(
            self.now.instant < d.deadline,
            "a release commanded past its deadline"
        );
        assert!(
            !self.full.contains(&RELEASE_LANE),
            "a release into a full lane"
        );
        assert_eq!(
            record_lane,
            Some((RELEASE_LANE, LaneRole::Release)),
            "a release is written ahead with its own decision"
        );
        let parcels = self.released.entry(waybill.clone()).or_default();
        parcels.insert(d.parcel);
        assert!(
            parcels.len() <= 1,
            "{waybill} released as parcels {parcels:?}"
        );
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Scan(i) => {
                let read = WAYBILLS
                    .get(i)
                    .map_or(ScanRead::NoRead, |w| ScanRead::Waybill(w.to_string()));
                let scan = ScanEvent {
                    read,
                    weight_g: None,
                    at: self.now.wall,
                    instant: self.now.instant,
                };
                self.turn(|l, t| l.on_scan(scan, t));
            }
            Op::Declare(i) => {
                let w = WAYBILLS[i];
                self.line.ctx.table.apply_declaration(&declaration(w));
                self.declared.insert(w.to_string());
                self.turn(|l, t| l.on_change(w, t));
            }
            Op::Order(i, a) => {
                let w = WAYBILLS[i];
                let action = [Action::Release, Action::Inspect, Action::Hold][a as usize];
                self.stamp += 1;
                self.line
                    .ctx
                    .table
                    .apply_instruction(&instruction(w, action, self.stamp));
                self.orders.insert(w.to_string(), action);
                self.turn(|l, t| l.on_change(w, t));
            }
            Op::Lane(lane, full) => {
                let state = if full { LANE_FULL } else { 0 };
                self.line.ctx.lane_states.set(lane, state);
                if full {
                    self.full.insert(lane);
                } else {
                    self.full.remove(&lane);
                }
            }
            Op::QueueFull(full) => self.queue_full = full,
            Op::Answer(acked) => {
                let Some(job) = self.jobs.pop_front() else {
                    return;
                };
                let outcome = DivertOutcome {
                    status: if acked {
                        DivertStatus::Acked
                    } else {
                        DivertStatus::Timeout
                    },
                    plc_seq: acked.then_some(1),
                    detail: None,
                    at_ms: unix_ms(self.now.wall),
                    late: false,
                };
                let ev = PlcEvent::Outcome {
                    parcel: job.parcel,
                    revision: job.revision,
                    lane: job.lane,
                    outcome,
                    at: tokio::time::Instant::from_std(self.now.instant),
                };
                self.answered.push_back(job.parcel);
                self.turn(|l, t| l.on_plc(ev, t));
            }
            Op::Dispose(lane) => {
                let Some(parcel) = self.answered.pop_front() else {
                    return;
                };
                let d = Disposition {
                    seq: 1,
                    parcel,
                    code: DispositionCode::Sorted,
                    lane,
                };
                self.turn(|l, t| l.on_plc(PlcEvent::Disposition(d), t));
            }
            Op::Wait(ms) => {
                self.now.instant += Duration::from_millis(ms);
                self.now.wall += Duration::from_millis(ms);
            }
            Op::Tick => self.turn(|l, t| l.expire(t)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any interleaving of scans, declarations, orders, lane states, a full PLC queue,
    /// the PLC's answers and dispositions and the passing of time: every command to the
    /// release lane keeps the promises of [`World::check`].
    #[test]
    fn no_interleaving_releases_against_the_platform_or_twice(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        let mut world = World::new();
        for op in ops {
            world.apply(op);
        }
    }
}

/// A held parcel whose release order arrives before its deadline is commanded to the
/// release lane, written ahead; after its deadline it is not commanded again.
#[test]
fn a_release_order_re_decides_a_held_parcel_only_before_its_deadline() {
    let mut world = World::new();
    world.apply(Op::Declare(0));
    world.apply(Op::Scan(0));
    let first = world.jobs.back().cloned().expect("a command for the scan");
    assert_eq!(first.lane, 3, "declared without an order: hold");
    world.apply(Op::Order(0, 0));
    let again = world
        .jobs
        .back()
        .cloned()
        .expect("a command after the order");
    assert_eq!((again.parcel, again.lane), (first.parcel, RELEASE_LANE));
    assert!(again.intent.is_some());
    assert_eq!(again.revision, 1);
    // Past the deadline an order changes nothing on the belt.
    world.apply(Op::Wait(2_000));
    let commands = world.jobs.len();
    world.apply(Op::Order(0, 2));
    assert_eq!(
        world.jobs.len(),
        commands,
        "nothing re-commanded past the deadline"
    );
}

/// A parcel scanned before its declaration joins its consumer's history once the
/// declaration names the consumer before the deadline, on the day of its scan, and the
/// re-commit's decision says so (the journal keeps the count's mark with its record).
#[test]
fn a_parcel_declared_after_its_scan_is_counted_for_its_consumer() {
    let mut world = World::new();
    world.apply(Op::Scan(0));
    let first = world.jobs.back().cloned().expect("a command for the scan");
    assert_ne!(first.lane, RELEASE_LANE, "undeclared: not released");
    let w = WAYBILLS[0];
    let declared = bought_by(w, "C-late");
    world.line.ctx.table.apply_declaration(&declared);
    world.declared.insert(w.to_string());
    world.turn(|l, t| l.on_change(w, t));
    let again = world
        .jobs
        .back()
        .cloned()
        .expect("re-committed once counted");
    assert_eq!((again.parcel, again.revision), (first.parcel, 1));
    let day = world.line.ctx.calendar.day_of(unix_ms(world.now.wall));
    assert_eq!(world.line.ctx.table.known(w).counted_day, Some(day));
    let t = world.line.tracker.get(first.parcel).unwrap();
    let inputs = t.decision.inputs.as_ref().unwrap();
    assert!(inputs.counted);
    assert_eq!(inputs.counted_day, Some(day));
}

/// A local clock set back by days (an RTC reset before the time source answered) does not
/// count a parcel on a day gone by: behind the newest platform signature by more than the
/// allowed skew, the parcel counts on the platform's day, in windows that see the parcels
/// counted since. A clock behind by less counts on its own day.
#[test]
fn a_clock_set_back_counts_a_parcel_on_the_platform_day() {
    let day_ms = 86_400_000u64;
    for (ahead_ms, on_platform_day) in [(3 * day_ms, true), (60_000, false)] {
        let mut world = World::new();
        let wall = unix_ms(world.now.wall);
        world.line.ctx.table.note_platform_time(wall + ahead_ms);
        let w = WAYBILLS[0];
        let declared = bought_by(w, "C-1");
        world.line.ctx.table.apply_declaration(&declared);
        world.declared.insert(w.to_string());
        world.apply(Op::Scan(0));
        let cal = &world.line.ctx.calendar;
        let day = if on_platform_day {
            cal.day_of(wall + ahead_ms)
        } else {
            cal.day_of(wall)
        };
        assert_ne!(cal.day_of(wall + 3 * day_ms), cal.day_of(wall));
        assert_eq!(
            world.line.ctx.table.known(w).counted_day,
            Some(day),
            "{ahead_ms} ms ahead"
        );
    }
}

/// A parcel scanned while the table loads, when the platform's clock is not known yet (a
/// clock set back at boot is just when a load runs), counts on the platform's day once the
/// load tells it: the time it counts at is taken again when it is decided after the load.
#[test]
fn a_parcel_scanned_during_the_load_counts_on_the_platform_day_known_after_it() {
    let day_ms = 86_400_000u64;
    let mut world = World::new();
    let wall = unix_ms(world.now.wall);
    let table = world.line.ctx.table.clone();
    table.begin_loading(1);
    let w = WAYBILLS[0];
    let declared = bought_by(w, "C-1");
    world.apply(Op::Scan(0));
    assert_eq!(table.known(w).counted_day, None);
    // What the load reads: the declaration, and a signature three days ahead of the clock.
    table.apply_declaration(&declared);
    table.note_platform_time(wall + 3 * day_ms);
    table.finish_loading();
    world.declared.insert(w.to_string());
    world.turn(|l, t| l.on_change_all(t));
    let cal = &world.line.ctx.calendar;
    assert_eq!(
        table.known(w).counted_day,
        Some(cal.day_of(wall + 3 * day_ms))
    );
}

/// The PLC's answer to a job, as its link reports it.
fn answer(world: &mut World, job: &Divert, status: DivertStatus) {
    let ev = PlcEvent::Outcome {
        parcel: job.parcel,
        revision: job.revision,
        lane: job.lane,
        outcome: DivertOutcome {
            status,
            plc_seq: (status == DivertStatus::Acked).then_some(1),
            detail: None,
            at_ms: unix_ms(world.now.wall),
            late: false,
        },
        at: tokio::time::Instant::from_std(world.now.instant),
    };
    let mut turn = Turn::at(world.now);
    world.line.on_plc(ev, &mut turn);
    let alerts: Vec<String> = turn
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Record(r) => match r.as_ref() {
                Record::Alert(a) => Some(format!("{:?}: {}", a.alert, a.detail)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    world.alerts.extend(alerts);
}

/// A declaration of `w` naming `consumer`.
fn bought_by(w: &str, consumer: &str) -> Declaration {
    serde_json::from_value(serde_json::json!({
        "schema": SCHEMA,
        "waybill": w,
        "enterprise": "E1",
        "consumer": consumer,
        "identity_verified": true,
        "value_minor": 1234,
    }))
    .unwrap()
}

/// The PLC acknowledges `job`'s command after its link gave up waiting for it.
fn late_ack(world: &mut World, job: &Divert) {
    let late = PlcEvent::LateAck {
        written: crate::floor::Written {
            seq: 3,
            command: crate::floor::Command {
                parcel: job.parcel,
                lane: job.lane,
                revision: Some(job.revision),
            },
            at_ms: unix_ms(world.now.wall),
        },
        after: Duration::from_millis(400),
    };
    world.turn(|l, t| l.on_plc(late, t));
}

/// A parcel released (the PLC acknowledged it), then ordered held: the world and the hold's
/// command, not yet answered.
fn released_then_held() -> (World, Divert) {
    let mut world = World::new();
    world.apply(Op::Declare(0));
    world.apply(Op::Order(0, 0));
    world.apply(Op::Scan(0));
    let release = world.jobs.pop_back().unwrap();
    answer(&mut world, &release, DivertStatus::Acked);
    world.apply(Op::Order(0, 2));
    let hold = world.jobs.pop_back().unwrap();
    (world, hold)
}

/// A hold order taking back a release the PLC took: the new command is marked to be written
/// even past the deadline, and if it is not taken, an alert says the parcel may still reach
/// the release lane (its record names the hold, which is not where the PLC sends it). The
/// same when the release's acknowledge comes after the hold was decided.
#[test]
fn a_release_that_could_not_be_taken_back_is_alerted() {
    for ack_after_the_order in [false, true] {
        let mut world = World::new();
        world.apply(Op::Declare(0));
        world.apply(Op::Order(0, 0));
        world.apply(Op::Scan(0));
        let release = world.jobs.pop_back().expect("a release command");
        assert_eq!(release.lane, RELEASE_LANE);
        assert!(!release.withdraws_release);
        if !ack_after_the_order {
            answer(&mut world, &release, DivertStatus::Acked);
        }
        world.apply(Op::Order(0, 2));
        let hold = world.jobs.pop_back().expect("the hold's command");
        assert_ne!(hold.lane, RELEASE_LANE);
        assert!(hold.withdraws_release, "written even past the deadline");
        if ack_after_the_order {
            answer(&mut world, &release, DivertStatus::Acked);
        }
        assert!(world.alerts.is_empty(), "{:?}", world.alerts);
        answer(&mut world, &hold, DivertStatus::Timeout);
        assert_eq!(world.alerts.len(), 1, "{:?}", world.alerts);
        assert!(
            world.alerts[0].contains("LateInstruction")
                && world.alerts[0].contains("may reach the release lane"),
            "{:?}",
            world.alerts
        );
    }
    // Not taken, the take-back is tried again when the parcel is decided again (same lane).
    let (mut world, hold) = released_then_held();
    answer(&mut world, &hold, DivertStatus::LinkDown);
    world.apply(Op::Order(0, 2));
    let again = world.jobs.pop_back().expect("tried again");
    assert_eq!((again.lane, again.revision), (hold.lane, hold.revision + 1));
    assert!(again.withdraws_release);
    // A first command not taken (nothing the PLC holds to take back) is not repeated by a
    // decision to the same lane: a full queue or a link down is not fed more of them.
    let mut world = World::new();
    world.apply(Op::Declare(0));
    world.apply(Op::Scan(0));
    let held = world.jobs.pop_back().unwrap();
    answer(&mut world, &held, DivertStatus::LinkDown);
    world.apply(Op::Declare(0));
    world.turn(|l, t| l.on_change_all(t));
    assert!(world.jobs.is_empty(), "{:?}", world.jobs);
    // Taken, the hold stands and nothing is alerted.
    let (mut world, hold) = released_then_held();
    answer(&mut world, &hold, DivertStatus::Acked);
    assert!(world.alerts.is_empty(), "{:?}", world.alerts);
}

/// A take-back the PLC did not take is tried again on the tick, before the deadline, a gap
/// after the answer to the try before, at most three times; one taken ends the tries, and
/// past the deadline the tick tries nothing.
#[test]
fn a_take_back_not_taken_is_tried_again_on_the_tick() {
    let (mut world, hold) = released_then_held();
    // In flight: the tick waits for its answer.
    world.apply(Op::Tick);
    assert!(world.jobs.is_empty(), "{:?}", world.jobs);
    answer(&mut world, &hold, DivertStatus::LinkDown);
    // Answered at once (a link down): not tried again at the next tick, only after a gap.
    world.apply(Op::Tick);
    assert!(world.jobs.is_empty(), "{:?}", world.jobs);
    let mut last = hold;
    for n in 1..=3 {
        world.apply(Op::Wait(250));
        world.apply(Op::Tick);
        let again = world.jobs.pop_back().expect("tried again on the tick");
        assert_eq!(
            (again.lane, again.revision),
            (last.lane, last.revision + 1),
            "try {n}"
        );
        assert!(again.withdraws_release);
        answer(&mut world, &again, DivertStatus::Timeout);
        last = again;
    }
    world.apply(Op::Wait(250));
    world.apply(Op::Tick);
    assert!(
        world.jobs.is_empty(),
        "three tries at most: {:?}",
        world.jobs
    );
    // Taken on the first try: nothing more.
    let (mut world, hold) = released_then_held();
    answer(&mut world, &hold, DivertStatus::LinkDown);
    world.apply(Op::Wait(250));
    world.apply(Op::Tick);
    let again = world.jobs.pop_back().expect("tried again");
    answer(&mut world, &again, DivertStatus::Acked);
    world.apply(Op::Wait(250));
    world.apply(Op::Tick);
    assert!(world.jobs.is_empty(), "{:?}", world.jobs);
    // Past the deadline the tick tries nothing.
    let (mut world, hold) = released_then_held();
    answer(&mut world, &hold, DivertStatus::LinkDown);
    world.apply(Op::Wait(2_000));
    world.apply(Op::Tick);
    assert!(world.jobs.is_empty(), "{:?}", world.jobs);
}

/// A take-back that timed out, tried again on the tick, and then acknowledged late by the
/// PLC: the PLC holds the hold's lane, so the try's own timeout raises no alert that the
/// parcel may reach the release lane, and nothing more is tried.
#[test]
fn a_late_acknowledge_of_a_superseded_take_back_counts_as_taken() {
    let (mut world, hold) = released_then_held();
    answer(&mut world, &hold, DivertStatus::Timeout);
    assert_eq!(world.alerts.len(), 1, "{:?}", world.alerts);
    world.alerts.clear();
    world.apply(Op::Wait(250));
    world.apply(Op::Tick);
    let again = world.jobs.pop_back().expect("tried again");
    late_ack(&mut world, &hold);
    world.alerts.clear();
    answer(&mut world, &again, DivertStatus::Timeout);
    assert!(world.alerts.is_empty(), "{:?}", world.alerts);
    world.apply(Op::Wait(250));
    world.apply(Op::Tick);
    assert!(world.jobs.is_empty(), "{:?}", world.jobs);
}

/// A late acknowledge of a command older than one the PLC acknowledged since does not undo
/// it: a parcel first held (timed out), then released (acknowledged), whose hold comes late
/// and is then ordered held again, still counts its release as standing, so a take-back
/// not taken is alerted and tried again.
#[test]
fn a_late_acknowledge_of_an_older_command_does_not_undo_a_newer_release() {
    let mut world = World::new();
    world.apply(Op::Declare(0));
    world.apply(Op::Scan(0));
    let first = world.jobs.pop_back().expect("the first command");
    assert_ne!(first.lane, RELEASE_LANE);
    answer(&mut world, &first, DivertStatus::Timeout);
    world.apply(Op::Order(0, 0));
    let release = world.jobs.pop_back().expect("the release");
    assert_eq!(release.lane, RELEASE_LANE);
    answer(&mut world, &release, DivertStatus::Acked);
    late_ack(&mut world, &first);
    world.alerts.clear();
    world.apply(Op::Order(0, 2));
    let hold = world.jobs.pop_back().expect("the take-back");
    assert!(hold.withdraws_release);
    answer(&mut world, &hold, DivertStatus::Timeout);
    assert!(
        world
            .alerts
            .iter()
            .any(|a| a.contains("may reach the release lane")),
        "{:?}",
        world.alerts
    );
    world.apply(Op::Wait(250));
    world.apply(Op::Tick);
    assert!(world.jobs.pop_back().is_some(), "tried again");
}

/// A waybill retention forgets while its parcel is before the deadline: the parcel is
/// decided again (undeclared: held) and its release taken back; past the deadline nothing
/// is commanded or alerted (no new clearance came).
#[test]
fn a_forgotten_waybill_takes_back_a_release_before_the_deadline_only() {
    let mut world = World::new();
    world.apply(Op::Declare(0));
    world.apply(Op::Order(0, 0));
    world.apply(Op::Scan(0));
    world.apply(Op::Declare(1));
    world.apply(Op::Order(1, 0));
    world.apply(Op::Scan(1));
    let release = world.jobs.back().cloned().unwrap();
    assert_eq!(release.lane, RELEASE_LANE);
    world.line.ctx.table.forget_waybill(WAYBILLS[1]);
    world.declared.remove(WAYBILLS[1]);
    world.orders.remove(WAYBILLS[1]);
    world.turn(|l, t| l.on_forgotten(WAYBILLS[1], t));
    let back = world.jobs.back().cloned().unwrap();
    assert_eq!((back.parcel, back.revision), (release.parcel, 1));
    assert_ne!(back.lane, RELEASE_LANE);
    assert!(back.withdraws_release);
    // Past the deadline: nothing.
    world.apply(Op::Wait(2_000));
    world.line.ctx.table.forget_waybill(WAYBILLS[0]);
    let jobs = world.jobs.len();
    let mut turn = Turn::at(world.now);
    world.line.on_forgotten(WAYBILLS[0], &mut turn);
    assert!(turn.effects.is_empty(), "{:?}", turn.effects);
    assert_eq!(world.jobs.len(), jobs);
}

/// Changes the line fell behind on are not lost on it: a hold order whose change was
/// dropped from the line's queue still takes a released parcel out of the release lane
/// before its deadline, because every parcel is decided again.
#[test]
fn a_hold_order_among_missed_changes_still_withdraws_a_release() {
    let mut world = World::new();
    world.apply(Op::Declare(0));
    world.apply(Op::Order(0, 0));
    world.apply(Op::Scan(0));
    let first = world.jobs.back().cloned().expect("a command for the scan");
    assert_eq!(first.lane, RELEASE_LANE);
    // The hold order reaches the table; its change never reaches the line.
    world.stamp += 1;
    world
        .line
        .ctx
        .table
        .apply_instruction(&instruction(WAYBILLS[0], Action::Hold, world.stamp));
    world.orders.insert(WAYBILLS[0].to_string(), Action::Hold);
    world.turn(|l, t| l.on_changes_missed(3, t));
    let again = world.jobs.back().cloned().expect("a command after the lag");
    assert_eq!((again.parcel, again.revision), (first.parcel, 1));
    assert_ne!(
        again.lane, RELEASE_LANE,
        "the hold order withdrew the release"
    );
    assert!(again.intent.is_none());
}

/// A full PLC queue records the parcel as `overload` in the same turn, after the
/// command's intent (if any) and before what followed it.
#[test]
fn a_refused_command_is_recorded_as_overload() {
    let mut world = World::new();
    world.apply(Op::QueueFull(true));
    let mut turn = Turn::at(world.now);
    let scan = ScanEvent {
        read: ScanRead::NoRead,
        weight_g: None,
        at: world.now.wall,
        instant: world.now.instant,
    };
    world.line.on_scan(scan, &mut turn);
    let Some(Effect::Divert(d)) = turn.effects.first().cloned() else {
        panic!("the scan's first effect is its command: {:?}", turn.effects);
    };
    let mut answer = Turn::at(world.now);
    world.line.divert_refused(d.parcel, &mut answer);
    let overload = answer.effects.iter().any(|e| {
        matches!(e, Effect::Record(r) if matches!(r.as_ref(), Record::Parcel(p) if p.divert.status == DivertStatus::Overload))
    });
    assert!(overload, "{:?}", answer.effects);
}

#[test]
fn fallback_only_ever_gets_stricter() {
    for role in LaneRole::ALL {
        let mut r = role;
        while let Some(next) = stricter(r) {
            assert_ne!(next, LaneRole::Release);
            r = next;
        }
        assert_eq!(r, LaneRole::Exception);
    }
}

/// A line that started before the store was read: the PLC's disposition of an earlier run's
/// parcel waits for what the store holds of it, and is then recorded with its waybill and
/// commanded lane, not as unexplained; one that the store does not know either is
/// unexplained then; one reported twice is recorded once.
#[test]
fn dispositions_of_unknown_parcels_wait_for_the_earlier_runs_parcels() {
    let mut line = machine();
    line.earlier_pending = true;
    let now = Now::read();
    let sorted = |parcel| Disposition {
        seq: 1,
        parcel,
        code: DispositionCode::Sorted,
        lane: 3,
    };
    let mut turn = Turn::at(now);
    line.on_plc(PlcEvent::Disposition(sorted(77)), &mut turn);
    line.on_plc(PlcEvent::Disposition(sorted(78)), &mut turn);
    line.on_plc(PlcEvent::Disposition(sorted(77)), &mut turn);
    assert!(
        turn.effects.is_empty(),
        "nothing recorded before the store is read: {:?}",
        turn.effects
    );
    let recent = HashMap::from([(
        77,
        Recent {
            waybill: Some("EARLIER-77".into()),
            lane: Some(3),
            role: Some(LaneRole::Hold),
            revision: 0,
            decided: true,
            acked: true,
            disposed: false,
        },
    )]);
    let mut turn = Turn::at(now);
    line.on_earlier(recent, &mut turn);
    let records: Vec<Record> = turn
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Record(r) => Some(r.as_ref().clone()),
            _ => None,
        })
        .collect();
    let dispositions: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::Disposition(d) => Some((d.parcel, d.waybill.clone(), d.commanded_lane)),
            _ => None,
        })
        .collect();
    assert_eq!(
        dispositions,
        vec![
            (77, Some("EARLIER-77".to_string()), Some(3)),
            (78, None, None)
        ],
        "{records:?}"
    );
    let unexplained: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::Alert(a)
                if a.alert == bondline_devices::contract::AlertKind::UnexplainedDisposition =>
            {
                a.parcel
            }
            _ => None,
        })
        .collect();
    assert_eq!(unexplained, vec![78]);
    // This run's own parcels that expired before the store was read are known already.
    line.earlier_pending = true;
    line.earlier.remember(
        90,
        Recent {
            waybill: Some("THIS-RUN".into()),
            decided: true,
            ..Recent::default()
        },
    );
    let mut turn = Turn::at(now);
    line.on_plc(PlcEvent::Disposition(sorted(90)), &mut turn);
    assert!(
        turn.effects.iter().any(|e| matches!(e, Effect::Record(r) if matches!(r.as_ref(), Record::Disposition(d) if d.parcel == 90))),
        "recorded at once: {:?}",
        turn.effects
    );
    line.earlier_pending = false;
    // From now on an unknown parcel is judged at once.
    let mut turn = Turn::at(now);
    line.on_plc(PlcEvent::Disposition(sorted(79)), &mut turn);
    assert!(!turn.effects.is_empty());
}

/// A recorded effect without the fields that depend on when it was made.
fn comparable(e: &Effect) -> Option<String> {
    match e {
        Effect::Record(r) => {
            let mut v = serde_json::to_value(r.as_ref()).ok()?;
            if let Some(o) = v.as_object_mut() {
                o.remove("at_ms");
            }
            Some(v.to_string())
        }
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Dispositions of an earlier run's parcels reported while the line waits for the store
    /// are recorded, once the store's parcels arrive, exactly as a line that knew them from
    /// the start records them: same records, same alerts, each ring entry once.
    #[test]
    fn deferred_dispositions_are_recorded_as_if_the_earlier_parcels_were_known(
        known in proptest::collection::btree_map(
            0u32..40,
            (proptest::option::of(0u16..6), proptest::bool::ANY, proptest::bool::ANY, proptest::bool::ANY),
            0..20,
        ),
        reports in proptest::collection::vec((0u32..40, 0u16..6), 0..30),
    ) {
        let recent: HashMap<u32, Recent> = known
            .iter()
            .map(|(&p, &(lane, decided, acked, disposed))| {
                let r = Recent {
                    waybill: Some(format!("E{p}")),
                    lane,
                    role: lane.and_then(|l| LaneMap::numbered().role_of(l)),
                    revision: 0,
                    decided,
                    acked,
                    disposed,
                };
                (p, r)
            })
            .collect();
        let now = Now::read();
        let report = |(parcel, lane): (u32, u16)| {
            PlcEvent::Disposition(Disposition { seq: 1, parcel, code: DispositionCode::Sorted, lane })
        };

        let mut at_start = machine();
        at_start.on_earlier(recent.clone(), &mut Turn::at(now));
        let mut first = Turn::at(now);
        for &r in &reports {
            at_start.on_plc(report(r), &mut first);
        }

        let mut waiting = machine();
        waiting.earlier_pending = true;
        let mut before = Turn::at(now);
        for &r in &reports {
            waiting.on_plc(report(r), &mut before);
        }
        prop_assert!(before.effects.iter().all(|e| comparable(e).is_none()), "nothing recorded before the store is read");
        let mut after = Turn::at(now);
        waiting.on_earlier(recent, &mut after);

        let a: Vec<_> = first.effects.iter().filter_map(comparable).collect();
        let b: Vec<_> = after.effects.iter().filter_map(comparable).collect();
        // One disposition record per reported parcel not recorded before (the ring is read
        // again after a restart).
        let fresh: std::collections::BTreeSet<u32> = reports
            .iter()
            .map(|&(p, _)| p)
            .filter(|p| !known.get(p).is_some_and(|k| k.3))
            .collect();
        let dispositions = first
            .effects
            .iter()
            .filter(|e| matches!(e, Effect::Record(r) if matches!(r.as_ref(), Record::Disposition(_))))
            .count();
        prop_assert_eq!(dispositions, fresh.len());
        prop_assert_eq!(a, b);
    }
}
