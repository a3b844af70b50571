//! The live board: per line, the latest parcels with their decision, divert and physical
//! outcome, lane counters and line alerts, kept in memory and fed by the journal's accepted
//! records. Every change is also turned once into a JSON event for the server-sent event
//! streams, so a hundred open screens cost one serialization per record.
//!
//! Pure state (`Board::apply`) is kept apart from the task that feeds it, so it is tested
//! without a runtime.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bondline_devices::contract::{LaneRole, Record};
use serde::Serialize;

/// Parcels kept per line; the page shows fewer. Re-decisions and dispositions arrive within
/// seconds of the first decision, well inside this window at any belt rate.
pub const ROWS_PER_LINE: usize = 200;
/// Line-wide alerts (those not about a parcel on the board) kept per line.
const ALERTS_PER_LINE: usize = 20;

/// One parcel on the board.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    /// Stable identity of the parcel on the page: line, tracking number and waybill.
    pub key: String,
    /// The sequence of the latest decision shown.
    pub seq: u64,
    pub parcel: u32,
    pub waybill: Option<String>,
    pub lane: u16,
    pub lane_role: LaneRole,
    pub rule: String,
    pub reason: String,
    pub scanned_at_ms: u64,
    pub revision: u32,
    /// The divert command's outcome (`acked`, `timeout`, ...), as in the record.
    pub divert: serde_json::Value,
    /// What the PLC reported it did, once it has.
    pub disposition: Option<Disposition>,
    /// Alerts raised about this parcel.
    pub alerts: Vec<String>,
    /// The X-ray verdict and images, on a line with an X-ray scanner; `null` otherwise.
    pub xray: Option<XrayCell>,
    /// Camera snapshots of the parcel (scan point, then lane), or why each is missing.
    pub snapshots: Vec<SnapshotThumb>,
    /// Counted in the lane counters (false for rows loaded from the journal at start).
    #[serde(skip)]
    counted: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Disposition {
    pub kind: serde_json::Value,
    pub lane: u16,
    pub lane_role: Option<LaneRole>,
    pub at_ms: u64,
}

/// A line-wide alert.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AlertRow {
    pub seq: u64,
    pub alert: serde_json::Value,
    pub detail: String,
    pub waybill: Option<String>,
    pub at_ms: u64,
}

/// A lane and how many parcels were decided for it since the daemon started.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LaneCount {
    pub lane: u16,
    pub role: LaneRole,
    pub count: u64,
}

#[derive(Debug, Clone)]
struct LineBoard {
    id: String,
    lanes: Vec<(u16, LaneRole)>,
    /// Newest first.
    rows: VecDeque<Row>,
    counts: BTreeMap<u16, u64>,
    alerts: VecDeque<AlertRow>,
}

/// What `/metrics` reports about decisions: (line, lane, role, rule, first decision?).
pub type DecisionKey = (String, u16, LaneRole, String, bool);

/// Every line's board.
#[derive(Debug, Clone, Default)]
pub struct Board {
    lines: Vec<LineBoard>,
    decisions: BTreeMap<DecisionKey, u64>,
}

/// What the board shows of a parcel's X-ray scan.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct XrayCell {
    /// `pending`, `clear`, `suspect`, `operator_mark` or `no_result`.
    pub state: String,
    pub material: Option<String>,
    pub scan_id: Option<u32>,
    pub images: Vec<Thumb>,
}

/// One X-ray view as the board shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Thumb {
    pub view: String,
    pub sha256: String,
    /// A small JPEG, base64; absent when the image could not be decoded.
    pub thumbnail_jpeg_b64: Option<String>,
    pub error: Option<String>,
}

/// One camera snapshot as the board shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SnapshotThumb {
    pub camera: String,
    /// `scan` or `lane`.
    pub point: String,
    pub lane: Option<u16>,
    pub sha256: Option<String>,
    /// A small JPEG, base64; absent when there is no picture.
    pub thumbnail_jpeg_b64: Option<String>,
    /// `no evidence: <reason>` when there is no picture.
    pub error: Option<String>,
    pub taken_at_ms: Option<u64>,
}

/// A line's board as sent to a page.
#[derive(Debug, Clone, Serialize)]
pub struct LineSnapshot {
    pub id: String,
    pub lanes: Vec<LaneCount>,
    pub rows: Vec<Row>,
    pub alerts: Vec<AlertRow>,
}

/// One change, as sent on the event stream.
#[derive(Debug, Clone, Serialize)]
pub struct Update {
    pub line: String,
    pub row: Option<Row>,
    pub alert: Option<AlertRow>,
    pub lanes: Vec<LaneCount>,
}

impl Board {
    /// A board for these lines, each with its lane numbers and roles.
    pub fn new(lines: impl IntoIterator<Item = (String, Vec<(u16, LaneRole)>)>) -> Board {
        Board {
            lines: lines
                .into_iter()
                .map(|(id, lanes)| LineBoard {
                    counts: lanes.iter().map(|(l, _)| (*l, 0)).collect(),
                    id,
                    lanes,
                    rows: VecDeque::new(),
                    alerts: VecDeque::new(),
                })
                .collect(),
            decisions: BTreeMap::new(),
        }
    }

    /// Shows a record from before the start without counting it.
    pub fn preload(&mut self, record: &Record) {
        self.apply_inner(record, false);
    }

    /// Applies an accepted record; returns the change for the pages, if the record is about
    /// a line on the board.
    pub fn apply(&mut self, record: &Record) -> Option<Update> {
        self.apply_inner(record, true)
    }

    fn apply_inner(&mut self, record: &Record, count: bool) -> Option<Update> {
        let line = self.lines.iter_mut().find(|l| l.id == record.line())?;
        let mut update = Update {
            line: line.id.clone(),
            row: None,
            alert: None,
            lanes: Vec::new(),
        };
        match record {
            Record::Parcel(p) => {
                let key = format!(
                    "{}/{}/{}",
                    p.line,
                    p.parcel,
                    p.waybill.as_deref().unwrap_or("")
                );
                let value = serde_json::to_value(p).unwrap_or_default();
                let mut row = Row {
                    key: key.clone(),
                    seq: p.seq,
                    parcel: p.parcel,
                    waybill: p.waybill.clone(),
                    lane: p.lane,
                    lane_role: p.lane_role,
                    rule: p.rule.clone(),
                    reason: p.reason.clone(),
                    scanned_at_ms: p.scanned_at_ms,
                    revision: p.revision,
                    divert: value.get("divert").cloned().unwrap_or_default(),
                    disposition: None,
                    alerts: Vec::new(),
                    xray: p.inputs.as_ref().and_then(|i| i.xray).map(|x| XrayCell {
                        state: bondline_devices::contract::wire_name(&x),
                        ..XrayCell::default()
                    }),
                    snapshots: Vec::new(),
                    counted: count,
                };
                if count {
                    self.decisions
                        .entry((
                            p.line.clone(),
                            p.lane,
                            p.lane_role,
                            p.rule.clone(),
                            p.revision == 0,
                        ))
                        .and_modify(|n| *n += 1)
                        .or_insert(1);
                }
                match line.rows.iter().position(|r| r.key == key) {
                    Some(i) => {
                        // A re-decision: the parcel moves lanes, the counters follow it.
                        let old = line.rows.remove(i).unwrap_or_else(|| row.clone());
                        if count && old.counted {
                            if let Some(n) = line.counts.get_mut(&old.lane) {
                                *n = n.saturating_sub(1);
                            }
                        }
                        row.disposition = old.disposition;
                        row.alerts = old.alerts;
                        row.snapshots = old.snapshots;
                        // What the X-ray said stays with the parcel across re-decisions.
                        if let (Some(new), Some(old)) = (row.xray.as_mut(), old.xray) {
                            if old.scan_id.is_some() || !old.images.is_empty() {
                                *new = old;
                            }
                        }
                        row.counted = count || old.counted;
                        if count {
                            *line.counts.entry(p.lane).or_insert(0) += 1;
                        }
                    }
                    None if count => *line.counts.entry(p.lane).or_insert(0) += 1,
                    None => {}
                }
                line.rows.push_front(row.clone());
                line.rows.truncate(ROWS_PER_LINE);
                update.row = Some(row);
            }
            Record::Disposition(d) => {
                let key = format!(
                    "{}/{}/{}",
                    d.line,
                    d.parcel,
                    d.waybill.as_deref().unwrap_or("")
                );
                let row = line.rows.iter_mut().find(|r| r.key == key)?;
                row.disposition = Some(Disposition {
                    kind: serde_json::to_value(d.disposition).unwrap_or_default(),
                    lane: d.lane,
                    lane_role: d.lane_role,
                    at_ms: d.at_ms,
                });
                update.row = Some(row.clone());
            }
            // A monthly report covers the gateway, not a parcel: the lookup lists it by time.
            Record::Report(_) => return None,
            Record::Xray(x) => {
                let key = format!(
                    "{}/{}/{}",
                    x.line,
                    x.parcel?,
                    x.waybill.as_deref().unwrap_or("")
                );
                let row = line.rows.iter_mut().find(|r| r.key == key)?;
                let cell = row.xray.get_or_insert_with(XrayCell::default);
                cell.state = match x.result {
                    Some(r) => r.as_str().to_string(),
                    None => "no_result".to_string(),
                };
                cell.material = x
                    .material
                    .map(|m| bondline_devices::contract::wire_name(&m));
                cell.scan_id = x.scan_id.or(cell.scan_id);
                update.row = Some(row.clone());
            }
            Record::Image(i) => {
                let key = format!(
                    "{}/{}/{}",
                    i.line,
                    i.parcel?,
                    i.waybill.as_deref().unwrap_or("")
                );
                let row = line.rows.iter_mut().find(|r| r.key == key)?;
                let cell = row.xray.get_or_insert_with(XrayCell::default);
                cell.scan_id = Some(i.scan_id);
                cell.images.push(Thumb {
                    view: i.view.clone(),
                    sha256: i.sha256.clone(),
                    thumbnail_jpeg_b64: i.thumbnail_jpeg_b64.clone(),
                    error: i.error.clone(),
                });
                update.row = Some(row.clone());
            }
            Record::Snapshot(s) => {
                let key = format!(
                    "{}/{}/{}",
                    s.line,
                    s.parcel,
                    s.waybill.as_deref().unwrap_or("")
                );
                let row = line.rows.iter_mut().find(|r| r.key == key)?;
                row.snapshots.push(SnapshotThumb {
                    camera: s.camera.clone(),
                    point: bondline_devices::contract::wire_name(&s.point),
                    lane: s.lane,
                    sha256: s.sha256.clone(),
                    thumbnail_jpeg_b64: s.thumbnail_jpeg_b64.clone(),
                    error: s.error.clone(),
                    taken_at_ms: s.taken_at_ms,
                });
                update.row = Some(row.clone());
            }
            // Pieces of originals: nothing to show.
            Record::ImageChunk(_) => return None,
            Record::Alert(a) => {
                let kind = serde_json::to_value(a.alert).unwrap_or_default();
                let key = a
                    .parcel
                    .map(|p| format!("{}/{}/{}", a.line, p, a.waybill.as_deref().unwrap_or("")));
                match key.and_then(|k| line.rows.iter_mut().find(|r| r.key == k)) {
                    Some(row) => {
                        row.alerts
                            .push(kind.as_str().unwrap_or("alert").to_string());
                        update.row = Some(row.clone());
                    }
                    None => {
                        let alert = AlertRow {
                            seq: a.seq,
                            alert: kind,
                            detail: a.detail.clone(),
                            waybill: a.waybill.clone(),
                            at_ms: a.at_ms,
                        };
                        line.alerts.push_front(alert.clone());
                        line.alerts.truncate(ALERTS_PER_LINE);
                        update.alert = Some(alert);
                    }
                }
            }
        }
        update.lanes = lane_counts(line);
        Some(update)
    }

    /// Every line's board, rows newest first, at most `rows` per line.
    pub fn snapshot(&self, rows: usize) -> Vec<LineSnapshot> {
        self.lines
            .iter()
            .map(|l| LineSnapshot {
                id: l.id.clone(),
                lanes: lane_counts(l),
                rows: l.rows.iter().take(rows).cloned().collect(),
                alerts: l.alerts.iter().cloned().collect(),
            })
            .collect()
    }

    /// Decisions since start by line, lane, role, rule and first-or-re-decision.
    pub fn decisions(&self) -> &BTreeMap<DecisionKey, u64> {
        &self.decisions
    }
}

fn lane_counts(line: &LineBoard) -> Vec<LaneCount> {
    line.lanes
        .iter()
        .map(|(lane, role)| LaneCount {
            lane: *lane,
            role: *role,
            count: line.counts.get(lane).copied().unwrap_or(0),
        })
        .collect()
}

/// An event for the pages, serialized once and shared by every stream.
#[derive(Debug, Clone)]
pub enum Event {
    /// An [`Update`] as JSON.
    Update(Arc<str>),
    /// The board missed records: pages must fetch it whole again.
    Resync,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::contract::{
        AlertKind, AlertRecord, DispositionKind, DispositionRecord, DivertOutcome, DivertStatus,
        ParcelRecord, ReadOutcome, SCHEMA,
    };

    fn parcel(seq: u64, n: u32, role: LaneRole, lane: u16, revision: u32) -> Record {
        Record::Parcel(ParcelRecord {
            schema: SCHEMA,
            msg_id: format!("gw-{seq}"),
            seq,
            prev_hash: String::new(),
            gateway: "gw".into(),
            line: "L1".into(),
            parcel: n,
            read: ReadOutcome::Ok,
            waybill: Some(format!("BL{n}")),
            lane,
            lane_role: role,
            rule: "undeclared".into(),
            reason: "no declaration".into(),
            instruction_id: None,
            scanned_at_ms: 1000,
            decided_at_ms: 1000,
            divert: DivertOutcome {
                status: DivertStatus::Acked,
                plc_seq: Some(1),
                detail: None,
                at_ms: 1000,
                late: false,
            },
            revision,
            deadline_ms: None,
            rule_set: Some("builtin-1".into()),
            rules_fired: Vec::new(),
            inputs: None,
        })
    }

    fn board() -> Board {
        Board::new([(
            "L1".to_string(),
            vec![
                (1, LaneRole::Release),
                (2, LaneRole::Inspection),
                (3, LaneRole::Hold),
            ],
        )])
    }

    fn count(b: &Board, lane: u16) -> u64 {
        b.snapshot(10)[0]
            .lanes
            .iter()
            .find(|l| l.lane == lane)
            .unwrap()
            .count
    }

    #[test]
    fn a_re_decision_moves_the_parcel_and_its_count() {
        let mut b = board();
        b.apply(&parcel(1, 7, LaneRole::Hold, 3, 0)).unwrap();
        b.apply(&parcel(2, 8, LaneRole::Hold, 3, 0)).unwrap();
        assert_eq!(count(&b, 3), 2);
        let u = b.apply(&parcel(3, 7, LaneRole::Inspection, 2, 1)).unwrap();
        assert_eq!(u.row.as_ref().unwrap().lane, 2);
        assert_eq!((count(&b, 3), count(&b, 2)), (1, 1));
        let snap = b.snapshot(10);
        assert_eq!(snap[0].rows.len(), 2, "one row per parcel");
        assert_eq!(snap[0].rows[0].seq, 3, "the re-decided parcel is on top");
        assert!(snap[0].rows[0].xray.is_none());
        let first = b
            .decisions()
            .get(&("L1".into(), 3, LaneRole::Hold, "undeclared".into(), true));
        assert_eq!(first, Some(&2));
    }

    #[test]
    fn dispositions_and_alerts_land_on_their_row_or_the_line() {
        let mut b = board();
        b.apply(&parcel(1, 7, LaneRole::Hold, 3, 0)).unwrap();
        let u = b
            .apply(&Record::Disposition(DispositionRecord {
                schema: SCHEMA,
                msg_id: "gw-2".into(),
                seq: 2,
                prev_hash: String::new(),
                gateway: "gw".into(),
                line: "L1".into(),
                parcel: 7,
                waybill: Some("BL7".into()),
                disposition: DispositionKind::Sorted,
                lane: 3,
                lane_role: Some(LaneRole::Hold),
                commanded_lane: Some(3),
                at_ms: 2000,
            }))
            .unwrap();
        assert_eq!(u.row.unwrap().disposition.unwrap().kind, "sorted");
        let alert = |parcel: Option<u32>| {
            Record::Alert(AlertRecord {
                schema: SCHEMA,
                msg_id: "gw-3".into(),
                seq: 3,
                prev_hash: String::new(),
                gateway: "gw".into(),
                line: "L1".into(),
                parcel,
                waybill: parcel.map(|p| format!("BL{p}")),
                alert: AlertKind::LateDivert,
                detail: "late".into(),
                at_ms: 3000,
            })
        };
        let u = b.apply(&alert(Some(7))).unwrap();
        assert_eq!(u.row.unwrap().alerts, vec!["late_divert".to_string()]);
        let u = b.apply(&alert(None)).unwrap();
        assert!(u.row.is_none());
        assert_eq!(b.snapshot(10)[0].alerts.len(), 1);
        // Records of lines not on the board, or dispositions of unknown parcels, change nothing.
        let mut other = parcel(4, 9, LaneRole::Hold, 3, 0);
        if let Record::Parcel(p) = &mut other {
            p.line = "L9".into();
        }
        assert!(b.apply(&other).is_none());
    }

    #[test]
    fn snapshots_land_on_their_parcel_and_stay_through_a_re_decision() {
        let snapshot = |seq: u64, error: Option<&str>| {
            let c = crate::camera::Capture {
                camera: "entry".into(),
                point: bondline_devices::contract::CameraPoint::Scan,
                lane: None,
                parcel: 7,
                waybill: Some("BL7".into()),
                due: std::time::Instant::now(),
                due_at_ms: 1200,
            };
            let mut r = crate::camera::schedule::no_evidence("gw", "L1", &c, "x");
            r.seq = seq;
            r.error = error.map(str::to_string);
            r.sha256 = error.is_none().then(|| "ab".repeat(32));
            r.thumbnail_jpeg_b64 = error.is_none().then(|| "AAAA".into());
            Record::Snapshot(r)
        };
        let mut b = board();
        b.apply(&parcel(1, 7, LaneRole::Hold, 3, 0)).unwrap();
        let u = b.apply(&snapshot(2, None)).unwrap();
        let row = u.row.unwrap();
        assert_eq!(row.snapshots.len(), 1);
        assert_eq!(row.snapshots[0].point, "scan");
        assert_eq!(row.snapshots[0].thumbnail_jpeg_b64.as_deref(), Some("AAAA"));
        b.apply(&snapshot(3, Some("no evidence: camera queue full")))
            .unwrap();
        let u = b.apply(&parcel(4, 7, LaneRole::Inspection, 2, 1)).unwrap();
        let row = u.row.unwrap();
        assert_eq!(row.snapshots.len(), 2);
        assert_eq!(
            row.snapshots[1].error.as_deref(),
            Some("no evidence: camera queue full")
        );
    }

    #[test]
    fn preloaded_rows_are_shown_not_counted_and_rows_are_bounded() {
        let mut b = board();
        b.preload(&parcel(1, 1, LaneRole::Hold, 3, 0));
        assert_eq!(count(&b, 3), 0);
        b.apply(&parcel(2, 1, LaneRole::Release, 1, 1)).unwrap();
        assert_eq!(
            (count(&b, 3), count(&b, 1)),
            (0, 1),
            "nothing subtracted below zero"
        );
        for i in 0..(ROWS_PER_LINE as u32 + 50) {
            b.apply(&parcel(10 + i as u64, 100 + i, LaneRole::Hold, 3, 0));
        }
        assert_eq!(b.snapshot(usize::MAX)[0].rows.len(), ROWS_PER_LINE);
        assert_eq!(b.snapshot(30)[0].rows.len(), 30);
    }
}
