//! Checks of a valid configuration against the machine it is used on: what the text alone
//! cannot tell. `bondline check-config` and `bondline run` both call them after
//! [`Config::load`](super::Config::load).
//!
//! | Check | `check-config` | `run` |
//! |---|---|---|
//! | `storage.path`, or the nearest existing directory above it, is not a directory | error (64) | error (64) |
//! | `storage.path` (or the directory it would be created in) is not writable | warning | error (64) |
//! | a device's or the broker's host does not resolve now | warning | warning (logged) |
//! | a TLS certificate (broker CA, client, view) expired, not valid yet, or expiring within 30 days | warning | warning (logged) |
//!
//! Why: a regular file at `storage.path` can never become a journal, so it is a
//! configuration error everywhere (before, sled failed at start with exit 1 and systemd's
//! `Restart=on-failure` looped). `check-config` may run as another user than the daemon (an
//! administrator, a packaging step), so "not writable" is only certain at `run`. A host name
//! that does not resolve now may resolve later (DNS not up yet at boot, a device added to
//! the hosts file afterwards), and the device tasks retry, so it is a warning; a host that
//! can never be valid (`scanner 1`, `a..b`) is refused by the parser itself. Certificates are
//! read again at every connection or reload, so one that is about to expire is an operator's
//! task, not a reason to stop the line.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{Config, Transport};

/// A certificate expiring sooner than this is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// How long `check-config` waits for one host to resolve.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// Who asks: see the module's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    CheckConfig,
    Run,
}

/// One thing found, naming the configuration key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub key: String,
    pub reason: String,
}

impl Finding {
    fn error(key: &str, reason: String) -> Finding {
        Finding {
            severity: Severity::Error,
            key: key.into(),
            reason,
        }
    }
    fn warning(key: &str, reason: String) -> Finding {
        Finding {
            severity: Severity::Warning,
            key: key.into(),
            reason,
        }
    }
}

/// The journal directory: a directory, or creatable in one; writable at `run`.
pub fn storage(path: &Path, mode: Mode) -> Option<Finding> {
    const KEY: &str = "storage.path";
    let shown = |p: &Path| super::shown::shown(&p.display().to_string());
    let dir = match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => path.to_path_buf(),
        Ok(_) => {
            return Some(Finding::error(
                KEY,
                format!(
                    "`{}` exists and is not a directory: the journal is a directory; move the file away or name another path",
                    shown(path)
                ),
            ))
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            // Created at start, with its missing parents: the nearest existing ancestor
            // must be a directory the daemon can write.
            match nearest_existing(path) {
                Some((p, true)) => p,
                Some((p, false)) => {
                    return Some(Finding::error(
                        KEY,
                        format!(
                            "`{}` cannot be created: `{}` is not a directory",
                            shown(path),
                            shown(&p)
                        ),
                    ))
                }
                None => return None,
            }
        }
        Err(e) => {
            return Some(Finding::error(
                KEY,
                format!("`{}` cannot be inspected: {e}", shown(path)),
            ))
        }
    };
    let flags = nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK;
    let Err(e) = nix::unistd::access(&dir, flags) else {
        return None;
    };
    let reason = if dir == path {
        format!("`{}` is not writable by this user: {e}", shown(path))
    } else {
        format!(
            "`{}` cannot be created: `{}` is not writable by this user: {e}",
            shown(path),
            shown(&dir)
        )
    };
    Some(match mode {
        Mode::Run => Finding::error(KEY, reason),
        Mode::CheckConfig => Finding::warning(
            KEY,
            format!("{reason} (fine if the daemon runs as another user who can write it)"),
        ),
    })
}

/// The nearest existing path above `path`, and whether it is a directory.
fn nearest_existing(path: &Path) -> Option<(PathBuf, bool)> {
    let mut p = path.parent();
    while let Some(dir) = p {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(m) = std::fs::metadata(dir) {
            return Some((dir.to_path_buf(), m.is_dir()));
        }
        p = dir.parent();
    }
    None
}

/// Every host the configuration connects to: devices over TCP and the broker.
fn hosts(config: &Config) -> Vec<(String, String, u16)> {
    let mut out = Vec::new();
    let mut device = |name: &str, t: &Transport| {
        if let Transport::Tcp { host, port } = t {
            out.push((format!("devices.{name}.tcp"), host.clone(), *port));
        }
    };
    for l in &config.lines {
        device(&l.scanner.name, &l.scanner.transport);
        device(&l.plc.name, &l.plc.transport);
        if let Some((x, _)) = &l.xray {
            device(&x.name, &x.transport);
        }
    }
    out.push((
        "uplink.broker".into(),
        config.uplink.host.clone(),
        config.uplink.port,
    ));
    out.sort();
    out.dedup();
    out
}

/// Hosts that do not resolve now (each resolved at once, in its own thread, waiting at
/// most `timeout` in all). IP literals are not looked up.
pub fn unresolved_hosts(config: &Config, timeout: Duration) -> Vec<Finding> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut asked = 0;
    for (key, host, port) in hosts(config) {
        if host.parse::<std::net::IpAddr>().is_ok() {
            continue;
        }
        asked += 1;
        let tx = tx.clone();
        std::thread::spawn(move || {
            use std::net::ToSocketAddrs;
            let r = (host.as_str(), port)
                .to_socket_addrs()
                .map(|mut a| a.next());
            let _ = tx.send((key, host, r));
        });
    }
    drop(tx);
    let deadline = std::time::Instant::now() + timeout;
    let mut found = Vec::new();
    let mut answered = 0;
    while answered < asked {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok((key, host, r)) = rx.recv_timeout(left) else {
            found.push(Finding::warning(
                "(hosts)",
                format!(
                    "{} host name(s) did not resolve within {} s",
                    asked - answered,
                    timeout.as_secs()
                ),
            ));
            break;
        };
        answered += 1;
        let why = match r {
            Ok(Some(_)) => continue,
            Ok(None) => "it resolves to no address".to_string(),
            Err(e) => e.to_string(),
        };
        found.push(Finding::warning(
            &key,
            format!(
                "host `{}` does not resolve now ({why}); the gateway keeps retrying, but the device stays down until it does",
                super::shown::shown(&host)
            ),
        ));
    }
    found.sort_by(|a, b| a.key.cmp(&b.key));
    found
}

/// Certificates that expired, are not valid yet, or expire within [`EXPIRY_WARNING`] of
/// `now`: the broker's CA and this gateway's client certificate, and the view's.
pub fn certificates(config: &Config, now: SystemTime) -> Vec<Finding> {
    let mut files: Vec<(&str, &Path)> = Vec::new();
    if let Some(t) = &config.uplink.tls {
        files.push(("uplink.tls.ca_file", &t.ca_file));
        if let Some((cert, _)) = &t.client {
            files.push(("uplink.tls.cert_file", cert));
        }
    }
    if let Some(t) = config.view.as_ref().and_then(|v| v.tls.as_ref()) {
        files.push(("view.tls.cert_file", &t.cert_file));
    }
    files
        .into_iter()
        .flat_map(|(key, path)| certificate_file(key, path, now))
        .collect()
}

/// The findings for one PEM file (every certificate in it: a chain, or several CAs).
pub fn certificate_file(key: &str, path: &Path, now: SystemTime) -> Vec<Finding> {
    let certs = match crate::tls::certs(path) {
        Ok(c) => c,
        // Load already refused an unreadable file; nothing to add.
        Err(_) => return Vec::new(),
    };
    let now_s = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let soon_s = now_s + EXPIRY_WARNING.as_secs() as i64;
    let mut out = Vec::new();
    for (i, der) in certs.iter().enumerate() {
        let which = if certs.len() > 1 {
            format!(
                "certificate {} of {} in `{}`",
                i + 1,
                certs.len(),
                path.display()
            )
        } else {
            format!("the certificate in `{}`", path.display())
        };
        let (_, cert) = match x509_parser::parse_x509_certificate(der.as_ref()) {
            Ok(c) => c,
            Err(e) => {
                out.push(Finding::warning(
                    key,
                    format!("{which} cannot be read as X.509: {e}"),
                ));
                continue;
            }
        };
        let subject = cert.subject().to_string();
        let validity = cert.validity();
        let (from, until) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        let day = |t: i64| {
            humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64),
            )
            .to_string()
        };
        let reason = if until < now_s {
            format!("{which} ({subject}) expired on {}", day(until))
        } else if from > now_s {
            format!("{which} ({subject}) is not valid before {}", day(from))
        } else if until < soon_s {
            let days = (until - now_s) / 86_400;
            format!(
                "{which} ({subject}) expires on {}, in {days} day(s): renew it",
                day(until)
            )
        } else {
            continue;
        };
        out.push(Finding::warning(key, reason));
    }
    out
}

#[cfg(test)]
mod tests;
