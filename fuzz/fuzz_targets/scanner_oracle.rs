//! The scanner frame decoder against its reference model: for every built-in scanner profile
//! and a few odd framings (multi-byte prefix and suffix, short limits), the frames the real,
//! incremental decoder yields from arbitrary bytes cut into arbitrary reads must be exactly
//! those `test_support::expected_frames` (a naive whole-stream decoder written from the
//! README's table) yields. The `scanner_frames` target only checks that nothing panics and
//! reads are plausible; this one finds frames that are lost or invented.
#![no_main]

use bondline_devices::framing::{FrameDecoder, ScannerFraming};
use bondline_devices::test_support::expected_frames;
use bondline_devices::Profiles;
use libfuzzer_sys::fuzz_target;

fn framings() -> Vec<ScannerFraming> {
    let profiles = Profiles::builtin();
    let mut out: Vec<ScannerFraming> = ["scanner-stx-etx", "scanner-crlf", "dws-stx-etx"]
        .iter()
        .map(|name| profiles.get(name).unwrap().scanner().unwrap().clone())
        .collect();
    let mut odd = out[0].clone();
    odd.prefix = b"\x02\x02".to_vec();
    odd.suffix = b"\x03\r\n".to_vec();
    odd.min_len = 2;
    odd.max_len = 6;
    out.push(odd);
    let mut short = out[1].clone();
    short.min_len = 1;
    short.max_len = 3;
    out.push(short);
    out
}

fuzz_target!(|data: &[u8]| {
    // First byte: the read size; the rest: the stream.
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    for framing in framings() {
        let want = expected_frames(&framing, bytes);
        let mut d = FrameDecoder::new(framing);
        let mut got = Vec::new();
        for chunk in bytes.chunks(usize::from(split % 32).max(1)) {
            d.push(chunk, &mut got);
        }
        assert_eq!(got, want, "decoder and oracle disagree on {bytes:?}");
    }
});
