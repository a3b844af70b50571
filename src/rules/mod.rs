//! Customs rules: what the platform has told this gateway, and the lane decision.
//!
//! This module is pure: no I/O, no clock, no locks. [`ClearanceTable`] holds the declarations
//! and instructions received from the platform; [`decide`] maps a scan to a lane role with a
//! [`engine::RuleSet`] over that table. It fails closed: the release lane needs a declaration
//! *and* a release instruction and no other rule firing; everything else goes to hold,
//! inspection or exception.

pub mod engine;

use std::collections::{HashMap, HashSet};

use bondline_devices::contract::{Declaration, Instruction, LaneRole};

/// What the scanner reported for one parcel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanRead {
    Waybill(String),
    NoRead,
}

/// The outcome of [`decide`]: the lane role and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub role: LaneRole,
    /// The rule that decided, for counting and lookup.
    pub rule: String,
    /// Human-readable reason, for customs staff.
    pub reason: String,
    pub instruction_id: Option<String>,
    /// Every rule that fired, the deciding one first.
    pub fired: Vec<engine::Fired>,
    /// The rule set's version.
    pub rule_set: String,
}

/// Declarations and instructions by waybill, as last received from the platform.
#[derive(Debug, Default, Clone)]
pub struct ClearanceTable {
    declarations: HashMap<String, Declaration>,
    instructions: HashMap<String, Instruction>,
    /// Every instruction id ever applied or superseded, so a redelivery of an old
    /// instruction cannot replace a newer one.
    seen_instructions: HashSet<String>,
}

/// What applying a platform message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The table changed.
    Changed,
    /// Same message seen before (redelivery), or older than what the table holds.
    Unchanged,
}

impl ClearanceTable {
    pub fn declarations(&self) -> usize {
        self.declarations.len()
    }

    pub fn instructions(&self) -> usize {
        self.instructions.len()
    }

    /// Whether applying `d` would change the table (it is not a redelivery).
    pub fn declaration_is_new(&self, d: &Declaration) -> bool {
        self.declarations.get(&d.waybill) != Some(d)
    }

    /// Stores a declaration; a later declaration of the same waybill replaces it.
    pub fn apply_declaration(&mut self, d: Declaration) -> Applied {
        if !self.declaration_is_new(&d) {
            return Applied::Unchanged;
        }
        self.declarations.insert(d.waybill.clone(), d);
        Applied::Changed
    }

    /// Whether applying `i` would change the table. An instruction id seen before is a
    /// redelivery; an instruction issued before the one held is stale.
    pub fn instruction_is_new(&self, i: &Instruction) -> bool {
        if self.seen_instructions.contains(&i.instruction_id) {
            return false;
        }
        match self.instructions.get(&i.waybill) {
            Some(old) => match (old.issued_at_ms, i.issued_at_ms) {
                (Some(old_at), Some(new_at)) => new_at >= old_at,
                _ => true,
            },
            None => true,
        }
    }

    /// Stores an instruction unless it is a redelivery or stale (see
    /// [`ClearanceTable::instruction_is_new`]), so a late redelivery cannot undo a newer order.
    pub fn apply_instruction(&mut self, i: Instruction) -> Applied {
        let fresh = self.instruction_is_new(&i);
        self.seen_instructions.insert(i.instruction_id.clone());
        if !fresh {
            return Applied::Unchanged;
        }
        if let Some(old) = self.instructions.insert(i.waybill.clone(), i) {
            self.seen_instructions.insert(old.instruction_id);
        }
        Applied::Changed
    }

    /// Puts back an instruction that was stored as current (restoring from the store): its id
    /// is already marked seen, so [`ClearanceTable::apply_instruction`] would refuse it.
    pub fn restore_instruction(&mut self, i: Instruction) {
        self.seen_instructions.insert(i.instruction_id.clone());
        self.instructions.insert(i.waybill.clone(), i);
    }

    /// Records an instruction id as seen without applying anything (restoring from the store).
    pub fn mark_instruction_seen(&mut self, id: &str) {
        self.seen_instructions.insert(id.to_string());
    }
}

/// Decides the lane role of one scanned parcel with `rules`. Pure and light: it runs on the
/// decision path for every parcel.
pub fn decide(table: &ClearanceTable, rules: &engine::RuleSet, read: &ScanRead) -> Decision {
    let waybill = match read {
        ScanRead::NoRead => {
            return Decision {
                role: LaneRole::Exception,
                rule: "no_read".into(),
                reason: "scanner could not read a waybill".into(),
                instruction_id: None,
                fired: Vec::new(),
                rule_set: rules.version.clone(),
            }
        }
        ScanRead::Waybill(w) => w,
    };
    let declaration = table.declarations.get(waybill);
    let instruction = table.instructions.get(waybill);
    let e = engine::evaluate(
        rules,
        &engine::Inputs {
            waybill,
            declaration,
            instruction,
            ..Default::default()
        },
    );
    let first = e.fired.first();
    let instruction_id = instruction
        .filter(|_| e.fired.iter().any(|f| f.rule_kind_instruction))
        .map(|i| i.instruction_id.clone());
    Decision {
        role: e.role,
        rule: first.map_or_else(String::new, |f| f.rule.clone()),
        reason: first.map_or_else(String::new, |f| f.reason.clone()),
        instruction_id,
        fired: e.fired,
        rule_set: e.version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::contract::{Action, SCHEMA};

    fn decl(w: &str) -> Declaration {
        Declaration {
            schema: SCHEMA,
            waybill: w.into(),
            enterprise: "E1".into(),
            consumer: None,
            identity_verified: true,
            value_minor: None,
            currency: None,
            gross_weight_g: None,
            items: vec![],
        }
    }

    fn instr(w: &str, id: &str, action: Action, at: Option<u64>) -> Instruction {
        Instruction {
            schema: SCHEMA,
            instruction_id: id.into(),
            waybill: w.into(),
            action,
            reason: String::new(),
            issued_at_ms: at,
        }
    }

    fn role(t: &ClearanceTable, w: &str) -> LaneRole {
        decide(t, &engine::RuleSet::builtin(), &ScanRead::Waybill(w.into())).role
    }

    #[test]
    fn each_case_goes_to_its_lane() {
        let mut t = ClearanceTable::default();
        for w in ["R", "I", "H", "D"] {
            t.apply_declaration(decl(w));
        }
        t.apply_instruction(instr("R", "1", Action::Release, None));
        t.apply_instruction(instr("I", "2", Action::Inspect, None));
        t.apply_instruction(instr("H", "3", Action::Hold, None));
        t.apply_instruction(instr("U", "4", Action::Release, None));
        assert_eq!(role(&t, "R"), LaneRole::Release);
        assert_eq!(role(&t, "I"), LaneRole::Inspection);
        assert_eq!(role(&t, "H"), LaneRole::Hold);
        assert_eq!(role(&t, "D"), LaneRole::Hold);
        assert_eq!(
            role(&t, "U"),
            LaneRole::Hold,
            "release without declaration holds"
        );
        assert_eq!(role(&t, "nobody"), LaneRole::Hold);
        assert_eq!(
            decide(&t, &engine::RuleSet::builtin(), &ScanRead::NoRead).role,
            LaneRole::Exception
        );
    }

    #[test]
    fn release_needs_both_declaration_and_release_instruction() {
        // Exhaustive over the small input space: declared or not × each instruction.
        let actions = [
            None,
            Some(Action::Release),
            Some(Action::Inspect),
            Some(Action::Hold),
        ];
        for declared in [false, true] {
            for a in actions {
                let mut t = ClearanceTable::default();
                if declared {
                    t.apply_declaration(decl("W"));
                }
                if let Some(a) = a {
                    t.apply_instruction(instr("W", "x", a, None));
                }
                let released = role(&t, "W") == LaneRole::Release;
                assert_eq!(released, declared && a == Some(Action::Release));
            }
        }
    }

    #[test]
    fn redelivery_and_stale_instructions_do_not_change_the_table() {
        let mut t = ClearanceTable::default();
        t.apply_declaration(decl("W"));
        assert_eq!(
            t.apply_instruction(instr("W", "a", Action::Inspect, Some(20))),
            Applied::Changed
        );
        assert_eq!(
            t.apply_instruction(instr("W", "a", Action::Inspect, Some(20))),
            Applied::Unchanged
        );
        assert_eq!(
            t.apply_instruction(instr("W", "old", Action::Release, Some(10))),
            Applied::Unchanged
        );
        assert_eq!(role(&t, "W"), LaneRole::Inspection);
        assert_eq!(t.apply_declaration(decl("W")), Applied::Unchanged);
        // A replaced instruction delivered again (without a time) does not come back.
        assert_eq!(
            t.apply_instruction(instr("W", "b", Action::Hold, None)),
            Applied::Changed
        );
        assert_eq!(
            t.apply_instruction(instr("W", "a", Action::Inspect, None)),
            Applied::Unchanged
        );
        assert_eq!(role(&t, "W"), LaneRole::Hold);
    }
}
