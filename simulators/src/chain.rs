//! The platform's check of a gateway's record chain, on the payloads it receives: the
//! verification docs/mqtt.md asks of a clearance platform ("What the platform must do", 3), as
//! a reference implementation. `platform-sim` feeds every payload of `P/records` to [`Chains`],
//! which keeps one [`ChainVerifier`] per gateway. Pure: no I/O, no clock.
//!
//! # What is checked
//! Every record carries `seq` and `prev_hash`: the lowercase hex of [`chain_hash`] (SHA-256) of
//! the previous record's exact payload bytes, 64 zeros for `seq` 1. The verifier hashes each
//! payload as received (never a re-serialization of the parsed JSON: the same record with its
//! fields in another order or other whitespace hashes differently), keeps per `seq` that hash
//! and the `prev_hash` the record carried, and checks each link `seq - 1` → `seq` as soon as
//! both ends are in, whichever came first:
//! - A link whose `prev_hash` is not the hash of the predecessor as received is
//!   [`ChainProblem::Broken`] (for `seq` 1: not 64 zeros). A record edited after the gateway
//!   chained it breaks the link to its successor, which vouches for other bytes, and, if the
//!   edit touched its own `prev_hash`, the link to it as well. A record is vouched for only by
//!   its successor, so the latest record received is unconfirmed until the next one arrives.
//! - Another copy of a `seq` already received is a duplicate when it is byte for byte the
//!   same (normal under at-least-once delivery: reconnects, restarts, replays), and
//!   [`ChainProblem::Reused`] otherwise; the first copy stays the one links are checked with.
//! - A `seq` arriving for the first time after a higher one is [`ChainProblem::OutOfOrder`]:
//!   the gateway sends in `seq` order, so only a replayed parked record (announced by an
//!   alarm) or a reordering between gateway and platform arrives late. Its links are checked
//!   on arrival.
//! - A `seq` missing between the lowest and the highest received is a [`ChainProblem::Gap`]
//!   for as long as it is missing (a parked record, a lost one).
//! - A payload without an integer `seq` of at least 1 and a string `prev_hash` is
//!   [`ChainProblem::Unreadable`].
//!
//! # Where the chain starts
//! The first record received anchors the chain. `seq` 1 must carry 64 zeros; a later `seq`
//! (the platform began listening after the gateway) has its `prev_hash` taken as given,
//! since nothing received can confirm or refute it, and the records before it are not
//! reported missing. One arriving afterwards is out of order and moves the start down.
//!
//! # Restarts, purges, a new journal
//! Nothing special is done for a gateway restart, a broker outage or a purge of the gateway's
//! forwarded records: the gateway numbers and chains on from its journal's stored head (the
//! last `seq` and its hash survive all three) and resends what the broker had not
//! acknowledged with the same bytes, which are duplicates here. A chain that did not really
//! continue shows up as a broken link. A gateway whose journal was replaced by an empty one
//! starts again at `seq` 1 with 64 zeros: such a record with other bytes than the `seq` 1
//! received is [`ChainProblem::Restarted`], and verification starts over from it (copies of
//! the old chain arriving after that are judged against the new one).

use std::collections::BTreeMap;
use std::fmt;

use bondline_devices::contract::{chain_hash, GENESIS_HASH};

/// One thing wrong with what a gateway's chain received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainProblem {
    /// Records `after + 1 ..= next - 1` have not arrived, though `after` and `next` have.
    Gap { after: u64, next: u64 },
    /// Record `seq`'s `prev_hash` is not the hash of record `seq - 1` as received (for `seq`
    /// 1: not 64 zeros): record `seq - 1` was altered after the gateway chained it, or this
    /// record's `prev_hash` was, or the two come from different chains.
    Broken { seq: u64 },
    /// Record `seq` arrived again with other bytes than its first copy.
    Reused { seq: u64 },
    /// Record `seq` arrived for the first time after record `after`, a higher one.
    OutOfOrder { seq: u64, after: u64 },
    /// A `seq` 1 with 64 zeros and other bytes than the `seq` 1 received, after records up to
    /// `last`: the gateway's journal started over. Verification starts again from it.
    Restarted { last: u64 },
    /// The payload has no integer `seq` (at least 1) and string `prev_hash`.
    Unreadable { reason: String },
}

impl fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainProblem::Gap { after, next } if after + 2 == *next => {
                write!(f, "record {} missing", after + 1)
            }
            ChainProblem::Gap { after, next } => {
                write!(f, "records {}..={} missing", after + 1, next - 1)
            }
            ChainProblem::Broken { seq: 1 } => write!(f, "record 1: prev_hash is not 64 zeros"),
            ChainProblem::Broken { seq } => write!(
                f,
                "record {seq}: prev_hash is not the hash of record {} as received",
                seq - 1
            ),
            ChainProblem::Reused { seq } => {
                write!(f, "record {seq} received again with other bytes")
            }
            ChainProblem::OutOfOrder { seq, after } => {
                write!(f, "record {seq} arrived after record {after}")
            }
            ChainProblem::Restarted { last } => write!(
                f,
                "a new record 1 after record {last}: the gateway's journal started over"
            ),
            ChainProblem::Unreadable { reason } => write!(f, "unreadable record: {reason}"),
        }
    }
}

/// What became of one payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// A `seq` not received before (its links are checked, problems recorded).
    New,
    /// A byte-identical copy of a record already received.
    Duplicate,
    /// A `seq` already received, with other bytes ([`ChainProblem::Reused`]); ignored.
    Conflict,
    /// Not a record ([`ChainProblem::Unreadable`]); ignored.
    Unreadable,
}

/// What is known of one record: the hash of its payload as received, and the `prev_hash` it
/// carried (`None` if that is not 64 lowercase hex digits).
#[derive(Debug, Clone, Copy)]
struct Link {
    hash: [u8; 32],
    prev: Option<[u8; 32]>,
}

/// The chain check of one gateway's records. Keeps 64 bytes per distinct record received.
#[derive(Debug, Default, Clone)]
pub struct ChainVerifier {
    received: BTreeMap<u64, Link>,
    /// Distinct records received, over journal restarts.
    records: u64,
    /// Links checked and found whole.
    verified: u64,
    duplicates: u64,
    /// Problems found on arrival; gaps are worked out when asked for.
    problems: Vec<ChainProblem>,
}

/// A verifier's counts and problems at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainStatus {
    /// Distinct records received (first copies).
    pub records: u64,
    /// Records whose `prev_hash` was checked and matches: the hash of their predecessor as
    /// received, or 64 zeros for `seq` 1. With no problems, all of them but the first when
    /// the chain was taken up after `seq` 1.
    pub verified: u64,
    /// Byte-identical copies of records already received.
    pub duplicates: u64,
    /// The lowest and the highest `seq` received (of the current journal).
    pub first: Option<u64>,
    pub last: Option<u64>,
    /// Everything found wrong so far, and the gaps there are now.
    pub problems: Vec<ChainProblem>,
}

impl ChainStatus {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for ChainStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} records", self.records)?;
        if let (Some(first), Some(last)) = (self.first, self.last) {
            write!(f, " (seq {first}..={last})")?;
        }
        write!(
            f,
            ", {} verified, {} duplicates, ",
            self.verified, self.duplicates
        )?;
        if self.problems.is_empty() {
            return write!(f, "no problems");
        }
        const SHOWN: usize = 10;
        write!(f, "{} PROBLEMS:", self.problems.len())?;
        for (i, p) in self.problems.iter().take(SHOWN).enumerate() {
            write!(f, "{} {p}", if i == 0 { "" } else { ";" })?;
        }
        if self.problems.len() > SHOWN {
            write!(f, " (and {} more)", self.problems.len() - SHOWN)?;
        }
        Ok(())
    }
}

/// The two fields the chain needs, whatever the record's kind; other fields are skipped.
#[derive(serde::Deserialize)]
struct Envelope {
    seq: u64,
    prev_hash: String,
}

/// `s` as 32 bytes, if it is exactly 64 lowercase hex digits (the form the gateway writes).
fn parse_hash(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    hex::decode(s).ok()?.try_into().ok()
}

impl ChainVerifier {
    pub fn new() -> ChainVerifier {
        ChainVerifier::default()
    }

    /// Takes one payload of `P/records` exactly as received.
    pub fn receive(&mut self, payload: &[u8]) -> Arrival {
        let envelope = match serde_json::from_slice::<Envelope>(payload) {
            Ok(e) if e.seq >= 1 => e,
            Ok(_) => return self.unreadable("seq 0".to_string()),
            Err(e) => return self.unreadable(e.to_string()),
        };
        let seq = envelope.seq;
        let link = Link {
            hash: chain_hash(payload),
            prev: parse_hash(&envelope.prev_hash),
        };
        if let Some(held) = self.received.get(&seq) {
            if held.hash == link.hash {
                self.duplicates += 1;
                return Arrival::Duplicate;
            }
            if seq != 1 || link.prev != Some(GENESIS_HASH) {
                self.problems.push(ChainProblem::Reused { seq });
                return Arrival::Conflict;
            }
            let last = self.last().unwrap_or(0);
            self.problems.push(ChainProblem::Restarted { last });
            self.received.clear();
        }
        if let Some(last) = self.last().filter(|last| *last > seq) {
            self.problems
                .push(ChainProblem::OutOfOrder { seq, after: last });
        }
        self.received.insert(seq, link);
        self.records += 1;
        // The link into this record; the very first record received anchors the chain, and
        // the link of one whose predecessor is missing is checked when that arrives.
        if seq == 1 {
            self.check(1, GENESIS_HASH, link.prev);
        } else if let Some(before) = self.received.get(&(seq - 1)).copied() {
            self.check(seq, before.hash, link.prev);
        }
        // The link out of it, when its successor came first.
        let next = seq.saturating_add(1);
        if let Some(after) = self.received.get(&next).copied().filter(|_| next > seq) {
            self.check(next, link.hash, after.prev);
        }
        Arrival::New
    }

    fn unreadable(&mut self, reason: String) -> Arrival {
        self.problems.push(ChainProblem::Unreadable { reason });
        Arrival::Unreadable
    }

    fn check(&mut self, seq: u64, expected: [u8; 32], found: Option<[u8; 32]>) {
        if found == Some(expected) {
            self.verified += 1;
        } else {
            self.problems.push(ChainProblem::Broken { seq });
        }
    }

    fn last(&self) -> Option<u64> {
        self.received.keys().next_back().copied()
    }

    /// The `seq` values missing between the lowest and the highest received.
    fn gaps(&self) -> impl Iterator<Item = ChainProblem> + '_ {
        let seqs = self.received.keys();
        seqs.clone()
            .zip(seqs.skip(1))
            .filter(|(a, b)| **a + 1 < **b)
            .map(|(a, b)| ChainProblem::Gap {
                after: *a,
                next: *b,
            })
    }

    /// Everything found wrong so far, then the gaps there are now.
    pub fn problems(&self) -> Vec<ChainProblem> {
        self.problems.iter().cloned().chain(self.gaps()).collect()
    }

    pub fn status(&self) -> ChainStatus {
        ChainStatus {
            records: self.records,
            verified: self.verified,
            duplicates: self.duplicates,
            first: self.received.keys().next().copied(),
            last: self.last(),
            problems: self.problems(),
        }
    }
}

/// One [`ChainVerifier`] per gateway, chosen by each record's `gateway` field (a payload
/// without one is checked under the gateway `""`).
#[derive(Debug, Default, Clone)]
pub struct Chains {
    gateways: BTreeMap<String, ChainVerifier>,
}

impl Chains {
    /// Takes one payload of `P/records` exactly as received.
    pub fn receive(&mut self, payload: &[u8]) -> Arrival {
        #[derive(serde::Deserialize)]
        struct Sender {
            #[serde(default)]
            gateway: String,
        }
        let gateway = serde_json::from_slice::<Sender>(payload)
            .map(|s| s.gateway)
            .unwrap_or_default();
        self.gateways.entry(gateway).or_default().receive(payload)
    }

    /// The status of every gateway's chain, by gateway id.
    pub fn status(&self) -> BTreeMap<String, ChainStatus> {
        self.gateways
            .iter()
            .map(|(g, v)| (g.clone(), v.status()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::contract::{
        AlertKind, AlertRecord, DispositionKind, DispositionRecord, LaneRole, Record, SCHEMA,
    };

    /// Record `i` of a gateway before the journal stamps it: dispositions and alerts in turn,
    /// one chain over all kinds.
    fn unstamped(gateway: &str, i: u64) -> Record {
        if i % 2 == 0 {
            Record::Disposition(DispositionRecord {
                schema: SCHEMA,
                msg_id: String::new(),
                seq: 0,
                prev_hash: String::new(),
                gateway: gateway.into(),
                line: "L1".into(),
                parcel: i as u32,
                waybill: Some(format!("BL{i:012}")),
                disposition: DispositionKind::Sorted,
                lane: 2,
                lane_role: Some(LaneRole::Hold),
                commanded_lane: Some(2),
                at_ms: 1_795_721_463_322 + i,
            })
        } else {
            Record::Alert(AlertRecord {
                schema: SCHEMA,
                msg_id: String::new(),
                seq: 0,
                prev_hash: String::new(),
                gateway: gateway.into(),
                line: "L1".into(),
                parcel: Some(i as u32),
                waybill: None,
                alert: AlertKind::NoDisposition,
                detail: "no disposition from the PLC within 10000 ms".into(),
                at_ms: 1_795_721_463_322 + i,
            })
        }
    }

    /// The payloads of `records` numbered from 1, chained as the gateway's journal writer
    /// chains them.
    fn chained(records: impl IntoIterator<Item = Record>) -> Vec<Vec<u8>> {
        let mut prev = GENESIS_HASH;
        records
            .into_iter()
            .zip(1..)
            .map(|(mut r, seq)| {
                let (payload, hash) = r.chain_after(seq, &prev);
                prev = hash;
                payload
            })
            .collect()
    }

    /// Payloads of a gateway's records 1..=n.
    fn journal(gateway: &str, n: u64) -> Vec<Vec<u8>> {
        chained((1..=n).map(|i| unstamped(gateway, i)))
    }

    /// Feeds the payloads of the given `seq` values (1-based) in that order.
    fn feed(v: &mut ChainVerifier, payloads: &[Vec<u8>], seqs: impl IntoIterator<Item = u64>) {
        for s in seqs {
            v.receive(&payloads[s as usize - 1]);
        }
    }

    #[test]
    fn records_in_order_verify_every_link() {
        let payloads = journal("gw", 12);
        let mut v = ChainVerifier::new();
        for p in &payloads {
            assert_eq!(v.receive(p), Arrival::New);
        }
        let s = v.status();
        assert!(s.ok(), "{s}");
        assert_eq!((s.records, s.verified, s.duplicates), (12, 12, 0));
        assert_eq!((s.first, s.last), (Some(1), Some(12)));
        assert_eq!(
            s.to_string(),
            "12 records (seq 1..=12), 12 verified, 0 duplicates, no problems"
        );
    }

    #[test]
    fn exact_copies_are_duplicates_not_problems() {
        // A reconnect or a gateway restart resends what the broker had not acknowledged.
        let payloads = journal("gw", 10);
        let mut v = ChainVerifier::new();
        feed(&mut v, &payloads, 1..=6);
        assert_eq!(v.receive(&payloads[3]), Arrival::Duplicate);
        feed(&mut v, &payloads, [5, 6, 6]);
        feed(&mut v, &payloads, 7..=10);
        let s = v.status();
        assert!(s.ok(), "{s}");
        assert_eq!((s.records, s.verified, s.duplicates), (10, 10, 4));
    }

    #[test]
    fn an_edited_record_breaks_the_link_to_its_successor() {
        let mut payloads = journal("gw", 8);
        let original = String::from_utf8(payloads[3].clone()).unwrap();
        assert!(original.contains("\"lane\":2,"), "{original}");
        payloads[3] = original.replace("\"lane\":2,", "\"lane\":1,").into_bytes();
        let mut v = ChainVerifier::new();
        feed(&mut v, &payloads, 1..=8);
        // Record 4's own prev_hash still matches record 3; record 5 vouches for other bytes.
        assert_eq!(v.problems(), vec![ChainProblem::Broken { seq: 5 }]);
        assert_eq!(v.status().verified, 7);

        // Edited in its prev_hash too (a record replaced wholesale): both links break.
        let mut payloads = journal("gw", 8);
        payloads[3] = unstamped("gw", 4).chain_after(4, &[7; 32]).0;
        let mut v = ChainVerifier::new();
        feed(&mut v, &payloads, 1..=8);
        assert_eq!(
            v.problems(),
            vec![
                ChainProblem::Broken { seq: 4 },
                ChainProblem::Broken { seq: 5 }
            ]
        );
    }

    #[test]
    fn the_same_record_serialized_again_is_not_the_record_that_was_chained() {
        // What a platform that re-encodes the parsed JSON would hash instead of the bytes.
        let mut payloads = journal("gw", 4);
        let parsed: serde_json::Value = serde_json::from_slice(&payloads[1]).unwrap();
        payloads[1] = serde_json::to_vec_pretty(&parsed).unwrap();
        let mut v = ChainVerifier::new();
        feed(&mut v, &payloads, 1..=4);
        assert_eq!(v.problems(), vec![ChainProblem::Broken { seq: 3 }]);
    }

    #[test]
    fn a_dropped_record_is_a_gap_until_it_arrives_late() {
        let payloads = journal("gw", 10);
        let mut v = ChainVerifier::new();
        feed(&mut v, &payloads, (1..=10).filter(|s| *s != 4));
        let s = v.status();
        assert_eq!(s.problems, vec![ChainProblem::Gap { after: 3, next: 5 }]);
        assert_eq!(
            s.to_string(),
            "9 records (seq 1..=10), 8 verified, 0 duplicates, 1 PROBLEMS: record 4 missing"
        );
        // Record 5's link waits for record 4.
        assert_eq!(s.verified, 8);
        // A replayed parked record: both its links check, and the gap closes.
        feed(&mut v, &payloads, [4]);
        let s = v.status();
        assert_eq!(
            s.problems,
            vec![ChainProblem::OutOfOrder { seq: 4, after: 10 }]
        );
        assert_eq!((s.records, s.verified), (10, 10));

        let mut v = ChainVerifier::new();
        feed(&mut v, &payloads, [1, 2, 6, 7]);
        assert_eq!(v.problems(), vec![ChainProblem::Gap { after: 2, next: 6 }]);
        assert!(v.status().to_string().ends_with("records 3..=5 missing"));
    }

    #[test]
    fn reordered_records_are_reported_and_still_verified() {
        let payloads = journal("gw", 6);
        let mut v = ChainVerifier::new();
        feed(&mut v, &payloads, [1, 2, 4, 3, 5, 6]);
        let s = v.status();
        assert_eq!(
            s.problems,
            vec![ChainProblem::OutOfOrder { seq: 3, after: 4 }]
        );
        assert_eq!((s.records, s.verified), (6, 6));
    }

    #[test]
    fn a_seq_reused_with_other_bytes_is_reported_and_the_first_copy_kept() {
        let payloads = journal("gw", 6);
        let mut v = ChainVerifier::new();
        feed(&mut v, &payloads, 1..=4);
        // Another record numbered 3, properly linked to record 2.
        let prev = chain_hash(&payloads[1]);
        let mut other = unstamped("gw", 3);
        if let Record::Alert(a) = &mut other {
            a.detail = "another record".into();
        }
        let (reused, _) = other.chain_after(3, &prev);
        assert_ne!(reused, payloads[2]);
        assert_eq!(v.receive(&reused), Arrival::Conflict);
        feed(&mut v, &payloads, 5..=6);
        let s = v.status();
        assert_eq!(s.problems, vec![ChainProblem::Reused { seq: 3 }]);
        assert_eq!((s.records, s.verified, s.duplicates), (6, 6, 0));
    }

    #[test]
    fn a_chain_taken_up_midway_trusts_its_first_prev_hash() {
        let payloads = journal("gw", 10);
        let mut v = ChainVerifier::new();
        feed(&mut v, &payloads, 5..=10);
        let s = v.status();
        assert!(s.ok(), "{s}");
        assert_eq!((s.first, s.verified), (Some(5), 5));
        // An earlier record arriving afterwards is late, and the records between are missing.
        feed(&mut v, &payloads, [3]);
        assert_eq!(
            v.problems(),
            vec![
                ChainProblem::OutOfOrder { seq: 3, after: 10 },
                ChainProblem::Gap { after: 3, next: 5 }
            ]
        );
    }

    #[test]
    fn record_one_must_point_at_zeros() {
        let payloads = journal("gw", 3);
        let mut first = unstamped("gw", 1);
        let (forged, _) = first.chain_after(1, &[1; 32]);
        let mut v = ChainVerifier::new();
        v.receive(&forged);
        // Record 2 was chained to the genuine record 1.
        feed(&mut v, &payloads, 2..=3);
        assert_eq!(
            v.problems(),
            vec![
                ChainProblem::Broken { seq: 1 },
                ChainProblem::Broken { seq: 2 }
            ]
        );
    }

    #[test]
    fn a_new_journal_starting_over_is_reported_once() {
        let old = journal("gw", 5);
        // The new journal's records are other parcels', chained from 64 zeros again.
        let new = chained((101..=103).map(|i| unstamped("gw", i)));
        let mut v = ChainVerifier::new();
        feed(&mut v, &old, 1..=5);
        feed(&mut v, &new, 1..=3);
        let s = v.status();
        assert_eq!(s.problems, vec![ChainProblem::Restarted { last: 5 }]);
        assert_eq!((s.records, s.verified), (8, 8));
        assert_eq!((s.first, s.last), (Some(1), Some(3)));
    }

    #[test]
    fn unreadable_payloads_are_problems() {
        let mut v = ChainVerifier::new();
        assert_eq!(v.receive(b"not json"), Arrival::Unreadable);
        assert_eq!(
            v.receive(br#"{"seq":0,"prev_hash":""}"#),
            Arrival::Unreadable
        );
        assert_eq!(v.problems().len(), 2);
        assert_eq!(v.status().records, 0);
        let last = format!(r#"{{"seq":{},"prev_hash":""}}"#, u64::MAX);
        assert_eq!(v.receive(last.as_bytes()), Arrival::New);
    }

    #[test]
    fn each_gateway_has_its_own_chain() {
        let (a, b) = (journal("gw-a", 5), journal("gw-b", 5));
        let mut chains = Chains::default();
        for (x, y) in a.iter().zip(&b) {
            chains.receive(x);
            chains.receive(y);
        }
        chains.receive(&a[4]);
        let status = chains.status();
        assert_eq!(status.len(), 2);
        for (gateway, s) in &status {
            assert!(s.ok(), "{gateway}: {s}");
            assert_eq!(s.verified, 5);
        }
        assert_eq!(status["gw-a"].duplicates, 1);
    }
}
