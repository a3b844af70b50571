//! Scan evidence records: X-ray verdicts and how they were joined to parcels, X-ray images,
//! camera snapshots, and the chunks that carry their originals through store-and-forward.
//! They share the image-travel scheme (hash, thumbnail, chunks), so they sit together.

use serde::{Deserialize, Serialize};

/// How an X-ray verdict and a tracked parcel were joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XrayJoin {
    /// The verdict belongs to this parcel.
    Matched,
    /// No tracked parcel was in the tunnel at the verdict's time: an item the scanner saw
    /// that the barcode scanner did not (or a clock out of step). Customs should look.
    NoParcel,
    /// The parcel reached its divert deadline without a verdict: the rules failed closed.
    NoResult,
    /// Two waiting parcels were about as close to the verdict's time: it was given to neither,
    /// and they go to inspection unless verdicts of their own come.
    Ambiguous,
    /// A later verdict for a scan already joined (an officer's mark), joined the same way.
    Update,
}

/// An X-ray verdict and what it was joined to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XrayRecord {
    pub schema: u32,
    pub msg_id: String,
    pub seq: u64,
    pub prev_hash: String,
    pub gateway: String,
    pub line: String,
    /// The X-ray device's name in the configuration.
    pub device: String,
    /// The scanner's number for the passage; none for `no_result`.
    pub scan_id: Option<u32>,
    pub parcel: Option<u32>,
    pub waybill: Option<String>,
    pub result: Option<crate::xray::XrayResult>,
    pub material: Option<crate::xray::Material>,
    /// When the parcel entered the tunnel, by the scanner's clock.
    pub entered_at_ms: Option<u64>,
    pub join: XrayJoin,
    /// When the gateway read the verdict (or gave up waiting for one).
    pub at_ms: u64,
}

/// Where an image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageSource {
    /// The X-ray workstation's spool directory.
    Spool,
    /// The HTTP upload endpoint.
    Upload,
}

/// One view of an X-ray scan: its hash, a thumbnail, and how the original travels.
///
/// The original follows as `chunks` [`ImageChunkRecord`]s with the same `sha256`, each
/// carrying up to `IMAGE_CHUNK_BYTES` of it, through the same store-and-forward path as every
/// record; the platform joins them and checks the hash. An original larger than the
/// configured cap is not forwarded (`chunks` is 0) and stays on the gateway at `kept_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    pub schema: u32,
    pub msg_id: String,
    pub seq: u64,
    pub prev_hash: String,
    pub gateway: String,
    pub line: String,
    pub device: String,
    pub scan_id: u32,
    /// The view's name from the file name (`top`, `side`, ...).
    pub view: String,
    /// The parcel the scan was joined to, once it was.
    pub parcel: Option<u32>,
    pub waybill: Option<String>,
    pub source: ImageSource,
    pub file_name: String,
    /// SHA-256 of the original bytes, hex.
    pub sha256: String,
    pub bytes: u64,
    /// `jpeg` or `png`, when it decoded.
    pub format: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// A small JPEG for the staff view, base64.
    pub thumbnail_jpeg_b64: Option<String>,
    /// Why the image could not be decoded; the original is kept and forwarded all the same.
    pub error: Option<String>,
    pub chunks: u32,
    /// Where the original is kept on the gateway.
    pub kept_at: Option<String>,
    pub at_ms: u64,
}

/// Largest piece of an original image in one [`ImageChunkRecord`] (before base64).
pub const IMAGE_CHUNK_BYTES: usize = 96 * 1024;

/// One piece of an original image; see [`ImageRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageChunkRecord {
    pub schema: u32,
    pub msg_id: String,
    pub seq: u64,
    pub prev_hash: String,
    pub gateway: String,
    pub line: String,
    /// Always empty: chunks are found by their image's hash.
    pub waybill: Option<String>,
    pub sha256: String,
    /// 0-based.
    pub index: u32,
    pub count: u32,
    /// Base64 of the piece.
    pub data_b64: String,
    pub at_ms: u64,
}

/// Where along the line a camera looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CameraPoint {
    /// Just past the barcode scanner: every scanned parcel is photographed.
    Scan,
    /// Over a divert lane: parcels diverted to that lane are photographed there.
    Lane,
}

/// A camera snapshot of one parcel, or why there is none.
///
/// Like an [`ImageRecord`], the JPEG original follows as `chunks` [`ImageChunkRecord`]s with
/// the same `sha256` through the store-and-forward path. A snapshot that could not be taken
/// (camera down, too slow, not an image, capture queue full) is a record all the same, with
/// `error` = `"no evidence: <reason>"` and no hash: the parcel's file then says why it has no
/// picture instead of silently lacking one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRecord {
    pub schema: u32,
    pub msg_id: String,
    pub seq: u64,
    pub prev_hash: String,
    pub gateway: String,
    pub line: String,
    /// The camera's name in the configuration.
    pub camera: String,
    pub point: CameraPoint,
    /// The lane watched, for a lane camera.
    pub lane: Option<u16>,
    pub parcel: u32,
    pub waybill: Option<String>,
    /// When the parcel was due in the camera's field (Unix ms): scan time plus the offset.
    pub due_at_ms: u64,
    /// When the snapshot's bytes arrived; none when none did.
    pub taken_at_ms: Option<u64>,
    /// SHA-256 of the JPEG, hex; none without a picture.
    pub sha256: Option<String>,
    pub bytes: u64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// A small JPEG for the staff view, base64.
    pub thumbnail_jpeg_b64: Option<String>,
    pub chunks: u32,
    /// Where the original is kept on the gateway.
    pub kept_at: Option<String>,
    /// `no evidence: <reason>` when there is no usable picture.
    pub error: Option<String>,
    pub at_ms: u64,
}
