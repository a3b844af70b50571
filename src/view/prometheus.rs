//! `/metrics` in the Prometheus text exposition format (version 0.0.4), rendered from the
//! daemon's atomics, the board's decision counts and a health snapshot. Pure: the handler
//! gathers the inputs, this module only turns them into text.
//!
//! The text is written by the `prometheus-client` crate (its `prometheus_text` encoder, which
//! also escapes label values and formats the numbers). Its collectors must be `'static`, so
//! [`render`] copies one scrape's values into [`Family`]s (a few hundred numbers and the
//! decision labels) and encodes them through a registry made for that scrape; the values
//! themselves stay where they are recorded.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::metrics::{Histogram, Metrics};

use super::board::DecisionKey;
use super::health::Health;

/// The `Content-Type` of what [`render`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Writes the whole exposition.
pub fn render(
    metrics: &Metrics,
    decisions: &BTreeMap<DecisionKey, u64>,
    health: &Health,
) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(gather(metrics, decisions, health))));
    let mut out = String::with_capacity(16 * 1024);
    prometheus_text::encode(&mut out, &registry)
        .expect("the encoder only fails when its writer does, and a String never does");
    out
}

/// A sample's labels: names and values, in the order they are written.
type Labels = Vec<(&'static str, Cow<'static, str>)>;

/// One metric family as scraped: its samples share the name, help and type.
#[derive(Debug)]
struct Family {
    /// The name as scraped (counters end in `_total`).
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, Value)>,
}

#[derive(Debug)]
enum Value {
    /// A counter's or gauge's whole value (the family's type says which).
    Whole(u64),
    /// A gauge in seconds.
    Seconds(f64),
    /// A histogram in seconds: per-bucket counts (not cumulative; the last bound is `+Inf`),
    /// the sum, and the count (the buckets' total, so that `_count` and the `+Inf` bucket of
    /// one snapshot always agree).
    Histogram {
        buckets: Vec<(f64, u64)>,
        sum: f64,
        count: u64,
    },
}

impl Value {
    fn encode(&self, kind: MetricType, mut sample: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Value::Whole(n) if kind == MetricType::Counter => ConstCounter::new(*n).encode(sample),
            Value::Whole(n) => ConstGauge::new(*n).encode(sample),
            Value::Seconds(s) => ConstGauge::new(*s).encode(sample),
            Value::Histogram {
                buckets,
                sum,
                count,
            } => sample.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None),
        }
    }
}

impl Family {
    fn new(name: &'static str, help: &'static str, kind: MetricType) -> Family {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    /// A family of one unlabelled sample.
    fn one(name: &'static str, help: &'static str, kind: MetricType, v: Value) -> Family {
        Family {
            samples: vec![(Vec::new(), v)],
            ..Family::new(name, help, kind)
        }
    }
}

/// The values of all families, in the order they are written.
fn gather(
    metrics: &Metrics,
    decisions: &BTreeMap<DecisionKey, u64>,
    health: &Health,
) -> Vec<Family> {
    use MetricType::{Counter, Gauge};
    use Value::{Seconds, Whole};
    let g = Metrics::get;
    let mut families = Vec::with_capacity(64);
    let counters: [(&str, &str, u64); 29] = [
        ("bondline_scans_total", "Scanner frames that yielded a parcel (reads and no-reads).", g(&metrics.parcels)),
        ("bondline_no_reads_total", "Parcels whose code the scanner could not read.", g(&metrics.no_reads)),
        ("bondline_frames_rejected_total", "Scanner frames rejected by the decoder.", g(&metrics.frames_rejected)),
        ("bondline_diverts_acked_total", "Divert commands the PLC acknowledged.", g(&metrics.diverts_acked)),
        ("bondline_diverts_failed_total", "Divert commands not acknowledged (timeout, refusal, link down, overload, deadline missed).", g(&metrics.diverts_failed)),
        ("bondline_late_diverts_total", "Acknowledges that came after the parcel's divert deadline.", g(&metrics.late_diverts)),
        ("bondline_late_acks_total", "Acknowledges of divert commands whose job had already ended without it (timeout, failed link): each is a late_acknowledge alert.", g(&metrics.late_acks)),
        ("bondline_deadlines_missed_total", "Divert commands not sent because the deadline had passed.", g(&metrics.deadlines_missed)),
        ("bondline_recommits_total", "Parcels re-commanded after new clearance information.", g(&metrics.recommits)),
        ("bondline_clearance_changes_missed_total", "Clearance changes a line fell behind on (it decided every parcel before its deadline again).", g(&metrics.changes_missed)),
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
        ("bondline_log_lines_dropped_total", "Log lines dropped because the log's writer thread was far behind (stderr or journald blocked); logging never waits.", crate::telemetry::dropped_lines()),
    ];
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
    for (name, help, v) in counters.into_iter().chain(images) {
        families.push(Family::one(name, help, Counter, Whole(v)));
    }
    let gauges: [(&str, &str, Value); 15] = [
        (
            "bondline_platform_in_flight",
            "Platform messages received on this broker session and not yet acknowledged (the backlog being taken in).",
            Whole(g(&metrics.platform_in_flight)),
        ),
        (
            "bondline_platform_ingest_rate",
            "Platform messages ingested per second over the last seconds.",
            Whole(g(&metrics.platform_ingest_rate)),
        ),
        (
            "bondline_platform_ingest_paced",
            "1 while the platform ingest is held to uplink.platform_rate_while_sorting because the lines are sorting.",
            Whole(u64::from(
                metrics
                    .platform_ingest_paced
                    .load(std::sync::atomic::Ordering::Relaxed),
            )),
        ),
        (
            "bondline_backlog_records",
            "Records waiting for the broker's acknowledge.",
            Whole(health.backlog),
        ),
        (
            "bondline_oldest_unforwarded_age_seconds",
            "Age of the oldest record waiting for an acknowledge (0 when none).",
            Seconds(
                health
                    .oldest_unforwarded
                    .as_ref()
                    .map_or(0.0, |o| o.age_ms as f64 / 1000.0),
            ),
        ),
        (
            "bondline_parked_records",
            "Records kept aside until replayed.",
            Whole(health.parked),
        ),
        (
            "bondline_records_held",
            "Records waiting in memory for room on the journal's disk.",
            Whole(g(&metrics.records_held)),
        ),
        (
            "bondline_journal_live_bytes",
            "Bytes of stored records.",
            Whole(g(&metrics.journal_live_bytes)),
        ),
        (
            "bondline_journal_platform_bytes",
            "Bytes of stored platform state (declarations, instructions, notices, rule sets); with the records they count towards storage.quota_mb.",
            Whole(g(&metrics.journal_platform_bytes)),
        ),
        (
            "bondline_clearance_declarations",
            "Declarations held in the clearance table (in memory).",
            Whole(health.clearance.declarations),
        ),
        (
            "bondline_clearance_instructions",
            "Customs instructions held in the clearance table (in memory).",
            Whole(health.clearance.instructions),
        ),
        (
            "bondline_clearance_consumers",
            "Consumers that held declarations name, each with its history in memory (a consumer leaves memory with its last held declaration; its days stay in the store).",
            Whole(health.clearance.consumers),
        ),
        (
            "bondline_journal_free_bytes",
            "Free bytes on the journal's filesystem.",
            Whole(g(&metrics.journal_free_bytes)),
        ),
        (
            "bondline_journal_level",
            "Journal capacity level: 0 ok, 1 nearly full, 2 over quota, 3 full.",
            Whole(u64::from(metrics.journal_level.load(Ordering::Relaxed))),
        ),
        (
            "bondline_uplink_ready",
            "1 while the uplink has a broker session with its subscriptions.",
            Whole(u64::from(metrics.uplink_ready.load(Ordering::Relaxed))),
        ),
    ];
    for (name, help, v) in gauges {
        families.push(Family::one(name, help, Gauge, v));
    }
    http_budgets(&mut families, metrics);

    let link = |l: &super::health::LinkHealth| -> Labels {
        vec![("link", l.name.clone().into()), ("kind", l.kind.into())]
    };
    let mut up = Family::new(
        "bondline_link_up",
        "1 when the device or broker link is up; 0 when down or not yet connected.",
        Gauge,
    );
    let mut since = Family::new(
        "bondline_link_state_since_seconds",
        "Unix time of the link's last change of state.",
        Gauge,
    );
    for l in &health.links {
        up.samples
            .push((link(l), Whole(u64::from(l.state == "up"))));
        if let Some(ms) = l.since_ms {
            since.samples.push((link(l), Seconds(ms as f64 / 1000.0)));
        }
    }
    families.push(up);
    families.push(since);

    let mut rule_set = Family::new(
        "bondline_rule_set_info",
        "The customs rule set in force.",
        Gauge,
    );
    let version = vec![("version", health.rule_set.clone().into())];
    rule_set.samples.push((version, Whole(1)));
    families.push(rule_set);

    let mut first = Family::new(
        "bondline_parcels_total",
        "Parcels decided since start, by line, lane, lane role and deciding rule (first decisions).",
        Counter,
    );
    let mut again = Family::new(
        "bondline_redecisions_total",
        "Parcels decided again before their deadline, by the new lane and rule.",
        Counter,
    );
    for ((line, lane, role, rule, is_first), n) in decisions {
        let labels: Labels = vec![
            ("line", line.clone().into()),
            ("lane", lane.to_string().into()),
            ("role", role.as_str().into()),
            ("rule", rule.clone().into()),
        ];
        let family = if *is_first { &mut first } else { &mut again };
        family.samples.push((labels, Whole(*n)));
    }
    families.push(first);
    families.push(again);

    families.extend([
        histogram(
            "bondline_decision_latency_seconds",
            "Scanner frame received to PLC-acknowledged divert.",
            &metrics.decision_latency,
        ),
        histogram(
            "bondline_journal_flush_latency_seconds",
            "One group commit of the journal: transaction and flush to disk.",
            &metrics.journal_flush_latency,
        ),
        histogram(
            "bondline_intent_flush_latency_seconds",
            "Release intents stored and flushed to disk ahead of their commands (what a release waits for).",
            &metrics.intent_flush_latency,
        ),
        histogram(
            "bondline_image_ingest_latency_seconds",
            "One X-ray image: arrival to kept, chunked and handed to its line, decoding included.",
            &metrics.image_ingest_latency,
        ),
    ]);
    families
}

/// Name, type, help and field of one `bondline_http_*` family.
type HttpFamily = (
    &'static str,
    MetricType,
    &'static str,
    fn(&crate::metrics::HttpStats) -> &std::sync::atomic::AtomicU64,
);

/// The staff view's and the upload endpoint's budgets (see `view::serve`), by `server`.
fn http_budgets(out: &mut Vec<Family>, metrics: &Metrics) {
    use crate::metrics::HttpServer;
    use MetricType::{Counter, Gauge};
    let servers = [("view", HttpServer::View), ("upload", HttpServer::Upload)];
    let families: [HttpFamily; 6] = [
        (
            "bondline_http_connections",
            Gauge,
            "Connections open now.",
            |h| &h.connections,
        ),
        (
            "bondline_http_connection_limit_reached_total",
            Counter,
            "Times the connection limit was reached (new connections wait in the listen queue).",
            |h| &h.connection_limit_reached,
        ),
        (
            "bondline_http_timeouts_total",
            Counter,
            "Connections closed by the header or idle timeout.",
            |h| &h.timed_out,
        ),
        (
            "bondline_http_login_failures_total",
            Counter,
            "Requests with wrong credentials.",
            |h| &h.login_failures,
        ),
        (
            "bondline_http_logins_throttled_total",
            Counter,
            "Requests refused with 429 after too many failed logins from their address.",
            |h| &h.logins_throttled,
        ),
        (
            "bondline_http_streams_refused_total",
            Counter,
            "Live board streams refused with 503 (stream limit).",
            |h| &h.streams_refused,
        ),
    ];
    for (name, kind, help, field) in families {
        let mut family = Family::new(name, help, kind);
        for (server, s) in servers {
            let v = Metrics::get(field(metrics.http(s)));
            family
                .samples
                .push((vec![("server", server.into())], Value::Whole(v)));
        }
        out.push(family);
    }
}

/// A Prometheus histogram from the HDR histogram's buckets, in seconds.
fn histogram(name: &'static str, help: &'static str, h: &Histogram) -> Family {
    let buckets: Vec<(f64, u64)> = h
        .buckets()
        .into_iter()
        .map(|(bound, n)| (bound.map_or(f64::INFINITY, |us| us as f64 / 1e6), n))
        .collect();
    let count = buckets.iter().map(|(_, n)| n).sum();
    let sum = h.sum_us() as f64 / 1e6;
    let v = Value::Histogram {
        buckets,
        sum,
        count,
    };
    Family::one(name, help, MetricType::Histogram, v)
}

/// One scrape's families, for the registry.
#[derive(Debug)]
struct Scrape(Vec<Family>);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            // The encoder appends `_total` to a counter's name itself.
            let name = match f.kind {
                MetricType::Counter => f.name.strip_suffix("_total").unwrap_or(f.name),
                _ => f.name,
            };
            let mut family = encoder.encode_descriptor(name, f.help, None, f.kind)?;
            for (labels, v) in &f.samples {
                // An empty label set writes no braces.
                v.encode(f.kind, family.encode_family(labels)?)?;
            }
        }
        Ok(())
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
        std::fs::write(
            std::env::var("DUMP_METRICS").unwrap_or("/dev/null".into()),
            &text,
        )
        .unwrap();
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
        // Whole values are written as integers, bucket bounds as Prometheus' own clients
        // write them, and label values escaped (backslash, double quote, line feed).
        let m = Metrics::default();
        m.decision_latency.record(Duration::from_micros(80));
        let mut decisions = BTreeMap::new();
        let key = ("L1".into(), 1, LaneRole::Release, "a\"b\\c\nd".into(), true);
        decisions.insert(key, 3);
        let health = Health {
            backlog: 5,
            ..Health::default()
        };
        let text = render(&m, &decisions, &health);
        for line in [
            "bondline_backlog_records 5",
            "bondline_scans_total 0",
            "bondline_decision_latency_seconds_bucket{le=\"5e-05\"} 0",
            "bondline_decision_latency_seconds_bucket{le=\"0.0001\"} 1",
            "bondline_decision_latency_seconds_bucket{le=\"1\"} 1",
            "bondline_decision_latency_seconds_sum 0.00008",
            "bondline_parcels_total{line=\"L1\",lane=\"1\",role=\"release\",rule=\"a\\\"b\\\\c\\nd\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
        }
    }
}
