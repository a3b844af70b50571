//! A start's lookup of the stored day totals of every consumer the held declarations name
//! (see [`super::consumer_days`]), once the held declarations are in.
//!
//! With one-off buyers there are as many consumers as held declarations: millions. The
//! lookup allocates nothing per consumer, because small blocks allocated between the
//! table's long-lived ones stay resident after they are freed (glibc can only give back
//! whole free pages). So:
//! - the consumers' keys go into one block, and are sorted there, so that each page of the
//!   file is read once;
//! - two threads each read their half in one read transaction, into one block of days;
//! - only once both are done, their read transactions ended, are the days added to the
//!   consumers in memory (the only lasting allocations: the days of consumers with more
//!   than one).
//!
//! The blocks take about 80 bytes per held consumer while the lookup runs (780 MB at ten
//! million), each block big enough to go back to the system whole when it is freed.

use super::consumer_days::{key_into, name_of_key, DaysReader, StoredDays};
use crate::journal::JournalError;
use crate::rules::history::StoredDay;
use crate::rules::ClearanceTable;
use std::sync::atomic::{AtomicBool, Ordering};

/// The held consumers' keys, in one block.
struct Keys {
    bytes: Vec<u8>,
    /// Where each key ends in `bytes`; the first starts at 0.
    ends: Vec<usize>,
}

impl Keys {
    fn of_held(table: &ClearanceTable) -> Keys {
        let mut keys = Keys {
            // A 64-digit identity hash's key is 34 bytes.
            bytes: Vec::with_capacity(table.consumers() * 34),
            ends: Vec::with_capacity(table.consumers()),
        };
        table.for_each_held_consumer(|name| {
            key_into(name, &mut keys.bytes);
            keys.ends.push(keys.bytes.len());
        });
        keys
    }

    fn get(&self, i: u32) -> &[u8] {
        let i = i as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    /// Indices of the keys, in key order.
    fn sorted(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.ends.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| self.get(a).cmp(self.get(b)));
        order
    }
}

/// What one thread read: the days of its consumers that have some, in one block.
#[derive(Default)]
struct Read {
    days: Vec<StoredDay>,
    /// A consumer's index, and where its days end in `days` (they start where the previous
    /// one's end).
    ends: Vec<(u32, usize)>,
    /// Consumers whose days could not be read.
    failed: Vec<u32>,
    /// Why the first of them could not.
    why: Option<String>,
}

impl Read {
    /// Reads the days of the consumers `order` names, while `go_on`; `None` if it stopped.
    fn of(
        reader: Option<&DaysReader>,
        keys: &Keys,
        order: &[u32],
        mut go_on: impl FnMut() -> bool,
    ) -> Option<Read> {
        let mut read = Read::default();
        for &i in order {
            if !go_on() {
                return None;
            }
            let Some(reader) = reader else {
                read.failed.push(i);
                read.why
                    .get_or_insert_with(|| "the consumers' file cannot be read".into());
                continue;
            };
            let before = read.days.len();
            match reader.days_by_key(keys.get(i), &mut read.days) {
                Ok(()) if read.days.len() > before => read.ends.push((i, read.days.len())),
                Ok(()) => {}
                Err(e) => {
                    read.days.truncate(before);
                    read.failed.push(i);
                    read.why.get_or_insert(e);
                }
            }
        }
        Some(read)
    }

    /// Adds what was read to the consumers in memory. A key that names no consumer (which
    /// `key_into` never writes) fails the whole lookup: the load is then not complete, and
    /// every parcel stays held.
    fn add_to(&self, table: &ClearanceTable, keys: &Keys) -> Result<(), JournalError> {
        let mut name = String::new();
        let named = |i: u32, name: &mut String| {
            if name_of_key(keys.get(i), name) {
                Ok(())
            } else {
                Err(JournalError::Transaction(
                    "the lookup of consumers' stored days met a key that names no consumer".into(),
                ))
            }
        };
        let mut start = 0;
        for &(i, end) in &self.ends {
            named(i, &mut name)?;
            table.add_stored_days(&name, Ok(&self.days[start..end]));
            start = end;
        }
        for &i in &self.failed {
            named(i, &mut name)?;
            table.add_stored_days(&name, Err("the consumers' file cannot be read"));
        }
        if let Some(why) = &self.why {
            tracing::warn!(
                consumers = self.failed.len(),
                error = %why,
                "held consumers' stored days could not be read at the load: every limit over their histories counts as exceeded until they are read again"
            );
        }
        Ok(())
    }
}

/// Adds the stored days of every consumer the held declarations name, looked up on two
/// threads (a load has both cores to itself); `tick` is called for each consumer of the
/// first half, and stops the lookup when it returns true. False if it stopped. A file that
/// cannot be read leaves every held consumer's history unknown.
pub(super) fn add_held_consumers_days(
    stored: &StoredDays,
    table: &ClearanceTable,
    tick: &mut dyn FnMut() -> bool,
) -> Result<bool, JournalError> {
    let keys = Keys::of_held(table);
    let order = keys.sorted();
    let (first, second) = order.split_at(order.len() / 2);
    let stop = AtomicBool::new(false);
    let (mine, helpers) = std::thread::scope(|s| {
        let helper = s.spawn(|| {
            let reader = stored.reader();
            Read::of(reader.as_ref(), &keys, second, || {
                !stop.load(Ordering::Relaxed)
            })
        });
        let reader = stored.reader();
        let mine = Read::of(reader.as_ref(), &keys, first, || {
            let stopping = tick();
            if stopping {
                stop.store(true, Ordering::Relaxed);
            }
            !stopping
        });
        drop(reader);
        (mine, helper.join())
    });
    let helpers = helpers.map_err(|_| {
        JournalError::Transaction(
            "the lookup of consumers' stored days failed (its thread panicked)".into(),
        )
    })?;
    let (Some(mine), Some(helpers)) = (mine, helpers) else {
        return Ok(false);
    };
    mine.add_to(table, &keys)?;
    helpers.add_to(table, &keys)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::super::consumer_days::key;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every consumer's key reads back as its name.
        #[test]
        fn a_key_names_its_consumer(name in "[0-9a-f]{0,300}|[0-9a-fA-F.é]{0,40}|.{0,70}") {
            let mut back = String::from("left over");
            prop_assert!(name_of_key(&key(&name), &mut back));
            prop_assert_eq!(back, name);
        }
    }

    #[test]
    fn what_is_not_a_key_names_nobody() {
        let mut name = String::new();
        for k in [&[][..], &[1], &[1, 0], &[1, 3, 0xab], &[2, 1], &[0, 0xff]] {
            assert!(!name_of_key(k, &mut name), "{k:?}");
        }
    }
}
