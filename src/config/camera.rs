//! `[cameras.NAME]`: where a camera's snapshot is fetched, with what credentials, and which
//! point of which line it watches.
//!
//! The capture offset is not written in the file: it is derived from the camera's distance
//! along the belt from the scanner and the line's belt speed, so a change of belt speed moves
//! every camera's timing with the divert deadline. The password is read from its file once at
//! load (so a missing file is a configuration error, not a silent lack of evidence) and is
//! never printed: [`Auth`]'s `Debug` hides it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::LaneMap;

/// `[cameras.NAME]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCamera {
    url: String,
    #[serde(default)]
    auth: Option<RawAuth>,
    /// PEM CA (or the camera's own self-signed certificate) for an `https` URL.
    #[serde(default)]
    ca_file: Option<PathBuf>,
    line: String,
    #[serde(default)]
    point: Option<String>,
    #[serde(default)]
    lanes: Vec<u16>,
    distance_m: f64,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    scheme: String,
    username: String,
    password_file: PathBuf,
}

fn default_timeout_ms() -> u64 {
    1000
}

/// How the camera wants to be logged in to.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Basic {
        username: String,
        password: String,
    },
    /// RFC 7616 digest, answered with the `digest_auth` crate after the camera's challenge.
    Digest {
        username: String,
        password: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Basic { username, .. } => write!(f, "Basic({username}, <password>)"),
            Auth::Digest { username, .. } => write!(f, "Digest({username}, <password>)"),
        }
    }
}

/// One validated camera.
#[derive(Debug, Clone)]
pub struct CameraConfig {
    pub name: String,
    pub url: hyper::Uri,
    pub auth: Auth,
    /// For `https` URLs: the client configuration trusting `ca_file`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub line: String,
    /// Watches the scan point: every scanned parcel is photographed.
    pub scan: bool,
    /// Watches these lanes: parcels committed to them are photographed.
    pub lanes: Vec<u16>,
    /// Belt travel time from the scanner into the camera's field.
    pub offset: Duration,
    /// Longest wait for one snapshot, connection to last byte.
    pub timeout: Duration,
}

/// What a camera needs to know of its line.
pub struct LineFacts<'a> {
    pub belt_speed_m_s: f64,
    pub scan_to_gate_m: f64,
    pub lanes: &'a LaneMap,
}

/// Longest belt distance accepted; lines are tens of metres.
const MAX_DISTANCE_M: f64 = 500.0;

impl CameraConfig {
    /// Validates one camera; errors name the key below `cameras.NAME` and the reason.
    pub fn from_raw(
        name: &str,
        raw: &RawCamera,
        lines: &BTreeMap<String, LineFacts<'_>>,
    ) -> Result<CameraConfig, (String, String)> {
        let err = |key: &str, reason: String| (key.to_string(), reason);
        let url: hyper::Uri = raw
            .url
            .parse()
            .map_err(|e| err("url", format!("not a URL: {e}")))?;
        let https = match url.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(err("url", "must start with http:// or https://".into())),
        };
        if url.host().is_none_or(str::is_empty) {
            return Err(err("url", "has no host".into()));
        }
        // A password in the URL would show wherever the URL does (logs, health, errors).
        if url.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(err(
                "url",
                "must not carry credentials (user:password@): use `auth` with a password_file"
                    .into(),
            ));
        }
        let tls =
            match (https, &raw.ca_file) {
                (true, Some(ca)) => Some(
                    crate::tls::TlsFiles {
                        ca_file: ca.clone(),
                        client: None,
                    }
                    .client_config()
                    .map_err(|e| err("ca_file", e.to_string()))?,
                ),
                (true, None) => return Err(err(
                    "ca_file",
                    "needed with an https URL: the CA (or the camera's own certificate) to trust"
                        .into(),
                )),
                (false, Some(_)) => return Err(err("ca_file", "only for an https URL".into())),
                (false, None) => None,
            };
        let auth = match &raw.auth {
            None => Auth::None,
            Some(a) => {
                if a.username.is_empty() || a.username.len() > 256 {
                    return Err(err("auth.username", "must be 1 to 256 characters".into()));
                }
                let password = crate::tls::Credentials {
                    username: a.username.clone(),
                    password_file: a.password_file.clone(),
                }
                .password()
                .map_err(|e| err("auth.password_file", e.to_string()))?;
                let username = a.username.clone();
                match a.scheme.as_str() {
                    "basic" => Auth::Basic { username, password },
                    "digest" => Auth::Digest { username, password },
                    other => {
                        return Err(err(
                            "auth.scheme",
                            format!("`{other}` is not `basic` or `digest`"),
                        ))
                    }
                }
            }
        };
        let Some(facts) = lines.get(&raw.line) else {
            return Err(err("line", format!("no line `{}`", raw.line)));
        };
        let scan = match raw.point.as_deref() {
            None => false,
            Some("scan") => true,
            Some(other) => {
                return Err(err(
                    "point",
                    format!("`{other}` is not `scan` (lane cameras use `lanes = [..]`)"),
                ))
            }
        };
        if !scan && raw.lanes.is_empty() {
            return Err(err(
                "point",
                "a camera watches the scan point (`point = \"scan\"`) or lanes (`lanes = [..]`), or both".into(),
            ));
        }
        for l in &raw.lanes {
            if facts.lanes.role_of(*l).is_none() {
                return Err(err("lanes", format!("line `{}` has no lane {l}", raw.line)));
            }
        }
        if !raw.distance_m.is_finite() || !(0.0..=MAX_DISTANCE_M).contains(&raw.distance_m) {
            return Err(err("distance_m", format!("must be 0 to {MAX_DISTANCE_M}")));
        }
        if !raw.lanes.is_empty() && raw.distance_m < facts.scan_to_gate_m {
            return Err(err(
                "distance_m",
                format!(
                    "a lane camera looks past the divert gate, {} m from the scanner on line `{}`",
                    facts.scan_to_gate_m, raw.line
                ),
            ));
        }
        if !(50..=30_000).contains(&raw.timeout_ms) {
            return Err(err("timeout_ms", "must be 50 to 30000".into()));
        }
        Ok(CameraConfig {
            name: name.to_string(),
            url,
            auth,
            tls,
            line: raw.line.clone(),
            scan,
            lanes: raw.lanes.clone(),
            offset: Duration::from_secs_f64(raw.distance_m / facts.belt_speed_m_s),
            timeout: Duration::from_millis(raw.timeout_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::contract::LaneRole;

    fn lanes() -> LaneMap {
        let l = LaneMap::numbered();
        assert_eq!(l.lane(LaneRole::Inspection), 2);
        l
    }

    fn camera(text: &str) -> Result<CameraConfig, (String, String)> {
        let raw: RawCamera = toml::from_str(text).expect("test TOML parses");
        let lanes = lanes();
        let mut lines = BTreeMap::new();
        lines.insert(
            "L1".to_string(),
            LineFacts {
                belt_speed_m_s: 2.0,
                scan_to_gate_m: 3.0,
                lanes: &lanes,
            },
        );
        CameraConfig::from_raw("cam", &raw, &lines)
    }

    #[test]
    fn the_offset_follows_the_belt() {
        let c = camera("url = \"http://10.0.0.9/snap.jpg\"\nline = \"L1\"\npoint = \"scan\"\ndistance_m = 0.5\n").unwrap();
        assert_eq!(c.offset, Duration::from_millis(250));
        assert!(c.scan && c.lanes.is_empty());
        assert_eq!(c.timeout, Duration::from_millis(1000));
        let c = camera(
            "url = \"http://10.0.0.9/snap.jpg\"\nline = \"L1\"\nlanes = [2]\ndistance_m = 4\n",
        )
        .unwrap();
        assert_eq!((c.offset, c.lanes), (Duration::from_secs(2), vec![2]));
    }

    #[test]
    fn mistakes_are_named() {
        let base = "line = \"L1\"\ndistance_m = 4\n";
        let key = |t: &str| camera(&format!("{base}{t}")).unwrap_err().0;
        assert_eq!(key("url = \"ftp://x/\"\npoint = \"scan\""), "url");
        assert_eq!(key("url = \"http://admin:pw@x/\"\npoint = \"scan\""), "url");
        assert_eq!(key("url = \"https://x/\"\npoint = \"scan\""), "ca_file");
        assert_eq!(key("url = \"http://x/\""), "point");
        assert_eq!(key("url = \"http://x/\"\npoint = \"lane\""), "point");
        assert_eq!(key("url = \"http://x/\"\nlanes = [9]"), "lanes");
        assert_eq!(
            key("url = \"http://x/\"\npoint = \"scan\"\ntimeout_ms = 5"),
            "timeout_ms"
        );
        assert_eq!(
            key("url = \"http://x/\"\npoint = \"scan\"\nauth = { scheme = \"basic\", username = \"u\", password_file = \"/nonexistent/pw\" }"),
            "auth.password_file"
        );
        let near = "url = \"http://x/\"\nline = \"L1\"\nlanes = [2]\ndistance_m = 1\n";
        assert_eq!(camera(near).unwrap_err().0, "distance_m");
        let other = "url = \"http://x/\"\nline = \"L9\"\npoint = \"scan\"\ndistance_m = 1\n";
        assert_eq!(camera(other).unwrap_err().0, "line");
    }

    #[test]
    fn the_password_comes_from_its_file_and_is_not_printed() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let c = camera(&format!(
            "url = \"http://x/\"\nline = \"L1\"\npoint = \"scan\"\ndistance_m = 1\nauth = {{ scheme = \"digest\", username = \"op\", password_file = \"{}\" }}\n",
            pw.display()
        ))
        .unwrap();
        assert_eq!(
            c.auth,
            Auth::Digest {
                username: "op".into(),
                password: "s3cret".into()
            }
        );
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
