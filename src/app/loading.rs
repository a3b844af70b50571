//! The clearance table's load from the store, in the background: the lines decide from
//! the first second, holding every waybill as `state_loading` until it is loaded, then
//! decide again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::alarm::Alarms;
use crate::floor::ClearanceChange;
use crate::journal::Journal;
use crate::rules::ClearanceTable;

/// What the background load of the clearance table needs.
pub(super) struct Loader {
    pub(super) journal: Journal,
    pub(super) table: Arc<ClearanceTable>,
    pub(super) adopting: bool,
    pub(super) expected_declarations: u64,
    pub(super) changes: broadcast::Sender<ClearanceChange>,
    pub(super) alarms: Alarms,
    pub(super) sink: crate::journal::RecordSink,
    pub(super) gateway: String,
    pub(super) key_file: std::path::PathBuf,
    /// The earlier run's interrupted release decisions, journaled once the load is over.
    pub(super) interrupted: super::takeover::Interrupted,
}

/// How long the lines' start waits for the clearance table's load before they decide
/// without it (holding every waybill until it is loaded).
pub(super) const LOAD_WAIT: Duration = Duration::from_millis(500);

/// How often a load's progress is logged and told to the service manager.
const LOAD_REPORT: Duration = Duration::from_secs(2);

/// Fills the clearance table from the store, then tells the lines to decide their parcels
/// again (every parcel decided meanwhile was held as `state_loading`). Integrity checks
/// apply as at any load; refused entries and adopted ones raise their alarms once the load is
/// done. A load that fails leaves the table loading: everything stays held, `/readyz` says
/// why, and an alarm is raised.
pub(super) async fn load_clearance(l: Loader, shutdown: CancellationToken) {
    let started = std::time::Instant::now();
    l.table.reserve(l.expected_declarations as usize);
    let reporter = {
        let table = l.table.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LOAD_REPORT);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(p) = table.loading() else { return };
                let status = format!(
                    "running; clearance table loading: {} of about {} stored entries",
                    p.done, p.expected
                );
                info!(
                    done = p.done,
                    expected = p.expected,
                    "clearance table loading"
                );
                crate::service::status(&status, Some(LOAD_REPORT * 5));
            }
        })
    };
    let (journal, table, stop) = (l.journal.clone(), l.table.clone(), shutdown.clone());
    let outcome = tokio::task::spawn_blocking(move || {
        journal.load_clearance_into(&table, l.adopting, &|| stop.is_cancelled())
    })
    .await;
    reporter.abort();
    // The earlier run's interrupted decisions: their counts in the loaded table, then their
    // records (after any outcome: a table that did not load holds every parcel anyway).
    l.interrupted.journal(&l.table, &l.sink);
    let finished = matches!(outcome, Ok(Ok(true)));
    match outcome {
        Ok(Ok(true)) => {
            l.table.finish_loading();
            info!(
                declarations = l.table.declarations(),
                instructions = l.table.instructions(),
                consumers = l.table.consumers(),
                suspended_enterprises = l.table.suspended(),
                took_ms = started.elapsed().as_millis() as u64,
                "clearance table loaded; tracked parcels are decided again"
            );
            crate::service::status("running", None);
            let _ = l.changes.send(ClearanceChange::All);
        }
        Ok(Ok(false)) => info!("clearance table load stopped by shutdown"),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "clearance table cannot be loaded: every parcel is held");
            l.alarms.raise(format!(
                "clearance table cannot be loaded from the store ({e}): every parcel is held as state_loading"
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "clearance table load failed: every parcel is held");
            l.alarms.raise(format!(
                "clearance table load failed ({e}): every parcel is held as state_loading"
            ));
        }
    }
    if l.journal.adopted_untagged() > 0 {
        l.alarms.raise(format!(
            "integrity: {} stored entries without integrity tags adopted as they lay on disk (integrity key {} created at this start or at one cut short before its load ended, or a salvaged store)",
            l.journal.adopted_untagged(),
            l.key_file.display()
        ));
    }
    // Platform state refused by its integrity check (clearance table and rule set): an
    // alert in the chain and an alarm for each.
    raise_refused(&l.journal, &l.gateway, &l.alarms, &l.sink);
    // Last: after the lines have the table and the operator the load's alarms, its flush
    // holds up neither.
    if finished {
        end_adoption(&l.journal, &l.key_file, &l.alarms).await;
    }
}

/// Ends the integrity key's adoption of untagged state after a load that finished, once
/// everything it sealed is durable: from the next start on, untagged state is refused
/// (blocks it could not seal too, see [`Journal::unsealed_adopted`]).
async fn end_adoption(journal: &Journal, key_file: &std::path::Path, alarms: &Alarms) {
    use crate::journal::integrity;
    if !integrity::adoption_marker(key_file).exists() {
        return;
    }
    // Not kept open for them: an open adoption takes any untagged state (a chain head, a
    // rule set) as it lies, at every start. They are refused from the next start on, fail
    // closed, as the damage beside them is.
    let unsealed = journal.unsealed_adopted();
    if unsealed > 0 {
        alarms.raise(format!(
            "integrity: {unsealed} untagged platform message(s) in platform log files that hold damage were adopted but not sealed (those files are kept as they lie): from the next start they are refused (held) like the damage beside them; ask the platform to send those days again"
        ));
    }
    // The seals (the rule set, the chain's tags, moved entries) durable first.
    let ended = match journal.flush().await {
        Ok(()) => {
            let key_file = key_file.to_path_buf();
            match tokio::task::spawn_blocking(move || integrity::end_adoption(&key_file)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
        Err(e) => Err(format!("the store did not flush: {e}")),
    };
    if let Err(e) = ended {
        alarms.raise(format!(
            "integrity: the integrity key's adoption of untagged state is not ended ({e}): every start adopts untagged state as it lies until {} is removed by a start (the key's directory must be writable by the service)",
            integrity::adoption_marker(key_file).display()
        ));
    }
}

/// Waits until the clearance table is loaded; false if `stop` comes first.
pub(super) async fn loaded(table: &ClearanceTable, stop: &CancellationToken) -> bool {
    while table.loading().is_some() {
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    true
}

/// At most this many refused entries are alerted one by one; the rest in one summary.
const REFUSED_ALERTS: usize = 100;

/// Raises a `stored_state_refused` alert record and alarm for every stored platform entry
/// that the load refused.
fn raise_refused(
    journal: &Journal,
    gateway: &str,
    alarms: &Alarms,
    sink: &crate::journal::RecordSink,
) {
    use bondline_devices::contract::{AlertKind, AlertRecord};
    let refused = journal.refused_entries();
    let alert = |waybill: Option<String>, detail: String| {
        let now = crate::metrics::unix_ms(std::time::SystemTime::now());
        AlertRecord::new(gateway, "", AlertKind::StoredStateRefused, detail, now)
            .about(None, waybill)
    };
    for r in refused.iter().take(REFUSED_ALERTS) {
        alarms.raise(format!("stored_state_refused: {r}"));
        let waybill = (r.tree == "declarations" || r.tree == "instructions").then(|| r.key.clone());
        sink.push(alert(waybill, r.to_string()));
    }
    if refused.len() > REFUSED_ALERTS {
        let detail = format!(
            "{} more stored platform entries refused by their integrity check (see the log)",
            refused.len() - REFUSED_ALERTS
        );
        alarms.raise(format!("stored_state_refused: {detail}"));
        sink.push(alert(None, detail));
    }
}
