//! `/metrics` in the Prometheus text exposition format (version 0.0.4), rendered from the
//! daemon's atomics, the board's decision counts and a health snapshot. Pure: the handler
//! gathers the inputs, this module only writes text.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::metrics::{Histogram, Metrics};

use super::board::DecisionKey;
use super::health::Health;

/// Writes the whole exposition.
pub fn render(
    metrics: &Metrics,
    decisions: &std::collections::BTreeMap<DecisionKey, u64>,
    health: &Health,
) -> String {
    let mut out = String::with_capacity(8192);
    let g = Metrics::get;
    let counters: [(&str, &str, u64); 27] = [
        ("bondline_scans_total", "Scanner frames that yielded a parcel (reads and no-reads).", g(&metrics.parcels)),
        ("bondline_no_reads_total", "Parcels whose code the scanner could not read.", g(&metrics.no_reads)),
        ("bondline_frames_rejected_total", "Scanner frames rejected by the decoder.", g(&metrics.frames_rejected)),
        ("bondline_diverts_acked_total", "Divert commands the PLC acknowledged.", g(&metrics.diverts_acked)),
        ("bondline_diverts_failed_total", "Divert commands not acknowledged (timeout, refusal, link down, overload, deadline missed).", g(&metrics.diverts_failed)),
        ("bondline_late_diverts_total", "Acknowledges that came after the parcel's divert deadline.", g(&metrics.late_diverts)),
        ("bondline_late_acks_total", "Acknowledges of divert commands whose job had already ended without it (timeout, failed link): each is a late_acknowledge alert.", g(&metrics.late_acks)),
        ("bondline_deadlines_missed_total", "Divert commands not sent because the deadline had passed.", g(&metrics.deadlines_missed)),
        ("bondline_recommits_total", "Parcels re-commanded after new clearance information.", g(&metrics.recommits)),
        ("bondline_dispositions_total", "Dispositions the PLC reported.", g(&metrics.dispositions)),
        ("bondline_alerts_total", "Alert records raised.", g(&metrics.alerts)),
        ("bondline_released_without_decision_total", "Parcels in the release lane without a release decision. Must stay 0.", g(&metrics.released_without_decision)),
        ("bondline_duplicate_labels_total", "Parcels sent to inspection because their waybill was already released (duplicate_label).", g(&metrics.duplicate_labels)),
        ("bondline_records_accepted_total", "Records flushed to the journal.", g(&metrics.records_accepted)),
        ("bondline_records_forwarded_total", "Records the broker acknowledged.", g(&metrics.records_forwarded)),
        ("bondline_records_parked_total", "Records taken out of the outbox because the broker refuses them.", g(&metrics.records_parked)),
        ("bondline_records_refused_total", "Records neither stored nor held (logged at error level each).", g(&metrics.records_refused)),
        ("bondline_records_purged_total", "Forwarded records removed by retention or to make room.", g(&metrics.records_purged)),
        ("bondline_journal_errors_total", "Failed journal commits and flushes.", g(&metrics.journal_errors)),
        ("bondline_platform_messages_total", "Distinct platform messages received (declarations, instructions, notices, rule sets); redeliveries are counted apart.", g(&metrics.platform_messages)),
        ("bondline_platform_redeliveries_total", "Platform messages delivered again: already stored (same id or content), or marked as redelivered by the broker and refused.", g(&metrics.platform_redeliveries)),
        ("bondline_platform_ingested_total", "Platform messages stored (or refused and reported) and acknowledged to the broker.", g(&metrics.platform_ingested)),
        ("bondline_platform_rejected_total", "Platform messages rejected: invalid, forged, expired or replayed.", g(&metrics.platform_rejected)),
        ("bondline_platform_forged_total", "Platform messages refused as not from the platform: unsigned, mis-signed, expired or replayed.", g(&metrics.forged_messages)),
        ("bondline_platform_wrong_target_total", "Platform messages refused as signed for other gateways (reason wrong_target); counted in bondline_platform_forged_total too.", g(&metrics.wrong_target_messages)),
        ("bondline_uplink_disconnects_total", "Broker sessions that ended.", g(&metrics.uplink_disconnects)),
        ("bondline_view_stream_lagged_total", "Times a live board stream fell behind and was told to reload.", health.stream_lagged),
    ];
    for (name, help, v) in counters {
        metric(&mut out, name, help, "counter", &[(&[], v as f64)]);
    }
    let images: [(&str, &str, u64); 8] = [
        ("bondline_images_ingested_total", "X-ray images kept and handed to their line (spool and upload), corrupt ones included.", g(&metrics.images_ingested)),
        ("bondline_images_with_errors_total", "X-ray images that did not decode; kept and forwarded with their error.", g(&metrics.images_with_errors)),
        ("bondline_image_bytes_total", "Bytes of X-ray originals ingested.", g(&metrics.image_bytes)),
        ("bondline_images_rejected_total", "Spool files moved to rejected/ (bad name, too large).", g(&metrics.images_rejected)),
        ("bondline_images_store_failed_total", "Attempts to keep an X-ray original that failed; the image waits or the upload is refused.", g(&metrics.images_store_failed)),
        ("bondline_snapshots_taken_total", "Camera snapshots decoded, kept and recorded with their parcel.", g(&metrics.snapshots_taken)),
        ("bondline_snapshots_failed_total", "Camera snapshot records without a picture (no evidence: camera down, slow, garbage or queue full).", g(&metrics.snapshots_failed)),
        ("bondline_images_unrouted_total", "Image records journaled without a parcel because their line did not take them.", g(&metrics.images_unrouted)),
    ];
    for (name, help, v) in images {
        metric(&mut out, name, help, "counter", &[(&[], v as f64)]);
    }
    let gauges: [(&str, &str, f64); 11] = [
        (
            "bondline_platform_in_flight",
            "Platform messages received on this broker session and not yet acknowledged (the backlog being taken in).",
            g(&metrics.platform_in_flight) as f64,
        ),
        (
            "bondline_platform_ingest_rate",
            "Platform messages ingested per second over the last seconds.",
            g(&metrics.platform_ingest_rate) as f64,
        ),
        (
            "bondline_backlog_records",
            "Records waiting for the broker's acknowledge.",
            health.backlog as f64,
        ),
        (
            "bondline_oldest_unforwarded_age_seconds",
            "Age of the oldest record waiting for an acknowledge (0 when none).",
            health
                .oldest_unforwarded
                .as_ref()
                .map_or(0.0, |o| o.age_ms as f64 / 1000.0),
        ),
        (
            "bondline_parked_records",
            "Records kept aside until replayed.",
            health.parked as f64,
        ),
        (
            "bondline_records_held",
            "Records waiting in memory for room on the journal's disk.",
            g(&metrics.records_held) as f64,
        ),
        (
            "bondline_journal_live_bytes",
            "Bytes of stored records.",
            g(&metrics.journal_live_bytes) as f64,
        ),
        (
            "bondline_journal_platform_bytes",
            "Bytes of stored platform state (declarations, instructions, notices, rule sets); with the records they count towards storage.quota_mb.",
            g(&metrics.journal_platform_bytes) as f64,
        ),
        (
            "bondline_journal_free_bytes",
            "Free bytes on the journal's filesystem.",
            g(&metrics.journal_free_bytes) as f64,
        ),
        (
            "bondline_journal_level",
            "Journal capacity level: 0 ok, 1 nearly full, 2 over quota, 3 full.",
            metrics.journal_level.load(Ordering::Relaxed) as f64,
        ),
        (
            "bondline_uplink_ready",
            "1 while the uplink has a broker session with its subscriptions.",
            u8::from(metrics.uplink_ready.load(Ordering::Relaxed)) as f64,
        ),
    ];
    for (name, help, v) in gauges {
        metric(&mut out, name, help, "gauge", &[(&[], v)]);
    }

    http_budgets(&mut out, metrics);

    let links: Vec<_> = health
        .links
        .iter()
        .map(|l| (vec![("link", l.name.as_str()), ("kind", l.kind)], l))
        .collect();
    let up: Vec<(&[(&str, &str)], f64)> = links
        .iter()
        .map(|(labels, l)| (labels.as_slice(), if l.state == "up" { 1.0 } else { 0.0 }))
        .collect();
    metric(
        &mut out,
        "bondline_link_up",
        "1 when the device or broker link is up; 0 when down or not yet connected.",
        "gauge",
        &up,
    );
    let since: Vec<(&[(&str, &str)], f64)> = links
        .iter()
        .filter_map(|(labels, l)| l.since_ms.map(|s| (labels.as_slice(), s as f64 / 1000.0)))
        .collect();
    metric(
        &mut out,
        "bondline_link_state_since_seconds",
        "Unix time of the link's last change of state.",
        "gauge",
        &since,
    );

    let rule_set = [("version", health.rule_set.as_str())];
    metric(
        &mut out,
        "bondline_rule_set_info",
        "The customs rule set in force.",
        "gauge",
        &[(&rule_set, 1.0)],
    );

    let mut first = Vec::new();
    let mut again = Vec::new();
    let labels: Vec<_> = decisions
        .iter()
        .map(|((line, lane, role, rule, is_first), n)| {
            (
                [
                    ("line", line.clone()),
                    ("lane", lane.to_string()),
                    ("role", role.as_str().to_string()),
                    ("rule", rule.clone()),
                ],
                *is_first,
                *n,
            )
        })
        .collect();
    let borrowed: Vec<_> = labels
        .iter()
        .map(|(l, is_first, n)| {
            (
                l.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>(),
                *is_first,
                *n,
            )
        })
        .collect();
    for (l, is_first, n) in &borrowed {
        if *is_first {
            first.push((l.as_slice(), *n as f64));
        } else {
            again.push((l.as_slice(), *n as f64));
        }
    }
    metric(&mut out, "bondline_parcels_total", "Parcels decided since start, by line, lane, lane role and deciding rule (first decisions).", "counter", &first);
    metric(
        &mut out,
        "bondline_redecisions_total",
        "Parcels decided again before their deadline, by the new lane and rule.",
        "counter",
        &again,
    );

    histogram(
        &mut out,
        "bondline_decision_latency_seconds",
        "Scanner frame received to PLC-acknowledged divert.",
        &metrics.decision_latency,
    );
    histogram(
        &mut out,
        "bondline_journal_flush_latency_seconds",
        "One group commit of the journal: transaction and flush to disk.",
        &metrics.journal_flush_latency,
    );
    histogram(
        &mut out,
        "bondline_image_ingest_latency_seconds",
        "One X-ray image: arrival to kept, chunked and handed to its line, decoding included.",
        &metrics.image_ingest_latency,
    );
    out
}

/// Name, type, help and field of one `bondline_http_*` family.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::metrics::HttpStats) -> &std::sync::atomic::AtomicU64,
);

/// The staff view's and the upload endpoint's budgets (see `view::serve`), by `server`.
fn http_budgets(out: &mut String, metrics: &Metrics) {
    use crate::metrics::HttpServer;
    let servers = [("view", HttpServer::View), ("upload", HttpServer::Upload)];
    let families: [Family; 6] = [
        (
            "bondline_http_connections",
            "gauge",
            "Connections open now.",
            |h| &h.connections,
        ),
        (
            "bondline_http_connection_limit_reached_total",
            "counter",
            "Times the connection limit was reached (new connections wait in the listen queue).",
            |h| &h.connection_limit_reached,
        ),
        (
            "bondline_http_timeouts_total",
            "counter",
            "Connections closed by the header or idle timeout.",
            |h| &h.timed_out,
        ),
        (
            "bondline_http_login_failures_total",
            "counter",
            "Requests with wrong credentials.",
            |h| &h.login_failures,
        ),
        (
            "bondline_http_logins_throttled_total",
            "counter",
            "Requests refused with 429 after too many failed logins from their address.",
            |h| &h.logins_throttled,
        ),
        (
            "bondline_http_streams_refused_total",
            "counter",
            "Live board streams refused with 503 (stream limit).",
            |h| &h.streams_refused,
        ),
    ];
    for (name, kind, help, field) in families {
        let labels: Vec<[(&str, &str); 1]> =
            servers.iter().map(|(n, _)| [("server", *n)]).collect();
        let samples: Vec<(&[(&str, &str)], f64)> = labels
            .iter()
            .zip(servers.iter())
            .map(|(l, (_, s))| (l.as_slice(), Metrics::get(field(metrics.http(*s))) as f64))
            .collect();
        metric(out, name, help, kind, &samples);
    }
}

/// One metric family: `HELP`, `TYPE` and one sample per label set.
fn metric(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    samples: &[(&[(&str, &str)], f64)],
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{} {}", label_set(labels), number(*v));
    }
}

/// A Prometheus histogram from the HDR histogram's buckets; `_count` is the `+Inf` bucket
/// of the same snapshot, so the two always agree.
fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    let mut cumulative = 0u64;
    for (bound, n) in h.buckets() {
        cumulative += n;
        let le = bound.map_or("+Inf".to_string(), |us| number(us as f64 / 1e6));
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum {}", number(h.sum_us() as f64 / 1e6));
    let _ = writeln!(out, "{name}_count {cumulative}");
}

fn label_set(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Label values escape backslash, double quote and line feed.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bondline_devices::contract::LaneRole;
    use std::collections::BTreeMap;
    use std::time::Duration;

    /// Checks the exposition line by line: comments are HELP/TYPE, every sample is
    /// `name{labels} number` of a family declared before it. Returns the samples.
    pub(crate) fn parse(text: &str) -> Vec<(String, f64)> {
        let mut declared = std::collections::HashSet::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                declared.insert(parts.next().unwrap().to_string());
                assert!(
                    matches!(parts.next(), Some("counter" | "gauge" | "histogram")),
                    "{line}"
                );
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                .unwrap_or(name);
            assert!(declared.contains(family), "undeclared family: {line}");
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {line}"));
            samples.push((series.to_string(), v));
        }
        samples
    }

    #[test]
    fn the_exposition_parses_and_histograms_are_cumulative() {
        let m = Metrics::default();
        m.decision_latency.record(Duration::from_micros(80));
        m.decision_latency.record(Duration::from_millis(3));
        m.decision_latency.record(Duration::from_secs(2));
        m.set_link("plc:plc-1", true, None);
        let mut decisions = BTreeMap::new();
        decisions.insert(
            (
                "L1".to_string(),
                3,
                LaneRole::Hold,
                "say \"no\"\\\n".to_string(),
                true,
            ),
            4,
        );
        decisions.insert(
            (
                "L1".to_string(),
                2,
                LaneRole::Inspection,
                "instruction".to_string(),
                false,
            ),
            1,
        );
        let health = Health {
            rule_set: "builtin-1".into(),
            links: super::super::health::links(&m, &[("plc:plc-1".into(), "plc")]),
            backlog: 5,
            ..Health::default()
        };
        let text = render(&m, &decisions, &health);
        let samples = parse(&text);
        let get = |s: &str| samples.iter().find(|(n, _)| n == s).map(|(_, v)| *v);
        assert_eq!(
            get("bondline_decision_latency_seconds_bucket{le=\"0.0001\"}"),
            Some(1.0)
        );
        assert_eq!(
            get("bondline_decision_latency_seconds_bucket{le=\"0.005\"}"),
            Some(2.0)
        );
        assert_eq!(
            get("bondline_decision_latency_seconds_bucket{le=\"+Inf\"}"),
            Some(3.0)
        );
        assert_eq!(get("bondline_decision_latency_seconds_count"), Some(3.0));
        assert!((get("bondline_decision_latency_seconds_sum").unwrap() - 2.00308).abs() < 1e-9);
        assert_eq!(get("bondline_backlog_records"), Some(5.0));
        assert_eq!(get("bondline_images_ingested_total"), Some(0.0));
        assert_eq!(
            get("bondline_image_ingest_latency_seconds_bucket{le=\"+Inf\"}"),
            Some(0.0)
        );
        assert_eq!(
            get("bondline_link_up{link=\"plc:plc-1\",kind=\"plc\"}"),
            Some(1.0)
        );
        assert_eq!(
            get("bondline_rule_set_info{version=\"builtin-1\"}"),
            Some(1.0)
        );
        assert_eq!(
            get("bondline_parcels_total{line=\"L1\",lane=\"3\",role=\"hold\",rule=\"say \\\"no\\\"\\\\\\n\"}"),
            Some(4.0),
            "{text}"
        );
        assert_eq!(
            get("bondline_redecisions_total{line=\"L1\",lane=\"2\",role=\"inspection\",rule=\"instruction\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn every_family_is_documented_in_view_md() {
        // docs/view.md lists the families without the `bondline_` prefix; a family missing
        // there is one an operator cannot know the meaning of.
        let doc = include_str!("../../docs/view.md");
        let m = Metrics::default();
        let text = render(&m, &BTreeMap::new(), &Health::default());
        let missing: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE bondline_"))
            .filter_map(|l| l.split(' ').next())
            .filter(|f| !doc.contains(&format!("`{f}`")) && !doc.contains(&format!("`{f}{{")))
            .map(str::to_string)
            .collect();
        assert!(missing.is_empty(), "not in docs/view.md: {missing:?}");
    }

    #[test]
    fn numbers_are_plain() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.0005), "0.0005");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
