//! What the gateway can see of its broker session being lost or taken over (pure).
//!
//! The session is persistent: on every reconnect after the first the broker must say
//! `session_present`. If it does not, the broker forgot the session and whatever it queued
//! for the gateway (a hold among them, perhaps): that is reported, and the platform is asked
//! for the current state. A broker that cuts the gateway again and again within a short
//! time, without the gateway causing it, is what another client connecting with the same
//! client id looks like (MQTT lets the newer connection take the session): that is reported
//! as a takeover. Either way the gateway keeps deciding from what it holds, fail closed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Cuts by the broker within [`TAKEOVER_WINDOW`] that count as a takeover.
pub const TAKEOVER_CUTS: usize = 3;
pub const TAKEOVER_WINDOW: Duration = Duration::from_secs(10);

/// Something wrong with the broker session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Reconnected without the persistent session: queued messages may be gone.
    Lost,
    /// The broker cut the connection this many times within the window.
    Takeover(usize),
}

impl Finding {
    pub fn detail(&self) -> String {
        match self {
            Finding::Lost => "the broker did not keep this gateway's persistent session (session_present = false on reconnect): messages queued for it may be lost; the platform is asked for the current state".into(),
            Finding::Takeover(n) => format!("the broker cut the connection {n} times within {} s without the gateway causing it: another client may be using this gateway's client id", TAKEOVER_WINDOW.as_secs()),
        }
    }
}

#[derive(Debug, Default)]
pub struct SessionWatch {
    connected_before: bool,
    cuts: VecDeque<Instant>,
}

impl SessionWatch {
    /// A CONNACK: `Lost` when an earlier session existed and the broker has none.
    pub fn connected(&mut self, session_present: bool) -> Option<Finding> {
        let before = std::mem::replace(&mut self.connected_before, true);
        (before && !session_present).then_some(Finding::Lost)
    }

    /// A session that was up ended because the broker closed it, at `now`.
    pub fn cut_by_broker(&mut self, now: Instant) -> Option<Finding> {
        self.cuts.push_back(now);
        while self
            .cuts
            .front()
            .is_some_and(|t| now.duration_since(*t) > TAKEOVER_WINDOW)
        {
            self.cuts.pop_front();
        }
        if self.cuts.len() >= TAKEOVER_CUTS {
            let n = self.cuts.len();
            self.cuts.clear();
            return Some(Finding::Takeover(n));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_session_and_repeated_cuts_are_found() {
        let mut w = SessionWatch::default();
        assert_eq!(w.connected(false), None, "the first session may be new");
        assert_eq!(w.connected(true), None);
        assert_eq!(w.connected(false), Some(Finding::Lost));
        let t0 = Instant::now();
        assert_eq!(w.cut_by_broker(t0), None);
        assert_eq!(w.cut_by_broker(t0 + Duration::from_secs(11)), None);
        assert_eq!(w.cut_by_broker(t0 + Duration::from_secs(12)), None);
        assert_eq!(
            w.cut_by_broker(t0 + Duration::from_secs(13)),
            Some(Finding::Takeover(3))
        );
        assert_eq!(w.cut_by_broker(t0 + Duration::from_secs(14)), None);
    }
}
