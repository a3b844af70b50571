//! Storing the platform's messages as they arrive, appended to the platform log (see
//! [`super::units`]): declarations and instructions, the enterprise notices, the ids of
//! instructions and notices seen but not kept (so a redelivery after a restart is still
//! recognised), and the marks of parcels counted in their consumer's history. Each is written
//! before its MQTT message is acknowledged (see the module's doc).

use bondline_devices::contract::{Declaration, EnterpriseNotice, Instruction};

use super::log::{self, Frame, Kind};
use super::today;
use crate::journal::integrity;
use crate::journal::{Journal, JournalError};

impl Journal {
    /// Stores a declaration; durable after the next [`Journal::flush`]. Returns the UTC day
    /// it was stored on (the table notes it: see `ClearanceTable::touch`).
    pub fn store_declaration(&self, d: &Declaration) -> Result<u32, JournalError> {
        let body = serde_json::to_vec(d).expect("declarations always serialize");
        let day = today();
        self.append(&[Frame::about(Kind::Declaration, day, &d.waybill, &body)])?;
        Ok(day)
    }

    /// [`Journal::store_declaration`] as if on `day`.
    #[cfg(test)]
    pub(super) fn store_declaration_on(
        &self,
        d: &Declaration,
        day: u32,
    ) -> Result<(), JournalError> {
        let body = serde_json::to_vec(d).expect("declarations always serialize");
        self.append_on(
            &[Frame::about(Kind::Declaration, day, &d.waybill, &body)],
            day,
        )
    }

    /// The last stored declaration of `waybill`, for `bondline explain`: read from the
    /// newest segment of the platform log back (a recent waybill is found at once, an old one
    /// after reading the log), then from a tree of an older build's layout not yet moved.
    pub fn declaration(&self, waybill: &str) -> Result<Option<Declaration>, JournalError> {
        for (day, _) in self.platform_log.segments()?.into_iter().rev() {
            let mut found = None;
            let read = self.platform_log.read(day, 0, &mut |b| {
                if !b.intact {
                    return Ok(true);
                }
                let Ok(frames) = log::frames(integrity::payload(&b.payload)) else {
                    return Ok(true);
                };
                for f in frames.map_while(Result::ok) {
                    if f.kind == Kind::Declaration && log::subject(&f).as_deref() == Some(waybill) {
                        if let Ok(d) = serde_json::from_slice::<Declaration>(f.body) {
                            found = Some(d);
                        }
                    }
                }
                Ok(true)
            });
            if let Err(super::files::ReadError::Journal(e)) = read {
                return Err(e);
            }
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(self
            .declarations
            .get(waybill.as_bytes())?
            .and_then(|v| serde_json::from_slice(integrity::payload(&v)).ok()))
    }

    /// Stores an instruction; durable after the next [`Journal::flush`]. Callers store only
    /// instructions that [`crate::rules::ClearanceTable::instruction_is_new`] accepts, so a
    /// stale one never overwrites. Its id is in it: the load marks it seen. Returns the UTC
    /// day it was stored on.
    pub fn store_instruction(&self, i: &Instruction) -> Result<u32, JournalError> {
        let body = serde_json::to_vec(i).expect("instructions always serialize");
        let day = today();
        self.append(&[Frame::about(Kind::Instruction, day, &i.waybill, &body)])?;
        Ok(day)
    }

    /// [`Journal::store_instruction`] as if on `day`.
    #[cfg(test)]
    pub(super) fn store_instruction_on(
        &self,
        i: &Instruction,
        day: u32,
    ) -> Result<(), JournalError> {
        let body = serde_json::to_vec(i).expect("instructions always serialize");
        self.append_on(
            &[Frame::about(Kind::Instruction, day, &i.waybill, &body)],
            day,
        )
    }

    /// Records an instruction id as seen without storing the instruction (a stale one), so it
    /// stays ignored after a restart too.
    pub fn remember_instruction_id(&self, i: &Instruction) -> Result<(), JournalError> {
        self.append(&[Frame::named(
            Kind::InstructionId,
            today(),
            i.instruction_id.as_bytes(),
        )])
    }

    /// [`Journal::remember_instruction_id`] as if on `day`.
    #[cfg(test)]
    pub(super) fn remember_instruction_id_on(
        &self,
        i: &Instruction,
        day: u32,
    ) -> Result<(), JournalError> {
        let id = i.instruction_id.as_bytes();
        self.append_on(&[Frame::named(Kind::InstructionId, day, id)], day)
    }

    /// Stores the notice now in force for its enterprise (its id is in it).
    pub fn store_notice(&self, n: &EnterpriseNotice) -> Result<(), JournalError> {
        let body = serde_json::to_vec(n).expect("notices always serialize");
        self.append(&[Frame::about(Kind::Notice, today(), &n.enterprise, &body)])
    }

    /// Records a notice id as seen without applying it (a stale one).
    pub fn remember_notice_id(&self, n: &EnterpriseNotice) -> Result<(), JournalError> {
        self.append(&[Frame::named(
            Kind::NoticeId,
            today(),
            n.notice_id.as_bytes(),
        )])
    }

    /// Marks waybills as counted in their consumers' history on the given UTC days. The
    /// writer stores the marks just before the records that carry them, so after a crash a
    /// parcel may be counted without its record (the limit errs strict), never the reverse.
    pub fn mark_counted<'a>(
        &self,
        marks: impl IntoIterator<Item = (&'a str, u32)>,
    ) -> Result<(), JournalError> {
        let frames: Vec<Frame<'a>> = marks
            .into_iter()
            .map(|(waybill, day)| Frame::named(Kind::Counted, day, waybill.as_bytes()))
            .collect();
        if frames.is_empty() {
            return Ok(());
        }
        // Durable now, before the records are even written: sled may flush those on its own.
        self.append(&frames)?;
        self.write_platform(true)
    }

    /// [`Journal::mark_counted`] as if on `day`, for marks of that day.
    #[cfg(test)]
    pub(super) fn mark_counted_on(&self, waybill: &str, day: u32) -> Result<(), JournalError> {
        self.append_on(&[Frame::named(Kind::Counted, day, waybill.as_bytes())], day)
    }
}
