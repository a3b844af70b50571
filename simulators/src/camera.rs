//! `camera-sim`: an IP camera's snapshot endpoint (`GET /snapshot.jpg`), for running bondline's
//! video evidence without a camera.
//!
//! Each frame is a JPEG drawn with the image crate: a moving belt pattern and a visible stamp
//! of the time and the waybill of the parcel currently under the camera, in a small bitmap
//! font. The same text is in a JPEG comment segment (`FF FE`), which [`stamp_of`] reads back,
//! so a test can check exactly which parcel a snapshot shows. Which parcel is under the
//! camera is told by whoever drives the belt: [`CameraSim::set_current`] now, or
//! [`CameraSim::enter`] for a parcel that arrives at a given moment.
//!
//! Fault modes, switchable at run time ([`CameraFault`]): an HTTP error status, a hang (the
//! request is never answered), garbage bytes with a 200, or a delay. Credentials, when set,
//! are checked as HTTP basic or digest (RFC 7616, MD5, `qop=auth`).

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use image::codecs::jpeg::JpegEncoder;
use image::{ExtendedColorType, ImageEncoder as _, Rgb, RgbImage};
use md5::{Digest as _, Md5};

/// What the camera does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CameraFault {
    #[default]
    Normal,
    /// Answers with this HTTP status and no picture.
    Fail(u16),
    /// Accepts the request and never answers.
    Hang,
    /// Answers 200 `image/jpeg` with bytes that are not an image.
    Garbage,
    /// Answers normally after this many milliseconds.
    Slow(u64),
}

/// Credentials the camera asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimAuth {
    Open,
    Basic { username: String, password: String },
    Digest { username: String, password: String },
}

const REALM: &str = "camera-sim";
/// Frame size: small enough for hundreds a second, large enough to read the stamp.
pub const WIDTH: u32 = 320;
pub const HEIGHT: u32 = 120;

struct Shared {
    auth: SimAuth,
    state: Mutex<Belt>,
}

#[derive(Default)]
struct Belt {
    fault: CameraFault,
    /// Parcels by the moment they come under the camera; the latest one that has is shown.
    arrivals: BTreeMap<Instant, Option<String>>,
    served: u64,
}

/// A simulated camera; cheap to clone, all clones share one state.
#[derive(Clone)]
pub struct CameraSim {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CameraSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials stay out of logs, even a simulator's.
        f.debug_struct("CameraSim")
            .field("fault", &self.belt().fault)
            .field("served", &self.belt().served)
            .finish_non_exhaustive()
    }
}

impl CameraSim {
    pub fn new(auth: SimAuth) -> CameraSim {
        CameraSim {
            shared: Arc::new(Shared {
                auth,
                state: Mutex::new(Belt::default()),
            }),
        }
    }

    fn belt(&self) -> std::sync::MutexGuard<'_, Belt> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The parcel under the camera from now on (`None`: an empty belt).
    pub fn set_current(&self, waybill: Option<String>) {
        self.enter(waybill, Instant::now());
    }

    /// The parcel under the camera from `at` on, until the next one arrives.
    pub fn enter(&self, waybill: Option<String>, at: Instant) {
        let mut b = self.belt();
        b.arrivals.insert(at, waybill);
        // Only the one shown now and those to come matter.
        let now = Instant::now();
        let keep_from = b.arrivals.range(..=now).next_back().map(|(t, _)| *t);
        if let Some(from) = keep_from {
            b.arrivals = b.arrivals.split_off(&from);
        }
    }

    /// The waybill under the camera at `now`.
    pub fn current(&self) -> Option<String> {
        let now = Instant::now();
        self.belt()
            .arrivals
            .range(..=now)
            .next_back()
            .and_then(|(_, w)| w.clone())
    }

    pub fn set_fault(&self, fault: CameraFault) {
        self.belt().fault = fault;
    }

    /// Requests answered with a picture so far.
    pub fn served(&self) -> u64 {
        self.belt().served
    }

    /// The HTTP routes: `GET /snapshot.jpg`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/snapshot.jpg", get(snapshot))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn snapshot(State(sim): State<CameraSim>, headers: HeaderMap) -> Response {
    if let Some(denied) = check_auth(&sim.shared.auth, &headers) {
        return denied;
    }
    let fault = sim.belt().fault;
    match fault {
        CameraFault::Normal => {}
        CameraFault::Fail(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, "camera fault (simulated)").into_response();
        }
        CameraFault::Hang => std::future::pending::<()>().await,
        CameraFault::Garbage => {
            let junk: Vec<u8> = (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            return ([(header::CONTENT_TYPE, "image/jpeg")], junk).into_response();
        }
        CameraFault::Slow(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
    }
    let waybill = sim.current();
    let at_ms = bondline_devices::contract::unix_ms(SystemTime::now());
    let jpeg = frame(at_ms, waybill.as_deref());
    sim.belt().served += 1;
    ([(header::CONTENT_TYPE, "image/jpeg")], jpeg).into_response()
}

/// `None` when the request may pass; otherwise the 401 to send.
fn check_auth(auth: &SimAuth, headers: &HeaderMap) -> Option<Response> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ok = match auth {
        SimAuth::Open => true,
        SimAuth::Basic { username, password } => given
            .strip_prefix("Basic ")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .is_some_and(|d| d == format!("{username}:{password}").as_bytes()),
        SimAuth::Digest { username, password } => given
            .strip_prefix("Digest ")
            .is_some_and(|d| digest_ok(d, username, password)),
    };
    if ok {
        return None;
    }
    let challenge = match auth {
        SimAuth::Digest { .. } => format!(
            "Digest realm=\"{REALM}\", qop=\"auth\", algorithm=MD5, nonce=\"{:032x}\"",
            rand::random::<u128>()
        ),
        _ => format!("Basic realm=\"{REALM}\""),
    };
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
            "",
        )
            .into_response(),
    )
}

/// Checks an RFC 7616 `qop=auth` MD5 answer for a `GET`.
fn digest_ok(params: &str, username: &str, password: &str) -> bool {
    let mut p = BTreeMap::new();
    for part in params.split(',') {
        if let Some((k, v)) = part.trim().split_once('=') {
            p.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
        }
    }
    let get = |k: &str| p.get(k).map(String::as_str).unwrap_or("");
    if get("username") != username || get("realm") != REALM {
        return false;
    }
    let h = |s: String| hex::encode(Md5::digest(s.as_bytes()));
    let ha1 = h(format!("{username}:{REALM}:{password}"));
    let ha2 = h(format!("GET:{}", get("uri")));
    let expected = h(format!(
        "{ha1}:{}:{}:{}:{}:{ha2}",
        get("nonce"),
        get("nc"),
        get("cnonce"),
        get("qop")
    ));
    get("response") == expected
}

/// The stamp text of a frame: what is drawn on it and put in its comment segment.
pub fn stamp(at_ms: u64, waybill: Option<&str>) -> String {
    format!("at_ms={at_ms} waybill={}", waybill.unwrap_or("-"))
}

/// One frame at `at_ms` showing `waybill` (or an empty belt), as JPEG bytes with the stamp
/// both drawn and in a comment segment.
pub fn frame(at_ms: u64, waybill: Option<&str>) -> Vec<u8> {
    let shift = (at_ms / 10) as u32;
    let mut img = RgbImage::from_fn(WIDTH, HEIGHT, |x, y| {
        // Belt slats that move with time, so successive frames differ.
        let slat = ((x + shift) / 16) % 2 == 0;
        let v = if slat { 70 } else { 90 } + (y / 8) as u8;
        Rgb([v, v, v + 10])
    });
    if waybill.is_some() {
        for y in 30..HEIGHT - 10 {
            for x in 60..WIDTH - 60 {
                img.put_pixel(x, y, Rgb([176, 136, 88]));
            }
        }
    }
    let secs = at_ms / 1000;
    let time = format!(
        "{:02}:{:02}:{:02}.{:03}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        at_ms % 1000
    );
    draw_text(&mut img, 4, 4, &time, 3);
    draw_text(&mut img, 4, 60, waybill.unwrap_or("NO PARCEL"), 3);
    let mut jpeg = Vec::new();
    let encoded = JpegEncoder::new_with_quality(&mut Cursor::new(&mut jpeg), 80).write_image(
        img.as_raw(),
        WIDTH,
        HEIGHT,
        ExtendedColorType::Rgb8,
    );
    if encoded.is_err() {
        return Vec::new();
    }
    with_comment(&jpeg, &stamp(at_ms, waybill))
}

/// `jpeg` with a comment segment holding `text` right after the start-of-image marker.
pub fn with_comment(jpeg: &[u8], text: &str) -> Vec<u8> {
    let text = &text.as_bytes()[..text.len().min(65_000)];
    let mut out = Vec::with_capacity(jpeg.len() + text.len() + 4);
    out.extend_from_slice(jpeg.get(..2).unwrap_or(&[]));
    out.extend_from_slice(&[0xFF, 0xFE]);
    out.extend_from_slice(&((text.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(text);
    out.extend_from_slice(jpeg.get(2..).unwrap_or(&[]));
    out
}

/// The text of the first comment segment of a JPEG, if it has one before its image data.
pub fn stamp_of(jpeg: &[u8]) -> Option<String> {
    let mut i = 2;
    while i + 4 <= jpeg.len() && jpeg[i] == 0xFF {
        let marker = jpeg[i + 1];
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        if marker == 0xFE {
            let body = jpeg.get(i + 4..i + 2 + len)?;
            return Some(String::from_utf8_lossy(body).into_owned());
        }
        if marker == 0xDA {
            return None;
        }
        i += 2 + len;
    }
    None
}

/// The waybill named in a frame's stamp (`None` for an empty belt or no stamp).
pub fn waybill_of(jpeg: &[u8]) -> Option<String> {
    let s = stamp_of(jpeg)?;
    let w = s.split_once("waybill=")?.1.split_whitespace().next()?;
    (w != "-").then(|| w.to_string())
}

/// 3x5 glyphs, one row of three bits per byte (high bit left); unknown characters are blank.
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        ':' => [0, 2, 0, 2, 0],
        '-' => [0, 0, 7, 0, 0],
        '.' => [0, 0, 0, 0, 2],
        '_' => [0, 0, 0, 0, 7],
        '/' => [1, 1, 2, 4, 4],
        _ => [0; 5],
    }
}

/// Draws `text` in white at `(x, y)`, each font pixel `scale` pixels wide; clipped.
fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32) {
    for (i, c) in text.chars().enumerate() {
        let gx = x + i as u32 * 4 * scale;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..3u32 {
                if bits & (4 >> col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (gx + col * scale + dx, y + row as u32 * scale + dy);
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, Rgb([250, 250, 250]));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_a_jpeg_that_names_its_parcel() {
        let f = frame(1_795_721_462_091, Some("BL000042"));
        let img = image::load_from_memory(&f).expect("decodes");
        assert_eq!((img.width(), img.height()), (WIDTH, HEIGHT));
        assert_eq!(
            stamp_of(&f).as_deref(),
            Some("at_ms=1795721462091 waybill=BL000042")
        );
        assert_eq!(waybill_of(&f).as_deref(), Some("BL000042"));
        assert_eq!(waybill_of(&frame(5, None)), None);
        assert_eq!(stamp_of(b"\xFF\xD8garbage"), None);
        assert_eq!(stamp_of(b""), None);
    }

    #[test]
    fn the_latest_arrival_is_under_the_camera() {
        let sim = CameraSim::new(SimAuth::Open);
        assert_eq!(sim.current(), None);
        sim.set_current(Some("A".into()));
        sim.enter(Some("B".into()), Instant::now() + Duration::from_secs(60));
        assert_eq!(sim.current().as_deref(), Some("A"));
        sim.enter(Some("C".into()), Instant::now());
        assert_eq!(sim.current().as_deref(), Some("C"));
    }

    #[test]
    fn a_digest_answer_is_checked() {
        let (user, pw) = ("op", "pw");
        let h = |s: String| hex::encode(Md5::digest(s.as_bytes()));
        let ha1 = h(format!("{user}:{REALM}:{pw}"));
        let ha2 = h("GET:/snapshot.jpg".to_string());
        let resp = h(format!("{ha1}:n1:00000001:c1:auth:{ha2}"));
        let header = format!("username=\"op\", realm=\"{REALM}\", nonce=\"n1\", uri=\"/snapshot.jpg\", qop=auth, nc=00000001, cnonce=\"c1\", response=\"{resp}\"");
        assert!(digest_ok(&header, user, pw));
        assert!(!digest_ok(&header, user, "other"));
    }
}
