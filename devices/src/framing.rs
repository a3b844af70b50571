//! Barcode-scanner framing: turning a byte stream into reads, no-reads and rejects.
//!
//! Scanners send each read as `prefix payload suffix` (for example STX..ETX, or ..CR LF).
//! The decoder is a pure state machine over bytes, so it is tested without a serial port and
//! fed identically from serial and TCP. Line noise, frames with bytes a waybill cannot hold and
//! frames longer than the profile allows are reported as rejects and skipped; the decoder then
//! resynchronises on the next prefix (or, without a prefix, after the next suffix).

use serde::Deserialize;

/// Validated framing of one scanner model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannerFraming {
    pub prefix: Vec<u8>,
    pub suffix: Vec<u8>,
    /// The payload a scanner sends when it saw a parcel but read no code.
    pub no_read: String,
    pub min_len: usize,
    pub max_len: usize,
    /// Set for a scanning station with a scale (dimension-weight-scan): each read is
    /// `waybill SEP weight`.
    pub weight: Option<WeightField>,
}

/// How a weighing station appends the weight to the waybill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightField {
    pub separator: u8,
    pub unit: WeightUnit,
}

/// The unit of the weight field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightUnit {
    /// Whole grams: `1234`.
    G,
    /// Kilograms with up to three decimals: `1.234`.
    Kg,
}

/// Heaviest reading accepted, grams; anything above is line noise, not a parcel.
pub const MAX_WEIGHT_G: u32 = 1_000_000;

/// Longest weight field: `1000.000`.
const WEIGHT_FIELD_MAX: usize = 8;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScannerFraming {
    #[serde(default)]
    prefix: String,
    suffix: String,
    no_read: String,
    #[serde(default = "default_min_len")]
    min_len: usize,
    #[serde(default = "default_max_len")]
    max_len: usize,
    #[serde(default)]
    weight_separator: Option<String>,
    #[serde(default)]
    weight_unit: Option<WeightUnit>,
}

fn default_min_len() -> usize {
    4
}
fn default_max_len() -> usize {
    40
}

impl RawScannerFraming {
    pub(crate) fn validate(self) -> Result<ScannerFraming, (&'static str, String)> {
        if !self.prefix.is_ascii() {
            return Err(("prefix", "must be ASCII".into()));
        }
        if self.suffix.is_empty() || !self.suffix.is_ascii() {
            return Err(("suffix", "must be a non-empty ASCII string".into()));
        }
        if self.no_read.is_empty() {
            return Err(("no_read", "must not be empty".into()));
        }
        if self.min_len == 0 || self.min_len > self.max_len {
            return Err(("min_len", "must be at least 1 and at most max_len".into()));
        }
        if self.max_len > crate::contract::WAYBILL_MAX_LEN {
            return Err((
                "max_len",
                format!("must be at most {}", crate::contract::WAYBILL_MAX_LEN),
            ));
        }
        let weight = match (self.weight_separator, self.weight_unit) {
            (None, None) => None,
            (Some(sep), Some(unit)) => {
                let b = sep.as_bytes();
                if b.len() != 1
                    || !b[0].is_ascii_punctuation()
                    || b[0] == b'-'
                    || b[0] == b'_'
                    || b[0] == b'.'
                    || self.suffix.as_bytes().contains(&b[0])
                    || self.prefix.as_bytes().contains(&b[0])
                {
                    return Err((
                        "weight_separator",
                        "must be one ASCII punctuation character other than - _ . and not part of the prefix or suffix".into(),
                    ));
                }
                Some(WeightField {
                    separator: b[0],
                    unit,
                })
            }
            (Some(_), None) => {
                return Err((
                    "weight_unit",
                    "give \"g\" or \"kg\" with weight_separator".into(),
                ))
            }
            (None, Some(_)) => return Err(("weight_separator", "needed with weight_unit".into())),
        };
        Ok(ScannerFraming {
            prefix: self.prefix.into_bytes(),
            suffix: self.suffix.into_bytes(),
            no_read: self.no_read,
            min_len: self.min_len,
            max_len: self.max_len,
            weight,
        })
    }
}

impl ScannerFraming {
    /// Wraps a payload in this framing, as a scanner would send it.
    pub fn encode(&self, payload: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + payload.len() + self.suffix.len());
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(payload.as_bytes());
        out.extend_from_slice(&self.suffix);
        out
    }

    /// The longest payload the decoder accepts before it calls a frame over-long.
    fn payload_limit(&self) -> usize {
        let weight = if self.weight.is_some() {
            1 + WEIGHT_FIELD_MAX
        } else {
            0
        };
        (self.max_len + weight).max(self.no_read.len() + weight)
    }

    /// The payload a weighing station sends for `waybill` weighing `weight_g` grams.
    pub fn read_payload(&self, waybill: &str, weight_g: Option<u32>) -> String {
        match (self.weight, weight_g) {
            (Some(f), Some(g)) => {
                let sep = f.separator as char;
                match f.unit {
                    WeightUnit::G => format!("{waybill}{sep}{g}"),
                    WeightUnit::Kg => format!("{waybill}{sep}{}.{:03}", g / 1000, g % 1000),
                }
            }
            (Some(f), None) => format!("{waybill}{}", f.separator as char),
            (None, _) => waybill.to_string(),
        }
    }
}

/// What the decoder made of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A waybill number was read.
    Read(String),
    /// A weighing station read a waybill number and weighed the parcel (`None`: the scale
    /// gave no reading).
    Weighed(String, Option<u32>),
    /// The scanner saw a parcel but could not read its code.
    NoRead,
    /// Bytes that are not a usable frame; skipped.
    Reject(Reject),
}

/// Why bytes were rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// Bytes outside any frame (noise before a prefix).
    Noise { bytes: usize },
    /// A frame that ran past the profile's `max_len` (plus the suffix) without ending. A frame
    /// that does end, but whose payload is longer than `max_len`, is `Malformed`.
    TooLong,
    /// A frame whose payload is not a plausible waybill (bad bytes or length).
    Malformed { reason: &'static str },
}

/// Incremental frame decoder. Feed it whatever the transport delivers; it keeps partial
/// frames between calls.
#[derive(Debug)]
pub struct FrameDecoder {
    framing: ScannerFraming,
    buf: Vec<u8>,
    /// True while inside a frame (after a prefix, or always when there is no prefix).
    in_frame: bool,
    /// True after an over-long frame, until the decoder has resynchronised.
    discarding: bool,
    noise: usize,
}

impl FrameDecoder {
    pub fn new(framing: ScannerFraming) -> FrameDecoder {
        let in_frame = framing.prefix.is_empty();
        FrameDecoder {
            framing,
            buf: Vec::with_capacity(64),
            in_frame,
            discarding: false,
            noise: 0,
        }
    }

    /// Decodes `bytes`, appending every complete frame to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Frame>) {
        for &b in bytes {
            self.push_byte(b, out);
        }
    }

    fn push_byte(&mut self, b: u8, out: &mut Vec<Frame>) {
        let prefix = &self.framing.prefix;
        let suffix = &self.framing.suffix;
        if !self.in_frame {
            // Hunting for the prefix; everything else is noise.
            self.buf.push(b);
            if self.buf.ends_with(prefix) {
                let noise = self.noise + self.buf.len() - prefix.len();
                if noise > 0 && !self.discarding {
                    out.push(Frame::Reject(Reject::Noise { bytes: noise }));
                }
                self.noise = 0;
                self.discarding = false;
                self.buf.clear();
                self.in_frame = true;
            } else if self.buf.len() >= prefix.len() {
                // Keep only what could still begin a prefix.
                let drop = self.buf.len() + 1 - prefix.len();
                self.noise += drop;
                self.buf.drain(..drop);
            }
            return;
        }
        self.buf.push(b);
        if self.buf.ends_with(suffix) {
            let payload_len = self.buf.len() - suffix.len();
            if self.discarding {
                // End of an over-long frame that was already reported.
                self.discarding = false;
            } else {
                out.push(self.classify(&self.buf[..payload_len]));
            }
            self.buf.clear();
            self.in_frame = prefix.is_empty();
            return;
        }
        if !prefix.is_empty() && self.buf.ends_with(prefix) {
            // A new prefix inside a frame: the previous frame was cut off. Start again. This
            // comes before the over-long check: the byte that would make a frame over-long may
            // be the one that completes the next frame's prefix, and that frame must not be lost.
            out.push(Frame::Reject(Reject::Malformed {
                reason: "frame cut off by a new prefix",
            }));
            self.buf.clear();
            return;
        }
        if !self.discarding && self.buf.len() > self.framing.payload_limit() + suffix.len() {
            out.push(Frame::Reject(Reject::TooLong));
            // Keep the tail that may still begin the next prefix (or, without a prefix, the
            // suffix that ends the bad frame): a multi-byte prefix or suffix can straddle the
            // byte that made the frame over-long.
            let marker = if prefix.is_empty() { suffix } else { prefix };
            let keep = (marker.len() - 1).min(self.buf.len());
            let drop = self.buf.len() - keep;
            self.buf.drain(..drop);
            // Without a prefix there is nothing to hunt for: drop bytes until the next suffix
            // ends the bad frame. With one, hunt for the next prefix.
            self.in_frame = prefix.is_empty();
            self.discarding = true;
            return;
        }
        if self.discarding && self.buf.len() > suffix.len() {
            // Only the tail that could still become a suffix matters while discarding.
            let drop = self.buf.len() - suffix.len();
            self.buf.drain(..drop);
        }
    }

    fn classify(&self, payload: &[u8]) -> Frame {
        let Some(field) = self.framing.weight else {
            return self.classify_code(payload);
        };
        let (code, weight) = match payload.iter().position(|&b| b == field.separator) {
            Some(i) => (&payload[..i], &payload[i + 1..]),
            None => (payload, &[][..]),
        };
        let weight_g = match parse_weight(weight, field.unit) {
            Ok(w) => w,
            Err(reason) => return Frame::Reject(Reject::Malformed { reason }),
        };
        match self.classify_code(code) {
            Frame::Read(w) => Frame::Weighed(w, weight_g),
            other => other,
        }
    }

    fn classify_code(&self, payload: &[u8]) -> Frame {
        if payload == self.framing.no_read.as_bytes() {
            return Frame::NoRead;
        }
        if payload.len() < self.framing.min_len || payload.len() > self.framing.max_len {
            return Frame::Reject(Reject::Malformed {
                reason: "length outside the profile's bounds",
            });
        }
        if !crate::contract::is_valid_waybill(payload) {
            return Frame::Reject(Reject::Malformed {
                reason: "byte outside A-Z a-z 0-9 - _",
            });
        }
        // All bytes are ASCII, checked above.
        Frame::Read(String::from_utf8_lossy(payload).into_owned())
    }
}

/// Parses a weight field: empty is no reading; anything but digits (and one decimal point
/// for kilograms, up to three decimals) or a weight over [`MAX_WEIGHT_G`] is malformed.
fn parse_weight(field: &[u8], unit: WeightUnit) -> Result<Option<u32>, &'static str> {
    if field.is_empty() {
        return Ok(None);
    }
    let bad = "weight field is not a number in the profile's unit";
    let text = std::str::from_utf8(field).map_err(|_| bad)?;
    let grams: u64 = match unit {
        WeightUnit::G => {
            if !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 7 {
                return Err(bad);
            }
            text.parse().map_err(|_| bad)?
        }
        WeightUnit::Kg => {
            let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
            if whole.is_empty()
                || whole.len() > 4
                || frac.len() > 3
                || !whole
                    .bytes()
                    .chain(frac.bytes())
                    .all(|b| b.is_ascii_digit())
            {
                return Err(bad);
            }
            let whole: u64 = whole.parse().map_err(|_| bad)?;
            let frac: u64 = format!("{frac:0<3}").parse().map_err(|_| bad)?;
            whole * 1000 + frac
        }
    };
    if grams > u64::from(MAX_WEIGHT_G) {
        return Err("weight over 1000 kg");
    }
    Ok(Some(grams as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stx() -> ScannerFraming {
        ScannerFraming {
            prefix: vec![2],
            suffix: vec![3],
            no_read: "NOREAD".into(),
            min_len: 6,
            max_len: 20,
            weight: None,
        }
    }

    fn crlf() -> ScannerFraming {
        ScannerFraming {
            prefix: vec![],
            suffix: b"\r\n".to_vec(),
            no_read: "?".into(),
            min_len: 6,
            max_len: 20,
            weight: None,
        }
    }

    fn decode(f: ScannerFraming, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut d = FrameDecoder::new(f);
        let mut out = Vec::new();
        for c in chunks {
            d.push(c, &mut out);
        }
        out
    }

    #[test]
    fn reads_across_chunk_boundaries() {
        let out = decode(stx(), &[b"\x02BL00", b"0001\x03\x02BL000002\x03"]);
        assert_eq!(
            out,
            vec![
                Frame::Read("BL000001".into()),
                Frame::Read("BL000002".into())
            ]
        );
    }

    #[test]
    fn no_read_token() {
        assert_eq!(decode(stx(), &[b"\x02NOREAD\x03"]), vec![Frame::NoRead]);
        assert_eq!(decode(crlf(), &[b"?\r\n"]), vec![Frame::NoRead]);
    }

    #[test]
    fn noise_before_prefix_is_reported_and_skipped() {
        let out = decode(stx(), &[b"zz\xff\x02BL000001\x03"]);
        assert_eq!(
            out,
            vec![
                Frame::Reject(Reject::Noise { bytes: 3 }),
                Frame::Read("BL000001".into())
            ]
        );
    }

    #[test]
    fn over_long_frame_is_rejected_once_then_resyncs() {
        let long = [b'A'; 100];
        let out = decode(stx(), &[b"\x02", &long, b"\x03\x02BL000003\x03"]);
        assert_eq!(
            out,
            vec![
                Frame::Reject(Reject::TooLong),
                Frame::Read("BL000003".into())
            ]
        );
        let out = decode(crlf(), &[&long, b"\r\nBL000004\r\n"]);
        assert_eq!(
            out,
            vec![
                Frame::Reject(Reject::TooLong),
                Frame::Read("BL000004".into())
            ]
        );
    }

    #[test]
    fn bad_bytes_and_short_payloads_are_malformed() {
        let out = decode(crlf(), &[b"BL 0001\r\nAB\r\nBL\xc3\xa90001\r\n"]);
        assert_eq!(out.len(), 3);
        assert!(out
            .iter()
            .all(|f| matches!(f, Frame::Reject(Reject::Malformed { .. }))));
    }

    #[test]
    fn cut_frame_restarts_on_new_prefix() {
        let out = decode(stx(), &[b"\x02BL00\x02BL000005\x03"]);
        assert_eq!(
            out,
            vec![
                Frame::Reject(Reject::Malformed {
                    reason: "frame cut off by a new prefix"
                }),
                Frame::Read("BL000005".into())
            ]
        );
    }

    #[test]
    fn prefix_that_would_make_a_frame_over_long_starts_the_next_frame() {
        // Garbage leaves a frame open with exactly max_len + suffix (41) bytes; the next
        // valid frame's STX is the 42nd byte. It used to trip the over-long check and the
        // valid frame was lost.
        let framing = crate::Profiles::builtin()
            .get("scanner-stx-etx")
            .unwrap()
            .scanner()
            .unwrap()
            .clone();
        let mut garbage = b"\x02".to_vec();
        garbage.extend([b'G'; 41]);
        let out = decode(framing, &[&garbage, b"\x02BL0001234567\x03"]);
        assert_eq!(
            out,
            vec![
                Frame::Reject(Reject::Malformed {
                    reason: "frame cut off by a new prefix"
                }),
                Frame::Read("BL0001234567".into())
            ]
        );
    }

    #[test]
    fn suffix_straddling_the_over_long_byte_ends_the_bad_frame() {
        // Without a prefix: the CR of a CR LF is the byte that makes the frame over-long. The
        // LF must still end the bad frame, or the next read is glued onto it and lost.
        let mut long = vec![b'A'; 22];
        long.push(b'\r');
        let out = decode(crlf(), &[&long, b"\nBL000004\r\n"]);
        assert_eq!(
            out,
            vec![
                Frame::Reject(Reject::TooLong),
                Frame::Read("BL000004".into())
            ]
        );
    }

    #[test]
    fn encode_round_trips() {
        for f in [stx(), crlf()] {
            let bytes = f.encode("WB123456");
            assert_eq!(decode(f, &[&bytes]), vec![Frame::Read("WB123456".into())]);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_buffer_stays_bounded() {
        // A cheap deterministic sweep; the fuzz target covers this more deeply.
        let mut d = FrameDecoder::new(stx());
        let mut out = Vec::new();
        let mut x: u32 = 12345;
        for _ in 0..200_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            d.push(&[(x >> 16) as u8], &mut out);
            assert!(d.buf.len() <= 64);
        }
    }

    #[test]
    fn weighing_stations_append_the_weight() {
        let mut f = crlf();
        f.weight = Some(WeightField {
            separator: b',',
            unit: WeightUnit::Kg,
        });
        let out = decode(
            f.clone(),
            &[b"BL000001,1.234\r\nBL000002,\r\nBL000003\r\nBL000004,12\r\nBL000005,1.2.3\r\nBL000006,2000\r\n?,0.5\r\n"],
        );
        assert_eq!(
            out,
            vec![
                Frame::Weighed("BL000001".into(), Some(1234)),
                Frame::Weighed("BL000002".into(), None),
                Frame::Weighed("BL000003".into(), None),
                Frame::Weighed("BL000004".into(), Some(12_000)),
                Frame::Reject(Reject::Malformed {
                    reason: "weight field is not a number in the profile's unit"
                }),
                Frame::Reject(Reject::Malformed {
                    reason: "weight over 1000 kg"
                }),
                Frame::NoRead,
            ]
        );
        assert_eq!(f.read_payload("BL1", Some(1050)), "BL1,1.050");
        f.weight = Some(WeightField {
            separator: b';',
            unit: WeightUnit::G,
        });
        assert_eq!(f.read_payload("BL1", Some(1050)), "BL1;1050");
        let out = decode(f, &[b"BL000001;1050\r\nBL000002;1.5\r\n"]);
        assert_eq!(out[0], Frame::Weighed("BL000001".into(), Some(1050)));
        assert!(matches!(out[1], Frame::Reject(_)));
    }
}
