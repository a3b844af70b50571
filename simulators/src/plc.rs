//! `plc-sim`: a sorter PLC's Modbus interface, as described by a [`PlcMap`] profile.
//!
//! The simulator holds 65536 holding registers and nothing else; that is all the divert
//! contract needs. When the controller writes a whole divert block (one "write multiple
//! registers" of four words at `divert.block`) the simulator records the command and copies its
//! sequence into `divert.ack`, which is the acknowledge the controller polls for. Partial or
//! misaligned writes are stored like any register write but are not commands, as on a real PLC
//! whose program only reacts to the sequence word of a complete block.
//!
//! Fault knobs on [`PlcState`] let tests delay the acknowledge past the controller's timeout or
//! make the PLC refuse every request with a Modbus exception, so both failure kinds (a late
//! handshake, a device that answers "no") can be driven without a real PLC.

use std::future::{self, Future};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bondline_devices::plc::{DivertCommand, PlcMap, DIVERT_BLOCK_LEN};
use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

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

/// The simulated PLC's memory and fault settings. Cloning gives another handle to the same
/// state, so a test keeps one while the server runs.
#[derive(Debug, Clone)]
pub struct PlcState {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    registers: Box<[u16]>,
    diverts: Vec<ReceivedDivert>,
    ack_delay: Duration,
    refuse: bool,
}

impl Default for PlcState {
    fn default() -> PlcState {
        PlcState::new()
    }
}

impl PlcState {
    /// All registers zero, no faults.
    pub fn new() -> PlcState {
        PlcState {
            inner: Arc::new(Mutex::new(Inner {
                registers: vec![0; REGISTERS].into_boxed_slice(),
                diverts: Vec::new(),
                ack_delay: Duration::ZERO,
                refuse: false,
            })),
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

    pub fn divert_count(&self) -> usize {
        self.lock().diverts.len()
    }

    /// The current value of holding register `addr`.
    pub fn register(&self, addr: u16) -> u16 {
        self.lock().registers[usize::from(addr)]
    }

    /// Sets holding register `addr`, as the PLC program would.
    pub fn set_register(&self, addr: u16, value: u16) {
        self.lock().registers[usize::from(addr)] = value;
    }

    /// Delays the acknowledge of each following divert by `delay` (zero: acknowledge at once).
    /// A delay beyond the profile's `timeout_ms` makes the controller see a handshake timeout.
    pub fn set_ack_delay(&self, delay: Duration) {
        self.lock().ack_delay = delay;
    }

    /// While set, every request is answered with the exception "server device failure", as a
    /// PLC in stop mode or with a faulted program does.
    pub fn set_refuse(&self, refuse: bool) {
        self.lock().refuse = refuse;
    }

    /// Applies one request to the registers. Pure apart from the delayed-ack task.
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
                        inner.diverts.push(ReceivedDivert {
                            seq: cmd.seq,
                            lane: cmd.lane,
                            parcel: cmd.parcel,
                            at: Instant::now(),
                        });
                        let delay = inner.ack_delay;
                        if delay.is_zero() {
                            inner.registers[usize::from(map.divert.ack)] = cmd.seq;
                        } else {
                            drop(inner);
                            self.ack_later(map.divert.ack, cmd.seq, delay);
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
            state.set_register(ack, seq);
        });
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
    pub async fn bind(addr: SocketAddr, map: PlcMap) -> std::io::Result<PlcSim> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(PlcSim {
            listener,
            local_addr,
            map,
            state: PlcState::new(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to the registers, received diverts and fault knobs.
    pub fn state(&self) -> PlcState {
        self.state.clone()
    }

    /// Serves Modbus TCP clients, any number at once, until `shutdown` completes. Connections
    /// still open at shutdown are closed. Returns an error only if accepting fails.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let service = PlcService {
            state: self.state,
            map: self.map,
            rtu_unit: None,
        };
        let on_connected = move |stream, peer: SocketAddr| {
            let service = service.clone();
            async move {
                tracing::info!(%peer, "modbus client connected");
                accept_tcp_connection(stream, peer, |_| Ok(Some(service.clone())))
            }
        };
        let on_process_error = |err: std::io::Error| {
            tracing::info!(%err, "modbus client connection ended");
        };
        tracing::info!(addr = %self.local_addr, "plc-sim listening (Modbus TCP)");
        let server = Server::new(self.listener);
        // Dropping `serve` at shutdown cancels the per-connection tasks it spawned.
        tokio::select! {
            res = server.serve(&on_connected, on_process_error) => res,
            () = shutdown => Ok(()),
        }
    }
}

/// Serves Modbus RTU on a serial device (or one end of a pty pair) until `shutdown` completes,
/// answering only requests for `map.unit_id` and applying broadcasts silently.
pub async fn serve_rtu(
    path: &str,
    baud: u32,
    map: PlcMap,
    state: PlcState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use tokio_serial::SerialPortBuilderExt as _;
    let serial = tokio_serial::new(path, baud).open_native_async()?;
    let service = PlcService {
        state,
        rtu_unit: Some(map.unit_id),
        map,
    };
    tracing::info!(path, baud, "plc-sim serving Modbus RTU");
    let server = tokio_modbus::server::rtu::Server::new(serial);
    tokio::select! {
        res = server.serve_forever(service) => res,
        () = shutdown => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[tokio::test]
    async fn divert_over_modbus_tcp_is_acknowledged() {
        let map = map();
        let sim = PlcSim::bind("127.0.0.1:0".parse().expect("addr"), map.clone())
            .await
            .expect("bind");
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
}
