//! The divert handshake's bookkeeping: which sequence the next command gets, and what a value
//! read from the PLC's `ack` register means. Pure: no I/O and no clock. The link task
//! ([`super::plc`]) reads and writes the registers and passes the time in, as rumqttc keeps
//! its protocol state apart from its event loop.
//!
//! # The rule
//! The PLC has one `ack` register: the sequence of the last command it took. A value read
//! there can only be attributed to a command if no other command that could still be taken
//! carries the same sequence. So:
//!
//! - **A sequence is used once while an acknowledge of its earlier use could still come.** A
//!   written command whose acknowledge has not been seen is *in doubt*: the one being waited
//!   for, every one whose job ended in `timeout`, and every one whose link failed after the
//!   write went out. Sequences in doubt are skipped when the next one is chosen, until their
//!   acknowledge is seen, the PLC is found restarted (its memory, and with it every command
//!   it had not yet taken, is gone) or [`Handshake::horizon_ms`] has passed since the write.
//!   The value the register showed last is skipped too, so that a command can never be
//!   "acknowledged" by the register not having moved.
//! - **Sequences never go back.** The next sequence follows the last one *written*, never the
//!   last one acknowledged: across a reconnect this process knows it; after a restart of the
//!   gateway the PLC's own divert block still holds the last command it received (read once
//!   at connect), which is exactly what reached the PLC whatever the gateway's journal had
//!   time to store.
//! - **An `acked` outcome comes only from the acknowledge of that very command.** A value
//!   equal to a command in doubt is that command's *late* acknowledge: reported with its
//!   parcel and lane, since the PLC took it and the parcel may go there. Any other value
//!   means nothing.

use std::collections::{HashSet, VecDeque};

use bondline_devices::plc::{distance, next_seq, DivertCommand};

use crate::floor::{Command, Written};

/// What a value read from the `ack` register means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// The acknowledge of the command being waited for.
    Mine(Written),
    /// The acknowledge of an earlier command whose job had ended without it.
    Late(Written),
    /// Nothing new: still an acknowledge already accounted for.
    Nothing,
}

/// What a (re)connect found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Connected {
    /// The PLC's memory was blank although commands were in doubt: it restarted, and these
    /// commands can no longer be taken.
    pub dropped: Vec<Written>,
    /// The acknowledge register, read at connect, showed the late acknowledge of this command.
    pub late: Option<Written>,
}

/// How many sequences of an earlier run between its last acknowledge and its last write are
/// kept in doubt after a restart (their parcels are not known, only that they may be taken).
const RESTART_DOUBT: u16 = 256;

/// The handshake state of one PLC link.
#[derive(Debug)]
pub struct Handshake {
    /// The last sequence written (by this run, or found in the PLC's block at connect).
    last_written: Option<u16>,
    /// The last value read from the `ack` register.
    last_ack: Option<u16>,
    /// The command whose acknowledge is being waited for.
    waiting: Option<Written>,
    /// Commands in doubt, oldest first.
    in_doubt: VecDeque<Written>,
    /// Sequences of `waiting` and `in_doubt`, for the choice of the next one.
    doubted: HashSet<u16>,
    horizon_ms: u64,
}

impl Handshake {
    /// A fresh state; `horizon_ms` is how long after its write a command's acknowledge is
    /// still expected at all (far longer than any PLC takes; well below the time the
    /// sequences take to wrap at the line's rate).
    pub fn new(horizon_ms: u64) -> Handshake {
        Handshake {
            last_written: None,
            last_ack: None,
            waiting: None,
            in_doubt: VecDeque::new(),
            doubted: HashSet::new(),
            horizon_ms,
        }
    }

    /// How long a command stays in doubt.
    pub fn horizon_ms(&self) -> u64 {
        self.horizon_ms
    }

    /// Whether any written command's acknowledge may still come (the link task then keeps
    /// reading the register between jobs, to see late acknowledges).
    pub fn any_in_doubt(&self) -> bool {
        !self.in_doubt.is_empty()
    }

    /// Commands in doubt, oldest first.
    pub fn in_doubt(&self) -> impl Iterator<Item = &Written> {
        self.in_doubt.iter()
    }

    /// The link is (re)made: `block` is the PLC's divert block as read now (the last command
    /// it received, `None` if it holds none) and `ack` its acknowledge register.
    pub fn connected(&mut self, block: Option<DivertCommand>, ack: u16, now_ms: u64) -> Connected {
        let mut out = Connected::default();
        // A write cut off by the link's failure may or may not have arrived.
        self.link_lost();
        if block.is_none() && ack == 0 {
            // A blank PLC: it restarted (or never had a command). Whatever it had not taken
            // is gone with its memory.
            out.dropped = self.in_doubt.drain(..).collect();
            self.doubted.clear();
            self.last_ack = Some(0);
            return out;
        }
        if let Some(b) = block {
            let ahead = self.last_written.is_none_or(|l| {
                let d = distance(l, b.seq);
                d != 0 && d < u16::MAX / 2
            });
            if ahead {
                if self.last_written.is_none() && b.seq != ack {
                    // An earlier run's commands after the last acknowledge may still be
                    // taken: the last one with its parcel, those before it without.
                    let gap = distance(ack, b.seq).min(RESTART_DOUBT);
                    let mut seq = b.seq;
                    for i in 0..gap {
                        let command = if i == 0 {
                            Command {
                                parcel: b.parcel,
                                lane: b.lane,
                                revision: None,
                            }
                        } else {
                            Command {
                                parcel: 0,
                                lane: 0,
                                revision: None,
                            }
                        };
                        self.doubt(Written {
                            seq,
                            command,
                            at_ms: now_ms,
                        });
                        seq = prev_seq(seq);
                    }
                }
                self.last_written = Some(b.seq);
            }
        }
        if self.last_written.is_none() && ack != 0 {
            self.last_written = Some(ack);
        }
        if let Ack::Late(w) = self.seen(ack) {
            out.late = Some(w);
        }
        out
    }

    /// The sequence for `command`, which is written next; `None` only if every sequence is
    /// in doubt (the PLC has taken nothing for a whole cycle within the horizon).
    pub fn begin(&mut self, command: Command, now_ms: u64) -> Option<u16> {
        debug_assert!(self.waiting.is_none(), "one command at a time");
        self.link_lost();
        let mut seq = next_seq(self.last_written.unwrap_or(0));
        let mut tried = 0u32;
        while self.doubted.contains(&seq) || Some(seq) == self.last_ack {
            seq = next_seq(seq);
            tried += 1;
            if tried >= u32::from(u16::MAX) {
                return None;
            }
        }
        self.last_written = Some(seq);
        self.doubted.insert(seq);
        self.waiting = Some(Written {
            seq,
            command,
            at_ms: now_ms,
        });
        Some(seq)
    }

    /// A value read from the `ack` register.
    pub fn seen(&mut self, ack: u16) -> Ack {
        self.last_ack = Some(ack);
        if let Some(w) = self.waiting.filter(|w| w.seq == ack) {
            self.waiting = None;
            self.doubted.remove(&ack);
            return Ack::Mine(w);
        }
        if let Some(i) = self.in_doubt.iter().position(|w| w.seq == ack) {
            let w = self.in_doubt.remove(i).expect("position is in range");
            self.doubted.remove(&ack);
            return Ack::Late(w);
        }
        Ack::Nothing
    }

    /// The PLC refused the write with an exception: it holds nothing of this command.
    pub fn refused(&mut self) {
        if let Some(w) = self.waiting.take() {
            self.doubted.remove(&w.seq);
        }
    }

    /// The acknowledge did not come in time (or could not be read): the command stays in
    /// doubt, its job ends.
    pub fn gave_up(&mut self) -> Option<Written> {
        let w = self.waiting.take()?;
        self.in_doubt.push_back(w);
        Some(w)
    }

    /// The link failed: a command being waited for may have reached the PLC.
    pub fn link_lost(&mut self) {
        self.gave_up();
    }

    /// Forgets commands written more than the horizon ago; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut n = 0;
        while let Some(w) = self.in_doubt.front() {
            if now_ms.saturating_sub(w.at_ms) < self.horizon_ms {
                break;
            }
            self.doubted.remove(&w.seq);
            self.in_doubt.pop_front();
            n += 1;
        }
        n
    }

    fn doubt(&mut self, w: Written) {
        if self.doubted.insert(w.seq) {
            self.in_doubt.push_back(w);
        }
    }
}

/// The sequence before `seq` in the cycle 1..=65535.
fn prev_seq(seq: u16) -> u16 {
    if seq <= 1 {
        u16::MAX
    } else {
        seq - 1
    }
}

#[cfg(test)]
mod tests;
