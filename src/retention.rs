//! Forgetting old platform state, so a gateway that runs for months does not grow without
//! bound: see `Journal::purge_clearance` for what is forgotten and why that is safe. A task
//! of the main runtime over the journal, the clearance table and the released-waybill
//! registry (it sat under `rules`, which is pure logic and does no I/O).

use crate::floor::ClearanceChange;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::journal::Journal;
use crate::rules::history::day_of;
use crate::rules::ClearanceTable;

/// How often old state is looked for.
const INTERVAL: Duration = Duration::from_secs(3600);
/// Entries forgotten per step (each waybill takes its shard's lock alone, briefly).
const STEP: usize = 1_000;

/// Why the platform log cannot be forgotten on time, if its newest file is dated more than a
/// day after `today`: the clock was ahead when it was written (set wrong, then corrected).
/// Messages are stored in order of their files' days, so everything stored since goes into
/// that file too, and it is kept until its own date has passed the clearance period: nothing
/// is lost, but the disk it takes is not given back until then.
pub fn log_ahead_of_clock(newest_day: u32, today: u32, keep_days: u32) -> Option<String> {
    let ahead = newest_day.checked_sub(today).filter(|&d| d > 1)?;
    let date = |day: u32| {
        let (y, m, d) = crate::rules::calendar::civil_from_days(i64::from(day));
        format!("{y:04}-{m:02}-{d:02}")
    };
    // A file of day D goes once D is before today minus the clearance period.
    let gone = newest_day.saturating_add(keep_days).saturating_add(1);
    Some(format!(
        "platform log dated {ahead} days ahead of the clock (its newest file is for {} UTC): the clock was set ahead when it was written; platform state stored since is kept in that file, forgotten from {} UTC ({} days from now). Check the clock and its time source",
        date(newest_day),
        date(gone),
        gone - today
    ))
}

/// The day retention counts the clearance period back from: the clock's, but at most a day
/// past the newest signature time of a platform message taken in
/// (`ClearanceTable::platform_clock_ms`).
/// A clock set days ahead (an RTC reset, a wrong time source) would otherwise forget in one
/// purge what is still within the period by the platform's clock: instruction ids and holds
/// among them, so that once the clock is put right a replay of a release a hold had stopped
/// would be taken as new. The cost: while the platform sends nothing signed (a quiet holiday),
/// nothing more is forgotten until it does. Without a signed message yet (a demo line
/// taking unsigned ones), the clock's day.
pub fn retention_day(clock_day: u32, platform_clock_ms: Option<u64>) -> u32 {
    match platform_clock_ms {
        Some(ms) => clock_day.min(day_of(ms).saturating_add(1)),
        None => clock_day,
    }
}

/// Once per start: the released marks of waybills the table no longer holds (loaded from
/// the store, or forgotten before their release was marked) go, in the store and then in
/// memory, one waybill at a time (see journal::intents); returns how many waybills. Not when
/// the load refused stored state (`None`): a waybill missing from the table may then be one
/// whose messages are in a damaged block, and its marks must stay for when the platform
/// sends them again.
fn sweep_released(
    journal: &Journal,
    table: &ClearanceTable,
    released: &crate::line::duplicates::Released,
) -> Result<Option<usize>, crate::journal::JournalError> {
    if !journal.refused_entries().is_empty() {
        return Ok(None);
    }
    let gone = journal.forget_released_unheld(|w| table.holds_waybill(w))?;
    for w in &gone {
        released.forget_if(w, |w| !table.holds_waybill(w));
    }
    Ok(Some(gone.len()))
}

/// Forgets state received more than `keep` ago, at start and then hourly, until `stop`.
pub async fn run(
    journal: Journal,
    table: Arc<ClearanceTable>,
    released: Arc<crate::line::duplicates::Released>,
    changes: tokio::sync::broadcast::Sender<ClearanceChange>,
    keep: Duration,
    alarms: crate::alarm::Alarms,
    stop: CancellationToken,
) {
    let keep_days = (keep.as_secs() / 86_400) as u32;
    let mut swept = false;
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let today = day_of(crate::metrics::unix_ms(SystemTime::now()));
        let counted_from = retention_day(today, table.platform_clock_ms());
        if counted_from + 1 < today {
            tracing::warn!(
                days = today - counted_from,
                "the clearance period is counted from the newest platform signature, days behind the clock: the platform has been quiet, or the clock is ahead (check it and its time source)"
            );
        }
        let before = counted_from.saturating_sub(keep_days);
        if let Some(why) = log_ahead_of_clock(journal.platform_log_newest_day(), today, keep_days) {
            alarms.raise(why);
        }
        let mut total = 0;
        loop {
            let (j, t) = (journal.clone(), table.clone());
            // The store and the table forget together, with the uplink kept out meanwhile
            // (`Journal::platform_lock`); the purge takes forgotten waybills out of the table
            // itself, and releases their consumers once the step's day totals are durable.
            let step = tokio::task::spawn_blocking(move || {
                let _guard = j.platform_lock().blocking_lock();
                let forgotten = j.purge_clearance(before, STEP, &t)?;
                for id in &forgotten.instruction_ids {
                    t.forget_instruction_id(id);
                }
                // Their released marks go with them: no release order of theirs is left.
                if let Err(e) = j.forget_released(&forgotten.waybills) {
                    tracing::warn!(error = %e, "released marks of forgotten waybills not removed; retrying at the next start");
                }
                Ok::<_, crate::journal::JournalError>(forgotten)
            })
            .await;
            let forgotten = match step {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "old declarations not forgotten; retrying later");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "clearance retention task failed");
                    break;
                }
            };
            total += forgotten.waybills.len();
            for w in &forgotten.waybills {
                released.forget_if(w, |w| !table.holds_waybill(w));
            }
            if !forgotten.waybills.is_empty() {
                let _ = changes.send(ClearanceChange::Forgotten(
                    forgotten.waybills.clone().into(),
                ));
            }
            if !forgotten.more || stop.is_cancelled() {
                break;
            }
            tokio::task::yield_now().await;
        }
        if !swept {
            let (j, t, r) = (journal.clone(), table.clone(), released.clone());
            match tokio::task::spawn_blocking(move || sweep_released(&j, &t, &r)).await {
                Ok(Ok(gone)) => {
                    swept = true;
                    match gone {
                        None => tracing::warn!("released marks of waybills no longer held kept: the load refused stored state, so the table may be missing waybills"),
                        Some(0) => {}
                        Some(n) => tracing::info!(waybills = n, "released marks of waybills no longer held removed"),
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "released marks of waybills no longer held not removed; retrying later")
                }
                Err(e) => tracing::warn!(error = %e, "clearance retention task failed"),
            }
        }
        let j = journal.clone();
        let t = table.clone();
        match tokio::task::spawn_blocking(move || {
            // Consumers whose stored days could not be read when they were first referenced
            // count again once the file can be read (after the purge, which moves an older
            // build's totals in if the load could not).
            let unknown = t.read_unknown_consumers_again();
            (j.consumer_days_problem(INTERVAL), unknown)
        })
        .await
        {
            Ok((Some(why), unknown)) => alarms.raise(format!(
                "the consumers' stored day totals cannot be used ({why}): every consumer limit over a history not in memory is taken as exceeded ({unknown} consumers held so now), and counted parcels are kept past the clearance period until their totals can be written"
            )),
            Ok((None, unknown)) if unknown > 0 => tracing::warn!(
                consumers = unknown,
                "consumers whose stored day totals still cannot be read: their limits count as exceeded"
            ),
            _ => {}
        }
        if total > 0 {
            tracing::info!(
                waybills = total,
                keep_days,
                "declarations older than the clearance period forgotten"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sweep at start takes out, in the store and in memory, the released marks of
    /// waybills the table no longer holds, and keeps the others.
    #[tokio::test]
    async fn the_sweep_keeps_only_the_marks_of_waybills_held() {
        use bondline_devices::contract::LaneRole;
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let released = crate::line::duplicates::Released::new(Default::default());
        let mut intents = Vec::new();
        for n in [1, 2] {
            let mut r = crate::journal::test_record(n, 1_000);
            r.lane_role = LaneRole::Release;
            intents.push(crate::journal::intents::encode_intent(&r));
            released.load(
                r.waybill.as_deref().unwrap(),
                crate::line::duplicates::Mark {
                    line: r.line.clone(),
                    parcel: n,
                    scanned_at_ms: 1_000,
                    weight_g: None,
                    lane: 1,
                    floor: crate::line::duplicates::Floor::Released,
                    snapshots: Vec::new(),
                },
            );
        }
        journal.store_intents(&intents).await.unwrap();
        let table = ClearanceTable::default();
        table.apply_declaration(&crate::rules::clearance::tests::decl("BL00000001", "c", 1));
        assert_eq!(
            sweep_released(&journal, &table, &released).unwrap(),
            Some(1)
        );
        let kept: Vec<_> = journal
            .released_marks(0)
            .unwrap()
            .into_iter()
            .filter_map(|m| m.waybill)
            .collect();
        assert_eq!(kept, vec!["BL00000001".to_string()]);
        assert!(released.marks("BL00000002").is_empty());
        assert_eq!(released.marks("BL00000001").len(), 1);
    }

    /// A clock days ahead of the platform's newest signature does not move the clearance
    /// period: it is counted from a day past that signature. A clock behind it, or no
    /// signature yet, counts from the clock.
    #[test]
    fn retention_counts_from_the_platform_clock_when_the_local_one_runs_ahead() {
        let day_ms = 86_400_000u64;
        let signed = 20_794 * day_ms + 3_600_000;
        assert_eq!(retention_day(20_794, Some(signed)), 20_794);
        assert_eq!(retention_day(20_795, Some(signed)), 20_795, "a day's grace");
        assert_eq!(
            retention_day(20_794 + 40, Some(signed)),
            20_795,
            "clock 40 days ahead"
        );
        assert_eq!(retention_day(20_790, Some(signed)), 20_790, "clock behind");
        assert_eq!(retention_day(20_834, None), 20_834, "nothing signed yet");
    }

    #[test]
    fn a_log_dated_ahead_of_the_clock_is_named_with_its_date_and_when_it_goes() {
        // 2026-12-07 is day 20,794.
        let today = 20_794;
        assert_eq!(log_ahead_of_clock(0, today, 14), None, "no log yet");
        assert_eq!(log_ahead_of_clock(today, today, 14), None);
        // A file for tomorrow: a clock a little fast near midnight, or another time zone.
        assert_eq!(log_ahead_of_clock(today + 1, today, 14), None);
        let why = log_ahead_of_clock(today + 365, today, 14).expect("a year ahead");
        assert!(why.contains("365 days ahead"), "{why}");
        assert!(why.contains("2027-12-07 UTC"), "{why}");
        assert!(why.contains("forgotten from 2027-12-22 UTC"), "{why}");
        assert!(why.contains("(380 days from now)"), "{why}");
    }
}
