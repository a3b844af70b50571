//! One release admits one parcel: the duplicate-label rule and the gateway's memory of
//! released waybills.
//!
//! Printing a cleared waybill on more boxes is the oldest trick on a bonded line. Once a
//! parcel with a waybill was commanded to (or disposed to) the release lane, a later scan of
//! the same waybill on any line of the gateway is a second physical parcel, a *duplicate*,
//! unless what the floor knows shows it is the same parcel coming round again:
//!
//! - re-scans are allowed at all (`[duplicates] recirculation = true`);
//! - the PLC reported the earlier parcel in a lane that is not the release lane, and at least
//!   `min_loop_ms` passed since its scan (a parcel cannot come round faster than the loop).
//!   Without that word, a clone scanned after the loop time with the same weight would pass
//!   for it: no disposition (a PLC that reports none, a ring that overran) and a disposition
//!   that does not say where it went (`lost`, lane 0) both count as released;
//! - the weights agree within `weight_tolerance_g` (an unweighed scan on either side counts
//!   as a mismatch unless `allow_unweighed = true`).
//!
//! A parcel the PLC reports in the release lane is never a recirculation. A waybill declared
//! with `pieces = N` admits N released parcels before the rule applies. When in doubt, the
//! parcel goes to inspection with both parcels' evidence.
//!
//! [`judge`] is pure; [`Released`] is the shared, in-memory record every line consults on
//! its decision path (a lock held for one lookup or insert, never across I/O). A waybill's
//! marks last as long as the clearance table holds the waybill (retention forgets both
//! together): while a release order may still be in force for it, a clone is judged against
//! them, however long ago the first parcel went.

use std::collections::HashMap;
use std::sync::Mutex;

use bondline_devices::contract::LaneRole;

/// The rule's name on the record, the anomaly and the alert.
pub const DUPLICATE_LABEL: &str = "duplicate_label";

/// `[duplicates]` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Whether a re-scan of a released waybill may be the same parcel come round again; with
    /// `false`, every further scan is a duplicate.
    pub recirculation: bool,
    /// The shortest time a parcel takes to come round the loop to the scanner again: a
    /// re-scan sooner is another parcel.
    pub min_loop_ms: u64,
    /// How far the weights of two scans may differ for them to be the same parcel.
    pub weight_tolerance_g: u32,
    /// Whether a scan without a weight (on either side) may still be a recirculation.
    pub allow_unweighed: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            recirculation: true,
            min_loop_ms: 10_000,
            weight_tolerance_g: 50,
            allow_unweighed: false,
        }
    }
}

/// What the PLC said of where an earlier parcel went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Floor {
    /// No disposition yet (or the PLC reports none): it may be in the release lane.
    Unknown,
    /// The PLC put it in the release lane, or reported it somewhere it cannot name.
    Released,
    /// The PLC put it in `lane`, a configured lane other than release (overflow, no
    /// destination, hold...).
    Elsewhere(u16),
}

/// An earlier parcel of a waybill that was commanded to the release lane: the evidence kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub line: String,
    pub parcel: u32,
    pub scanned_at_ms: u64,
    pub weight_g: Option<u32>,
    /// The lane it was commanded to.
    pub lane: u16,
    pub floor: Floor,
    /// Camera snapshot ids taken of it, where known.
    pub snapshots: Vec<String>,
}

/// A new scan of a waybill that would be released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewScan {
    pub line: String,
    pub parcel: u32,
    pub scanned_at_ms: u64,
    pub weight_g: Option<u32>,
}

/// What [`judge`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fewer released parcels than declared pieces: release admitted.
    Fresh,
    /// The same physical parcel as the earlier one at this index: release admitted, and it
    /// takes the earlier parcel's place.
    Recirculation(usize),
    /// A second physical parcel: to inspection, with the earlier parcels as evidence.
    Duplicate,
}

/// Whether `scan` may be released, given the earlier released parcels of its waybill.
pub fn judge(earlier: &[Mark], pieces: u32, scan: &NewScan, s: &Settings) -> Verdict {
    if (earlier.len() as u64) < u64::from(pieces.max(1)) {
        return Verdict::Fresh;
    }
    if !s.recirculation {
        return Verdict::Duplicate;
    }
    earlier
        .iter()
        .position(|m| same_parcel(m, scan, s))
        .map_or(Verdict::Duplicate, Verdict::Recirculation)
}

/// Whether the floor shows `scan` is `m` come round again.
fn same_parcel(m: &Mark, scan: &NewScan, s: &Settings) -> bool {
    let not_released = match m.floor {
        Floor::Released | Floor::Unknown => false,
        Floor::Elsewhere(_) => scan.scanned_at_ms.saturating_sub(m.scanned_at_ms) >= s.min_loop_ms,
    };
    let weight = match (m.weight_g, scan.weight_g) {
        (Some(a), Some(b)) => a.abs_diff(b) <= s.weight_tolerance_g,
        _ => s.allow_unweighed,
    };
    not_released && weight
}

/// Released waybills of the whole gateway, shared by every line. Kept in memory: the decision
/// path never reads the disk. A waybill's marks go when the clearance table forgets it
/// ([`Released::forget`]).
#[derive(Debug)]
pub struct Released {
    settings: Settings,
    marks: Mutex<HashMap<String, Vec<Mark>>>,
}

/// The outcome of [`Released::admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Released; the waybill is marked with this parcel.
    Admitted,
    /// Released as the same parcel as an earlier one, whose mark it takes over.
    Recirculated(Mark),
    /// Not released: the earlier parcels, as evidence.
    Duplicate(Vec<Mark>),
}

impl Released {
    pub fn new(settings: Settings) -> Released {
        Released {
            settings,
            marks: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Mark>>> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads a mark found at start (a stored release); the same scan (line, parcel and
    /// time) again replaces it. Parcel ids repeat across runs: a parcel of an earlier run
    /// with the same id is another parcel.
    pub fn load(&self, waybill: &str, mark: Mark) {
        let mut marks = self.lock();
        let list = marks.entry(waybill.to_string()).or_default();
        list.retain(|m| {
            !(m.line == mark.line
                && m.parcel == mark.parcel
                && m.scanned_at_ms == mark.scanned_at_ms)
        });
        list.push(mark);
    }

    /// Decides whether `scan` of `waybill`, about to be commanded to release `lane`, may be
    /// released, and marks the waybill if so. One lock, no I/O. `pieces` is the declared
    /// number of pieces.
    pub fn admit(&self, waybill: &str, pieces: u32, scan: &NewScan, lane: u16) -> Admission {
        let mut marks = self.lock();
        let list = marks.entry(waybill.to_string()).or_default();
        // A parcel decided again keeps its own mark.
        if list
            .iter()
            .any(|m| m.line == scan.line && m.parcel == scan.parcel)
        {
            return Admission::Admitted;
        }
        let mark = Mark {
            line: scan.line.clone(),
            parcel: scan.parcel,
            scanned_at_ms: scan.scanned_at_ms,
            weight_g: scan.weight_g,
            lane,
            floor: Floor::Unknown,
            snapshots: Vec::new(),
        };
        match judge(list, pieces, scan, &self.settings) {
            Verdict::Fresh => {
                list.push(mark);
                Admission::Admitted
            }
            Verdict::Recirculation(i) => {
                Admission::Recirculated(std::mem::replace(&mut list[i], mark))
            }
            Verdict::Duplicate => Admission::Duplicate(list.clone()),
        }
    }

    /// Forgets a waybill's marks once the clearance table forgot the waybill (no release
    /// order for it is in force any more: a clone is undeclared, and held), if `gone` still
    /// says so under the lock: a waybill declared and released again since keeps its new
    /// mark. One lock.
    pub fn forget_if(&self, waybill: &str, gone: impl FnOnce(&str) -> bool) {
        let mut marks = self.lock();
        if gone(waybill) {
            marks.remove(waybill);
        }
    }

    /// Records where the PLC put a marked parcel; `role` is the lane's role.
    pub fn disposed(
        &self,
        waybill: &str,
        line: &str,
        parcel: u32,
        lane: u16,
        role: Option<LaneRole>,
    ) {
        let mut marks = self.lock();
        if let Some(m) = marks
            .get_mut(waybill)
            .and_then(|l| l.iter_mut().find(|m| m.line == line && m.parcel == parcel))
        {
            // Once in the release lane, always: a later report cannot take it out. A lane
            // with no configured role (lane 0 of a parcel reported lost) does not say the
            // parcel is out of the release lane.
            if m.floor != Floor::Released {
                m.floor = match role {
                    Some(LaneRole::Release) | None => Floor::Released,
                    Some(_) => Floor::Elsewhere(lane),
                };
            }
        }
    }

    /// Adds camera snapshot ids to a marked parcel's evidence.
    pub fn snapshot(&self, waybill: &str, line: &str, parcel: u32, id: String) {
        let mut marks = self.lock();
        if let Some(m) = marks
            .get_mut(waybill)
            .and_then(|l| l.iter_mut().find(|m| m.line == line && m.parcel == parcel))
        {
            if !m.snapshots.contains(&id) {
                m.snapshots.push(id);
            }
        }
    }

    /// The marks of a waybill.
    #[cfg(test)]
    pub fn marks(&self, waybill: &str) -> Vec<Mark> {
        self.lock().get(waybill).cloned().unwrap_or_default()
    }
}

/// One parcel's evidence in words, for the alert's detail.
pub fn describe(m: &Mark) -> String {
    let floor = match m.floor {
        Floor::Unknown => "no disposition yet".to_string(),
        Floor::Released => "the PLC reports it in the release lane".to_string(),
        Floor::Elsewhere(l) => format!("the PLC reports it in lane {l}"),
    };
    format!(
        "parcel {} on line {} scanned at {} ms, weight {}, commanded to lane {}, {floor}, camera snapshots [{}]",
        m.parcel,
        m.line,
        m.scanned_at_ms,
        m.weight_g.map_or("not weighed".to_string(), |w| format!("{w} g")),
        m.lane,
        m.snapshots.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mark(parcel: u32, at: u64, weight: Option<u32>, floor: Floor) -> Mark {
        Mark {
            line: "L1".into(),
            parcel,
            scanned_at_ms: at,
            weight_g: weight,
            lane: 1,
            floor,
            snapshots: vec![],
        }
    }

    fn scan(parcel: u32, at: u64, weight: Option<u32>) -> NewScan {
        NewScan {
            line: "L1".into(),
            parcel,
            scanned_at_ms: at,
            weight_g: weight,
        }
    }

    #[test]
    fn a_first_scan_is_fresh_and_a_second_parcel_is_a_duplicate() {
        let s = Settings::default();
        assert_eq!(judge(&[], 1, &scan(1, 0, Some(500)), &s), Verdict::Fresh);
        let earlier = [mark(1, 0, Some(500), Floor::Unknown)];
        // Too soon to have come round.
        assert_eq!(
            judge(&earlier, 1, &scan(2, 100, Some(500)), &s),
            Verdict::Duplicate
        );
    }

    #[test]
    fn a_recirculated_parcel_of_the_same_weight_is_the_same_parcel() {
        let s = Settings::default();
        let earlier = [mark(1, 0, Some(500), Floor::Elsewhere(2))];
        assert_eq!(
            judge(&earlier, 1, &scan(2, 10_000, Some(530)), &s),
            Verdict::Recirculation(0)
        );
        // Another weight: another parcel.
        assert_eq!(
            judge(&earlier, 1, &scan(2, 10_000, Some(600)), &s),
            Verdict::Duplicate
        );
        // Sooner than the loop: another parcel.
        assert_eq!(
            judge(&earlier, 1, &scan(2, 9_999, Some(500)), &s),
            Verdict::Duplicate
        );
    }

    /// Without the PLC's word that the earlier parcel went elsewhere, a re-scan of the same
    /// weight after the loop time is a clone as much as the parcel come round: inspection.
    #[test]
    fn no_disposition_or_a_lost_parcel_is_never_taken_to_have_come_round() {
        let s = Settings::default();
        let earlier = [mark(1, 0, Some(500), Floor::Unknown)];
        assert_eq!(
            judge(&earlier, 1, &scan(2, 1_000_000, Some(500)), &s),
            Verdict::Duplicate
        );
        let r = Released::new(s);
        assert_eq!(
            r.admit("W", 1, &scan(1, 0, Some(500)), 1),
            Admission::Admitted
        );
        // Reported lost: lane 0, no role.
        r.disposed("W", "L1", 1, 0, None);
        assert_eq!(r.marks("W")[0].floor, Floor::Released);
        assert!(matches!(
            r.admit("W", 1, &scan(2, 1_000_000, Some(500)), 1),
            Admission::Duplicate(_)
        ));
    }

    #[test]
    fn a_parcel_in_the_release_lane_never_comes_round() {
        let s = Settings::default();
        let earlier = [mark(1, 0, Some(500), Floor::Released)];
        assert_eq!(
            judge(&earlier, 1, &scan(2, 1_000_000, Some(500)), &s),
            Verdict::Duplicate
        );
    }

    #[test]
    fn unweighed_scans_and_disabled_recirculation_fail_closed() {
        let s = Settings::default();
        let earlier = [mark(1, 0, None, Floor::Elsewhere(2))];
        assert_eq!(
            judge(&earlier, 1, &scan(2, 10_000, None), &s),
            Verdict::Duplicate
        );
        let lax = Settings {
            allow_unweighed: true,
            ..s
        };
        assert_eq!(
            judge(&earlier, 1, &scan(2, 10_000, None), &lax),
            Verdict::Recirculation(0)
        );
        let off = Settings {
            recirculation: false,
            ..s
        };
        let earlier = [mark(1, 0, Some(500), Floor::Elsewhere(2))];
        assert_eq!(
            judge(&earlier, 1, &scan(2, 10_000, Some(500)), &off),
            Verdict::Duplicate
        );
    }

    #[test]
    fn declared_pieces_admit_as_many_releases() {
        let s = Settings::default();
        let r = Released::new(s);
        for p in 1..=3 {
            assert_eq!(
                r.admit("W", 3, &scan(p, 0, Some(500)), 1),
                Admission::Admitted
            );
        }
        assert!(
            matches!(r.admit("W", 3, &scan(4, 0, Some(500)), 1), Admission::Duplicate(e) if e.len() == 3)
        );
        // A parcel decided again keeps its mark.
        assert_eq!(
            r.admit("W", 3, &scan(2, 0, Some(500)), 1),
            Admission::Admitted
        );
    }

    /// Marks are not forgotten with time, however long ago the first parcel went: only
    /// with their waybill, when the clearance table forgets it.
    #[test]
    fn marks_go_with_their_waybill_not_with_time() {
        let r = Released::new(Settings::default());
        assert_eq!(
            r.admit("W", 1, &scan(1, 0, Some(5)), 1),
            Admission::Admitted
        );
        let year = 366 * 86_400_000;
        assert!(matches!(
            r.admit("W", 1, &scan(2, year, Some(900)), 1),
            Admission::Duplicate(_)
        ));
        r.forget_if("W", |_| true);
        assert_eq!(
            r.admit("W", 1, &scan(3, year, Some(900)), 1),
            Admission::Admitted
        );
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// A scan of the waybill: weight (None = unweighed), time advance in ms.
        Scan(Option<u32>, u64),
        /// The PLC's disposition of the n-th admitted parcel (modulo): to release or not.
        Dispose(usize, bool),
        /// The gateway restarts: marks are reloaded from what was stored.
        Restart,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (prop::option::of(480u32..540), 0u64..20_000).prop_map(|(w, dt)| Step::Scan(w, dt)),
            (0usize..8, any::<bool>()).prop_map(|(i, r)| Step::Dispose(i, r)),
            Just(Step::Restart),
        ]
    }

    proptest! {
        /// No sequence of scans, dispositions and restarts puts more parcels of a waybill in
        /// the release lane than it declares pieces: every admitted parcel is either still
        /// counted or was replaced as the same parcel while the PLC had not released it.
        #[test]
        fn never_more_releases_than_pieces(
            pieces in 1u32..4,
            recirculation in any::<bool>(),
            allow_unweighed in any::<bool>(),
            steps in prop::collection::vec(step(), 1..60),
        ) {
            let s = Settings { recirculation, allow_unweighed, ..Settings::default() };
            let mut r = Released::new(s);
            // What the store holds: the marks as written with each release intent, and the
            // PLC's dispositions (the journal's records).
            let mut admitted: Vec<u32> = Vec::new();
            let mut in_release: Vec<u32> = Vec::new();
            let mut replaced_while_out: Vec<u32> = Vec::new();
            let mut now = 0u64;
            let mut next = 0u32;
            for st in steps {
                match st {
                    Step::Scan(w, dt) => {
                        now += dt;
                        next += 1;
                        match r.admit("W", pieces, &scan(next, now, w), 1) {
                            Admission::Admitted => admitted.push(next),
                            Admission::Recirculated(old) => {
                                prop_assert!(!in_release.contains(&old.parcel));
                                replaced_while_out.push(old.parcel);
                                admitted.push(next);
                            }
                            Admission::Duplicate(e) => prop_assert!(!e.is_empty()),
                        }
                    }
                    Step::Dispose(i, release) => {
                        if admitted.is_empty() { continue; }
                        let p = admitted[i % admitted.len()];
                        // A parcel replaced as recirculated is physically the new one: the
                        // PLC cannot release the old one any more.
                        if replaced_while_out.contains(&p) { continue; }
                        if release && !in_release.contains(&p) { in_release.push(p); }
                        r.disposed("W", "L1", p, if release { 1 } else { 2 }, Some(if release { LaneRole::Release } else { LaneRole::Hold }));
                    }
                    Step::Restart => {
                        // Marks come back from the intent store without the floor's word:
                        // taken as released, so not a recirculation.
                        let kept = r.marks("W");
                        r = Released::new(s);
                        for m in kept { r.load("W", Mark { floor: Floor::Released, ..m }); }
                    }
                }
                let live = admitted.iter().filter(|p| !replaced_while_out.contains(p)).count();
                prop_assert!(live <= pieces as usize, "{live} released of {pieces}");
                prop_assert!(in_release.len() <= pieces as usize);
            }
        }
    }
}
