//! The shift export: a shift's or a day's diversions as CSV, for the view's download and for
//! `bondline report shift`.
//!
//! UTF-8 with a byte-order mark so that spreadsheet programs open Chinese text correctly;
//! RFC 4180 quoting; the header row and the reasons in the officer's language. Times are local (the plan's
//! zone, RFC 3339 with the offset); the records themselves stay in UTC. Pure: the caller
//! walks the journal and hands the records in.

use bondline_devices::contract::{wire_name, LaneRole, ParcelRecord, Record};

use super::shift::ShiftPlan;
use crate::rules::engine::RuleSet;

/// Byte-order mark written first.
pub const BOM: &str = "\u{feff}";

/// Rows kept at most; a range with more diversions is cut and says so (`truncated`).
pub const MAX_ROWS: usize = 200_000;

/// Language of the header row and of lane roles and verdicts in the cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    /// `zh`, `zh-CN`, ... are Chinese; anything else English.
    pub fn parse(s: &str) -> Lang {
        if s.trim().to_ascii_lowercase().starts_with("zh") {
            Lang::Zh
        } else {
            Lang::En
        }
    }
}

impl Lang {
    /// The pages' language of the same name.
    pub fn page_lang(self) -> super::i18n::Lang {
        match self {
            Lang::Zh => super::i18n::Lang::Zh,
            Lang::En => super::i18n::Lang::En,
        }
    }
}

/// The text of `key` in `lang`; the key itself when unknown.
/// Texts come from the view's catalogues (`src/view/i18n/*.json`, keys `export.*`).
pub fn text(key: &str, lang: Lang) -> String {
    lang.page_lang().catalogue().get(key).to_string()
}

const COLUMNS: [&str; 10] = [
    "export.waybill",
    "export.time",
    "export.line",
    "export.lane",
    "export.role",
    "export.revision",
    "export.rule",
    "export.reasons",
    "export.xray",
    "export.enterprise",
];

/// Which parcel records are exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Inspection and hold lanes (the diversions officers act on).
    Diversions,
    /// Every parcel decision, release and exception included.
    AllLanes,
}

impl Scope {
    pub fn wants(self, p: &ParcelRecord) -> bool {
        self == Scope::AllLanes || matches!(p.lane_role, LaneRole::Inspection | LaneRole::Hold)
    }
}

/// The rows of one export, gathered from a journal walk (newest first or in any order) and
/// written sorted by time.
#[derive(Debug)]
pub struct Export {
    scope: Scope,
    rows: Vec<ParcelRecord>,
    pub truncated: bool,
}

impl Export {
    pub fn new(scope: Scope) -> Export {
        Export {
            scope,
            rows: Vec::new(),
            truncated: false,
        }
    }

    /// Takes `r` if it is a parcel decision of the scope; false once the row limit is hit
    /// (the walk may stop).
    pub fn add(&mut self, r: &Record) -> bool {
        if let Some(p) = r.as_parcel() {
            if self.scope.wants(p) {
                if self.rows.len() >= MAX_ROWS {
                    self.truncated = true;
                    return false;
                }
                self.rows.push(p.clone());
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The CSV: BOM, header row in `lang`, one row per record, oldest first. Reasons are
    /// written in `lang` from the rule of the record's own rule set among `rule_sets` and what
    /// the decision saw ([`super::reasons`]), else as recorded.
    pub fn to_csv(mut self, plan: &ShiftPlan, lang: Lang, rule_sets: &[RuleSet]) -> Vec<u8> {
        self.rows.sort_by_key(|p| (p.scanned_at_ms, p.seq));
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(BOM.as_bytes().to_vec());
        let header: Vec<String> = COLUMNS.iter().map(|k| text(k, lang)).collect();
        // Writing into a Vec cannot fail.
        let _ = w.write_record(&header);
        for p in &self.rows {
            let _ = w.write_record(row(plan, p, lang, rule_sets));
        }
        w.into_inner().unwrap_or_default()
    }
}

/// Which time range an export covers, as asked: `at` (the shift containing that time), a
/// `date` with a 1-based `shift` number (that shift), a `date` alone (the whole local day), or
/// nothing (the shift running at `now_ms`). Returns `[from, to)` in epoch ms and a label.
pub fn range_of(
    plan: &ShiftPlan,
    date: Option<&str>,
    shift: Option<usize>,
    at: Option<&str>,
    now_ms: i64,
) -> Result<(i64, i64, String), super::shift::ShiftError> {
    use super::shift::{parse_date, ShiftError};
    let s = match (date, shift, at) {
        (_, _, Some(at)) => plan.shift_at(plan.parse_instant(at)?)?,
        (Some(d), Some(n), None) => {
            if n == 0 {
                return Err(ShiftError::BadNumber(0, plan.len()));
            }
            plan.shift_on(parse_date(d)?, n - 1)?
        }
        (Some(d), None, None) => {
            let d = parse_date(d)?;
            let (a, b) = plan.day_bounds(d)?;
            return Ok((a, b, d.to_string()));
        }
        (None, _, None) => plan.shift_at(now_ms)?,
    };
    Ok((s.start_ms(), s.end_ms(), s.label()))
}

fn row(plan: &ShiftPlan, p: &ParcelRecord, lang: Lang, rule_sets: &[RuleSet]) -> Vec<String> {
    let inputs = p.inputs.as_deref();
    let xray = inputs
        .and_then(|i| i.xray)
        .map(|x| text(&format!("export.xray.{}", wire_name(&x)), lang))
        .unwrap_or_default();
    vec![
        p.waybill.clone().unwrap_or_default(),
        plan.local_rfc3339(p.scanned_at_ms as i64),
        p.line.clone(),
        p.lane.to_string(),
        text(&format!("export.role.{}", wire_name(&p.lane_role)), lang),
        p.revision.to_string(),
        p.rule.clone(),
        super::reasons::reasons_text(p, rule_sets, lang.page_lang()),
        xray,
        inputs
            .and_then(|i| i.enterprise.clone())
            .unwrap_or_default(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::contract::{FiredRule, XraySeen};

    fn parcel(n: u32, role: LaneRole, at: u64) -> Record {
        let mut p = crate::journal::test_record(n, at);
        p.lane_role = role;
        p.reason = "no declaration, \"quoted\"\nsecond line".into();
        Record::Parcel(p)
    }

    #[test]
    fn csv_has_bom_header_in_the_language_and_one_row_per_diversion() {
        let plan = ShiftPlan::default_plan();
        let mut e = Export::new(Scope::Diversions);
        // 2026-12-05T00:30:00Z is 08:30 in Shanghai.
        let t = 1_764_894_600_000u64 + 365 * 86_400_000;
        assert!(e.add(&parcel(2, LaneRole::Hold, t + 1000)));
        e.add(&parcel(1, LaneRole::Inspection, t));
        e.add(&parcel(3, LaneRole::Release, t + 2000));
        let mut with_rules = parcel(4, LaneRole::Inspection, t + 3000);
        if let Record::Parcel(p) = &mut with_rules {
            p.rules_fired = vec![
                FiredRule {
                    rule: "suspended".into(),
                    target: LaneRole::Hold,
                    reason: "enterprise E1 suspended".into(),
                },
                FiredRule {
                    rule: "xray".into(),
                    target: LaneRole::Inspection,
                    reason: "suspect image".into(),
                },
            ];
            p.inputs = Some(Box::new(bondline_devices::contract::DecisionInputs {
                enterprise: Some("E1".into()),
                xray: Some(XraySeen::Suspect),
                ..Default::default()
            }));
        }
        e.add(&with_rules);
        assert_eq!(e.len(), 3);
        let bytes = e.to_csv(&plan, Lang::Zh, &[]);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with(BOM));
        let mut rd = csv::Reader::from_reader(&text.as_bytes()[BOM.len()..]);
        let header: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(header[0], "运单号");
        assert_eq!(header.len(), COLUMNS.len());
        let rows: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(&rows[0][0], "BL00000001");
        assert_eq!(&rows[0][4], "查验");
        assert_eq!(&rows[1][4], "扣留");
        assert_eq!(
            &rows[0][7],
            "undeclared: no declaration, \"quoted\"\nsecond line"
        );
        assert!(rows[0][1].ends_with("+08:00"), "{}", &rows[0][1]);
        assert_eq!(
            &rows[2][7],
            "suspended: enterprise E1 suspended; xray: suspect image"
        );
        assert_eq!(&rows[2][8], "可疑");
        assert_eq!(&rows[2][9], "E1");
    }

    #[test]
    fn ranges_by_shift_day_and_instant() {
        let plan = ShiftPlan::default_plan();
        let now = plan.parse_instant("2026-12-05T23:00").unwrap();
        let (a, b, label) = range_of(&plan, None, None, None, now).unwrap();
        assert_eq!(label, "2026-12-05 20:00–08:00");
        assert_eq!(b - a, 12 * 3_600_000);
        let (a2, _, _) = range_of(&plan, Some("2026-12-05"), Some(2), None, 0).unwrap();
        assert_eq!(a2, a);
        let (_, _, l) = range_of(&plan, None, None, Some("2026-12-06T07:59"), 0).unwrap();
        assert_eq!(l, label);
        let (d0, d1, l) = range_of(&plan, Some("2026-12-05"), None, None, 0).unwrap();
        assert_eq!((d1 - d0, l.as_str()), (86_400_000, "2026-12-05"));
        assert!(range_of(&plan, Some("2026-12-05"), Some(3), None, 0).is_err());
        assert!(range_of(&plan, Some("2026-12-05"), Some(0), None, 0).is_err());
        assert!(range_of(&plan, Some("5.12.2026"), None, None, 0).is_err());
    }

    #[test]
    fn all_lanes_and_english_header() {
        let plan = ShiftPlan::default_plan();
        let mut e = Export::new(Scope::AllLanes);
        e.add(&parcel(1, LaneRole::Release, 1000));
        e.add(&parcel(2, LaneRole::Exception, 2000));
        let text = String::from_utf8(e.to_csv(&plan, Lang::En, &[])).unwrap();
        let mut rd = csv::Reader::from_reader(&text.as_bytes()[BOM.len()..]);
        assert_eq!(&rd.headers().unwrap()[0], "Waybill");
        let rows: Vec<_> = rd.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows[0][4], "release");
        assert_eq!(&rows[0][1], "1970-01-01T08:00:01+08:00");
    }

    #[test]
    fn every_role_and_verdict_has_both_languages() {
        for r in LaneRole::ALL {
            let k = format!("export.role.{}", wire_name(&r));
            assert_ne!(text(&k, Lang::En), k);
            assert_ne!(text(&k, Lang::Zh), k);
        }
        for x in [
            XraySeen::Pending,
            XraySeen::Clear,
            XraySeen::Suspect,
            XraySeen::OperatorMark,
        ] {
            let k = format!("export.xray.{}", wire_name(&x));
            assert_ne!(text(&k, Lang::Zh), k);
        }
        assert_eq!(Lang::parse("zh-CN"), Lang::Zh);
        assert_eq!(Lang::parse("en"), Lang::En);
    }
}
