//! Waiting out the reconnect backoff without missing the broker's return.
//!
//! A full session attempt costs the broker a TCP and TLS handshake and a CONNECT that resumes
//! a persistent session, so attempts back off exponentially up to `reconnect_max_s`. A broker
//! that was down returns at a moment nobody knows, and the backoff alone can leave the
//! platform without data for up to `reconnect_max_s` after it is back (87 s after a 60-s
//! outage with the default 30 s, measured). So while the backoff runs, the uplink *probes*:
//! a plain TCP connect to the broker's address every [`PROBE_EVERY`] (jittered), closed at
//! once without a byte sent, which costs a broker that is down nothing but a refused SYN.
//!
//! The wait ends early only when a probe connects **after the broker was found unreachable**
//! (by a probe of the same wait, or by the session attempt that led to it, whose TCP
//! connection was refused): the broker was down and is back. If the first probe connects
//! after a session that did reach the broker, the broker is
//! reachable and the session ended for another reason (credentials or TLS material refused,
//! a broker that drops the connection on a packet it will not take, a keep-alive lost): the
//! full backoff is kept, so such a broker is not hammered with sessions either.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Mean time between two probes; each is drawn between half and one and a half times this.
pub const PROBE_EVERY: Duration = Duration::from_millis(1500);
/// How long a probe waits for the TCP handshake.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// The whole backoff went by.
    Elapsed,
    /// A probe found the broker back after one had found it unreachable.
    BrokerBack,
    Cancelled,
}

/// Whether a TCP connection to `host:port` opens within [`PROBE_TIMEOUT`].
pub async fn reachable(host: &str, port: u16) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect((host, port))).await,
        Ok(Ok(_))
    )
}

/// Waits for `backoff` or, once the broker was found down (`down`: the last session could
/// not reach it; or a probe of this wait), until a probe finds it up.
pub async fn wait_out(
    host: &str,
    port: u16,
    backoff: Duration,
    down: bool,
    stop: &CancellationToken,
) -> WaitEnd {
    let deadline = tokio::time::Instant::now() + backoff;
    let mut was_down = down;
    loop {
        let jitter = rand::thread_rng().gen_range(0.5..1.5);
        let next = tokio::time::Instant::now() + PROBE_EVERY.mul_f64(jitter);
        if next >= deadline {
            tokio::select! {
                _ = stop.cancelled() => return WaitEnd::Cancelled,
                _ = tokio::time::sleep_until(deadline) => return WaitEnd::Elapsed,
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return WaitEnd::Cancelled,
            _ = tokio::time::sleep_until(next) => {}
        }
        let up = tokio::select! {
            _ = stop.cancelled() => return WaitEnd::Cancelled,
            up = reachable(host, port) => up,
        };
        match (up, was_down) {
            (true, true) => return WaitEnd::BrokerBack,
            (false, _) => was_down = true,
            (true, false) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port nothing listens on: bound, then closed.
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn a_broker_that_comes_back_ends_the_wait_early() {
        let port = closed_port();
        let stop = CancellationToken::new();
        let started = std::time::Instant::now();
        let wait = tokio::spawn({
            let stop = stop.clone();
            async move { wait_out("127.0.0.1", port, Duration::from_secs(60), false, &stop).await }
        });
        // Down for the first probes, then back on the same port.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        assert_eq!(wait.await.unwrap(), WaitEnd::BrokerBack);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_reachable_broker_gets_the_full_backoff() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = CancellationToken::new();
        let started = std::time::Instant::now();
        let end = wait_out("127.0.0.1", port, Duration::from_secs(4), false, &stop).await;
        assert_eq!(end, WaitEnd::Elapsed);
        assert!(started.elapsed() >= Duration::from_secs(4));
    }

    #[tokio::test]
    async fn a_broker_back_since_a_refused_session_is_used_at_the_first_probe() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = CancellationToken::new();
        let end = wait_out("127.0.0.1", port, Duration::from_secs(60), true, &stop).await;
        assert_eq!(end, WaitEnd::BrokerBack);
    }

    #[tokio::test]
    async fn a_stop_ends_the_wait() {
        let stop = CancellationToken::new();
        stop.cancel();
        let end = wait_out(
            "127.0.0.1",
            closed_port(),
            Duration::from_secs(60),
            true,
            &stop,
        )
        .await;
        assert_eq!(end, WaitEnd::Cancelled);
    }
}
