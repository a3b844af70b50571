//! A camera's digest challenge, answered as `camera::fetch` answers it: the
//! `WWW-Authenticate` header as text (`HeaderValue::to_str`, visible ASCII only), parsed by
//! `digest_auth::parse`, answered with the configured user and password for the snapshot
//! URL's path, turned into the `Authorization` header. A camera may send any challenge;
//! none may panic the gateway.
//!
//! `fetch.rs` has no pure function of its own for this (the steps sit inside the async
//! exchange), so the target repeats its four calls; keep them in step with `exchange`.
//!
//! Input: `challenge \0 username \0 password \0 path` (missing parts empty; the path
//! defaults to `/`).
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == 0);
    let challenge = parts.next().unwrap_or_default();
    let username = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let password = String::from_utf8_lossy(parts.next().unwrap_or_default());
    // The path comes from a parsed `Uri`: visible ASCII, starting with `/`.
    let path = match parts.next().map(std::str::from_utf8) {
        Some(Ok(p)) if p.starts_with('/') && p.bytes().all(|b| b.is_ascii_graphic()) => p,
        _ => "/",
    };
    // What hyper hands the exchange: only a header value that is visible ASCII is text.
    let Ok(value) = HeaderValue::from_bytes(challenge) else {
        return;
    };
    let Ok(challenge) = value.to_str() else {
        return;
    };
    let Ok(mut prompt) = digest_auth::parse(challenge) else {
        return;
    };
    let ctx = digest_auth::AuthContext::new(username.as_ref(), password.as_ref(), path);
    if let Ok(answer) = prompt.respond(&ctx) {
        // The request builder refuses a header it cannot send: an error, not a panic.
        let _ = HeaderValue::from_str(&answer.to_header_string());
    }
});
