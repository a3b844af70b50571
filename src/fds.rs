//! File descriptors: the device links must never be the ones to run out.
//!
//! Every scanner, PLC, X-ray and camera link, the journal's files and the broker connection
//! need a descriptor, and a PLC that restarts needs a *new* one to reconnect. HTTP clients are
//! the only users whose number the gateway does not choose, so they get what is left after a
//! reserve: at start the daemon raises its soft `RLIMIT_NOFILE` to the hard limit (the unit
//! sets `LimitNOFILE`), and the staff view's connection limit is lowered, if need be, so that
//! the view's and the upload endpoint's connections together leave [`RESERVE`] descriptors
//! (plus [`PER_LINE`] per line) for everything else.

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// Descriptors kept for the journal, the broker link, the spools, the log, the runtime and
/// headroom, whatever the HTTP servers do.
pub const RESERVE: u64 = 256;
/// Descriptors kept per line: scanner, PLC, X-ray (Modbus and spool), cameras, reconnects.
pub const PER_LINE: u64 = 16;
/// The staff view keeps at least this many connections, however tight the limit.
pub const MIN_VIEW_CONNECTIONS: usize = 8;

/// The soft and hard limits after raising the soft one to the hard one (a limit of
/// "infinity" is reported as `u64::MAX`). Failing to raise it is logged, not fatal: the
/// connection limits below are then sized to the lower limit.
pub fn raise_soft_limit() -> (u64, u64) {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return (u64::MAX, u64::MAX);
    };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!(from = soft, to = hard, "open file limit raised");
                return (hard, hard);
            }
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open file limit");
            }
        }
    }
    (soft, hard)
}

/// The soft limit in force now.
pub fn soft_limit() -> u64 {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) if soft != RLIM_INFINITY => soft,
        _ => u64::MAX,
    }
}

/// The staff view's connection limit under a soft limit of `soft` descriptors: the configured
/// one, lowered so that `other_http` (the upload endpoint's limit) and the view's connections
/// leave the reserve for `lines` lines.
pub fn view_connections(configured: usize, soft: u64, lines: usize, other_http: usize) -> usize {
    let reserve = RESERVE + PER_LINE * lines as u64 + other_http as u64;
    let room = soft.saturating_sub(reserve);
    let fitted = (configured as u64).min(room) as usize;
    fitted.max(MIN_VIEW_CONNECTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_gets_what_the_devices_leave() {
        // A generous limit: the configured value stands.
        assert_eq!(view_connections(256, 65_536, 4, 32), 256);
        // The old 1,024 default with 4 lines and the upload endpoint: 1024 - 256 - 64 - 32.
        assert_eq!(view_connections(1000, 1024, 4, 32), 672);
        // Far too tight: the view still answers a few.
        assert_eq!(view_connections(256, 300, 4, 32), MIN_VIEW_CONNECTIONS);
        assert_eq!(view_connections(256, u64::MAX, 1, 0), 256);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let (soft, hard) = raise_soft_limit();
        assert_eq!(soft, hard);
        assert!(soft_limit() >= 1024.min(soft));
    }
}
