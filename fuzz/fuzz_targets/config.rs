//! The configuration parser on arbitrary text: a bad file is an error naming the key, never a
//! panic; and device profiles likewise.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = bondline::config::Config::parse("fuzz.toml", text) {
        assert!(!e.key.is_empty());
    }
    let _ = bondline_devices::profile::Profile::parse("fuzz", text);
});
