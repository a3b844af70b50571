//! `xray-sim`: X-ray scanners publishing their verdicts over Modbus, and their image files.
//!
//! One simulator hosts one or more X-ray devices, each under its own Modbus unit id, as
//! several scanners share one RS-485 bus. Each unit holds the verdict ring of
//! [`bondline_devices::xray`] in its input registers (function 04, from the profile's
//! `events` register) and has a fault mode of its own ([`XrayFault`]). The encodings all come
//! from `bondline_devices::xray` ([`XrayEvent`], [`RingWriter`]): the simulator cannot drift
//! from what the daemon decodes.
//!
//! - [`XrayState`] is the shared, cloneable handle: tests and the [`XrayDriver`] push passages
//!   and operator marks into a unit's ring, switch fault modes at run time and read counters.
//! - [`XraySim`] serves Modbus TCP; [`serve_rtu`] serves Modbus RTU on a serial device (a pty
//!   in tests). On RTU a request for a unit the simulator does not host gets no answer, as on
//!   a real bus where nobody has that address; on TCP it gets the exception "gateway target
//!   device failed to respond", as from a TCP-to-RTU gateway.
//! - [`XrayImages`] writes each scan's views as image files into a spool directory, the way
//!   an X-ray workstation does, atomically (`.part` then rename); it can also write corrupt
//!   and truncated files for the daemon's error paths.
//! - [`XrayDriver`] turns parcel passages (scan id, tunnel entry time) into the automatic
//!   verdict after a processing delay, the images, and now and then an operator mark, all
//!   deterministic from a seed. `xray-sim --rate` feeds it synthetic passages; `line-sim`
//!   feeds it the parcels of its belt.
//!
//! The registers outside the ring are not mapped: a read that does not lie wholly inside
//! `events ..= events + ring * 8` is refused with "illegal data address", which catches a
//! controller reading the wrong place instead of handing it zeros.

mod driver;
mod images;
mod rng;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::{self, Future};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use bondline_devices::xray::{Material, RingWriter, XrayEvent, XrayMap, XrayResult, EVENT_LEN};
use tokio::net::{TcpListener, TcpStream};
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

pub use driver::{synthetic_passages, XrayDriver, XrayFeed};
pub use driver::{DriverConfig, DriverError, DriverStats, ImageOrder, Outcome, Passage};
pub use images::{render, ImageError, ImageFormat, ImageSpec, Palette, XrayImages};

/// Highest address of a device on a Modbus serial line (0 is broadcast, 248..=255 reserved).
pub const MAX_UNIT: u8 = 247;
/// Most registers one read may ask for (Modbus application protocol, function 04).
const MAX_READ: u16 = 125;
/// Passages remembered per unit, so a later operator mark can repeat the tunnel-entry time.
/// An officer marks a parcel seconds after it passed, so this bound is generous; it keeps a
/// simulator running for days from growing without end.
const REMEMBERED: usize = 4096;
/// Events kept per unit for [`XrayState::events`], for the same reason.
const HISTORY: usize = 4096;
/// Result and material codes outside the contract, written in [`XrayFault::Garbage`] mode.
const BAD_RESULT: u8 = 0x7F;
const BAD_MATERIAL: u8 = 0x3E;

/// How a unit answers, switchable while serving ([`XrayState::set_fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XrayFault {
    /// Answers reads of the ring.
    #[default]
    Normal,
    /// Answers every request with this Modbus exception, as a scanner whose controller
    /// faulted (e.g. `ServerDeviceFailure`) or is busy.
    Exception(ExceptionCode),
    /// Answers normally, but every entry written while in this mode carries a result code
    /// (even entries) or a material code (odd entries) outside the contract, as from buggy
    /// firmware. Sequence numbers stay valid, so the controller sees the entries as new and
    /// must report them, not crash or skip the ring.
    Garbage,
    /// Never answers: a unit that lost power or its address. The others keep answering.
    Silent,
}

impl fmt::Display for XrayFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XrayFault::Normal => f.write_str("normal"),
            XrayFault::Exception(code) => write!(f, "exception:{}", u8::from(*code)),
            XrayFault::Garbage => f.write_str("garbage"),
            XrayFault::Silent => f.write_str("silent"),
        }
    }
}

impl FromStr for XrayFault {
    type Err = String;

    /// `normal`, `silent`, `garbage`, `exception` (server device failure) or `exception:N`
    /// with N the exception code (1 to 255, decimal or 0x hex).
    fn from_str(s: &str) -> Result<XrayFault, String> {
        let (mode, arg) = match s.split_once(':') {
            Some((m, a)) => (m, Some(a)),
            None => (s, None),
        };
        match (mode.trim().to_ascii_lowercase().as_str(), arg) {
            ("normal", None) => Ok(XrayFault::Normal),
            ("silent", None) => Ok(XrayFault::Silent),
            ("garbage", None) => Ok(XrayFault::Garbage),
            ("exception", None) => Ok(XrayFault::Exception(ExceptionCode::ServerDeviceFailure)),
            ("exception", Some(code)) => parse_code(code)
                .map(|c| XrayFault::Exception(ExceptionCode::new(c)))
                .ok_or_else(|| format!("`{code}` is not an exception code from 1 to 255")),
            _ => Err(format!(
                "`{s}` is not a fault mode: normal, silent, garbage, exception or exception:N"
            )),
        }
    }
}

fn parse_code(s: &str) -> Option<u8> {
    let s = s.trim();
    let code = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16).ok()?,
        None => s.parse().ok()?,
    };
    (code != 0).then_some(code)
}

/// What one unit has done, for tests and the end-of-run summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnitStats {
    /// Reads answered with registers.
    pub reads: u64,
    /// Requests answered with an exception (fault mode, bad address or function).
    pub exceptions: u64,
    /// Requests left unanswered because the unit was silent.
    pub unanswered: u64,
    /// Entries written into the ring, garbage ones included.
    pub entries: u64,
}

/// Why the simulator refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XraySimError {
    #[error("no unit ids given")]
    NoUnits,
    #[error("unit id {0} is not a device address (1 to {MAX_UNIT})")]
    BadUnit(u8),
    #[error("unit {0} is not hosted by this simulator")]
    UnknownUnit(u8),
    #[error("unit {unit}: no passage of scan {scan_id} is remembered to mark")]
    UnknownScan { unit: u8, scan_id: u32 },
}

/// One hosted X-ray device: its registers, ring writer, fault mode and what it remembers.
#[derive(Debug)]
struct Unit {
    /// The head register followed by the ring, as a read from `events` returns them.
    registers: Vec<u16>,
    writer: RingWriter,
    fault: XrayFault,
    stats: UnitStats,
    /// Tunnel-entry time and material of recent passages, by scan id, for marks.
    passages: HashMap<u32, (u64, Option<Material>)>,
    passage_order: VecDeque<u32>,
    history: VecDeque<XrayEvent>,
}

impl Unit {
    fn new(map: &XrayMap) -> Unit {
        Unit {
            registers: vec![0; usize::from(map.ring_len())],
            writer: RingWriter::new(map.ring),
            fault: XrayFault::Normal,
            stats: UnitStats::default(),
            passages: HashMap::new(),
            passage_order: VecDeque::new(),
            history: VecDeque::new(),
        }
    }

    /// Stamps `event` with the next sequence and writes it, garbled in garbage mode.
    fn push(&mut self, mut event: XrayEvent) -> XrayEvent {
        let (at, head) = self.writer.push(&mut event);
        let mut words = event.to_registers();
        if self.fault == XrayFault::Garbage {
            let [result, material] = words[3].to_be_bytes();
            words[3] = if self.stats.entries % 2 == 0 {
                u16::from_be_bytes([BAD_RESULT, material])
            } else {
                u16::from_be_bytes([result, BAD_MATERIAL])
            };
        }
        let at = usize::from(at);
        if let Some(slot) = self.registers.get_mut(at..at + usize::from(EVENT_LEN)) {
            slot.copy_from_slice(&words);
        }
        self.registers[0] = head;
        self.stats.entries += 1;
        bounded_push(&mut self.history, event, HISTORY);
        event
    }

    fn remember(&mut self, scan_id: u32, entered_at_ms: u64, material: Option<Material>) {
        if self
            .passages
            .insert(scan_id, (entered_at_ms, material))
            .is_none()
        {
            if let Some(old) = bounded_push(&mut self.passage_order, scan_id, REMEMBERED) {
                self.passages.remove(&old);
            }
        }
    }
}

/// Pushes `item`, dropping and returning the oldest beyond `cap`.
fn bounded_push<T>(q: &mut VecDeque<T>, item: T, cap: usize) -> Option<T> {
    q.push_back(item);
    if q.len() > cap {
        q.pop_front()
    } else {
        None
    }
}

/// Which transport a request came in on: they differ for units nobody hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bus {
    Tcp,
    Rtu,
}

/// The simulated X-ray devices' registers, fault modes and counters. Cloning gives another
/// handle to the same devices, so a test or a driver keeps one while the server runs.
#[derive(Debug, Clone)]
pub struct XrayState {
    map: XrayMap,
    inner: Arc<Mutex<BTreeMap<u8, Unit>>>,
}

impl XrayState {
    /// Devices at `units` (1..=247, duplicates ignored), each with an empty ring laid out by
    /// `map`, in normal mode.
    pub fn new(map: XrayMap, units: &[u8]) -> Result<XrayState, XraySimError> {
        if units.is_empty() {
            return Err(XraySimError::NoUnits);
        }
        let mut hosted = BTreeMap::new();
        for &u in units {
            if !(1..=MAX_UNIT).contains(&u) {
                return Err(XraySimError::BadUnit(u));
            }
            hosted.entry(u).or_insert_with(|| Unit::new(&map));
        }
        Ok(XrayState {
            map,
            inner: Arc::new(Mutex::new(hosted)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u8, Unit>> {
        // Held only for plain memory operations: a poisoned lock still guards consistent
        // registers, so keep serving rather than taking the simulator down.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_unit<T>(&self, unit: u8, f: impl FnOnce(&mut Unit) -> T) -> Result<T, XraySimError> {
        let mut units = self.lock();
        let u = units
            .get_mut(&unit)
            .ok_or(XraySimError::UnknownUnit(unit))?;
        Ok(f(u))
    }

    /// The register map every unit serves.
    pub fn map(&self) -> &XrayMap {
        &self.map
    }

    /// The hosted unit ids, ascending.
    pub fn units(&self) -> Vec<u8> {
        self.lock().keys().copied().collect()
    }

    /// A parcel passed unit `unit`'s tunnel: writes the verdict into its ring and returns the
    /// entry as written (with its sequence; in garbage mode its codes were garbled on the
    /// way to the registers).
    pub fn pass(
        &self,
        unit: u8,
        scan_id: u32,
        entered_at_ms: u64,
        result: XrayResult,
        material: Option<Material>,
    ) -> Result<XrayEvent, XraySimError> {
        self.with_unit(unit, |u| {
            u.remember(scan_id, entered_at_ms, material);
            u.push(XrayEvent {
                seq: 0,
                scan_id,
                result,
                material,
                entered_at_ms,
            })
        })
    }

    /// A later verdict for a scan that already passed (an officer's mark, usually
    /// [`XrayResult::OperatorMark`]): a new entry with the original passage's tunnel-entry
    /// time and material, which the controller takes as superseding the earlier one.
    pub fn mark(
        &self,
        unit: u8,
        scan_id: u32,
        result: XrayResult,
    ) -> Result<XrayEvent, XraySimError> {
        self.with_unit(unit, |u| {
            let (entered_at_ms, material) = *u
                .passages
                .get(&scan_id)
                .ok_or(XraySimError::UnknownScan { unit, scan_id })?;
            Ok(u.push(XrayEvent {
                seq: 0,
                scan_id,
                result,
                material,
                entered_at_ms,
            }))
        })?
    }

    /// Switches unit `unit` to `fault` from its next request (or, for garbage, next entry) on.
    pub fn set_fault(&self, unit: u8, fault: XrayFault) -> Result<(), XraySimError> {
        self.with_unit(unit, |u| u.fault = fault)
    }

    pub fn fault(&self, unit: u8) -> Result<XrayFault, XraySimError> {
        self.with_unit(unit, |u| u.fault)
    }

    pub fn stats(&self, unit: u8) -> Result<UnitStats, XraySimError> {
        self.with_unit(unit, |u| u.stats)
    }

    /// Reads of unit `unit` answered with registers; 0 for a unit not hosted.
    pub fn reads_served(&self, unit: u8) -> u64 {
        self.stats(unit).map_or(0, |s| s.reads)
    }

    /// The head register and the ring of unit `unit`, as one read of the whole ring returns
    /// them (the input of [`bondline_devices::xray::new_events`]).
    pub fn ring(&self, unit: u8) -> Result<Vec<u16>, XraySimError> {
        self.with_unit(unit, |u| u.registers.clone())
    }

    /// The entries pushed into unit `unit`'s ring, oldest first, as meant (before any
    /// garbling); the last 4096 at most.
    pub fn events(&self, unit: u8) -> Result<Vec<XrayEvent>, XraySimError> {
        self.with_unit(unit, |u| u.history.iter().copied().collect())
    }

    /// One request to unit `slave`: `None` means no answer at all.
    fn serve(
        &self,
        slave: u8,
        request: &Request<'_>,
        bus: Bus,
    ) -> Option<Result<Response, ExceptionCode>> {
        let mut units = self.lock();
        let Some(unit) = units.get_mut(&slave) else {
            return match bus {
                Bus::Rtu => None,
                Bus::Tcp => Some(Err(ExceptionCode::GatewayTargetDevice)),
            };
        };
        let answer = match unit.fault {
            XrayFault::Silent => {
                unit.stats.unanswered += 1;
                return None;
            }
            XrayFault::Exception(code) => Err(code),
            XrayFault::Normal | XrayFault::Garbage => read(&self.map, &unit.registers, request),
        };
        match &answer {
            Ok(_) => unit.stats.reads += 1,
            Err(_) => unit.stats.exceptions += 1,
        }
        Some(answer)
    }
}

/// Answers a read of input registers over the ring; anything else is refused.
fn read(map: &XrayMap, ring: &[u16], request: &Request<'_>) -> Result<Response, ExceptionCode> {
    let Request::ReadInputRegisters(addr, qty) = *request else {
        return Err(ExceptionCode::IllegalFunction);
    };
    if qty == 0 || qty > MAX_READ {
        return Err(ExceptionCode::IllegalDataValue);
    }
    let start = usize::from(addr)
        .checked_sub(usize::from(map.events))
        .ok_or(ExceptionCode::IllegalDataAddress)?;
    let words = ring
        .get(start..start + usize::from(qty))
        .ok_or(ExceptionCode::IllegalDataAddress)?;
    Ok(Response::ReadInputRegisters(words.to_vec()))
}

/// The Modbus service of one TCP connection or of the serial line.
#[derive(Debug, Clone)]
struct XrayService {
    state: XrayState,
    bus: Bus,
}

impl tokio_modbus::server::Service for XrayService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: SlaveRequest<'static>) -> Self::Future {
        let answer = match self.state.serve(req.slave, &req.request, self.bus) {
            None => Ok(None),
            Some(res) => res.map(Some),
        };
        future::ready(answer)
    }
}

/// A bound Modbus TCP X-ray simulator, not yet serving.
#[derive(Debug)]
pub struct XraySim {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: XrayState,
}

impl XraySim {
    /// Binds the listener now, so a test can bind port 0 and learn the port before serving.
    pub async fn bind(addr: SocketAddr, state: XrayState) -> std::io::Result<XraySim> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(XraySim {
            listener,
            local_addr,
            state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to the units' rings, fault modes and counters.
    pub fn state(&self) -> XrayState {
        self.state.clone()
    }

    /// Serves Modbus TCP clients, any number at once, until `shutdown` completes; open
    /// connections are closed then. Returns an error only if accepting fails.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let service = XrayService {
            state: self.state,
            bus: Bus::Tcp,
        };
        let on_connected = move |stream: TcpStream, peer: SocketAddr| {
            let service = service.clone();
            async move {
                tracing::info!(%peer, "modbus client connected to xray-sim");
                Ok::<_, std::io::Error>(Some((service, stream)))
            }
        };
        let on_process_error = |err: std::io::Error| {
            tracing::info!(%err, "modbus client connection ended");
        };
        tracing::info!(addr = %self.local_addr, "xray-sim listening (Modbus TCP)");
        let server = Server::new(self.listener);
        // Dropping `serve` at shutdown cancels the connection tasks it spawned.
        tokio::select! {
            res = server.serve(&on_connected, on_process_error) => res,
            () = shutdown => Ok(()),
        }
    }
}

/// Serves Modbus RTU on a serial device (or one end of a pty pair) until `shutdown`
/// completes, answering for every unit `state` hosts and staying quiet for the others. The
/// future owns a copy of `path`, so it can be spawned.
pub fn serve_rtu(
    path: &str,
    baud: u32,
    state: XrayState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
    let path = path.to_owned();
    async move {
        use tokio_serial::SerialPortBuilderExt as _;
        let serial = tokio_serial::new(&path, baud).open_native_async()?;
        let service = XrayService {
            state,
            bus: Bus::Rtu,
        };
        tracing::info!(path, baud, "xray-sim serving Modbus RTU");
        let server = tokio_modbus::server::rtu::Server::new(serial);
        tokio::select! {
            res = server.serve_forever(service) => res,
            () = shutdown => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
