//! Who may read the view: a bearer token or basic-auth users, both stored as SHA-256 hashes.
//!
//! The presented secret is hashed and the digests are compared in constant time, so the time
//! a refusal takes says nothing about how much of a secret was right. Every configured user
//! is checked, matching or not, for the same reason.

use base64::Engine as _;
use subtle::ConstantTimeEq;

/// What [`gate`] says of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Let it through: the credentials are right, or none are configured.
    Pass,
    /// Refuse with 429: its address failed too often; it may try again after this long.
    Throttled(std::time::Duration),
    /// Refuse with 401 and the server's challenge.
    Refused,
}

/// The one check in front of the staff view and the image upload endpoint: the request's
/// `Authorization` against `credentials`, failed attempts counted per address in
/// `throttle`. Only a presented credential counts: a browser's first request carries none.
pub fn gate(
    credentials: &Credentials,
    throttle: &super::throttle::Throttle,
    request: &axum::extract::Request,
) -> Gate {
    if credentials.is_open() {
        return Gate::Pass;
    }
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let now = std::time::Instant::now();
    let peer = super::peer_ip(request).filter(|_| presented.is_some());
    if let Some(ip) = peer {
        if let super::throttle::Verdict::Throttled(wait) = throttle.check(ip, now) {
            return Gate::Throttled(wait);
        }
    }
    let allowed = credentials.allows(presented);
    if let Some(ip) = peer {
        throttle.record(ip, allowed, now);
    }
    if allowed {
        Gate::Pass
    } else {
        Gate::Refused
    }
}

/// The configured credentials; none at all means the view is open (loopback only, checked
/// at config load).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    token: Option<[u8; 32]>,
    users: Vec<(String, [u8; 32])>,
}

impl Credentials {
    pub fn new(token: Option<[u8; 32]>, users: Vec<(String, [u8; 32])>) -> Credentials {
        Credentials { token, users }
    }

    /// No credentials configured: every request is let in.
    pub fn is_open(&self) -> bool {
        self.token.is_none() && self.users.is_empty()
    }

    /// Whether the basic-auth scheme is offered (browsers then ask for a name and password).
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether a request with this `Authorization` header value may read the view.
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        if self.is_open() {
            return true;
        }
        let Some(value) = authorization else {
            return false;
        };
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            let Some(token) = &self.token else {
                return false;
            };
            return bool::from(crate::journal::sha256(rest.as_bytes()).ct_eq(token));
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
                return false;
            };
            let Some(colon) = decoded.iter().position(|b| *b == b':') else {
                return false;
            };
            let (name, password) = (&decoded[..colon], &decoded[colon + 1..]);
            let presented = crate::journal::sha256(password);
            let mut ok = false;
            for (n, hash) in &self.users {
                let matches = bool::from(presented.ct_eq(hash));
                ok |= matches && n.as_bytes() == name;
            }
            return ok;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials::new(
            Some(crate::journal::sha256(b"scrape-secret")),
            vec![
                ("officer".into(), crate::journal::sha256(b"correct horse")),
                ("lead".into(), crate::journal::sha256(b"battery staple")),
            ],
        )
    }

    fn basic(user_pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    #[test]
    fn open_credentials_let_everyone_in() {
        assert!(Credentials::default().allows(None));
        assert!(Credentials::default().allows(Some("Basic garbage")));
    }

    #[test]
    fn a_bearer_token_is_checked_against_its_hash() {
        let c = creds();
        assert!(c.allows(Some("Bearer scrape-secret")));
        assert!(c.allows(Some("bearer  scrape-secret ")));
        assert!(!c.allows(Some("Bearer scrape-secreT")));
        assert!(!c.allows(Some("Bearer ")));
        assert!(!c.allows(None));
        let no_token = Credentials::new(None, vec![("a".into(), [0; 32])]);
        assert!(!no_token.allows(Some("Bearer anything")));
    }

    #[test]
    fn basic_auth_needs_the_right_user_and_password() {
        let c = creds();
        assert!(c.allows(Some(&basic("officer:correct horse"))));
        assert!(c.allows(Some(&basic("lead:battery staple"))));
        assert!(
            !c.allows(Some(&basic("officer:battery staple"))),
            "another user's password"
        );
        assert!(!c.allows(Some(&basic("nobody:correct horse"))));
        assert!(!c.allows(Some(&basic("officer"))), "no colon");
        assert!(!c.allows(Some("Basic !!!not-base64")));
        assert!(!c.allows(Some("Digest abc")));
        assert!(!c.allows(Some("")));
        // A password may itself contain a colon: only the first one separates.
        let c = Credentials::new(None, vec![("u".into(), crate::journal::sha256(b"a:b"))]);
        assert!(c.allows(Some(&basic("u:a:b"))));
    }
}
