//! Every platform → gateway message parser on arbitrary payloads, and the rules engine on any
//! rule set text that parses: rejected or accepted, never a panic.
#![no_main]

use bondline_devices::contract::{Declaration, EnterpriseNotice, Instruction, RuleSetUpdate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Declaration::parse(data);
    let _ = Instruction::parse(data);
    let _ = EnterpriseNotice::parse(data);
    if let Ok(u) = RuleSetUpdate::parse(data) {
        let _ = bondline::rules::engine::RuleSet::parse("fuzz", &u.rules_toml);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(set) = bondline::rules::engine::RuleSet::parse("fuzz", text) {
            assert!(!set.version.is_empty());
        }
    }
});
