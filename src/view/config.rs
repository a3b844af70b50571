//! The `[view]` configuration section: where the view listens and who may read it.
//!
//! Secrets are stored only as SHA-256 hashes. A view bound beyond loopback without any
//! credentials is refused at load: the board names waybills and customs decisions.

use std::net::SocketAddr;

use serde::Deserialize;

use super::auth::Credentials;

/// `[view]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawView {
    #[serde(default = "default_listen")]
    listen: String,
    /// SHA-256 (hex) of the bearer token, for scrapers and scripts.
    #[serde(default)]
    token_sha256: Option<String>,
    /// Basic-auth users, for people with a browser.
    #[serde(default)]
    users: Vec<RawUser>,
    /// Serve HTTPS with this certificate chain and key (PEM).
    #[serde(default)]
    tls: Option<RawViewTls>,
    /// Connections open at once, at most; more wait in the listen queue.
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    /// Seconds a client has to send a request head (and to finish a TLS handshake); also
    /// how long an idle keep-alive connection stays open.
    #[serde(default = "default_header_timeout")]
    header_timeout_s: u64,
    /// Seconds a connection may move no byte at all before it is closed.
    #[serde(default = "default_idle_timeout")]
    idle_timeout_s: u64,
    /// Live board streams (`/api/events`) open at once, at most; more are answered 503.
    #[serde(default = "default_max_event_streams")]
    max_event_streams: usize,
    /// Failed logins per source address and minute before it is answered 429; 0: no limit.
    #[serde(default = "default_login_failures")]
    login_failures_per_minute: u32,
    /// IANA time zone in which the view shows times and counts shifts and days.
    #[serde(default = "default_time_zone")]
    time_zone: String,
    /// Local start times of the day's shifts, `HH:MM`, ascending.
    #[serde(default = "default_shifts")]
    shifts: Vec<String>,
}

fn default_time_zone() -> String {
    super::shift::ShiftPlan::DEFAULT_ZONE.into()
}
fn default_shifts() -> Vec<String> {
    vec!["08:00".into(), "20:00".into()]
}

fn default_max_connections() -> usize {
    256
}
fn default_header_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    60
}
fn default_max_event_streams() -> usize {
    32
}
fn default_login_failures() -> u32 {
    10
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawViewTls {
    cert_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password_sha256: String,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

/// The validated `[view]` section.
#[derive(Debug, Clone)]
pub struct ViewConfig {
    /// Address to bind; port 0 picks a free port (the demo and the tests).
    pub listen: SocketAddr,
    pub credentials: Credentials,
    /// HTTPS, when configured.
    pub tls: Option<super::tls::ViewTls>,
    /// Connections and timeouts (see [`super::serve`]); the connection limit may be lowered
    /// at start to leave file descriptors for the devices.
    pub budget: super::serve::Budget,
    /// Live board streams open at once, at most.
    pub max_event_streams: usize,
    /// Failed logins per source address and minute before 429 (see [`super::throttle`]).
    pub login_failures_per_minute: u32,
    /// Time zone and shift pattern for display, charts and exports (records stay in UTC).
    pub shifts: super::shift::ShiftPlan,
}

impl ViewConfig {
    /// Validates `[view]`; errors name the key below `view` and the reason.
    pub fn from_raw(raw: &RawView) -> Result<ViewConfig, (String, String)> {
        let listen: SocketAddr = raw.listen.parse().map_err(|_| {
            (
                "listen".to_string(),
                format!(
                    "`{}` is not IP:port (such as 127.0.0.1:8080); a host name is not accepted because whether it is loopback cannot be checked",
                    raw.listen
                ),
            )
        })?;
        let token = match &raw.token_sha256 {
            Some(h) => Some(parse_hash(h).map_err(|r| ("token_sha256".to_string(), r))?),
            None => None,
        };
        let mut users = Vec::new();
        for (i, u) in raw.users.iter().enumerate() {
            if u.name.is_empty() || u.name.len() > 64 || u.name.contains(':') {
                return Err((
                    format!("users[{i}].name"),
                    "must be 1 to 64 characters without `:`".into(),
                ));
            }
            if users.iter().any(|(n, _)| n == &u.name) {
                return Err((
                    format!("users[{i}].name"),
                    format!("user `{}` is listed twice", u.name),
                ));
            }
            let h = parse_hash(&u.password_sha256)
                .map_err(|r| (format!("users[{i}].password_sha256"), r))?;
            users.push((u.name.clone(), h));
        }
        let credentials = Credentials::new(token, users);
        if !listen.ip().is_loopback() && credentials.is_open() {
            return Err((
                "listen".to_string(),
                format!(
                    "`{listen}` is reachable beyond this machine, so credentials are required: set `token_sha256` or `users` in [view] (see docs/view.md)"
                ),
            ));
        }
        let tls = match &raw.tls {
            Some(t) => Some(
                super::tls::ViewTls::load(t.cert_file.clone(), t.key_file.clone())
                    .map_err(|e| ("tls".to_string(), e.to_string()))?,
            ),
            None => None,
        };
        if !listen.ip().is_loopback() && tls.is_none() {
            tracing::warn!(%listen, "the staff view is served beyond this machine over plain HTTP: its credentials cross the network in clear; set [view] tls");
        }
        if !(1..=65_536).contains(&raw.max_connections) {
            return Err(("max_connections".into(), "must be 1 to 65536".into()));
        }
        if !(1..=3600).contains(&raw.header_timeout_s) {
            return Err(("header_timeout_s".into(), "must be 1 to 3600".into()));
        }
        if !(1..=86_400).contains(&raw.idle_timeout_s) {
            return Err(("idle_timeout_s".into(), "must be 1 to 86400".into()));
        }
        if !(1..=raw.max_connections).contains(&raw.max_event_streams) {
            return Err((
                "max_event_streams".into(),
                format!("must be 1 to max_connections ({})", raw.max_connections),
            ));
        }
        let shifts = match super::shift::zone(&raw.time_zone) {
            Err(e) => return Err(("time_zone".into(), e.to_string())),
            Ok(_) => super::shift::ShiftPlan::new(&raw.time_zone, &raw.shifts)
                .map_err(|e| ("shifts".to_string(), e.to_string()))?,
        };
        Ok(ViewConfig {
            listen,
            shifts,
            credentials,
            tls,
            budget: super::serve::Budget {
                max_connections: raw.max_connections,
                header_timeout: std::time::Duration::from_secs(raw.header_timeout_s),
                idle_timeout: std::time::Duration::from_secs(raw.idle_timeout_s),
            },
            max_event_streams: raw.max_event_streams,
            login_failures_per_minute: raw.login_failures_per_minute,
        })
    }
}

/// A SHA-256 digest written as 64 hex digits.
pub(crate) fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(s.trim())
        .map_err(|_| "must be a SHA-256 digest as 64 hex digits (`sha256sum` prints one)")?;
    bytes
        .try_into()
        .map_err(|_| "must be a SHA-256 digest as 64 hex digits (`sha256sum` prints one)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(text: &str) -> Result<ViewConfig, (String, String)> {
        let raw: RawView = toml::from_str(text).expect("test TOML parses");
        ViewConfig::from_raw(&raw)
    }

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn loopback_needs_no_credentials_and_defaults_apply() {
        let v = view("").unwrap();
        assert_eq!(v.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(v.credentials.is_open());
        assert!(view("listen = \"[::1]:0\"").is_ok());
    }

    #[test]
    fn beyond_loopback_without_credentials_is_refused() {
        let (key, reason) = view("listen = \"0.0.0.0:8080\"").unwrap_err();
        assert_eq!(key, "listen");
        assert!(reason.contains("credentials are required"), "{reason}");
        assert!(view(&format!(
            "listen = \"0.0.0.0:8080\"\ntoken_sha256 = \"{HASH}\""
        ))
        .is_ok());
        assert!(view(&format!(
            "listen = \"10.0.0.5:80\"\nusers = [{{ name = \"officer\", password_sha256 = \"{HASH}\" }}]"
        ))
        .is_ok());
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(view("listen = \"localhost:80\"").unwrap_err().0, "listen");
        assert_eq!(
            view("token_sha256 = \"abc\"").unwrap_err().0,
            "token_sha256"
        );
        let e = view(&format!(
            "users = [{{ name = \"a\", password_sha256 = \"{HASH}\" }}, {{ name = \"a\", password_sha256 = \"{HASH}\" }}]"
        ))
        .unwrap_err();
        assert_eq!(e.0, "users[1].name");
        let e = view("users = [{ name = \"a:b\", password_sha256 = \"00\" }]").unwrap_err();
        assert_eq!(e.0, "users[0].name");
        let e = view("users = [{ name = \"a\", password_sha256 = \"00\" }]").unwrap_err();
        assert_eq!(e.0, "users[0].password_sha256");
        assert_eq!(
            view("max_connections = 0").unwrap_err().0,
            "max_connections"
        );
        assert_eq!(
            view("header_timeout_s = 0").unwrap_err().0,
            "header_timeout_s"
        );
        assert_eq!(view("idle_timeout_s = 0").unwrap_err().0, "idle_timeout_s");
        let e = view("max_connections = 8\nmax_event_streams = 9").unwrap_err();
        assert_eq!(e.0, "max_event_streams");
    }

    #[test]
    fn budgets_have_defaults() {
        let v = view("").unwrap();
        assert_eq!(v.budget.max_connections, 256);
        assert_eq!(v.budget.header_timeout, std::time::Duration::from_secs(10));
        assert_eq!(v.budget.idle_timeout, std::time::Duration::from_secs(60));
        assert_eq!(v.max_event_streams, 32);
        assert_eq!(v.login_failures_per_minute, 10);
        assert_eq!(v.shifts.zone_name(), "Asia/Shanghai");
        assert_eq!(v.shifts.starts(), vec!["08:00", "20:00"]);
    }

    #[test]
    fn time_zone_and_shifts_are_validated() {
        let v = view("time_zone = \"UTC\"\nshifts = [\"06:00\", \"14:00\", \"22:00\"]").unwrap();
        assert_eq!(v.shifts.zone_name(), "UTC");
        assert_eq!(v.shifts.len(), 3);
        let (key, reason) = view("time_zone = \"Asia/Beijing\"").unwrap_err();
        assert_eq!(key, "time_zone");
        assert!(reason.contains("`Asia/Beijing`"), "{reason}");
        let (key, reason) = view("shifts = [\"20:00\", \"08:00\"]").unwrap_err();
        assert_eq!(key, "shifts");
        assert!(reason.contains("ascending"), "{reason}");
        assert_eq!(view("shifts = []").unwrap_err().0, "shifts");
        let (key, reason) = view("shifts = [\"25:00\"]").unwrap_err();
        assert_eq!(key, "shifts");
        assert!(reason.contains("`25:00`"), "{reason}");
    }
}
