//! Consumers of the held declarations, with their histories: each declared parcel with a
//! consumer is counted once, on the day of its first scan (the per-consumer limits read the
//! history through [`super::lookup`]).
//!
//! # Only the consumers of held declarations are in memory
//!
//! Cross-border buyers mostly buy once or twice a year, so a year of a busy warehouse's
//! buyers is tens of millions of consumers, while the table holds two weeks of declarations.
//! A consumer is kept (its name and its day totals) only while a held declaration names it:
//! every entry that names a consumer holds one reference to it ([`Book::acquire`], taken on
//! the ingest's side before the entry is written, and [`Book::release`] when the entry is
//! forgotten or names another consumer). The first reference reads the day totals that the
//! journal keeps of the consumer's forgotten declarations ([`StoredHistory`]), outside every
//! lock (a start's load adds them for every held consumer at once, in the file's key order,
//! once the held declarations are in); the last one drops the consumer. Memory follows the
//! held declarations, not the year's buyers. A history that cannot be read is kept as
//! unknown, and every limit over an unknown history is exceeded (fail closed).
//!
//! # Ids are reused
//!
//! A dropped consumer's id is given to the next new one. An entry holds its reference for as
//! long as it names the id, and a lookup reads the consumer's name under the entry's shard
//! lock (so the id cannot be dropped meanwhile). The history is read under the entry's lock
//! again, once the entry is checked to be as it was looked up, and only if the id still names
//! the consumer looked up; otherwise the waybill changed or was forgotten in between, and its
//! window is taken as exceeded (the line decides it again on the change).
//!
//! # What a consumer costs
//!
//! With one-off buyers there are as many consumers as held declarations. A slot is 72 bytes:
//! the name packed in 40 ([`ConsumerName`]: a 64-digit identity hash in 32), the day totals
//! with one day inline in 24, the count of references. With the index and the slab's spare
//! room about 90 bytes a consumer, beside a declaration's 130.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::consumer_name::ConsumerName;
use super::shard::{counted_day, Entry, NOT_COUNTED};
use super::{ClearanceTable, NONE};
use crate::rules::engine::ConsumerWindow;
use crate::rules::history::{Days, StoredDay, StoredHistory};
use crate::rules::sharded::{grow, Index, Locked, Picker, Place};

/// Shards of the consumers.
const BOOK_SHARDS: usize = 256;

/// The window of a history that cannot be known: over every limit.
pub(super) const UNKNOWN: ConsumerWindow = ConsumerWindow {
    parcels: u32::MAX,
    value_minor: u64::MAX,
};

/// One consumer while a held declaration names it.
#[derive(Debug)]
struct Slot {
    // 72 bytes (see the module's doc).
    name: ConsumerName,
    /// Entries naming this consumer; 0: the slot is free.
    refs: u32,
    days: Days,
    /// The stored history could not be read: every window is [`UNKNOWN`].
    unknown: bool,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 72);

/// One shard of the book. An id is `position * BOOK_SHARDS + shard`.
#[derive(Debug, Default)]
struct BookShard {
    index: Index,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Consumers dropped from this shard so far: a first reference that read the store
    /// while one was dropped reads it again (the store may have gained its last parcels).
    dropped: u64,
}

impl BookShard {
    fn find(&self, place: Place, name: &str) -> Option<u32> {
        self.index.find(place.hash, |p| {
            let s = &self.slots[p as usize];
            s.refs > 0 && s.name.is(name)
        })
    }

    fn slot(&mut self, id: u32) -> Option<&mut Slot> {
        self.slots
            .get_mut(id as usize / BOOK_SHARDS)
            .filter(|s| s.refs > 0)
    }
}

/// The consumers of the held declarations, sharded by name; see the module's doc.
#[derive(Debug)]
pub(super) struct Book {
    shards: Locked<BookShard>,
    picker: Picker,
    len: AtomicUsize,
}

impl Default for Book {
    fn default() -> Self {
        Book {
            shards: Locked::new(BOOK_SHARDS),
            picker: Picker::default(),
            len: AtomicUsize::new(0),
        }
    }
}

fn id(place: Place, pos: u32) -> u32 {
    pos * BOOK_SHARDS as u32 + place.shard as u32
}

impl Book {
    /// One more reference to `name`, read from `stored` if it is new. Takes no lock while
    /// the store is read.
    pub(super) fn acquire(&self, name: &str, stored: Option<&dyn StoredHistory>) -> u32 {
        let place = self.picker.place(name, BOOK_SHARDS);
        loop {
            let dropped = {
                let mut shard = self.shards.write(place.shard);
                if let Some(pos) = shard.find(place, name) {
                    let s = &mut shard.slots[pos as usize];
                    s.refs = s.refs.saturating_add(1);
                    let unknown = s.unknown;
                    drop(shard);
                    if unknown {
                        self.read_again(place, pos, name, stored);
                    }
                    return id(place, pos);
                }
                shard.dropped
            };
            let read = stored.map_or(Ok(Vec::new()), |s| s.days_of(name));
            let mut shard = self.shards.write(place.shard);
            if let Some(pos) = shard.find(place, name) {
                let s = &mut shard.slots[pos as usize];
                s.refs = s.refs.saturating_add(1);
                return id(place, pos);
            }
            if shard.dropped != dropped {
                continue;
            }
            let mut days = Days::default();
            let unknown = match read {
                Ok(totals) => {
                    days.add_all(&totals);
                    false
                }
                Err(e) => {
                    tracing::error!(error = %e, "a consumer's stored history cannot be read: every limit over it is taken as exceeded");
                    true
                }
            };
            let slot = Slot {
                name: ConsumerName::new(name),
                refs: 1,
                days,
                unknown,
            };
            let pos = match shard.free.pop() {
                Some(pos) => {
                    shard.slots[pos as usize] = slot;
                    pos
                }
                None => {
                    let pos = shard.slots.len() as u32;
                    grow(&mut shard.slots);
                    shard.slots.push(slot);
                    pos
                }
            };
            shard.index.insert(place.hash, pos);
            self.len.fetch_add(1, Ordering::Relaxed);
            return id(place, pos);
        }
    }

    /// Reads the stored days of a consumer held as unknown again (the store failed at its
    /// first reference): once they read, its windows count again. Its slot's days already
    /// hold its held parcels, and the store those forgotten since, maybe counted in both:
    /// twice, never less.
    fn read_again(&self, place: Place, pos: u32, name: &str, stored: Option<&dyn StoredHistory>) {
        let Some(Ok(totals)) = stored.map(|s| s.days_of(name)) else {
            return;
        };
        let mut shard = self.shards.write(place.shard);
        let s = &mut shard.slots[pos as usize];
        if s.refs > 0 && s.unknown && s.name.is(name) {
            s.days.add_all(&totals);
            s.unknown = false;
            tracing::debug!("a consumer's stored history read again: its limits count again");
        }
    }

    /// The names of the consumers held as unknown.
    fn unknown_names(&self) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        self.for_each_name(|s| s.unknown, |name| out.push(Arc::from(name)));
        out
    }

    /// [`Book::read_again`] for the consumer `name`, if it is held as unknown.
    fn read_again_by_name(&self, name: &str, stored: Option<&dyn StoredHistory>) {
        let place = self.picker.place(name, BOOK_SHARDS);
        let pos = {
            let shard = self.shards.read(place.shard);
            shard.find(place, name)
        };
        if let Some(pos) = pos {
            self.read_again(place, pos, name, stored);
        }
    }

    /// Runs `f` on the name of every consumer held whose slot passes `keep`, under its
    /// shard's read lock.
    fn for_each_name(&self, keep: impl Fn(&Slot) -> bool, mut f: impl FnMut(&str)) {
        for i in 0..self.shards.count() {
            let shard = self.shards.read(i);
            for s in shard.slots.iter().filter(|s| s.refs > 0 && keep(s)) {
                s.name.with_str(&mut f);
            }
        }
    }

    /// Adds stored `days` to the history of `name`, if it is held; an error leaves its
    /// history unknown.
    pub(super) fn add_if_held(&self, name: &str, days: Result<&[StoredDay], &str>) {
        let place = self.picker.place(name, BOOK_SHARDS);
        let mut shard = self.shards.write(place.shard);
        if let Some(pos) = shard.find(place, name) {
            let s = &mut shard.slots[pos as usize];
            match days {
                Ok(days) => s.days.add_all(days),
                Err(_) => s.unknown = true,
            }
        }
    }

    /// One reference to `id` fewer; the consumer is dropped with its last.
    pub(super) fn release(&self, id: u32) {
        if id == NONE {
            return;
        }
        let mut shard = self.shards.write(id as usize % BOOK_SHARDS);
        let pos = id / BOOK_SHARDS as u32;
        let Some(s) = shard.slot(id) else {
            debug_assert!(false, "a consumer released more often than acquired");
            return;
        };
        s.refs -= 1;
        if s.refs > 0 {
            return;
        }
        let place = s.name.with_str(|name| self.picker.place(name, BOOK_SHARDS));
        s.name = ConsumerName::default();
        s.days = Days::default();
        shard.index.remove(place.hash, pos);
        shard.free.push(pos);
        shard.dropped += 1;
        self.len.fetch_sub(1, Ordering::Relaxed);
    }

    pub(super) fn name(&self, id: u32) -> Option<Arc<str>> {
        if id == NONE {
            return None;
        }
        let shard = self.shards.read(id as usize % BOOK_SHARDS);
        shard
            .slots
            .get(id as usize / BOOK_SHARDS)
            .filter(|s| s.refs > 0)
            .map(|s| s.name.to_arc())
    }

    /// Runs `f` on the days of `id`, under its shard's lock.
    fn with_days(&self, id: u32, f: impl FnOnce(&mut Days)) {
        if id == NONE {
            return;
        }
        let mut shard = self.shards.write(id as usize % BOOK_SHARDS);
        if let Some(s) = shard.slot(id) {
            f(&mut s.days);
        }
    }

    /// The history of `id` over `first..=today`, if `id` still names `name`; else, or if its
    /// stored history could not be read, a window over every limit.
    fn window(&self, id: u32, name: &str, first: u32, today: u32) -> ConsumerWindow {
        let shard = self.shards.read(id as usize % BOOK_SHARDS);
        match shard.slots.get(id as usize / BOOK_SHARDS) {
            Some(s) if s.refs > 0 && s.name.is(name) && !s.unknown => s.days.window(first, today),
            _ => UNKNOWN,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

impl ClearanceTable {
    /// Consumers of the held declarations (each with its history in memory).
    pub fn consumers(&self) -> usize {
        self.consumers.len()
    }

    /// Where the day totals of forgotten declarations are read from when a consumer's first
    /// held declaration arrives. Set before anything is applied (the journal does, as a load
    /// begins; a journal opened again sets it again); without it a new consumer starts with
    /// no history.
    pub fn set_stored_history(&self, stored: Box<dyn StoredHistory>) {
        self.stored_history.store(Some(Arc::new(stored)));
    }

    /// Until set again, a new consumer starts with no history: a load applies the held
    /// declarations first, then adds their consumers' stored days in one pass
    /// ([`ClearanceTable::add_stored_days`]).
    pub fn clear_stored_history(&self) {
        self.stored_history.store(None);
    }

    /// Adds the stored days of `consumer`, if a held declaration names it (a load, after the
    /// held declarations); days that cannot be read leave its history unknown.
    pub fn add_stored_days(&self, consumer: &str, days: Result<&[StoredDay], &str>) {
        self.consumers.add_if_held(consumer, days);
    }

    /// Reads again the stored days of every consumer held as unknown (their store failed
    /// when they were first referenced; retention calls this once the store can be used):
    /// those that read count again. Returns how many are still unknown.
    pub fn read_unknown_consumers_again(&self) -> usize {
        let stored = self.stored_history.load();
        let stored = stored.as_deref().map(|s| &**s);
        let unknown = self.consumers.unknown_names();
        for name in &unknown {
            self.consumers.read_again_by_name(name, stored);
        }
        self.consumers.unknown_names().len()
    }

    /// Runs `f` on the name of every consumer the held declarations name. It must not
    /// change the table (it runs under the consumers' read locks).
    pub fn for_each_held_consumer(&self, f: impl FnMut(&str)) {
        self.consumers.for_each_name(|_| true, f);
    }

    /// One more reference to the consumer `name` (see the module's doc).
    pub(super) fn acquire_consumer(&self, name: &str) -> u32 {
        let stored = self.stored_history.load();
        self.consumers
            .acquire(name, stored.as_deref().map(|s| &**s))
    }

    /// Adds the entry's parcel to its consumer's history on `day`, once.
    pub(super) fn count_entry(&self, e: &mut Entry, day: u32) -> bool {
        if !e.declared() || e.consumer == NONE || e.counted_day != NOT_COUNTED {
            return false;
        }
        e.counted_day = counted_day(day);
        let value = e.value().unwrap_or(0);
        self.consumers
            .with_days(e.consumer, |d| d.add_totals(day, 1, value));
        true
    }

    /// Takes the entry's counted parcel out of its consumer's history.
    pub(super) fn uncount_entry(&self, e: &Entry) {
        if let Some(day) = e.counted() {
            let value = e.value().unwrap_or(0);
            self.consumers
                .with_days(e.consumer, |d| d.remove(day, value));
        }
    }

    /// The history of the consumer `id`, named `name` when the waybill was looked up.
    pub(super) fn history_window(
        &self,
        id: u32,
        name: &str,
        first: u32,
        today: u32,
    ) -> ConsumerWindow {
        self.consumers.window(id, name, first, today)
    }

    /// Adds the parcel of `waybill` to its consumer's history on `day`, once per waybill.
    /// Returns whether it was added now (declared with a consumer, not counted before).
    pub fn count(&self, waybill: &str, day: u32) -> bool {
        let place = self.place(waybill);
        let mut shard = self.shards.write(place.shard);
        let Some(i) = shard.find(place, waybill) else {
            return false;
        };
        self.count_entry(&mut shard.entries[i], day)
    }
}
