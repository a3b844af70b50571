//! Storing the platform's messages as they arrive: declarations and instructions by
//! waybill, the enterprise notice in force, the ids of instructions and notices seen (so a
//! redelivery after a restart is still recognised), and the marks of parcels counted in their
//! consumer's history. Each is written before its MQTT message is acknowledged (see the
//! module's doc).

use bondline_devices::contract::{Declaration, EnterpriseNotice, Instruction};

use super::{today, TREE_DECLARATIONS, TREE_ENTERPRISES, TREE_INSTRUCTIONS};
use crate::journal::integrity;
use crate::journal::{Journal, JournalError};

impl Journal {
    /// Stores a declaration; durable after the next [`Journal::flush`].
    pub fn store_declaration(&self, d: &Declaration) -> Result<(), JournalError> {
        self.store_declaration_on(d, today())
    }

    pub(super) fn store_declaration_on(
        &self,
        d: &Declaration,
        day: u32,
    ) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(d).expect("declarations always serialize");
        let bytes = self.seal(TREE_DECLARATIONS, d.waybill.as_bytes(), bytes);
        let k = d.waybill.as_bytes();
        let old = self.declarations.insert(k, bytes.as_slice())?;
        self.platform_change(k, old.as_deref(), Some(&bytes));
        self.touch_waybill(&d.waybill, day)
    }

    /// The stored declaration of `waybill`, for lookups.
    pub fn declaration(&self, waybill: &str) -> Result<Option<Declaration>, JournalError> {
        Ok(self
            .declarations
            .get(waybill.as_bytes())?
            .and_then(|v| serde_json::from_slice(integrity::payload(&v)).ok()))
    }

    /// Stores an instruction; durable after the next [`Journal::flush`]. Callers store only
    /// instructions that [`crate::rules::ClearanceTable::instruction_is_new`] accepts, so a stale one never
    /// overwrites.
    pub fn store_instruction(&self, i: &Instruction) -> Result<(), JournalError> {
        self.store_instruction_on(i, today())
    }

    pub(super) fn store_instruction_on(
        &self,
        i: &Instruction,
        day: u32,
    ) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(i).expect("instructions always serialize");
        let bytes = self.seal(TREE_INSTRUCTIONS, i.waybill.as_bytes(), bytes);
        self.remember_instruction_id_on(i, day)?;
        let k = i.waybill.as_bytes();
        let old = self.instructions.insert(k, bytes.as_slice())?;
        self.platform_change(k, old.as_deref(), Some(&bytes));
        self.touch_waybill(&i.waybill, day)
    }

    /// Records an instruction id as seen without storing the instruction (a stale one), so it
    /// stays ignored after a restart too.
    pub fn remember_instruction_id(&self, i: &Instruction) -> Result<(), JournalError> {
        self.remember_instruction_id_on(i, today())
    }

    pub(super) fn remember_instruction_id_on(
        &self,
        i: &Instruction,
        day: u32,
    ) -> Result<(), JournalError> {
        let k = i.instruction_id.as_bytes();
        let old = self.instruction_ids.insert(k, i.waybill.as_bytes())?;
        self.platform_change(k, old.as_deref(), Some(i.waybill.as_bytes()));
        let first = old.is_none();
        if first {
            self.touch_instruction_id(&i.instruction_id, day)?;
        }
        Ok(())
    }

    /// Stores the notice now in force for its enterprise.
    pub fn store_notice(&self, n: &EnterpriseNotice) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(n).expect("notices always serialize");
        let bytes = self.seal(TREE_ENTERPRISES, n.enterprise.as_bytes(), bytes);
        self.remember_notice_id(n)?;
        let k = n.enterprise.as_bytes();
        let old = self.enterprises.insert(k, bytes.as_slice())?;
        self.platform_change(k, old.as_deref(), Some(&bytes));
        Ok(())
    }

    /// Records a notice id as seen without applying it (a stale one).
    pub fn remember_notice_id(&self, n: &EnterpriseNotice) -> Result<(), JournalError> {
        let k = n.notice_id.as_bytes();
        let old = self.notice_ids.insert(k, n.enterprise.as_bytes())?;
        self.platform_change(k, old.as_deref(), Some(n.enterprise.as_bytes()));
        Ok(())
    }

    /// Marks waybills as counted in their consumers' history on the given UTC days. The
    /// writer stores the marks just before the records that carry them, so after a crash a
    /// parcel may be counted without its record (the limit errs strict), never the reverse.
    pub fn mark_counted<'a>(
        &self,
        marks: impl IntoIterator<Item = (&'a str, u32)>,
    ) -> Result<(), JournalError> {
        let mut batch = sled::Batch::default();
        let mut any = false;
        for (waybill, day) in marks {
            batch.insert(waybill.as_bytes(), &day.to_be_bytes()[..]);
            any = true;
        }
        if any {
            self.counted.apply_batch(batch)?;
        }
        Ok(())
    }
}
