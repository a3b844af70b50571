//! The Modbus I/O of the simulated PLC: [`PlcSim`] serving any number of Modbus TCP clients
//! (with the "down" knob closing their connections), and [`serve_rtu`] on a serial line
//! answering its unit id. Both hand each request to the [`PlcState`] and run the heartbeat.

use std::future::{self, Future};
use std::net::SocketAddr;

use bondline_devices::plc::PlcMap;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Response, SlaveRequest};

use super::heartbeat::heartbeat;
use super::{PlcOptions, PlcState};

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
