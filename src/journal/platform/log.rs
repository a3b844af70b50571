//! The platform log's format, pure: what the platform said is kept as an ordered log of
//! messages, each a frame of its kind, its UTC day, its subject and its body, written in
//! *units* (a block of the log's files, [`super::files`], holds one unit).
//!
//! A unit (before its integrity tag): the format byte, then its frames. A frame: kind
//! (`u8`), day (`u32`), the subject's length (`u8`) and the subject (the waybill or
//! enterprise a JSON message is about, outside the JSON so that a unit refused by its
//! integrity check still says which waybills to hold), body length (`u32`), body; integers
//! big-endian. Nothing here touches the disk.

/// The unit format this build writes and reads.
const FORMAT: u8 = 2;
const HEADER: usize = 1;
const FRAME_HEADER: usize = 10;

/// Most bytes of frames in one unit that [`pack`] makes (what the purge carries, what an
/// older build's state is moved in): large enough that a block's header and tag are a
/// small part of it, small enough to be read and checked in one piece.
pub const UNIT_BYTES: usize = 64 * 1024;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A declaration's JSON.
    Declaration = 1,
    /// An instruction's JSON (its id is in it).
    Instruction = 2,
    /// The id of an instruction seen but not kept (a stale one), `id`.
    InstructionId = 3,
    /// An enterprise notice's JSON.
    Notice = 4,
    /// The id of a notice seen but not kept, `id`.
    NoticeId = 5,
    /// A waybill counted in its consumer's history on the frame's day, `waybill`.
    Counted = 6,
    /// A waybill forgotten by the purge, `waybill`: what is left of it before this point
    /// (a parcel counted after its last declaration was stored) is forgotten too.
    Forget = 7,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Declaration,
            2 => Kind::Instruction,
            3 => Kind::InstructionId,
            4 => Kind::Notice,
            5 => Kind::NoticeId,
            6 => Kind::Counted,
            7 => Kind::Forget,
            _ => return None,
        })
    }
}

/// One message of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: Kind,
    /// The UTC day (since 1970) it was stored, or counted for [`Kind::Counted`].
    pub day: u32,
    /// The waybill or enterprise of a JSON message (at most 255 bytes; empty for the other
    /// kinds, whose body is their name, and for a longer name): see [`subject`].
    pub subject: &'a [u8],
    pub body: &'a [u8],
}

impl<'a> Frame<'a> {
    /// A frame of a JSON message about `subject` (kept only if it fits its length byte).
    pub fn about(kind: Kind, day: u32, subject: &'a str, body: &'a [u8]) -> Frame<'a> {
        let subject = if subject.len() <= usize::from(u8::MAX) {
            subject.as_bytes()
        } else {
            &[]
        };
        Frame {
            kind,
            day,
            subject,
            body,
        }
    }

    /// A frame whose body is its name (an id seen, a waybill counted).
    pub fn named(kind: Kind, day: u32, name: &'a [u8]) -> Frame<'a> {
        Frame {
            kind,
            day,
            subject: &[],
            body: name,
        }
    }

    /// Bytes the frame takes in a unit.
    pub fn size(&self) -> usize {
        FRAME_HEADER + self.subject.len() + self.body.len()
    }

    /// Appends the frame's bytes to `out` (see [`encode_raw`]).
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.extend_from_slice(&self.day.to_be_bytes());
        let subject = &self.subject[..self.subject.len().min(usize::from(u8::MAX))];
        out.push(subject.len() as u8);
        out.extend_from_slice(subject);
        out.extend_from_slice(&(self.body.len() as u32).to_be_bytes());
        out.extend_from_slice(self.body);
    }
}

/// A unit of `frames`.
pub fn encode<'a>(frames: impl IntoIterator<Item = Frame<'a>>) -> Vec<u8> {
    let mut out = vec![FORMAT];
    for f in frames {
        f.write(&mut out);
    }
    out
}

/// A unit of frames already written with [`Frame::write`].
pub fn encode_raw(frames: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + frames.len());
    out.push(FORMAT);
    out.extend_from_slice(frames);
    out
}

/// Why a unit could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("platform log unit shorter than its header")]
    Short,
    #[error("platform log unit of format {0}, not one this build reads")]
    Format(u8),
    #[error("platform log frame of unknown kind {0}")]
    Kind(u8),
    #[error("platform log frame cut short")]
    Cut,
}

/// The frames of a unit, in order; the first malformed one ends it with an error.
pub fn frames(unit: &[u8]) -> Result<Frames<'_>, Malformed> {
    match unit.first() {
        None => Err(Malformed::Short),
        Some(&FORMAT) => Ok(Frames {
            rest: &unit[HEADER..],
        }),
        Some(&other) => Err(Malformed::Format(other)),
    }
}

/// Iterator over a unit's frames (see [`frames`]).
pub struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let r = self.rest;
        if r.len() < FRAME_HEADER {
            self.rest = &[];
            return Some(Err(Malformed::Cut));
        }
        let Some(kind) = Kind::from_u8(r[0]) else {
            self.rest = &[];
            return Some(Err(Malformed::Kind(r[0])));
        };
        let day = u32::from_be_bytes(r[1..5].try_into().expect("4 bytes"));
        let s = usize::from(r[5]);
        let parts = r
            .get(6..6 + s)
            .zip(r.get(6 + s..10 + s))
            .and_then(|(subject, len)| {
                let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
                let body = r.get(10 + s..(10 + s).checked_add(len)?)?;
                Some((subject, body))
            });
        let Some((subject, body)) = parts else {
            self.rest = &[];
            return Some(Err(Malformed::Cut));
        };
        self.rest = &r[FRAME_HEADER + s + body.len()..];
        Some(Ok(Frame {
            kind,
            day,
            subject,
            body,
        }))
    }
}

/// Splits `frames` into consecutive units of at most [`UNIT_BYTES`] of frames (a larger
/// frame is a unit of its own).
pub fn pack<'a>(frames: &[Frame<'a>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, f) in frames.iter().enumerate() {
        if i > start && size + f.size() > UNIT_BYTES {
            out.push(encode(frames[start..i].iter().copied()));
            (start, size) = (i, 0);
        }
        size += f.size();
    }
    if start < frames.len() {
        out.push(encode(frames[start..].iter().copied()));
    }
    out
}

/// What a frame is about: the body itself for ids and counted marks; for a JSON message its
/// subject, or for one stored without it the `waybill` (or `enterprise`) field of its JSON.
/// `None` for JSON that does not parse.
pub fn subject(f: &Frame<'_>) -> Option<String> {
    if !f.subject.is_empty() {
        return std::str::from_utf8(f.subject).ok().map(str::to_string);
    }
    #[derive(serde::Deserialize)]
    struct Named {
        #[serde(default)]
        waybill: Option<String>,
        #[serde(default)]
        enterprise: Option<String>,
    }
    match f.kind {
        Kind::InstructionId | Kind::NoticeId | Kind::Counted | Kind::Forget => {
            std::str::from_utf8(f.body).ok().map(str::to_string)
        }
        Kind::Declaration | Kind::Instruction => {
            serde_json::from_slice::<Named>(f.body).ok()?.waybill
        }
        Kind::Notice => serde_json::from_slice::<Named>(f.body).ok()?.enterprise,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = Kind> {
        (1u8..=7).prop_map(|b| Kind::from_u8(b).unwrap())
    }

    proptest! {
        /// Whatever is packed reads back in order, unit after unit, and no unit holding more
        /// than one frame exceeds the unit size.
        #[test]
        fn packed_frames_read_back_in_order(
            msgs in proptest::collection::vec((kind(), 0u32..30_000, proptest::collection::vec(any::<u8>(), 0..3000)), 0..40)
        ) {
            let frames: Vec<Frame> = msgs.iter().map(|(k, d, b)| Frame { kind: *k, day: *d, subject: &b[..b.len().min(9)], body: b }).collect();
            let units = pack(&frames);
            let mut back = Vec::new();
            for u in &units {
                let fs: Vec<Frame> = frames_of(u);
                prop_assert!(fs.len() == 1 || u.len() - HEADER <= UNIT_BYTES);
                back.extend(fs.into_iter().map(|f| (f.kind, f.day, f.subject.to_vec(), f.body.to_vec())));
            }
            let want: Vec<_> = frames.iter().map(|f| (f.kind, f.day, f.subject.to_vec(), f.body.to_vec())).collect();
            prop_assert_eq!(back, want);
        }

        /// A unit cut anywhere, or with any byte changed, reads as an error or as frames,
        /// never a panic.
        #[test]
        fn damaged_units_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..200),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let unit = encode([Frame::named(Kind::Counted, 7, &body), Frame::about(Kind::Notice, 8, "E1", &body)]);
            let cut_at = cut.index(unit.len() + 1);
            let _ = frames(&unit[..cut_at]).map(|f| f.count());
            let mut flipped = unit.clone();
            let i = flip.index(flipped.len());
            flipped[i] ^= 0x5a;
            let _ = frames(&flipped).map(|f| f.count());
        }
    }

    fn frames_of(u: &[u8]) -> Vec<Frame<'_>> {
        frames(u).unwrap().map(Result::unwrap).collect()
    }

    #[test]
    fn a_frame_says_whom_it_is_about() {
        let u = encode([
            Frame {
                kind: Kind::Declaration,
                day: 20_005,
                subject: &[],
                body: br#"{"waybill":"W1"}"#,
            },
            Frame::named(Kind::Counted, 20_001, b"W1"),
            Frame::about(Kind::Instruction, 20_002, "W2", b"garbled"),
        ]);
        let fs = frames_of(&u);
        assert_eq!(subject(&fs[0]).as_deref(), Some("W1"));
        assert_eq!(subject(&fs[1]).as_deref(), Some("W1"));
        assert_eq!(
            subject(&fs[2]).as_deref(),
            Some("W2"),
            "whatever the body says"
        );
        assert_eq!(fs[1].day, 20_001);
        assert!(matches!(frames(&[9; 12]), Err(Malformed::Format(9))));
        assert!(matches!(frames(&[]), Err(Malformed::Short)));
    }
}
