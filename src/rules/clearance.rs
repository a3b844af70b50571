//! What the platform has told this gateway: declarations, instructions and enterprise
//! notices, kept compact in memory for the decision path.
//!
//! A gateway holds about a million open declarations. The table keeps of each only what rules
//! look at, with repeated strings (enterprise codes, consumer hashes, currencies, instruction
//! reasons) stored once; the full messages live in the journal. Instruction and notice ids
//! are remembered as 128-bit digests, so redeliveries stay idempotent without keeping every id
//! string.

use std::collections::{HashMap, HashSet};

use bondline_devices::contract::{
    Action, Declaration, EnterpriseAction, EnterpriseNotice, Instruction,
};

use crate::rules::engine::{ConsumerWindow, Declared, Ordered};
use crate::rules::history::ConsumerHistory;
use crate::rules::orders::{OrderTotals, Transaction};
use crate::rules::sharded::{ShardedMap, ShardedSet};

/// What applying a platform message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The table changed.
    Changed,
    /// Same message seen before (redelivery), or older than what the table holds.
    Unchanged,
}

/// Strings stored once, numbered.
#[derive(Debug, Default, Clone)]
struct Interner {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(s.into());
        self.ids.insert(s.into(), id);
        id
    }

    fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

const NONE: u32 = u32::MAX;

/// A declaration as rules see it.
#[derive(Debug, Clone)]
struct Facts {
    /// Digest of the whole declaration, to recognise a redelivery.
    digest: u128,
    enterprise: u32,
    consumer: u32,
    currency: u32,
    identity_verified: bool,
    value_minor: Option<u64>,
    gross_weight_g: Option<u32>,
    /// The UTC day the parcel was added to its consumer's history, once it has been.
    counted_day: Option<u32>,
    /// When the platform signed it, if it was signed.
    signed_at_ms: Option<u64>,
}

#[derive(Debug, Clone)]
struct Held {
    id: Box<str>,
    action: Action,
    reason: u32,
    made: Stamp,
}

#[derive(Debug, Clone)]
struct Notice {
    action: EnterpriseAction,
    reason: Box<str>,
    made: Stamp,
}

/// When the platform made a message, for ordering messages that replace each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    /// The signature time: present on every message the gateway believes (only a demo
    /// line with `allow_unsigned` takes messages without it).
    pub signed_at_ms: Option<u64>,
    /// The platform's own time, optional in the contract.
    pub issued_at_ms: Option<u64>,
}

impl Stamp {
    pub fn of(
        signature: Option<&bondline_devices::signing::Signature>,
        issued_at_ms: Option<u64>,
    ) -> Stamp {
        Stamp {
            signed_at_ms: signature.map(|s| s.signed_at_ms),
            issued_at_ms,
        }
    }

    /// Whether a message made at `self` may replace one made at `held`: ordered by the
    /// signature time, then by `issued_at_ms` where both carry it. An older message never
    /// replaces a newer one, whatever order the broker delivers them in. With equal times
    /// (or, on a demo line, no times to compare) the later arrival replaces.
    pub fn replaces(self, held: Stamp) -> bool {
        if let (Some(old), Some(new)) = (held.signed_at_ms, self.signed_at_ms) {
            if new != old {
                return new > old;
            }
        }
        match (held.issued_at_ms, self.issued_at_ms) {
            (Some(old), Some(new)) => new >= old,
            _ => true,
        }
    }
}

/// Declarations, instructions, enterprise notices and consumer histories, as last received.
#[derive(Debug, Default, Clone)]
pub struct ClearanceTable {
    // Sharded, so that growing to millions never rehashes the whole table under the lock
    // the lines read through (see `sharded`).
    declarations: ShardedMap<Box<str>, Facts>,
    instructions: ShardedMap<Box<str>, Held>,
    /// Digests of every instruction id ever applied, superseded or ignored, so a redelivery
    /// of an old instruction cannot replace a newer one.
    seen_instructions: ShardedSet<u128>,
    /// The latest notice per enterprise (by interned id).
    notices: HashMap<u32, Notice>,
    seen_notices: HashSet<u128>,
    strings: Interner,
    history: ConsumerHistory,
    /// Per-order sums of declared values, for the per-transaction limit.
    orders: OrderTotals,
    /// Declared pieces of the waybills declared with more than one, by waybill digest (few).
    multi_piece: ShardedMap<u128, u16>,
}

/// Digest of a string, for recognising ids without keeping them.
fn digest(bytes: &[u8]) -> u128 {
    let h = crate::journal::sha256(bytes);
    u128::from_be_bytes(h[..16].try_into().expect("16 bytes"))
}

fn declaration_digest(d: &Declaration) -> u128 {
    digest(&serde_json::to_vec(d).expect("declarations always serialize"))
}

/// What the table knows of one waybill, borrowed for a decision.
#[derive(Debug, Clone, Copy, Default)]
pub struct Known<'a> {
    pub declaration: Option<Declared<'a>>,
    pub instruction: Option<Ordered<'a>>,
    pub suspension: Option<&'a str>,
    /// The day this waybill was counted in its consumer's history, if it was.
    pub counted_day: Option<u32>,
}

impl ClearanceTable {
    pub fn declarations(&self) -> usize {
        self.declarations.len()
    }

    pub fn instructions(&self) -> usize {
        self.instructions.len()
    }

    /// Consumers with purchases in the kept history.
    pub fn consumers(&self) -> usize {
        self.history.consumers()
    }

    /// Enterprises suspended now.
    pub fn suspended(&self) -> usize {
        self.notices
            .values()
            .filter(|n| n.action == EnterpriseAction::Suspend)
            .count()
    }

    /// Whether applying `d` would change the table (it is not a redelivery).
    pub fn declaration_is_new(&self, d: &Declaration) -> bool {
        self.is_new_digest(d, declaration_digest(d))
    }

    fn is_new_digest(&self, d: &Declaration, digest: u128) -> bool {
        self.declarations
            .get(d.waybill.as_str())
            .is_none_or(|f| f.digest != digest)
    }

    /// Whether a declaration signed at `signed_at_ms` is older than the signed one held for
    /// its waybill: a replay of an old declaration, which must not replace the newer one.
    pub fn declaration_replayed(&self, d: &Declaration, signed_at_ms: Option<u64>) -> bool {
        match (
            signed_at_ms,
            self.declarations
                .get(d.waybill.as_str())
                .and_then(|f| f.signed_at_ms),
        ) {
            (Some(new), Some(held)) => new < held,
            _ => false,
        }
    }

    /// Stores a declaration; a later declaration of the same waybill replaces it. If the
    /// parcel was already counted in its consumer's history, the count moves to the new
    /// consumer and value.
    pub fn apply_declaration(&mut self, d: &Declaration) -> Applied {
        let digest = declaration_digest(d);
        if !self.is_new_digest(d, digest) {
            return Applied::Unchanged;
        }
        let counted_day = self.declarations.get(d.waybill.as_str()).and_then(|old| {
            old.counted_day
                .map(|day| (old.consumer, old.value_minor, day))
        });
        if let Some((consumer, value, day)) = counted_day {
            if consumer != NONE {
                self.history.remove(consumer, day, value.unwrap_or(0));
            }
        }
        let facts = Facts {
            digest,
            enterprise: self.strings.intern(&d.enterprise),
            consumer: d
                .consumer
                .as_deref()
                .map_or(NONE, |c| self.strings.intern(c)),
            currency: d
                .currency
                .as_deref()
                .map_or(NONE, |c| self.strings.intern(c)),
            identity_verified: d.identity_verified,
            value_minor: d.value_minor,
            gross_weight_g: d.gross_weight_g,
            counted_day: None,
            signed_at_ms: d.signature.as_ref().map(|s| s.signed_at_ms),
        };
        self.declarations.insert(d.waybill.as_str().into(), facts);
        self.orders.apply(d);
        self.set_pieces(&d.waybill, d.pieces);
        if let Some((_, _, day)) = counted_day {
            self.count(&d.waybill, day);
        }
        Applied::Changed
    }

    /// Whether applying `i` would change the table. An instruction id seen before is a
    /// redelivery; an instruction issued before the one held is stale.
    /// Whether an instruction with this id was received before (applied or not).
    pub fn instruction_id_seen(&self, id: &str) -> bool {
        self.seen_instructions.contains(&digest(id.as_bytes()))
    }

    /// Whether a notice with this id was received before (applied or not).
    pub fn notice_id_seen(&self, id: &str) -> bool {
        self.seen_notices.contains(&digest(id.as_bytes()))
    }

    pub fn instruction_is_new(&self, i: &Instruction) -> bool {
        if self
            .seen_instructions
            .contains(&digest(i.instruction_id.as_bytes()))
        {
            return false;
        }
        match self.instructions.get(i.waybill.as_str()) {
            Some(old) => Stamp::of(i.signature.as_ref(), i.issued_at_ms).replaces(old.made),
            None => true,
        }
    }

    /// Stores an instruction unless it is a redelivery or stale (see
    /// [`ClearanceTable::instruction_is_new`]), so a late redelivery cannot undo a newer order.
    pub fn apply_instruction(&mut self, i: &Instruction) -> Applied {
        let fresh = self.instruction_is_new(i);
        self.seen_instructions
            .insert(digest(i.instruction_id.as_bytes()));
        if !fresh {
            return Applied::Unchanged;
        }
        self.restore_instruction(i);
        Applied::Changed
    }

    /// Puts back an instruction that was stored as current (restoring from the store): its id
    /// is already marked seen, so [`ClearanceTable::apply_instruction`] would refuse it.
    pub fn restore_instruction(&mut self, i: &Instruction) {
        self.seen_instructions
            .insert(digest(i.instruction_id.as_bytes()));
        let held = Held {
            id: i.instruction_id.as_str().into(),
            action: i.action,
            reason: self.strings.intern(&i.reason),
            made: Stamp::of(i.signature.as_ref(), i.issued_at_ms),
        };
        self.instructions.insert(i.waybill.as_str().into(), held);
    }

    /// Records an instruction id as seen without applying anything (restoring from the store).
    /// Forgets what the platform said of `waybill` (its declaration and instruction); its
    /// consumer's history stays. See `Journal::purge_clearance`.
    pub fn forget_waybill(&mut self, waybill: &str) {
        self.declarations.remove(waybill);
        self.instructions.remove(waybill);
        self.orders.forget(waybill);
        self.multi_piece.remove(&digest(waybill.as_bytes()));
    }

    /// Keeps the declared pieces of `waybill` when more than one (capped at `MAX_PIECES`,
    /// which declarations are checked against on arrival).
    fn set_pieces(&mut self, waybill: &str, pieces: Option<u32>) {
        let key = digest(waybill.as_bytes());
        match pieces.filter(|&n| n > 1) {
            Some(n) => {
                let n = u16::try_from(n.min(bondline_devices::contract::MAX_PIECES)).unwrap_or(1);
                self.multi_piece.insert(key, n);
            }
            None => {
                self.multi_piece.remove(&key);
            }
        }
    }

    /// The pieces declared for `waybill` (1 unless its declaration says more).
    pub fn pieces(&self, waybill: &str) -> u32 {
        self.multi_piece
            .get(&digest(waybill.as_bytes()))
            .map_or(1, |&n| u32::from(n))
    }

    /// Forgets an instruction id (one older than any signature the gateway accepts).
    pub fn forget_instruction_id(&mut self, id: &str) {
        self.seen_instructions.remove(&digest(id.as_bytes()));
    }

    /// Adds stored day totals of forgotten declarations to `consumer`'s history (at start).
    pub fn add_history(&mut self, consumer: &str, day: u32, parcels: u32, value_minor: u64) {
        let id = self.strings.intern(consumer);
        self.history.add_totals(id, day, parcels, value_minor);
    }

    pub fn mark_instruction_seen(&mut self, id: &str) {
        self.seen_instructions.insert(digest(id.as_bytes()));
    }

    /// Whether applying `n` would change the table: not a redelivery, not older than the
    /// notice held for the enterprise.
    pub fn notice_is_new(&self, n: &EnterpriseNotice) -> bool {
        if self.seen_notices.contains(&digest(n.notice_id.as_bytes())) {
            return false;
        }
        let held = self
            .strings
            .get(&n.enterprise)
            .and_then(|e| self.notices.get(&e));
        held.is_none_or(|h| Stamp::of(n.signature.as_ref(), n.issued_at_ms).replaces(h.made))
    }

    /// Applies a suspension or lift unless it is a redelivery or stale.
    pub fn apply_notice(&mut self, n: &EnterpriseNotice) -> Applied {
        let fresh = self.notice_is_new(n);
        self.seen_notices.insert(digest(n.notice_id.as_bytes()));
        if !fresh {
            return Applied::Unchanged;
        }
        self.restore_notice(n);
        Applied::Changed
    }

    /// Puts back the notice in force for an enterprise (restoring from the store).
    pub fn restore_notice(&mut self, n: &EnterpriseNotice) {
        self.seen_notices.insert(digest(n.notice_id.as_bytes()));
        let e = self.strings.intern(&n.enterprise);
        self.notices.insert(
            e,
            Notice {
                action: n.action,
                reason: n.reason.as_str().into(),
                made: Stamp::of(n.signature.as_ref(), n.issued_at_ms),
            },
        );
    }

    /// Records a notice id as seen (restoring from the store).
    pub fn mark_notice_seen(&mut self, id: &str) {
        self.seen_notices.insert(digest(id.as_bytes()));
    }

    /// What the table holds for `waybill`.
    pub fn known(&self, waybill: &str) -> Known<'_> {
        let facts = self.declarations.get(waybill);
        let name = |id: u32| (id != NONE).then(|| self.strings.name(id));
        let declaration = facts.map(|f| Declared {
            enterprise: self.strings.name(f.enterprise),
            consumer: name(f.consumer),
            identity_verified: f.identity_verified,
            value_minor: f.value_minor,
            currency: name(f.currency),
            gross_weight_g: f.gross_weight_g,
        });
        let suspension = facts
            .and_then(|f| self.notices.get(&f.enterprise))
            .filter(|n| n.action == EnterpriseAction::Suspend)
            .map(|n| &*n.reason);
        let instruction = self.instructions.get(waybill).map(|h| Ordered {
            id: &h.id,
            action: h.action,
            reason: self.strings.name(h.reason),
        });
        Known {
            declaration,
            instruction,
            suspension,
            counted_day: facts.and_then(|f| f.counted_day),
        }
    }

    /// The transaction `waybill` belongs to (its order's waybills, or itself alone), as
    /// declared in `d`, the declaration held for it.
    pub fn transaction<'a>(&'a self, waybill: &str, d: &Declared<'a>) -> Transaction<'a> {
        self.orders.transaction(waybill, d.value_minor, d.currency)
    }

    /// The history of the consumer of `waybill` over the local days `first..=today`, without
    /// the waybill's own parcel (its decision counts "before this one").
    pub fn consumer_window(&self, waybill: &str, first: u32, today: u32) -> ConsumerWindow {
        let Some(f) = self
            .declarations
            .get(waybill)
            .filter(|f| f.consumer != NONE)
        else {
            return ConsumerWindow::default();
        };
        let mut w = self.history.window(f.consumer, first, today);
        if let Some(day) = f.counted_day {
            if (first..=today).contains(&day) {
                w.parcels = w.parcels.saturating_sub(1);
                w.value_minor = w.value_minor.saturating_sub(f.value_minor.unwrap_or(0));
            }
        }
        w
    }

    /// Adds the parcel of `waybill` to its consumer's history on `day`, once per waybill.
    /// Returns whether it was added now (declared with a consumer, not counted before).
    pub fn count(&mut self, waybill: &str, day: u32) -> bool {
        let Some(f) = self.declarations.get_mut(waybill) else {
            return false;
        };
        if f.consumer == NONE || f.counted_day.is_some() {
            return false;
        }
        f.counted_day = Some(day);
        let (consumer, value) = (f.consumer, f.value_minor.unwrap_or(0));
        self.history.add(consumer, day, value);
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bondline_devices::contract::SCHEMA;

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
        let mut t = ClearanceTable::default();
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
        let mut t = ClearanceTable::default();
        t.apply_declaration(&decl("A", "c", 1));
        assert!(t.known("A").suspension.is_none());
        let s = notice("n1", EnterpriseAction::Suspend, Some(20));
        assert_eq!(t.apply_notice(&s), Applied::Changed);
        assert_eq!(t.apply_notice(&s), Applied::Unchanged);
        assert_eq!(t.known("A").suspension, Some("licence review"));
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
        let mut t = ClearanceTable::default();
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
        let mut t = ClearanceTable::default();
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
}
