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
}

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
        Ok(ScannerFraming {
            prefix: self.prefix.into_bytes(),
            suffix: self.suffix.into_bytes(),
            no_read: self.no_read,
            min_len: self.min_len,
            max_len: self.max_len,
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
        self.max_len.max(self.no_read.len())
    }
}

/// What the decoder made of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A waybill number was read.
    Read(String),
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
        if !self.discarding && self.buf.len() > self.framing.payload_limit() + suffix.len() {
            out.push(Frame::Reject(Reject::TooLong));
            self.buf.clear();
            if prefix.is_empty() {
                // No prefix to hunt for: drop bytes until the next suffix ends the bad frame.
                self.discarding = true;
            } else {
                self.in_frame = false;
                self.discarding = true;
            }
            return;
        }
        if self.discarding && self.buf.len() > suffix.len() {
            // Only the tail that could still become a suffix matters while discarding.
            let drop = self.buf.len() - suffix.len();
            self.buf.drain(..drop);
        }
        if !prefix.is_empty() && self.buf.ends_with(prefix) {
            // A new prefix inside a frame: the previous frame was cut off. Start again.
            out.push(Frame::Reject(Reject::Malformed {
                reason: "frame cut off by a new prefix",
            }));
            self.buf.clear();
        }
    }

    fn classify(&self, payload: &[u8]) -> Frame {
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
        }
    }

    fn crlf() -> ScannerFraming {
        ScannerFraming {
            prefix: vec![],
            suffix: b"\r\n".to_vec(),
            no_read: "?".into(),
            min_len: 6,
            max_len: 20,
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
}
