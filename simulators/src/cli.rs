//! What the simulator binaries share: logging setup, profile lookup and the stop signal.
//!
//! Kept in the library so each `main` stays a page of argument handling, and so a bad
//! configuration exits the same way everywhere: a message naming the problem and the
//! alternatives, and exit status 64 (EX_USAGE), like the daemon.

use std::path::Path;

use bondline_devices::{Profile, Profiles};

use crate::plan::Mix;

/// The parcel mixes a simulator binary can run; scanner-sim and platform-sim must be given
/// the same one (and the same seed) to agree on every parcel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MixArg {
    /// Releases, inspections, holds, undeclared parcels, no-reads and line noise: every path
    /// of the built-in rule set.
    Default,
    /// The default paths plus a parcel for every rule of deploy/rules-demo.toml (unverified
    /// identity, suspended enterprise, overweight, over the annual limit, frequent buyers).
    EveryRule,
}

impl MixArg {
    pub fn mix(self) -> Mix {
        match self {
            MixArg::Default => Mix::default(),
            MixArg::EveryRule => Mix::every_rule(),
        }
    }
}

/// Exit status for a configuration the user must fix (BSD `EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), so stdout stays free for reports.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Which kind of profile a binary needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Scanner,
    Plc,
    Xray,
}

/// Looks up profile `name` among the built-ins, or the built-ins plus `dir`. The error text
/// names the problem and lists the profiles of the wanted kind.
pub fn find_profile(name: &str, dir: Option<&Path>, want: Want) -> Result<Profile, String> {
    let set = match dir {
        Some(dir) => Profiles::with_dir(dir).map_err(|e| e.to_string())?,
        None => Profiles::builtin(),
    };
    let fits = |p: &Profile| match want {
        Want::Scanner => p.scanner().is_some(),
        Want::Plc => p.plc().is_some(),
        Want::Xray => p.xray().is_some(),
    };
    let kind = match want {
        Want::Scanner => "scanner",
        Want::Plc => "plc",
        Want::Xray => "xray",
    };
    match set.get(name) {
        Some(p) if fits(p) => Ok(p.clone()),
        found => {
            let names: Vec<&str> = set
                .names()
                .into_iter()
                .filter(|n| set.get(n).is_some_and(fits))
                .collect();
            let problem = match found {
                Some(p) => format!("profile `{name}` is a {} profile", p.kind_name()),
                None => format!("no profile named `{name}`"),
            };
            Err(format!(
                "{problem}; available {kind} profiles: {}",
                names.join(", ")
            ))
        }
    }
}

/// Parses the command line; a usage error exits with [`EXIT_USAGE`] rather than clap's 2, so
/// every configuration mistake looks the same to a supervisor. `--help` and `--version` exit 0.
pub fn parse_args<T: clap::Parser>() -> T {
    T::try_parse().unwrap_or_else(|e| {
        let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
        let _ = e.print();
        std::process::exit(code)
    })
}

/// Prints `msg` and exits with [`EXIT_USAGE`].
pub fn usage_error(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(EXIT_USAGE)
}

/// Completes on Ctrl-C or, on Unix, SIGTERM (how systemd and container runtimes stop us).
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("stopping");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_name_or_kind_lists_alternatives() {
        let err = find_profile("nope", None, Want::Scanner).unwrap_err();
        assert!(
            err.contains("scanner-crlf") && err.contains("scanner-stx-etx"),
            "{err}"
        );
        assert!(!err.contains("sorter-plc"), "{err}");
        let err = find_profile("sorter-plc", None, Want::Scanner).unwrap_err();
        assert!(err.contains("is a plc profile"), "{err}");
        assert!(find_profile("sorter-plc", None, Want::Plc).is_ok());
    }
}
