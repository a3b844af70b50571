use super::*;
use bondline_devices::contract::SCHEMA;
use bondline_devices::contract::{Action, EnterpriseAction, EnterpriseNotice, Instruction};
use std::collections::HashMap;
use std::sync::Arc;

use crate::rules::history::StoredDay;

/// A verified declaration in CNY, shared with the store's tests.
pub(crate) fn decl(w: &str, consumer: &str, value: u64) -> Declaration {
    Declaration {
        schema: SCHEMA,
        waybill: w.into(),
        enterprise: "E1".into(),
        consumer: Some(consumer.into()),
        identity_verified: true,
        value_minor: Some(value),
        currency: Some("CNY".into()),
        gross_weight_g: None,
        items: vec![],
        order_id: None,
        pieces: None,
        signature: None,
    }
}

fn notice(id: &str, action: EnterpriseAction, at: Option<u64>) -> EnterpriseNotice {
    EnterpriseNotice {
        schema: SCHEMA,
        notice_id: id.into(),
        enterprise: "E1".into(),
        action,
        reason: "licence review".into(),
        issued_at_ms: at,
        signature: None,
    }
}

#[test]
fn counting_is_once_per_waybill_and_excludes_the_parcel_itself() {
    let t = ClearanceTable::default();
    t.apply_declaration(&decl("A", "c", 100));
    t.apply_declaration(&decl("B", "c", 50));
    assert!(t.count("A", 10));
    assert!(!t.count("A", 10), "a re-scan does not count twice");
    assert!(!t.count("nobody", 10));
    let w = t.consumer_window("B", 10, 10);
    assert_eq!((w.parcels, w.value_minor), (1, 100));
    let own = t.consumer_window("A", 10, 10);
    assert_eq!(
        (own.parcels, own.value_minor),
        (0, 0),
        "not its own history"
    );
    // A changed declaration moves the count.
    t.apply_declaration(&decl("A", "c", 300));
    let w = t.consumer_window("B", 10, 10);
    assert_eq!((w.parcels, w.value_minor), (1, 300));
    t.apply_declaration(&decl("A", "other", 300));
    assert_eq!(t.consumer_window("B", 10, 10).parcels, 0);
}

#[test]
fn notices_apply_once_and_in_order() {
    let t = ClearanceTable::default();
    t.apply_declaration(&decl("A", "c", 1));
    assert!(t.known("A").suspension.is_none());
    let s = notice("n1", EnterpriseAction::Suspend, Some(20));
    assert_eq!(t.apply_notice(&s), Applied::Changed);
    assert_eq!(t.apply_notice(&s), Applied::Unchanged);
    assert_eq!(t.known("A").suspension.as_deref(), Some("licence review"));
    let stale = notice("n0", EnterpriseAction::Lift, Some(10));
    assert_eq!(t.apply_notice(&stale), Applied::Unchanged);
    assert_eq!(t.suspended(), 1);
    let lift = notice("n2", EnterpriseAction::Lift, Some(30));
    assert_eq!(t.apply_notice(&lift), Applied::Changed);
    assert!(t.known("A").suspension.is_none());
}

/// A platform message for the ordering property: an instruction for waybill `W{n}` or a
/// notice for `E1`, with its signature time and, sometimes, `issued_at_ms`.
#[derive(Debug, Clone)]
enum Msg {
    Instruction(Instruction),
    Notice(EnterpriseNotice),
}

impl Msg {
    fn signed_at(&self) -> u64 {
        let s = match self {
            Msg::Instruction(i) => &i.signature,
            Msg::Notice(n) => &n.signature,
        };
        s.as_ref().expect("signed").signed_at_ms
    }
}

fn signature(at: u64) -> Option<bondline_devices::signing::Signature> {
    Some(bondline_devices::signing::Signature {
        scheme: 2,
        key_id: "p1".into(),
        signed_at_ms: at,
        target: Some("gateway:gw".into()),
        ed25519: "00".repeat(64),
    })
}

fn messages() -> impl proptest::strategy::Strategy<Value = Vec<Msg>> {
    use proptest::prelude::*;
    let one = (
        0u8..4,
        0usize..3,
        any::<Option<u64>>(),
        prop_oneof![
            Just(Action::Release),
            Just(Action::Hold),
            Just(Action::Inspect)
        ],
    );
    proptest::collection::vec(one, 1..10).prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(n, (kind, w, issued, action))| {
                // Distinct signature times; `issued_at_ms` unrelated to them, or absent.
                let at = 1_000_000 + (n as u64 * 7919) % 10_007;
                if kind == 0 {
                    let mut m = notice(
                        &format!("N{n}"),
                        if action == Action::Release {
                            EnterpriseAction::Lift
                        } else {
                            EnterpriseAction::Suspend
                        },
                        issued,
                    );
                    m.signature = signature(at);
                    Msg::Notice(m)
                } else {
                    Msg::Instruction(Instruction {
                        schema: SCHEMA,
                        instruction_id: format!("I{n}"),
                        waybill: format!("W{w}"),
                        action,
                        reason: String::new(),
                        issued_at_ms: issued,
                        signature: signature(at),
                    })
                }
            })
            .collect()
    })
}

fn state_after(msgs: &[Msg]) -> Vec<(Option<(String, Action)>, bool)> {
    let t = ClearanceTable::default();
    for w in 0..3 {
        t.apply_declaration(&decl(&format!("W{w}"), "c", 100));
    }
    for m in msgs {
        match m {
            Msg::Instruction(i) => t.apply_instruction(i),
            Msg::Notice(n) => t.apply_notice(n),
        };
    }
    (0..3)
        .map(|w| {
            let k = t.known(&format!("W{w}"));
            (
                k.instruction.map(|o| (o.id.to_string(), o.action)),
                k.suspension.is_some(),
            )
        })
        .collect()
}

use proptest::strategy::Strategy as _;
/// Messages whose signature times often tie (and `issued_at_ms` with them, or absent).
fn tied_messages() -> impl proptest::strategy::Strategy<Value = Vec<Msg>> {
    messages().prop_flat_map(|msgs| {
        let n = msgs.len();
        (
            proptest::strategy::Just(msgs),
            proptest::collection::vec(0u64..3, n),
            proptest::collection::vec(proptest::option::of(0u64..2), n),
        )
            .prop_map(|(mut msgs, times, issued)| {
                for ((m, t), i) in msgs.iter_mut().zip(times).zip(issued) {
                    let (sig, iss) = match m {
                        Msg::Instruction(x) => (&mut x.signature, &mut x.issued_at_ms),
                        Msg::Notice(x) => (&mut x.signature, &mut x.issued_at_ms),
                    };
                    *sig = signature(1_000_000 + t);
                    *iss = i;
                }
                msgs
            })
    })
}

/// The actions in force after `msgs`, without the ids that carry them.
fn actions_after(msgs: &[Msg]) -> Vec<(Option<Action>, bool)> {
    state_after(msgs)
        .into_iter()
        .map(|(i, s)| (i.map(|(_, a)| a), s))
        .collect()
}

proptest::proptest! {
    /// Signed messages that cannot be told apart by their times (the same signature time,
    /// `issued_at_ms` equal or missing): whatever order the broker delivers them in, the
    /// same action ends in force, the stricter one, so delivery order cannot pick a release
    /// over a hold, or a lift over a suspension.
    #[test]
    fn messages_signed_at_the_same_time_end_alike_in_any_order(
        (msgs, order) in tied_messages().prop_flat_map(|m| {
            let n = m.len();
            (proptest::strategy::Just(m), proptest::strategy::Just((0..n).collect::<Vec<_>>()).prop_shuffle())
        })
    ) {
        let arrived: Vec<Msg> = order.iter().map(|&i| msgs[i].clone()).collect();
        proptest::prop_assert_eq!(actions_after(&arrived), actions_after(&msgs));
    }
}

#[test]
fn of_a_hold_and_a_release_signed_at_once_the_hold_stays() {
    let instruction = |id: &str, action| Instruction {
        schema: SCHEMA,
        instruction_id: id.into(),
        waybill: "A".into(),
        action,
        reason: String::new(),
        issued_at_ms: None,
        signature: signature(5_000),
    };
    for first_hold in [true, false] {
        let t = ClearanceTable::default();
        t.apply_declaration(&decl("A", "c", 1));
        let (hold, release) = (
            instruction("h", Action::Hold),
            instruction("r", Action::Release),
        );
        if first_hold {
            t.apply_instruction(&hold);
            assert_eq!(t.apply_instruction(&release), Applied::Unchanged);
        } else {
            t.apply_instruction(&release);
            assert_eq!(t.apply_instruction(&hold), Applied::Changed);
        }
        assert_eq!(t.known("A").instruction.unwrap().action, Action::Hold);
    }
}

proptest::proptest! {
    /// Whatever order the broker delivers signed platform messages in (and whether they
    /// carry `issued_at_ms` or not), the table ends as if they came in signed order: an
    /// older release or lift published after a hold never wins.
    #[test]
    fn any_arrival_order_ends_as_signed_order(
        (msgs, order) in messages().prop_flat_map(|m| {
            let n = m.len();
            (proptest::strategy::Just(m), proptest::strategy::Just((0..n).collect::<Vec<_>>()).prop_shuffle())
        })
    ) {
        let mut signed_order = msgs.clone();
        signed_order.sort_by_key(Msg::signed_at);
        let arrived: Vec<Msg> = order.iter().map(|&i| msgs[i].clone()).collect();
        // Redelivery of everything after the fact changes nothing either.
        let mut twice = arrived.clone();
        twice.extend(msgs.iter().cloned());
        proptest::prop_assert_eq!(state_after(&arrived), state_after(&signed_order));
        proptest::prop_assert_eq!(state_after(&twice), state_after(&signed_order));
    }
}

#[test]
fn an_older_release_without_issued_at_published_after_a_hold_does_not_win() {
    let t = ClearanceTable::default();
    t.apply_declaration(&decl("W", "c", 100));
    let mut release = Instruction {
        schema: SCHEMA,
        instruction_id: "I-rel".into(),
        waybill: "W".into(),
        action: Action::Release,
        reason: String::new(),
        issued_at_ms: None,
        signature: signature(1_000),
    };
    let mut hold = release.clone();
    hold.instruction_id = "I-hold".into();
    hold.action = Action::Hold;
    hold.issued_at_ms = Some(2_000);
    hold.signature = signature(2_000);
    assert_eq!(t.apply_instruction(&hold), Applied::Changed);
    assert_eq!(t.apply_instruction(&release), Applied::Unchanged);
    assert_eq!(t.known("W").instruction.unwrap().action, Action::Hold);
    // A lift signed before the suspension does not end it.
    let mut suspend = notice("N-s", EnterpriseAction::Suspend, None);
    suspend.signature = signature(5_000);
    let mut lift = notice("N-l", EnterpriseAction::Lift, Some(9_999_999));
    lift.signature = signature(4_000);
    t.apply_notice(&suspend);
    assert_eq!(t.apply_notice(&lift), Applied::Unchanged);
    assert!(t.known("W").suspension.is_some());
    release.instruction_id = "I-rel-2".into();
    release.signature = signature(3_000);
    assert_eq!(t.apply_instruction(&release), Applied::Changed);
}

fn instruction(w: &str, id: &str, action: Action) -> Instruction {
    Instruction {
        schema: SCHEMA,
        instruction_id: id.into(),
        waybill: w.into(),
        action,
        reason: format!("reason {id}"),
        issued_at_ms: None,
        signature: None,
    }
}

/// An operation of the model test.
#[derive(Debug, Clone)]
enum Op {
    Declare(u16, u64),
    Instruct(u16, u32),
    Forget(u16),
    Count(u16),
}

fn ops() -> impl proptest::strategy::Strategy<Value = Vec<Op>> {
    use proptest::prelude::*;
    let op = prop_oneof![
        (0u16..400, 0u64..5).prop_map(|(w, v)| Op::Declare(w, v)),
        (0u16..400, any::<u32>()).prop_map(|(w, n)| Op::Instruct(w, n)),
        (0u16..400).prop_map(Op::Forget),
        (0u16..400).prop_map(Op::Count),
    ];
    proptest::collection::vec(op, 1..1500)
}

proptest::proptest! {
    /// The sharded table holds what a plain map of waybills would, whatever the sequence
    /// of declarations, instructions, counts and forgetting (slots moved on removal, freed
    /// instruction slots reused).
    #[test]
    fn holds_what_a_plain_map_would(ops in ops()) {
        let t = ClearanceTable::default();
        // waybill -> (declared value, instruction id, counted)
        let mut model: HashMap<String, (Option<u64>, Option<String>, bool)> = HashMap::new();
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Declare(w, v) => {
                    let w = format!("BL{w:05}");
                    t.apply_declaration(&decl(&w, "c", v));
                    let m = model.entry(w).or_default();
                    m.0 = Some(v);
                }
                Op::Instruct(w, k) => {
                    let w = format!("BL{w:05}");
                    let id = format!("I{n}-{k}");
                    t.apply_instruction(&instruction(&w, &id, Action::Release));
                    model.entry(w).or_default().1 = Some(id);
                }
                Op::Forget(w) => {
                    let w = format!("BL{w:05}");
                    t.forget_waybill(&w);
                    model.remove(&w);
                }
                Op::Count(w) => {
                    let w = format!("BL{w:05}");
                    let counted = t.count(&w, 100);
                    let m = model.get_mut(&w);
                    let expect = m.as_ref().is_some_and(|m| m.0.is_some() && !m.2);
                    proptest::prop_assert_eq!(counted, expect);
                    if let Some(m) = m {
                        m.2 |= counted;
                    }
                }
            }
        }
        proptest::prop_assert_eq!(t.declarations(), model.values().filter(|m| m.0.is_some()).count());
        proptest::prop_assert_eq!(t.instructions(), model.values().filter(|m| m.1.is_some()).count());
        for w in 0..400u16 {
            let w = format!("BL{w:05}");
            let k = t.known(&w);
            let m = model.get(&w);
            proptest::prop_assert_eq!(k.declaration.as_ref().and_then(|d| d.value_minor), m.and_then(|m| m.0));
            proptest::prop_assert_eq!(k.instruction.as_ref().map(|i| i.id.clone()), m.and_then(|m| m.1.clone()));
            proptest::prop_assert_eq!(k.counted_day.is_some(), m.is_some_and(|m| m.2 && m.0.is_some()));
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(12))]
    /// A lookup never sees half of a message: a writer applies batches that each declare
    /// a waybill (value `k`) and instruct it (id `I<k>`), or forget it, while other
    /// waybills grow the table; readers on other threads find either nothing, or a
    /// declaration and an instruction of the same batch.
    #[test]
    fn a_lookup_never_sees_half_a_batch(
        batches in proptest::collection::vec((0u16..16, proptest::bool::weighted(0.15)), 50..300)
    ) {
        use std::sync::atomic::AtomicBool;
        let t = Arc::new(ClearanceTable::default());
        let done = Arc::new(AtomicBool::new(false));
        let torn = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let (t, done, torn) = (t.clone(), done.clone(), torn.clone());
                std::thread::spawn(move || {
                    let mut looked = 0u64;
                    while !done.load(Ordering::Acquire) || looked < 1_000 {
                        for w in 0..16u16 {
                            let k = t.known(&format!("W{w}"));
                            looked += 1;
                            let ok = match (&k.declaration, &k.instruction) {
                                (None, None) => true,
                                (Some(d), Some(i)) => {
                                    i.id == format!("I{}", d.value_minor.unwrap_or(u64::MAX))
                                        && *i.reason == *format!("for {}", d.value_minor.unwrap_or(0))
                                }
                                _ => false,
                            };
                            if !ok {
                                torn.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        if r == 1 {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for (k, (w, forget)) in batches.into_iter().enumerate() {
            let w = format!("W{w}");
            if forget {
                t.forget_waybill(&w);
            } else {
                let d = decl(&w, &format!("c{k}"), k as u64);
                let mut i = instruction(&w, &format!("I{k}"), Action::Release);
                i.reason = format!("for {k}");
                t.apply_many(&[Message::Declaration(&d), Message::Instruction(&i)]);
            }
            // Growth elsewhere meanwhile: shards resize under the readers.
            for g in 0..50 {
                t.apply_declaration(&decl(&format!("G{k}-{g}"), "g", 1));
            }
        }
        done.store(true, Ordering::Release);
        for r in readers {
            r.join().expect("reader");
        }
        proptest::prop_assert_eq!(torn.load(Ordering::Relaxed), 0);
    }
}

#[test]
fn a_batch_reports_each_message_in_order() {
    let t = ClearanceTable::default();
    let d = decl("A", "c", 1);
    let i = instruction("A", "I1", Action::Hold);
    let n = notice("N1", EnterpriseAction::Suspend, Some(1));
    let out = t.apply_many(&[
        Message::Declaration(&d),
        Message::Notice(&n),
        Message::Instruction(&i),
        Message::Declaration(&d),
        Message::Instruction(&i),
    ]);
    assert_eq!(
        out,
        vec![
            Applied::Changed,
            Applied::Changed,
            Applied::Changed,
            Applied::Unchanged,
            Applied::Unchanged
        ]
    );
    let k = t.known("A");
    assert_eq!(k.instruction.unwrap().action, Action::Hold);
    assert!(k.suspension.is_some());
}

#[test]
fn a_loading_table_says_so_in_every_lookup() {
    let t = ClearanceTable::default();
    t.begin_loading(10);
    t.apply_declaration(&decl("A", "c", 1));
    t.loaded(4);
    assert_eq!(
        t.known("A").loading,
        Some(Loading {
            done: 4,
            expected: 10
        })
    );
    assert!(t.known("unknown").loading.is_some());
    t.finish_loading();
    assert!(t.known("A").loading.is_none());
}

#[test]
fn a_declared_value_of_u64_max_stays_a_value() {
    let t = ClearanceTable::default();
    t.apply_declaration(&decl("A", "c", u64::MAX));
    assert_eq!(
        t.known("A").declaration.unwrap().value_minor,
        Some(u64::MAX)
    );
}

/// Day totals of forgotten declarations kept beside the table, as the journal keeps them.
#[derive(Debug, Default, Clone)]
struct Folded(Arc<std::sync::Mutex<HashMap<String, Vec<StoredDay>>>>);

impl crate::rules::history::StoredHistory for Folded {
    fn days_of(&self, consumer: &str) -> Result<Vec<StoredDay>, String> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .get(consumer)
            .cloned()
            .unwrap_or_default())
    }
}

#[derive(Debug, Clone)]
enum Buyer {
    Declare { w: u8, c: u8, value: u64 },
    Count { w: u8, day: u32 },
    Forget { w: u8 },
}

proptest::proptest! {
    /// Whatever is declared, redeclared, counted and forgotten, in any order: a waybill's
    /// consumer window counts every parcel its consumer ever had counted, held or forgotten,
    /// but its own; and the table keeps exactly the consumers that held declarations name. A
    /// declaration without a consumer (`c` 4) counts nowhere, and the declaration that names
    /// one again counts the parcel counted before it.
    #[test]
    fn a_consumer_window_counts_forgotten_parcels_and_memory_follows_held_declarations(
        ops in proptest::collection::vec(
            proptest::prop_oneof![
                4 => (0u8..12, 0u8..5, 0u64..100).prop_map(|(w, c, value)| Buyer::Declare { w, c, value }),
                3 => (0u8..12, 10u32..13).prop_map(|(w, day)| Buyer::Count { w, day }),
                2 => (0u8..12).prop_map(|w| Buyer::Forget { w }),
            ],
            1..300,
        )
    ) {
        let t = ClearanceTable::default();
        let folded = Folded::default();
        t.set_stored_history(Box::new(folded.clone()));
        // waybill -> (consumer, value, counted day)
        let mut held: HashMap<String, (Option<String>, u64, Option<u32>)> = HashMap::new();
        for op in ops {
            match op {
                Buyer::Declare { w, c, value } => {
                    let w = format!("W{w}");
                    let c = (c < 4).then(|| format!("c{c}"));
                    let mut d = decl(&w, "", value);
                    d.consumer = c.clone();
                    t.apply_declaration(&d);
                    let counted = held.get(&w).and_then(|h| h.2);
                    held.insert(w, (c, value, counted));
                }
                Buyer::Count { w, day } => {
                    let w = format!("W{w}");
                    let added = t.count(&w, day);
                    let h = held.get_mut(&w);
                    proptest::prop_assert_eq!(added, h.as_ref().is_some_and(|h| h.2.is_none() && h.0.is_some()));
                    if let Some(h) = h.filter(|_| added) {
                        h.2 = Some(day);
                    }
                }
                Buyer::Forget { w } => {
                    let w = format!("W{w}");
                    // As the journal does: the day total first, then the table forgets.
                    if let Some(facts) = t.retention_facts(&w) {
                        if let Some((day, c, value)) = facts.counted {
                            let mut f = folded.0.lock().unwrap();
                            let days = f.entry(c.to_string()).or_default();
                            match days.iter_mut().find(|d| d.0 == day) {
                                Some(d) => { d.1 += 1; d.2 += value; }
                                None => days.push((day, 1, value)),
                            }
                            days.sort();
                        }
                    }
                    t.forget_waybill(&w);
                    held.remove(&w);
                }
            }
            let mut consumers: Vec<&String> = held.values().filter_map(|h| h.0.as_ref()).collect();
            consumers.sort();
            consumers.dedup();
            proptest::prop_assert_eq!(t.consumers(), consumers.len());
            for (w, (c, value, counted)) in &held {
                let Some(c) = c else {
                    continue;
                };
                let f = folded.0.lock().unwrap();
                let (mut parcels, mut total) = f.get(c).map_or((0, 0), |days| {
                    days.iter().fold((0, 0), |a, d| (a.0 + d.1, a.1 + d.2))
                });
                for (other, (oc, ov, od)) in &held {
                    if other != w && oc.as_ref() == Some(c) && od.is_some() {
                        parcels += 1;
                        total += ov;
                    }
                }
                let _ = (value, counted);
                let got = t.consumer_window(w, 0, 100);
                proptest::prop_assert_eq!((got.parcels, got.value_minor), (parcels, total), "waybill {}", w);
            }
        }
    }
}

#[test]
fn a_consumer_whose_stored_history_cannot_be_read_is_over_every_limit() {
    #[derive(Debug)]
    struct Broken;
    impl crate::rules::history::StoredHistory for Broken {
        fn days_of(&self, _: &str) -> Result<Vec<StoredDay>, String> {
            Err("disk gone".into())
        }
    }
    let t = ClearanceTable::default();
    t.set_stored_history(Box::new(Broken));
    t.apply_declaration(&decl("A", "c", 100));
    let w = t.consumer_window("A", 0, 100);
    assert_eq!((w.parcels, w.value_minor), (u32::MAX, u64::MAX));
}

/// A store of consumers' days that fails until mended, then holds one forgotten parcel of 30
/// on day 5 for every consumer.
#[derive(Debug, Default)]
struct Mended(std::sync::atomic::AtomicBool);

impl crate::rules::history::StoredHistory for std::sync::Arc<Mended> {
    fn days_of(&self, _: &str) -> Result<Vec<StoredDay>, String> {
        if self.0.load(std::sync::atomic::Ordering::Relaxed) {
            Ok(vec![(5, 1, 30)])
        } else {
            Err("disk full".into())
        }
    }
}

#[test]
fn a_consumer_held_as_unknown_counts_again_once_its_stored_history_reads() {
    let store = std::sync::Arc::new(Mended::default());
    let t = ClearanceTable::default();
    t.set_stored_history(Box::new(store.clone()));
    t.apply_declaration(&decl("A", "c", 100));
    assert!(t.count("A", 6));
    t.apply_declaration(&decl("B", "c", 1));
    assert_eq!(
        t.consumer_window("B", 0, 10).parcels,
        u32::MAX,
        "still unknown"
    );
    store.0.store(true, std::sync::atomic::Ordering::Relaxed);
    // The consumer's next declaration reads the store again.
    t.apply_declaration(&decl("C", "c", 1));
    let w = t.consumer_window("C", 0, 10);
    assert_eq!(
        (w.parcels, w.value_minor),
        (2, 130),
        "the stored parcel and A's"
    );
    assert_eq!(t.consumers(), 1);
}

#[test]
fn retention_reads_every_consumer_held_as_unknown_again() {
    let store = std::sync::Arc::new(Mended::default());
    let t = ClearanceTable::default();
    t.set_stored_history(Box::new(store.clone()));
    t.apply_declaration(&decl("A", "a", 1));
    t.apply_declaration(&decl("B", "b", 1));
    assert_eq!(t.read_unknown_consumers_again(), 2);
    store.0.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(t.read_unknown_consumers_again(), 0);
    assert_eq!(t.consumer_window("A", 0, 10).parcels, 1);
    assert_eq!(t.consumer_window("B", 0, 10).parcels, 1);
    assert_eq!(t.read_unknown_consumers_again(), 0, "read once");
    assert_eq!(t.consumer_window("A", 0, 10).parcels, 1);
}

#[test]
fn retention_takes_a_waybill_with_its_count_and_no_line_counts_it_after() {
    let t = ClearanceTable::default();
    t.apply_declaration(&decl("W", "c", 70));
    t.apply_declaration(&decl("X", "c", 5));
    assert!(t.count("W", 12));
    let taken = t.take_waybill("W").expect("held");
    assert_eq!(taken.counted, Some((12, "c".into(), 70)));
    assert!(!t.count("W", 12), "gone from the table: nothing to count");
    assert_eq!(t.consumers(), 1);
    t.release_taken(taken);
    assert_eq!(t.consumers(), 1, "X still names c");
    t.forget_waybill("X");
    assert_eq!(
        t.consumers(),
        0,
        "the last held declaration takes its consumer along"
    );
}

#[test]
fn a_window_read_after_its_waybill_changed_is_over_every_limit() {
    let t = ClearanceTable::default();
    t.apply_declaration(&decl("W", "a", 10));
    t.apply_declaration(&decl("V", "a", 10));
    assert!(t.count("V", 3));
    assert!(t.count("W", 3));
    let found = t.known("W");
    // Redeclared to another consumer between the lookup and the window.
    t.apply_declaration(&decl("W", "b", 10));
    let w = t.consumer_window_of("W", &found, 0, 10);
    assert_eq!((w.parcels, w.value_minor), (u32::MAX, u64::MAX));
    // Looked up afresh, its new consumer's window does not count it.
    assert_eq!(t.consumer_window("W", 0, 10).parcels, 0);
    assert_eq!(t.consumer_window("V", 0, 10).parcels, 0);
}

#[test]
fn a_taken_waybill_put_back_is_held_as_before() {
    let t = ClearanceTable::default();
    let d = decl("W", "c", 40);
    t.apply_many(&[
        Message::Declaration(&d),
        Message::Instruction(&instruction("W", "I1", Action::Release)),
    ]);
    assert!(t.count("W", 9));
    let before = format!("{:?}", t.known("W"));
    let taken = t.take_waybill("W").unwrap();
    assert_eq!((t.declarations(), t.instructions()), (0, 0));
    t.restore_taken(taken);
    assert_eq!(format!("{:?}", t.known("W")), before);
    assert_eq!(
        (t.declarations(), t.instructions(), t.consumers()),
        (1, 1, 1)
    );
    assert!(!t.count("W", 9), "still counted once");
    t.forget_waybill("W");
    assert_eq!(
        (t.declarations(), t.instructions(), t.consumers()),
        (0, 0, 0)
    );
}

#[test]
fn a_waybill_counted_between_its_lookup_and_its_window_is_not_over_the_limits() {
    let t = ClearanceTable::default();
    t.apply_declaration(&decl("W", "c", 10));
    t.apply_declaration(&decl("V", "c", 7));
    assert!(t.count("V", 3));
    let found = t.known("W");
    assert!(t.count("W", 3), "another piece of W counts it meanwhile");
    let w = t.consumer_window_of("W", &found, 0, 10);
    assert_eq!(
        (w.parcels, w.value_minor),
        (1, 7),
        "V only: W's own parcel is not counted"
    );
}

/// The time a parcel counts at: the local clock's, unless it is behind the newest platform
/// signature by more than the allowed skew.
#[test]
fn a_parcel_counts_at_the_platform_time_only_when_the_clock_is_far_behind_it() {
    let skew = crate::trust::CLOCK_SKEW.as_millis() as u64;
    let now = 1_800_000_000_000u64;
    assert_eq!(super::counting_ms(now, None), now, "nothing signed yet");
    assert_eq!(
        super::counting_ms(now, Some(now - 5_000)),
        now,
        "platform behind"
    );
    assert_eq!(
        super::counting_ms(now, Some(now + skew)),
        now,
        "within the skew"
    );
    let days_ahead = now + 3 * 86_400_000;
    assert_eq!(super::counting_ms(now, Some(days_ahead)), days_ahead);
    let table = ClearanceTable::default();
    assert_eq!(table.platform_clock_ms(), None);
    table.note_platform_time(days_ahead);
    table.note_platform_time(now);
    assert_eq!(
        table.platform_clock_ms(),
        Some(days_ahead),
        "the newest stays"
    );
    assert_eq!(table.counting_ms(now), days_ahead);
}
