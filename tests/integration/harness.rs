//! Shared test harness: real Mosquitto on a free port, pseudo-terminal pairs from socat,
//! temporary state directories, and a daemon configuration pointing at all of them.
//! Every process the harness starts is killed when its guard drops.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Where the ports [`loopback_port`] hands out start: below the kernel's ephemeral range
/// (32768–60999 by default, `/proc/sys/net/ipv4/ip_local_port_range`), so the kernel never
/// picks one of them for an outgoing connection's source port or for a `bind` to port 0.
const PORTS_FROM: u16 = 20_000;
/// Where they end (exclusive): the default start of the ephemeral range.
const PORTS_UNTIL: u16 = 32_768;
/// Each test process starts in its own block of this many ports, chosen by its pid, so two
/// test binaries running at once (two worktrees, two CI jobs) do not try the same ports first.
const PORTS_PER_PROCESS: u16 = 50;

/// A loopback TCP port for a server started by number (a broker, the daemon's staff view, an
/// address where nothing must listen), not bound by anyone else and never handed out before
/// in this process.
///
/// This cannot race the way binding port 0 and handing out its number does: such a port is
/// in the ephemeral range, so between its release and its use the kernel may give it to any
/// outgoing connection (the daemon's own, a broker client's) or to another bind to port 0;
/// and a broker restarted on its port after an outage would find it taken by the source
/// port of a client's reconnect. Ports here come from below that range, which the kernel
/// never assigns on its own; the process-wide counter never hands one out twice (until all
/// 12,768 have been, which no run comes near), so concurrent tests of this binary cannot
/// clash; and each candidate is checked free by a bind, which skips ports that other
/// programs (another test process whose block overlaps, a service of the machine) hold.
/// What remains is another program binding the very same number by name in the instant
/// between the check and the use, which nothing in a test run does.
pub fn loopback_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = PORTS_UNTIL - PORTS_FROM;
    let base =
        (std::process::id() % u32::from(span / PORTS_PER_PROCESS)) as u16 * PORTS_PER_PROCESS;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = PORTS_FROM + (base + n % span) % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PORTS_FROM}..{PORTS_UNTIL}")
}

/// Waits until `cond` holds, polling; returns false on timeout.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            return false;
        }
        // Fixed: polling tick; the conditions are plain reads with nothing to be woken by.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// The platform's chain check of gateway `test-gw` (the harness configuration's), asserted
/// whole: the only gateway heard from, records from `seq` 1 with every link verified, and no
/// problem (duplicates are allowed). With `head`, records up to exactly that `seq` arrived.
pub fn assert_chain_whole(
    platform: &bondline_simulators::platform::PlatformSim,
    head: Option<u64>,
) -> bondline_simulators::chain::ChainStatus {
    let chains = platform.chains();
    assert_eq!(
        chains.keys().collect::<Vec<_>>(),
        ["test-gw"],
        "records from other gateways than test-gw"
    );
    let chain = chains["test-gw"].clone();
    assert!(chain.ok(), "chain of test-gw: {chain}");
    assert_eq!(chain.first, Some(1), "chain of test-gw: {chain}");
    assert_eq!(chain.verified, chain.records, "chain of test-gw: {chain}");
    if let Some(head) = head {
        assert_eq!(chain.last, Some(head), "chain of test-gw: {chain}");
    }
    chain
}

fn require(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is needed by the integration tests: apt-get install -y mosquitto socat (.ci/run does this)"
    );
}

fn mosquitto_path() -> String {
    for p in ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"] {
        if Path::new(p).exists() {
            return p.to_string();
        }
    }
    require("mosquitto");
    "mosquitto".to_string()
}

/// A Mosquitto broker on a loopback port from [`loopback_port`] (Mosquitto cannot be told
/// to bind port 0 and say which it got). Can be stopped and started again on the same port
/// to simulate an outage.
pub struct Mosquitto {
    pub port: u16,
    dir: PathBuf,
    /// Extra lines for mosquitto.conf (limits, persistence).
    extra: String,
    child: Option<Child>,
}

impl Mosquitto {
    pub async fn start(dir: &Path) -> Mosquitto {
        Mosquitto::start_with(dir, "").await
    }

    /// Starts Mosquitto with extra configuration lines.
    pub async fn start_with(dir: &Path, extra: &str) -> Mosquitto {
        let mut m = Mosquitto {
            port: loopback_port(),
            dir: dir.to_path_buf(),
            extra: extra.to_string(),
            child: None,
        };
        m.restart().await;
        m
    }

    /// (Re)starts the broker on its port and waits until it accepts connections.
    pub async fn restart(&mut self) {
        self.stop();
        let conf = self.dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                // Per-listener security, so a test can add a TLS or password listener.
                "per_listener_settings true\nlistener {} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\nmax_queued_messages 1000000\n{}\n",
                self.port, self.extra
            ),
        )
        .expect("write mosquitto.conf");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .expect("mosquitto log");
        let child = Command::new(mosquitto_path())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let port = self.port;
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        assert!(up, "mosquitto did not start on port {port}");
    }

    /// Kills the broker at once (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the broker with SIGTERM, so it saves its persistent sessions.
    pub fn stop_gracefully(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, "TERM");
            let _ = c.wait();
        }
    }
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
}

/// The `bondline` daemon as a separate process, to be killed for real.
pub struct Daemon {
    child: Child,
}

impl Daemon {
    /// Starts `bondline run --config <config>`, logging to `<log>`.
    pub fn start(config: &Path, log: &Path) -> Daemon {
        Daemon::start_with_env(config, log, &[])
    }

    /// Like [`Daemon::start`], with the environment systemd gives a `Type=notify` service
    /// with a watchdog: `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (the daemon's own
    /// pid, hence the `exec` from a shell that knows it), and `JOURNAL_STREAM` for its
    /// output. The log format is left to the daemon (`auto`) and the level is `info`, as a
    /// unit runs it.
    pub fn start_as_service(
        config: &Path,
        log: &Path,
        notify: &Path,
        watchdog_usec: u64,
    ) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("daemon log");
        let child = Command::new("sh")
            .arg("-c")
            .arg("WATCHDOG_PID=$$ exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_bondline"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("JOURNAL_STREAM", "8:12345")
            .env("NOTIFY_SOCKET", notify)
            .env("WATCHDOG_USEC", watchdog_usec.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bondline");
        Daemon { child }
    }

    /// Like [`Daemon::start`], with extra environment variables.
    pub fn start_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("daemon log");
        let child = Command::new(env!("CARGO_BIN_EXE_bondline"))
            .args(["--log-format", "text", "run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bondline");
        Daemon { child }
    }

    /// SIGHUP: reload the rule file.
    pub fn hangup(&self) {
        signal(&self.child, "HUP");
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the daemon to exit by itself; its exit code, or `None` (the
    /// daemon is killed then).
    pub fn exit_within(mut self, timeout: std::time::Duration) -> Option<i32> {
        let started = std::time::Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM, then wait for the exit; returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        signal(&self.child, "TERM");
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two linked pseudo-terminals: bytes written to `a` are read from `b` and back, like a
/// null-modem cable between the scanner simulator and the daemon.
pub struct PtyPair {
    pub a: PathBuf,
    pub b: PathBuf,
    child: Child,
}

impl PtyPair {
    pub async fn new(dir: &Path, name: &str) -> PtyPair {
        require("socat");
        let a = dir.join(format!("{name}-a"));
        let b = dir.join(format!("{name}-b"));
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", a.display()))
            .arg(format!("pty,raw,echo=0,link={}", b.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat");
        let ok = wait_until(Duration::from_secs(5), || a.exists() && b.exists()).await;
        assert!(ok, "socat did not create the pty pair");
        PtyPair { a, b, child }
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a test line's scanner is.
pub enum ScannerAt<'a> {
    Serial(&'a Path),
    Tcp(std::net::SocketAddr),
}

/// Where a test's line devices are.
pub struct LineDevices<'a> {
    pub scanner: ScannerAt<'a>,
    pub plc: std::net::SocketAddr,
}

/// A daemon configuration for one line on the given devices and broker. `uplink_extra` is
/// added to the `[uplink]` table.
pub fn config_text(state: &Path, mqtt_port: u16, prefix: &str, dev: &LineDevices) -> String {
    config_text_with(state, mqtt_port, prefix, dev, "")
}

pub fn config_text_with(
    state: &Path,
    mqtt_port: u16,
    prefix: &str,
    dev: &LineDevices,
    uplink_extra: &str,
) -> String {
    let scanner = match dev.scanner {
        ScannerAt::Serial(p) => format!("serial = {{ path = \"{}\", baud = 115200 }}", p.display()),
        ScannerAt::Tcp(a) => format!("tcp = \"{a}\""),
    };
    format!(
        r#"
gateway_id = "test-gw"
# The test platform publishes unsigned messages; tests/integration/trust.rs signs.
[trust]
allow_unsigned = true
[storage]
path = "{state}"
flush_window_ms = 2
[uplink]
broker = "127.0.0.1:{mqtt_port}"
client_id = "bondline-test-{mqtt_port}"
topic_prefix = "{prefix}"
keep_alive_s = 5
reconnect_max_s = 2
{uplink_extra}
[devices.scanner-1]
profile = "scanner-stx-etx"
{scanner}
[devices.plc-1]
profile = "sorter-plc"
tcp = "{plc}"
[[lines]]
id = "L1"
scanner = "scanner-1"
plc = "plc-1"
lanes = [
  {{ lane = 1, role = "release" }},
  {{ lane = 2, role = "inspection" }},
  {{ lane = 3, role = "hold" }},
  {{ lane = 4, role = "exception" }},
]
"#,
        state = state.display(),
        plc = dev.plc,
    )
}

/// One test daemon's set-up, said once: the one-line configuration of [`config_text_with`]
/// in `dir` (journal `dir/journal`, file `dir/bondline.toml`, log `dir/daemon.log`), what a
/// test adds to it, and the ways to start it (the real binary, or the app in-process).
pub struct Setup {
    dir: PathBuf,
    mqtt_port: u16,
    prefix: String,
    scanner: ScannerPlace,
    plc: std::net::SocketAddr,
    uplink: String,
    view: Option<(std::net::SocketAddr, String)>,
    edits: Vec<(String, String)>,
    tail: String,
}

enum ScannerPlace {
    Serial(PathBuf),
    Tcp(std::net::SocketAddr),
}

impl Setup {
    /// A line whose scanner is at `scanner` and PLC at `plc`, on the broker at `mqtt_port`,
    /// under the topic prefix `bondline/test-gw`.
    pub fn new(dir: &Path, mqtt_port: u16, scanner: ScannerAt, plc: std::net::SocketAddr) -> Setup {
        Setup {
            dir: dir.to_path_buf(),
            mqtt_port,
            prefix: "bondline/test-gw".into(),
            scanner: match scanner {
                ScannerAt::Serial(p) => ScannerPlace::Serial(p.to_path_buf()),
                ScannerAt::Tcp(a) => ScannerPlace::Tcp(a),
            },
            plc,
            uplink: String::new(),
            view: None,
            edits: Vec::new(),
            tail: String::new(),
        }
    }

    /// A line on a [`Floor`]'s scanner and PLC.
    pub fn on_floor(dir: &Path, mqtt_port: u16, floor: &Floor) -> Setup {
        Setup::new(dir, mqtt_port, ScannerAt::Tcp(floor.scanner), floor.plc)
    }

    pub fn prefix(mut self, prefix: &str) -> Setup {
        self.prefix = prefix.into();
        self
    }

    /// Lines added to the `[uplink]` table.
    pub fn uplink(mut self, extra: &str) -> Setup {
        self.uplink = extra.into();
        self
    }

    /// The staff view on a port from [`loopback_port`] (the daemon runs as its own process,
    /// which cannot say which port 0 gave it); `extra` lines go into its table.
    pub fn view(mut self, extra: &str) -> Setup {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], loopback_port()));
        self.view = Some((addr, extra.into()));
        self
    }

    /// Where the staff view listens; panics without [`Setup::view`].
    pub fn view_addr(&self) -> std::net::SocketAddr {
        self.view.as_ref().expect("a set-up with a view").0
    }

    /// Replaces `from` with `to` in the configuration text (a setting of the base text).
    pub fn replace(mut self, from: &str, to: &str) -> Setup {
        self.edits.push((from.into(), to.into()));
        self
    }

    /// Text appended to the configuration (more tables, a second line).
    pub fn append(mut self, text: &str) -> Setup {
        self.tail.push_str(text);
        self
    }

    /// The daemon's journal.
    pub fn store(&self) -> PathBuf {
        self.dir.join("journal")
    }

    /// The configuration file [`Setup::write`] writes.
    pub fn config(&self) -> PathBuf {
        self.dir.join("bondline.toml")
    }

    /// The log [`Setup::start`] writes.
    pub fn log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    pub fn text(&self) -> String {
        let scanner = match &self.scanner {
            ScannerPlace::Serial(p) => ScannerAt::Serial(p),
            ScannerPlace::Tcp(a) => ScannerAt::Tcp(*a),
        };
        let devices = LineDevices {
            scanner,
            plc: self.plc,
        };
        let mut text = config_text_with(
            &self.store(),
            self.mqtt_port,
            &self.prefix,
            &devices,
            &self.uplink,
        );
        for (from, to) in &self.edits {
            assert!(
                text.contains(from.as_str()),
                "no `{from}` in the configuration"
            );
            text = text.replace(from.as_str(), to);
        }
        if let Some((addr, extra)) = &self.view {
            text += &format!("\n[view]\nlisten = \"{addr}\"\n{extra}\n");
        }
        text + &self.tail
    }

    /// Writes the configuration file; returns its path.
    pub fn write(&self) -> PathBuf {
        let path = self.config();
        std::fs::write(&path, self.text()).expect("write the configuration");
        path
    }

    /// Writes the configuration and starts the real binary on it, logging to [`Setup::log`].
    pub fn start(&self) -> Daemon {
        Daemon::start(&self.write(), &self.log())
    }

    /// The daemon in-process, on the configuration as text (nothing written).
    pub async fn start_app(
        &self,
        stop: &tokio_util::sync::CancellationToken,
    ) -> bondline::app::App {
        let config = bondline::config::Config::parse("test.toml", &self.text())
            .expect("a valid test configuration");
        bondline::app::App::start(config, stop.clone())
            .await
            .expect("the app starts")
    }
}

/// plc-sim as the tests use it: it reports each parcel's disposition 1.2 s after its first
/// command, as if the parcel reached its gate then (the lines' default deadline).
pub fn plc_options() -> bondline_simulators::plc::PlcOptions {
    bondline_simulators::plc::PlcOptions {
        auto_dispose_after: Some(std::time::Duration::from_millis(1200)),
        ..Default::default()
    }
}

/// Logs of the daemon under test, when `RUST_LOG` is set (for example `RUST_LOG=bondline=debug
/// cargo test -- --nocapture`).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Waits until `value` has not changed for `quiet` (records still trickling in, such as the
/// PLC's dispositions of the last parcels, have stopped); false after `timeout`.
pub async fn settle(timeout: Duration, quiet: Duration, value: impl Fn() -> u64) -> bool {
    let start = Instant::now();
    let mut last = value();
    let mut since = Instant::now();
    while start.elapsed() < timeout {
        // Fixed: polling tick; "no change for `quiet`" can only be seen by looking again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = value();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return true;
        }
    }
    false
}

/// Starts plc-sim (built-in `sorter-plc` profile, [`plc_options`]) on a free port; it stops
/// when `stop` is cancelled.
pub async fn start_plc(
    stop: &tokio_util::sync::CancellationToken,
) -> (std::net::SocketAddr, bondline_simulators::plc::PlcState) {
    let profiles = bondline_devices::Profiles::builtin();
    let plc = bondline_simulators::plc::PlcSim::bind_with(
        "127.0.0.1:0".parse().expect("a socket address"),
        profiles
            .get("sorter-plc")
            .and_then(|p| p.plc())
            .expect("built-in PLC profile")
            .clone(),
        plc_options(),
    )
    .await
    .expect("bind plc-sim");
    let (addr, state) = (plc.local_addr(), plc.state());
    tokio::spawn(plc.run(stop.clone().cancelled_owned()));
    (addr, state)
}

/// A PLC simulator and a TCP scanner simulator, with a stop token for both.
pub struct Floor {
    pub plc: std::net::SocketAddr,
    pub plc_state: bondline_simulators::plc::PlcState,
    pub scanner: std::net::SocketAddr,
    pub stop_scanner: tokio_util::sync::CancellationToken,
    pub scanner_task: tokio::task::JoinHandle<anyhow::Result<u64>>,
    _stop_plc: tokio_util::sync::DropGuard,
}

pub async fn floor(plan: bondline_simulators::plan::Plan, rate: f64, count: Option<u64>) -> Floor {
    let (floor, go) = floor_held(plan, rate, count).await;
    let _ = go.send(());
    floor
}

/// A floor whose scanner sends its first frame only once the returned sender fires (or is
/// dropped): for a test that must have the platform's messages in before any parcel.
pub async fn floor_held(
    plan: bondline_simulators::plan::Plan,
    rate: f64,
    count: Option<u64>,
) -> (Floor, tokio::sync::oneshot::Sender<()>) {
    let (go, start) = tokio::sync::oneshot::channel::<()>();
    let stop_plc = tokio_util::sync::CancellationToken::new();
    let (plc_addr, plc_state) = start_plc(&stop_plc).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scanner_addr = listener.local_addr().unwrap();
    let sim = bondline_simulators::scanner::ScannerSim {
        framing: stx_etx(),
        plan,
        rate_per_s: rate,
        count,
        start_index: 0,
    };
    let stop_scanner = tokio_util::sync::CancellationToken::new();
    let scanner_task = tokio::spawn({
        let stop = stop_scanner.clone();
        async move {
            let _ = start.await;
            sim.run_tcp(listener, stop.cancelled_owned()).await
        }
    });
    let floor = Floor {
        plc: plc_addr,
        plc_state,
        scanner: scanner_addr,
        stop_scanner,
        scanner_task,
        _stop_plc: stop_plc.drop_guard(),
    };
    (floor, go)
}

/// The built-in `scanner-stx-etx` framing the tests' scanners speak.
pub fn stx_etx() -> bondline_devices::framing::ScannerFraming {
    bondline_devices::Profiles::builtin()
        .get("scanner-stx-etx")
        .and_then(|p| p.scanner())
        .expect("built-in scanner profile")
        .clone()
}

/// A parcel record as a generated journal holds it: parcel `i` of gateway `gateway`, line
/// L1, waybill `BL{i:08}` read and decided at `at` for the lane of `role` (1 release,
/// 2 inspection, 3 hold, 4 exception) by the `undeclared` rule, its divert acknowledged at
/// once; first revision, nothing else known. A test sets the fields its scenario is about
/// with `ParcelRecord { field, ..parcel_record(…) }`.
pub fn parcel_record(
    gateway: &str,
    i: u64,
    at: u64,
    role: bondline_devices::contract::LaneRole,
) -> bondline_devices::contract::ParcelRecord {
    use bondline_devices::contract::{
        DivertOutcome, DivertStatus, LaneRole, ParcelRecord, ReadOutcome, SCHEMA,
    };
    ParcelRecord {
        schema: SCHEMA,
        msg_id: String::new(),
        seq: 0,
        prev_hash: String::new(),
        gateway: gateway.into(),
        line: "L1".into(),
        parcel: i as u32,
        read: ReadOutcome::Ok,
        waybill: Some(format!("BL{i:08}")),
        lane: match role {
            LaneRole::Release => 1,
            LaneRole::Inspection => 2,
            LaneRole::Hold => 3,
            LaneRole::Exception => 4,
        },
        lane_role: role,
        rule: "undeclared".into(),
        reason: "no declaration for this waybill".into(),
        instruction_id: None,
        scanned_at_ms: at,
        decided_at_ms: at,
        divert: DivertOutcome {
            status: DivertStatus::Acked,
            plc_seq: Some(1),
            detail: None,
            at_ms: at,
            late: false,
        },
        revision: 0,
        deadline_ms: None,
        rule_set: None,
        rules_fired: Vec::new(),
        inputs: None,
    }
}

/// A stopped gateway's journal at `store` holding `records` in order, written by the real
/// writer (which gives them their sequence numbers and hash chain).
pub fn write_journal(
    store: &Path,
    records: impl IntoIterator<Item = bondline_devices::contract::Record>,
) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let journal = bondline::journal::Journal::open(store).unwrap();
        let (sink, writer, _) = bondline::journal::record_sink(
            journal,
            Duration::from_millis(1),
            std::sync::Arc::new(bondline::metrics::Metrics::default()),
        )
        .unwrap();
        let task = tokio::spawn(writer.run());
        for r in records {
            sink.push(r);
        }
        drop(sink);
        task.await.unwrap();
    });
}

/// The whole `/metrics` text of a daemon's staff view, if it answers.
pub fn metrics_text(view: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(view).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: view\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

/// One unlabelled sample from a daemon's `/metrics`.
pub fn metric(view: std::net::SocketAddr, name: &str) -> Option<f64> {
    metrics_text(view)?
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// GET `path` from a staff view over plain HTTP: status and body, or `None` when nothing
/// answers.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Some((status, body))
}

/// Whether the staff view at `view` answers `/readyz` with 200 within `within`.
pub async fn view_ready(view: std::net::SocketAddr, within: Duration) -> bool {
    wait_until(within, || {
        matches!(http_get(view, "/readyz"), Some((200, _)))
    })
    .await
}

/// One line with a staff view, a scanner socket the test accepts on, a PLC simulator and a
/// Mosquitto of its own, configured but not started: the daemon runs from `config`.
pub struct ViewLine {
    pub dir: tempfile::TempDir,
    pub mosquitto: Mosquitto,
    pub scanner: tokio::net::TcpListener,
    pub store: PathBuf,
    pub config: PathBuf,
    pub view: std::net::SocketAddr,
    pub log: PathBuf,
    /// The PLC simulator's state: the commands it received.
    pub plc: bondline_simulators::plc::PlcState,
    /// Stops the PLC simulator when the test ends.
    pub stop: tokio_util::sync::DropGuard,
}

impl ViewLine {
    pub async fn start() -> ViewLine {
        let dir = tempfile::tempdir().unwrap();
        let mosquitto = Mosquitto::start(dir.path()).await;
        let stop = tokio_util::sync::CancellationToken::new();
        let (plc, plc_state) = start_plc(&stop).await;
        let scanner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let setup = Setup::new(
            dir.path(),
            mosquitto.port,
            ScannerAt::Tcp(scanner.local_addr().unwrap()),
            plc,
        )
        .view("");
        ViewLine {
            store: setup.store(),
            config: setup.write(),
            view: setup.view_addr(),
            log: setup.log(),
            dir,
            mosquitto,
            scanner,
            plc: plc_state,
            stop: stop.drop_guard(),
        }
    }
}

/// The framing of the built-in weighing scanner station (`dws-stx-etx`), for tests that write
/// its frames themselves.
pub fn dws_framing() -> bondline_devices::framing::ScannerFraming {
    bondline_devices::Profiles::builtin()
        .get("dws-stx-etx")
        .unwrap()
        .scanner()
        .unwrap()
        .clone()
}
