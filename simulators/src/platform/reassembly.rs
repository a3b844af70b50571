//! Images and camera snapshots put back together from the records received: each image or
//! snapshot record with the chunk records carrying its hash, and whether the original's
//! SHA-256 checks. The platform's side of the image-travel scheme of the contract.

use bondline_devices::contract::Record;

/// An image as the platform received it.
#[derive(Debug, Clone)]
pub struct ReceivedImage {
    pub record: bondline_devices::contract::ImageRecord,
    /// The original, once every chunk arrived; `None` while pieces are missing or when the
    /// gateway kept it (over the size cap).
    pub original: Option<Vec<u8>>,
    /// Whether the original's SHA-256 matches the record's.
    pub hash_ok: bool,
}

/// Puts images back together from the records received: each distinct image record (by hash,
/// scan and view) with the chunks carrying its hash, duplicates ignored.
pub fn reassemble(records: &[Record]) -> Vec<ReceivedImage> {
    use std::collections::HashSet;
    let originals = Originals::of(records);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in records {
        let Record::Image(i) = r else { continue };
        if !seen.insert((i.sha256.clone(), i.scan_id, i.view.clone())) {
            continue;
        }
        let (original, hash_ok) = originals.get(&i.sha256, i.chunks);
        out.push(ReceivedImage {
            record: i.clone(),
            original,
            hash_ok,
        });
    }
    out
}

/// A camera snapshot record as the platform received it.
#[derive(Debug, Clone)]
pub struct ReceivedSnapshot {
    pub record: bondline_devices::contract::SnapshotRecord,
    /// The JPEG, once every chunk arrived; `None` without a picture or while pieces miss.
    pub original: Option<Vec<u8>>,
    /// Whether the original's SHA-256 matches the record's.
    pub hash_ok: bool,
}

/// Every snapshot record received (duplicates by message id ignored), with its JPEG put back
/// together from the chunks carrying its hash, as for X-ray images.
pub fn reassemble_snapshots(records: &[Record]) -> Vec<ReceivedSnapshot> {
    use std::collections::HashSet;
    let originals = Originals::of(records);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in records {
        let Record::Snapshot(s) = r else { continue };
        if !seen.insert(s.msg_id.clone()) {
            continue;
        }
        let (original, hash_ok) = match &s.sha256 {
            Some(sha) => originals.get(sha, s.chunks),
            None => (None, false),
        };
        out.push(ReceivedSnapshot {
            record: s.clone(),
            original,
            hash_ok,
        });
    }
    out
}

/// The image chunk records received, by hash and index.
struct Originals<'a>(
    std::collections::HashMap<
        &'a str,
        std::collections::BTreeMap<u32, &'a bondline_devices::contract::ImageChunkRecord>,
    >,
);

impl<'a> Originals<'a> {
    fn of(records: &'a [Record]) -> Originals<'a> {
        let mut chunks: std::collections::HashMap<_, std::collections::BTreeMap<_, _>> =
            std::collections::HashMap::new();
        for r in records {
            if let Record::ImageChunk(c) = r {
                chunks
                    .entry(c.sha256.as_str())
                    .or_default()
                    .insert(c.index, c);
            }
        }
        Originals(chunks)
    }

    /// The original with this hash in `count` chunks, if all arrived, and whether its hash
    /// checks.
    fn get(&self, sha256: &str, count: u32) -> (Option<Vec<u8>>, bool) {
        use base64::Engine;
        use sha2::Digest;
        let parts = self.0.get(sha256);
        let complete = count > 0 && parts.is_some_and(|p| p.len() == count as usize);
        let original = complete
            .then(|| {
                let mut bytes = Vec::new();
                for c in parts.into_iter().flat_map(|p| p.values()) {
                    match base64::engine::general_purpose::STANDARD.decode(&c.data_b64) {
                        Ok(b) => bytes.extend(b),
                        Err(_) => return None,
                    }
                }
                Some(bytes)
            })
            .flatten();
        let hash_ok = original
            .as_ref()
            .is_some_and(|b| hex::encode(sha2::Sha256::digest(b)) == sha256);
        (original, hash_ok)
    }
}
