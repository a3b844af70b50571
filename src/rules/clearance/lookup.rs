//! Lookups for the decision path: what the table holds of one waybill, copied out under one
//! shard's read lock ([`Found`]) and lent to the rules engine ([`Known`]), and the history
//! of the waybill's consumer without its own parcel.

use std::sync::Arc;

use bondline_devices::contract::{Action, EnterpriseAction};

use super::consumers::UNKNOWN;
use super::shard::{HAS_WEIGHT, IDENTITY_VERIFIED, REFUSED};
use super::Loading;
use super::{ClearanceTable, NONE};
use crate::rules::engine::{ConsumerWindow, Declared, Ordered};

/// What the table knows of one waybill, copied out for a decision (no lock is held while
/// rules look at it). [`Found::known`] lends it to the rules engine.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub declaration: Option<FoundDeclaration>,
    pub instruction: Option<FoundInstruction>,
    /// The reason of the declaring enterprise's suspension, if it is suspended.
    pub suspension: Option<Arc<str>>,
    /// The day this waybill was counted in its consumer's history, if it was.
    pub counted_day: Option<u32>,
    /// Set while the table is still loading from the store: what is here may be incomplete.
    pub loading: Option<Loading>,
    consumer_id: u32,
}

/// A declaration as rules see it.
#[derive(Debug, Clone)]
pub struct FoundDeclaration {
    pub enterprise: Arc<str>,
    pub consumer: Option<Arc<str>>,
    pub identity_verified: bool,
    pub value_minor: Option<u64>,
    pub currency: Option<Arc<str>>,
    pub gross_weight_g: Option<u32>,
}

/// The instruction held for a waybill.
#[derive(Debug, Clone)]
pub struct FoundInstruction {
    pub id: String,
    pub action: Action,
    pub reason: Arc<str>,
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

impl Found {
    pub fn known(&self) -> Known<'_> {
        Known {
            declaration: self.declaration.as_ref().map(|d| Declared {
                enterprise: &d.enterprise,
                consumer: d.consumer.as_deref(),
                identity_verified: d.identity_verified,
                value_minor: d.value_minor,
                currency: d.currency.as_deref(),
                gross_weight_g: d.gross_weight_g,
            }),
            instruction: self.instruction.as_ref().map(|i| Ordered {
                id: &i.id,
                action: i.action,
                reason: &i.reason,
            }),
            suspension: self.suspension.as_deref(),
            counted_day: self.counted_day,
        }
    }
}

impl ClearanceTable {
    /// What the table holds for `waybill`, copied out.
    pub fn known(&self, waybill: &str) -> Found {
        // Read before the entry: a load that ends between the two must not pass an entry
        // copied from the half-loaded table for a complete one.
        let loading = self.loading();
        // The consumer's name is read under the entry's lock: while the entry names it, its
        // id cannot be given to another consumer (see [`super::consumers`]).
        let copied = self.with_entry(waybill, |shard, e| {
            e.map(|e| {
                let held = shard
                    .held(e)
                    .map(|h| (h.id.as_str().to_string(), h.action, h.reason));
                (e.clone(), held, self.consumers.name(e.consumer))
            })
        });
        let mut found = Found {
            consumer_id: NONE,
            loading,
            ..Found::default()
        };
        let Some((e, held, consumer)) = copied else {
            return found;
        };
        if e.declared() && e.flags & REFUSED == 0 {
            found.declaration = Some(FoundDeclaration {
                enterprise: self.strings.name(e.enterprise).unwrap_or_else(|| "".into()),
                consumer,
                identity_verified: e.flags & IDENTITY_VERIFIED != 0,
                value_minor: e.value(),
                currency: self.strings.name(e.currency),
                gross_weight_g: (e.flags & HAS_WEIGHT != 0).then_some(e.gross_weight_g),
            });
            found.suspension = self
                .notices
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .by_enterprise
                .get(&e.enterprise)
                .filter(|n| n.action == EnterpriseAction::Suspend)
                .map(|n| n.reason.clone());
            found.consumer_id = e.consumer;
            found.counted_day = e.counted();
        }
        found.instruction = held.map(|(id, action, reason)| FoundInstruction {
            id,
            action,
            reason: self.strings.name(reason).unwrap_or_else(|| "".into()),
        });
        found
    }

    /// Whether the table holds anything of `waybill` (a declaration or an instruction).
    pub fn holds_waybill(&self, waybill: &str) -> bool {
        self.with_entry(waybill, |_, e| e.is_some())
    }

    /// The history of the consumer of `waybill` over the local days `first..=today`, without
    /// the waybill's own parcel (its decision counts "before this one").
    pub fn consumer_window(&self, waybill: &str, first: u32, today: u32) -> ConsumerWindow {
        let found = self.known(waybill);
        self.consumer_window_of(waybill, &found, first, today)
    }

    /// [`ClearanceTable::consumer_window`] of a waybill already looked up (`found`). The
    /// history is read under the waybill's shard lock, once its entry is checked to be as it
    /// was looked up: a declaration replaced or forgotten in between would otherwise take its
    /// parcel out of the history before it is taken out once more here. If it changed, the
    /// window is over every limit (the line decides the waybill again on the change).
    pub fn consumer_window_of(
        &self,
        waybill: &str,
        found: &Found,
        first: u32,
        today: u32,
    ) -> ConsumerWindow {
        let c = found.consumer_id;
        let Some(d) = found.declaration.as_ref() else {
            return ConsumerWindow::default();
        };
        let Some(name) = d.consumer.as_ref().filter(|_| c != NONE) else {
            return ConsumerWindow::default();
        };
        self.with_entry(waybill, |_, e| {
            // Counted since the lookup (another piece, or a decision again) is the same
            // entry: its own parcel is taken out as counted now.
            let Some(e) = e.filter(|e| {
                e.declared()
                    && e.consumer == c
                    && e.value() == d.value_minor
                    && (e.counted() == found.counted_day || found.counted_day.is_none())
            }) else {
                return UNKNOWN;
            };
            // Locks nest waybill shard, then consumer shard (the module's order).
            let mut w = self.history_window(c, name, first, today);
            if let Some(day) = e.counted() {
                if (first..=today).contains(&day) {
                    w.parcels = w.parcels.saturating_sub(1);
                    w.value_minor = w.value_minor.saturating_sub(d.value_minor.unwrap_or(0));
                }
            }
            w
        })
    }
}
