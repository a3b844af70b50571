//! X-ray scanners: their verdict rings read over Modbus (TCP, or RTU on RS-485).
//!
//! A scanner on TCP gets a task of its own. Scanners on one serial port share it: one task
//! owns the port and takes them in turn, each at its profile's polling interval, pausing the
//! port's `bus_delay_ms` between requests so every device has turned the line around. A
//! scanner that does not answer within its timeout is marked down and asked again only every
//! [`SILENT_RETRY`], so one silent device costs the others one timeout now and then, never a
//! stall; after such a timeout the port is opened anew, so a late answer cannot be taken for
//! the next device's.
//!
//! Verdicts go to the scanner's line as [`XrayMsg`]s; the line joins them to parcels (see
//! `line::xray`). A Modbus exception leaves the link up (the device answered) and is shown
//! as its last error; entries that do not decode and entries overwritten before they were
//! read are reported to the line, which raises an alert. The first read after the process
//! starts only notes where the ring stands: verdicts from before it cannot be joined to
//! parcels tracked by this process.

use std::sync::Arc;
use std::time::Duration;

use bondline_devices::xray::new_events;

use crate::floor::XrayMsg;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::client::Reader;
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::Slave;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::config::{Transport, XrayDevice};
use crate::metrics::Metrics;

/// How often a scanner that stopped answering is asked again.
pub const SILENT_RETRY: Duration = Duration::from_secs(2);

/// One scanner as its bus task sees it.
struct Unit {
    dev: XrayDevice,
    tx: mpsc::UnboundedSender<XrayMsg>,
    /// The ring's head at the last read; `None` before the first.
    seen: Option<u16>,
    next_poll: Instant,
    up: Option<bool>,
}

impl Unit {
    fn link(&self) -> String {
        format!("xray:{}", self.dev.name)
    }

    fn set_up(&mut self, metrics: &Metrics, up: bool, error: Option<String>) {
        if self.up != Some(up) {
            match &error {
                Some(e) => warn!(xray = %self.dev.name, error = %e, "X-ray scanner down"),
                None => {
                    info!(xray = %self.dev.name, transport = %self.dev.transport, "X-ray scanner answering")
                }
            }
        }
        self.up = Some(up);
        metrics.set_link(&self.link(), up, error);
    }

    /// Takes a ring read: forwards new verdicts, reports what was lost.
    fn take(&mut self, regs: &[u16], metrics: &Metrics) {
        let head = regs.first().copied().unwrap_or(0);
        let Some(seen) = self.seen.replace(head) else {
            return;
        };
        let new = new_events(regs, seen);
        let device = self.dev.name.clone();
        if new.restarted {
            warn!(xray = %device, seen, head, "X-ray scanner restarted its verdict numbering; reading its ring afresh");
        }
        Metrics::add(&metrics.xray_verdicts, new.events.len() as u64);
        for event in new.events {
            let _ = self.tx.send(XrayMsg::Verdict {
                device: device.clone(),
                event,
            });
        }
        if new.missed > 0 || !new.errors.is_empty() {
            Metrics::add(
                &metrics.xray_events_lost,
                new.missed as u64 + new.errors.len() as u64,
            );
            let mut detail = Vec::new();
            if new.missed > 0 {
                detail.push(format!(
                    "{} verdict(s) overwritten in the scanner's ring before they were read",
                    new.missed
                ));
            }
            detail.extend(new.errors.iter().map(|e| format!("undecodable {e}")));
            let detail = detail.join("; ");
            warn!(xray = %device, %detail, "X-ray verdicts lost");
            let _ = self.tx.send(XrayMsg::Lost { device, detail });
        }
    }
}

/// The reading tasks to run: one per TCP scanner, one per serial port.
pub fn tasks(
    devices: Vec<(XrayDevice, mpsc::UnboundedSender<XrayMsg>)>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Vec<impl std::future::Future<Output = ()>> {
    let mut buses: Vec<Vec<Unit>> = Vec::new();
    for (dev, tx) in devices {
        let unit = Unit {
            dev,
            tx,
            seen: None,
            next_poll: Instant::now(),
            up: None,
        };
        let shared = match &unit.dev.transport {
            Transport::Serial(s) => buses
                .iter_mut()
                .find(|b| matches!(&b[0].dev.transport, Transport::Serial(o) if o.path == s.path)),
            Transport::Tcp { .. } => None,
        };
        match shared {
            Some(bus) => bus.push(unit),
            None => buses.push(vec![unit]),
        }
    }
    buses
        .into_iter()
        .map(|units| run_bus(units, metrics.clone(), shutdown.clone()))
        .collect()
}

/// How one request went.
enum Outcome {
    Read(Vec<u16>),
    /// The device answered with a Modbus exception: it is there, and refused.
    Refused(String),
    /// No answer in time, or a garbled one: the device is down, the connection suspect.
    Failed(String),
}

async fn run_bus(mut units: Vec<Unit>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let transport = units[0].dev.transport.clone();
    let delay = match &transport {
        Transport::Serial(s) => s.bus_delay,
        Transport::Tcp { .. } => Duration::ZERO,
    };
    let open_timeout = Duration::from_secs(2);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    while !shutdown.is_cancelled() {
        let mut ctx = match super::attach(&transport, units[0].dev.map.unit_id, open_timeout).await
        {
            Ok(ctx) => {
                backoff.reset();
                ctx
            }
            Err(e) => {
                for u in &mut units {
                    u.set_up(
                        &metrics,
                        false,
                        Some(format!("cannot open {transport}: {e}")),
                    );
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                }
            }
        };
        // Poll until the connection must be made anew.
        loop {
            let Some(i) = (0..units.len()).min_by_key(|i| units[*i].next_poll) else {
                return;
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(units[i].next_poll) => {}
            }
            let u = &mut units[i];
            let map = u.dev.map.clone();
            let timeout = Duration::from_millis(map.timeout_ms);
            ctx.set_slave(Slave(map.unit_id));
            let outcome = match tokio::time::timeout(
                timeout,
                ctx.read_input_registers(map.events, map.ring_len()),
            )
            .await
            {
                Ok(Ok(Ok(regs))) => Outcome::Read(regs),
                Ok(Ok(Err(code))) => Outcome::Refused(format!("scanner refused: {code}")),
                Ok(Err(e)) => Outcome::Failed(format!("link failed: {e}")),
                Err(_) => Outcome::Failed(format!("no answer within {timeout:?}")),
            };
            let now = Instant::now();
            let reopen = match outcome {
                Outcome::Read(regs) => {
                    u.set_up(&metrics, true, None);
                    u.take(&regs, &metrics);
                    u.next_poll = now + Duration::from_millis(map.poll_ms);
                    false
                }
                Outcome::Refused(e) => {
                    Metrics::add(&metrics.xray_errors, 1);
                    u.set_up(&metrics, true, Some(e));
                    u.next_poll = now + Duration::from_millis(map.poll_ms);
                    false
                }
                Outcome::Failed(e) => {
                    Metrics::add(&metrics.xray_errors, 1);
                    u.set_up(&metrics, false, Some(e));
                    u.next_poll = now + SILENT_RETRY;
                    true
                }
            };
            if reopen {
                break;
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        // A pause before opening again, so a device that fails at once cannot spin the loop.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay.max(Duration::from_millis(20))) => {}
        }
    }
}
