//! `GET /api/evidence/{sha256}`: the original of an X-ray image or a camera snapshot, as kept
//! in the evidence directory (`<dir>/<sha[0..2]>/<sha>.<ext>`, see [`crate::evidence::store`]),
//! so the full image is one click from its thumbnail.
//!
//! The name is the original's SHA-256 as the record carries it, nothing else: 64 lowercase
//! hex digits, checked before any path is built, so no request can name another file. The
//! bytes are hashed again before they are served: a copy that no longer matches its record
//! is refused, never shown as evidence. Reading runs on the blocking pool, a few originals at a
//! time (each up to [`crate::evidence::MAX_IMAGE_BYTES`]), so a page of slips opened at once
//! cannot fill the gateway's memory. Originals removed by the evidence retention answer 404.

use std::io;
use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{Shared, ViewError};

/// Originals read at once.
pub const CONCURRENT_READS: usize = 4;

/// The extensions originals are kept under, with their content types.
const KINDS: [(&str, &str); 3] = [
    ("jpg", "image/jpeg"),
    ("png", "image/png"),
    // An original that did not decode is kept all the same; it is offered as a download.
    ("bin", "application/octet-stream"),
];

/// Why an original cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("`{0}` is not a SHA-256 (64 lowercase hex digits)")]
    BadHash(String),
    #[error("no original with this hash is kept on the gateway (never stored, or removed after the evidence retention)")]
    NotKept,
    #[error("the kept original no longer matches its hash")]
    Mismatch,
    #[error("cannot read the original: {0}")]
    Io(#[from] io::Error),
}

/// A kept original: its bytes and content type.
#[derive(Debug)]
pub struct Original {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub ext: &'static str,
}

/// Checks that `sha` can only name a kept original.
pub fn check_hash(sha: &str) -> Result<(), EvidenceError> {
    if sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(EvidenceError::BadHash(sha.chars().take(80).collect()))
    }
}

/// Reads the original with this hash from `dir`, checked against it (blocking).
pub fn read_original(dir: &Path, sha: &str) -> Result<Original, EvidenceError> {
    check_hash(sha)?;
    for (ext, content_type) in KINDS {
        let path: PathBuf = crate::evidence::store::path_of(dir, sha, ext);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(EvidenceError::Io(e)),
        };
        if hex::encode(crate::journal::sha256(&bytes)) != sha {
            return Err(EvidenceError::Mismatch);
        }
        return Ok(Original {
            bytes,
            content_type,
            ext,
        });
    }
    Err(EvidenceError::NotKept)
}

/// `GET /api/evidence/{sha256}`
pub async fn original(
    State(s): State<Shared>,
    UrlPath(sha): UrlPath<String>,
) -> Result<Response, ViewError> {
    check_hash(&sha).map_err(ViewError::Evidence)?;
    let _permit = s
        .originals
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ViewError::Task(e.to_string()))?;
    let dir = s.ctx.evidence_dir.clone();
    let name = sha.clone();
    let original = tokio::task::spawn_blocking(move || read_original(&dir, &name))
        .await
        .map_err(|e| ViewError::Task(e.to_string()))?
        .map_err(ViewError::Evidence)?;
    let disposition = if original.ext == "bin" {
        format!("attachment; filename=\"{sha}.bin\"")
    } else {
        format!("inline; filename=\"{sha}.{}\"", original.ext)
    };
    Ok((
        [
            (header::CONTENT_TYPE, original.content_type.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        original.bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_kept_original_that_matches_its_hash_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"\xff\xd8\xff a jpeg, as far as this test goes".to_vec();
        let sha = hex::encode(crate::journal::sha256(&bytes));
        assert!(matches!(
            read_original(dir.path(), &sha),
            Err(EvidenceError::NotKept)
        ));
        let (path, _) = crate::evidence::store::keep(dir.path(), &sha, "jpg", &bytes).unwrap();
        let o = read_original(dir.path(), &sha).unwrap();
        assert_eq!((o.bytes, o.content_type), (bytes.clone(), "image/jpeg"));
        // A copy changed on disk is refused.
        std::fs::write(&path, b"something else").unwrap();
        assert!(matches!(
            read_original(dir.path(), &sha),
            Err(EvidenceError::Mismatch)
        ));
        // Names that are not a hash never reach the file system.
        for bad in [
            "",
            "../../etc/passwd",
            &sha[..63],
            &sha.to_uppercase(),
            &format!("{}/x", &sha[..62]),
        ] {
            assert!(
                matches!(
                    read_original(dir.path(), bad),
                    Err(EvidenceError::BadHash(_))
                ),
                "{bad}"
            );
        }
    }
}
