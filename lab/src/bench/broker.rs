//! The broker side of the benches: the broker given on the command line or a Mosquitto
//! started for the run, and raw rumqttc QoS 1 publishing, the baseline the daemon's uplink
//! is measured against.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

use bondline::config::parse_host_port;

/// Publishes `n` copies of `payload` at QoS 1 with rumqttc and waits for every PUBACK.
pub(super) async fn raw_publish(
    host: &str,
    port: u16,
    n: u64,
    inflight: u16,
    payload: &[u8],
) -> anyhow::Result<Duration> {
    let mut opts = MqttOptions::new("bondline-bench-raw", host, port);
    opts.set_inflight(inflight)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, inflight as usize * 2);
    let payload = payload.to_vec();
    let publisher = tokio::spawn(async move {
        for _ in 0..n {
            client
                .publish("bench/raw", QoS::AtLeastOnce, false, payload.clone())
                .await?;
        }
        anyhow::Ok(client)
    });
    let mut acked = 0u64;
    let mut start = None;
    while acked < n {
        match events.poll().await? {
            Event::Incoming(Incoming::ConnAck(_)) => start = Some(Instant::now()),
            Event::Incoming(Incoming::PubAck(_)) => acked += 1,
            _ => {}
        }
    }
    let elapsed = start.map(|s| s.elapsed()).unwrap_or_default();
    let _client = publisher.await??;
    Ok(elapsed)
}

/// The broker given as host:port, or a Mosquitto started for the run (kept alive by the
/// returned guard).
pub(super) fn broker_or_mosquitto(
    broker: Option<String>,
    dir: &Path,
) -> anyhow::Result<(Option<Mosquitto>, String, u16)> {
    Ok(match broker {
        Some(b) => {
            let (h, p) = parse_host_port(&b).map_err(|e| anyhow::anyhow!(e))?;
            (None, h, p)
        }
        None => {
            let m = Mosquitto::start(dir)?;
            let port = m.port;
            (Some(m), "127.0.0.1".to_string(), port)
        }
    })
}

/// A Mosquitto process for the benchmarks, killed on drop.
pub(super) struct Mosquitto {
    port: u16,
    child: Child,
}

impl Mosquitto {
    fn start(dir: &Path) -> anyhow::Result<Mosquitto> {
        let bin = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("mosquitto");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\nmax_queued_messages 0\n"),
        )?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {bin} (install mosquitto or pass --broker)"))?;
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(5) {
                bail!("mosquitto did not start on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Mosquitto { port, child })
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
