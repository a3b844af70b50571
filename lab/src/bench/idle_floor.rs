//! A line with no parcels, for the benches that measure the uplink (`drain`, `backlog`): a
//! PLC simulator and a scanner that takes the connection and stays silent, so the daemon
//! starts with its devices up and no parcel disturbs the figure.

use std::net::SocketAddr;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The simulators of one idle line, running until [`IdleFloor::stop`].
pub struct IdleFloor {
    plc: SocketAddr,
    scanner: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl IdleFloor {
    /// Starts the PLC simulator and the silent scanner on loopback ports.
    pub async fn start() -> anyhow::Result<IdleFloor> {
        use bondline_simulators::plc::PlcSim;

        let (_, map) = super::builtin_devices()?;
        let loopback: SocketAddr = "127.0.0.1:0".parse()?;
        let plc = PlcSim::bind(loopback, map).await?;
        let plc_addr = plc.local_addr();
        let stop = CancellationToken::new();
        let plc_task = {
            let stop = stop.clone().cancelled_owned();
            tokio::spawn(async move {
                let _ = plc.run(stop).await;
            })
        };
        let scanner = tokio::net::TcpListener::bind(loopback).await?;
        let scanner_addr = scanner.local_addr()?;
        let scanner_task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut held = Vec::new();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        r = scanner.accept() => match r {
                            Ok((s, _)) => held.push(s),
                            Err(_) => return,
                        },
                    }
                }
            })
        };
        Ok(IdleFloor {
            plc: plc_addr,
            scanner: scanner_addr,
            stop,
            tasks: vec![plc_task, scanner_task],
        })
    }

    /// The `[devices]` and `[[lines]]` sections of line `L1` on this floor.
    pub fn config(&self) -> String {
        format!(
            "[devices.scanner]\nprofile = \"scanner-stx-etx\"\ntcp = \"{}\"\n\
             [devices.plc]\nprofile = \"sorter-plc\"\ntcp = \"{}\"\n\
             [[lines]]\nid = \"L1\"\nscanner = \"scanner\"\nplc = \"plc\"\n\
             geometry = {{ belt_speed_m_s = 2.0, scan_to_gate_m = 3.0, margin_ms = 300 }}\n\
             lanes = [{{ lane = 1, role = \"release\" }}, {{ lane = 2, role = \"inspection\" }}, \
             {{ lane = 3, role = \"hold\" }}, {{ lane = 4, role = \"exception\" }}]\n",
            self.scanner, self.plc
        )
    }

    /// Stops the simulators and waits for them.
    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
