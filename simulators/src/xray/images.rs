//! Synthetic X-ray images of each scan, written to a spool directory the way an X-ray
//! workstation drops its files for the controller to collect.
//!
//! A file is `<scan id>_<view>.<jpg|png>` (the scan id is the one in the verdict ring), and
//! it appears whole or not at all: it is written as `<name>.part`, synced, then renamed, so a
//! reader polling the directory never picks up half a file. Half files are what
//! [`XrayImages::write_truncated`] is for, and random bytes what [`XrayImages::write_corrupt`]
//! is for: the daemon's error paths need both.
//!
//! The pictures look like a dual-energy X-ray screen: a belt background that runs from dark
//! to light, the carton, and translucent objects in pseudo-colour by material (organic
//! orange, inorganic green, metal blue), darker where they overlap because each one
//! attenuates what passes through it. A suspect parcel holds one more object, dense and
//! saturated. Everything is drawn from the scan id alone, so the same scan always gives the
//! same bytes, and the views of one scan show the same objects from above and from the side.

use std::fs::{self, File};
use std::io::{Cursor, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder as _, RgbImage};

use super::rng::SplitMix64;

/// Stream salts: the scene, the suspect object and the corrupt bytes draw independently.
const SALT_SCENE: u64 = 0x0073_6365_6E65;
const SALT_THREAT: u64 = 0x7468_7265_6174;
const SALT_CORRUPT: u64 = 0x0063_6F72_7275_7074;
/// Smallest and largest image side: below, nothing is recognisable; above, files of tens of
/// megabytes would only slow the tests and the daemon's uplink.
const MIN_SIDE: u32 = 16;
const MAX_SIDE: u32 = 4096;

/// File format of the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageFormat {
    #[default]
    Jpeg,
    Png,
}

impl ImageFormat {
    /// The file name extension the daemon matches on.
    pub fn ext(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Png => "png",
        }
    }
}

impl FromStr for ImageFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<ImageFormat, String> {
        match s.to_ascii_lowercase().as_str() {
            "jpg" | "jpeg" => Ok(ImageFormat::Jpeg),
            "png" => Ok(ImageFormat::Png),
            _ => Err(format!("`{s}` is not an image format: jpg or png")),
        }
    }
}

/// Colouring of the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Palette {
    /// Pseudo-colour by material, as dual-energy scanners show it.
    #[default]
    DualEnergy,
    /// Attenuation only, as single-energy scanners show it.
    Grey,
}

impl FromStr for Palette {
    type Err = String;
    fn from_str(s: &str) -> Result<Palette, String> {
        match s.to_ascii_lowercase().as_str() {
            "dual-energy" | "colour" | "color" => Ok(Palette::DualEnergy),
            "grey" | "gray" => Ok(Palette::Grey),
            _ => Err(format!("`{s}` is not a palette: dual-energy or grey")),
        }
    }
}

/// What the images look like and which views each scan has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub width: u32,
    pub height: u32,
    pub format: ImageFormat,
    pub palette: Palette,
    /// View names (1 to 16 of `a-z 0-9 -`), each one file per scan. A name containing
    /// `side` is drawn from the side (belt direction against height), any other from above.
    pub views: Vec<String>,
    /// JPEG quality, 1 to 100.
    pub jpeg_quality: u8,
}

impl Default for ImageSpec {
    /// 640 × 480 JPEG, dual-energy colours, views `top` and `side`.
    fn default() -> ImageSpec {
        ImageSpec {
            width: 640,
            height: 480,
            format: ImageFormat::Jpeg,
            palette: Palette::DualEnergy,
            views: vec!["top".to_string(), "side".to_string()],
            jpeg_quality: 85,
        }
    }
}

/// Why images could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image size {width}x{height}: each side must be {MIN_SIDE} to {MAX_SIDE} pixels")]
    Size { width: u32, height: u32 },
    #[error("view name `{0}`: use 1 to 16 of a-z 0-9 '-' (it is part of the file name)")]
    View(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding an image: {0}")]
    Encode(#[from] image::ImageError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the views of scans into a spool directory.
#[derive(Debug, Clone)]
pub struct XrayImages {
    spool: PathBuf,
    spec: ImageSpec,
}

impl XrayImages {
    /// Checks `spec` and creates `spool` if it does not exist.
    pub fn new(spool: impl Into<PathBuf>, spec: ImageSpec) -> Result<XrayImages, ImageError> {
        let sides = MIN_SIDE..=MAX_SIDE;
        if !sides.contains(&spec.width) || !sides.contains(&spec.height) {
            return Err(ImageError::Size {
                width: spec.width,
                height: spec.height,
            });
        }
        if let Some(bad) = spec.views.iter().find(|v| !valid_view(v)) {
            return Err(ImageError::View(bad.clone()));
        }
        let spool = spool.into();
        fs::create_dir_all(&spool).map_err(io_error(&spool))?;
        Ok(XrayImages { spool, spec })
    }

    pub fn spool(&self) -> &Path {
        &self.spool
    }

    pub fn spec(&self) -> &ImageSpec {
        &self.spec
    }

    /// `<scan id>_<view>.<ext>` in the spool.
    pub fn path(&self, scan_id: u32, view: &str) -> PathBuf {
        self.spool
            .join(format!("{scan_id}_{view}.{}", self.spec.format.ext()))
    }

    /// Writes every view of scan `scan_id`; returns the files in view order.
    pub fn write(&self, scan_id: u32, suspect: bool) -> Result<Vec<PathBuf>, ImageError> {
        self.spec
            .views
            .iter()
            .map(|view| self.write_view(scan_id, view, suspect))
            .collect()
    }

    /// Writes one view of scan `scan_id`.
    pub fn write_view(
        &self,
        scan_id: u32,
        view: &str,
        suspect: bool,
    ) -> Result<PathBuf, ImageError> {
        let image = render(scan_id, view, suspect, &self.spec);
        let bytes = encode(&image, self.spec.format, self.spec.jpeg_quality)?;
        let path = self.path(scan_id, view);
        write_atomic(&path, &bytes)?;
        Ok(path)
    }

    /// Writes `<scan id>_<view>.jpg` holding random bytes (never a JPEG start marker), as a
    /// workstation with a failing disk might.
    pub fn write_corrupt(&self, scan_id: u32, view: &str) -> Result<PathBuf, ImageError> {
        let mut g = SplitMix64::keyed(0, SALT_CORRUPT, u64::from(scan_id));
        let mut bytes: Vec<u8> = (0..4096).flat_map(|_| g.next_u64().to_le_bytes()).collect();
        bytes[0] = 0;
        let path = self.jpeg_path(scan_id, view);
        write_atomic(&path, &bytes)?;
        Ok(path)
    }

    /// Writes `<scan id>_<view>.jpg` holding the first half of a valid JPEG of the view, as a
    /// workstation that died mid-write (or wrote in place) leaves it.
    pub fn write_truncated(&self, scan_id: u32, view: &str) -> Result<PathBuf, ImageError> {
        let image = render(scan_id, view, false, &self.spec);
        let mut bytes = encode(&image, ImageFormat::Jpeg, self.spec.jpeg_quality)?;
        bytes.truncate(bytes.len() / 2);
        let path = self.jpeg_path(scan_id, view);
        write_atomic(&path, &bytes)?;
        Ok(path)
    }

    fn jpeg_path(&self, scan_id: u32, view: &str) -> PathBuf {
        self.spool.join(format!("{scan_id}_{view}.jpg"))
    }
}

/// The daemon's rule for a view in a spool file name (and its upload URL): 1 to 16 of
/// `a-z 0-9 -`. A simulator writing other names would only test the daemon's refusal.
fn valid_view(v: &str) -> bool {
    (1..=16).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Encodes `image` in `format`.
pub(crate) fn encode(
    image: &RgbImage,
    format: ImageFormat,
    jpeg_quality: u8,
) -> Result<Vec<u8>, ImageError> {
    let mut out = Cursor::new(Vec::new());
    let (w, h) = image.dimensions();
    match format {
        ImageFormat::Jpeg => JpegEncoder::new_with_quality(&mut out, jpeg_quality.clamp(1, 100))
            .write_image(image.as_raw(), w, h, ExtendedColorType::Rgb8)?,
        ImageFormat::Png => {
            PngEncoder::new(&mut out).write_image(image.as_raw(), w, h, ExtendedColorType::Rgb8)?
        }
    }
    Ok(out.into_inner())
}

/// Writes `<path>.part`, syncs it and renames it to `path`, so `path` is whole or absent.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let written = File::create(&part).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| fs::rename(&part, path)) {
        let _ = fs::remove_file(&part);
        return Err(io_error(path)(e));
    }
    Ok(())
}

/// How much of each colour an object lets through, by material: the dual-energy screen's
/// convention of orange for organic, green for inorganic and blue for metal.
const ORGANIC: [f32; 3] = [1.0, 0.62, 0.25];
const INORGANIC: [f32; 3] = [0.45, 0.92, 0.40];
const METAL: [f32; 3] = [0.30, 0.45, 1.0];
const CARTON: [f32; 3] = [0.98, 0.86, 0.66];
const THREAT: [f32; 3] = [0.04, 0.08, 0.42];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    Rect,
    Ellipse,
}

/// An object in the carton: extents along the belt (x), across it (y) and up (z), as
/// fractions of the carton, and how it attenuates.
#[derive(Debug, Clone, Copy)]
struct Blob {
    x: (f32, f32),
    y: (f32, f32),
    z: (f32, f32),
    shape: Shape,
    tint: [f32; 3],
    density: f32,
}

/// A carton and its contents, fractions of the image (carton) and of the carton (blobs).
#[derive(Debug, Clone)]
struct Scene {
    carton_x: (f32, f32),
    carton_y: (f32, f32),
    /// Carton height as a fraction of the image height, standing on the belt.
    carton_h: f32,
    blobs: Vec<Blob>,
}

fn span(g: &mut SplitMix64, min_len: f64, max_len: f64) -> (f32, f32) {
    let len = g.range(min_len, max_len);
    let start = g.range(0.02, (0.98 - len).max(0.02));
    (start as f32, (start + len).min(0.98) as f32)
}

fn scene(scan_id: u32, suspect: bool) -> Scene {
    let mut g = SplitMix64::keyed(0, SALT_SCENE, u64::from(scan_id));
    let carton_x = span(&mut g, 0.45, 0.7);
    let carton_y = span(&mut g, 0.35, 0.6);
    let carton_h = g.range(0.3, 0.6) as f32;
    let count = g.int(3, 8);
    let mut blobs: Vec<Blob> = (0..count)
        .map(|_| {
            let tint = match g.int(0, 9) {
                0..=4 => ORGANIC,
                5..=7 => INORGANIC,
                _ => METAL,
            };
            Blob {
                x: span(&mut g, 0.12, 0.5),
                y: span(&mut g, 0.12, 0.5),
                z: span(&mut g, 0.12, 0.6),
                shape: if g.chance(0.5) {
                    Shape::Rect
                } else {
                    Shape::Ellipse
                },
                tint,
                density: g.range(0.25, 0.7) as f32,
            }
        })
        .collect();
    if suspect {
        blobs.extend(threat(scan_id));
    }
    Scene {
        carton_x,
        carton_y,
        carton_h,
        blobs,
    }
}

/// The dense object of a suspect parcel: a block with a grip, nearly opaque.
fn threat(scan_id: u32) -> [Blob; 2] {
    let mut g = SplitMix64::keyed(0, SALT_THREAT, u64::from(scan_id));
    let body = Blob {
        x: span(&mut g, 0.25, 0.4),
        y: span(&mut g, 0.15, 0.25),
        z: span(&mut g, 0.15, 0.3),
        shape: Shape::Rect,
        tint: THREAT,
        density: 0.95,
    };
    let grip = Blob {
        x: (body.x.0, body.x.0 + (body.x.1 - body.x.0) * 0.35),
        y: (body.y.1 - 0.02, (body.y.1 + 0.2).min(0.98)),
        z: body.z,
        shape: Shape::Ellipse,
        tint: THREAT,
        density: 0.9,
    };
    [body, grip]
}

/// A rectangle in pixels: `(x0, x1, y0, y1)`, half-open.
type PixelRect = (f32, f32, f32, f32);

/// Draws view `view` of scan `scan_id` (with the dense object when `suspect`). Pure:
/// the same arguments give the same pixels.
pub fn render(scan_id: u32, view: &str, suspect: bool, spec: &ImageSpec) -> RgbImage {
    let (w, h) = (spec.width.max(1), spec.height.max(1));
    let mut img = background(w, h, scan_id);
    let s = scene(scan_id, suspect);
    let side = view.contains("side");
    let (fw, fh) = (w as f32, h as f32);
    let carton = if side {
        // Standing on the belt, whose surface is at 90 % of the height.
        (
            s.carton_x.0 * fw,
            s.carton_x.1 * fw,
            (0.9 - s.carton_h) * fh,
            0.9 * fh,
        )
    } else {
        (
            s.carton_x.0 * fw,
            s.carton_x.1 * fw,
            s.carton_y.0 * fh,
            s.carton_y.1 * fh,
        )
    };
    attenuate(&mut img, carton, Shape::Rect, CARTON, 0.35);
    carton_walls(&mut img, carton);
    for b in &s.blobs {
        // From the side, up is towards the top of the image.
        let (v0, v1) = if side {
            (1.0 - b.z.1, 1.0 - b.z.0)
        } else {
            b.y
        };
        let (cx0, cx1, cy0, cy1) = carton;
        let rect = (
            cx0 + b.x.0 * (cx1 - cx0),
            cx0 + b.x.1 * (cx1 - cx0),
            cy0 + v0 * (cy1 - cy0),
            cy0 + v1 * (cy1 - cy0),
        );
        attenuate(&mut img, rect, b.shape, b.tint, b.density);
    }
    if spec.palette == Palette::Grey {
        to_grey(&mut img);
    }
    img
}

/// The empty tunnel: dark at the top, light at the bottom, with a little sensor noise.
fn background(w: u32, h: u32, scan_id: u32) -> RgbImage {
    let rows = h.saturating_sub(1).max(1);
    RgbImage::from_fn(w, h, |x, y| {
        let level = 70 + 175 * y / rows;
        let v = (level as i32 + noise(x, y, scan_id)).clamp(0, 255) as u32;
        image::Rgb([(v * 245 / 255) as u8, (v * 250 / 255) as u8, v as u8])
    })
}

/// -4 to +3 grey levels of noise from a cheap hash of the pixel.
fn noise(x: u32, y: u32, seed: u32) -> i32 {
    let mut v = x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77) ^ seed;
    v ^= v >> 15;
    v = v.wrapping_mul(0x2C1B_3C6D);
    v ^= v >> 12;
    (v & 7) as i32 - 4
}

/// Cardboard seen edge-on absorbs more: a darker frame a few pixels wide.
fn carton_walls(img: &mut RgbImage, (x0, x1, y0, y1): PixelRect) {
    let t = 3.0;
    for rect in [
        (x0, x1, y0, y0 + t),
        (x0, x1, y1 - t, y1),
        (x0, x0 + t, y0, y1),
        (x1 - t, x1, y0, y1),
    ] {
        attenuate(img, rect, Shape::Rect, CARTON, 0.45);
    }
}

/// Multiplies the pixels inside `rect` (or the ellipse inscribed in it) by what the object
/// lets through: overlapping objects darken each other, as in a transmission image.
fn attenuate(
    img: &mut RgbImage,
    (x0, x1, y0, y1): PixelRect,
    shape: Shape,
    tint: [f32; 3],
    density: f32,
) {
    let (w, h) = img.dimensions();
    // Fixed point, 256 = everything passes.
    let keep = tint.map(|t| ((1.0 - density * (1.0 - t)) * 256.0).round() as u16);
    let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    let (rx, ry) = (((x1 - x0) / 2.0).max(0.5), ((y1 - y0) / 2.0).max(0.5));
    let xs = x0.max(0.0) as u32..(x1.max(0.0) as u32).min(w);
    for y in y0.max(0.0) as u32..(y1.max(0.0) as u32).min(h) {
        let dy = (y as f32 + 0.5 - cy) / ry;
        for x in xs.clone() {
            if shape == Shape::Ellipse {
                let dx = (x as f32 + 0.5 - cx) / rx;
                if dx * dx + dy * dy > 1.0 {
                    continue;
                }
            }
            let p = img.get_pixel_mut(x, y);
            for (v, k) in p.0.iter_mut().zip(keep) {
                *v = ((u16::from(*v) * k) >> 8) as u8;
            }
        }
    }
}

/// Attenuation only: the luma of each pixel in all three channels.
fn to_grey(img: &mut RgbImage) {
    for p in img.pixels_mut() {
        let [r, g, b] = p.0.map(u32::from);
        let l = ((77 * r + 150 * g + 29 * b) >> 8) as u8;
        p.0 = [l, l, l];
    }
}
