//! `[uplink]`: the MQTT broker, the topics, the in-flight window and packet limits, TLS and
//! credentials; resolved into [`Uplink`], TLS material and the password file read once so a
//! bad file is a configuration error, not a silent outage.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{bad, parse_host_port, Bad};

#[derive(Debug, Clone)]
pub struct Uplink {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    /// Topic prefix without a trailing slash, e.g. `bondline/gw-01`.
    pub topic_prefix: String,
    pub keep_alive: Duration,
    /// Records published and not yet acknowledged, at most.
    pub inflight: u16,
    /// Largest record payload sent (plus MQTT overhead); larger records are parked.
    pub max_packet_bytes: usize,
    /// Largest MQTT packet read from the broker. A platform message up to this size is read,
    /// refused (platform messages are at most 1 MiB) and acknowledged; a larger one cannot be
    /// read at all and ends the session (see `uplink`): the broker's packet limit must be
    /// below it (docs/mqtt.md).
    pub max_incoming_bytes: usize,
    /// Upper bound of the reconnect backoff.
    pub reconnect_max: Duration,
    /// Records per second at most when draining a backlog; 0: only `inflight` limits.
    pub drain_rate: u32,
    /// Platform messages taken in per second at most while the lines sort; 0: no limit
    /// (see `uplink::ingest_pace`).
    pub platform_rate_while_sorting: u32,
    /// TLS to the broker; `None`: plain TCP.
    pub tls: Option<crate::tls::TlsFiles>,
    /// MQTT username and password file.
    pub credentials: Option<crate::tls::Credentials>,
}

impl Uplink {
    pub fn topic(&self, suffix: &str) -> String {
        format!("{}/{}", self.topic_prefix, suffix)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUplink {
    broker: String,
    client_id: String,
    topic_prefix: String,
    #[serde(default = "default_keep_alive")]
    keep_alive_s: u64,
    #[serde(default = "default_inflight")]
    inflight: u16,
    #[serde(default = "default_max_packet_kib")]
    max_packet_kib: usize,
    #[serde(default = "default_max_incoming_kib")]
    max_incoming_kib: usize,
    #[serde(default = "default_reconnect_max")]
    reconnect_max_s: u64,
    #[serde(default = "default_drain_rate")]
    drain_rate: u32,
    #[serde(default = "default_platform_rate_while_sorting")]
    platform_rate_while_sorting: u32,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: PathBuf,
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
}

fn default_drain_rate() -> u32 {
    5000
}

/// Half of what the 2-core bench machine takes in at full speed: the floor keeps a core's
/// worth of room (BENCHMARKS.md).
fn default_platform_rate_while_sorting() -> u32 {
    15_000
}

fn default_keep_alive() -> u64 {
    15
}
fn default_inflight() -> u16 {
    64
}
fn default_max_packet_kib() -> usize {
    256
}
/// 32 MiB: well above any platform message, small enough to hold in memory once.
fn default_max_incoming_kib() -> usize {
    32 * 1024
}
fn default_reconnect_max() -> u64 {
    30
}

/// Checks `[uplink]` and resolves it.
pub(super) fn resolve(raw: RawUplink) -> Result<Uplink, Bad> {
    let u = raw;
    let (host, port) = parse_host_port(&u.broker).map_err(|r| bad("uplink.broker", r))?;
    if u.client_id.is_empty() || u.client_id.len() > 64 {
        return Err(bad("uplink.client_id", "must be 1 to 64 characters".into()));
    }
    let prefix = u.topic_prefix.trim_end_matches('/').to_string();
    if prefix.is_empty() || prefix.contains(['#', '+']) {
        return Err(bad(
            "uplink.topic_prefix",
            "must be a non-empty topic without wildcards".into(),
        ));
    }
    if !(1..=3600).contains(&u.keep_alive_s) {
        return Err(bad("uplink.keep_alive_s", "must be 1 to 3600".into()));
    }
    if !(1..=1024).contains(&u.inflight) {
        return Err(bad("uplink.inflight", "must be 1 to 1024".into()));
    }
    if !(1..=262_144).contains(&u.max_packet_kib) {
        return Err(bad("uplink.max_packet_kib", "must be 1 to 262144".into()));
    }
    if !(2048..=262_144).contains(&u.max_incoming_kib) {
        return Err(bad(
            "uplink.max_incoming_kib",
            "must be 2048 to 262144 (platform messages up to 1 MiB are taken; the broker's packet limit must be below this one)".into(),
        ));
    }
    if prefix.len() > 128 {
        return Err(bad(
            "uplink.topic_prefix",
            "must be at most 128 characters".into(),
        ));
    }
    if u.drain_rate > 1_000_000 {
        return Err(bad(
            "uplink.drain_rate",
            "must be 0 (unpaced) to 1000000 records/s".into(),
        ));
    }
    if u.platform_rate_while_sorting > 1_000_000 {
        return Err(bad(
            "uplink.platform_rate_while_sorting",
            "must be 0 (no limit) to 1000000 platform messages/s".into(),
        ));
    }
    if !(1..=3600).contains(&u.reconnect_max_s) {
        return Err(bad("uplink.reconnect_max_s", "must be 1 to 3600".into()));
    }
    let tls = match u.tls {
        None => None,
        Some(t) => {
            let client = match (t.cert_file, t.key_file) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(bad("uplink.tls.key_file", "needed with cert_file".into()))
                }
                (None, Some(_)) => {
                    return Err(bad("uplink.tls.cert_file", "needed with key_file".into()))
                }
            };
            let files = crate::tls::TlsFiles {
                ca_file: t.ca_file,
                client,
            };
            // Checked now, so a bad file is a configuration error, not a silent outage.
            if let Err(e) = files.client_config() {
                return Err(bad("uplink.tls", e.to_string()));
            }
            Some(files)
        }
    };
    let credentials = match (u.username, u.password_file) {
        (None, None) => None,
        (Some(username), Some(password_file)) => {
            if username.is_empty() || username.len() > 256 {
                return Err(bad("uplink.username", "must be 1 to 256 characters".into()));
            }
            let c = crate::tls::Credentials {
                username,
                password_file,
            };
            if let Err(e) = c.password() {
                return Err(bad("uplink.password_file", e.to_string()));
            }
            if tls.is_none() {
                tracing::warn!("uplink.username without uplink.tls: the password crosses the network in clear text");
            }
            Some(c)
        }
        (Some(_), None) => return Err(bad("uplink.password_file", "needed with username".into())),
        (None, Some(_)) => return Err(bad("uplink.username", "needed with password_file".into())),
    };
    Ok(Uplink {
        tls,
        credentials,
        host,
        port,
        client_id: u.client_id,
        topic_prefix: prefix,
        keep_alive: Duration::from_secs(u.keep_alive_s),
        inflight: u.inflight,
        max_packet_bytes: u.max_packet_kib * 1024,
        max_incoming_bytes: u.max_incoming_kib * 1024,
        reconnect_max: Duration::from_secs(u.reconnect_max_s),
        drain_rate: u.drain_rate,
        platform_rate_while_sorting: u.platform_rate_while_sorting,
    })
}
