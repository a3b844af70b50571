//! Verification of the record chain: the walk that checks the stored records form one
//! contiguous chain from the anchor (or genesis) to the stored head, and the problems it
//! reports. Its own module because it only reads: `bondline journal verify` and the check at
//! start rely on it to judge a store, never to change one.

use std::borrow::Cow;

use bondline_devices::contract::Record;
use tokio_util::sync::CancellationToken;

use super::{chain_hash, decode_link, Journal, JournalError, GENESIS_HASH, META_ANCHOR, META_HEAD};

/// One thing wrong with the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum ChainProblem {
    /// Records are missing between `after` and `next`.
    Gap { after: u64, next: u64 },
    /// The record's `prev_hash` does not match its predecessor: the predecessor (or this
    /// record) was edited, or records were reordered.
    Broken { seq: u64 },
    /// Records `first..=last` are stored after record `after`, a later one: reordered. Their
    /// place in the sequence is not reported as a gap too, and the records after them are
    /// checked against the chain as usual, so one reordering is one problem.
    OutOfOrder { first: u64, last: u64, after: u64 },
    /// A record whose `seq` was already seen (copied).
    Duplicate { seq: u64 },
    /// The record (or its batch) does not parse.
    Unreadable { seq: u64, reason: String },
    /// The last record does not hash to the stored chain head: it was edited or dropped.
    Head { seq: u64 },
    /// The stored chain head's tag does not verify under the integrity key: the head was
    /// recomputed without the key (a consistent rewrite of the chain), or the key is another
    /// gateway's.
    HeadTag { seq: u64 },
    /// The stored anchor's tag does not verify under the integrity key: the chain's start
    /// was moved.
    AnchorTag { seq: u64 },
    /// The head or anchor (`link`) of a keyed store carries no tag.
    Unkeyed { link: String, seq: u64 },
}

/// Result of [`Journal::verify`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Whether the head and anchor tags were checked (an integrity key was at hand).
    pub keyed: bool,
    pub checked: u64,
    pub first: Option<u64>,
    pub last: Option<u64>,
    pub problems: Vec<ChainProblem>,
    /// Stored platform entries that fail their integrity check (with a key only; filled by
    /// `bondline journal verify`).
    pub refused_state: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.refused_state.is_empty()
    }
}

/// What the chain walk needs of a record: its place and its link. Read without building the
/// whole record (other fields are skipped, still checked to be JSON), which makes the check at
/// start several times cheaper on a large store; the hash covers every byte either way.
#[derive(serde::Deserialize)]
struct Link<'a> {
    seq: u64,
    #[serde(borrow)]
    prev_hash: Cow<'a, str>,
}

/// How closely [`Journal::walk_chain`] reads each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Every record parsed as a whole: one that is JSON but no record is `Unreadable`
    /// (`bondline journal verify`).
    Whole,
    /// The links alone (the check at start, beside a running gateway).
    Links,
}

impl Journal {
    /// Walks the whole chain: contiguous sequence, each `prev_hash` equal to the SHA-256 of
    /// the previous record's bytes, the first one matching the anchor (or genesis), the last
    /// one matching the stored head.
    ///
    /// With an integrity key set, the stored head's and anchor's tags are checked too
    /// (see [`super::chain_key`]): a consistent rewrite fails there.
    pub fn verify(&self) -> Result<VerifyReport, JournalError> {
        let mut report = self.walk_chain(None, Reading::Whole, None)?;
        report.problems.extend(self.check_chain_tags(false)?);
        Ok(report)
    }

    /// Walks the chain up to the head read before, while the writer may append, reading each
    /// record's link only (its bytes are still hashed): the records after that head are not
    /// looked at, and a walk that raced a purge of old records (the
    /// anchor moved under it) is walked again. For the check at start, off the decision path.
    /// Cancelling `stop` ends the walk at the next batch with [`JournalError::Stopped`], so a
    /// daemon shutting down does not wait for a walk of the whole store.
    pub fn verify_running(&self, stop: &CancellationToken) -> Result<VerifyReport, JournalError> {
        let mut tries = 0;
        loop {
            let anchor = self.meta.get(META_ANCHOR)?;
            let head = self.chain_head()?;
            let report = self.walk_chain(Some(head), Reading::Links, Some(stop))?;
            tries += 1;
            if report.ok() || tries == 3 || self.meta.get(META_ANCHOR)? == anchor {
                return Ok(report);
            }
        }
    }

    /// The walk of [`Journal::verify`]; `head`: check up to this head instead of the stored
    /// one; `stop`: end early when cancelled.
    fn walk_chain(
        &self,
        head: Option<(u64, [u8; 32])>,
        reading: Reading,
        stop: Option<&CancellationToken>,
    ) -> Result<VerifyReport, JournalError> {
        let anchor = match self.meta.get(META_ANCHOR)? {
            Some(v) => decode_link(&v),
            None => None,
        };
        let (mut expected, mut prev_hash) = match anchor {
            Some((seq, hash)) => (seq + 1, hash),
            None => (1, GENESIS_HASH),
        };
        let mut report = VerifyReport {
            keyed: self.integrity_key.get().is_some(),
            checked: 0,
            refused_state: Vec::new(),
            first: None,
            last: None,
            problems: Vec::new(),
        };
        // Sequence numbers skipped so far (inclusive ranges): a gap, unless a reordered
        // record fills it later.
        let mut skipped: Vec<(u64, u64)> = Vec::new();
        let limit = head.map(|(seq, _)| seq);
        'walk: for batch in self.batches.iter() {
            if stop.is_some_and(CancellationToken::is_cancelled) {
                return Err(JournalError::Stopped);
            }
            let batch = super::Batch::from_entry(batch)?;
            let Ok(records) = batch.records() else {
                report.problems.push(ChainProblem::Unreadable {
                    seq: batch.first,
                    reason: "batch framing is broken".into(),
                });
                continue;
            };
            for bytes in records {
                report.checked += 1;
                let whole = match reading {
                    Reading::Whole => serde_json::from_slice::<Record>(bytes).err(),
                    Reading::Links => None,
                };
                let link = match (serde_json::from_slice::<Link>(bytes), whole) {
                    (Ok(link), None) => Some(link),
                    (Err(e), _) | (Ok(_), Some(e)) => {
                        report.problems.push(ChainProblem::Unreadable {
                            seq: expected,
                            reason: e.to_string(),
                        });
                        None
                    }
                };
                let seq = link.as_ref().map_or(expected, |l| l.seq);
                if limit.is_some_and(|l| seq > l) {
                    report.checked -= 1;
                    break 'walk;
                }
                if seq < expected {
                    // Behind the chain: a reordered record (it fills a skipped place) or a
                    // copy. The chain goes on from the record before it.
                    match skipped
                        .iter()
                        .position(|&(lo, hi)| (lo..=hi).contains(&seq))
                    {
                        Some(i) => {
                            let (lo, hi) = skipped.remove(i);
                            if seq > lo {
                                skipped.push((lo, seq - 1));
                            }
                            if seq < hi {
                                skipped.push((seq + 1, hi));
                            }
                            let after = expected - 1;
                            match report.problems.last_mut() {
                                Some(ChainProblem::OutOfOrder { last, after: a, .. })
                                    if *last + 1 == seq && *a == after =>
                                {
                                    *last = seq
                                }
                                _ => report.problems.push(ChainProblem::OutOfOrder {
                                    first: seq,
                                    last: seq,
                                    after,
                                }),
                            }
                        }
                        None => report.problems.push(ChainProblem::Duplicate { seq }),
                    }
                    report.first = Some(report.first.map_or(seq, |f| f.min(seq)));
                    continue;
                }
                if seq > expected {
                    // Its predecessor is not here (yet): its `prev_hash` cannot be checked.
                    skipped.push((expected, seq - 1));
                } else if let Some(link) = &link {
                    if link.prev_hash != hex::encode(prev_hash) {
                        report.problems.push(ChainProblem::Broken { seq });
                    }
                }
                report.first.get_or_insert(seq);
                report.last = Some(seq);
                prev_hash = chain_hash(bytes);
                expected = seq + 1;
            }
        }
        skipped.sort_unstable();
        report
            .problems
            .extend(skipped.into_iter().map(|(lo, hi)| ChainProblem::Gap {
                after: lo - 1,
                next: hi + 1,
            }));
        let stored_head = match head {
            Some(h) => Some(h),
            None => self.meta.get(META_HEAD)?.and_then(|v| decode_link(&v)),
        };
        if let Some((head_seq, head_hash)) = stored_head.filter(|&(seq, _)| seq > 0) {
            let last = expected - 1;
            if last < head_seq {
                report.problems.push(ChainProblem::Gap {
                    after: last,
                    next: head_seq + 1,
                });
            } else if report.checked > 0 && prev_hash != head_hash {
                report.problems.push(ChainProblem::Head { seq: last });
            }
        }
        Ok(report)
    }
}
