//! `bondline-lab bench table`: the clearance table at the size of the busiest gateway.
//!
//! 1. A store of `declarations` declarations, half of them instructed (release), is filled
//!    through the journal's own API with an integrity key, as the daemon stores them (kept in
//!    `--dir` between runs, so a 10-million store is filled once).
//! 2. A start as the daemon does it: open the store, an empty table marked loading, the
//!    first decision (fail closed, `state_loading`), then the background load; printed: start
//!    to first decision, load time, and the process's RSS growth per million declarations
//!    (sled's bounded cache included).
//! 3. Lookups on one thread while another applies declarations and instructions at full
//!    speed into a table that grows from empty (no room made ahead): lookup p50/p99/max.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bondline_devices::contract::{Action, Declaration, Instruction, SCHEMA};

use bondline::floor::ScanRead;
use bondline::journal::integrity::{default_key_file, IntegrityKey};
use bondline::journal::Journal;
use bondline::rules::engine::{RuleSet, XrayInput};
use bondline::rules::{decide, ClearanceTable, Message, Scan};

fn declaration(i: u64) -> Declaration {
    Declaration {
        order_id: None,
        pieces: None,
        schema: SCHEMA,
        waybill: format!("BL{i:012}"),
        enterprise: format!("E{:08}", i % 500),
        consumer: Some(format!("{:016x}", i % 100_000)),
        identity_verified: i % 97 != 0,
        value_minor: Some(1_000 + i % 50_000),
        currency: Some("CNY".into()),
        gross_weight_g: Some(200 + (i % 3000) as u32),
        items: vec![],
        signature: None,
    }
}

fn instruction(i: u64) -> Instruction {
    Instruction {
        schema: SCHEMA,
        instruction_id: format!("I{i:012}"),
        waybill: format!("BL{i:012}"),
        action: if i % 10 == 0 {
            Action::Inspect
        } else {
            Action::Release
        },
        reason: String::new(),
        issued_at_ms: None,
        signature: None,
    }
}

/// A store at `store` holding `declarations` declarations, half of them instructed, as a
/// daemon leaves it (a complete load has recorded the table's size); one already filled is
/// kept as it is.
pub(super) fn prepare(store: &Path, declarations: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(store)?;
    let (key, created) = IntegrityKey::load_or_create(&default_key_file(store))?;
    let journal = Journal::open(store)?;
    journal.set_integrity_key(key, created);
    fill(&journal, declarations)?;
    // The first complete load records the table's size, as a daemon's first start would.
    if journal.clearance_load_hint().0 == 0 {
        journal.load_clearance()?;
    }
    futures::executor::block_on(journal.flush())?;
    Ok(())
}

/// Fills the store up to `n` declarations (those already there are kept), on two threads.
fn fill(journal: &Journal, n: u64) -> anyhow::Result<()> {
    let (have, _) = journal.clearance_load_hint();
    if have > 0 {
        println!("store: reusing the stored table ({have} entries at its last load)");
        return Ok(());
    }
    let started = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..2u64)
            .map(|t| {
                s.spawn(move || -> anyhow::Result<()> {
                    let mut i = t;
                    while i < n {
                        journal.store_declaration(&declaration(i))?;
                        if i % 2 == 0 {
                            journal.store_instruction(&instruction(i))?;
                        }
                        i += 2;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a fill thread panicked"))??;
        }
        Ok(())
    })?;
    let took = started.elapsed();
    println!(
        "store: {n} declarations, half instructed, stored in {:.1} s ({:.0} declarations/s)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    Ok(())
}

pub fn run(
    declarations: u64,
    lookups: u64,
    dir: Option<&Path>,
    stored_consumers: u64,
    older_build_consumers: u64,
) -> anyhow::Result<()> {
    let tmp;
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let store = dir.join("journal");
    prepare(&store, declarations)?;

    // A start, as the daemon's.
    let rules = RuleSet::builtin();
    let calendar = bondline::rules::calendar::Calendar::default();
    let read = ScanRead::Waybill(format!("BL{:012}", 2));
    let scan = Scan {
        read: &read,
        weight_g: None,
        weighing: false,
        day: 0,
        calendar: &calendar,
        prior: None,
        xray: XrayInput::NotOnLine,
    };
    // What the filling and the first open left behind goes back first, so that the figures
    // below are this start's alone.
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let before = super::resident_bytes();
    let heap_before = super::heap_in_use();
    let started = Instant::now();
    let (key, created) = IntegrityKey::load_or_create(&default_key_file(&store))?;
    let journal = Journal::open(&store)?;
    journal.set_integrity_key(key, created);
    let table = Arc::new(ClearanceTable::default());
    let (expected, expected_declarations) = journal.clearance_load_hint();
    table.begin_loading(expected);
    let adopting = journal.begin_clearance_load()?;
    let first = decide(&table, &rules, scan);
    let to_first = started.elapsed();
    let opened = super::resident_bytes();
    let heap_opened = super::heap_in_use();
    table.reserve(expected_declarations as usize);
    let loaded = journal.load_clearance_into(&table, adopting, &|| false)?;
    table.finish_loading();
    let to_loaded = started.elapsed();
    let after = super::resident_bytes();
    let heap_after = super::heap_in_use();
    let after_decision = decide(&table, &rules, scan);
    let held = table.declarations().max(1) as f64;
    println!(
        "start: first decision after {:.0} ms ({}: {}), table loaded after {:.1} s ({} declarations, {} instructions, complete: {loaded}), then {}",
        to_first.as_secs_f64() * 1000.0,
        first.role.as_str(),
        first.rule,
        to_loaded.as_secs_f64(),
        table.declarations(),
        table.instructions(),
        after_decision.role.as_str(),
    );
    println!(
        "memory: process RSS {:.0} MiB before the store was opened, {:.0} MiB once open, {:.0} MiB loaded = {:.0} MiB per million declarations held from open to loaded, {:.0} MiB per million with the store's opening (half instructed; sled cache {} MiB included)",
        before as f64 / 1048576.0,
        opened as f64 / 1048576.0,
        after as f64 / 1048576.0,
        after.saturating_sub(opened) as f64 / 1048576.0 * 1_000_000.0 / held,
        after.saturating_sub(before) as f64 / 1048576.0 * 1_000_000.0 / held,
        bondline::journal::CACHE_BYTES / 1048576,
    );
    println!(
        "heap in use (allocator's live bytes): {:.0} MiB before, {:.0} MiB once open, {:.0} MiB loaded = {:.0} MiB per million",
        heap_before as f64 / 1048576.0,
        heap_opened as f64 / 1048576.0,
        heap_after as f64 / 1048576.0,
        heap_after.saturating_sub(heap_opened) as f64 / 1048576.0 * 1_000_000.0 / held,
    );
    let (segments, log_bytes) = journal.platform_log_files()?;
    let messages = (table.declarations() + table.instructions()) as u64;
    let disk = super::backlog::dir_bytes(&store) + log_bytes;
    println!(
        "store: {:.0} MiB on disk = {:.0} bytes per stored platform message ({messages} messages; the platform log {:.0} MiB in {segments} segment files = {:.0} bytes per message)",
        disk as f64 / 1048576.0,
        disk as f64 / messages.max(1) as f64,
        log_bytes as f64 / 1048576.0,
        log_bytes as f64 / messages.max(1) as f64,
    );
    drop(table);
    drop(journal);

    // Lookups against a writer at full speed, the table growing from empty.
    let heap_empty = super::heap_in_use();
    let table = Arc::new(ClearanceTable::default());
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (table, done) = (table.clone(), done.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut i = 0u64;
            while i < declarations {
                let d = declaration(i);
                let ins = instruction(i);
                if i % 2 == 0 {
                    table.apply_many(&[Message::Declaration(&d), Message::Instruction(&ins)]);
                } else {
                    table.apply_declaration(&d);
                }
                i += 1;
            }
            done.store(true, Ordering::Release);
            started.elapsed()
        })
    };
    // Lookups run on the floor thread in the daemon, at its scheduling, and the floor sleeps
    // between parcels: so here, a pause after every 256 lookups (a real-time thread that
    // never slept would be throttled by the kernel, 50 ms in every second).
    let urgency = bondline::threads::urgent();
    let mut samples = bondline::metrics::new_hdr(3);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut n = 0u64;
    while n < lookups || !done.load(Ordering::Acquire) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let w = format!("BL{:012}", x % declarations.max(1));
        let t = Instant::now();
        let found = table.known(&w);
        samples.saturating_record((t.elapsed().as_nanos() as u64).max(1));
        std::hint::black_box(found);
        n += 1;
        if n % 256 == 0 {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        if done.load(Ordering::Acquire) && n >= lookups {
            break;
        }
    }
    let wrote = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))?;
    println!(
        "the table alone, grown from empty: {:.0} MiB of heap per million declarations (half instructed)",
        super::heap_in_use().saturating_sub(heap_empty) as f64 / 1048576.0 * 1_000_000.0
            / table.declarations().max(1) as f64,
    );
    println!(
        "lookups (scheduling {urgency:?}) while a writer applies {declarations} declarations (half with their instruction in one batch) at full speed into a growing table ({:.0} declarations/s): {}",
        declarations as f64 / wrote.as_secs_f64(),
        bondline::metrics::Percentiles::of(&samples, 1000.0)
    );
    drop(table);
    distinct_consumers(declarations);
    if stored_consumers > 0 {
        year_of_buyers(
            &dir.join(format!("buyers-{stored_consumers}-{declarations}")),
            stored_consumers,
            declarations,
        )?;
    }
    if older_build_consumers > 0 {
        older_build_move(&dir, older_build_consumers)?;
    }
    Ok(())
}

/// `consumers` one-off buyers' day totals as a build older than the consumers' file left
/// them in the store, then a start on that store: its load moves them into the file (the
/// table holds every parcel `state_loading` meanwhile). A fresh store under `dir` each run,
/// removed afterwards.
fn older_build_move(dir: &Path, consumers: u64) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir_in(dir)?;
    let store = tmp.path().join("journal");
    let day =
        bondline::rules::history::day_of(bondline::metrics::unix_ms(std::time::SystemTime::now()));
    let total = |i: u64| (day - 20 - (i % 300) as u32, buyer(i), 1u32, 10_000u64);
    {
        let journal = Journal::open(&store)?;
        let started = Instant::now();
        let mut i = 0;
        while i < consumers {
            let batch: Vec<(u32, String, u32, u64)> =
                (i..(i + 50_000).min(consumers)).map(total).collect();
            let batch: Vec<(u32, &str, u32, u64)> = batch
                .iter()
                .map(|(d, b, p, v)| (*d, b.as_str(), *p, *v))
                .collect();
            journal.store_history_as_older_build(&batch)?;
            i += 50_000;
        }
        println!(
            "an older build's store: {consumers} consumers' day totals written in {:.1} s, the store {:.0} MiB",
            started.elapsed().as_secs_f64(),
            super::backlog::dir_bytes(&store) as f64 / 1048576.0,
        );
    }
    let started = Instant::now();
    let journal = Journal::open(&store)?;
    let opened = started.elapsed();
    let table = ClearanceTable::default();
    table.begin_loading(0);
    let complete = journal.load_clearance_into(&table, false, &|| false)?;
    table.finish_loading();
    let took = started.elapsed();
    let (d, b, p, v) = total(consumers / 2);
    let read = journal.stored_days()?.reader().map(|r| r.days_of(&b));
    println!(
        "the first start after the upgrade: the store opened in {:.1} s, the totals moved into the consumers' file by the load in {:.1} s in all ({:.0} totals/s; complete: {complete}; a consumer's days read back as written: {}); the store {:.0} MiB, the file {:.0} MiB",
        opened.as_secs_f64(),
        took.as_secs_f64(),
        consumers as f64 / took.as_secs_f64(),
        matches!(read, Some(Ok(ref days)) if days == &vec![(d, p, v)]),
        super::backlog::dir_bytes(&store) as f64 / 1048576.0,
        journal.consumer_days_bytes() as f64 / 1048576.0,
    );
    let closing = Instant::now();
    drop(journal);
    let closed = closing.elapsed();
    let opening = Instant::now();
    let journal = Journal::open(&store)?;
    println!(
        "then the store closed in {:.1} s and opened again in {:.1} s: {:.0} MiB",
        closed.as_secs_f64(),
        opening.elapsed().as_secs_f64(),
        super::backlog::dir_bytes(&store) as f64 / 1048576.0,
    );
    drop(journal);
    Ok(())
}

/// Bytes a file occupies on disk (its blocks; a sparse file's holes take none).
fn occupied(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// A one-off buyer's identity hash.
fn buyer(i: u64) -> String {
    format!("{:064x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15)
}

/// A year of one-off buyers on disk (`stored` consumers' day totals of forgotten
/// declarations, as retention leaves them) beside `declarations` held ones, every other one
/// from a buyer of that year: a start's load (the held declarations, then one pass over the
/// stored days), then as many new declarations arriving live, each new consumer's stored
/// days read as it arrives. What the reads cost, and what stays in memory.
fn year_of_buyers(dir: &Path, stored: u64, declarations: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let opening = Instant::now();
    let journal = Journal::open(dir)?;
    let opened = opening.elapsed();
    let day =
        bondline::rules::history::day_of(bondline::metrics::unix_ms(std::time::SystemTime::now()));
    // Every other declaration from a buyer of the stored year, spread over it.
    let step = (stored / declarations.max(1)).max(1) * 2;
    let held = |i: u64| {
        let mut d = declaration(i);
        d.consumer = Some(if i % 2 == 0 {
            buyer((i / 2 * step) % stored)
        } else {
            buyer(stored + i)
        });
        d
    };
    if journal.stored_days()?.is_empty() {
        let started = Instant::now();
        // As retention writes them: a step's totals in one transaction.
        let mut i = 0;
        while i < stored {
            let names: Vec<(u32, String)> = (i..(i + 50_000).min(stored))
                .map(|i| (day - 20 - (i % 300) as u32, buyer(i)))
                .collect();
            let parcels: Vec<(u32, &str, u64)> = names
                .iter()
                .map(|(d, b)| (*d, b.as_str(), 10_000))
                .collect();
            journal.add_many_to_history(&parcels)?;
            i += 50_000;
        }
        for i in 0..declarations {
            journal.store_declaration(&held(i))?;
        }
        futures::executor::block_on(journal.flush())?;
        println!(
            "a year of buyers: {stored} consumers' day totals and {declarations} held declarations stored in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let heap_empty = super::heap_in_use();
    let rss_empty = super::resident_bytes();
    let table = ClearanceTable::default();
    table.begin_loading(0);
    let started = Instant::now();
    journal.load_clearance_into(&table, false, &|| false)?;
    table.finish_loading();
    let loaded = started.elapsed();
    let heap = |table: &ClearanceTable| {
        super::heap_in_use().saturating_sub(heap_empty) as f64 / 1048576.0 * 1_000_000.0
            / table.declarations().max(1) as f64
    };
    let returning = table.consumer_window(&format!("BL{:012}", 2), 0, day);
    println!(
        "a start on it: store opened in {} ms, table loaded in {:.1} s ({} declarations, {} consumers in memory; {:.0} MiB of heap, {:.0} MiB of process RSS per million held, the journal's caches included); a returning buyer's stored parcels in its window: {}",
        opened.as_millis(),
        loaded.as_secs_f64(),
        table.declarations(),
        table.consumers(),
        heap(&table),
        super::resident_bytes().saturating_sub(rss_empty) as f64 / 1048576.0 * 1_000_000.0
            / table.declarations().max(1) as f64,
        returning.parcels,
    );
    let file = journal.consumer_days_bytes();
    println!(
        "the consumers' day totals on disk: {:.0} MiB = {:.0} bytes per stored consumer (the file's length; what it occupies: {:.0} MiB)",
        file as f64 / 1048576.0,
        file as f64 / stored.max(1) as f64,
        occupied(&bondline::journal::consumer_days_path(dir)) as f64 / 1048576.0,
    );
    // Live, every other one from a buyer of the year not held now (its stored days read).
    let started = Instant::now();
    for i in declarations..2 * declarations {
        let mut d = held(i);
        if i % 2 == 0 {
            d.consumer = Some(buyer((i / 2 * step + step / 2) % stored));
        }
        table.apply_declaration(&d);
    }
    let took = started.elapsed();
    println!(
        "then {declarations} more arriving live, every other one from a buyer of that year not held (its stored days read), the rest new buyers (a lookup that finds none): {:.1} s ({:.0} declarations/s), {:.0} MiB of heap and {:.0} MiB of process RSS per million held (the journal's caches included), {} consumers in memory",
        took.as_secs_f64(),
        declarations as f64 / took.as_secs_f64(),
        heap(&table),
        super::resident_bytes().saturating_sub(rss_empty) as f64 / 1048576.0 * 1_000_000.0
            / table.declarations().max(1) as f64,
        table.consumers(),
    );
    Ok(())
}

/// The table grown from empty when every parcel has a consumer of its own (a 64-character
/// identity hash, as most cross-border buyers are one-off) and is counted in its consumer's
/// history: what the consumers cost beside the declarations (the run above has one
/// consumer per ten declarations and counts none). Then three periods in which retention
/// forgets the oldest half and as many new declarations arrive from new buyers: the memory
/// stays that of the declarations held, whatever the buyers of the year.
fn distinct_consumers(declarations: u64) {
    let heap_empty = super::heap_in_use();
    let table = ClearanceTable::default();
    let day =
        bondline::rules::history::day_of(bondline::metrics::unix_ms(std::time::SystemTime::now()));
    let arrive = |i: u64| {
        let mut d = declaration(i);
        d.consumer = Some(buyer(i));
        if i % 2 == 0 {
            table.apply_many(&[
                Message::Declaration(&d),
                Message::Instruction(&instruction(i)),
            ]);
        } else {
            table.apply_declaration(&d);
        }
        table.count(&d.waybill, day);
    };
    let report = |what: &str, buyers: u64| {
        println!(
            "{what}: {:.0} MiB of heap per million declarations held ({} held, {} consumers in memory, {buyers} buyers so far)",
            super::heap_in_use().saturating_sub(heap_empty) as f64 / 1048576.0 * 1_000_000.0
                / table.declarations().max(1) as f64,
            table.declarations(),
            table.consumers(),
        );
    };
    (0..declarations).for_each(arrive);
    report(
        "the table alone, every parcel with a consumer of its own and counted",
        declarations,
    );
    let half = declarations / 2;
    for period in 1..=3u64 {
        let oldest = (period - 1) * half;
        for i in oldest..oldest + half {
            table.forget_waybill(&format!("BL{i:012}"));
        }
        let next = declarations + (period - 1) * half;
        (next..next + half).for_each(arrive);
        report(
            &format!("period {period}: the oldest half forgotten, as many new buyers declared"),
            next + half,
        );
    }
}
