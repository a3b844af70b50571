//! The line task: the machine's I/O. [`run`] waits for the next input (a scan, a PLC
//! answer, a clearance change, an X-ray verdict or image, a tick), reads the clocks once,
//! hands both to one handler of [`Line`] and carries the effects out in order: records to
//! the journal, commands to the PLC link, anomalies to the uplink, snapshot requests to the
//! cameras. It is kept apart from the handlers so that the machine stays free of channels
//! and clocks, and the tests can drive it without a runtime.

use std::collections::{HashMap, VecDeque};

use bondline_devices::contract::{Anomaly, ImageRecord};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::warn;

use super::effects::{Effect, Now, Turn};
use super::{Line, LineCtx};
use crate::floor::{ClearanceChange, DivertJob, PlcEvent, Recent, ScanEvent, XrayMsg};
use crate::journal::RecordSink;
use crate::metrics::Metrics;

/// The line task's channels.
pub struct LineIo {
    pub scans: mpsc::Receiver<ScanEvent>,
    pub plc: mpsc::Sender<DivertJob>,
    pub plc_events: mpsc::UnboundedReceiver<PlcEvent>,
    /// Clearance that changed.
    pub changes: broadcast::Receiver<ClearanceChange>,
    pub sink: RecordSink,
    /// Anomalies for the uplink to send at once; full means the uplink is behind, and the
    /// parcel's record carries the same facts.
    pub anomalies: mpsc::Sender<Anomaly>,
    /// Verdicts from the line's X-ray scanner.
    pub xray: Option<mpsc::UnboundedReceiver<XrayMsg>>,
    /// Processed images from the line's X-ray scanner, to be joined to parcels.
    pub images: Option<mpsc::Receiver<ImageRecord>>,
    /// What the store holds of this line's parcels of an earlier run, when the line starts
    /// before the store is open (see `App::start`); `None` when `ctx.recent` has it already.
    pub earlier: Option<oneshot::Receiver<HashMap<u32, Recent>>>,
}

/// The next message of an optional channel; never ready once it is gone.
async fn next<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What an earlier run's parcels are, once the store has been read; never ready once given
/// (or if it never comes: then an empty set).
async fn next_earlier(
    rx: &mut Option<oneshot::Receiver<HashMap<u32, Recent>>>,
) -> HashMap<u32, Recent> {
    match rx {
        Some(r) => {
            let got = r.await.unwrap_or_default();
            *rx = None;
            got
        }
        None => std::future::pending().await,
    }
}

async fn next_unbounded<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs until the scanner side closes its channel and the PLC has answered every job sent.
/// The task is the machine's I/O: it waits for the next input, reads the clocks once, hands
/// both to one handler of [`Line`] and carries out the effects ([`effects`](super::effects)).
pub async fn run(mut ctx: LineCtx, mut io: LineIo) {
    let recent = std::mem::take(&mut ctx.recent);
    let mut line = Line::new(
        ctx,
        recent,
        // Parcel ids start at a random point so ids from before a restart, which the PLC may
        // still be tracking, are not reused at once.
        rand::random::<u32>() >> 1,
    );
    line.earlier_pending = io.earlier.is_some();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let mut scanning = true;
    loop {
        tokio::select! {
            scan = io.scans.recv(), if scanning => match scan {
                Some(scan) => step(&mut line, &io, |l, t| l.on_scan(scan, t)),
                None => scanning = false,
            },
            ev = io.plc_events.recv() => match ev {
                Some(ev) => step(&mut line, &io, |l, t| l.on_plc(ev, t)),
                None => break,
            },
            w = io.changes.recv() => match w {
                Ok(ClearanceChange::Waybill(w)) => step(&mut line, &io, |l, t| l.on_change(&w, t)),
                Ok(ClearanceChange::All) => step(&mut line, &io, |l, t| l.on_change_all(t)),
                Ok(ClearanceChange::Forgotten(ws)) => step(&mut line, &io, |l, t| {
                    for w in ws.iter() {
                        l.on_forgotten(w, t);
                    }
                }),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    step(&mut line, &io, |l, t| l.on_changes_missed(n, t));
                }
                Err(broadcast::error::RecvError::Closed) => {}
            },
            msg = next_unbounded(&mut io.xray) => match msg {
                Some(msg) => step(&mut line, &io, |l, t| l.on_xray(msg, t)),
                None => io.xray = None,
            },
            image = next(&mut io.images) => match image {
                Some(image) => step(&mut line, &io, |l, t| l.on_image(image, t)),
                None => io.images = None,
            },
            recent = next_earlier(&mut io.earlier) => {
                step(&mut line, &io, |l, t| l.on_earlier(recent, t));
            }
            _ = tick.tick() => {
                line.ctx.beat.beat();
                step(&mut line, &io, |l, t| l.expire(t));
            }
        }
        if !scanning && line.in_flight == 0 {
            break;
        }
    }
    // Dispositions still waiting for the earlier run's parcels (a shutdown before the store
    // was read) are not recorded: without the store they would look unexplained, and the
    // PLC's ring reports them again to the next start, which can explain them.
    if line.earlier_pending && !line.deferred.is_empty() {
        warn!(line = %line.ctx.line, dispositions = line.deferred.len(), "stopping before the store was read: dispositions of an earlier run's parcels are left to the next start (the PLC reports them again)");
    }
    // What is still queued is taken in, not dropped: verdicts already left the scanner's
    // ring and images their spool. Images still waiting for a verdict are recorded without a
    // parcel rather than lost.
    if let Some(mut rx) = io.xray.take() {
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            step(&mut line, &io, |l, t| l.on_xray(msg, t));
        }
    }
    if let Some(mut rx) = io.images.take() {
        rx.close();
        while let Ok(image) = rx.try_recv() {
            step(&mut line, &io, |l, t| l.on_image(image, t));
        }
    }
    for image in line.joiner.drain_waiting() {
        io.sink.push(image);
    }
}

/// One turn: the clocks read once, one handler, its effects carried out.
fn step(line: &mut Line, io: &LineIo, handler: impl FnOnce(&mut Line, &mut Turn)) {
    let mut turn = Turn::at(Now::read());
    handler(line, &mut turn);
    carry_out(line, io, turn);
}

/// Carries out a turn's effects in order. A command the PLC link's queue cannot take is
/// handed back to the machine, whose answer (the parcel recorded as `overload`) is carried
/// out before anything that followed the command.
fn carry_out(line: &mut Line, io: &LineIo, turn: Turn) {
    let now = turn.now;
    let mut queue: VecDeque<Effect> = turn.effects.into();
    while let Some(effect) = queue.pop_front() {
        match effect {
            Effect::Record(r) => io.sink.push(*r),
            Effect::Anomaly(a) => {
                let parcel = a.parcel;
                if io.anomalies.try_send(*a).is_err() {
                    Metrics::add(&line.ctx.metrics.anomalies_dropped, 1);
                    warn!(line = %line.ctx.line, parcel, "anomaly queue full; the parcel's record carries the anomaly");
                }
            }
            Effect::Snapshots(captures) => {
                if let Some(cams) = &line.ctx.cameras {
                    cams.request(captures, &io.sink, &line.ctx.metrics);
                }
            }
            Effect::Divert(d) => {
                // Room in the link's queue first: a release refused by a full queue is not
                // written ahead for nothing (its intent's sync would be wasted on a command
                // never sent).
                match io.plc.try_reserve() {
                    Ok(permit) => {
                        // A release is written ahead: its command waits for the decision to
                        // be durable.
                        let durable = d.intent.map(|r| io.sink.push_intent(*r));
                        permit.send(DivertJob {
                            parcel: d.parcel,
                            lane: d.lane,
                            revision: d.revision,
                            deadline: d.deadline.into(),
                            withdraws_release: d.withdraws_release,
                            durable,
                        });
                        line.in_flight += 1;
                    }
                    Err(_) => {
                        let mut answer = Turn::at(now);
                        line.divert_refused(d.parcel, &mut answer);
                        for e in answer.effects.into_iter().rev() {
                            queue.push_front(e);
                        }
                    }
                }
            }
        }
    }
}
