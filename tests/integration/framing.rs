//! The real binary on a hostile scanner link: garbage that leaves a frame open at exactly the
//! over-long limit must not swallow the valid frame that follows (the decoder's own cases
//! are in devices/src/framing.rs and its oracle in devices/src/test_support.rs).

use std::time::Duration;

use bondline::journal::Journal;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::harness::{loopback_port, start_plc, wait_until, ScannerAt, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_frame_after_garbage_at_the_over_long_limit_is_decided() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let (plc, plc_state) = start_plc(&stop).await;
    let scanner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // No broker: deciding never waits on the uplink.
    let setup = Setup::new(
        dir.path(),
        loopback_port(),
        ScannerAt::Tcp(scanner.local_addr().unwrap()),
        plc,
    )
    .prefix("bondline/framing-gw");
    let state = setup.store();
    let daemon = setup.start();
    let (mut link, _) = tokio::time::timeout(Duration::from_secs(30), scanner.accept())
        .await
        .expect("the daemon connects to the scanner")
        .unwrap();

    // scanner-stx-etx: max_len 40 + ETX = 41 bytes of content is the limit. Each round leaves
    // a frame open with exactly 41 bytes of garbage, then sends a valid frame, in separate
    // writes and in one.
    let waybills: Vec<String> = (1..=6).map(|i| format!("BLGARB{i:06}")).collect();
    for (i, w) in waybills.iter().enumerate() {
        let mut garbage = b"\x02".to_vec();
        garbage.extend(std::iter::repeat_n(b'G', 41));
        let frame = format!("\x02{w}\x03").into_bytes();
        if i % 2 == 0 {
            link.write_all(&garbage).await.unwrap();
            link.flush().await.unwrap();
            // Fixed: the pause makes the two writes two reads at the daemon; nothing tells
            // when it has read the first.
            tokio::time::sleep(Duration::from_millis(20)).await;
            link.write_all(&frame).await.unwrap();
        } else {
            link.write_all(&[garbage, frame].concat()).await.unwrap();
        }
        link.flush().await.unwrap();
        let want = i + 1;
        assert!(
            wait_until(Duration::from_secs(10), || plc_state.divert_count() >= want).await,
            "the valid frame after garbage round {want} got no divert command"
        );
    }
    assert_eq!(plc_state.divert_count(), waybills.len());
    assert_eq!(daemon.terminate(), Some(0));
    stop.cancel();

    let journal = Journal::open(&state).unwrap();
    let (head, _) = journal.chain_head().unwrap();
    let recorded: Vec<String> = (1..=head)
        .filter_map(|seq| journal.record(seq).unwrap())
        .filter_map(|r| r.waybill().map(str::to_string))
        .collect();
    for w in &waybills {
        assert!(recorded.contains(w), "no record for {w}: {recorded:?}");
    }
}
