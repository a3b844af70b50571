//! The rule set in force, and how it changes while the daemon runs.
//!
//! A rule set comes from the configuration's `rules_file` (or the built-in fail-closed core)
//! or from the platform (`P/rules`). The latest one applied is in force, whatever its source:
//! - a change of the rule file's content (seen by polling every [`WATCH_INTERVAL`]) reloads
//!   it; so does SIGHUP, except that a SIGHUP with the file unchanged leaves a platform set in
//!   force (`systemctl reload` also renews certificates, and must not undo the platform);
//! - a platform update applies when its id is new and it is not older (its signature time,
//!   then `issued_at_ms`; see `Stamp::replaces`) than
//!   the last platform update applied;
//! - an invalid rule set is refused whole: the old set stays, the refusal is logged, alarmed
//!   and (for the platform) reported; a refused platform update's id is not remembered, so
//!   the platform may send it again corrected;
//! - every new set makes the lines decide their tracked parcels again before their deadline.
//!
//! Which set is in force is stored in the journal, so a restart keeps it: a platform set
//! stays in force unless the rule file changed while the daemon was down. Every decision
//! takes one `Arc` of the set in force and uses it throughout, so a swap never mixes rules.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bondline_devices::contract::RuleSetUpdate;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::alarm::Alarms;
use crate::floor::ClearanceChange;
use crate::journal::platform::StoredRules;
use crate::journal::{sha256, Journal, JournalError};
use crate::metrics::Metrics;
use crate::rules::clearance::Stamp;
use crate::rules::engine::{RuleSet, RuleSetError};

/// How often the rule file is checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// The rule set every decision uses; replaced whole.
/// Lock-free to read: a decision loads the set in force without waiting on a reload.
pub type SharedRules = Arc<arc_swap::ArcSwap<RuleSet>>;

/// What a platform update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// Applied: the version now in force.
    Applied(String),
    /// Its id was received before: ignored.
    Seen,
    /// Older (`issued_at_ms`) than the platform set last applied: ignored.
    Stale,
}

/// Why a platform update was not applied.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The rule set is invalid: refused whole (reported to the platform).
    #[error(transparent)]
    Invalid(RuleSetError),
    /// The store failed: nothing changed, and the update must come again.
    #[error(transparent)]
    Store(#[from] JournalError),
}

/// Owns the rule set in force. Cheap to clone.
#[derive(Clone)]
pub struct Policy {
    rules: SharedRules,
    file: Option<PathBuf>,
    journal: Journal,
    alarms: Alarms,
    metrics: Arc<Metrics>,
    /// Hash of the rule file's text last read (valid or not), to notice changes.
    file_seen: Arc<Mutex<Option<[u8; 32]>>>,
    /// What this gateway's devices can feed the rules.
    feeds: Feeds,
    /// Tells the lines a new set is in force.
    changes: tokio::sync::broadcast::Sender<ClearanceChange>,
}

/// What the gateway's devices feed the rules: a rule that nothing feeds can never fire, which
/// an operator must hear about when the set is loaded.
#[derive(Debug, Clone, Copy, Default)]
pub struct Feeds {
    /// Some line's scanner weighs parcels (weight rules).
    pub weighing: bool,
    /// Some line has an X-ray scanner (X-ray rules).
    pub xray: bool,
}

/// Why the rule file was not taken; the rule set in force stays.
#[derive(Debug, thiserror::Error)]
pub enum RuleFileError {
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    #[error("not UTF-8 text")]
    NotText,
    #[error(transparent)]
    Invalid(#[from] RuleSetError),
}

/// Reads the rule file and validates it; the hash is of the bytes read, valid or not.
fn read_file(path: &std::path::Path) -> (Option<[u8; 32]>, Result<RuleSet, RuleFileError>) {
    match std::fs::read(path) {
        Ok(bytes) => {
            let hash = sha256(&bytes);
            let set = String::from_utf8(bytes)
                .map_err(|_| RuleFileError::NotText)
                .and_then(|text| Ok(RuleSet::parse(&path.display().to_string(), &text)?));
            (Some(hash), set)
        }
        Err(e) => (None, Err(RuleFileError::Read(e))),
    }
}

/// Parses a platform update's rule set with the same checks as a file.
fn parse_update(u: &RuleSetUpdate) -> Result<RuleSet, RuleSetError> {
    RuleSet::parse(&format!("platform update {}", u.update_id), &u.rules_toml)
}

impl Policy {
    /// Picks the rule set in force at start: `configured` (the validated rule file or the
    /// built-in set) unless the platform's set was in force at the last stop and the file is
    /// unchanged since it was applied. It is put in `rules`, the handle the lines already
    /// read (they may start before the store is open, see `App::start`).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        rules: SharedRules,
        configured: Arc<RuleSet>,
        file: Option<PathBuf>,
        feeds: Feeds,
        journal: Journal,
        alarms: Alarms,
        metrics: Arc<Metrics>,
        changes: tokio::sync::broadcast::Sender<ClearanceChange>,
    ) -> Result<Policy, JournalError> {
        let file_hash = file
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| sha256(&b));
        let mut set = configured;
        if let StoredRules::Platform {
            update,
            file_hash: then,
        } = journal.stored_rules()?
        {
            if then == file_hash {
                match parse_update(&update) {
                    Ok(s) => {
                        info!(rule_set = %s.version, update = %update.update_id, "the platform's rule set stays in force");
                        set = Arc::new(s);
                    }
                    Err(e) => {
                        warn!(error = %e, "the stored platform rule set is no longer valid; using the local one")
                    }
                }
            } else {
                info!("the rule file changed since the platform's rule set was applied; the file is in force");
                journal.store_rules(&StoredRules::Local)?;
            }
        }
        rules.store(set);
        let policy = Policy {
            rules,
            file,
            journal,
            alarms,
            metrics,
            file_seen: Arc::new(Mutex::new(file_hash)),
            feeds,
            changes,
        };
        policy.warn_inert(&policy.current());
        Ok(policy)
    }

    /// Warns about rules that cannot fire on this gateway's devices.
    fn warn_inert(&self, set: &RuleSet) {
        use crate::rules::engine::RuleKind;
        for r in &set.rules {
            match r.kind {
                RuleKind::WeightMismatch { .. } if !self.feeds.weighing => {
                    warn!(rule = %r.name, rule_set = %set.version, "weight rule cannot fire: no scanner of this gateway weighs parcels (a profile with weight_separator)");
                }
                RuleKind::XraySuspect if !self.feeds.xray => {
                    warn!(rule = %r.name, rule_set = %set.version, "X-ray rule cannot fire: no line of this gateway has an X-ray scanner");
                }
                _ => {}
            }
        }
    }

    /// The shared rule set every line reads.
    pub fn shared(&self) -> SharedRules {
        self.rules.clone()
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<RuleSet> {
        self.rules.load_full()
    }

    fn swap(&self, set: RuleSet) -> String {
        self.warn_inert(&set);
        let version = set.version.clone();
        self.rules.store(Arc::new(set));
        Metrics::add(&self.metrics.rule_sets_applied, 1);
        // No line listening (at start, or in a test) is fine: there is nothing to re-decide.
        let _ = self.changes.send(ClearanceChange::All);
        version
    }

    fn refuse(&self, what: &str, reason: &str) {
        Metrics::add(&self.metrics.rule_sets_refused, 1);
        self.alarms.raise(format!(
            "rule set {what} refused, the previous one ({}) stays: {reason}",
            self.current().version
        ));
    }

    /// SIGHUP: reads the rule file again like [`Policy::reload`], but a platform set in force
    /// stays when the file has not changed since it was last read. Returns the version in
    /// force afterwards.
    pub fn reload_on_signal(&self) -> String {
        if let Some(path) = &self.file {
            let unchanged = std::fs::read(path).ok().map(|b| sha256(&b))
                == *self.file_seen.lock().unwrap_or_else(|e| e.into_inner());
            let platform = matches!(
                self.journal.stored_rules(),
                Ok(StoredRules::Platform { .. })
            );
            if unchanged && platform {
                let version = self.current().version.clone();
                info!(rule_set = %version, file = %path.display(), "rule file unchanged; the platform's rule set stays in force");
                return version;
            }
        }
        self.reload()
    }

    /// Reads the rule file again (a change seen by [`Policy::watch`], or SIGHUP). A valid set
    /// replaces the one in force; an invalid one is refused with an alarm. Returns the
    /// version in force afterwards.
    pub fn reload(&self) -> String {
        let Some(path) = &self.file else {
            info!("no rules_file configured; the rule set in force stays");
            return self.current().version.clone();
        };
        let (hash, result) = read_file(path);
        *self.file_seen.lock().unwrap_or_else(|e| e.into_inner()) = hash;
        match result {
            Ok(set) => {
                if let Err(e) = self.journal.store_rules(&StoredRules::Local) {
                    warn!(error = %e, "cannot store which rule set is in force");
                }
                let version = self.swap(set);
                info!(rule_set = %version, file = %path.display(), "rule set reloaded from the file");
                version
            }
            Err(reason) => {
                self.refuse(&path.display().to_string(), &reason.to_string());
                self.current().version.clone()
            }
        }
    }

    /// Applies a rule set pushed by the platform. A store failure leaves the old set and
    /// remembers nothing, so the update applies when it comes again.
    pub fn apply_update(&self, u: &RuleSetUpdate) -> Result<UpdateOutcome, UpdateError> {
        let store = UpdateError::Store;
        let seen = self.journal.rule_update_seen(&u.update_id).map_err(store)?;
        let last = self.journal.last_platform_rules().map_err(store)?;
        // Ordered by the signature time, then `issued_at_ms` (see `Stamp::replaces`).
        let stale = last.as_ref().is_some_and(|l| {
            !Stamp::of(u.signature.as_ref(), u.issued_at_ms)
                .replaces(Stamp::of(l.signature.as_ref(), l.issued_at_ms))
        });
        if seen {
            return Ok(UpdateOutcome::Seen);
        }
        if stale {
            self.journal
                .remember_rule_update(&u.update_id)
                .map_err(store)?;
            return Ok(UpdateOutcome::Stale);
        }
        // Validated before its id is remembered: a refused update may come again corrected.
        let set = match parse_update(u) {
            Ok(set) => set,
            Err(e) => {
                self.refuse(&format!("update {}", u.update_id), &e.to_string());
                return Err(UpdateError::Invalid(e));
            }
        };
        // Stored before its id is remembered: a failure in between applies it again.
        let file_hash = *self.file_seen.lock().unwrap_or_else(|e| e.into_inner());
        self.journal
            .store_rules(&StoredRules::Platform {
                update: u.clone(),
                file_hash,
            })
            .map_err(store)?;
        self.journal
            .remember_rule_update(&u.update_id)
            .map_err(store)?;
        let version = self.swap(set);
        info!(rule_set = %version, update = %u.update_id, "rule set from the platform applied");
        Ok(UpdateOutcome::Applied(version))
    }

    /// Polls the rule file until `stop`, reloading when its content changes. Editors that
    /// replace the file and ones that rewrite it in place are both seen.
    pub async fn watch(self, stop: CancellationToken) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let p = path.clone();
            let Ok(Ok(bytes)) = tokio::task::spawn_blocking(move || std::fs::read(p)).await else {
                continue;
            };
            let hash = Some(sha256(&bytes));
            let changed = *self.file_seen.lock().unwrap_or_else(|e| e.into_inner()) != hash;
            if changed {
                info!(file = %path.display(), "rule file changed");
                self.reload();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(version: &str) -> String {
        format!("version = \"{version}\"\n[[rules]]\nname = \"instruction\"\nkind = \"instruction\"\npriority = 100\n")
    }

    fn update(id: &str, toml: &str) -> RuleSetUpdate {
        RuleSetUpdate {
            schema: 1,
            update_id: id.into(),
            rules_toml: toml.into(),
            issued_at_ms: None,
            signature: None,
        }
    }

    #[test]
    fn updates_signals_and_file_changes_each_do_what_they_should() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.toml");
        std::fs::write(&file, rules("file-1")).unwrap();
        let journal = Journal::open(&dir.path().join("store")).unwrap();
        let (changes, mut seen) = tokio::sync::broadcast::channel(8);
        let configured = RuleSet::parse("rules.toml", &rules("file-1")).unwrap();
        let policy = Policy::start(
            Arc::new(arc_swap::ArcSwap::from_pointee(RuleSet::builtin())),
            Arc::new(configured),
            Some(file.clone()),
            Feeds::default(),
            journal,
            Alarms::new("gw"),
            Arc::new(Metrics::default()),
            changes,
        )
        .unwrap();
        assert_eq!(policy.current().version, "file-1");

        // A refused update leaves the set in force and may come again, corrected, under
        // the same id.
        assert!(matches!(
            policy.apply_update(&update("U1", "version = ")),
            Err(UpdateError::Invalid(_))
        ));
        assert_eq!(policy.current().version, "file-1");
        assert!(
            seen.try_recv().is_err(),
            "nothing changed, nothing to re-decide"
        );
        assert_eq!(
            policy
                .apply_update(&update("U1", &rules("platform-1")))
                .ok(),
            Some(UpdateOutcome::Applied("platform-1".into()))
        );
        assert!(matches!(seen.try_recv(), Ok(ClearanceChange::All)));
        assert_eq!(
            policy
                .apply_update(&update("U1", &rules("platform-1")))
                .ok(),
            Some(UpdateOutcome::Seen),
            "a redelivery changes nothing"
        );

        // SIGHUP with the file unchanged (a certificate renewal) keeps the platform's set.
        assert_eq!(policy.reload_on_signal(), "platform-1");
        assert!(seen.try_recv().is_err());

        // A changed file is read on SIGHUP, and the lines are told.
        std::fs::write(&file, rules("file-2")).unwrap();
        assert_eq!(policy.reload_on_signal(), "file-2");
        assert!(matches!(seen.try_recv(), Ok(ClearanceChange::All)));
        // With the local set in force, SIGHUP reads the file as before.
        std::fs::write(&file, "version = \"broken\"\n").unwrap();
        assert_eq!(
            policy.reload_on_signal(),
            "file-2",
            "an invalid file is refused whole"
        );
    }
}
