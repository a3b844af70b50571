//! `bondline journal`: verify, export and salvage the journal store, and its integrity key.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Config;

use super::{open_store, StoreArgs, EXIT_CONFIG, EXIT_USAGE};

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

pub(super) fn journal_command(store: StoreArgs, command: JournalCommand) -> ExitCode {
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
                    Ok(k) => {
                        if crate::journal::integrity::adoption_marker(&file).exists() {
                            eprintln!("the integrity key's adoption is open (a store fresh from journal salvage, or the start that created the key did not finish its load): untagged platform state reported here is adopted (sealed as it lies) at the next start");
                        }
                        Some(k)
                    }
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
pub(super) fn salvage_command(store: StoreArgs) -> ExitCode {
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
    match crate::journal::salvage(
        &config.storage.path,
        &config.gateway_id,
        &config.storage.integrity_key_file,
    ) {
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
            if let Some(note) = &report.consumer_file {
                eprintln!("{note}");
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
