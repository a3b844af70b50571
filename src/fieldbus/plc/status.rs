//! The link's status tick between jobs: the heartbeat both ways (a PLC counter stuck for
//! the heartbeat timeout drops the link), the lane states, the dispositions ring, and the
//! acknowledge register while commands are in doubt. Its own module because it is the
//! PLC's side of the conversation, read on an interval, not an answer to a job.

use std::time::{Duration, SystemTime};

use bondline_devices::plc::{new_dispositions, Disposition, PlcMap, LANE_REGISTERS};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::client::{Reader, Writer};

use super::connection::{call, Link};
use super::{late_ack, DivertError};
use crate::fieldbus::handshake::{Ack, Handshake};
use crate::floor::{LaneStates, PlcEvent};
use crate::metrics::{unix_ms, Metrics};

/// One status tick: heartbeat, lane states and dispositions (with a status section), then
/// the acknowledge register while commands are in doubt.
#[allow(clippy::too_many_arguments)]
pub(super) async fn tick(
    l: &mut Link,
    map: &PlcMap,
    hs: &mut Handshake,
    lanes: &LaneStates,
    ring_seen: &mut Option<u16>,
    events: &mpsc::UnboundedSender<PlcEvent>,
    metrics: &Metrics,
    status: bool,
) -> Option<DivertError> {
    if status {
        match poll_status(l, map, lanes, ring_seen).await {
            Ok((found, missed)) => {
                for d in found {
                    let _ = events.send(PlcEvent::Disposition(d));
                }
                if missed > 0 {
                    let _ = events.send(PlcEvent::DispositionsMissed(missed));
                }
            }
            Err(e) => return Some(e),
        }
    }
    hs.expire(unix_ms(SystemTime::now()));
    if !hs.any_in_doubt() {
        return None;
    }
    let timeout = Duration::from_millis(map.timeout_ms);
    match call(timeout, l.ctx.read_holding_registers(map.divert.ack, 1)).await {
        Ok(regs) => {
            if let Ack::Late(w) = hs.seen(regs.first().copied().unwrap_or(0)) {
                late_ack(w, events, metrics);
            }
            None
        }
        Err(e) => Some(e),
    }
}

pub(super) fn status_interval(map: &PlcMap) -> Option<Duration> {
    let hb = map.heartbeat.as_ref().map(|h| h.interval_ms);
    let st = map.status.as_ref().map(|s| s.poll_ms);
    match (hb, st) {
        (None, None) => None,
        (a, b) => Some(Duration::from_millis(
            a.unwrap_or(u64::MAX).min(b.unwrap_or(u64::MAX)),
        )),
    }
}

/// Heartbeat out and in, lane states, new dispositions.
async fn poll_status(
    l: &mut Link,
    map: &PlcMap,
    lanes: &LaneStates,
    ring_seen: &mut Option<u16>,
) -> Result<(Vec<Disposition>, u16), DivertError> {
    let timeout = Duration::from_millis(map.timeout_ms);
    if let Some(hb) = &map.heartbeat {
        l.beat = l.beat.wrapping_add(1);
        call(timeout, l.ctx.write_single_register(hb.controller, l.beat)).await?;
        let v = call(timeout, l.ctx.read_holding_registers(hb.plc, 1))
            .await?
            .first()
            .copied()
            .unwrap_or(0);
        let now = Instant::now();
        match l.plc_beat {
            Some((old, _)) if old != v => l.plc_beat = Some((v, now)),
            Some((_, since)) => {
                let stuck = now.duration_since(since);
                if stuck > Duration::from_millis(hb.timeout_ms) {
                    return Err(DivertError::HeartbeatLost(stuck));
                }
            }
            None => l.plc_beat = Some((v, now)),
        }
    }
    let Some(st) = &map.status else {
        return Ok((Vec::new(), 0));
    };
    let states = call(
        timeout,
        l.ctx.read_holding_registers(st.lanes, LANE_REGISTERS),
    )
    .await?;
    for (i, v) in states.iter().enumerate() {
        lanes.set(i as u16 + 1, *v);
    }
    let ring = call(
        timeout,
        l.ctx.read_holding_registers(st.dispositions, st.ring_len()),
    )
    .await?;
    let head = ring.first().copied().unwrap_or(0);
    match *ring_seen {
        // First read of this run: what the ring holds is reported (the line knows which of
        // those parcels an earlier run recorded already).
        None => {
            let (found, _) = new_dispositions(&ring, 0);
            *ring_seen = Some(head);
            Ok((found, 0))
        }
        Some(seen) => {
            let (found, missed) = new_dispositions(&ring, seen);
            *ring_seen = Some(head);
            Ok((found, missed))
        }
    }
}
