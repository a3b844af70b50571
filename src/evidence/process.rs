//! What one X-ray image is: its hash, its format and size, a thumbnail, or why it could not
//! be read. Pure and CPU-bound: no I/O, no runtime; the ingest runs it on the blocking pool.
//!
//! Only JPEG and PNG are accepted, recognised by their signature bytes, never by the file
//! name. The file's structure is walked before decoding (JPEG markers up to the end-of-image
//! marker, PNG chunks up to `IEND`) because the JPEG decoder pads a cut-off scan with grey
//! instead of failing: a half-written image must be reported as truncated, not thumbnailed
//! as if it were whole. Decoding runs under [`image::Limits`] so a small file announcing an
//! enormous image (a decompression bomb) is refused from its header, before any allocation.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageError, ImageFormat, ImageReader, Limits};

/// Widest and tallest image decoded. X-ray views are a few thousand pixels a side.
pub const MAX_DIMENSION: u32 = 16_384;
/// Memory the decoder may take for one image; with `workers` images at once this bounds the
/// gateway's decoding memory.
pub const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;
/// Default longest side of a thumbnail, in pixels.
pub const DEFAULT_THUMBNAIL_PX: u32 = 160;
/// Quality of the thumbnail JPEG: small enough for a record, clear enough for the board.
const THUMBNAIL_QUALITY: u8 = 70;
/// Longest error text kept: decoder messages are copied into records.
const MAX_ERROR_LEN: usize = 400;

const JPEG_MAGIC: &[u8] = &[0xFF, 0xD8, 0xFF];
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The outcome of reading one image. Always has the hash and size; the rest when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
    /// Size of the original in bytes.
    pub bytes: u64,
    /// `"jpeg"` or `"png"` when the image decoded; `None` otherwise.
    pub format: Option<&'static str>,
    /// The file extension the original is kept under: `jpg` or `png` from its signature
    /// (even when it did not decode), `bin` for anything else.
    pub ext: &'static str,
    /// Known from the header even when the pixels could not be decoded.
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// A JPEG whose longest side is the configured thumbnail size (smaller images are kept
    /// at their size).
    pub thumbnail_jpeg: Option<Vec<u8>>,
    /// Why the image could not be decoded, starting with what was wrong: `truncated JPEG:`,
    /// `corrupt PNG:`, `image too large:`, `not a JPEG or PNG image`, ...
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Jpeg,
    Png,
}

impl Kind {
    fn sniff(bytes: &[u8]) -> Option<Kind> {
        if bytes.starts_with(JPEG_MAGIC) {
            Some(Kind::Jpeg)
        } else if bytes.starts_with(PNG_MAGIC) {
            Some(Kind::Png)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Jpeg => "JPEG",
            Kind::Png => "PNG",
        }
    }

    fn format(self) -> ImageFormat {
        match self {
            Kind::Jpeg => ImageFormat::Jpeg,
            Kind::Png => ImageFormat::Png,
        }
    }
}

/// Hashes, checks and decodes `bytes`, and makes a thumbnail whose longest side is
/// `thumbnail_px`. Never panics on any input; a bad image gives `error`.
pub fn process(bytes: &[u8], thumbnail_px: u32) -> Processed {
    let mut out = Processed {
        sha256: hex::encode(crate::journal::sha256(bytes)),
        bytes: bytes.len() as u64,
        format: None,
        ext: "bin",
        width: None,
        height: None,
        thumbnail_jpeg: None,
        error: None,
    };
    let Some(kind) = Kind::sniff(bytes) else {
        out.error = Some(if bytes.is_empty() {
            "empty file: not a JPEG or PNG image".into()
        } else {
            "not a JPEG or PNG image".into()
        });
        return out;
    };
    out.ext = match kind {
        Kind::Jpeg => "jpg",
        Kind::Png => "png",
    };
    // The header alone: dimensions for the record even when the pixels are bad, and the
    // size limits applied before anything is allocated.
    let header = reader(bytes, kind).into_dimensions();
    if let Ok((w, h)) = header {
        (out.width, out.height) = (Some(w), Some(h));
    }
    let structure = match kind {
        Kind::Jpeg => check_jpeg(bytes),
        Kind::Png => check_png(bytes),
    };
    let error = match (header, structure) {
        // A bomb is named as such even when it is also cut short.
        (Err(e @ ImageError::Limits(_)), _) => Some(describe(kind, &e)),
        (_, Err(d @ Damage::Truncated(_))) => Some(clip(d.to_string())),
        (Err(e), _) => Some(describe(kind, &e)),
        (Ok(_), Err(d)) => Some(clip(d.to_string())),
        (Ok(_), Ok(())) => None,
    };
    if error.is_some() {
        out.error = error;
        return out;
    }
    let image = match reader(bytes, kind).decode() {
        Ok(i) => i,
        Err(e) => {
            out.error = Some(describe(kind, &e));
            return out;
        }
    };
    match thumbnail(&image, thumbnail_px) {
        Ok(t) => out.thumbnail_jpeg = Some(t),
        Err(e) => {
            out.error = Some(clip(format!("thumbnail not made: {e}")));
            return out;
        }
    }
    out.format = Some(match kind {
        Kind::Jpeg => "jpeg",
        Kind::Png => "png",
    });
    out
}

fn reader(bytes: &[u8], kind: Kind) -> ImageReader<Cursor<&[u8]>> {
    let mut r = ImageReader::with_format(Cursor::new(bytes), kind.format());
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    r.limits(limits);
    r
}

fn describe(kind: Kind, e: &ImageError) -> String {
    let text = match e {
        ImageError::Limits(l) => format!(
            "image too large: {l} (at most {MAX_DIMENSION}×{MAX_DIMENSION} pixels and {} MiB decoded)",
            MAX_DECODE_BYTES / (1024 * 1024)
        ),
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("truncated {}: {io}", kind.name())
        }
        ImageError::Decoding(d) => format!("corrupt {}: {d}", kind.name()),
        other => format!("cannot decode {}: {other}", kind.name()),
    };
    clip(text)
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// A JPEG of `image` scaled so its longest side is `px` (never enlarged). Greyscale stays
/// greyscale, which most X-ray views are, so the thumbnail is a third of an RGB one.
fn thumbnail(image: &DynamicImage, px: u32) -> Result<Vec<u8>, ImageError> {
    let px = px.max(1);
    let small = if image.width().max(image.height()) > px {
        image.thumbnail(px, px)
    } else {
        image.clone()
    };
    let mut out = Vec::new();
    let mut encoder = JpegEncoder::new_with_quality(&mut out, THUMBNAIL_QUALITY);
    if small.color().has_color() {
        encoder.encode_image(&small.to_rgb8())?;
    } else {
        encoder.encode_image(&small.to_luma8())?;
    }
    Ok(out)
}

/// What a structural walk of an image file found: its text goes in the record's `error`.
#[derive(Debug, thiserror::Error)]
enum Damage {
    /// The file ends early (named as such even when its header is also refused).
    #[error("{0}")]
    Truncated(String),
    #[error("{0}")]
    Corrupt(String),
}

/// Walks a JPEG's markers to its end-of-image marker: headers by their lengths, entropy-coded
/// scans up to the next marker.
fn check_jpeg(b: &[u8]) -> Result<(), Damage> {
    let mut i = 2; // after SOI
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        if i >= b.len() {
            return Err(Damage::Truncated(
                "truncated JPEG: the file ends before its end-of-image marker".into(),
            ));
        }
        if b[i] != 0xFF {
            return Err(Damage::Corrupt(format!(
                "corrupt JPEG: expected a marker at byte {i}, found 0x{:02X}",
                b[i]
            )));
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = b.get(i) else {
            return Err(Damage::Truncated(
                "truncated JPEG: the file ends inside a marker".into(),
            ));
        };
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            0x01 | 0xD0..=0xD7 => continue,
            0x00 => {
                return Err(Damage::Corrupt(format!(
                    "corrupt JPEG: stray 0xFF00 at byte {}",
                    i - 2
                )))
            }
            _ => {}
        }
        let Some(len) = b
            .get(i..i + 2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return Err(Damage::Truncated(format!(
                "truncated JPEG: the file ends in the header of segment 0x{marker:02X}"
            )));
        };
        if len < 2 {
            return Err(Damage::Corrupt(format!(
                "corrupt JPEG: segment 0x{marker:02X} at byte {} has length {len}",
                i - 2
            )));
        }
        if i + len > b.len() {
            return Err(Damage::Truncated(format!(
                "truncated JPEG: segment 0x{marker:02X} runs past the end of the file"
            )));
        }
        i += len;
        if marker == 0xDA {
            // Entropy-coded data: 0xFF is followed by 0x00 (a stuffed byte) or a restart
            // marker inside the scan; anything else is the next marker.
            loop {
                let Some(at) = b[i..].iter().position(|&x| x == 0xFF) else {
                    return Err(Damage::Truncated(
                        "truncated JPEG: the image data ends without an end-of-image marker".into(),
                    ));
                };
                i += at;
                match b.get(i + 1) {
                    None => {
                        return Err(Damage::Truncated(
                            "truncated JPEG: the image data ends without an end-of-image marker"
                                .into(),
                        ))
                    }
                    Some(0x00 | 0xD0..=0xD7) => i += 2,
                    Some(0xFF) => i += 1,
                    Some(_) => break,
                }
            }
        }
    }
}

/// Walks a PNG's chunks to `IEND`.
fn check_png(b: &[u8]) -> Result<(), Damage> {
    let mut i = PNG_MAGIC.len();
    loop {
        let Some(head) = b.get(i..i + 8) else {
            return Err(Damage::Truncated(
                "truncated PNG: the file ends before its IEND chunk".into(),
            ));
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = &head[4..8];
        let name = String::from_utf8_lossy(kind).into_owned();
        if len > 0x7FFF_FFFF {
            return Err(Damage::Corrupt(format!(
                "corrupt PNG: chunk {name:?} has length {len}"
            )));
        }
        let end = i + 8 + len + 4;
        if end > b.len() {
            return Err(Damage::Truncated(format!(
                "truncated PNG: chunk {name:?} runs past the end of the file"
            )));
        }
        if kind == b"IEND" {
            return Ok(());
        }
        i = end;
    }
}

/// Splits a spool file name of the form `<scan id>_<view>.<jpg|jpeg|png>` into the scan id
/// (decimal, fits in u32), the view (1 to 16 of `a-z 0-9 -`) and the lowercase extension.
/// The extension's case is ignored: workstations on some systems write `.JPG`.
pub fn parse_name(file_name: &str) -> Result<(u32, String, String), String> {
    let (stem, ext) = file_name
        .rsplit_once('.')
        .ok_or_else(|| format!("`{file_name}` has no extension; expected <scan id>_<view>.jpg"))?;
    let ext = ext.to_ascii_lowercase();
    if !matches!(ext.as_str(), "jpg" | "jpeg" | "png") {
        return Err(format!(
            "`{file_name}`: extension `.{ext}` is not .jpg, .jpeg or .png"
        ));
    }
    let (id, view) = stem.split_once('_').ok_or_else(|| {
        format!("`{file_name}` is not <scan id>_<view>.{ext} (no `_` between them)")
    })?;
    let scan_id = check_scan_id(id).map_err(|r| format!("`{file_name}`: {r}"))?;
    check_view(view).map_err(|r| format!("`{file_name}`: {r}"))?;
    Ok((scan_id, view.to_string(), ext))
}

/// A scan id as written in a file name or URL: decimal digits only, within u32.
pub fn check_scan_id(s: &str) -> Result<u32, String> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("scan id `{s}` is not a decimal number"));
    }
    s.parse()
        .map_err(|_| format!("scan id `{s}` is larger than 4294967295"))
}

/// A view name: 1 to 16 of `a-z 0-9 -`, so it is safe in a file name and a URL as is.
pub fn check_view(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 16
        || !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!("view `{s}` is not 1 to 16 of a-z 0-9 -"));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use image::{GrayImage, ImageEncoder, RgbImage};

    /// A greyscale JPEG of `w`×`h` with some structure.
    pub(crate) fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = GrayImage::from_fn(w, h, |x, y| image::Luma([((x * 7 + y * 3) % 251) as u8]));
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 85)
            .encode_image(&img)
            .unwrap();
        out
    }

    /// An RGB PNG of `w`×`h`.
    pub(crate) fn png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 128]));
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    fn thumb_size(p: &Processed) -> (u32, u32) {
        let t = image::load_from_memory_with_format(
            p.thumbnail_jpeg.as_ref().expect("a thumbnail"),
            ImageFormat::Jpeg,
        )
        .unwrap();
        (t.width(), t.height())
    }

    #[test]
    fn jpeg_and_png_of_several_sizes_decode_with_thumbnails() {
        for (w, h, thumb) in [
            (640, 480, (160, 120)),
            (480, 1200, (64, 160)),
            (2000, 1000, (160, 80)),
            (100, 50, (100, 50)),
            (1, 1, (1, 1)),
        ] {
            let p = process(&jpeg(w, h), DEFAULT_THUMBNAIL_PX);
            assert_eq!(p.error, None, "{w}x{h}");
            assert_eq!((p.format, p.ext), (Some("jpeg"), "jpg"));
            assert_eq!((p.width, p.height), (Some(w), Some(h)));
            assert_eq!(thumb_size(&p), thumb, "JPEG {w}x{h}");
            let p = process(&png(w, h), DEFAULT_THUMBNAIL_PX);
            assert_eq!(p.error, None, "{w}x{h}");
            assert_eq!((p.format, p.ext), (Some("png"), "png"));
            assert_eq!(thumb_size(&p), thumb, "PNG {w}x{h}");
        }
        let p = process(&jpeg(1000, 500), 320);
        assert_eq!(thumb_size(&p), (320, 160));
    }

    #[test]
    fn the_hash_is_of_the_bytes() {
        let bytes = png(10, 10);
        let p = process(&bytes, 160);
        assert_eq!(p.sha256, hex::encode(crate::journal::sha256(&bytes)));
        assert_eq!(p.bytes, bytes.len() as u64);
        assert_eq!(
            process(b"", 160).sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn truncated_images_are_named_truncated() {
        let whole = jpeg(300, 200);
        for cut in [whole.len() - 2, whole.len() / 2, 700] {
            let p = process(&whole[..cut], 160);
            let e = p.error.as_deref().unwrap_or_default();
            assert!(e.starts_with("truncated JPEG: "), "cut at {cut}: {e}");
            assert_eq!((p.format, p.ext, p.thumbnail_jpeg), (None, "jpg", None));
            assert_eq!(p.width, Some(300), "the header was whole");
        }
        let whole = png(300, 200);
        for cut in [whole.len() - 1, whole.len() / 2, 40] {
            let p = process(&whole[..cut], 160);
            let e = p.error.as_deref().unwrap_or_default();
            assert!(e.starts_with("truncated PNG: "), "cut at {cut}: {e}");
            assert_eq!(p.ext, "png");
        }
        let p = process(&whole[..20], 160);
        assert!(p.error.is_some(), "a header cut short");
    }

    #[test]
    fn corrupt_and_foreign_data_give_errors_not_panics() {
        let p = process(b"GIF89a....", 160);
        assert_eq!(p.error.as_deref(), Some("not a JPEG or PNG image"));
        assert_eq!(p.ext, "bin");
        assert!(process(b"", 160).error.unwrap().contains("empty"));
        // Scan data garbled but the structure whole.
        let mut bad = jpeg(64, 64);
        let sos = bad.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let sof = bad.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        bad[sof + 9] = 7; // seven components in a baseline frame
        assert!(process(&bad, 160).error.is_some());
        bad = jpeg(64, 64);
        bad[sos + 2] = 0;
        bad[sos + 3] = 1; // a scan header of length 1
        assert!(process(&bad, 160)
            .error
            .unwrap()
            .starts_with("corrupt JPEG"));
        // A PNG whose compressed data is garbage.
        let mut bad = png(64, 64);
        let idat = bad.windows(4).position(|w| w == b"IDAT").unwrap();
        for b in &mut bad[idat + 4..idat + 40] {
            *b = 0x5A;
        }
        let e = process(&bad, 160).error.unwrap();
        assert!(e.contains("PNG"), "{e}");
        // Every prefix of a small image: no panic, and an error for every cut.
        let whole = jpeg(16, 16);
        for cut in 0..whole.len() {
            assert!(process(&whole[..cut], 160).error.is_some(), "cut {cut}");
        }
        let whole = png(16, 16);
        for cut in 0..whole.len() {
            assert!(process(&whole[..cut], 160).error.is_some(), "cut {cut}");
        }
    }

    #[test]
    fn a_bomb_like_header_is_refused_before_decoding() {
        // A PNG header announcing 100000×100000 pixels, with a few bytes of data.
        let mut bomb = png(1, 1);
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        let p = process(&bomb, 160);
        let e = p.error.unwrap();
        assert!(e.starts_with("image too large: "), "{e}");
        assert_eq!(p.thumbnail_jpeg, None);
        // Within the dimensions but beyond the memory limit: 16000×16000 RGB.
        bomb[16..20].copy_from_slice(&16_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&16_000u32.to_be_bytes());
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        let e = process(&bomb, 160).error.unwrap();
        assert!(e.starts_with("image too large: "), "{e}");
        // A JPEG frame header announcing 60000×60000.
        let mut bomb = jpeg(8, 8);
        let sof = bomb.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        bomb[sof + 5..sof + 7].copy_from_slice(&60_000u16.to_be_bytes());
        bomb[sof + 7..sof + 9].copy_from_slice(&60_000u16.to_be_bytes());
        let e = process(&bomb, 160).error.unwrap();
        assert!(e.starts_with("image too large: "), "{e}");
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn names_follow_the_convention() {
        assert_eq!(
            parse_name("12345_top.jpg"),
            Ok((12345, "top".into(), "jpg".into()))
        );
        assert_eq!(
            parse_name("0_side-2.PNG"),
            Ok((0, "side-2".into(), "png".into()))
        );
        assert_eq!(
            parse_name("4294967295_a.jpeg").unwrap().0,
            u32::MAX,
            "the largest scan id"
        );
        for bad in [
            "4294967296_top.jpg",
            "+1_top.jpg",
            "-1_top.jpg",
            "12_top.gif",
            "12_top",
            "top.jpg",
            "_top.jpg",
            "12_.jpg",
            "12_Top.jpg",
            "12_top_2.jpg",
            "12_abcdefghijklmnopq.jpg",
            "12 _top.jpg",
            "12_t%p.jpg",
            "",
            ".jpg",
        ] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
        assert!(
            parse_name("12_abcdefghijklmnop.jpg").is_ok(),
            "16 characters"
        );
    }
}
