//! Failed-login throttling, per source address.
//!
//! A request that presents credentials and is refused counts as a failure of its source
//! address (a request with no `Authorization` header at all does not: that is how a browser
//! asks which scheme to use). After `limit` failures within a minute, every further request
//! from that address is answered 429 with `Retry-After` until the minute is over, without its
//! credentials being checked, so guessing passwords costs a minute per `limit` guesses. A
//! success clears the address's count.
//!
//! Logging is once per burst: a warning when an address crosses the limit, and one line with
//! the number of refused requests when its minute ends, never one line per request.
//!
//! Memory is bounded: at most [`MAX_TRACKED`] addresses are tracked; beyond it the oldest
//! window is forgotten first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::{HttpServer, Metrics};

/// How long failures count.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most.
pub const MAX_TRACKED: usize = 4096;

/// What the throttle says about a request before its credentials are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Check the credentials.
    Check,
    /// Refuse with 429; the address may try again after this long.
    Throttled(Duration),
}

#[derive(Debug)]
struct Entry {
    window_start: Instant,
    failures: u32,
    /// Requests refused with 429 in this window.
    refused: u64,
}

/// The failed-login throttle of one server.
#[derive(Debug)]
pub struct Throttle {
    /// Failures per address and minute before it is throttled; 0 disables the throttle.
    limit: u32,
    server: HttpServer,
    entries: Mutex<HashMap<IpAddr, Entry>>,
    /// Where failures and refusals are counted.
    metrics: Arc<Metrics>,
}

impl Throttle {
    pub fn new(limit: u32, server: HttpServer, metrics: Arc<Metrics>) -> Throttle {
        Throttle {
            limit,
            server,
            entries: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a request from `addr` may have its credentials checked now.
    pub fn check(&self, addr: IpAddr, now: Instant) -> Verdict {
        if self.limit == 0 {
            return Verdict::Check;
        }
        let mut entries = self.entries();
        let Some(e) = entries.get_mut(&addr) else {
            return Verdict::Check;
        };
        let ends = e.window_start + WINDOW;
        if now >= ends {
            if e.refused > 0 {
                tracing::warn!(server = self.server.name(), %addr, refused = e.refused, "failed-login throttle lifted");
            }
            entries.remove(&addr);
            return Verdict::Check;
        }
        if e.failures >= self.limit {
            e.refused += 1;
            Metrics::add(&self.metrics.http(self.server).logins_throttled, 1);
            return Verdict::Throttled(ends - now);
        }
        Verdict::Check
    }

    /// Records the outcome of a credentials check from `addr`.
    pub fn record(&self, addr: IpAddr, ok: bool, now: Instant) {
        if self.limit == 0 {
            return;
        }
        let mut entries = self.entries();
        if ok {
            entries.remove(&addr);
            return;
        }
        Metrics::add(&self.metrics.http(self.server).login_failures, 1);
        if !entries.contains_key(&addr) && entries.len() >= MAX_TRACKED {
            entries.retain(|_, e| now < e.window_start + WINDOW);
            if entries.len() >= MAX_TRACKED {
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, e)| e.window_start)
                    .map(|(a, _)| *a);
                if let Some(a) = oldest {
                    entries.remove(&a);
                }
            }
        }
        let e = entries.entry(addr).or_insert(Entry {
            window_start: now,
            failures: 0,
            refused: 0,
        });
        if now >= e.window_start + WINDOW {
            *e = Entry {
                window_start: now,
                failures: 0,
                refused: 0,
            };
        }
        e.failures += 1;
        if e.failures == self.limit {
            tracing::warn!(
                server = self.server.name(),
                %addr,
                failures = e.failures,
                "failed logins: this address is refused (429) for the rest of the minute"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 8));

    #[test]
    fn an_address_is_refused_after_the_limit_until_its_minute_ends() {
        let t = Throttle::new(3, HttpServer::View, Arc::default());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.check(A, t0), Verdict::Check);
            t.record(A, false, t0);
        }
        let later = t0 + Duration::from_secs(20);
        assert_eq!(
            t.check(A, later),
            Verdict::Throttled(Duration::from_secs(40))
        );
        assert_eq!(
            t.check(B, later),
            Verdict::Check,
            "other addresses are not affected"
        );
        assert_eq!(
            t.check(A, t0 + WINDOW),
            Verdict::Check,
            "the minute is over"
        );
        assert_eq!(Metrics::get(&t.metrics.view_http.logins_throttled), 1);
        assert_eq!(Metrics::get(&t.metrics.view_http.login_failures), 3);
    }

    #[test]
    fn a_success_clears_the_count_and_zero_disables() {
        let t = Throttle::new(2, HttpServer::View, Arc::default());
        let t0 = Instant::now();
        t.record(A, false, t0);
        t.record(A, true, t0);
        t.record(A, false, t0);
        assert_eq!(t.check(A, t0), Verdict::Check);
        let off = Throttle::new(0, HttpServer::View, Arc::default());
        for _ in 0..100 {
            off.record(A, false, t0);
        }
        assert_eq!(off.check(A, t0), Verdict::Check);
    }

    #[test]
    fn tracked_addresses_are_bounded() {
        let t = Throttle::new(5, HttpServer::View, Arc::default());
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 100) {
            t.record(IpAddr::V4(std::net::Ipv4Addr::from(i)), false, t0);
        }
        assert!(t.entries().len() <= MAX_TRACKED);
    }
}
