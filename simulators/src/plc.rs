//! `plc-sim`: a sorter PLC's Modbus interface, as described by a [`PlcMap`] profile.
//!
//! The simulator holds 65536 holding registers and implements the whole PLC contract of
//! [`bondline_devices::plc`]:
//!
//! - **Divert commands.** When the controller writes a whole divert block (one "write multiple
//!   registers" of four words at `divert.block`) the simulator records the command and copies
//!   its sequence into `divert.ack`, which is the acknowledge the controller polls for. Partial
//!   or misaligned writes are stored like any register write but are not commands, as on a real
//!   PLC whose program only reacts to the sequence word of a complete block. A later command
//!   for the same parcel id replaces the earlier one ([`PlcState::command_for`]).
//! - **Heartbeat** (profiles with a `heartbeat` section). While [`PlcSim::run`] (or
//!   [`serve_rtu`]) serves, the PLC increments its own counter every `interval_ms` and watches
//!   the controller's: a counter that has not changed for `timeout_ms` puts the PLC in
//!   fail-safe mode, in which every parcel goes to the fail-safe lane; the next change takes it
//!   out again. **A PLC starts in fail-safe mode** and leaves it only when it sees the
//!   controller's counter change for the first time: a PLC must not sort on the word of a
//!   controller it has never heard from. The PLC's counter stands still while the PLC refuses
//!   requests ([`PlcState::set_refuse`]), as a PLC in stop mode runs no program.
//! - **Lane states** (profiles with a `status` section): [`PlcState::set_lane_state`] sets the
//!   full/disabled bits the controller reads.
//! - **Dispositions**: [`PlcState::dispose_at_gate`] is the PLC's decision when a parcel
//!   reaches its divert gate (see [`decide_disposition`]); every disposition is written into
//!   the ring round-robin by the PLC's own count and announced in the head register.
//!
//! Who calls `dispose_at_gate` depends on the use: `line-sim` models the conveyor and calls it
//! when each parcel's leading edge reaches the gate; standalone (`plc-sim`, the demo, tests
//! without a conveyor) [`PlcOptions::auto_dispose_after`] disposes each commanded parcel a
//! fixed time after its first command.
//!
//! Fault knobs on [`PlcState`] let tests delay the acknowledge past the controller's timeout,
//! make the PLC refuse every request with a Modbus exception, or take it off the network
//! ([`PlcState::set_down`]), so every failure kind can be driven without a real PLC.

use std::collections::{HashMap, HashSet};
use std::future::{self, Future};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bondline_devices::plc::{
    next_seq, Disposition, DispositionCode, DivertCommand, HeartbeatRegisters, PlcMap,
    StatusRegisters, DISPOSITION_LEN, DIVERT_BLOCK_LEN, LANE_DISABLED, LANE_FULL, LANE_REGISTERS,
};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// Number of holding registers: the whole 16-bit address space.
const REGISTERS: usize = 1 << 16;
/// Most registers one read may ask for (Modbus application protocol, function 0x03/0x04).
const MAX_READ: u16 = 125;
/// Most registers one "write multiple registers" may carry (function 0x10).
const MAX_WRITE: u16 = 123;
/// Lanes the PLC knows: 1..=LANES, one lane-state register each.
pub const LANES: u16 = LANE_REGISTERS;

/// How the simulated PLC program disposes of parcels. The lanes are the PLC's own settings,
/// not the controller's: a real sorter has them in its program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlcOptions {
    /// Where every parcel goes while the controller's heartbeat is missing (default 3, hold).
    pub fail_safe_lane: u16,
    /// Where a parcel without a usable command goes (default 4, exception). The end of the
    /// line: taken even when its lane state says full.
    pub exception_lane: u16,
    /// Where a parcel goes when its commanded lane is full or disabled (default 3, hold).
    pub overflow_lane: u16,
    /// Standalone use: dispose each parcel this long after its first divert command, as if it
    /// had reached its gate then. `None` (default): whoever models the conveyor calls
    /// [`PlcState::dispose_at_gate`].
    pub auto_dispose_after: Option<Duration>,
}

impl Default for PlcOptions {
    fn default() -> PlcOptions {
        PlcOptions {
            fail_safe_lane: 3,
            exception_lane: 4,
            overflow_lane: 3,
            auto_dispose_after: None,
        }
    }
}

/// A divert command the simulator accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedDivert {
    pub seq: u16,
    pub lane: u16,
    pub parcel: u32,
    /// When the write arrived, for latency checks in tests.
    pub at: Instant,
}

/// The PLC program's decision for a parcel at its gate: the disposition code and the lane it
/// physically goes to. Pure, so the table is testable without a server.
///
/// In order: fail-safe mode sends everything to `fail_safe_lane`; no command (or a command for
/// a lane outside 1..=16, which the PLC does not have) sends the parcel to `exception_lane` as
/// "no destination"; a commanded lane that is full or disabled diverts it to `overflow_lane`,
/// unless that lane is full or disabled too, and then it goes to `exception_lane` as "no
/// destination"; otherwise it is sorted to the commanded lane. `lane_state(lane)` gives
/// `(full, disabled)` for lanes 1..=16.
pub fn decide_disposition(
    fail_safe: bool,
    commanded_lane: Option<u16>,
    lane_state: impl Fn(u16) -> (bool, bool),
    options: &PlcOptions,
) -> (DispositionCode, u16) {
    let usable = |lane: u16| {
        (1..=LANES).contains(&lane) && {
            let (full, disabled) = lane_state(lane);
            !full && !disabled
        }
    };
    let no_destination = (DispositionCode::NoDestination, options.exception_lane);
    if fail_safe {
        return (DispositionCode::FailSafe, options.fail_safe_lane);
    }
    match commanded_lane {
        None => no_destination,
        Some(lane) if !(1..=LANES).contains(&lane) => no_destination,
        Some(lane) if usable(lane) => (DispositionCode::Sorted, lane),
        Some(_) if usable(options.overflow_lane) => {
            (DispositionCode::Overflow, options.overflow_lane)
        }
        Some(_) => no_destination,
    }
}

/// The simulated PLC's memory, program state and fault settings. Cloning gives another handle
/// to the same state, so a test keeps one while the server runs.
#[derive(Debug, Clone)]
pub struct PlcState {
    inner: Arc<Mutex<Inner>>,
    /// The "down" knob; a watch so open connections learn of it at once.
    down: Arc<watch::Sender<bool>>,
}

#[derive(Debug)]
struct Inner {
    registers: Box<[u16]>,
    diverts: Vec<ReceivedDivert>,
    /// The latest command per parcel id.
    latest: HashMap<u32, ReceivedDivert>,
    ack_delay: Duration,
    /// When each acknowledge was put in the `ack` register, and its sequence.
    acks: Vec<(Instant, u16)>,
    refuse: bool,
    heartbeat: Option<HeartbeatRegisters>,
    status: Option<StatusRegisters>,
    options: PlcOptions,
    fail_safe: bool,
    /// Lane-state words of lanes 1..=16, the program's truth; mirrored to the registers.
    lanes: [u16; LANES as usize],
    last_disposition_seq: u16,
    /// Dispositions written so far; the ring slot is this count modulo the ring size.
    dispositions_written: u64,
    dispositions: Vec<Disposition>,
    /// Parcels whose automatic disposal has been scheduled (auto_dispose_after).
    auto_scheduled: HashSet<u32>,
}

impl Default for PlcState {
    fn default() -> PlcState {
        PlcState::new()
    }
}

impl PlcState {
    /// All registers zero, no faults, no heartbeat or status registers known (so never in
    /// fail-safe mode until it serves a map with a heartbeat), default options.
    pub fn new() -> PlcState {
        let (down, _) = watch::channel(false);
        PlcState {
            inner: Arc::new(Mutex::new(Inner {
                registers: vec![0; REGISTERS].into_boxed_slice(),
                diverts: Vec::new(),
                latest: HashMap::new(),
                ack_delay: Duration::ZERO,
                acks: Vec::new(),
                refuse: false,
                heartbeat: None,
                status: None,
                options: PlcOptions::default(),
                fail_safe: false,
                lanes: [0; LANES as usize],
                last_disposition_seq: 0,
                dispositions_written: 0,
                dispositions: Vec::new(),
                auto_scheduled: HashSet::new(),
            })),
            down: Arc::new(down),
        }
    }

    /// A PLC programmed for `map`: it knows the heartbeat and status registers, and with a
    /// heartbeat it starts in fail-safe mode.
    pub fn with_map(map: &PlcMap, options: PlcOptions) -> PlcState {
        let state = PlcState::new();
        {
            let mut inner = state.lock();
            inner.options = options;
            inner.fail_safe = map.heartbeat.is_some();
        }
        state.attach_map(map);
        state
    }

    /// Takes the heartbeat and status registers of `map` unless already known.
    fn attach_map(&self, map: &PlcMap) {
        let mut inner = self.lock();
        if inner.heartbeat.is_none() {
            inner.heartbeat = map.heartbeat.clone();
        }
        if inner.status.is_none() {
            inner.status = map.status.clone();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The lock is only held for plain memory operations; a poisoned lock still holds
        // consistent registers, so keep serving rather than taking the simulator down.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every divert command received so far, in arrival order.
    pub fn diverts(&self) -> Vec<ReceivedDivert> {
        self.lock().diverts.clone()
    }

    /// Divert commands from the `from`-th on (0-based, arrival order), for callers that follow
    /// the commands as they arrive without copying the whole list each time.
    pub fn diverts_since(&self, from: usize) -> Vec<ReceivedDivert> {
        self.lock().diverts.get(from..).unwrap_or_default().to_vec()
    }

    pub fn divert_count(&self) -> usize {
        self.lock().diverts.len()
    }

    /// The latest divert command received for parcel id `parcel`: a later command for the same
    /// parcel replaces the earlier one.
    pub fn command_for(&self, parcel: u32) -> Option<ReceivedDivert> {
        self.lock().latest.get(&parcel).copied()
    }

    /// The current value of holding register `addr`.
    pub fn register(&self, addr: u16) -> u16 {
        self.lock().registers[usize::from(addr)]
    }

    /// Sets holding register `addr`, as the PLC program would.
    pub fn set_register(&self, addr: u16, value: u16) {
        self.lock().registers[usize::from(addr)] = value;
    }

    /// Every acknowledge the PLC made, in order: when it put which sequence in `ack`.
    pub fn ack_log(&self) -> Vec<(Instant, u16)> {
        self.lock().acks.clone()
    }

    /// Delays the acknowledge of each following divert by `delay` (zero: acknowledge at once).
    /// A delay beyond the profile's `timeout_ms` makes the controller see a handshake timeout.
    pub fn set_ack_delay(&self, delay: Duration) {
        self.lock().ack_delay = delay;
    }

    /// While set, every request is answered with the exception "server device failure", as a
    /// PLC in stop mode or with a faulted program does; its heartbeat counter stands still.
    pub fn set_refuse(&self, refuse: bool) {
        self.lock().refuse = refuse;
    }

    /// While set, the PLC is off the network: on Modbus TCP every open connection is closed at
    /// once and every new one is closed as soon as it is accepted (the client sees its
    /// connection closed, as when a PLC reboots); on RTU it answers nothing. The PLC program
    /// keeps running: its heartbeat counts on, and since the controller's heartbeat cannot
    /// reach it, it goes to fail-safe mode after `timeout_ms`.
    pub fn set_down(&self, down: bool) {
        let was = self.down.send_replace(down);
        if was != down {
            tracing::info!(down, "plc-sim network state changed");
        }
    }

    pub fn is_down(&self) -> bool {
        *self.down.borrow()
    }

    /// Whether the PLC is in fail-safe mode (controller heartbeat missing or never seen).
    pub fn fail_safe(&self) -> bool {
        self.lock().fail_safe
    }

    /// Sets the state of lane `lane` (1..=16) and its status register. Other lanes are
    /// ignored with a warning: the PLC has no such lane.
    pub fn set_lane_state(&self, lane: u16, full: bool, disabled: bool) {
        if !(1..=LANES).contains(&lane) {
            tracing::warn!(lane, "set_lane_state: no such lane (1..=16)");
            return;
        }
        let word = if full { LANE_FULL } else { 0 } | if disabled { LANE_DISABLED } else { 0 };
        let mut inner = self.lock();
        inner.lanes[usize::from(lane - 1)] = word;
        if let Some(st) = &inner.status {
            let addr = usize::from(st.lanes) + usize::from(lane - 1);
            if let Some(r) = inner.registers.get_mut(addr) {
                *r = word;
            }
        }
    }

    /// `(full, disabled)` of lane `lane`; `(false, false)` for lanes the PLC does not have.
    pub fn lane_state(&self, lane: u16) -> (bool, bool) {
        lane_bits(&self.lock().lanes, lane)
    }

    /// Reports that `parcel` went to `lane` with `code`: writes the next entry into the
    /// disposition ring (round-robin by the PLC's own count) and sets the ring's head to its
    /// sequence. Without status registers the disposition is only kept in memory.
    pub fn report(&self, parcel: u32, code: DispositionCode, lane: u16) -> Disposition {
        self.lock().report(parcel, code, lane)
    }

    /// Every disposition reported so far, oldest first.
    pub fn dispositions(&self) -> Vec<Disposition> {
        self.lock().dispositions.clone()
    }

    /// The PLC's decision when `parcel` reaches its gate ([`decide_disposition`] on the
    /// current fail-safe mode, the latest command for the parcel and the lane states), which
    /// it then [reports](PlcState::report).
    pub fn dispose_at_gate(&self, parcel: u32, options: &PlcOptions) -> Disposition {
        let mut inner = self.lock();
        let commanded = inner.latest.get(&parcel).map(|c| c.lane);
        let lanes = inner.lanes;
        let (code, lane) = decide_disposition(
            inner.fail_safe,
            commanded,
            |l| lane_bits(&lanes, l),
            options,
        );
        let d = inner.report(parcel, code, lane);
        tracing::debug!(parcel, ?code, lane, "disposition");
        d
    }

    fn set_fail_safe(&self, on: bool, heard_before: bool) {
        let mut inner = self.lock();
        if inner.fail_safe == on {
            return;
        }
        inner.fail_safe = on;
        drop(inner);
        if on && heard_before {
            tracing::warn!(
                "controller heartbeat lost: fail-safe mode, every parcel to the fail-safe lane"
            );
        } else if on {
            tracing::info!("fail-safe mode until the controller's heartbeat starts");
        } else {
            tracing::info!("controller heartbeat present: fail-safe mode off");
        }
    }

    fn tick_plc_counter(&self, addr: u16) {
        let mut inner = self.lock();
        if !inner.refuse {
            let r = &mut inner.registers[usize::from(addr)];
            *r = r.wrapping_add(1);
        }
    }

    /// Applies one request to the registers. Pure apart from the delayed-ack and auto-dispose
    /// tasks it may spawn.
    fn handle(&self, map: &PlcMap, request: Request<'_>) -> Result<Response, ExceptionCode> {
        let mut inner = self.lock();
        if inner.refuse {
            return Err(ExceptionCode::ServerDeviceFailure);
        }
        match request {
            Request::ReadHoldingRegisters(addr, qty) => {
                Ok(Response::ReadHoldingRegisters(inner.read(addr, qty)?))
            }
            Request::ReadInputRegisters(addr, qty) => {
                Ok(Response::ReadInputRegisters(inner.read(addr, qty)?))
            }
            Request::WriteSingleRegister(addr, value) => {
                inner.registers[usize::from(addr)] = value;
                Ok(Response::WriteSingleRegister(addr, value))
            }
            Request::WriteMultipleRegisters(addr, words) => {
                let qty =
                    u16::try_from(words.len()).map_err(|_| ExceptionCode::IllegalDataValue)?;
                if qty == 0 || qty > MAX_WRITE {
                    return Err(ExceptionCode::IllegalDataValue);
                }
                let start = usize::from(addr);
                let end = start + words.len();
                if end > REGISTERS {
                    return Err(ExceptionCode::IllegalDataAddress);
                }
                inner.registers[start..end].copy_from_slice(&words);
                if addr == map.divert.block && qty == DIVERT_BLOCK_LEN {
                    if let Some(cmd) = DivertCommand::from_registers(&words) {
                        tracing::info!(
                            seq = cmd.seq,
                            lane = cmd.lane,
                            parcel = cmd.parcel,
                            "divert"
                        );
                        let received = ReceivedDivert {
                            seq: cmd.seq,
                            lane: cmd.lane,
                            parcel: cmd.parcel,
                            at: Instant::now(),
                        };
                        inner.diverts.push(received);
                        inner.latest.insert(cmd.parcel, received);
                        let inner_ref = &mut *inner;
                        let auto = match inner_ref.options.auto_dispose_after {
                            Some(d) if inner_ref.auto_scheduled.insert(cmd.parcel) => Some(d),
                            _ => None,
                        };
                        let delay = inner.ack_delay;
                        if delay.is_zero() {
                            inner.registers[usize::from(map.divert.ack)] = cmd.seq;
                            inner.acks.push((Instant::now(), cmd.seq));
                        }
                        drop(inner);
                        if !delay.is_zero() {
                            self.ack_later(map.divert.ack, cmd.seq, delay);
                        }
                        if let Some(after) = auto {
                            self.dispose_later(cmd.parcel, after);
                        }
                    }
                }
                Ok(Response::WriteMultipleRegisters(addr, qty))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    fn ack_later(&self, ack: u16, seq: u16, delay: Duration) {
        let state = self.clone();
        // Requests are always served inside the tokio runtime, so spawning is possible here.
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut inner = state.lock();
            inner.registers[usize::from(ack)] = seq;
            inner.acks.push((Instant::now(), seq));
        });
    }

    fn dispose_later(&self, parcel: u32, after: Duration) {
        let state = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let options = state.lock().options.clone();
            state.dispose_at_gate(parcel, &options);
        });
    }
}

fn lane_bits(lanes: &[u16; LANES as usize], lane: u16) -> (bool, bool) {
    match lane.checked_sub(1).and_then(|i| lanes.get(usize::from(i))) {
        Some(word) => (word & LANE_FULL != 0, word & LANE_DISABLED != 0),
        None => (false, false),
    }
}

impl Inner {
    fn read(&self, addr: u16, qty: u16) -> Result<Vec<u16>, ExceptionCode> {
        if qty == 0 || qty > MAX_READ {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let start = usize::from(addr);
        let end = start + usize::from(qty);
        if end > REGISTERS {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        Ok(self.registers[start..end].to_vec())
    }

    fn report(&mut self, parcel: u32, code: DispositionCode, lane: u16) -> Disposition {
        let seq = next_seq(self.last_disposition_seq);
        let d = Disposition {
            seq,
            parcel,
            code,
            lane,
        };
        if let Some(st) = &self.status {
            let ring = u64::from(st.ring.max(1));
            let slot = (self.dispositions_written % ring) as usize;
            let head = usize::from(st.dispositions);
            let start = head + 1 + slot * usize::from(DISPOSITION_LEN);
            // A validated map always fits; a hand-built one that does not is written partly.
            if let Some(entry) = self
                .registers
                .get_mut(start..start + usize::from(DISPOSITION_LEN))
            {
                entry.copy_from_slice(&d.to_registers());
            }
            self.registers[head] = seq;
        }
        self.last_disposition_seq = seq;
        self.dispositions_written += 1;
        self.dispositions.push(d);
        d
    }
}

/// The PLC program's heartbeat: counts its own register up every `interval_ms` and watches
/// the controller's. Runs until dropped.
async fn heartbeat(state: PlcState, hb: Option<HeartbeatRegisters>) {
    let Some(hb) = hb else {
        return future::pending().await;
    };
    let interval = Duration::from_millis(hb.interval_ms.max(1));
    let timeout = Duration::from_millis(hb.timeout_ms.max(1));
    // Watch the controller's counter more often than it changes, so fail-safe mode ends
    // promptly and starts no later than a few milliseconds after the timeout.
    let check = (interval / 4).clamp(Duration::from_millis(2), Duration::from_millis(20));
    let mut count = tokio::time::interval(interval);
    count.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut watch = tokio::time::interval(check);
    watch.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = state.register(hb.controller);
    let mut last_change = Instant::now();
    let mut heard = false;
    state.set_fail_safe(true, false);
    loop {
        tokio::select! {
            _ = count.tick() => state.tick_plc_counter(hb.plc),
            _ = watch.tick() => {
                let now = state.register(hb.controller);
                if now != last {
                    last = now;
                    last_change = Instant::now();
                    heard = true;
                    state.set_fail_safe(false, true);
                } else if last_change.elapsed() >= timeout {
                    state.set_fail_safe(true, heard);
                }
            }
        }
    }
}

/// The Modbus service of one connection (TCP) or of the serial line (RTU).
#[derive(Debug, Clone)]
struct PlcService {
    state: PlcState,
    map: PlcMap,
    /// On RTU the bus is shared: answer only requests for this unit id. Modbus TCP devices
    /// commonly ignore the unit id, and so does the simulator there (`None`).
    rtu_unit: Option<u8>,
}

impl tokio_modbus::server::Service for PlcService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: SlaveRequest<'static>) -> Self::Future {
        if self.state.is_down() {
            // Off the network: nobody hears the request.
            return future::ready(Ok(None));
        }
        if let Some(unit) = self.rtu_unit {
            if req.slave != unit && req.slave != 0 {
                return future::ready(Ok(None));
            }
        }
        // RTU broadcast (unit 0): writes take effect, nobody answers.
        let broadcast = self.rtu_unit.is_some() && req.slave == 0;
        let result = self.state.handle(&self.map, req.request);
        if broadcast {
            return future::ready(Ok(None));
        }
        future::ready(result.map(Some))
    }
}

/// Carries one TCP connection's bytes to and from the Modbus server until either side ends or
/// the PLC goes down; then drops both, which closes the connection.
async fn relay(
    client: TcpStream,
    server: DuplexStream,
    mut down: watch::Receiver<bool>,
    peer: SocketAddr,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = tokio::io::split(server);
    tokio::select! {
        _ = copy(&mut cr, &mut sw) => tracing::info!(%peer, "modbus client connection ended"),
        _ = copy(&mut sr, &mut cw) => tracing::info!(%peer, "modbus connection closed by plc-sim"),
        _ = down.wait_for(|d| *d) => tracing::info!(%peer, "plc-sim down: connection closed"),
    }
}

async fn copy<R, W>(r: &mut R, w: &mut W)
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let _ = tokio::io::copy(r, w).await;
}

/// A bound Modbus TCP PLC simulator, not yet serving.
#[derive(Debug)]
pub struct PlcSim {
    listener: TcpListener,
    local_addr: SocketAddr,
    map: PlcMap,
    state: PlcState,
}

impl PlcSim {
    /// Binds the listener now, so a test can bind port 0 and learn the port before serving.
    /// Default [`PlcOptions`].
    pub async fn bind(addr: SocketAddr, map: PlcMap) -> std::io::Result<PlcSim> {
        PlcSim::bind_with(addr, map, PlcOptions::default()).await
    }

    /// Like [`PlcSim::bind`], with the PLC program's lanes and automatic disposal set.
    pub async fn bind_with(
        addr: SocketAddr,
        map: PlcMap,
        options: PlcOptions,
    ) -> std::io::Result<PlcSim> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let state = PlcState::with_map(&map, options);
        Ok(PlcSim {
            listener,
            local_addr,
            map,
            state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to the registers, received diverts, dispositions and fault knobs.
    pub fn state(&self) -> PlcState {
        self.state.clone()
    }

    /// Serves Modbus TCP clients, any number at once, and runs the heartbeat, until
    /// `shutdown` completes. Connections still open at shutdown are closed. Returns an error
    /// only if accepting fails.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let heartbeat = heartbeat(self.state.clone(), self.map.heartbeat.clone());
        let service = PlcService {
            state: self.state,
            map: self.map,
            rtu_unit: None,
        };
        let on_connected = move |stream: TcpStream, peer: SocketAddr| {
            let service = service.clone();
            async move {
                if service.state.is_down() {
                    // Dropping the stream closes the connection.
                    tracing::info!(%peer, "plc-sim down: connection refused");
                    return Ok::<_, std::io::Error>(None);
                }
                tracing::info!(%peer, "modbus client connected");
                let (server_end, relay_end) = tokio::io::duplex(8192);
                let down = service.state.down.subscribe();
                tokio::spawn(relay(stream, relay_end, down, peer));
                Ok(Some((service, server_end)))
            }
        };
        let on_process_error = |err: std::io::Error| {
            tracing::info!(%err, "modbus client connection ended");
        };
        tracing::info!(addr = %self.local_addr, "plc-sim listening (Modbus TCP)");
        let server = Server::new(self.listener);
        // Dropping `serve` at shutdown cancels the per-connection tasks it spawned, which
        // ends their relays and so closes the connections.
        tokio::select! {
            res = server.serve(&on_connected, on_process_error) => res,
            () = heartbeat => Ok(()),
            () = shutdown => Ok(()),
        }
    }
}

/// Serves Modbus RTU on a serial device (or one end of a pty pair) until `shutdown` completes,
/// answering only requests for `map.unit_id` and applying broadcasts silently. Runs the
/// heartbeat of `map` like [`PlcSim::run`]; `state` learns the map's heartbeat and status
/// registers unless it was made [`PlcState::with_map`].
pub async fn serve_rtu(
    path: &str,
    baud: u32,
    map: PlcMap,
    state: PlcState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use tokio_serial::SerialPortBuilderExt as _;
    let serial = tokio_serial::new(path, baud).open_native_async()?;
    state.attach_map(&map);
    let heartbeat = heartbeat(state.clone(), map.heartbeat.clone());
    let service = PlcService {
        state,
        rtu_unit: Some(map.unit_id),
        map,
    };
    tracing::info!(path, baud, "plc-sim serving Modbus RTU");
    let server = tokio_modbus::server::rtu::Server::new(serial);
    tokio::select! {
        res = server.serve_forever(service) => res,
        () = heartbeat => Ok(()),
        () = shutdown => Ok(()),
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::plc::new_dispositions;
    use bondline_devices::Profiles;
    use tokio_modbus::client::{Reader as _, Writer as _};

    /// The daemon spawns these futures; this only has to compile.
    #[allow(dead_code)]
    fn futures_are_send(sim: PlcSim, map: PlcMap) {
        fn send<T: Send + 'static>(_: T) {}
        send(sim.run(async {}));
        send(serve_rtu("/dev/null", 9600, map, PlcState::new(), async {}));
    }

    fn map() -> PlcMap {
        Profiles::builtin()
            .get("sorter-plc")
            .and_then(|p| p.plc().cloned())
            .expect("built-in sorter-plc profile")
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:0".parse().expect("addr")
    }

    #[test]
    fn handle_checks_ranges_and_functions() {
        let state = PlcState::new();
        let map = map();
        let read = |addr, qty| state.handle(&map, Request::ReadHoldingRegisters(addr, qty));
        assert_eq!(read(65535, 2), Err(ExceptionCode::IllegalDataAddress));
        assert_eq!(read(0, 0), Err(ExceptionCode::IllegalDataValue));
        assert_eq!(read(0, 126), Err(ExceptionCode::IllegalDataValue));
        assert!(
            matches!(read(65411, 125), Ok(Response::ReadHoldingRegisters(v)) if v.len() == 125)
        );
        assert_eq!(
            state.handle(&map, Request::ReadCoils(0, 1)),
            Err(ExceptionCode::IllegalFunction)
        );
        let write = Request::WriteMultipleRegisters(65534, vec![1, 2, 3].into());
        assert_eq!(
            state.handle(&map, write),
            Err(ExceptionCode::IllegalDataAddress)
        );
        // A block with sequence 0 is stored but is not a command.
        let zero = Request::WriteMultipleRegisters(map.divert.block, vec![0, 1, 0, 5].into());
        assert!(state.handle(&map, zero).is_ok());
        assert_eq!(state.divert_count(), 0);
        assert_eq!(state.register(map.divert.block + 3), 5);
        state.set_refuse(true);
        assert_eq!(read(0, 1), Err(ExceptionCode::ServerDeviceFailure));
    }

    #[test]
    fn disposition_decision_table() {
        use DispositionCode::*;
        let o = PlcOptions {
            fail_safe_lane: 3,
            exception_lane: 4,
            overflow_lane: 5,
            auto_dispose_after: None,
        };
        // Lane 2 full, lane 6 disabled, lane 7 full and disabled; the rest open.
        let open = |l: u16| match l {
            2 => (true, false),
            6 => (false, true),
            7 => (true, true),
            _ => (false, false),
        };
        let overflow_blocked = |l: u16| match l {
            2 | 5 => (true, false),
            _ => (false, false),
        };
        type Row<'a> = (
            bool,
            Option<u16>,
            &'a dyn Fn(u16) -> (bool, bool),
            (DispositionCode, u16),
        );
        let rows: [Row; 11] = [
            (true, Some(1), &open, (FailSafe, 3)),
            (true, None, &open, (FailSafe, 3)),
            (true, Some(2), &open, (FailSafe, 3)),
            (false, None, &open, (NoDestination, 4)),
            (false, Some(1), &open, (Sorted, 1)),
            (false, Some(2), &open, (Overflow, 5)),
            (false, Some(6), &open, (Overflow, 5)),
            (false, Some(7), &open, (Overflow, 5)),
            (false, Some(2), &overflow_blocked, (NoDestination, 4)),
            (false, Some(0), &open, (NoDestination, 4)),
            (false, Some(17), &open, (NoDestination, 4)),
        ];
        for (i, (fail_safe, cmd, lanes, want)) in rows.into_iter().enumerate() {
            assert_eq!(
                decide_disposition(fail_safe, cmd, lanes, &o),
                want,
                "row {i}"
            );
        }
        // The commanded lane is the overflow lane and it is full: nowhere but exception.
        let full5 = |l: u16| (l == 5, false);
        assert_eq!(
            decide_disposition(false, Some(5), full5, &o),
            (NoDestination, 4)
        );
    }

    #[test]
    fn dispose_at_gate_uses_latest_command_and_lane_states() {
        let mut map = map();
        map.heartbeat = None;
        let state = PlcState::with_map(&map, PlcOptions::default());
        assert!(!state.fail_safe(), "no heartbeat contract, no fail-safe");
        let block = |seq: u16, lane: u16, parcel: u32| {
            let cmd = DivertCommand { seq, lane, parcel };
            Request::WriteMultipleRegisters(map.divert.block, cmd.to_registers().to_vec().into())
        };
        assert!(state.handle(&map, block(1, 1, 77)).is_ok());
        assert!(state.handle(&map, block(2, 2, 78)).is_ok());
        assert!(state.handle(&map, block(3, 2, 77)).is_ok());
        assert_eq!(state.command_for(77).map(|c| (c.seq, c.lane)), Some((3, 2)));
        assert_eq!(state.command_for(79), None);
        assert_eq!(state.diverts_since(1).len(), 2);
        assert!(state.diverts_since(9).is_empty());

        let o = PlcOptions::default();
        let d = state.dispose_at_gate(77, &o);
        assert_eq!((d.code, d.lane, d.seq), (DispositionCode::Sorted, 2, 1));
        state.set_lane_state(2, true, false);
        assert_eq!(state.lane_state(2), (true, false));
        let st = map.status.clone().expect("status");
        assert_eq!(state.register(st.lanes + 1), LANE_FULL);
        let d = state.dispose_at_gate(78, &o);
        assert_eq!((d.code, d.lane), (DispositionCode::Overflow, 3));
        state.set_lane_state(3, false, true);
        assert_eq!(state.register(st.lanes + 2), LANE_DISABLED);
        let d = state.dispose_at_gate(78, &o);
        assert_eq!((d.code, d.lane), (DispositionCode::NoDestination, 4));
        let d = state.dispose_at_gate(79, &o);
        assert_eq!((d.code, d.lane), (DispositionCode::NoDestination, 4));
        state.set_lane_state(2, false, false);
        assert_eq!(state.register(st.lanes + 1), 0);
        // Lanes the PLC does not have are ignored.
        state.set_lane_state(0, true, true);
        state.set_lane_state(17, true, true);
        assert_eq!(state.lane_state(17), (false, false));
        assert_eq!(state.dispositions().len(), 4);
    }

    #[test]
    fn ring_is_written_round_robin_and_decodes() {
        let map = map();
        let st = map.status.clone().expect("status");
        let state = PlcState::with_map(&map, PlcOptions::default());
        let ring = || {
            (0..st.ring_len())
                .map(|i| state.register(st.dispositions + i))
                .collect::<Vec<_>>()
        };
        for p in 0..10u32 {
            state.report(1000 + p, DispositionCode::Sorted, 1);
        }
        let regs = ring();
        assert_eq!(regs[0], 10, "head holds the newest sequence");
        let fourth = Disposition {
            seq: 4,
            parcel: 1003,
            code: DispositionCode::Sorted,
            lane: 1,
        };
        assert_eq!(&regs[1 + 3 * 4..1 + 4 * 4], &fourth.to_registers());
        let (new, missed) = new_dispositions(&regs, 0);
        assert_eq!(
            new.iter().map(|d| d.parcel).collect::<Vec<_>>(),
            (1000..1010).collect::<Vec<_>>()
        );
        assert_eq!(missed, 0);
        let last_seen = new.last().map(|d| d.seq).expect("some");

        // 35 more: the ring (30) wraps; the reader is 5 entries short.
        for p in 10..45u32 {
            let code = if p % 2 == 0 {
                DispositionCode::Overflow
            } else {
                DispositionCode::FailSafe
            };
            state.report(1000 + p, code, 3);
        }
        let regs = ring();
        let (new, missed) = new_dispositions(&regs, last_seen);
        assert_eq!(missed, 5);
        assert_eq!(
            new.iter().map(|d| d.parcel).collect::<Vec<_>>(),
            (1015..1045).collect::<Vec<_>>()
        );
        // The 45th entry (count 44) went to slot 44 % 30 = 14.
        let last = state.dispositions()[44];
        assert_eq!(&regs[1 + 14 * 4..1 + 15 * 4], &last.to_registers());
        assert_eq!(last.code, DispositionCode::Overflow);
        let (new, _) = new_dispositions(&regs, last.seq);
        assert!(new.is_empty());
    }

    #[tokio::test]
    async fn auto_dispose_once_per_parcel_with_latest_command() {
        let mut map = map();
        map.heartbeat = None;
        let options = PlcOptions {
            auto_dispose_after: Some(Duration::from_millis(80)),
            ..PlcOptions::default()
        };
        let state = PlcState::with_map(&map, options);
        let block = |seq: u16, lane: u16, parcel: u32| {
            let cmd = DivertCommand { seq, lane, parcel };
            Request::WriteMultipleRegisters(map.divert.block, cmd.to_registers().to_vec().into())
        };
        assert!(state.handle(&map, block(1, 1, 5)).is_ok());
        assert!(state.handle(&map, block(2, 2, 5)).is_ok());
        assert!(state.handle(&map, block(3, 1, 6)).is_ok());
        tokio::time::sleep(Duration::from_millis(400)).await;
        let d = state.dispositions();
        assert_eq!(d.len(), 2, "{d:?}");
        let five = d.iter().find(|d| d.parcel == 5).expect("parcel 5");
        assert_eq!((five.code, five.lane), (DispositionCode::Sorted, 2));
    }

    #[tokio::test]
    async fn divert_over_modbus_tcp_is_acknowledged() {
        let map = map();
        let sim = PlcSim::bind(addr(), map.clone()).await.expect("bind");
        let addr = sim.local_addr();
        let state = sim.state();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(sim.run(async move {
            let _ = stop_rx.await;
        }));

        let mut ctx = tokio_modbus::client::tcp::connect(addr)
            .await
            .expect("connect");
        let cmd = DivertCommand {
            seq: 42,
            lane: 2,
            parcel: 0x0001_0203,
        };
        ctx.write_multiple_registers(map.divert.block, &cmd.to_registers())
            .await
            .expect("io")
            .expect("no exception");
        let ack = ctx
            .read_holding_registers(map.divert.ack, 1)
            .await
            .expect("io")
            .expect("no exception");
        assert_eq!(ack, vec![42]);
        let diverts = state.diverts();
        assert_eq!(diverts.len(), 1);
        assert_eq!(
            (diverts[0].seq, diverts[0].lane, diverts[0].parcel),
            (42, 2, 0x0001_0203)
        );

        // The device refusing is an exception on a healthy link, not an I/O error.
        let out_of_range = ctx.read_holding_registers(65535, 2).await.expect("io");
        assert_eq!(out_of_range, Err(ExceptionCode::IllegalDataAddress));

        // A late acknowledge: the ack register still holds the previous sequence for a while.
        state.set_ack_delay(Duration::from_millis(150));
        let late = DivertCommand { seq: 43, ..cmd };
        ctx.write_multiple_registers(map.divert.block, &late.to_registers())
            .await
            .expect("io")
            .expect("no exception");
        let ack = ctx
            .read_holding_registers(map.divert.ack, 1)
            .await
            .expect("io");
        assert_eq!(ack, Ok(vec![42]));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ack = ctx
            .read_holding_registers(map.divert.ack, 1)
            .await
            .expect("io");
        assert_eq!(ack, Ok(vec![43]));

        state.set_refuse(true);
        let refused = ctx.read_holding_registers(0, 1).await.expect("io");
        assert_eq!(refused, Err(ExceptionCode::ServerDeviceFailure));

        let _ = stop_tx.send(());
        server.await.expect("join").expect("serve");
    }

    /// The controller's heartbeat over real Modbus TCP: fail-safe before it starts, off while
    /// it counts, on again within the timeout (plus the watch period and scheduling slack)
    /// after it stops; the PLC's own counter runs all along.
    #[tokio::test]
    async fn heartbeat_watchdog_over_modbus_tcp() {
        let mut map = map();
        let hb = HeartbeatRegisters {
            controller: 120,
            plc: 121,
            interval_ms: 50,
            timeout_ms: 300,
        };
        map.heartbeat = Some(hb.clone());
        let sim = PlcSim::bind(addr(), map).await.expect("bind");
        let addr = sim.local_addr();
        let state = sim.state();
        assert!(
            state.fail_safe(),
            "a PLC that never heard the controller is fail-safe"
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(sim.run(async move {
            let _ = stop_rx.await;
        }));
        let mut ctx = tokio_modbus::client::tcp::connect(addr)
            .await
            .expect("connect");
        let read_plc = |v: Result<Result<Vec<u16>, ExceptionCode>, tokio_modbus::Error>| {
            v.expect("io").expect("no exception")[0]
        };
        let p0 = read_plc(ctx.read_holding_registers(hb.plc, 1).await);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(state.fail_safe(), "still never heard");

        let start = Instant::now();
        for i in 1..=12u16 {
            ctx.write_single_register(hb.controller, i)
                .await
                .expect("io")
                .expect("no exception");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!state.fail_safe(), "heartbeat present");
        let p1 = read_plc(ctx.read_holding_registers(hb.plc, 1).await);
        let ticks = p1.wrapping_sub(p0);
        let expected = (start.elapsed().as_millis() as u16 + 400) / 50;
        assert!(
            ticks >= 5 && ticks <= expected + 2,
            "PLC counter moved {ticks}, expected about {expected}"
        );

        // Stop: fail-safe within timeout + margin, not before the timeout.
        let stopped = Instant::now();
        while !state.fail_safe() {
            assert!(
                stopped.elapsed() < Duration::from_millis(300 + 1000),
                "no fail-safe after {:?}",
                stopped.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = stopped.elapsed();
        // The last write was up to 50 ms before `stopped`.
        assert!(
            took >= Duration::from_millis(240),
            "fail-safe too early: {took:?}"
        );
        let d = state.dispose_at_gate(9, &PlcOptions::default());
        assert_eq!((d.code, d.lane), (DispositionCode::FailSafe, 3));

        // The heartbeat returns: fail-safe ends promptly.
        ctx.write_single_register(hb.controller, 13)
            .await
            .expect("io")
            .expect("no exception");
        let back = Instant::now();
        while state.fail_safe() {
            assert!(back.elapsed() < Duration::from_secs(1), "fail-safe stuck");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = stop_tx.send(());
        server.await.expect("join").expect("serve");
    }

    #[tokio::test]
    async fn down_closes_connections_until_up_again() {
        let sim = PlcSim::bind(addr(), map()).await.expect("bind");
        let addr = sim.local_addr();
        let state = sim.state();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(sim.run(async move {
            let _ = stop_rx.await;
        }));
        let limit = Duration::from_secs(5);
        let mut ctx = tokio_modbus::client::tcp::connect(addr)
            .await
            .expect("connect");
        assert!(ctx.read_holding_registers(0, 1).await.expect("io").is_ok());

        state.set_down(true);
        assert!(state.is_down());
        let res = tokio::time::timeout(limit, ctx.read_holding_registers(0, 1))
            .await
            .expect("answered or closed in time");
        assert!(res.is_err(), "open connection closed: {res:?}");
        // A new connection is accepted by the kernel and closed at once.
        if let Ok(mut c) = tokio_modbus::client::tcp::connect(addr).await {
            let res = tokio::time::timeout(limit, c.read_holding_registers(0, 1))
                .await
                .expect("closed in time");
            assert!(res.is_err(), "new connection closed: {res:?}");
        }

        state.set_down(false);
        let mut ctx = tokio_modbus::client::tcp::connect(addr)
            .await
            .expect("connect");
        assert!(ctx.read_holding_registers(0, 1).await.expect("io").is_ok());
        let _ = stop_tx.send(());
        server.await.expect("join").expect("serve");
    }
}
