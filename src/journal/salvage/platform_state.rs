//! The platform's state through salvage: every declaration, instruction, enterprise notice,
//! rule set and id or history entry of the old store that still parses is copied to the
//! fresh one (step 5 of the module's doc). Separate from the chain: platform state has no
//! order to keep, only entries to keep or drop one by one.

use bondline_devices::contract::{Declaration, EnterpriseNotice, Instruction};

use super::{SalvageError, SalvageReport};
use crate::journal::platform::StoredRules;
use crate::journal::Journal;

/// Copies every platform state entry that parses (see the module's doc, step 5).
pub(super) fn copy_platform_state(
    old: &Journal,
    fresh: &Journal,
    report: &mut SalvageReport,
) -> Result<(), SalvageError> {
    type Check = fn(&[u8]) -> bool;
    let parses_as = |t: &str| -> Check {
        match t {
            "declarations" => |v| {
                serde_json::from_slice::<Declaration>(crate::journal::integrity::payload(v)).is_ok()
            },
            "instructions" => |v| {
                serde_json::from_slice::<Instruction>(crate::journal::integrity::payload(v)).is_ok()
            },
            "enterprises" => |v| {
                serde_json::from_slice::<EnterpriseNotice>(crate::journal::integrity::payload(v))
                    .is_ok()
            },
            _ => |_| true,
        }
    };
    let [old_history, _] = crate::journal::platform::consumer_days::older_build_totals(&old.db)?;
    let [fresh_history, _] =
        crate::journal::platform::consumer_days::older_build_totals(&fresh.db)?;
    let trees = [
        ("declarations", &old.declarations, &fresh.declarations),
        ("instructions", &old.instructions, &fresh.instructions),
        (
            "instruction_ids",
            &old.instruction_ids,
            &fresh.instruction_ids,
        ),
        ("enterprises", &old.enterprises, &fresh.enterprises),
        ("notice_ids", &old.notice_ids, &fresh.notice_ids),
        ("counted", &old.counted, &fresh.counted),
        (
            "rule_update_ids",
            &old.rule_update_ids,
            &fresh.rule_update_ids,
        ),
        ("aging", &old.aging, &fresh.aging),
        ("received", &old.received, &fresh.received),
        ("history", &old_history, &fresh_history),
    ];
    for (name, from, to) in trees {
        let check = parses_as(name);
        for entry in from.iter() {
            let Ok((k, v)) = entry else {
                // A tree whose pages do not read ends here; what came before is kept.
                report.platform_dropped += 1;
                break;
            };
            if check(&v) {
                to.insert(k, v)?;
                report.platform_kept += 1;
            } else {
                report.platform_dropped += 1;
            }
        }
    }
    match old.stored_rules() {
        Ok(rules @ StoredRules::Platform { .. }) => {
            fresh.store_rules(&rules)?;
            report.platform_kept += 1;
        }
        Ok(StoredRules::Local) => {}
        Err(_) => report.platform_dropped += 1,
    }
    if let Ok(Some(month)) = old.report_sent() {
        fresh.set_report_sent(&month)?;
    }
    Ok(())
}
