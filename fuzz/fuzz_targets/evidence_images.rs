//! X-ray images and camera snapshots as the gateway takes them in: the spool, the upload
//! endpoint and the camera capture all hand the bytes to `evidence::process::process` (hash,
//! JPEG/PNG signature, structure walk, header-first size limits, decode, thumbnail), after
//! their size checks. Whatever the bytes, it must not panic, and the result must keep its
//! documented shape. The same bytes, as text, go through the spool's file name rule
//! (`parse_name`) and the upload's path segment checks (`check_scan_id`, `check_view`).
//!
//! Input: `[thumbnail selector, image bytes...]`. The selector picks `thumbnail_px` within
//! the range `[evidence]` validates (32 to 1024). Inputs are kept to 64 KiB (run with
//! `-max_len=65536`) so decoding stays fast; the decoder's own limits are the gateway's
//! (`MAX_DIMENSION`, `MAX_DECODE_BYTES`), constants of `process`.
#![no_main]

use std::path::Path;

use bondline::camera::fetch::MAX_SNAPSHOT_BYTES;
use bondline::evidence::process::{check_scan_id, check_view, parse_name, process};
use bondline::evidence::{EvidenceConfig, MAX_IMAGE_BYTES};
use libfuzzer_sys::fuzz_target;

/// Largest input tried: far below the gateway's limits, so a run stays fast.
const FUZZ_MAX_BYTES: usize = 64 * 1024;

const ERROR_STARTS: &[&str] = &[
    "truncated JPEG: ",
    "truncated PNG: ",
    "corrupt JPEG: ",
    "corrupt PNG: ",
    "image too large: ",
    "cannot decode JPEG: ",
    "cannot decode PNG: ",
    "thumbnail not made: ",
    "not a JPEG or PNG image",
    "empty file: not a JPEG or PNG image",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    names(bytes);

    // The intake's size checks: the spool and the upload refuse more than MAX_IMAGE_BYTES,
    // a camera snapshot more than MAX_SNAPSHOT_BYTES.
    if bytes.len() > FUZZ_MAX_BYTES.min(MAX_IMAGE_BYTES).min(MAX_SNAPSHOT_BYTES) {
        return;
    }
    let mut cfg = EvidenceConfig::defaults(Path::new("/nonexistent/fuzz"));
    cfg.thumbnail_px = (32 + u32::from(selector) * 4).min(1024);
    let px = cfg.thumbnail_px;

    let p = process(bytes, px);
    if show() {
        let mut shown = p.clone();
        shown.thumbnail_jpeg = shown.thumbnail_jpeg.map(|t| t[..t.len().min(4)].to_vec());
        eprintln!("px {px}: {shown:?}");
    }
    assert_eq!(p.bytes, bytes.len() as u64);
    assert_eq!(p.sha256.len(), 64);
    assert!(p
        .sha256
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let ext = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "jpg"
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        "png"
    } else {
        "bin"
    };
    assert_eq!(p.ext, ext, "the extension follows the signature");
    match (&p.error, p.format, &p.thumbnail_jpeg) {
        (None, Some(format), Some(thumb)) => {
            assert_eq!(format, if ext == "jpg" { "jpeg" } else { "png" });
            let (w, h) = (p.width.unwrap(), p.height.unwrap());
            assert!(w > 0 && h > 0);
            let t = image::load_from_memory_with_format(thumb, image::ImageFormat::Jpeg)
                .expect("the thumbnail is a JPEG");
            // Longest side `px`, never enlarged: a smaller image keeps its size.
            let (tw, th) = (t.width(), t.height());
            assert!(tw.max(th) <= px, "thumbnail {tw}x{th} for {w}x{h} at {px}");
            if w.max(h) <= px {
                assert_eq!((tw, th), (w, h), "a small image is kept at its size");
            }
        }
        (Some(e), None, None) => {
            assert!(
                ERROR_STARTS.iter().any(|s| e.starts_with(s)),
                "error does not say what was wrong: {e}"
            );
            // 400 bytes kept at most, plus the ellipsis.
            assert!(e.len() <= 400 + '…'.len_utf8(), "error of {} bytes", e.len());
            if ext == "bin" {
                assert_eq!((p.width, p.height), (None, None));
            }
        }
        other => panic!("inconsistent result: {other:?}"),
    }
});

/// `BONDLINE_FUZZ_SHOW=1`: print what `process` made of each input (to check seeds, or a
/// crash's input).
fn show() -> bool {
    static SHOW: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SHOW.get_or_init(|| std::env::var_os("BONDLINE_FUZZ_SHOW").is_some())
}

/// The spool's file name rule and the upload's path segments, on the bytes as text (names
/// that are not UTF-8 come out lossy, as the spool lists them).
fn names(bytes: &[u8]) {
    if bytes.len() > 255 {
        return;
    }
    let name = String::from_utf8_lossy(bytes);
    if let Ok((scan_id, view, ext)) = parse_name(&name) {
        assert!(matches!(ext.as_str(), "jpg" | "jpeg" | "png"), "{name:?}");
        assert!(check_view(&view).is_ok(), "{name:?}");
        let expected = format!("_{view}.{ext}");
        assert!(name.to_ascii_lowercase().ends_with(&expected), "{name:?}");
        let id = &name[..name.len() - expected.len()];
        assert_eq!(check_scan_id(id), Ok(scan_id), "{name:?}");
    }
    for segment in name.split('/') {
        if let Ok(id) = check_scan_id(segment) {
            assert!(segment.bytes().all(|b| b.is_ascii_digit()), "{segment:?}");
            assert_eq!(segment.parse::<u64>().ok(), Some(u64::from(id)), "{segment:?}");
        }
        if check_view(segment).is_ok() {
            assert!((1..=16).contains(&segment.len()), "{segment:?}");
            assert!(!segment.contains(['/', '.', '\\', '%']), "{segment:?}");
        }
    }
}
