//! `bondline-lab bench rules`: the rules engine's decision time over a clearance table of a
//! given size with consumer history, and the table's resident memory per million
//! declarations.

use std::time::Instant;

use bondline_devices::contract::SCHEMA;

use bondline::rules::ClearanceTable;

/// Decisions per second and the table's memory with a rule set of `rules` rules over
/// `declarations` declarations.
pub(super) fn run(
    declarations: u64,
    consumers: u64,
    rules: u32,
    evaluations: u64,
) -> anyhow::Result<()> {
    use bondline::floor::ScanRead;
    use bondline::rules::engine::RuleSet;
    use bondline::rules::{decide, Scan};
    use bondline_devices::contract::{
        Action, Declaration, DeclaredItem, EnterpriseAction, EnterpriseNotice, Instruction,
    };

    anyhow::ensure!(rules >= 4, "--rules must be at least 4");
    // A rule set of the requested size: the fail-closed core plus weight, limit and sampling
    // rules at assorted tolerances and rates.
    let mut text = String::from(
        "version = \"bench\"\nsampling_key_hex = \"000102030405060708090a0b0c0d0e0f\"\n\
         [[rules]]\nname = \"platform\"\nkind = \"instruction\"\npriority = 1000\n\
         [[rules]]\nname = \"suspended\"\nkind = \"suspended_enterprise\"\npriority = 900\ntarget = \"hold\"\n\
         [[rules]]\nname = \"identity\"\nkind = \"unverified_identity\"\npriority = 800\ntarget = \"hold\"\n\
         [[rules]]\nname = \"undeclared\"\nkind = \"undeclared\"\npriority = 700\ntarget = \"hold\"\n",
    );
    for i in 0..rules - 4 {
        let rule = match i % 3 {
            0 => format!(
                "kind = \"weight_mismatch\"\ntolerance_pct = {}.0\ntolerance_g = 50",
                5 + i
            ),
            1 => format!(
                "kind = \"consumer_limit\"\nwindow_days = {}\nmax_parcels = {}",
                1 + i % 365,
                10 + i
            ),
            _ => format!("kind = \"sampling\"\nrate_ppm = {}", 100 + i),
        };
        text.push_str(&format!(
            "[[rules]]\nname = \"r{i}\"\npriority = {}\ntarget = \"inspection\"\n{rule}\n",
            600 - i
        ));
    }
    let set = RuleSet::parse("bench", &text).map_err(|e| anyhow::anyhow!("{e}"))?;

    // Half of the declarations' parcels were scanned earlier (spread over the last 200 days):
    // that is the consumers' history. The other half arrive now.
    let calendar = bondline::rules::calendar::Calendar::default();
    let today = calendar.day_of(bondline::metrics::unix_ms(std::time::SystemTime::now()));
    let before = super::resident_bytes();
    let table = ClearanceTable::default();
    for i in 0..declarations {
        let waybill = format!("BL{i:012}");
        let d = Declaration {
            schema: SCHEMA,
            waybill: waybill.clone(),
            enterprise: format!("E{:08}", i % 500),
            consumer: Some(format!("{:016x}", i % consumers.max(1))),
            identity_verified: i % 97 != 0,
            value_minor: Some(1_000 + i % 50_000),
            currency: Some("CNY".into()),
            gross_weight_g: Some(200 + (i % 3000) as u32),
            items: vec![DeclaredItem {
                description: "cosmetics".into(),
                quantity: 1 + (i % 3) as u32,
            }],
            order_id: None,
            pieces: None,
            signature: None,
        };
        table.apply_declaration(&d);
        if i % 2 == 0 {
            table.apply_instruction(&Instruction {
                schema: SCHEMA,
                instruction_id: format!("I{i}"),
                waybill: waybill.clone(),
                action: if i % 10 == 0 {
                    Action::Inspect
                } else {
                    Action::Release
                },
                reason: String::new(),
                issued_at_ms: None,
                signature: None,
            });
        }
        if (i / consumers.max(1)) % 2 == 0 {
            table.count(&waybill, today - (i % 200) as u32);
        }
    }
    table.apply_notice(&EnterpriseNotice {
        schema: SCHEMA,
        notice_id: "N1".into(),
        enterprise: "E00000007".into(),
        action: EnterpriseAction::Suspend,
        reason: "licence review".into(),
        issued_at_ms: None,
        signature: None,
    });
    let after = super::resident_bytes();

    // Nanoseconds, three significant digits.
    let mut samples = bondline::metrics::new_hdr(3);
    let mut released = 0u64;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..evaluations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = x % (declarations + declarations / 10).max(1);
        let read = ScanRead::Waybill(format!("BL{i:012}"));
        let scan = Scan {
            xray: Default::default(),
            read: &read,
            weight_g: Some(200 + (i % 3000) as u32 + (x % 40) as u32),
            weighing: true,
            day: today,
            calendar: &calendar,
            prior: None,
        };
        let start = Instant::now();
        let d = decide(&table, &set, scan);
        samples.saturating_record((start.elapsed().as_nanos() as u64).max(1));
        if d.role == bondline_devices::contract::LaneRole::Release {
            released += 1;
        }
    }
    println!(
        "rules: {} rules, {declarations} declarations, {} consumers with history",
        set.rules.len(),
        table.consumers()
    );
    println!(
        "decision (lookup, consumer windows, all rules, inputs for the record): {} ({released} released)",
        bondline::metrics::Percentiles::of(&samples, 1000.0)
    );
    println!(
        "memory: {:.0} MiB resident for the table and history = {:.0} MiB per million declarations",
        after.saturating_sub(before) as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / 1048576.0 * 1_000_000.0 / declarations.max(1) as f64
    );
    Ok(())
}
