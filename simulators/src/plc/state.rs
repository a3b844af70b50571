//! The PLC's memory and program state behind a [`PlcState`] handle: the 65536 holding
//! registers, the divert handshake (a complete divert block is a command, its sequence is
//! echoed into the acknowledge register, at once or after the configured delay), lane states,
//! the disposition ring, and the fault knobs. Transport-free: the Modbus servers (`server`)
//! only hand it requests.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bondline_devices::plc::{
    next_seq, Disposition, DispositionCode, DivertCommand, HeartbeatRegisters, PlcMap,
    StatusRegisters, DISPOSITION_LEN, DIVERT_BLOCK_LEN, LANE_DISABLED, LANE_FULL,
};
use tokio::sync::watch;
use tokio_modbus::{ExceptionCode, Request, Response};

use super::{decide_disposition, PlcOptions, LANES};

/// Number of holding registers: the whole 16-bit address space.
const REGISTERS: usize = 1 << 16;
/// Most registers one read may ask for (Modbus application protocol, function 0x03/0x04).
const MAX_READ: u16 = 125;
/// Most registers one "write multiple registers" may carry (function 0x10).
const MAX_WRITE: u16 = 123;

/// A divert command the simulator accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedDivert {
    pub seq: u16,
    pub lane: u16,
    pub parcel: u32,
    /// When the write arrived, for latency checks in tests.
    pub at: Instant,
}

/// The simulated PLC's memory, program state and fault settings. Cloning gives another handle
/// to the same state, so a test keeps one while the server runs.
#[derive(Debug, Clone)]
pub struct PlcState {
    inner: Arc<Mutex<Inner>>,
    /// The "down" knob; a watch so open connections learn of it at once.
    pub(super) down: Arc<watch::Sender<bool>>,
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
    pub(super) fn attach_map(&self, map: &PlcMap) {
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

    pub(super) fn set_fail_safe(&self, on: bool, heard_before: bool) {
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

    pub(super) fn tick_plc_counter(&self, addr: u16) {
        let mut inner = self.lock();
        if !inner.refuse {
            let r = &mut inner.registers[usize::from(addr)];
            *r = r.wrapping_add(1);
        }
    }

    /// Applies one request to the registers. Pure apart from the delayed-ack and auto-dispose
    /// tasks it may spawn.
    pub(super) fn handle(
        &self,
        map: &PlcMap,
        request: Request<'_>,
    ) -> Result<Response, ExceptionCode> {
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
