//! The oracle against the README's table by hand, then the real decoder against the oracle
//! on random streams.

use super::*;
use crate::framing::{FrameDecoder, WeightField};
use crate::Profiles;
use proptest::prelude::*;

fn builtin(name: &str) -> ScannerFraming {
    Profiles::builtin()
        .get(name)
        .unwrap()
        .scanner()
        .unwrap()
        .clone()
}

fn cut() -> Frame {
    Frame::Reject(Reject::Malformed {
        reason: "frame cut off by a new prefix",
    })
}

#[test]
fn oracle_follows_the_readme_table() {
    let stx = builtin("scanner-stx-etx");
    let read = |w: &str| Frame::Read(w.into());
    assert_eq!(
        expected_frames(
            &stx,
            b"zz\x02BL000001\x03\x02NOREAD\x03\x02BL\x02BL000002\x03"
        ),
        vec![
            Frame::Reject(Reject::Noise { bytes: 2 }),
            read("BL000001"),
            Frame::NoRead,
            cut(),
            read("BL000002"),
        ]
    );
    // 41 bytes of content is the limit; the 42nd byte, a prefix, starts the next frame.
    let mut s = b"\x02".to_vec();
    s.extend([b'A'; 41]);
    s.extend(b"\x02BL000003\x03");
    assert_eq!(expected_frames(&stx, &s), vec![cut(), read("BL000003")]);
    // A 42nd byte that is no prefix makes the frame over-long; the bytes up to the next
    // prefix are not noise.
    let mut s = b"\x02".to_vec();
    s.extend([b'A'; 45]);
    s.extend(b"\x03zz\x02BL000004\x03\x02BL0");
    assert_eq!(
        expected_frames(&stx, &s),
        vec![Frame::Reject(Reject::TooLong), read("BL000004")]
    );
    let crlf = builtin("scanner-crlf");
    let mut s = vec![b'A'; 42];
    s.extend(b"\r\nBL000005\r\n?\r\nB L\r\n");
    assert_eq!(
        expected_frames(&crlf, &s),
        vec![
            Frame::Reject(Reject::TooLong),
            read("BL000005"),
            Frame::NoRead,
            Frame::Reject(Reject::Malformed {
                reason: "length outside the profile's bounds"
            }),
        ]
    );
    let dws = builtin("dws-stx-etx");
    assert_eq!(
        expected_frames(
            &dws,
            b"\x02BL000006,1.05\x03\x02BL000007\x03\x02NOREAD,x\x03"
        ),
        vec![
            Frame::Weighed("BL000006".into(), Some(1050)),
            Frame::Weighed("BL000007".into(), None),
            Frame::Reject(Reject::Malformed {
                reason: "weight field is not a number in the profile's unit"
            }),
        ]
    );
}

/// One piece of a generated stream.
#[derive(Debug, Clone)]
enum Piece {
    Valid(String, Option<u32>),
    NoRead,
    Garbage(Vec<u8>),
    Prefix,
    Suffix,
    /// A prefix, then this many bytes more or less than the over-long limit, no suffix.
    OverLong(i8),
    /// A frame left open with exactly the over-long limit of content (the case that lost the
    /// next frame).
    OpenAtLimit,
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        4 => ("[A-Z0-9]{1,14}", proptest::option::of(0u32..1_200_000))
            .prop_map(|(w, g)| Piece::Valid(w, g)),
        1 => Just(Piece::NoRead),
        3 => proptest::collection::vec(
            prop::sample::select(vec![2u8, 3, b'\r', b'\n', b'#', b'A', b'0', b' ', b',', b'.', 0xff]),
            0..20
        )
        .prop_map(Piece::Garbage),
        1 => Just(Piece::Prefix),
        1 => Just(Piece::Suffix),
        1 => (-3i8..=3).prop_map(Piece::OverLong),
        1 => Just(Piece::OpenAtLimit),
    ]
}

/// Framings from the built-in profiles to odd but valid ones: multi-byte prefixes and
/// suffixes, short limits so over-long frames are common, weighing stations.
fn framing() -> impl Strategy<Value = ScannerFraming> {
    let marker = |min| {
        proptest::collection::vec(
            prop::sample::select(vec![2u8, 3, b'\r', b'\n', b'#']),
            min..=3,
        )
    };
    let weight = proptest::option::of(prop_oneof![
        Just(WeightField {
            separator: b',',
            unit: WeightUnit::Kg
        }),
        Just(WeightField {
            separator: b';',
            unit: WeightUnit::G
        }),
    ]);
    (
        marker(0),
        marker(1),
        prop::sample::select(vec!["NOREAD", "?", "NR"]),
        1usize..=6,
        0usize..=10,
        weight,
    )
        .prop_map(
            |(prefix, suffix, no_read, min_len, extra, weight)| ScannerFraming {
                prefix,
                suffix,
                no_read: no_read.into(),
                min_len,
                max_len: min_len + extra,
                weight,
            },
        )
        .boxed()
        .prop_union(
            prop::sample::select(vec!["scanner-stx-etx", "scanner-crlf", "dws-stx-etx"])
                .prop_map(builtin)
                .boxed(),
        )
}

fn render(f: &ScannerFraming, pieces: &[Piece]) -> Vec<u8> {
    let limit = over_long_limit(f);
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Valid(w, g) => {
                let mut w = w.clone();
                w.truncate(f.max_len);
                while w.len() < f.min_len {
                    w.push('7');
                }
                out.extend(f.encode(&f.read_payload(&w, *g)));
            }
            Piece::NoRead => out.extend(f.encode(&f.no_read)),
            Piece::Garbage(g) => out.extend(g),
            Piece::Prefix => out.extend(&f.prefix),
            Piece::Suffix => out.extend(&f.suffix),
            Piece::OverLong(d) => {
                out.extend(&f.prefix);
                // A short limit (one-byte reads, one-byte suffix) can be below the offset:
                // no negative run of bytes.
                let n = limit.saturating_add_signed(*d as isize);
                out.extend(std::iter::repeat_n(b'Z', n));
            }
            Piece::OpenAtLimit => {
                out.extend(&f.prefix);
                out.extend(std::iter::repeat_n(b'Z', limit));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The real decoder yields exactly what the oracle says, however the stream is cut into
    /// reads.
    #[test]
    fn decoder_agrees_with_the_oracle(
        f in framing(),
        pieces in proptest::collection::vec(piece(), 0..24),
        reads in proptest::collection::vec(1usize..=17, 1..8),
    ) {
        let stream = render(&f, &pieces);
        let want = expected_frames(&f, &stream);
        let mut d = FrameDecoder::new(f);
        let mut got = Vec::new();
        let mut rest = stream.as_slice();
        for n in reads.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (read, tail) = rest.split_at((*n).min(rest.len()));
            d.push(read, &mut got);
            rest = tail;
        }
        prop_assert_eq!(got, want);
    }
}
