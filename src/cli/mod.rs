//! The command line: `run`, `check-config`, `journal`, `explain` and `report`. The demo line
//! and the benches are the lab's (`bondline-lab`), not the daemon's.
//!
//! Exit codes: 0 success; 64 (EX_USAGE) a bad configuration, with the file, the key and the
//! reason on stderr; 65 (EX_DATAERR) the journal store is damaged and `bondline journal
//! salvage` must be run (see [`EXIT_JOURNAL_DAMAGED`]); 1 any other failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::journal::JournalError;
use crate::telemetry::{self, LogFormat};

mod journal;
mod report;

use journal::journal_command;
pub use journal::JournalCommand;
use report::report_command;
pub use report::{ReportCommand, ReportFormat};

/// Exit code for a bad configuration (BSD EX_USAGE), as systemd and operators expect.
pub const EXIT_CONFIG: u8 = 64;
/// Exit code for a bad command-line argument (EX_USAGE, like a bad configuration).
pub const EXIT_USAGE: u8 = 64;
/// Exit code for a journal store whose files are damaged (BSD EX_DATAERR): restarting will
/// not help, `bondline journal salvage` will (the message names the command). The systemd
/// unit does not restart on it.
pub const EXIT_JOURNAL_DAMAGED: u8 = 65;

#[derive(Parser, Debug)]
#[command(
    name = "bondline",
    version,
    about = "Edge controller for customs-supervised X-ray and sorting lines",
    long_about = "bondline reads waybills from barcode scanners, decides each parcel's lane from \
the customs clearance platform's declarations and instructions (failing closed: only a positive, \
timely release decision reaches the release lane), commands the sorter PLC over Modbus, keeps \
every scan record in a local journal and forwards it over MQTT until the platform acknowledges it."
)]
pub struct Cli {
    /// Log format: `auto` is JSON under systemd, text on a terminal.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon with a configuration file (stops cleanly on SIGINT/SIGTERM).
    Run {
        /// The configuration file (see deploy/bondline.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file: exit 0 if it is good, 64 with the file, key and
    /// reason if not. Unknown keys are errors.
    CheckConfig {
        /// The configuration file to check.
        file: PathBuf,
    },
    /// Inspect and maintain the journal: statistics, chain verification, export, replay.
    /// The journal is opened directly, so stop the daemon first (or work on a copy of the
    /// store directory).
    Journal {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Why each parcel of a waybill went where it went, from the journal: the declaration,
    /// every decision with the rules that fired and what they saw, the PLC's dispositions,
    /// alerts, and whether the platform has each record. Stop the daemon first, or use a copy.
    Explain {
        #[command(flatten)]
        store: StoreArgs,
        /// The waybill number.
        waybill: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Reports for customs from the journal (stop the daemon first, or use a copy).
    Report {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: ReportCommand,
    },
}

/// Which journal to open.
#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    /// Configuration file whose `storage.path` names the journal.
    #[arg(long, short, global = true, conflicts_with = "store")]
    pub config: Option<PathBuf>,
    /// The journal directory itself (for example a copy taken from a gateway).
    #[arg(long, global = true)]
    pub store: Option<PathBuf>,
}

/// What `run` checks on the machine before it starts (see [`crate::config::checks`]): a
/// journal path that cannot be used is a configuration error; certificates about to expire
/// are logged; hosts are resolved in the background (a slow DNS does not delay the start)
/// and those that do not resolve are logged.
fn check_before_run(config: &Config) -> Result<(), crate::config::ConfigError> {
    use crate::config::checks::{self, Mode};
    if let Some(f) = checks::storage(&config.storage.path, Mode::Run) {
        return Err(crate::config::ConfigError {
            file: config.source.clone(),
            key: f.key,
            reason: f.reason,
        });
    }
    // The integrity key, if there is one yet (the daemon creates it at its first start, and
    // adopts the store's untagged state then): refused if others can read it.
    let key_file = &config.storage.integrity_key_file;
    if let Err(e) = key_file
        .exists()
        .then(|| crate::journal::integrity::IntegrityKey::load(key_file))
        .transpose()
    {
        return Err(crate::config::ConfigError {
            file: config.source.clone(),
            key: "storage.integrity_key_file".into(),
            reason: e.to_string(),
        });
    }
    for f in checks::certificates(config, std::time::SystemTime::now()) {
        tracing::warn!(key = %f.key, "{}", f.reason);
    }
    let c = config.clone();
    std::thread::spawn(move || {
        for f in checks::unresolved_hosts(&c, Duration::from_secs(10)) {
            tracing::warn!(key = %f.key, "{}", f.reason);
        }
    });
    Ok(())
}

/// Entry point of the `bondline` binary.
pub fn main() -> ExitCode {
    crate::memory::limit_arenas();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                use crate::config::checks::{self, Mode, Severity};
                let mut findings: Vec<_> = checks::storage(&c.storage.path, Mode::CheckConfig)
                    .into_iter()
                    .collect();
                findings.extend(checks::unresolved_hosts(&c, checks::RESOLVE_TIMEOUT));
                findings.extend(checks::certificates(&c, std::time::SystemTime::now()));
                let shown = |f: &checks::Finding| crate::config::ConfigError {
                    file: c.source.clone(),
                    key: f.key.clone(),
                    reason: f.reason.clone(),
                };
                let errors: Vec<_> = findings
                    .iter()
                    .filter(|f| f.severity == Severity::Error)
                    .collect();
                if !errors.is_empty() {
                    for f in errors {
                        eprintln!("{}", shown(f));
                    }
                    return ExitCode::from(EXIT_CONFIG);
                }
                for f in &findings {
                    println!("warning: {}", shown(f));
                }
                println!(
                    "{}: ok ({} line(s), gateway {})",
                    file.display(),
                    c.lines.len(),
                    c.gateway_id
                );
                if c.trust.allow_unsigned {
                    println!("warning: [trust] allow_unsigned = true: unsigned platform messages steer the lanes; for a demo line only");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run { config } => {
            // Logging first: loading the configuration may warn.
            let _log = telemetry::init(cli.log_format, "info");
            let config_file = config.clone();
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            if let Err(e) = check_before_run(&config) {
                eprintln!("{e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            if config.trust.allow_unsigned {
                tracing::warn!("[trust] allow_unsigned = true: platform messages are accepted without a signature, so anyone who can publish to the broker can steer the lanes; for a demo line only");
            }
            // Before any task opens a socket: see crate::fds.
            crate::fds::raise_soft_limit();
            let store = config.storage.path.clone();
            let code = run_in_runtime(|| async move {
                let shutdown = crate::shutdown::on_signals();
                let app = {
                    let _extension = crate::service::Extension::start("starting");
                    crate::app::App::start(config, shutdown.clone()).await?
                };
                crate::service::ready(&format!(
                    "running, rule set {}",
                    app.policy().current().version
                ));
                {
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        shutdown.cancelled().await;
                        crate::service::stopping();
                    });
                }
                #[cfg(unix)]
                {
                    // SIGHUP reloads the rule file and the broker's TLS material.
                    let reloader = app.reloader();
                    let mut hup =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
                    tokio::spawn(async move {
                        loop {
                            tokio::select! {
                                _ = shutdown.cancelled() => return,
                                s = hup.recv() => if s.is_none() { return },
                            }
                            crate::service::reloading();
                            let version = reloader.reload();
                            crate::service::reloaded(&format!("running, rule set {version}"));
                        }
                    });
                }
                app.wait().await?;
                Ok(())
            });
            match code {
                Err(e) if journal_damaged(&e) => {
                    eprintln!(
                        "bondline: {e:#}\nthe journal store {} is damaged and the daemon will not start on it; \
stop here and run: bondline journal salvage --config {}\n(it moves the damaged store aside, keeps \
every record and platform state it can still read and starts a fresh store; see README, Operations)",
                        store.display(),
                        config_file.display()
                    );
                    ExitCode::from(EXIT_JOURNAL_DAMAGED)
                }
                Err(e)
                    if matches!(
                        e.downcast_ref::<crate::app::StartError>(),
                        Some(crate::app::StartError::IntegrityKey(_))
                    ) =>
                {
                    eprintln!("{}: {e}", config_file.display());
                    ExitCode::from(EXIT_CONFIG)
                }
                other => exit_code(other),
            }
        }
        Command::Journal { store, command } => journal_command(store, command),
        Command::Report { store, command } => report_command(store, command),
        Command::Explain {
            store,
            waybill,
            json,
        } => {
            let journal = match open_store(store) {
                Ok(j) => j,
                Err(code) => return code,
            };
            match crate::explain::from_journal(&journal, &waybill) {
                Ok(e) if json => match serde_json::to_string_pretty(&e) {
                    Ok(text) => {
                        println!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(err) => {
                        eprintln!("bondline: {err}");
                        ExitCode::FAILURE
                    }
                },
                Ok(e) => {
                    print!("{}", e.render());
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("bondline: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Whether the daemon stopped because its journal store is damaged.
fn journal_damaged(e: &anyhow::Error) -> bool {
    e.downcast_ref::<JournalError>()
        .or_else(|| {
            e.downcast_ref::<crate::app::StartError>()
                .and_then(crate::app::StartError::journal)
        })
        .is_some_and(JournalError::is_damaged)
}

/// Runs `f` on the main runtime, built as the daemon builds it (its workers yield the CPU to
/// the floor and journal threads, see [`crate::threads`]). The lab runs its demo line and
/// benches on it too, so they measure the daemon as it runs.
pub fn run_in_runtime<F, Fut>(f: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(crate::threads::yield_to_floor)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the runtime: {e}"))?;
    rt.block_on(f())
}

fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bondline: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the journal named by `store`, or says why not and returns the exit code.
fn open_store(store: StoreArgs) -> Result<crate::journal::Journal, ExitCode> {
    let path = match (store.store, store.config) {
        (Some(p), _) => p,
        (None, config) => {
            let file = config.unwrap_or_else(|| PathBuf::from("/etc/bondline/bondline.toml"));
            match Config::load(&file) {
                Ok(c) => c.storage.path,
                Err(e) => {
                    eprintln!("{e}");
                    return Err(ExitCode::from(EXIT_CONFIG));
                }
            }
        }
    };
    if !path.exists() {
        eprintln!("{}: no journal here", path.display());
        return Err(ExitCode::FAILURE);
    }
    crate::journal::Journal::open(&path).map_err(|e| {
        if e.is_damaged() {
            eprintln!("{e}\nthe store is damaged: `bondline journal salvage --config <file>` moves it aside and starts a fresh one with what is still readable");
            ExitCode::from(EXIT_JOURNAL_DAMAGED)
        } else {
            eprintln!("{e} (is the daemon running? stop it or use a copy of the directory)");
            ExitCode::FAILURE
        }
    })
}
