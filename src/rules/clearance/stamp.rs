//! The order of platform messages that replace each other (instructions of a waybill,
//! notices of an enterprise): by the platform's signature time, then its own issued time,
//! never by arrival, so a broker's redelivery of an older message cannot undo a newer one.

/// When the platform made a message, for ordering messages that replace each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    /// The signature time: present on every message the gateway believes (only a demo
    /// line with `allow_unsigned` takes messages without it).
    pub signed_at_ms: Option<u64>,
    /// The platform's own time, optional in the contract.
    pub issued_at_ms: Option<u64>,
}

impl Stamp {
    pub fn of(
        signature: Option<&bondline_devices::signing::Signature>,
        issued_at_ms: Option<u64>,
    ) -> Stamp {
        Stamp {
            signed_at_ms: signature.map(|s| s.signed_at_ms),
            issued_at_ms,
        }
    }

    /// Whether a message made at `self` may replace one made at `held`: ordered by the
    /// signature time, then by `issued_at_ms` where both carry it. An older message never
    /// replaces a newer one, whatever order the broker delivers them in. With equal times
    /// (or, on a demo line, no times to compare) the later arrival replaces.
    pub fn replaces(self, held: Stamp) -> bool {
        if let (Some(old), Some(new)) = (held.signed_at_ms, self.signed_at_ms) {
            if new != old {
                return new > old;
            }
        }
        match (held.issued_at_ms, self.issued_at_ms) {
            (Some(old), Some(new)) => new >= old,
            _ => true,
        }
    }

    /// [`Stamp::replaces`] for messages of which one can be stricter than the other (a hold
    /// and a release, a suspension and its lift). Two signed at the same time are ordered by
    /// strictness alone: the stricter stays, whatever order the broker delivers them in, so
    /// delivery order cannot pick a release over a hold signed in the same millisecond.
    /// (`issued_at_ms` does not break that tie: where only some of them carry it, it orders
    /// some pairs and not others, and the outcome would again depend on arrival.) Messages
    /// not both signed (a demo line) are ordered as by [`Stamp::replaces`].
    pub fn replaces_stricter(self, held: Stamp, at_least_as_strict: bool) -> bool {
        match (held.signed_at_ms, self.signed_at_ms) {
            (Some(old), Some(new)) if new != old => new > old,
            (Some(_), Some(_)) => at_least_as_strict,
            _ => self.replaces(held),
        }
    }
}

/// How strict an instruction is: of two signed at the same time, the stricter stays.
pub(super) fn strictness(a: bondline_devices::contract::Action) -> u8 {
    use bondline_devices::contract::Action;
    match a {
        Action::Release => 0,
        Action::Inspect => 1,
        Action::Hold => 2,
    }
}
