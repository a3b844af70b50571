//! When each camera should look for which parcel, and the record of a snapshot not taken.
//! Pure: no I/O, no runtime; the line calls it from its decision path.
//!
//! A scan camera photographs every scanned parcel at `scan time + offset`. A lane camera
//! photographs a parcel at `scan time + offset` only when, at the parcel's divert deadline,
//! its lane is one the camera watches: the deadline is the moment the controller's word on
//! the lane is final (later instructions only raise alerts), it comes before the parcel
//! reaches a lane camera (which is past the first gate, checked at load), and it exists on
//! every line, whereas a PLC disposition comes after the parcel has passed the gate, or not
//! at all from a PLC without a status section.

use std::time::{Duration, Instant, SystemTime};

use bondline_devices::contract::{CameraPoint, SnapshotRecord, SCHEMA};

use crate::metrics::unix_ms;

/// One snapshot to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub camera: String,
    pub point: CameraPoint,
    /// The lane, for a lane camera.
    pub lane: Option<u16>,
    pub parcel: u32,
    pub waybill: Option<String>,
    /// When the parcel is in the camera's field, on this process's monotonic clock.
    pub due: Instant,
    /// The same moment as wall-clock Unix ms, for the record.
    pub due_at_ms: u64,
}

/// One camera as its line sees it.
#[derive(Debug, Clone)]
pub struct Watch {
    pub camera: String,
    pub scan: bool,
    pub lanes: Vec<u16>,
    pub offset: Duration,
}

/// Where along the line a parcel is to be photographed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// At the scan point: every parcel.
    Scan,
    /// Over this lane: a parcel bound for it.
    Lane(u16),
}

/// The snapshots a parcel scanned at `scanned` (monotonic) / `scanned_at` (wall clock) needs
/// from the cameras among `watches` that look at `at`.
pub fn captures(
    watches: &[Watch],
    at: At,
    parcel: u32,
    waybill: Option<&str>,
    scanned: Instant,
    scanned_at: SystemTime,
) -> Vec<Capture> {
    let (point, lane) = match at {
        At::Scan => (CameraPoint::Scan, None),
        At::Lane(l) => (CameraPoint::Lane, Some(l)),
    };
    watches
        .iter()
        .filter(|w| match at {
            At::Scan => w.scan,
            At::Lane(l) => w.lanes.contains(&l),
        })
        .map(|w| capture(w, point, lane, parcel, waybill, scanned, scanned_at))
        .collect()
}

fn capture(
    w: &Watch,
    point: CameraPoint,
    lane: Option<u16>,
    parcel: u32,
    waybill: Option<&str>,
    scanned: Instant,
    scanned_at: SystemTime,
) -> Capture {
    Capture {
        camera: w.camera.clone(),
        point,
        lane,
        parcel,
        waybill: waybill.map(str::to_string),
        due: scanned + w.offset,
        due_at_ms: unix_ms(scanned_at + w.offset),
    }
}

/// A snapshot record without a picture: `error` is `no evidence: <reason>`.
pub fn no_evidence(gateway: &str, line: &str, c: &Capture, reason: &str) -> SnapshotRecord {
    SnapshotRecord {
        schema: SCHEMA,
        msg_id: String::new(),
        seq: 0,
        prev_hash: String::new(),
        gateway: gateway.to_string(),
        line: line.to_string(),
        camera: c.camera.clone(),
        point: c.point,
        lane: c.lane,
        parcel: c.parcel,
        waybill: c.waybill.clone(),
        due_at_ms: c.due_at_ms,
        taken_at_ms: None,
        sha256: None,
        bytes: 0,
        width: None,
        height: None,
        thumbnail_jpeg_b64: None,
        chunks: 0,
        kept_at: None,
        error: Some(format!("no evidence: {reason}")),
        at_ms: unix_ms(SystemTime::now()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watches() -> Vec<Watch> {
        vec![
            Watch {
                camera: "entry".into(),
                scan: true,
                lanes: vec![],
                offset: Duration::from_millis(250),
            },
            Watch {
                camera: "lanes".into(),
                scan: false,
                lanes: vec![2, 3],
                offset: Duration::from_secs(2),
            },
        ]
    }

    #[test]
    fn every_parcel_is_due_at_the_scan_camera_after_its_offset() {
        let now = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000);
        let c = captures(&watches(), At::Scan, 7, Some("BL7"), now, wall);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].camera, "entry");
        assert_eq!((c[0].point, c[0].lane), (CameraPoint::Scan, None));
        assert_eq!(c[0].due, now + Duration::from_millis(250));
        assert_eq!(c[0].due_at_ms, 1_000_250);
        assert_eq!(c[0].waybill.as_deref(), Some("BL7"));
    }

    #[test]
    fn only_watched_lanes_are_photographed() {
        let now = Instant::now();
        let wall = SystemTime::UNIX_EPOCH;
        assert!(captures(&watches(), At::Lane(1), 7, None, now, wall).is_empty());
        let c = captures(&watches(), At::Lane(2), 7, None, now, wall);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].point, c[0].lane), (CameraPoint::Lane, Some(2)));
        assert_eq!(c[0].due_at_ms, 2_000);
        let r = no_evidence("gw", "L1", &c[0], "camera queue full");
        assert_eq!(r.error.as_deref(), Some("no evidence: camera queue full"));
        assert_eq!((r.parcel, r.sha256, r.chunks), (7, None, 0));
    }
}
