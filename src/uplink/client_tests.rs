//! The uplink's MQTT client, batched writes included (`vendor/rumqttc/PATCHED.md`), against a
//! broker that stops reading for a while. The session's `select!` drops the event loop's
//! `poll()` future on every timer; a publish the client counts as sent must still reach the
//! wire. Upstream rumqttc 0.25 loses the packet it is writing when `poll()` is dropped while
//! the socket is full (260 of 401 arrived here, with and without batched writes); the patched
//! event loop flushes what an interrupted flush left before it writes anything more.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Outgoing, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// Publishes queued before the broker reads anything; each bigger than a tenth of the
/// write buffer's 8 KiB boundary, so batches reach it.
const PUBLISHES: usize = 400;
const PAYLOAD: usize = 1_500;

/// A broker that accepts one client, answers its CONNECT, reads nothing more until `go`,
/// then counts the PUBLISH packets it receives until `want` or a quiet second.
async fn stalling_broker(
    listener: tokio::net::TcpListener,
    go: oneshot::Receiver<()>,
    want: usize,
) -> usize {
    let (mut s, _) = listener.accept().await.unwrap();
    let mut buf = BytesMut::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "client closed before CONNECT");
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(Packet::Connect(_)) = Packet::read(&mut buf, 1 << 20) {
            break;
        }
    }
    // CONNACK: session not present, accepted.
    s.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
    let _ = go.await;
    let mut publishes = 0;
    while publishes < want {
        loop {
            match Packet::read(&mut buf, 1 << 20) {
                Ok(Packet::Publish(_)) => publishes += 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if publishes >= want {
            break;
        }
        let mut chunk = [0u8; 65536];
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    publishes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_poll_loses_no_publish() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // Small buffers on the broker's side, so the client's writes soon wait on the socket.
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (go_tx, go_rx) = oneshot::channel();
    let broker = tokio::spawn(stalling_broker(listener, go_rx, PUBLISHES + 1));

    let mut opts = MqttOptions::new("batch-test", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(60))
        .set_inflight(PUBLISHES as u16 + 2)
        .set_max_request_batch(64);
    let (client, mut events) = AsyncClient::new(opts, PUBLISHES + 8);
    let mut network = NetworkOptions::new();
    network.set_tcp_send_buffer_size(4096);
    events.set_network_options(network);
    match events.poll().await.unwrap() {
        Event::Incoming(Packet::ConnAck(_)) => {}
        other => panic!("expected CONNACK, got {other:?}"),
    }
    for _ in 0..PUBLISHES {
        client
            .try_publish("t", QoS::AtLeastOnce, false, vec![7u8; PAYLOAD])
            .unwrap();
    }
    // The broker reads nothing: polls time out inside writes and flushes, and each timeout
    // drops the event loop's future there, as the session's select does on its timers.
    let mut sent = 0;
    let mut interrupted = 0;
    for _ in 0..300 {
        match tokio::time::timeout(Duration::from_millis(2), events.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(_)))) => sent += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("the connection failed: {e}"),
            Err(_) => interrupted += 1,
        }
    }
    assert!(
        interrupted > 0,
        "no poll was interrupted: the socket never filled"
    );
    assert!(
        sent < PUBLISHES,
        "every publish went out before the broker read: the writes never waited"
    );
    // The broker reads again. A write that was interrupted leaves its bytes in the client's
    // buffer, flushed with the next request (or ping): one more publish is that request.
    let _ = go_tx.send(());
    client
        .try_publish("t", QoS::AtLeastOnce, false, vec![7u8; PAYLOAD])
        .unwrap();
    let total = PUBLISHES + 1;
    while sent < total {
        match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(_)))) => sent += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("the connection failed: {e}"),
            Err(_) => break,
        }
    }
    let received = broker.await.unwrap();
    assert_eq!(sent, total, "publishes counted as sent");
    assert_eq!(
        received, total,
        "publishes the broker received, of {sent} counted as sent"
    );
}
