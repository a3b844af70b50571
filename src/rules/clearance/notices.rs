//! Enterprise notices: the platform suspending an enterprise (every declaration it made is
//! held) or lifting the suspension. The latest notice per enterprise is kept, ordered by
//! [`Stamp`]; notice ids are remembered so a redelivery is ignored.

use std::collections::HashMap;
use std::sync::Arc;

use bondline_devices::contract::{EnterpriseAction, EnterpriseNotice};

use super::stamp::Stamp;
use super::{Applied, ClearanceTable};

#[derive(Debug, Clone)]
pub(super) struct Notice {
    pub(super) action: EnterpriseAction,
    pub(super) reason: Arc<str>,
    pub(super) made: Stamp,
}

#[derive(Debug, Default)]
pub(super) struct Notices {
    /// The latest notice per enterprise (by interned id).
    pub(super) by_enterprise: HashMap<u32, Notice>,
}

impl ClearanceTable {
    /// Enterprises suspended now.
    pub fn suspended(&self) -> usize {
        self.notices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_enterprise
            .values()
            .filter(|n| n.action == EnterpriseAction::Suspend)
            .count()
    }

    /// Whether a notice with this id was received before (applied or not).
    pub fn notice_id_seen(&self, id: &str) -> bool {
        self.seen_notices.contains(self.digest(id.as_bytes()))
    }

    /// Whether applying `n` would change the table: not a redelivery, not older than the
    /// notice held for the enterprise.
    pub fn notice_is_new(&self, n: &EnterpriseNotice) -> bool {
        if self.notice_id_seen(&n.notice_id) {
            return false;
        }
        let Some(e) = self.strings.get(&n.enterprise) else {
            return true;
        };
        let notices = self.notices.read().unwrap_or_else(|e| e.into_inner());
        let strict = |a: EnterpriseAction| u8::from(a == EnterpriseAction::Suspend);
        notices.by_enterprise.get(&e).is_none_or(|h| {
            Stamp::of(n.signature.as_ref(), n.issued_at_ms)
                .replaces_stricter(h.made, strict(n.action) >= strict(h.action))
        })
    }

    /// Applies a suspension or lift unless it is a redelivery or stale.
    pub fn apply_notice(&self, n: &EnterpriseNotice) -> Applied {
        let fresh = self.notice_is_new(n);
        self.seen_notices
            .insert(self.digest(n.notice_id.as_bytes()));
        if !fresh {
            return Applied::Unchanged;
        }
        self.restore_notice(n);
        Applied::Changed
    }

    /// Puts back the notice in force for an enterprise (restoring from the store).
    pub fn restore_notice(&self, n: &EnterpriseNotice) {
        self.restore_notice_made(n, Stamp::of(n.signature.as_ref(), n.issued_at_ms));
    }

    /// Puts the fail-closed stand-in `n` of a stored notice that failed its integrity check
    /// (restoring from the store), made at `at_ms`, the load: only a notice signed after it
    /// replaces it (see [`ClearanceTable::restore_stand_in`]).
    pub fn restore_stand_in_notice(&self, n: &EnterpriseNotice, at_ms: u64) {
        self.restore_notice_made(
            n,
            Stamp {
                signed_at_ms: Some(at_ms),
                issued_at_ms: None,
            },
        );
    }

    fn restore_notice_made(&self, n: &EnterpriseNotice, made: Stamp) {
        self.seen_notices
            .insert(self.digest(n.notice_id.as_bytes()));
        let e = self.strings.intern(&n.enterprise);
        self.notices
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .by_enterprise
            .insert(
                e,
                Notice {
                    action: n.action,
                    reason: n.reason.as_str().into(),
                    made,
                },
            );
    }

    /// Records a notice id as seen (restoring from the store).
    pub fn mark_notice_seen(&self, id: &str) {
        self.seen_notices.insert(self.digest(id.as_bytes()));
    }
}
