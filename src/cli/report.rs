//! `bondline report`: the monthly customs report and the shift export, read from the journal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Config;

use super::{open_store, StoreArgs, EXIT_CONFIG, EXIT_USAGE};

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
        if let Ok(set) = crate::rules::engine::RuleSet::parse("platform", &update.rules_toml) {
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

pub(super) fn report_command(store: StoreArgs, command: ReportCommand) -> ExitCode {
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
