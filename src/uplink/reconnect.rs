//! The uplink's life across sessions: [`Uplink::run`] starts one session after another,
//! with backoff and jitter (cut short when a probe finds the broker back), and judges each
//! ending: a record left unacknowledged by [`POISON_SESSIONS`] sessions in a row is parked,
//! a run of sessions ended by an unreadable platform message is reported once, a session the
//! broker lost or took over is raised.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bondline_devices::contract::AlertKind;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::feed::park;
use super::unreadable::read_limit_after;
use super::{probe, refusals, session_watch, Uplink, LINK, POISON_SESSIONS};
use crate::backoff::Backoff;
use crate::metrics::Metrics;

/// A session that lasted this long resets the reconnect backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

impl Uplink {
    /// Runs sessions until `shutdown`, reconnecting with backoff and jitter.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(250), self.config.reconnect_max);
        // The record that was left unacknowledged by the last sessions, and how many in a row.
        let mut suspect: Option<(u64, u32)> = None;
        // Sessions in a row that ended on a packet the client could not read.
        let mut unreadable_run = 0u32;
        // The client's read limit for the next session (see [`read_limit_after`]).
        let mut read_limit = self.config.max_incoming_bytes;
        loop {
            let mut anomalies = std::mem::replace(&mut self.anomalies, mpsc::channel(1).1);
            let end = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.session(&mut anomalies, read_limit, suspect.map(|(seq, _)| seq)) => r,
            };
            read_limit = read_limit_after(self.config.max_incoming_bytes, end.oversized);
            self.anomalies = anomalies;
            self.metrics.uplink_ready.store(false, Ordering::Relaxed);
            Metrics::add(&self.metrics.uplink_disconnects, 1);
            self.metrics.set_link(LINK, false, Some(end.reason.clone()));
            if end.cut_by_broker {
                let found = self
                    .session_watch
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .cut_by_broker(std::time::Instant::now());
                if let Some(f) = found {
                    self.report_session(&f);
                    *self
                        .session_finding
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(f);
                }
            }
            if end.unreadable {
                unreadable_run += 1;
                if unreadable_run == 1 {
                    self.report_unreadable(&end.reason, end.oversized.is_some());
                }
            } else {
                unreadable_run = 0;
            }
            if end.lasted >= HEALTHY_SESSION && !end.unreadable {
                backoff.reset();
            }
            suspect = match (end.poison_suspect, suspect) {
                (Some(seq), Some((s, n))) if s == seq => Some((seq, n + 1)),
                (Some(seq), _) => Some((seq, 1)),
                (None, _) => None,
            };
            if let Some((seq, n)) = suspect {
                if n >= POISON_SESSIONS {
                    self.park(
                        seq,
                        &format!("the broker closed the connection {n} times in a row right after this record was sent ({})", end.reason),
                    ).await;
                    suspect = None;
                }
            }
            let wait = backoff.next_delay();
            warn!(error = %end.reason, retry_in = ?wait, "broker link down");
            // Probing cheaply meanwhile: a broker that was down is used again within a probe
            // interval of its return (see `probe`).
            let (host, port) = (&self.config.host, self.config.port);
            match probe::wait_out(host, port, wait, end.unreachable, &shutdown).await {
                probe::WaitEnd::Cancelled => return,
                probe::WaitEnd::BrokerBack => {
                    info!("the broker is reachable again; reconnecting before the backoff ends")
                }
                probe::WaitEnd::Elapsed => {}
            }
        }
    }

    /// A platform message the client cannot read cut the session: refused, journaled and
    /// raised once per run of such sessions. The broker delivers it again: one over the read
    /// limit is then read once and refused like any oversized message; a malformed one ends
    /// every session until the broker stops delivering it.
    fn report_unreadable(&self, reason: &str, oversized: bool) {
        Metrics::add(&self.metrics.platform_rejected, 1);
        let detail = if oversized {
            format!(
                "a platform message over the read limit ended a session: {reason}; the next session reads it once to refuse it; set the broker's packet limit below uplink.max_incoming_kib (docs/mqtt.md)"
            )
        } else {
            format!(
                "a platform message could not be read and ends every session until the broker stops delivering it: {reason}; set the broker's packet limit below uplink.max_incoming_kib (docs/mqtt.md)"
            )
        };
        warn!(%reason, "platform message unreadable; the session is ended and retried with backoff");
        let _ = self.refusals.send(refusals::Refusal {
            alert: AlertKind::RejectedMessage,
            detail: detail.clone(),
        });
        self.alarms.raise(detail);
    }

    /// Raises a lost or taken-over session: an alarm, and a journaled `broker_session`
    /// alert delivered like any record.
    pub(super) fn report_session(&self, f: &session_watch::Finding) {
        warn!(finding = ?f, "broker session not safe");
        self.alarms.raise(format!("broker session: {}", f.detail()));
        let _ = self.refusals.send(refusals::Refusal {
            alert: AlertKind::BrokerSession,
            detail: f.detail(),
        });
    }

    /// Parks a record the broker will not take, with an alarm.
    async fn park(&self, seq: u64, reason: &str) {
        park(&self.journal, &self.metrics, &self.alarms, seq, reason).await;
    }
}
