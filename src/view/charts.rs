//! Parcels per hour by lane role and by deciding rule, for the current shift or the last 7
//! local days, drawn from the journal and rendered as inline SVG by the gateway itself (it
//! is offline: no script or font from elsewhere).
//!
//! A parcel counts once, by its first decision (`revision` 0) and its scan time; a
//! re-decision that moved it to another lane does not count it again. Pure: the handler
//! walks the journal (see [`crate::journal::walk`]) and feeds [`Chart::add`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bondline_devices::contract::{wire_name, LaneRole, Record};
use serde::Serialize;

const HOUR_MS: i64 = 3_600_000;

/// Rules charted separately at most; the rest are summed under `other`.
pub const MAX_RULES: usize = 24;

/// What the chart counts: all parcels, or those of one line, lane role or rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub line: Option<String>,
    pub role: Option<LaneRole>,
    pub rule: Option<String>,
}

/// Hourly counts over `[from_ms, to_ms)`.
#[derive(Debug, Clone, Serialize)]
pub struct Chart {
    pub from_ms: i64,
    pub to_ms: i64,
    /// Start of each hour bucket (epoch ms).
    pub hours: Vec<i64>,
    /// Lane role (wire name) -> counts per hour.
    pub by_role: BTreeMap<String, Vec<u64>>,
    /// Deciding rule -> counts per hour (at most [`MAX_RULES`] rules plus `other`).
    pub by_rule: BTreeMap<String, Vec<u64>>,
    /// Parcels counted.
    pub total: u64,
    #[serde(skip)]
    filter: Filter,
}

impl Chart {
    pub fn new(from_ms: i64, to_ms: i64, filter: Filter) -> Chart {
        let n = ((to_ms - from_ms).max(0) + HOUR_MS - 1) / HOUR_MS;
        let hours = (0..n).map(|i| from_ms + i * HOUR_MS).collect::<Vec<_>>();
        let by_role = LaneRole::ALL
            .iter()
            .map(|r| (wire_name(r), vec![0; hours.len()]))
            .collect();
        Chart {
            from_ms,
            to_ms,
            hours,
            by_role,
            by_rule: BTreeMap::new(),
            total: 0,
            filter,
        }
    }

    /// Counts `r` if it is a first parcel decision in range that passes the filter. Always
    /// true (the walk goes on).
    pub fn add(&mut self, r: &Record) -> bool {
        let Some(p) = r.as_parcel() else { return true };
        let at = p.scanned_at_ms as i64;
        if p.revision != 0 || at < self.from_ms || at >= self.to_ms {
            return true;
        }
        let f = &self.filter;
        if f.line.as_ref().is_some_and(|l| *l != p.line)
            || f.role.is_some_and(|x| x != p.lane_role)
            || f.rule.as_ref().is_some_and(|x| *x != p.rule)
        {
            return true;
        }
        let i = ((at - self.from_ms) / HOUR_MS) as usize;
        let n = self.hours.len();
        if let Some(v) = self.by_role.get_mut(&wire_name(&p.lane_role)) {
            v[i] += 1;
        }
        let key = if self.by_rule.contains_key(&p.rule) || self.by_rule.len() < MAX_RULES {
            p.rule.clone()
        } else {
            "other".to_string()
        };
        self.by_rule.entry(key).or_insert_with(|| vec![0; n])[i] += 1;
        self.total += 1;
        true
    }
}

/// Colours of the series, fixed per lane role; rules cycle through a palette.
fn role_colour(role: &str) -> &'static str {
    match role {
        "release" => "#2e7d32",
        "inspection" => "#f9a825",
        "hold" => "#c62828",
        _ => "#6a1b9a",
    }
}
const PALETTE: [&str; 8] = [
    "#1565c0", "#ef6c00", "#2e7d32", "#ad1457", "#4527a0", "#00838f", "#9e9d24", "#5d4037",
];

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A stacked bar chart of `series` over the chart's hours, as an SVG element. Each bar has a
/// `<title>` (hour and count) so a tap or hover tells the figure; `data-total` carries the sum
/// for tests and scripts. `hour_label` formats an hour's start for the axis.
pub fn svg(
    chart: &Chart,
    series: &BTreeMap<String, Vec<u64>>,
    colour: &dyn Fn(usize, &str) -> String,
    label: &dyn Fn(&str) -> String,
    hour_label: &dyn Fn(i64) -> String,
    title: &str,
) -> String {
    let n = chart.hours.len().max(1);
    let (w, h, left, bottom, top) = (960.0f64, 260.0f64, 40.0f64, 40.0f64, 10.0f64);
    let bar_w = (w - left) / n as f64;
    let stacks: Vec<u64> = (0..chart.hours.len())
        .map(|i| series.values().map(|v| v[i]).sum())
        .collect();
    let max = stacks.iter().copied().max().unwrap_or(0).max(1);
    let total: u64 = stacks.iter().sum();
    let scale = (h - bottom - top) / max as f64;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="chart" role="img" aria-label="{t}" data-total="{total}" viewBox="0 0 {w} {h}" width="100%" xmlns="http://www.w3.org/2000/svg"><title>{t}</title>"#,
        t = esc(title)
    );
    // Axis and the scale's top.
    let _ = write!(
        out,
        r##"<line x1="{left}" y1="{y0}" x2="{w}" y2="{y0}" stroke="#888"/><text x="2" y="{ty}" font-size="11" fill="#555">{max}</text><text x="2" y="{y0}" font-size="11" fill="#555">0</text>"##,
        y0 = h - bottom,
        ty = top + 10.0
    );
    for (i, _) in chart.hours.iter().enumerate() {
        let x = left + i as f64 * bar_w;
        let mut y = h - bottom;
        for (k, (name, v)) in series.iter().enumerate() {
            if v[i] == 0 {
                continue;
            }
            let bh = v[i] as f64 * scale;
            y -= bh;
            let _ = write!(
                out,
                r#"<rect class="bar" data-series="{s}" data-count="{c}" x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{bh:.1}" fill="{col}"><title>{hl} {l}: {c}</title></rect>"#,
                s = esc(name),
                c = v[i],
                bw = (bar_w - 1.0).max(0.5),
                col = colour(k, name),
                hl = esc(&hour_label(chart.hours[i])),
                l = esc(&label(name)),
            );
        }
    }
    // Hour labels: about 12 along the axis.
    let step = n.div_ceil(12).max(1);
    for (i, t) in chart.hours.iter().enumerate().step_by(step) {
        let _ = write!(
            out,
            r##"<text x="{x:.1}" y="{y}" font-size="11" fill="#555">{l}</text>"##,
            x = left + i as f64 * bar_w,
            y = h - bottom + 16.0,
            l = esc(&hour_label(*t))
        );
    }
    out.push_str("</svg>");
    // Legend.
    out.push_str(r#"<ul class="legend">"#);
    for (k, (name, v)) in series.iter().enumerate() {
        let sum: u64 = v.iter().sum();
        if sum == 0 {
            continue;
        }
        let _ = write!(
            out,
            r#"<li><svg width="12" height="12" aria-hidden="true"><rect width="12" height="12" fill="{c}"/></svg> {l}: <span class="count" data-series="{s}">{sum}</span></li>"#,
            c = colour(k, name),
            l = esc(&label(name)),
            s = esc(name)
        );
    }
    out.push_str("</ul>");
    out
}

/// The role chart's colours.
pub fn role_colours(_: usize, name: &str) -> String {
    role_colour(name).to_string()
}

/// The rule chart's colours.
pub fn rule_colours(k: usize, _: &str) -> String {
    PALETTE[k % PALETTE.len()].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parcel(n: u32, at: u64, role: LaneRole, rule: &str, line: &str) -> Record {
        let mut p = crate::journal::test_record(n, at);
        p.lane_role = role;
        p.rule = rule.into();
        p.line = line.into();
        Record::Parcel(p)
    }

    #[test]
    fn counts_first_decisions_per_hour_by_role_and_rule() {
        let from = 10 * HOUR_MS;
        let mut c = Chart::new(from, from + 12 * HOUR_MS, Filter::default());
        assert_eq!(c.hours.len(), 12);
        let at = |h: i64, m: i64| (from + h * HOUR_MS + m * 60_000) as u64;
        c.add(&parcel(1, at(0, 0), LaneRole::Release, "declared", "L1"));
        c.add(&parcel(2, at(0, 59), LaneRole::Hold, "undeclared", "L1"));
        c.add(&parcel(3, at(11, 59), LaneRole::Inspection, "xray", "L2"));
        // Out of range, and a re-decision: not counted.
        c.add(&parcel(4, at(12, 0), LaneRole::Hold, "undeclared", "L1"));
        c.add(&parcel(
            5,
            (from - 1) as u64,
            LaneRole::Hold,
            "undeclared",
            "L1",
        ));
        let mut re = parcel(2, at(0, 59), LaneRole::Inspection, "instruction", "L1");
        if let Record::Parcel(p) = &mut re {
            p.revision = 1;
        }
        c.add(&re);
        assert_eq!(c.total, 3);
        assert_eq!(c.by_role["release"][0], 1);
        assert_eq!(c.by_role["hold"][0], 1);
        assert_eq!(c.by_role["inspection"][11], 1);
        assert_eq!(c.by_role["exception"].iter().sum::<u64>(), 0);
        assert_eq!(c.by_rule["undeclared"], {
            let mut v = vec![0; 12];
            v[0] = 1;
            v
        });
        assert!(!c.by_rule.contains_key("instruction"));
        let svg = svg(
            &c,
            &c.by_role,
            &role_colours,
            &|s| s.to_string(),
            &|t| t.to_string(),
            "by <role>",
        );
        assert!(svg.contains(r#"data-total="3""#));
        assert!(svg.contains("by &lt;role&gt;"));
        assert_eq!(svg.matches(r#"<rect class="bar""#).count(), 3);
    }

    #[test]
    fn filters_and_the_rule_cap() {
        let f = Filter {
            line: Some("L2".into()),
            role: None,
            rule: None,
        };
        let mut c = Chart::new(0, HOUR_MS, f);
        c.add(&parcel(1, 10, LaneRole::Release, "a", "L1"));
        c.add(&parcel(2, 10, LaneRole::Release, "a", "L2"));
        assert_eq!(c.total, 1);
        let mut c = Chart::new(
            0,
            HOUR_MS,
            Filter {
                role: Some(LaneRole::Hold),
                ..Filter::default()
            },
        );
        for i in 0..(MAX_RULES as u32 + 5) {
            c.add(&parcel(i, 10, LaneRole::Hold, &format!("r{i}"), "L1"));
        }
        c.add(&parcel(99, 10, LaneRole::Release, "r0", "L1"));
        assert_eq!(c.by_rule.len(), MAX_RULES + 1);
        assert_eq!(c.by_rule["other"][0], 5);
        assert_eq!(c.total, MAX_RULES as u64 + 5);
    }
}
