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

#[derive(Subcommand, Debug)]
pub enum ReportCommand {
    /// Parcels scanned in a calendar month (local time: the configuration's
    /// `[calendar] time_zone`, Asia/Shanghai with `--store`) by enterprise and by lane:
    /// scanned, released, inspected, held, exception, declared value. Printed to stdout.
    Monthly {
        /// The month, YYYY-MM.
        #[arg(long)]
        month: String,
        /// The time zone the month is counted in (an IANA name); overrides the
        /// configuration's.
        #[arg(long)]
        time_zone: Option<String>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Csv)]
        format: ReportFormat,
    },
    /// A shift's or a day's diversions (inspection and hold lanes) as CSV: UTF-8 with BOM,
    /// times in the local zone of `[view] time_zone`, shifts from `[view] shifts`. Without
    /// --date or --at: the shift running now.
    Shift {
        /// Local date YYYY-MM-DD: with --shift that shift, alone the whole day.
        #[arg(long)]
        date: Option<String>,
        /// The shift's number within --date, 1-based.
        #[arg(long, requires = "date")]
        shift: Option<usize>,
        /// The shift containing this time: RFC 3339, local YYYY-MM-DDTHH:MM, or Unix ms.
        #[arg(long, conflicts_with_all = ["date", "shift"])]
        at: Option<String>,
        /// IANA time zone for shifts and times, instead of `[view] time_zone`.
        #[arg(long)]
        time_zone: Option<String>,
        /// Every parcel decision, not only inspection and hold.
        #[arg(long)]
        all_lanes: bool,
        /// Language of the header row and of lane roles: en or zh.
        #[arg(long, default_value = "en")]
        lang: String,
        /// Write the CSV here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    Csv,
    Json,
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

#[derive(Subcommand, Debug)]
pub enum JournalCommand {
    /// Record counts, backlog (records waiting for a PUBACK), the oldest unforwarded record,
    /// parked records and size on disk, as JSON.
    Stats,
    /// Walk the hash chain: report gaps, edited, reordered or unreadable records; with the
    /// integrity key, check the chain head's and anchor's tags (a consistent rewrite fails
    /// there) and the stored platform state's tags. Exit 0 if all is whole, 1 if not, 64 if
    /// the key file cannot be used.
    Verify {
        /// The integrity key file (default: the configuration's `storage.integrity_key_file`,
        /// or `<store>.key` with `--store`). Without a key file the head and anchor tags are
        /// not checked (`"keyed": false`) and a consistent rewrite of the chain is not found.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Clear a chain problem found at a start (`journal_chain_broken`), after looking at it:
    /// it keeps `/readyz` at 503 across restarts until then. Prints what it cleared.
    Acknowledge,
    /// Write the records scanned in a time range to stdout.
    Export {
        /// Start of the range (inclusive): RFC 3339 (`2026-11-01T00:00:00Z`) or Unix ms.
        #[arg(long)]
        from: Option<String>,
        /// End of the range (exclusive): RFC 3339 or Unix ms.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_enum, default_value_t = crate::journal::ExportFormat::Jsonl)]
        format: crate::journal::ExportFormat,
    },
    /// Queue stored records FROM..=TO (sequence numbers) to be sent again at the next start,
    /// parked ones included.
    Replay {
        /// First sequence number.
        from: u64,
        /// Last sequence number (inclusive).
        to: u64,
    },
    /// Recover from a damaged store (the daemon exits 65 and names this command): move it
    /// aside to `<path>.damaged-<unix_ms>`, keep every record whose chain links still verify
    /// and every platform state entry that parses, write them to a fresh store whose chain
    /// carries a `journal_salvaged` alert record naming the old chain's last good record, and
    /// raise an alarm at the next start. Needs --config (the gateway id); stop the daemon
    /// first. Prints what was kept and lost as JSON.
    Salvage,
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
            telemetry::init(cli.log_format, "info");
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

/// The shift plan for `report shift`: `[view]` of the configuration when one is read (the
/// default plan with `--store` or without `[view]`), in `--time-zone` when given.
fn shift_plan(
    store: &StoreArgs,
    time_zone: Option<&str>,
) -> Result<crate::view::shift::ShiftPlan, ExitCode> {
    let mut plan = crate::view::shift::ShiftPlan::default_plan();
    if store.store.is_none() {
        let file = store
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/bondline/bondline.toml"));
        match Config::load(&file) {
            Ok(c) => {
                if let Some(v) = c.view {
                    plan = v.shifts;
                }
            }
            Err(e) => {
                eprintln!("{e}");
                return Err(ExitCode::from(EXIT_CONFIG));
            }
        }
    }
    if let Some(z) = time_zone {
        plan = plan.with_zone(z).map_err(|e| {
            eprintln!("--time-zone: {e}");
            ExitCode::from(EXIT_USAGE)
        })?;
    }
    Ok(plan)
}

/// The rule sets a stopped gateway's records may name, for writing their reasons from the
/// rules: the built-in one, the configuration's `rules_file` (with `--config`) and the last
/// one the platform sent (kept in the journal). A record decided under none of them keeps its
/// recorded reason.
fn known_rule_sets(
    store: &StoreArgs,
    journal: &crate::journal::Journal,
) -> Vec<crate::rules::engine::RuleSet> {
    let mut sets = vec![crate::rules::engine::RuleSet::builtin()];
    if store.store.is_none() {
        let file = store
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/bondline/bondline.toml"));
        if let Ok(c) = Config::load(&file) {
            sets.push((*c.rules).clone());
        }
    }
    if let Ok(Some(update)) = journal.last_platform_rules() {
        if let Ok(set) = crate::config::parse_rules("platform", &update.rules_toml) {
            sets.push(set);
        }
    }
    sets
}

#[allow(clippy::too_many_arguments)]
fn report_shift(
    store: StoreArgs,
    date: Option<String>,
    shift: Option<usize>,
    at: Option<String>,
    time_zone: Option<String>,
    all_lanes: bool,
    lang: String,
    output: Option<PathBuf>,
) -> ExitCode {
    use crate::view::export::{range_of, Export, Lang, Scope};
    let plan = match shift_plan(&store, time_zone.as_deref()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let now = crate::metrics::unix_ms(std::time::SystemTime::now()) as i64;
    let (from, to, label) = match range_of(&plan, date.as_deref(), shift, at.as_deref(), now) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bondline report shift: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let config_store = StoreArgs {
        config: store.config.clone(),
        store: store.store.clone(),
    };
    let journal = match open_store(store) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let store = config_store;
    let result: anyhow::Result<()> = (|| {
        let mut export = Export::new(if all_lanes {
            Scope::AllLanes
        } else {
            Scope::Diversions
        });
        journal.walk_between(
            from.max(0) as u64,
            to.max(0) as u64,
            crate::journal::walk::WALK_BATCH,
            |rs| rs.iter().all(|r| export.add(r)),
        )?;
        let (rows, truncated) = (export.len(), export.truncated);
        let rule_sets = known_rule_sets(&store, &journal);
        let bytes = export.to_csv(&plan, Lang::parse(&lang), &rule_sets);
        match &output {
            Some(path) => std::fs::write(path, &bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            None => std::io::Write::write_all(&mut std::io::stdout().lock(), &bytes)?,
        }
        eprintln!("{label} ({}): {rows} rows", plan.zone_name());
        if truncated {
            eprintln!("warning: cut at {} rows", crate::view::export::MAX_ROWS);
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bondline: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn report_command(store: StoreArgs, command: ReportCommand) -> ExitCode {
    let (month, format, time_zone) = match command {
        ReportCommand::Monthly {
            month,
            format,
            time_zone,
        } => (month, format, time_zone),
        ReportCommand::Shift {
            date,
            shift,
            at,
            time_zone,
            all_lanes,
            lang,
            output,
        } => return report_shift(store, date, shift, at, time_zone, all_lanes, lang, output),
    };
    let month = match crate::report::Month::parse(&month) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("--month: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let calendar = match (time_zone, &store.store, &store.config) {
        (Some(zone), _, _) => match crate::rules::calendar::Calendar::new(&zone) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("--time-zone: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        (None, Some(_), _) => crate::rules::calendar::Calendar::default(),
        (None, None, config) => {
            let file = config
                .clone()
                .unwrap_or_else(|| PathBuf::from("/etc/bondline/bondline.toml"));
            match Config::load(&file) {
                Ok(c) => c.calendar,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
        }
    };
    let journal = match open_store(store) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let result: anyhow::Result<()> = (|| {
        let report = crate::report::from_journal(&journal, month, &calendar)?;
        match format {
            ReportFormat::Csv => print!("{}", crate::report::to_csv(&report)),
            ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        }
        if !report.complete {
            eprintln!(
                "warning: the journal no longer holds every record of {month}: it was purged up to {}",
                report.oldest_record_ms.map_or("?".into(), |t| humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(t)).to_string())
            );
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bondline: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The integrity key file for `journal verify`: `--key`, else the configuration's, else the
/// store's default. `Err` is the exit code (configuration unreadable).
fn key_file(store: &StoreArgs, key: Option<PathBuf>) -> Result<(PathBuf, bool), ExitCode> {
    if let Some(k) = key {
        return Ok((k, true));
    }
    if let Some(p) = &store.store {
        return Ok((crate::journal::integrity::default_key_file(p), false));
    }
    let file = store
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("/etc/bondline/bondline.toml"));
    match Config::load(&file) {
        Ok(c) => Ok((c.storage.integrity_key_file, false)),
        Err(e) => {
            eprintln!("{e}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

fn journal_command(store: StoreArgs, command: JournalCommand) -> ExitCode {
    if let JournalCommand::Salvage = command {
        return salvage_command(store);
    }
    let key = match &command {
        JournalCommand::Verify { key } => {
            let (file, explicit) = match key_file(&store, key.clone()) {
                Ok(k) => k,
                Err(code) => return code,
            };
            if explicit || file.exists() {
                match crate::journal::integrity::IntegrityKey::load(&file) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        eprintln!("bondline journal verify: {e}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                }
            } else {
                eprintln!(
                    "no integrity key at {}: the chain head's and anchor's tags and the stored platform state are not checked (give --key)",
                    file.display()
                );
                None
            }
        }
        _ => None,
    };
    let journal = match open_store(store) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let result: anyhow::Result<ExitCode> = (|| match command {
        JournalCommand::Stats => {
            println!("{}", serde_json::to_string_pretty(&journal.stats()?)?);
            Ok(ExitCode::SUCCESS)
        }
        JournalCommand::Verify { .. } => {
            let keyed = key.is_some();
            if let Some(k) = key {
                journal.set_integrity_key(k, false);
            }
            let mut report = journal.verify()?;
            if keyed {
                journal.load_clearance()?;
                let _ = journal.stored_rules()?;
                report.refused_state = journal
                    .refused_entries()
                    .iter()
                    .map(ToString::to_string)
                    .collect();
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        JournalCommand::Export { from, to, format } => {
            let from = from.as_deref().map(parse_time).transpose()?.unwrap_or(0);
            let to = to
                .as_deref()
                .map(parse_time)
                .transpose()?
                .unwrap_or(u64::MAX);
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let n = journal.export(from, to, format, &mut out)?;
            std::io::Write::flush(&mut out)?;
            eprintln!("{n} record(s) exported");
            Ok(ExitCode::SUCCESS)
        }
        JournalCommand::Salvage => anyhow::bail!("salvage does not open the store"),
        JournalCommand::Acknowledge => {
            match journal.acknowledge_chain_problem()? {
                Some(text) => println!("acknowledged: {text}"),
                None => println!("no chain problem was stored"),
            }
            Ok(ExitCode::SUCCESS)
        }
        JournalCommand::Replay { from, to } => {
            anyhow::ensure!(from <= to, "FROM must not be after TO");
            let n = journal.replay(from, to)?;
            println!("{n} record(s) queued to be sent again");
            Ok(ExitCode::SUCCESS)
        }
    })();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bondline journal: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `bondline journal salvage`: needs the configuration, which names the gateway and the store.
fn salvage_command(store: StoreArgs) -> ExitCode {
    if store.store.is_some() {
        eprintln!("journal salvage: give --config (the gateway id and storage.path), not --store");
        return ExitCode::from(EXIT_USAGE);
    }
    let file = store
        .config
        .unwrap_or_else(|| PathBuf::from("/etc/bondline/bondline.toml"));
    let config = match Config::load(&file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match crate::journal::salvage(&config.storage.path, &config.gateway_id) {
        Ok(report) => {
            match serde_json::to_string_pretty(&report) {
                Ok(text) => println!("{text}"),
                Err(e) => eprintln!("bondline journal salvage: {e}"),
            }
            if report.opened == crate::journal::Opened::NotAtAll {
                eprintln!(
                    "nothing of the damaged store was readable; the fresh store holds only the salvage record. The damaged store is kept at {}",
                    report.damaged.display()
                );
            } else {
                eprintln!(
                    "{} record(s) kept, {} lost; the damaged store is kept at {}",
                    report.records_kept,
                    report
                        .records_lost
                        .map_or("an unknown number of".into(), |n| n.to_string()),
                    report.damaged.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bondline journal salvage: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Unix milliseconds, or an RFC 3339 time.
fn parse_time(s: &str) -> anyhow::Result<u64> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| anyhow::anyhow!("`{s}` is neither Unix ms nor an RFC 3339 time: {e}"))?;
    Ok(crate::metrics::unix_ms(t))
}
