//! The `[evidence]` configuration section: where originals are kept, how much is forwarded,
//! the thumbnail size, the decoding workers and the optional upload endpoint.
//!
//! The section may be left out: every key has a default, so a line with an X-ray spool
//! works without it. The upload endpoint runs only when `upload` is given; like the staff
//! view it refuses, at load, an address beyond loopback without a token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::view::auth::Credentials;

/// `[evidence]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvidence {
    #[serde(default)]
    dir: Option<PathBuf>,
    #[serde(default = "default_max_forward_kb")]
    max_forward_kb: u64,
    #[serde(default = "default_thumbnail_px")]
    thumbnail_px: u32,
    #[serde(default = "default_workers")]
    workers: usize,
    /// MiB the evidence directory may hold; 0: no quota, retention only.
    #[serde(default)]
    quota_mb: u64,
    #[serde(default)]
    upload: Option<RawUpload>,
}

/// `[evidence] upload = { ... }` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpload {
    #[serde(default = "default_upload_listen")]
    listen: String,
    /// SHA-256 (hex) of the bearer token the X-ray workstation presents.
    #[serde(default)]
    token_sha256: Option<String>,
    /// Connections open at once, at most; more wait in the listen queue.
    #[serde(default = "default_upload_connections")]
    max_connections: usize,
}

fn default_upload_connections() -> usize {
    crate::evidence::upload::DEFAULT_MAX_CONNECTIONS
}

fn default_max_forward_kb() -> u64 {
    8192
}
fn default_thumbnail_px() -> u32 {
    crate::evidence::process::DEFAULT_THUMBNAIL_PX
}
fn default_workers() -> usize {
    2
}
fn default_upload_listen() -> String {
    "127.0.0.1:8088".into()
}

/// The validated `[evidence]` section; present with defaults when the file has none.
#[derive(Debug, Clone)]
pub struct EvidenceConfig {
    /// Where originals are kept, as `<dir>/<sha[0..2]>/<sha>.<ext>`.
    pub dir: PathBuf,
    /// Originals up to this size are forwarded in chunk records; larger ones stay here only.
    pub max_forward_bytes: u64,
    /// Longest side of a thumbnail, in pixels.
    pub thumbnail_px: u32,
    /// Images decoded at once, at most: each takes a core and up to
    /// [`crate::evidence::process::MAX_DECODE_BYTES`] of memory.
    pub workers: usize,
    /// Bytes of originals kept at most (the oldest go first); 0: no quota.
    pub quota_bytes: u64,
    /// Originals older than this are removed: `storage.retention_days`, set by the caller.
    pub retention: std::time::Duration,
    /// The HTTP upload endpoint, when configured.
    pub upload: Option<UploadConfig>,
}

/// Where the upload endpoint listens and whom it lets in.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    /// Address to bind; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// A bearer token only; open (no token) is allowed on loopback alone.
    pub credentials: Credentials,
    /// Connections open at once, at most.
    pub max_connections: usize,
}

/// Until the caller sets it from `storage.retention_days`.
const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Largest `max_forward_kb`: the largest upload, since nothing bigger can arrive.
const MAX_FORWARD_KB: u64 = crate::evidence::MAX_IMAGE_BYTES as u64 / 1024;

impl EvidenceConfig {
    /// The defaults, for a configuration without `[evidence]`: originals beside the journal
    /// in `<storage.path>-evidence`.
    pub fn defaults(storage_path: &Path) -> EvidenceConfig {
        EvidenceConfig {
            dir: default_dir(storage_path),
            max_forward_bytes: default_max_forward_kb() * 1024,
            thumbnail_px: default_thumbnail_px(),
            workers: default_workers(),
            quota_bytes: 0,
            retention: DEFAULT_RETENTION,
            upload: None,
        }
    }

    /// Validates `[evidence]`; errors name the key below `evidence` and the reason.
    pub fn from_raw(
        raw: &RawEvidence,
        storage_path: &Path,
    ) -> Result<EvidenceConfig, (String, String)> {
        let err = |key: &str, reason: String| (key.to_string(), reason);
        let dir = match &raw.dir {
            Some(d) if d.as_os_str().is_empty() => {
                return Err(err("dir", "must not be empty".into()))
            }
            Some(d) if d == storage_path => {
                return Err(err(
                    "dir",
                    "must not be the journal's own directory (storage.path)".into(),
                ))
            }
            Some(d) => d.clone(),
            None => default_dir(storage_path),
        };
        if raw.max_forward_kb > MAX_FORWARD_KB {
            return Err(err(
                "max_forward_kb",
                format!("must be 0 (forward no originals) to {MAX_FORWARD_KB}, the largest image accepted"),
            ));
        }
        if !(32..=1024).contains(&raw.thumbnail_px) {
            return Err(err("thumbnail_px", "must be 32 to 1024".into()));
        }
        if raw.quota_mb > 16 * 1024 * 1024 {
            return Err(err(
                "quota_mb",
                "must be 0 (no quota) to 16777216 (16 TiB)".into(),
            ));
        }
        if !(1..=16).contains(&raw.workers) {
            return Err(err("workers", "must be 1 to 16".into()));
        }
        let upload = match &raw.upload {
            None => None,
            Some(u) => Some(upload(u).map_err(|(k, r)| (format!("upload.{k}"), r))?),
        };
        Ok(EvidenceConfig {
            dir,
            max_forward_bytes: raw.max_forward_kb * 1024,
            thumbnail_px: raw.thumbnail_px,
            workers: raw.workers,
            quota_bytes: raw.quota_mb * 1024 * 1024,
            retention: DEFAULT_RETENTION,
            upload,
        })
    }
}

fn upload(u: &RawUpload) -> Result<UploadConfig, (String, String)> {
    let listen: SocketAddr = u.listen.parse().map_err(|_| {
        (
            "listen".to_string(),
            format!(
                "`{}` is not IP:port (such as 127.0.0.1:8088); a host name is not accepted because whether it is loopback cannot be checked",
                u.listen
            ),
        )
    })?;
    let token = match &u.token_sha256 {
        Some(h) => Some(crate::view::parse_hash(h).map_err(|r| ("token_sha256".to_string(), r))?),
        None => None,
    };
    let credentials = Credentials::new(token, Vec::new());
    if !listen.ip().is_loopback() && credentials.is_open() {
        return Err((
            "listen".to_string(),
            format!(
                "`{listen}` is reachable beyond this machine, so a token is required: set `token_sha256` (see docs/xray.md)"
            ),
        ));
    }
    if !(1..=4096).contains(&u.max_connections) {
        return Err(("max_connections".into(), "must be 1 to 4096".into()));
    }
    Ok(UploadConfig {
        listen,
        credentials,
        max_connections: u.max_connections,
    })
}

fn default_dir(storage_path: &Path) -> PathBuf {
    let mut s = storage_path.as_os_str().to_os_string();
    s.push("-evidence");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn evidence(text: &str) -> Result<EvidenceConfig, (String, String)> {
        let raw: RawEvidence = toml::from_str(text).expect("test TOML parses");
        EvidenceConfig::from_raw(&raw, Path::new("/var/lib/bondline/journal"))
    }

    #[test]
    fn defaults_apply() {
        let e = evidence("").unwrap();
        assert_eq!(e.dir, PathBuf::from("/var/lib/bondline/journal-evidence"));
        assert_eq!(e.max_forward_bytes, 8192 * 1024);
        assert_eq!((e.thumbnail_px, e.workers), (160, 2));
        assert!(e.upload.is_none());
        let d = EvidenceConfig::defaults(Path::new("/var/lib/bondline/journal"));
        assert_eq!((d.dir, d.max_forward_bytes), (e.dir, e.max_forward_bytes));
        let u = evidence("upload = {}").unwrap().upload.unwrap();
        assert_eq!(u.listen, "127.0.0.1:8088".parse().unwrap());
        assert!(u.credentials.is_open());
    }

    #[test]
    fn ranges_are_checked_and_named() {
        assert_eq!(evidence("thumbnail_px = 16").unwrap_err().0, "thumbnail_px");
        assert_eq!(
            evidence("thumbnail_px = 2000").unwrap_err().0,
            "thumbnail_px"
        );
        assert_eq!(evidence("workers = 0").unwrap_err().0, "workers");
        assert_eq!(
            evidence("quota_mb = 99999999999").unwrap_err().0,
            "quota_mb"
        );
        assert_eq!(evidence("quota_mb = 10").unwrap().quota_bytes, 10 << 20);
        assert_eq!(evidence("workers = 17").unwrap_err().0, "workers");
        assert_eq!(
            evidence("max_forward_kb = 1000000").unwrap_err().0,
            "max_forward_kb"
        );
        assert_eq!(evidence("max_forward_kb = 0").unwrap().max_forward_bytes, 0);
        assert_eq!(evidence("dir = \"\"").unwrap_err().0, "dir");
        assert_eq!(
            evidence("dir = \"/var/lib/bondline/journal\"")
                .unwrap_err()
                .0,
            "dir"
        );
    }

    #[test]
    fn an_upload_beyond_loopback_needs_a_token() {
        let (key, reason) = evidence("upload = { listen = \"0.0.0.0:8088\" }").unwrap_err();
        assert_eq!(key, "upload.listen");
        assert!(reason.contains("token is required"), "{reason}");
        let u = evidence(&format!(
            "upload = {{ listen = \"0.0.0.0:8088\", token_sha256 = \"{HASH}\" }}"
        ))
        .unwrap()
        .upload
        .unwrap();
        assert!(!u.credentials.is_open());
        assert_eq!(
            evidence("upload = { token_sha256 = \"abc\" }")
                .unwrap_err()
                .0,
            "upload.token_sha256"
        );
        assert_eq!(
            evidence("upload = { listen = \"xray-gw:8088\" }")
                .unwrap_err()
                .0,
            "upload.listen"
        );
    }
}
