//! The keyed chain: the stored chain head and anchor carry an HMAC tag under the gateway's
//! integrity key (see [`super::integrity`]).
//!
//! The hash chain alone shows a record edited in place, but not a consistent rewrite: an
//! intruder who edits a record and recomputes every later `prev_hash` and the stored head
//! leaves a chain that hashes through. The head's tag (over its sequence and hash) cannot be
//! recomputed without the key, so such a rewrite fails `journal verify` and the check at
//! start. The anchor (where purged records ended) is tagged the same way, so the chain's
//! start cannot be moved either.
//!
//! A store written before tags (or salvaged into a fresh store) is adopted at the first
//! start with a key: its head and anchor are tagged as they lie (trust on first use, logged).
//! From then on a missing tag is a problem (`unkeyed`).

use super::maintenance::ChainProblem;
use super::{decode_link, encode_link, Journal, JournalError, META_ANCHOR, META_HEAD};

pub(super) const META_HEAD_TAG: &[u8] = b"head_tag";
pub(super) const META_ANCHOR_TAG: &[u8] = b"anchor_tag";

const DOMAIN: &[u8] = b"chain";
/// A chain problem found at a start and not yet acknowledged by an operator
/// (`bondline journal acknowledge`): it keeps `/readyz` at 503 across restarts, because the
/// next commit tags the new head and a rewrite would no longer show.
const META_CHAIN_BROKEN: &[u8] = b"chain_broken";

impl Journal {
    /// The tag of an encoded head (`what` = `head`) or anchor link, if a key is set.
    pub(super) fn link_tag(&self, what: &[u8], link: &[u8]) -> Option<[u8; 32]> {
        self.integrity_key.get().map(|k| k.tag(DOMAIN, what, link))
    }

    /// Checks the stored head's and anchor's tags (quick: two HMACs). Without a key, finds
    /// nothing. With `adopt` and a key created at this start (or a store fresh from salvage),
    /// an untagged head or anchor is tagged as it lies. Call that at start after
    /// [`Journal::load_clearance`] and before the writer runs (its commits tag the head):
    /// it ends a salvage's adoption.
    pub fn check_chain_tags(&self, adopt: bool) -> Result<Vec<ChainProblem>, JournalError> {
        let Some(key) = self.integrity_key.get() else {
            return Ok(Vec::new());
        };
        let keyed = !(adopt && self.adopting());
        let mut problems = Vec::new();
        for (what, link_key, tag_key) in [
            ("head", META_HEAD, META_HEAD_TAG),
            ("anchor", META_ANCHOR, META_ANCHOR_TAG),
        ] {
            let Some(link) = self.meta.get(link_key)? else {
                continue;
            };
            let seq = decode_link(&link).map_or(0, |(s, _)| s);
            match self.meta.get(tag_key)? {
                None if !keyed => {
                    self.meta
                        .insert(tag_key, &key.tag(DOMAIN, what.as_bytes(), &link)[..])?;
                    *self.adopted.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                    tracing::warn!(
                        link = what,
                        seq,
                        "journal chain {what} tagged as it lies (integrity key's adoption open: created at this start, a start cut short, or a salvaged store)"
                    );
                }
                None => problems.push(ChainProblem::Unkeyed {
                    link: what.to_string(),
                    seq,
                }),
                Some(tag) => {
                    if key.tag(DOMAIN, what.as_bytes(), &link)[..] != tag[..] {
                        problems.push(match what {
                            "head" => ChainProblem::HeadTag { seq },
                            _ => ChainProblem::AnchorTag { seq },
                        });
                    }
                }
            }
        }
        if adopt {
            self.meta.remove(super::platform::META_INTEGRITY_ADOPT)?;
            if let Some(v) = self.meta.get(META_CHAIN_BROKEN)? {
                *self.chain_problem.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                    "{} (found at an earlier start, not acknowledged: bondline journal acknowledge)",
                    String::from_utf8_lossy(&v)
                ));
            }
        }
        Ok(problems)
    }

    /// Notes a problem of the chain found at start, for `/readyz` and the staff view
    /// (see [`Journal::integrity_problems`]).
    pub fn note_chain_problem(&self, text: String) {
        if let Err(e) = self.meta.insert(META_CHAIN_BROKEN, text.as_bytes()) {
            tracing::warn!(error = %e, "the chain problem is not stored: a restart forgets it");
        }
        *self.chain_problem.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
    }

    /// Acknowledges a stored chain problem (an operator looked at it): returns it, and the
    /// next start is ready again unless the chain check finds a problem anew.
    pub fn acknowledge_chain_problem(&self) -> Result<Option<String>, JournalError> {
        let old = self.meta.remove(META_CHAIN_BROKEN)?;
        self.meta.flush()?;
        Ok(old.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// The chain problem noted at start, if any.
    pub fn chain_problem(&self) -> Option<String> {
        self.chain_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The encoded link and its tag, for writers that store a new head or anchor.
pub(super) fn tagged_link(
    journal: &Journal,
    what: &[u8],
    seq: u64,
    hash: &[u8; 32],
) -> ([u8; 40], Option<[u8; 32]>) {
    let link = encode_link(seq, hash);
    let tag = journal.link_tag(what, &link);
    (link, tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::integrity::IntegrityKey;
    use crate::journal::maintenance::tests::record;
    use bondline_devices::contract::Record;

    /// Records 1..=n chained from genesis; record `edit` gets another scan time.
    fn chain(n: u32, edit: Option<u32>) -> (Vec<Vec<u8>>, [u8; 32]) {
        let mut hash = crate::journal::GENESIS_HASH;
        let mut records = Vec::new();
        for i in 1..=n {
            let at = if Some(i) == edit { 5 } else { 1000 };
            let mut r = Record::from(record(i, at));
            r.stamp(u64::from(i), hex::encode(hash));
            let bytes = serde_json::to_vec(&r).unwrap();
            hash = crate::journal::sha256(&bytes);
            records.push(bytes);
        }
        (records, hash)
    }

    fn keyed(dir: &std::path::Path, created: bool) -> Journal {
        let j = Journal::open(dir).unwrap();
        j.set_integrity_key(IntegrityKey::from_bytes([4; 32]), created);
        j
    }

    #[test]
    fn a_consistent_rewrite_fails_only_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = keyed(dir.path(), true);
            assert!(j.check_chain_tags(true).unwrap().is_empty());
            let (records, head) = chain(60, None);
            j.commit(1, &records, (60, head)).unwrap();
            assert!(j.verify().unwrap().ok());
        }
        {
            // Record 50 edited, every later prev_hash and the head recomputed, without the key.
            let j = Journal::open(dir.path()).unwrap();
            let (records, head) = chain(60, Some(50));
            j.commit(1, &records, (60, head)).unwrap();
            assert!(j.verify().unwrap().ok(), "the hash chain alone passes");
        }
        let j = keyed(dir.path(), false);
        let report = j.verify().unwrap();
        assert!(report.keyed);
        assert_eq!(report.problems, vec![ChainProblem::HeadTag { seq: 60 }]);
        assert_eq!(
            j.check_chain_tags(true).unwrap(),
            vec![ChainProblem::HeadTag { seq: 60 }]
        );
        // A head tag removed is no way out.
        j.meta.remove(META_HEAD_TAG).unwrap();
        assert_eq!(
            j.check_chain_tags(true).unwrap(),
            vec![ChainProblem::Unkeyed {
                link: "head".into(),
                seq: 60
            }]
        );
    }

    #[test]
    fn an_untagged_chain_is_adopted_only_with_a_new_key_and_a_problem_outlives_the_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = Journal::open(dir.path()).unwrap();
            let (records, head) = chain(5, None);
            j.commit(1, &records, (5, head)).unwrap();
        }
        {
            // The key existed already: an untagged head is a problem.
            let j = keyed(dir.path(), false);
            assert_eq!(j.check_chain_tags(true).unwrap().len(), 1);
        }
        {
            let j = keyed(dir.path(), true);
            assert!(j.check_chain_tags(true).unwrap().is_empty());
            assert_eq!(j.adopted_untagged(), 1);
            j.note_chain_problem("found".into());
        }
        let j = keyed(dir.path(), false);
        assert!(j.check_chain_tags(true).unwrap().is_empty());
        assert!(j.chain_problem().unwrap().starts_with("found"));
        assert_eq!(
            j.acknowledge_chain_problem().unwrap().as_deref(),
            Some("found")
        );
        drop(j);
        let j = keyed(dir.path(), false);
        j.check_chain_tags(true).unwrap();
        assert!(j.chain_problem().is_none());
        assert!(j.verify().unwrap().ok());
    }
}
