//! `bondline-lab bench backlog`: a platform backlog of signed declarations, queued at a real
//! broker while the gateway was away, taken in by the whole daemon when it returns.
//!
//! The daemon ([`App::start`], one idle line) runs once so the broker keeps its persistent
//! session and subscriptions, and stops; the declarations are published, signed for this
//! gateway, while it is away; then the daemon starts again on the same journal and the run
//! measures, from its broker connection to the last message acknowledged: time, messages/s,
//! CPU (cores used, from the process's rusage), disconnects, and the journal's growth per
//! message on disk.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bondline_devices::contract::{topic, Declaration, DeclaredItem, SCHEMA};
use bondline_devices::signing::{sign, SigningKey, Target};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;

use bondline::app::App;
use bondline::metrics::Metrics;

const PREFIX: &str = "bench/backlog";
const GATEWAY: &str = "bench-gw";

/// Runs the benchmark with `n` declarations against `host:port`, the journal under `dir`.
pub async fn run(n: u64, host: &str, port: u16, dir: &Path) -> anyhow::Result<()> {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let floor = super::idle_floor::IdleFloor::start().await?;
    let store = dir.join("journal");
    let text = format!(
        "gateway_id = \"{GATEWAY}\"\n[trust]\nkeys = [{{ id = \"bench\", ed25519_public_hex = \"{}\" }}]\n\
         [storage]\npath = \"{}\"\n\
         [uplink]\nbroker = \"{host}:{port}\"\nclient_id = \"bondline-bench-backlog\"\n\
         topic_prefix = \"{PREFIX}\"\n\
         {}",
        hex::encode(key.verifying_key().as_bytes()),
        store.display(),
        floor.config()
    );
    let config = || {
        bondline::config::Config::parse("bench-backlog.toml", &text)
            .map_err(|e| anyhow::anyhow!("{e}"))
    };

    // First run: the broker learns the session and its subscriptions.
    let stop = CancellationToken::new();
    let app = App::start(config()?, stop.clone()).await?;
    let ready = Instant::now();
    while !app.metrics.uplink_ready.load(Ordering::Relaxed) {
        if ready.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("the gateway did not subscribe within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    app.wait().await?;
    // The journal's store and its platform log beside it.
    let platform_log = {
        let mut name = store.as_os_str().to_owned();
        name.push("-platform");
        std::path::PathBuf::from(name)
    };
    let bytes_before = dir_bytes(&store) + dir_bytes(&platform_log);

    println!("publishing {n} signed declarations while the gateway is away...");
    let published = Instant::now();
    publish(n, host, port, &key).await?;
    println!(
        "queued at the broker in {:.1} s",
        published.elapsed().as_secs_f64()
    );

    let cpu_before = cpu_seconds();
    let stop = CancellationToken::new();
    let start = Instant::now();
    let app = App::start(config()?, stop.clone()).await?;
    let metrics = app.metrics.clone();
    let mut connected = None;
    let mut peak_rss = 0u64;
    let outcome = loop {
        if connected.is_none() && metrics.uplink_ready.load(Ordering::Relaxed) {
            connected = Some(Instant::now());
        }
        peak_rss = peak_rss.max(super::resident_bytes());
        if Metrics::get(&metrics.platform_ingested) >= n {
            break Ok(());
        }
        if start.elapsed() > Duration::from_secs(3600) {
            break Err(anyhow::anyhow!(
                "the backlog did not drain within an hour ({} of {n} taken in)",
                Metrics::get(&metrics.platform_ingested)
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let elapsed = start.elapsed();
    let connected_for = connected.map_or(elapsed, |c| c.elapsed());
    let cpu = cpu_seconds() - cpu_before;
    let disconnects = Metrics::get(&metrics.uplink_disconnects);
    let distinct = Metrics::get(&metrics.platform_messages);
    let redeliveries = Metrics::get(&metrics.platform_redeliveries);
    let rejected = Metrics::get(&metrics.platform_rejected);
    stop.cancel();
    app.wait().await?;
    floor.stop().await;
    outcome?;
    let bytes_after = dir_bytes(&store) + dir_bytes(&platform_log);
    let rate = n as f64 / connected_for.as_secs_f64();
    println!(
        "platform backlog: {n} signed declarations taken in {:.2} s from connection ({:.2} s from start) = {rate:.0} msg/s; CPU {:.1} s = {:.2} cores; disconnects {disconnects}; distinct {distinct}, redeliveries {redeliveries}, rejected {rejected}; peak RSS {} MiB",
        connected_for.as_secs_f64(),
        elapsed.as_secs_f64(),
        cpu,
        cpu / elapsed.as_secs_f64(),
        peak_rss >> 20
    );
    println!(
        "journal growth: {} bytes on disk per platform message ({} MiB for {n})",
        bytes_after.saturating_sub(bytes_before) / n.max(1),
        bytes_after.saturating_sub(bytes_before) >> 20
    );
    Ok(())
}

/// Publishes `n` signed declarations at QoS 1 and waits for every PUBACK.
async fn publish(n: u64, host: &str, port: u16, key: &SigningKey) -> anyhow::Result<()> {
    let mut opts = MqttOptions::new("bench-backlog-platform", host, port);
    opts.set_inflight(1000)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 4096);
    let key = key.clone();
    let publisher = tokio::spawn(async move {
        let target = Target::gateway(GATEWAY);
        let signed_at = bondline::metrics::unix_ms(std::time::SystemTime::now());
        for k in 0..n {
            let mut d = Declaration {
                order_id: None,
                pieces: None,
                schema: SCHEMA,
                waybill: format!("BB{k:010}"),
                enterprise: "ENT-BENCH".into(),
                consumer: Some(format!("C{}", k % 50_000)),
                identity_verified: true,
                value_minor: Some(12_000),
                currency: Some("CNY".into()),
                gross_weight_g: Some(800),
                items: vec![DeclaredItem {
                    description: "books".into(),
                    quantity: 1,
                }],
                signature: None,
            };
            sign(&mut d, "bench", &key, signed_at, &target);
            let payload = serde_json::to_vec(&d).expect("declarations serialize");
            client
                .publish(
                    format!("{PREFIX}/{}", topic::DECLARATIONS),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await?;
        }
        Ok::<_, rumqttc::ClientError>(client)
    });
    let mut acked = 0u64;
    while acked < n {
        match tokio::time::timeout(Duration::from_secs(60), events.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("publishing the backlog: {e} after {acked}"),
            Err(_) => anyhow::bail!("the broker stopped acknowledging after {acked} of {n}"),
        }
    }
    let client = publisher.await??;
    let _ = client.disconnect().await;
    Ok(())
}

/// User and system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Bytes of the files under `dir`.
pub(super) fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
