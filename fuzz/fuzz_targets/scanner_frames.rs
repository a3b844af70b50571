//! The scanner frame decoder on arbitrary bytes, in arbitrary chunks, for every built-in
//! scanner profile: it must never panic, and every read it yields must be a valid waybill
//! within the profile's bounds.
#![no_main]

use bondline_devices::contract::is_valid_waybill;
use bondline_devices::framing::{Frame, FrameDecoder};
use bondline_devices::Profiles;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let profiles = Profiles::builtin();
    for name in ["scanner-stx-etx", "scanner-crlf", "dws-stx-etx"] {
        let framing = profiles.get(name).unwrap().scanner().unwrap().clone();
        let (min, max) = (framing.min_len, framing.max_len);
        let mut d = FrameDecoder::new(framing);
        let mut out = Vec::new();
        for chunk in bytes.chunks(usize::from(split).max(1)) {
            d.push(chunk, &mut out);
        }
        for f in out {
            if let Frame::Read(w) | Frame::Weighed(w, _) = f {
                assert!(is_valid_waybill(w.as_bytes()), "{w:?}");
                assert!((min..=max).contains(&w.len()), "{w:?}");
            }
        }
    }
});
