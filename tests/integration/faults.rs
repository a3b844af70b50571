//! Device faults on real transports: a scanner unplugged and plugged back (the pseudo-terminal
//! closed and recreated), and a PLC connection that goes half-open (the peer stops answering
//! without closing). Parcels keep being recorded, nothing is released without a decision,
//! and both links come back on their own.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bondline::metrics::Metrics;
use bondline_devices::contract::LaneRole;
use bondline_simulators::plan::{Mix, Plan, PlanKind};
use bondline_simulators::scanner::ScannerSim;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::harness::stx_etx;
use crate::harness::{wait_until, Mosquitto, PtyPair, ScannerAt, Setup};

fn link_up(m: &Metrics, name: &str) -> Option<bool> {
    m.links().get(name).map(|s| s.up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scanner_unplugged_and_plugged_back_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path()).await;
    let stop = CancellationToken::new();
    let (plc_addr, _) = crate::harness::start_plc(&stop).await;
    let pty = PtyPair::new(dir.path(), "scanner").await;
    let app = Setup::new(
        dir.path(),
        mosquitto.port,
        ScannerAt::Serial(&pty.b),
        plc_addr,
    )
    .start_app(&stop)
    .await;
    let m = app.metrics.clone();
    let framing = stx_etx();
    let plan = Plan::with_mix(21, Mix::only(PlanKind::Undeclared));
    let burst = |start: u64| ScannerSim {
        framing: framing.clone(),
        plan: plan.clone(),
        rate_per_s: 200.0,
        count: Some(20),
        start_index: start,
    };
    assert!(
        wait_until(Duration::from_secs(5), || link_up(&m, "scanner:scanner-1")
            == Some(true))
        .await
    );
    burst(0)
        .run_serial(pty.a.to_str().unwrap(), 115_200, std::future::pending())
        .await
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || Metrics::get(&m.parcels) == 20).await);

    // Unplug: the pseudo-terminal pair goes away; the daemon sees its port fail.
    let (a, b) = (pty.a.clone(), pty.b.clone());
    drop(pty);
    assert!(
        wait_until(Duration::from_secs(5), || link_up(&m, "scanner:scanner-1")
            == Some(false))
        .await,
        "the unplugged scanner was not noticed"
    );
    // Plug back in: the same device names appear again, and the daemon reopens them.
    let pty = PtyPair::new(dir.path(), "scanner").await;
    assert_eq!((&pty.a, &pty.b), (&a, &b));
    assert!(
        wait_until(Duration::from_secs(15), || link_up(&m, "scanner:scanner-1")
            == Some(true))
        .await,
        "the scanner was not reopened"
    );
    burst(20)
        .run_serial(pty.a.to_str().unwrap(), 115_200, std::future::pending())
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || Metrics::get(&m.parcels) == 40).await,
        "{}",
        m.summary()
    );
    assert_eq!(m.lane_count(LaneRole::Release), 0);
    stop.cancel();
    app.wait().await.unwrap();
}

/// A TCP relay that can be frozen: while frozen it keeps both connections open and passes
/// nothing, like a peer whose network vanished without a FIN.
async fn relay(target: SocketAddr, frozen: Arc<AtomicBool>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let f1 = frozen.clone();
            let f2 = frozen.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || f1.load(Ordering::Relaxed) {
                        break;
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                // Frozen: hold the connection open and silent.
                std::future::pending::<()>().await;
            });
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 || f2.load(Ordering::Relaxed) {
                        break;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                std::future::pending::<()>().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_plc_connection_is_dropped_and_made_anew() {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path()).await;
    let stop = CancellationToken::new();
    let (plc_addr, _) = crate::harness::start_plc(&stop).await;
    let frozen = Arc::new(AtomicBool::new(false));
    let via = relay(plc_addr, frozen.clone()).await;
    let scanner_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scanner_addr = scanner_listener.local_addr().unwrap();
    let app = Setup::new(
        dir.path(),
        mosquitto.port,
        ScannerAt::Tcp(scanner_addr),
        via,
    )
    .start_app(&stop)
    .await;
    let m = app.metrics.clone();
    let scanner = ScannerSim {
        framing: stx_etx(),
        plan: Plan::new(22),
        rate_per_s: 50.0,
        count: None,
        start_index: 0,
    };
    let stop_scanner = CancellationToken::new();
    tokio::spawn({
        let stop = stop_scanner.clone();
        async move {
            scanner
                .run_tcp(scanner_listener, stop.cancelled_owned())
                .await
        }
    });
    assert!(
        wait_until(Duration::from_secs(10), || Metrics::get(&m.diverts_acked)
            >= 20)
        .await,
        "{}",
        m.summary()
    );

    // The link goes half-open: no FIN, no RST, just silence.
    frozen.store(true, Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(5), || link_up(&m, "plc:plc-1")
            == Some(false))
        .await,
        "a silent PLC connection was not noticed"
    );
    let failed = Metrics::get(&m.diverts_failed);
    assert!(
        wait_until(Duration::from_secs(5), || Metrics::get(&m.diverts_failed)
            > failed + 5)
        .await,
        "parcels stopped being recorded while the PLC was unreachable"
    );
    // The network comes back: the daemon connects anew and diverts are acknowledged again.
    frozen.store(false, Ordering::Relaxed);
    let acked = Metrics::get(&m.diverts_acked);
    assert!(
        wait_until(Duration::from_secs(20), || link_up(&m, "plc:plc-1")
            == Some(true)
            && Metrics::get(&m.diverts_acked) > acked + 10)
        .await,
        "{}",
        m.summary()
    );
    stop_scanner.cancel();
    // The last parcels' diverts end (acknowledged or failed) before the stop.
    let settled = || {
        Metrics::get(&m.parcels) == Metrics::get(&m.diverts_acked) + Metrics::get(&m.diverts_failed)
    };
    assert!(
        wait_until(Duration::from_secs(10), settled).await,
        "diverts still open: {}",
        m.summary()
    );
    stop.cancel();
    app.wait().await.unwrap();
    assert_eq!(Metrics::get(&m.released_without_decision), 0);
    // Every parcel has its record, with what happened to its divert.
    assert_eq!(
        Metrics::get(&m.parcels),
        Metrics::get(&m.diverts_acked) + Metrics::get(&m.diverts_failed)
    );
}
