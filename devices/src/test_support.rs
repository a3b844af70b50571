//! Reference models for tests and fuzz targets (feature `test-support`).
//!
//! [`expected_frames`] is a second scanner decoder, written from the table "How frames are
//! decoded" in `devices/README.md` and nothing else. It is deliberately naive: it sees the
//! whole byte stream at once, finds each prefix and suffix with a plain search and never keeps
//! state between reads, so it can be checked by reading it next to the table. The real
//! [`FrameDecoder`](crate::framing::FrameDecoder) is incremental and bounded; a property test
//! and the `scanner_frames` fuzz target assert that both yield exactly the same frames for any
//! stream cut at any read boundaries. A bug in one is then a disagreement, found by a machine.
//!
//! It is not compiled into the daemon: it is slow (quadratic in the worst case) and only
//! there to say what the right answer is.

use crate::framing::{Frame, Reject, ScannerFraming, WeightUnit, MAX_WEIGHT_G};

/// What a scanner decoder must yield for `stream`, read from start to end.
///
/// The rules, from the README table:
/// - Outside a frame, everything up to the next prefix is noise, reported when that prefix
///   arrives (not after an over-long frame: those bytes were already reported). Without a
///   prefix there is no outside: every byte belongs to a frame.
/// - A frame's content starts after its prefix and ends at the first complete suffix (a
///   frame) or the first complete prefix (the frame is cut off; the new frame starts right
///   there), whichever completes first; the suffix wins a tie.
/// - A frame that has not ended within `limit + 1` bytes of content, where `limit` is
///   max(`max_len`, length of `no_read`) (plus the weight field) plus the suffix length, is
///   over-long, reported once. With a prefix, the next prefix that begins after the bad
///   frame's prefix starts a new frame; without one, the next suffix ends the bad frame.
/// - A partial frame at the end of the stream yields nothing.
pub fn expected_frames(framing: &ScannerFraming, stream: &[u8]) -> Vec<Frame> {
    let prefix = framing.prefix.as_slice();
    let suffix = framing.suffix.as_slice();
    let limit = over_long_limit(framing);
    let mut out = Vec::new();
    // Where the content of the current frame starts, or None while outside a frame.
    let mut frame_start = if prefix.is_empty() { Some(0) } else { None };
    // Outside a frame: where the hunt for the prefix started, and whether to stay quiet about
    // the bytes skipped (after an over-long frame).
    let mut hunt_from = 0;
    let mut quiet = false;
    loop {
        let start = match frame_start {
            Some(start) => start,
            None => {
                let Some(at) = find(stream, prefix, hunt_from) else {
                    return out;
                };
                if at > hunt_from && !quiet {
                    out.push(Frame::Reject(Reject::Noise {
                        bytes: at - hunt_from,
                    }));
                }
                quiet = false;
                at + prefix.len()
            }
        };
        // Exclusive ends of the first suffix and the first prefix inside the content.
        let suffix_end = find(stream, suffix, start).map(|at| at + suffix.len());
        let prefix_end = if prefix.is_empty() {
            None
        } else {
            find(stream, prefix, start).map(|at| at + prefix.len())
        };
        let end = match (suffix_end, prefix_end) {
            (Some(s), Some(p)) if p < s => Some((p, false)),
            (Some(s), _) => Some((s, true)),
            (None, Some(p)) => Some((p, false)),
            (None, None) => None,
        };
        match end {
            Some((end, true)) if end - start <= limit + 1 => {
                out.push(judge(framing, &stream[start..end - suffix.len()]));
                if prefix.is_empty() {
                    frame_start = Some(end);
                } else {
                    frame_start = None;
                    hunt_from = end;
                }
            }
            Some((end, false)) if end - start <= limit + 1 => {
                out.push(Frame::Reject(Reject::Malformed {
                    reason: "frame cut off by a new prefix",
                }));
                frame_start = Some(end);
            }
            _ if stream.len() - start <= limit => return out,
            _ => {
                out.push(Frame::Reject(Reject::TooLong));
                if prefix.is_empty() {
                    // The bad frame ends at the first suffix in it (which is past the limit,
                    // or the frame would have ended normally).
                    let Some(end) = suffix_end else {
                        return out;
                    };
                    frame_start = Some(end);
                } else {
                    frame_start = None;
                    hunt_from = start;
                    quiet = true;
                }
            }
        }
    }
}

/// Bytes of content (payload and suffix) a frame may hold before the next byte, if it ends
/// nothing, makes it over-long.
pub fn over_long_limit(framing: &ScannerFraming) -> usize {
    let weight = if framing.weight.is_some() { 9 } else { 0 };
    framing.max_len.max(framing.no_read.len()) + weight + framing.suffix.len()
}

/// Position of the first occurrence of `needle` in `hay` that starts at or after `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    (from..hay.len()).find(|&i| hay[i..].starts_with(needle))
}

/// The README's classification of one complete payload.
fn judge(framing: &ScannerFraming, payload: &[u8]) -> Frame {
    let (code, weight) = match framing.weight {
        None => (payload, None),
        Some(field) => match payload.iter().position(|&b| b == field.separator) {
            Some(i) => (&payload[..i], Some((&payload[i + 1..], field.unit))),
            None => (payload, Some((&[][..], field.unit))),
        },
    };
    let weight_g = match weight {
        None => None,
        Some((text, unit)) => match weight_grams(text, unit) {
            Ok(g) => Some(g),
            Err(reason) => return Frame::Reject(Reject::Malformed { reason }),
        },
    };
    if code == framing.no_read.as_bytes() {
        return Frame::NoRead;
    }
    if code.len() < framing.min_len || code.len() > framing.max_len {
        return Frame::Reject(Reject::Malformed {
            reason: "length outside the profile's bounds",
        });
    }
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    if !code.iter().all(allowed) {
        return Frame::Reject(Reject::Malformed {
            reason: "byte outside A-Z a-z 0-9 - _",
        });
    }
    let waybill = String::from_utf8(code.to_vec()).expect("checked ASCII above");
    match weight_g {
        None => Frame::Read(waybill),
        Some(g) => Frame::Weighed(waybill, g),
    }
}

/// A weight field: empty is no reading; whole grams (up to 7 digits), or kilograms as 1-4
/// digits with an optional point and up to 3 decimals; at most 1000 kg.
fn weight_grams(text: &[u8], unit: WeightUnit) -> Result<Option<u32>, &'static str> {
    let bad = "weight field is not a number in the profile's unit";
    if text.is_empty() {
        return Ok(None);
    }
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    let value = |s: &[u8]| s.iter().fold(0u64, |v, d| v * 10 + u64::from(d - b'0'));
    let grams = match unit {
        WeightUnit::G if text.len() <= 7 && digits(text) => value(text),
        WeightUnit::G => return Err(bad),
        WeightUnit::Kg => {
            let (whole, frac) = match text.iter().position(|&b| b == b'.') {
                Some(i) => (&text[..i], &text[i + 1..]),
                None => (text, &[][..]),
            };
            if whole.is_empty() || whole.len() > 4 || frac.len() > 3 {
                return Err(bad);
            }
            if !digits(whole) || !digits(frac) {
                return Err(bad);
            }
            value(whole) * 1000 + value(frac) * 10u64.pow(3 - frac.len() as u32)
        }
    };
    if grams > u64::from(MAX_WEIGHT_G) {
        return Err("weight over 1000 kg");
    }
    Ok(Some(grams as u32))
}

#[cfg(test)]
mod tests;
