//! The gateway's integrity key, and the keyed tags that let the daemon tell platform state
//! it stored itself from state edited on disk.
//!
//! A signed platform message is checked once, when it arrives; what the gateway stores of it
//! (declarations, instructions, enterprise notices, the rule set) was trusted as it lay on
//! disk. Anyone who could write the store (a copy edited with a sled-aware tool) could turn a
//! stored hold into a release. Every such entry is now stored as
//! `payload | HMAC-SHA256 tag | format byte`, the tag taken under a key that only the service
//! can read (`storage.integrity_key_file`, mode 0600, created at first start). The tag covers
//! the tree's name and the entry's key too, so an entry moved to another waybill fails as
//! well. At start, an entry whose tag does not verify is refused: it is left out of the
//! clearance table (its parcel is treated as if the message never came: fail closed).
//!
//! A store written by a build without tags holds untagged entries: they are adopted once, at
//! the first start with a key (trust on first use, logged with a count), and from then on an
//! untagged entry is refused like a forged one.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of the key and of a tag.
pub const KEY_LEN: usize = 32;
const TAG_LEN: usize = 32;
/// Last byte of a tagged entry. Never the last byte of a JSON document (`}`), so an
/// untagged entry of an older build is told apart.
const FORMAT_TAGGED: u8 = 0xB1;

/// Why the integrity key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: cannot read the integrity key: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: cannot create the integrity key: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: the integrity key is readable by group or others (mode {mode:o}); it must be readable only by the service: chmod 600 {path}")]
    TooOpen { path: String, mode: u32 },
    #[error("{path}: an integrity key is {KEY_LEN} bytes, this file holds {len}")]
    Length { path: String, len: usize },
}

/// The gateway's integrity key. Its bytes never appear in logs.
#[derive(Clone)]
pub struct IntegrityKey([u8; KEY_LEN]);

impl std::fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IntegrityKey(..)")
    }
}

/// The file beside the key that says its adoption of untagged state is not finished (see
/// [`IntegrityKey::open_for_start`]): `<key file>.adopting`.
pub fn adoption_marker(key_file: &Path) -> PathBuf {
    let mut s = key_file.as_os_str().to_os_string();
    s.push(".adopting");
    PathBuf::from(s)
}

/// Marks that untagged state is to be adopted with the key at `key_file` (a new key, or a
/// store fresh from `journal salvage`), durably.
pub fn begin_adoption(key_file: &Path) -> Result<(), KeyError> {
    write_synced(&adoption_marker(key_file), &[])
}

/// Ends the adoption of the key at `key_file` once a start's load has sealed everything it
/// adopted: untagged state found later is refused.
pub fn end_adoption(key_file: &Path) -> Result<(), KeyError> {
    let marker = adoption_marker(key_file);
    match std::fs::remove_file(&marker) {
        Ok(()) => sync_dir_of(&marker).map_err(|source| KeyError::Create {
            path: marker.display().to_string(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(KeyError::Create {
            path: marker.display().to_string(),
            source,
        }),
    }
}

/// Writes `bytes` to `path` (mode 0600) through a temporary file renamed into place once
/// synced, and syncs the directory: after a power loss the file is whole or not there.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let create = |source| KeyError::Create {
        path: path.display().to_string(),
        source,
    };
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // One left by an earlier try goes first; made anew, never through a link put there.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(create(e)),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(create)?;
    f.write_all(bytes).map_err(create)?;
    f.sync_all().map_err(create)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(create)?;
    sync_dir_of(path).map_err(create)
}

fn sync_dir_of(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => std::fs::File::open(".")?.sync_all(),
    }
}

/// The default key file of a store: `<store path>.key`, beside the store's directory.
pub fn default_key_file(store: &Path) -> PathBuf {
    let mut s = store.as_os_str().to_os_string();
    s.push(".key");
    PathBuf::from(s)
}

/// What a stored entry turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked<'a> {
    /// Tagged under this key: the payload.
    Genuine(&'a [u8]),
    /// No tag (an older build's entry, or one stripped of its tag): the payload.
    Untagged(&'a [u8]),
    /// A tag that does not verify under this key: edited, moved or another key's.
    Forged,
}

impl IntegrityKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> IntegrityKey {
        IntegrityKey(bytes)
    }

    /// A fresh random key.
    pub fn generate() -> IntegrityKey {
        IntegrityKey(rand::random())
    }

    /// Reads the key at `path`; refuses a file readable by group or others.
    pub fn load(path: &Path) -> Result<IntegrityKey, KeyError> {
        let p = || path.display().to_string();
        let meta =
            std::fs::metadata(path).map_err(|source| KeyError::Read { path: p(), source })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen { path: p(), mode });
        }
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read { path: p(), source })?;
        let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| KeyError::Length {
            path: p(),
            len: bytes.len(),
        })?;
        Ok(IntegrityKey(key))
    }

    /// Reads the key at `path`, or creates it (mode 0600, random) if there is none yet.
    /// Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(IntegrityKey, bool), KeyError> {
        if path.exists() {
            return Ok((IntegrityKey::load(path)?, false));
        }
        let key = IntegrityKey::generate();
        key.write_new(path)?;
        Ok((key, true))
    }

    /// The key for a daemon's start, and whether untagged state is adopted with it: the key
    /// is created now, or it was created by a start whose load did not finish (its
    /// [`adoption_marker`] is still there). The marker is made durable before the key's file
    /// is, and removed by [`end_adoption`] once a load has sealed everything: a start cut
    /// short meanwhile (a power loss while the platform log is sealed) leaves the rest to
    /// the next start instead of refusing it for good. It lives beside the key, with the
    /// key's permissions, not in the store: whoever can write only the store cannot make
    /// untagged state adopted.
    pub fn open_for_start(path: &Path) -> Result<(IntegrityKey, bool), KeyError> {
        let marker = adoption_marker(path);
        if path.exists() {
            return Ok((IntegrityKey::load(path)?, marker.exists()));
        }
        begin_adoption(path)?;
        let key = IntegrityKey::generate();
        key.write_new(path)?;
        Ok((key, true))
    }

    /// Writes the key to `path` through a file renamed into place once synced (mode 0600),
    /// so that a power loss leaves either no key file or a whole one.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        write_synced(path, &self.0)
    }

    fn mac(&self, domain: &[u8], key: &[u8], payload: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        // Lengths first, so no two (domain, key, payload) triples share their bytes.
        mac.update(&(domain.len() as u32).to_be_bytes());
        mac.update(domain);
        mac.update(&(key.len() as u32).to_be_bytes());
        mac.update(key);
        mac.update(payload);
        mac
    }

    /// The tag of `payload` stored under `key` in `domain` (a tree's name).
    pub fn tag(&self, domain: &[u8], key: &[u8], payload: &[u8]) -> [u8; TAG_LEN] {
        self.mac(domain, key, payload)
            .finalize()
            .into_bytes()
            .into()
    }

    /// `payload` with its tag and the format byte, as stored.
    pub fn seal(&self, domain: &[u8], key: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(payload.len() + TAG_LEN + 1);
        v.extend_from_slice(payload);
        v.extend_from_slice(&self.tag(domain, key, payload));
        v.push(FORMAT_TAGGED);
        v
    }

    /// Checks a stored entry (constant-time tag comparison).
    pub fn check<'a>(&self, domain: &[u8], key: &[u8], stored: &'a [u8]) -> Checked<'a> {
        match split(stored) {
            None => Checked::Untagged(stored),
            Some((payload, tag)) => {
                if self.mac(domain, key, payload).verify_slice(tag).is_ok() {
                    Checked::Genuine(payload)
                } else {
                    Checked::Forged
                }
            }
        }
    }
}

/// Payload and tag of a tagged entry; `None` for an untagged one.
fn split(stored: &[u8]) -> Option<(&[u8], &[u8])> {
    if stored.last() != Some(&FORMAT_TAGGED) || stored.len() < TAG_LEN + 1 {
        return None;
    }
    let body = &stored[..stored.len() - 1];
    Some(body.split_at(body.len() - TAG_LEN))
}

/// The payload of a stored entry, tagged or not, without checking the tag: for lookups and
/// tools that show what is stored (the clearance table is built only from checked entries).
pub fn payload(stored: &[u8]) -> &[u8] {
    split(stored).map_or(stored, |(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> IntegrityKey {
        IntegrityKey::from_bytes([b; KEY_LEN])
    }

    #[test]
    fn a_sealed_entry_verifies_and_any_edit_fails() {
        let k = key(7);
        let stored = k.seal(b"instructions", b"WB1", br#"{"action":"hold"}"#);
        assert_eq!(
            k.check(b"instructions", b"WB1", &stored),
            Checked::Genuine(&br#"{"action":"hold"}"#[..])
        );
        assert_eq!(payload(&stored), br#"{"action":"hold"}"#);
        // Payload edited, tag kept.
        let mut edited = stored.clone();
        edited[11..15].copy_from_slice(b"rele");
        assert_eq!(k.check(b"instructions", b"WB1", &edited), Checked::Forged);
        // Moved to another waybill or tree.
        assert_eq!(k.check(b"instructions", b"WB2", &stored), Checked::Forged);
        assert_eq!(k.check(b"declarations", b"WB1", &stored), Checked::Forged);
        // Another key's tag.
        assert_eq!(
            key(8).check(b"instructions", b"WB1", &stored),
            Checked::Forged
        );
        // Tag stripped: untagged, which the load refuses once the store is adopted.
        let json = br#"{"action":"release"}"#;
        assert_eq!(
            k.check(b"instructions", b"WB1", json),
            Checked::Untagged(&json[..])
        );
    }

    /// The key's adoption lasts from before its file exists until a load ends it: a start
    /// cut short anywhere between adopts again at the next one, and never from a key file
    /// written in part.
    #[test]
    fn a_new_key_adopts_until_its_adoption_is_ended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.key");
        // A power loss after the marker, before the key's file was renamed into place: a
        // temporary file in part, no key. The next start creates the key and adopts.
        std::fs::write(adoption_marker(&path), b"").unwrap();
        std::fs::write(dir.path().join("store.key.tmp"), b"par").unwrap();
        let (k1, adopting) = IntegrityKey::open_for_start(&path).unwrap();
        assert!(adopting);
        assert_eq!(std::fs::read(&path).unwrap().len(), KEY_LEN);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Cut short before its load ended: the same key, still adopting.
        let (k2, adopting) = IntegrityKey::open_for_start(&path).unwrap();
        assert!(adopting);
        assert_eq!(k1.tag(b"d", b"k", b"p"), k2.tag(b"d", b"k", b"p"));
        end_adoption(&path).unwrap();
        end_adoption(&path).unwrap();
        let (_, adopting) = IntegrityKey::open_for_start(&path).unwrap();
        assert!(!adopting);
        // A fresh directory: created and adopting, the marker there first.
        let other = dir.path().join("other.key");
        assert!(IntegrityKey::open_for_start(&other).unwrap().1);
        assert!(adoption_marker(&other).exists());
    }

    #[test]
    fn key_file_is_created_private_and_an_open_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = default_key_file(&dir.path().join("journal"));
        assert!(path.ends_with("journal.key"));
        let (k1, created) = IntegrityKey::load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, created) = IntegrityKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.0, k2.0);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = IntegrityKey::load_or_create(&path).unwrap_err();
        assert!(matches!(e, KeyError::TooOpen { mode: 0o640, .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            IntegrityKey::load(&path),
            Err(KeyError::Length { len: 5, .. })
        ));
    }

    proptest! {
        /// No single-byte change of a sealed entry verifies.
        #[test]
        fn no_flipped_byte_verifies(
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let k = key(3);
            let mut stored = k.seal(b"t", b"k", &payload);
            let i = at.index(stored.len());
            stored[i] ^= flip;
            prop_assert!(!matches!(k.check(b"t", b"k", &stored), Checked::Genuine(_)));
        }
    }
}
