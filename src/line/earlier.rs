//! Parcels the line no longer tracks: those an earlier run of the gateway handled (read from
//! the journal at start, or handed over once a slow store is open: dispositions of parcels
//! the line does not know wait for them, see `Line::on_earlier`) and this run's parcels
//! whose tracking ended. A disposition the PLC
//! reports for such a parcel is recorded with its waybill and commanded lane; one the PLC
//! reports for a parcel with no decision record anywhere is *unexplained*, and customs is
//! told. Bounded: the oldest entries go first beyond [`CAPACITY`].

use std::collections::{HashMap, VecDeque};

use crate::floor::Recent;

/// Parcels remembered; well above what the PLC's disposition ring and the disposition
/// timeout can still report at 60,000 parcels an hour.
pub const CAPACITY: usize = 50_000;

/// Remembered parcels by id.
#[derive(Debug, Default)]
pub struct Earlier {
    parcels: HashMap<u32, Recent>,
    order: VecDeque<u32>,
}

impl Earlier {
    /// Starts from what the journal holds of an earlier run.
    pub fn from_journal(recent: HashMap<u32, Recent>) -> Earlier {
        let mut e = Earlier::default();
        for (parcel, r) in recent {
            e.remember(parcel, r);
        }
        e
    }

    /// Remembers (or updates) a parcel.
    pub fn remember(&mut self, parcel: u32, r: Recent) {
        if self.parcels.insert(parcel, r).is_none() {
            self.order.push_back(parcel);
        }
        while self.order.len() > CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.parcels.remove(&old);
            }
        }
    }

    pub fn get(&self, parcel: u32) -> Option<&Recent> {
        self.parcels.get(&parcel)
    }

    /// Marks a parcel's disposition recorded; returns whether it already was (a ring entry
    /// read again after a restart).
    pub fn disposed(&mut self, parcel: u32) -> bool {
        match self.parcels.get_mut(&parcel) {
            Some(r) => std::mem::replace(&mut r.disposed, true),
            None => {
                self.remember(
                    parcel,
                    Recent {
                        disposed: true,
                        ..Recent::default()
                    },
                );
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disposition_is_recorded_once_and_the_oldest_parcels_go_first() {
        let mut e = Earlier::default();
        assert!(!e.disposed(7), "first report of parcel 7");
        assert!(e.disposed(7), "the same report again");
        for p in 0..CAPACITY as u32 + 10 {
            e.remember(1_000 + p, Recent::default());
        }
        assert!(e.get(7).is_none(), "the oldest parcel is forgotten");
        assert!(e.get(1_000 + CAPACITY as u32 + 9).is_some());
    }
}
