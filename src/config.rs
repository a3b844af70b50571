//! Configuration: one TOML file, turned up front into a validated, ready-to-use [`Config`].
//!
//! Everything that can be wrong with a configuration is found here, before any device is
//! touched: unknown keys, bad addresses, missing profiles, lanes without a role. Each error
//! names the file, the key and what is wrong, and the CLI turns it into exit code 64.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bondline_devices::contract::LaneRole;
use bondline_devices::framing::ScannerFraming;
use bondline_devices::plc::PlcMap;
use bondline_devices::xray::XrayMap;
use bondline_devices::Profiles;
use serde::Deserialize;

pub mod camera;
pub mod checks;
mod duplicates;
#[cfg(test)]
mod example_keys;
mod floor;
mod lines;
mod report;
pub mod shown;
mod storage;
mod trust;
mod uplink;

pub use storage::Storage;
pub use uplink::Uplink;

/// What a section's resolve step says is wrong: the key (in full, `uplink.inflight`) and why.
type Bad = (String, String);

fn bad(key: &str, reason: String) -> Bad {
    (key.to_string(), reason)
}

/// A configuration error: which file, which key, what is wrong. Long values in the key
/// and the reason are shown cut, with their length ([`shown`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "{}: key `{}`: {}",
    shown::cut_message(file),
    shown::shown(key),
    shown::cut_message(reason)
)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

/// The validated configuration of one gateway.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration came from, for messages.
    pub source: String,
    pub gateway_id: String,
    pub storage: Storage,
    pub uplink: Uplink,
    pub lines: Vec<Line>,
    /// The customs rule set: from `rules_file`, or the built-in fail-closed core.
    pub rules: std::sync::Arc<crate::rules::engine::RuleSet>,
    /// Where the rule set came from, for reloads.
    pub rules_file: Option<PathBuf>,
    /// The staff view (HTTP), when a `[view]` section is present.
    pub view: Option<crate::view::ViewConfig>,
    /// Day of the month (local date in `[calendar] time_zone`, 1-28) from which last month's report is published to the
    /// platform; `None`: reports only on demand (`bondline report monthly`).
    pub report_publish_day: Option<u32>,
    /// The time zone consumer limits, counted days and the monthly report use (`[calendar]
    /// time_zone`, `Asia/Shanghai` by default).
    pub calendar: crate::rules::calendar::Calendar,
    /// Which platform messages to believe: the platform's public keys.
    pub trust: crate::trust::Trust,
    /// X-ray image evidence: where originals are kept and what is forwarded. Always
    /// present: defaults apply without an `[evidence]` section.
    pub evidence: crate::evidence::EvidenceConfig,
    /// Cameras whose snapshots are joined to parcels, by line point.
    pub cameras: Vec<camera::CameraConfig>,
    /// The duplicate-label rule (`[duplicates]`): when a re-scan of a released waybill is
    /// the same parcel come round again (see [`crate::line::duplicates`]).
    pub duplicates: crate::line::duplicates::Settings,
    /// How the host treats the floor thread (`[floor]`, see [`crate::threads`]).
    pub floor: crate::threads::FloorSettings,
}

/// Where a device is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    Tcp { host: String, port: u16 },
    Serial(SerialSettings),
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Tcp { host, port } => write!(f, "tcp {host}:{port}"),
            Transport::Serial(s) => write!(f, "serial {} {} baud", s.path, s.baud),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SerialSettings {
    pub path: String,
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
    /// Pause between two Modbus requests on this port, so the devices on a shared RS-485
    /// bus have turned their line around before the next request.
    pub bus_delay: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// A barcode scanner, resolved with its profile's framing.
#[derive(Debug, Clone)]
pub struct ScannerDevice {
    pub name: String,
    pub transport: Transport,
    pub framing: ScannerFraming,
}

/// A sorter PLC, resolved with its profile's register map and any overrides.
#[derive(Debug, Clone)]
pub struct PlcDevice {
    pub name: String,
    pub transport: Transport,
    pub map: PlcMap,
}

/// An X-ray scanner, resolved with its profile's register map and any overrides.
#[derive(Debug, Clone)]
pub struct XrayDevice {
    pub name: String,
    pub transport: Transport,
    pub map: XrayMap,
    /// The directory the X-ray workstation writes its image files to, if it does.
    pub spool: Option<PathBuf>,
}

/// Where the X-ray tunnel sits on a line, for joining verdicts to parcels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XrayGeometry {
    /// Belt travel time from the barcode scanner to the tunnel's entrance.
    pub offset: Duration,
    /// How far a verdict's tunnel-entry time may lie from the expected one and still match.
    pub window: Duration,
}

/// One sorting line: its scanner, its PLC, its X-ray scanner if any, and its lanes.
#[derive(Debug, Clone)]
pub struct Line {
    pub id: String,
    pub scanner: ScannerDevice,
    pub plc: PlcDevice,
    /// With an X-ray scanner, no parcel is released without a clear verdict joined to it.
    pub xray: Option<(XrayDevice, XrayGeometry)>,
    pub lanes: LaneMap,
    /// Divert deadline and disposition timing, from the line's geometry.
    pub geometry: crate::line::tracking::Geometry,
}

/// Lane numbers by role. Every role has a lane, checked at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneMap {
    release: u16,
    inspection: u16,
    hold: u16,
    exception: u16,
}

impl LaneMap {
    pub fn lane(&self, role: LaneRole) -> u16 {
        match role {
            LaneRole::Release => self.release,
            LaneRole::Inspection => self.inspection,
            LaneRole::Hold => self.hold,
            LaneRole::Exception => self.exception,
        }
    }

    /// Lanes 1 to 4 for release, inspection, hold and exception.
    #[cfg(test)]
    pub(crate) fn numbered() -> LaneMap {
        LaneMap {
            release: 1,
            inspection: 2,
            hold: 3,
            exception: 4,
        }
    }

    /// The role of lane number `lane`, if it has one.
    pub fn role_of(&self, lane: u16) -> Option<LaneRole> {
        LaneRole::ALL.into_iter().find(|r| self.lane(*r) == lane)
    }
}

// ---- the file as written -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway_id: String,
    #[serde(default)]
    profiles_dir: Option<PathBuf>,
    #[serde(default)]
    rules_file: Option<PathBuf>,
    storage: storage::RawStorage,
    uplink: uplink::RawUplink,
    #[serde(default)]
    devices: BTreeMap<String, RawDevice>,
    #[serde(default)]
    lines: Vec<RawLine>,
    #[serde(default)]
    view: Option<crate::view::RawView>,
    #[serde(default)]
    report: Option<report::RawReport>,
    #[serde(default)]
    calendar: Option<report::RawCalendar>,
    #[serde(default)]
    trust: Option<trust::RawTrust>,
    #[serde(default)]
    evidence: Option<crate::evidence::RawEvidence>,
    #[serde(default)]
    cameras: BTreeMap<String, camera::RawCamera>,
    #[serde(default)]
    duplicates: Option<duplicates::RawDuplicates>,
    #[serde(default)]
    floor: Option<floor::RawFloor>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    profile: String,
    #[serde(default)]
    tcp: Option<String>,
    #[serde(default)]
    serial: Option<RawSerial>,
    /// Overrides the profile's Modbus unit id (PLC only).
    #[serde(default)]
    unit_id: Option<u8>,
    /// Overrides the profile's timeout (PLC and X-ray).
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Where the X-ray workstation writes image files (X-ray only).
    #[serde(default)]
    spool: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSerial {
    path: String,
    baud: u32,
    #[serde(default = "default_data_bits")]
    data_bits: u8,
    #[serde(default = "default_parity")]
    parity: Parity,
    #[serde(default = "default_stop_bits")]
    stop_bits: u8,
    #[serde(default = "default_bus_delay")]
    bus_delay_ms: u64,
}

fn default_bus_delay() -> u64 {
    5
}

fn default_data_bits() -> u8 {
    8
}
fn default_parity() -> Parity {
    Parity::None
}
fn default_stop_bits() -> u8 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    id: String,
    scanner: String,
    plc: String,
    #[serde(default)]
    xray: Option<String>,
    lanes: Vec<RawLane>,
    #[serde(default)]
    geometry: RawGeometry,
}

/// Where the divert decision must be made, from the belt's layout.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeometry {
    #[serde(default = "default_speed")]
    belt_speed_m_s: f64,
    /// Distance from the scanner to the divert point (the first gate).
    #[serde(default = "default_distance")]
    scan_to_gate_m: f64,
    /// PLC scan, actuator and safety time before the divert point.
    #[serde(default = "default_margin")]
    margin_ms: u64,
    #[serde(default = "default_disposition_timeout")]
    disposition_timeout_ms: u64,
    /// Distance from the barcode scanner to the X-ray tunnel's entrance.
    #[serde(default = "default_xray_distance")]
    scan_to_xray_m: f64,
    /// Tolerance of the join between a verdict's tunnel-entry time and a parcel's.
    #[serde(default = "default_xray_window")]
    xray_window_ms: u64,
}

impl Default for RawGeometry {
    fn default() -> RawGeometry {
        RawGeometry {
            belt_speed_m_s: default_speed(),
            scan_to_gate_m: default_distance(),
            margin_ms: default_margin(),
            disposition_timeout_ms: default_disposition_timeout(),
            scan_to_xray_m: default_xray_distance(),
            xray_window_ms: default_xray_window(),
        }
    }
}

fn default_xray_distance() -> f64 {
    0.5
}
fn default_xray_window() -> u64 {
    150
}

fn xray_geometry(g: &RawGeometry) -> Result<XrayGeometry, (&'static str, String)> {
    if !(0.0..g.scan_to_gate_m).contains(&g.scan_to_xray_m) {
        return Err((
            "scan_to_xray_m",
            "must be from 0 to less than scan_to_gate_m: the tunnel lies between scanner and gates"
                .into(),
        ));
    }
    if !(10..=5_000).contains(&g.xray_window_ms) {
        return Err(("xray_window_ms", "must be 10 to 5000".into()));
    }
    // A parcel stays tracked (a candidate for the join) until its disposition timeout after
    // its deadline; a shorter time than the window would let a late verdict pass over it.
    if g.disposition_timeout_ms < g.xray_window_ms {
        return Err((
            "disposition_timeout_ms",
            format!(
                "must be at least xray_window_ms ({} ms) on a line with an X-ray scanner",
                g.xray_window_ms
            ),
        ));
    }
    Ok(XrayGeometry {
        offset: Duration::from_secs_f64(g.scan_to_xray_m / g.belt_speed_m_s),
        window: Duration::from_millis(g.xray_window_ms),
    })
}

fn default_speed() -> f64 {
    2.0
}
fn default_distance() -> f64 {
    3.0
}
fn default_margin() -> u64 {
    300
}
fn default_disposition_timeout() -> u64 {
    10_000
}

fn geometry(g: &RawGeometry) -> Result<crate::line::tracking::Geometry, (&'static str, String)> {
    if !(0.1..=10.0).contains(&g.belt_speed_m_s) {
        return Err(("belt_speed_m_s", "must be 0.1 to 10 m/s".into()));
    }
    if !(0.1..=200.0).contains(&g.scan_to_gate_m) {
        return Err(("scan_to_gate_m", "must be 0.1 to 200 m".into()));
    }
    let travel = Duration::from_secs_f64(g.scan_to_gate_m / g.belt_speed_m_s);
    let margin = Duration::from_millis(g.margin_ms);
    if margin >= travel {
        return Err((
            "margin_ms",
            format!(
                "{} ms leaves no time to decide: the parcel needs {} ms from scanner to gate",
                g.margin_ms,
                travel.as_millis()
            ),
        ));
    }
    if !(100..=600_000).contains(&g.disposition_timeout_ms) {
        return Err(("disposition_timeout_ms", "must be 100 to 600000".into()));
    }
    Ok(crate::line::tracking::Geometry {
        travel,
        margin,
        disposition_timeout: Duration::from_millis(g.disposition_timeout_ms),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLane {
    lane: u16,
    role: LaneRole,
}

// ---- loading and validation ------------------------------------------------------------

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Config::parse(&file, &text)
    }

    /// Validates configuration text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let err = |key: &str, reason: String| ConfigError {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        // A section's resolve step names the full key; the file is added here.
        let in_file = |(key, reason): Bad| err(&key, reason);
        let de = toml::Deserializer::parse(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| line_col(text, s.start))
                .map(|(l, c)| format!(" at line {l}, column {c}"))
                .unwrap_or_default();
            err("(syntax)", format!("not valid TOML{at}: {}", e.message()))
        })?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            // The path names the offending key, an unknown one included.
            let msg = e.inner().message().to_string();
            let key = e.path().to_string();
            err(&key, msg)
        })?;

        let profiles = match &raw.profiles_dir {
            Some(dir) => Profiles::with_dir(dir).map_err(|e| err("profiles_dir", e.to_string()))?,
            None => Profiles::builtin(),
        };

        check_ident(&raw.gateway_id).map_err(|r| err("gateway_id", r))?;

        let rules = match &raw.rules_file {
            None => crate::rules::engine::RuleSet::builtin(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    err("rules_file", format!("cannot read {}: {e}", path.display()))
                })?;
                crate::rules::engine::RuleSet::parse(&path.display().to_string(), &text)
                    .map_err(|e| err("rules_file", e.to_string()))?
            }
        };

        let storage = storage::resolve(raw.storage).map_err(in_file)?;
        let uplink = uplink::resolve(raw.uplink).map_err(in_file)?;

        let lines = lines::resolve(&raw.devices, &raw.lines, &profiles).map_err(in_file)?;
        let view = match &raw.view {
            Some(v) => Some(
                crate::view::ViewConfig::from_raw(v)
                    .map_err(|(k, r)| err(&format!("view.{k}"), r))?,
            ),
            None => None,
        };

        let trust = trust::resolve(
            raw.trust,
            &storage,
            vec![raw.gateway_id.clone(), uplink.client_id.clone()],
        )
        .map_err(in_file)?;
        let facts: BTreeMap<String, camera::LineFacts<'_>> = raw
            .lines
            .iter()
            .zip(&lines)
            .map(|(r, l)| {
                (
                    l.id.clone(),
                    camera::LineFacts {
                        belt_speed_m_s: r.geometry.belt_speed_m_s,
                        scan_to_gate_m: r.geometry.scan_to_gate_m,
                        lanes: &l.lanes,
                    },
                )
            })
            .collect();
        let mut cameras = Vec::new();
        for (name, c) in &raw.cameras {
            let key = format!("cameras.{name}");
            check_ident(name).map_err(|r| err(&key, r))?;
            cameras.push(
                camera::CameraConfig::from_raw(name, c, &facts)
                    .map_err(|(k, r)| err(&format!("{key}.{k}"), r))?,
            );
        }
        let mut evidence = match &raw.evidence {
            Some(e) => crate::evidence::EvidenceConfig::from_raw(e, &storage.path)
                .map_err(|(k, r)| err(&format!("evidence.{k}"), r))?,
            None => crate::evidence::EvidenceConfig::defaults(&storage.path),
        };
        // Evidence is kept as long as the records that point to it.
        evidence.retention = storage.retention;
        if evidence.max_forward_bytes > 0
            && (lines.iter().any(|l| l.xray.is_some()) || !cameras.is_empty())
            && uplink.max_packet_bytes < crate::evidence::MIN_PACKET_FOR_CHUNKS
        {
            return Err(err(
                "evidence.max_forward_kb",
                format!(
                    "image chunk records (X-ray originals, camera snapshots) are up to {} KiB but uplink.max_packet_kib is {}: raise it, or set max_forward_kb = 0 to keep originals on the gateway only",
                    crate::evidence::MIN_PACKET_FOR_CHUNKS / 1024,
                    uplink.max_packet_bytes / 1024
                ),
            ));
        }
        let mut spools: BTreeMap<&Path, &str> = BTreeMap::new();
        for (name, d) in &raw.devices {
            let Some(spool) = &d.spool else { continue };
            if let Some(other) = spools.insert(spool, name) {
                return Err(err(
                    &format!("devices.{name}.spool"),
                    format!("`{}` is already the spool of `{other}`: each X-ray scanner needs its own, or images would be taken for the wrong line", spool.display()),
                ));
            }
            if spool == &evidence.dir {
                return Err(err(
                    &format!("devices.{name}.spool"),
                    "must not be the evidence directory".into(),
                ));
            }
        }
        let report_publish_day = report::publish_day(raw.report, &storage).map_err(in_file)?;
        let calendar = report::calendar(raw.calendar).map_err(in_file)?;
        let duplicates = duplicates::resolve(raw.duplicates).map_err(in_file)?;
        let floor = floor::resolve(raw.floor).map_err(in_file)?;
        Ok(Config {
            duplicates,
            floor,
            view,
            calendar,
            source: file.to_string(),
            gateway_id: raw.gateway_id,
            storage,
            uplink,
            lines,
            rules: std::sync::Arc::new(rules),
            rules_file: raw.rules_file,
            report_publish_day,
            trust,
            evidence,
            cameras,
        })
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// Identifiers appear in topics, record ids and file names: keep them plain.
fn check_ident(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 32
        || !s
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        return Err(format!(
            "`{s}` must be 1 to 32 characters of A-Z a-z 0-9 - _"
        ));
    }
    Ok(())
}

/// Splits `host:port` (or `[v6]:port`); the port must be 1..=65535.
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("`{s}` is not host:port"));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    check_host(host).map_err(|why| {
        format!("host `{host}` in `{s}` can never resolve: {why} (an IP address or a DNS name)")
    })?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok((host.to_string(), p)),
        _ => Err(format!(
            "port `{port}` in `{s}` is not a number from 1 to 65535"
        )),
    }
}

/// A host that is no IP address must be a syntactically valid name (RFC 1123, with `_`
/// allowed as some internal zones use it): a name that breaks these rules can never resolve,
/// so it is a configuration error, while a valid name that does not resolve *now* is only a
/// warning (`check-config`; see [`checks`]).
fn check_host(host: &str) -> Result<(), &'static str> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if host.contains(':') {
        return Err("not a valid IPv6 address");
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > 253 {
        return Err("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("an empty label (two dots in a row, or a leading dot)");
        }
        if label.len() > 63 {
            return Err("a label longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a character other than A-Z a-z 0-9 - _ .");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label that starts or ends with `-`");
        }
    }
    Ok(())
}

fn check_serial(s: &RawSerial) -> Result<SerialSettings, (&'static str, String)> {
    if s.path.is_empty() {
        return Err(("path", "must not be empty".into()));
    }
    if !(300..=4_000_000).contains(&s.baud) {
        return Err((
            "baud",
            format!("{} is not a baud rate from 300 to 4000000", s.baud),
        ));
    }
    if !(5..=8).contains(&s.data_bits) {
        return Err(("data_bits", "must be 5, 6, 7 or 8".into()));
    }
    if !(1..=2).contains(&s.stop_bits) {
        return Err(("stop_bits", "must be 1 or 2".into()));
    }
    Ok(SerialSettings {
        path: s.path.clone(),
        baud: s.baud,
        data_bits: s.data_bits,
        parity: s.parity,
        stop_bits: s.stop_bits,
        bus_delay: Duration::from_millis(s.bus_delay_ms.min(1000)),
    })
}

fn lane_map(lanes: &[RawLane]) -> Result<LaneMap, (String, String)> {
    let mut by_role: BTreeMap<LaneRole, u16> = BTreeMap::new();
    let mut numbers = BTreeSet::new();
    for (i, l) in lanes.iter().enumerate() {
        if l.lane == 0 {
            return Err((format!("[{i}].lane"), "lane numbers start at 1".into()));
        }
        // The PLC's dispositions name a lane in 8 bits: lane 300 would come back as 44, and a
        // parcel in the release lane would read as one elsewhere.
        if l.lane > 255 {
            return Err((
                format!("[{i}].lane"),
                format!(
                    "lane {} is above 255: the PLC reports dispositions with 8-bit lane numbers",
                    l.lane
                ),
            ));
        }
        if !numbers.insert(l.lane) {
            return Err((
                format!("[{i}].lane"),
                format!("lane {} appears twice", l.lane),
            ));
        }
        if by_role.insert(l.role, l.lane).is_some() {
            return Err((
                format!("[{i}].role"),
                format!(
                    "role `{}` has two lanes; give each role one lane",
                    l.role.as_str()
                ),
            ));
        }
    }
    let get = |role: LaneRole| {
        by_role.get(&role).copied().ok_or_else(|| {
            (
                String::new(),
                format!("no lane has the role `{}`; every line needs release, inspection, hold and exception lanes", role.as_str()),
            )
        })
    };
    Ok(LaneMap {
        release: get(LaneRole::Release)?,
        inspection: get(LaneRole::Inspection)?,
        hold: get(LaneRole::Hold)?,
        exception: get(LaneRole::Exception)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const GOOD: &str = r#"
gateway_id = "gw-01"
[trust]
allow_unsigned = true
[storage]
path = "/tmp/x"
[uplink]
broker = "127.0.0.1:1883"
client_id = "bondline-gw-01"
topic_prefix = "bondline/gw-01/"
[devices.scan-1]
profile = "scanner-stx-etx"
serial = { path = "/dev/ttyUSB0", baud = 9600 }
[devices.plc-1]
profile = "sorter-plc"
tcp = "plc.local:502"
[[lines]]
id = "L1"
scanner = "scan-1"
plc = "plc-1"
lanes = [
  { lane = 1, role = "release" },
  { lane = 2, role = "inspection" },
  { lane = 3, role = "hold" },
  { lane = 4, role = "exception" },
]
"#;

    fn bad(text: &str) -> ConfigError {
        Config::parse("t.toml", text).expect_err("config should be rejected")
    }

    #[test]
    fn the_calendar_zone_is_checked_at_load() {
        assert_eq!(
            Config::parse("t.toml", GOOD).unwrap().calendar.zone_name(),
            "Asia/Shanghai"
        );
        let berlin = format!("{GOOD}\n[calendar]\ntime_zone = \"Europe/Berlin\"\n");
        assert_eq!(
            Config::parse("t.toml", &berlin)
                .unwrap()
                .calendar
                .zone_name(),
            "Europe/Berlin"
        );
        let e = bad(&format!(
            "{GOOD}\n[calendar]\ntime_zone = \"Asia/Atlantis\"\n"
        ));
        let text = e.to_string();
        assert!(
            text.contains("t.toml")
                && text.contains("calendar.time_zone")
                && text.contains("Asia/Atlantis"),
            "{text}"
        );
    }

    #[test]
    fn good_config_resolves_profiles_and_lanes() {
        let c = Config::parse("t.toml", GOOD).unwrap();
        assert_eq!(c.uplink.topic_prefix, "bondline/gw-01");
        assert_eq!(c.uplink.topic("records"), "bondline/gw-01/records");
        let l = &c.lines[0];
        assert_eq!(l.lanes.lane(LaneRole::Hold), 3);
        assert_eq!(l.scanner.framing.suffix, vec![3]);
        assert_eq!(l.plc.map.divert.block, 100);
        assert_eq!(
            l.plc.transport,
            Transport::Tcp {
                host: "plc.local".into(),
                port: 502
            }
        );
    }

    #[test]
    fn misspelt_key_is_named_with_its_path() {
        let e = bad(&GOOD.replace("path = \"/tmp/x\"", "path = \"/tmp/x\"\nflush_windw_ms = 3"));
        assert_eq!(e.file, "t.toml");
        assert_eq!(e.key, "storage.flush_windw_ms");
        assert!(e.reason.contains("unknown field"), "{e}");
        let e = bad(&GOOD.replace("gateway_id", "gateway"));
        assert_eq!(e.key, "gateway");
    }

    #[test]
    fn clearance_outlives_any_signature_it_accepts() {
        let e = bad(&GOOD.replace("path = \"/tmp/x\"", "path = \"/tmp/x\"\nclearance_days = 2"));
        assert_eq!(e.key, "trust.max_age_h", "{e}");
        let ok = GOOD.replace("path = \"/tmp/x\"", "path = \"/tmp/x\"\nclearance_days = 4");
        assert_eq!(
            Config::parse("t.toml", &ok).unwrap().storage.clearance,
            Duration::from_secs(4 * 86_400)
        );
    }

    #[test]
    fn a_report_day_retention_would_empty_is_refused() {
        let with = |day: u32| format!("{GOOD}\n[report]\npublish_day = {day}\n");
        assert_eq!(
            Config::parse("t.toml", &with(5))
                .unwrap()
                .report_publish_day,
            Some(5)
        );
        let e = bad(&with(20));
        assert_eq!(e.key, "report.publish_day");
        assert!(e.reason.contains("at least 51"), "{e}");
        let longer = with(20).replace(
            "path = \"/tmp/x\"",
            "path = \"/tmp/x\"\nretention_days = 60",
        );
        assert_eq!(
            Config::parse("t.toml", &longer).unwrap().report_publish_day,
            Some(20)
        );
    }

    #[test]
    fn a_lane_above_255_is_refused() {
        let e = bad(&GOOD.replace(
            "{ lane = 1, role = \"release\" }",
            "{ lane = 300, role = \"release\" }",
        ));
        assert!(e.key.ends_with("[0].lane"), "{e}");
        assert!(e.reason.contains("8-bit"), "{e}");
    }

    #[test]
    fn duplicates_settings_are_validated() {
        let ok = Config::parse(
            "t.toml",
            &format!("{GOOD}\n[duplicates]\nrecirculation = false\n"),
        )
        .unwrap();
        assert!(!ok.duplicates.recirculation);
        assert_eq!(ok.duplicates.min_loop_ms, 10_000);
        let e = bad(&format!("{GOOD}\n[duplicates]\nmin_loop_ms = 0\n"));
        assert_eq!(e.key, "duplicates.min_loop_ms");
        let e = bad(&format!(
            "{GOOD}\n[duplicates]\nweight_tolerance_g = 20000\n"
        ));
        assert_eq!(e.key, "duplicates.weight_tolerance_g");
    }

    #[test]
    fn floor_settings_are_validated() {
        assert_eq!(
            Config::parse("t.toml", GOOD)
                .unwrap()
                .floor
                .cpu_wake_latency_us,
            None
        );
        let ok = Config::parse(
            "t.toml",
            &format!("{GOOD}\n[floor]\ncpu_wake_latency_us = 0\n"),
        )
        .unwrap();
        assert_eq!(ok.floor.cpu_wake_latency_us, Some(0));
        let e = bad(&format!("{GOOD}\n[floor]\ncpu_wake_latency_us = 200000\n"));
        assert_eq!(e.key, "floor.cpu_wake_latency_us");
        assert!(e.reason.contains("200000"), "{e}");
        let e = bad(&format!("{GOOD}\n[floor]\ncpu_wake_latency_us = -1\n"));
        assert_eq!(e.key, "floor.cpu_wake_latency_us");
    }

    #[test]
    fn bad_port_is_named() {
        let e = bad(&GOOD.replace("plc.local:502", "plc.local:99999"));
        assert_eq!(e.key, "devices.plc-1.tcp");
        assert!(e.reason.contains("99999"), "{e}");
        let e = bad(&GOOD.replace("127.0.0.1:1883", "127.0.0.1"));
        assert_eq!(e.key, "uplink.broker");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = bad(&GOOD.replace("baud = 9600", "baud = \"fast\""));
        assert_eq!(e.key, "devices.scan-1.serial.baud");
    }

    #[test]
    fn missing_role_and_unknown_profile_and_device() {
        let e = bad(&GOOD.replace("{ lane = 4, role = \"exception\" },", ""));
        assert!(e.reason.contains("exception"), "{e}");
        let e = bad(&GOOD.replace("\"sorter-plc\"", "\"sorter-xyz\""));
        assert_eq!(e.key, "devices.plc-1.profile");
        let e = bad(&GOOD.replace("plc = \"plc-1\"", "plc = \"plc-9\""));
        assert_eq!(e.key, "lines[0].plc");
        let e = bad(&GOOD.replace("plc = \"plc-1\"", "plc = \"scan-1\""));
        assert!(
            e.reason.contains("already used") || e.reason.contains("not a PLC"),
            "{e}"
        );
    }

    #[test]
    fn geometry_gives_the_deadline_and_is_checked() {
        let c = Config::parse("t.toml", GOOD).unwrap();
        let g = c.lines[0].geometry;
        assert_eq!(g.travel, Duration::from_millis(1500));
        assert_eq!(g.margin, Duration::from_millis(300));
        let e = bad(&GOOD.replace(
            "plc = \"plc-1\"",
            "plc = \"plc-1\"\ngeometry = { belt_speed_m_s = 2.0, scan_to_gate_m = 0.5, margin_ms = 300 }",
        ));
        assert_eq!(e.key, "lines[0].geometry.margin_ms");
        assert!(e.reason.contains("250 ms"), "{e}");
    }

    #[test]
    fn a_rules_file_is_loaded_and_checked() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rules.toml");
        let c = Config::parse(
            "t.toml",
            &GOOD.replace(
                "gateway_id = \"gw-01\"",
                &format!("gateway_id = \"gw-01\"\nrules_file = \"{example}\""),
            ),
        )
        .unwrap();
        assert_eq!(c.rules.version, "2026-11-example");
        assert_eq!(
            Config::parse("t.toml", GOOD).unwrap().rules.version,
            "builtin-1"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(
            &path,
            "version = \"v\"\n[[rules]]\nname = \"i\"\nkind = \"instruction\"\npriority = 1\n[[rules]]\nname = \"x\"\nkind = \"xray_suspekt\"\npriority = 2\ntarget = \"inspection\"\n",
        )
        .unwrap();
        let e = bad(&GOOD.replace(
            "gateway_id = \"gw-01\"",
            &format!(
                "gateway_id = \"gw-01\"\nrules_file = \"{}\"",
                path.display()
            ),
        ));
        assert_eq!(e.key, "rules_file");
        assert!(e.reason.contains("xray_suspekt"), "{e}");
    }

    #[test]
    fn xray_scanners_resolve_and_share_only_their_own_ports() {
        let two_lines = |xray2: &str| {
            format!(
                "{GOOD}\n[devices.xray-1]\nprofile = \"xray-modbus\"\nserial = {{ path = \"/dev/ttyRS485\", baud = 19200 }}\nunit_id = 2\nspool = \"/var/spool/x1\"\n[devices.xray-2]\nprofile = \"xray-modbus\"\n{xray2}\n[devices.scan-2]\nprofile = \"scanner-crlf\"\ntcp = \"10.0.0.2:4001\"\n[devices.plc-2]\nprofile = \"sorter-plc\"\ntcp = \"10.0.0.3:502\"\n[[lines]]\nid = \"L2\"\nscanner = \"scan-2\"\nplc = \"plc-2\"\nxray = \"xray-2\"\nlanes = [{{ lane = 1, role = \"release\" }}, {{ lane = 2, role = \"inspection\" }}, {{ lane = 3, role = \"hold\" }}, {{ lane = 4, role = \"exception\" }}]\n"
            )
            .replace(
                "plc = \"plc-1\"\n",
                "plc = \"plc-1\"\nxray = \"xray-1\"\ngeometry = { scan_to_xray_m = 1.0, xray_window_ms = 200 }\n",
            )
        };
        let c = Config::parse(
            "t.toml",
            &two_lines("serial = { path = \"/dev/ttyRS485\", baud = 19200 }\nunit_id = 3"),
        )
        .unwrap();
        let (x1, g1) = c.lines[0].xray.as_ref().unwrap();
        assert_eq!(x1.map.unit_id, 2);
        assert_eq!(x1.spool.as_deref(), Some(Path::new("/var/spool/x1")));
        assert_eq!(g1.offset, Duration::from_millis(500));
        assert_eq!(g1.window, Duration::from_millis(200));
        assert_eq!(c.lines[1].xray.as_ref().unwrap().0.map.unit_id, 3);

        let e = bad(&two_lines(
            "serial = { path = \"/dev/ttyRS485\", baud = 9600 }",
        ));
        assert_eq!(e.key, "devices.xray-2.serial", "{e}");
        let e = bad(&two_lines(
            "serial = { path = \"/dev/ttyUSB0\", baud = 9600 }",
        ));
        assert!(e.reason.contains("only X-ray scanners share a port"), "{e}");
        let e = bad(&two_lines("tcp = \"10.0.0.9:502\"").replace(
            "[devices.xray-2]\nprofile = \"xray-modbus\"",
            "[devices.xray-2]\nprofile = \"sorter-plc\"",
        ));
        assert!(e.reason.contains("not an X-ray scanner"), "{e}");
        let e = bad(&two_lines("tcp = \"10.0.0.9:502\"")
            .replace("scan_to_xray_m = 1.0", "scan_to_xray_m = 3.0"));
        assert_eq!(e.key, "lines[0].geometry.scan_to_xray_m", "{e}");
    }

    #[test]
    fn the_evidence_section_has_defaults_and_named_errors() {
        let c = Config::parse("t.toml", GOOD).unwrap();
        assert_eq!(c.evidence.dir, PathBuf::from("/tmp/x-evidence"));
        assert_eq!(c.evidence.workers, 2);
        let with = |section: &str| format!("{GOOD}\n[evidence]\n{section}\n");
        let c = Config::parse("t.toml", &with("dir = \"/srv/xray\"\nthumbnail_px = 240")).unwrap();
        assert_eq!(
            (c.evidence.dir, c.evidence.thumbnail_px),
            (PathBuf::from("/srv/xray"), 240)
        );
        assert_eq!(bad(&with("workers = 99")).key, "evidence.workers");
        assert_eq!(bad(&with("colour = true")).key, "evidence.colour");
        // The read limit of platform packets: a default, a floor above the 1 MiB messages.
        let c = Config::parse("t.toml", GOOD).unwrap();
        assert_eq!(c.uplink.max_incoming_bytes, 32 * 1024 * 1024);
        let tiny = GOOD.replace("topic_prefix", "max_incoming_kib = 1024\ntopic_prefix");
        assert_eq!(bad(&tiny).key, "uplink.max_incoming_kib");
        let small = GOOD.replace("topic_prefix", "max_packet_kib = 64\ntopic_prefix");
        assert!(
            Config::parse("t.toml", &small).is_ok(),
            "no X-ray, no images"
        );
        let small = small
            .replace(
                "[[lines]]",
                "[devices.xr-1]\nprofile = \"xray-modbus\"\ntcp = \"xr1:502\"\n[[lines]]",
            )
            .replace("plc = \"plc-1\"", "plc = \"plc-1\"\nxray = \"xr-1\"");
        assert_eq!(
            bad(&small).key,
            "evidence.max_forward_kb",
            "chunk records would not fit"
        );
        assert!(Config::parse(
            "t.toml",
            &format!("{small}\n[evidence]\nmax_forward_kb = 0\n")
        )
        .is_ok());
        let e = bad(&with("upload = { listen = \"0.0.0.0:8088\" }"));
        assert_eq!(
            (e.file.as_str(), e.key.as_str()),
            ("t.toml", "evidence.upload.listen")
        );
        let two = GOOD.replace(
            "[[lines]]",
            "[devices.xr-1]\nprofile = \"xray-modbus\"\ntcp = \"xr1:502\"\nspool = \"/srv/spool\"\n[devices.xr-2]\nprofile = \"xray-modbus\"\ntcp = \"xr2:502\"\nspool = \"/srv/spool\"\n[[lines]]",
        );
        let e = bad(&two);
        assert_eq!(e.key, "devices.xr-2.spool");
        assert!(e.reason.contains("already the spool of `xr-1`"), "{e}");
    }

    #[test]
    fn syntax_error_has_position() {
        let e = bad("gateway_id = \n");
        assert_eq!(e.key, "(syntax)");
        assert!(e.reason.contains("line 1"), "{e}");
    }

    #[test]
    fn example_config_in_deploy_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/bondline.toml");
        Config::load(Path::new(path)).unwrap();
    }
}
