//! What to do with one platform message, from what the gateway already holds of it: a pure
//! function, so every case (new, newer, older, the broker's redelivery, a replay) is tested
//! without a broker or a store. The uplink carries the judgement out in one path
//! (`Uplink::ingest_one`): it stores what is to be kept, applies what is to be applied to the
//! clearance table, counts the message as new or known, and reports the refusal.

use bondline_devices::contract::EventKind;

/// The kinds of platform message the clearance table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Declaration,
    Instruction,
    Notice,
}

/// What the clearance table holds of a message, read under its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Held {
    /// Its id was received before (instructions and notices carry one).
    pub id_seen: bool,
    /// It would change what is in force: a declaration not held yet, an order newer than
    /// the one in force.
    pub fresh: bool,
    /// A declaration signed before the one held: an older copy sent again.
    pub replayed: bool,
}

/// What to store of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The message itself: it is (or may become) what is in force.
    Message,
    /// Only its id, so that the same id is known as seen after a restart.
    Id,
    Nothing,
}

/// What the uplink does with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub keep: Keep,
    /// Hand it to the clearance table (which keeps what is newest, and remembers ids).
    pub apply: bool,
    /// Already stored before: counted as a redelivery, not as a new message.
    pub known: bool,
    /// Refused: the event to report and why.
    pub refusal: Option<(EventKind, String)>,
}

/// Judges one message. `what` names it in a refusal ("instruction I-1 for BL1"); `dup` is
/// the broker's redelivery flag.
pub fn judge(kind: Kind, held: Held, dup: bool, what: &str) -> Judgement {
    match kind {
        Kind::Declaration if held.replayed => Judgement {
            keep: Keep::Nothing,
            apply: false,
            known: false,
            refusal: Some((
                EventKind::ForgedMessage,
                format!("{what} replayed: signed before the declaration held"),
            )),
        },
        Kind::Declaration => Judgement {
            keep: if held.fresh {
                Keep::Message
            } else {
                Keep::Nothing
            },
            apply: held.fresh,
            known: !held.fresh,
            refusal: None,
        },
        Kind::Instruction | Kind::Notice => Judgement {
            keep: if held.fresh { Keep::Message } else { Keep::Id },
            // Applied even when not newer, so a stale id is remembered as seen.
            apply: true,
            known: held.id_seen,
            refusal: replay_refusal(
                held.id_seen,
                held.fresh,
                dup,
                what,
                if kind == Kind::Instruction {
                    "the instruction in force"
                } else {
                    "the notice in force"
                },
            ),
        },
    }
}

/// What to report of a signed message that is not applied because its id was received
/// before (`seen`) or it is older than what is in force (`!fresh`). A broker's redelivery
/// (`dup`, after a session ended before the acknowledgement) of a message already received
/// is routine; anything else is a replay, or a stale order that must not undo a newer one:
/// refused and reported. The DUP flag alone does not silence a message never received
/// before: anyone who can publish to the broker can set it.
pub fn replay_refusal(
    seen: bool,
    fresh: bool,
    dup: bool,
    what: &str,
    in_force: &str,
) -> Option<(EventKind, String)> {
    match (seen, fresh) {
        // The broker's redelivery of what was already judged (and reported, if it had to be).
        (true, _) if dup => None,
        (true, _) => Some((
            EventKind::ForgedMessage,
            format!("{what} replayed: that id was received before; not applied again"),
        )),
        (false, false) => Some((
            EventKind::ForgedMessage,
            format!("{what} is older than {in_force}; not applied"),
        )),
        (false, true) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(id_seen: bool, fresh: bool, replayed: bool) -> Held {
        Held {
            id_seen,
            fresh,
            replayed,
        }
    }

    #[test]
    fn a_new_declaration_is_kept_and_applied_and_a_known_one_only_counted() {
        let j = judge(Kind::Declaration, held(false, true, false), false, "d");
        assert_eq!(
            (j.keep, j.apply, j.known, j.refusal),
            (Keep::Message, true, false, None)
        );
        let j = judge(Kind::Declaration, held(false, false, false), true, "d");
        assert_eq!(
            (j.keep, j.apply, j.known, j.refusal),
            (Keep::Nothing, false, true, None)
        );
    }

    #[test]
    fn an_older_copy_of_a_declaration_is_refused_as_forged_even_when_redelivered() {
        for dup in [false, true] {
            let j = judge(
                Kind::Declaration,
                held(false, false, true),
                dup,
                "declaration of BL1",
            );
            assert_eq!((j.keep, j.apply, j.known), (Keep::Nothing, false, false));
            let (kind, why) = j.refusal.expect("refused");
            assert_eq!(kind, EventKind::ForgedMessage);
            assert_eq!(
                why,
                "declaration of BL1 replayed: signed before the declaration held"
            );
        }
    }

    #[test]
    fn orders_are_always_applied_kept_whole_only_when_newer_and_refused_when_replayed_or_stale() {
        for kind in [Kind::Instruction, Kind::Notice] {
            // New and newer: kept, applied, nothing to report.
            let j = judge(kind, held(false, true, false), false, "o");
            assert_eq!(
                (j.keep, j.apply, j.known, j.refusal),
                (Keep::Message, true, false, None)
            );
            // The same id again, not a redelivery: a replay.
            let j = judge(kind, held(true, false, false), false, "o");
            assert_eq!((j.keep, j.apply, j.known), (Keep::Id, true, true));
            assert!(j
                .refusal
                .unwrap()
                .1
                .contains("replayed: that id was received before"));
            // A new id older than what is in force: stale, its id remembered.
            let j = judge(kind, held(false, false, false), false, "o");
            assert_eq!((j.keep, j.apply, j.known), (Keep::Id, true, false));
            assert!(j.refusal.unwrap().1.contains("is older than the"));
            // The broker's redelivery is routine.
            let j = judge(kind, held(true, false, false), true, "o");
            assert_eq!((j.known, j.refusal), (true, None));
            // The DUP flag on a stale order never received before does not hide it.
            let j = judge(kind, held(false, false, false), true, "o");
            assert!(j.refusal.unwrap().1.contains("is older than the"));
        }
    }
}
