//! The X-ray scanner's register contract.
//!
//! The scanner publishes its verdicts in a ring of input registers, read with function 04:
//! register `events` holds the head (the newest entry's sequence), and `ring` entries of
//! [`EVENT_LEN`] registers follow it, written round-robin:
//!
//! ```text
//! [sequence, scan id high, scan id low, result << 8 | material, t3, t2, t1, t0]
//! ```
//!
//! - `sequence` runs 1..=65535 and wraps to 1; 0 marks an empty slot.
//! - `scan id` is the scanner's own number for one passage through the tunnel. The
//!   scanner's image files carry the same number (see `docs/xray.md`).
//! - `result`: 1 clear, 2 suspect (the automatic judge), 3 operator mark (an officer at the
//!   console marked the parcel). A later entry for the same scan id supersedes an earlier
//!   one: an officer's mark typically comes a few seconds after the automatic verdict.
//! - `material`: 0 none, 1 organic, 2 inorganic, 3 metal, 4 mixed, 5 dense (impenetrable).
//! - `t3..t0`: when the parcel entered the tunnel, Unix milliseconds, big-endian words. The
//!   controller joins the verdict to a parcel by this time (see the daemon's `xray::join`),
//!   so the scanner's clock must be synchronised (NTP) with the gateway's.
//!
//! The encodings live here so the daemon and `xray-sim` cannot disagree on them.

use serde::{Deserialize, Serialize};

use crate::plc::{distance, next_seq};

/// Registers per event entry.
pub const EVENT_LEN: u16 = 8;

/// Validated register map and timing of one X-ray model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XrayMap {
    /// Modbus unit (slave) id used unless the device config overrides it.
    pub unit_id: u8,
    /// Timeout of every Modbus call.
    pub timeout_ms: u64,
    /// How often the event ring is read.
    pub poll_ms: u64,
    /// The ring's head register (input register); entries follow it.
    pub events: u16,
    /// Entries in the ring.
    pub ring: u16,
}

impl XrayMap {
    /// Registers of one read covering the head and the whole ring.
    pub fn ring_len(&self) -> u16 {
        1 + self.ring * EVENT_LEN
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawXrayMap {
    #[serde(default = "default_unit")]
    unit_id: u8,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default = "default_poll")]
    poll_ms: u64,
    events: u16,
    #[serde(default = "default_ring")]
    ring: u16,
}

fn default_unit() -> u8 {
    1
}
fn default_timeout() -> u64 {
    300
}
fn default_poll() -> u64 {
    100
}
fn default_ring() -> u16 {
    15
}

impl RawXrayMap {
    pub(crate) fn validate(self) -> Result<XrayMap, (&'static str, String)> {
        if self.timeout_ms == 0 || self.timeout_ms > 10_000 {
            return Err(("timeout_ms", "must be between 1 and 10000".into()));
        }
        if self.poll_ms == 0 || self.poll_ms > 5_000 {
            return Err(("poll_ms", "must be between 1 and 5000".into()));
        }
        if self.ring == 0 || 1 + u32::from(self.ring) * u32::from(EVENT_LEN) > 125 {
            return Err((
                "ring",
                "must be 1 to 15 entries, so one read covers the ring".into(),
            ));
        }
        if u32::from(self.events) + 1 + u32::from(self.ring) * u32::from(EVENT_LEN)
            > u32::from(u16::MAX) + 1
        {
            return Err(("events", "the ring runs past register 65535".into()));
        }
        Ok(XrayMap {
            unit_id: self.unit_id,
            timeout_ms: self.timeout_ms,
            poll_ms: self.poll_ms,
            events: self.events,
            ring: self.ring,
        })
    }
}

/// The scanner's verdict on one passage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XrayResult {
    Clear,
    /// The automatic image judge flagged the parcel.
    Suspect,
    /// An officer at the console marked the parcel.
    OperatorMark,
}

impl XrayResult {
    pub fn to_u8(self) -> u8 {
        match self {
            XrayResult::Clear => 1,
            XrayResult::Suspect => 2,
            XrayResult::OperatorMark => 3,
        }
    }

    pub fn from_u8(v: u8) -> Option<XrayResult> {
        Some(match v {
            1 => XrayResult::Clear,
            2 => XrayResult::Suspect,
            3 => XrayResult::OperatorMark,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            XrayResult::Clear => "clear",
            XrayResult::Suspect => "suspect",
            XrayResult::OperatorMark => "operator_mark",
        }
    }

    /// Whether the verdict flags the parcel.
    pub fn flags(self) -> bool {
        !matches!(self, XrayResult::Clear)
    }
}

/// The material class the scanner saw, if it reports one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Material {
    Organic,
    Inorganic,
    Metal,
    Mixed,
    /// Too dense to see through.
    Dense,
}

impl Material {
    pub fn to_u8(m: Option<Material>) -> u8 {
        match m {
            None => 0,
            Some(Material::Organic) => 1,
            Some(Material::Inorganic) => 2,
            Some(Material::Metal) => 3,
            Some(Material::Mixed) => 4,
            Some(Material::Dense) => 5,
        }
    }

    /// `Ok(None)` for 0 (no class); `Err` for a code outside the contract.
    pub fn from_u8(v: u8) -> Result<Option<Material>, u8> {
        Ok(Some(match v {
            0 => return Ok(None),
            1 => Material::Organic,
            2 => Material::Inorganic,
            3 => Material::Metal,
            4 => Material::Mixed,
            5 => Material::Dense,
            other => return Err(other),
        }))
    }
}

/// One entry of the event ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XrayEvent {
    /// 1..=65535, wrapping to 1; 0 marks an empty slot.
    pub seq: u16,
    pub scan_id: u32,
    pub result: XrayResult,
    pub material: Option<Material>,
    /// When the parcel entered the tunnel, Unix ms by the scanner's clock.
    pub entered_at_ms: u64,
}

/// Why an entry could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("entry {seq}: unknown result code {code}")]
    Result { seq: u16, code: u8 },
    #[error("entry {seq}: unknown material code {code}")]
    Material { seq: u16, code: u8 },
    #[error("entry {seq}: {len} registers, expected {EVENT_LEN}")]
    Length { seq: u16, len: usize },
}

impl XrayEvent {
    pub fn to_registers(self) -> [u16; EVENT_LEN as usize] {
        let t = self.entered_at_ms;
        [
            self.seq,
            (self.scan_id >> 16) as u16,
            self.scan_id as u16,
            ((self.result.to_u8() as u16) << 8) | Material::to_u8(self.material) as u16,
            (t >> 48) as u16,
            (t >> 32) as u16,
            (t >> 16) as u16,
            t as u16,
        ]
    }

    /// Decodes one entry; `Ok(None)` for an empty slot.
    pub fn from_registers(regs: &[u16]) -> Result<Option<XrayEvent>, EventError> {
        let seq = regs.first().copied().unwrap_or(0);
        if seq == 0 {
            return Ok(None);
        }
        let [_, hi, lo, code, t3, t2, t1, t0] = regs else {
            return Err(EventError::Length {
                seq,
                len: regs.len(),
            });
        };
        let result = XrayResult::from_u8((code >> 8) as u8).ok_or(EventError::Result {
            seq,
            code: (code >> 8) as u8,
        })?;
        let material =
            Material::from_u8(*code as u8).map_err(|code| EventError::Material { seq, code })?;
        Ok(Some(XrayEvent {
            seq,
            scan_id: ((*hi as u32) << 16) | *lo as u32,
            result,
            material,
            entered_at_ms: ((*t3 as u64) << 48)
                | ((*t2 as u64) << 32)
                | ((*t1 as u64) << 16)
                | *t0 as u64,
        }))
    }
}

/// What a read of the ring holds that the reader has not seen.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NewEvents {
    /// Newer than the last seen, oldest first.
    pub events: Vec<XrayEvent>,
    /// Entries newer than the last seen that would not decode (garbage from the device).
    pub errors: Vec<EventError>,
    /// Entries overwritten before they could be read.
    pub missed: u16,
    /// The head went backwards: the scanner restarted its sequence; nothing counts as missed.
    pub restarted: bool,
}

/// A head further ahead than this is taken as a head that went backwards.
const RESTART_DISTANCE: u16 = 32_768;

/// The entries of a ring read (`head` then entries) newer than `last_seen`. Sequence
/// numbers are compared in 16-bit serial arithmetic, skipping 0, so wrapping is handled;
/// `last_seen == 0` means a first read, which takes whatever the ring holds.
pub fn new_events(regs: &[u16], last_seen: u16) -> NewEvents {
    let mut out = NewEvents::default();
    let Some((&head, entries)) = regs.split_first() else {
        return out;
    };
    if head == 0 || head == last_seen {
        return out;
    }
    let ring = (entries.len() / EVENT_LEN as usize) as u16;
    let behind = match distance(last_seen, head) {
        // A first read takes whatever the ring holds. So does a head that went backwards
        // (more than half the sequence space ahead is behind): the scanner restarted its
        // numbering, and what its ring holds now is new.
        _ if last_seen == 0 => ring,
        d if d > RESTART_DISTANCE => {
            out.restarted = true;
            ring
        }
        d => d,
    };
    out.missed = behind.saturating_sub(ring);
    let fresh = |seq: u16| distance(seq, head) < behind.min(ring);
    for chunk in entries.chunks_exact(EVENT_LEN as usize) {
        match XrayEvent::from_registers(chunk) {
            Ok(Some(e)) if fresh(e.seq) => out.events.push(e),
            Ok(_) => {}
            Err(e) => {
                if fresh(chunk[0]) {
                    out.errors.push(e);
                }
            }
        }
    }
    out.events
        .sort_by_key(|e| std::cmp::Reverse(distance(e.seq, head)));
    out
}

/// The scanner side of the ring: where the next entry goes. Used by `xray-sim` and tests.
#[derive(Debug, Clone)]
pub struct RingWriter {
    ring: u16,
    head: u16,
    count: u64,
}

impl RingWriter {
    pub fn new(ring: u16) -> RingWriter {
        RingWriter {
            ring: ring.max(1),
            head: 0,
            count: 0,
        }
    }

    /// Stamps `event` with the next sequence and returns the register offset of its slot,
    /// relative to the head register, and the head's new value.
    pub fn push(&mut self, event: &mut XrayEvent) -> (u16, u16) {
        self.head = next_seq(self.head);
        event.seq = self.head;
        let slot = (self.count % self.ring as u64) as u16;
        self.count += 1;
        (1 + slot * EVENT_LEN, self.head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(scan_id: u32, result: XrayResult) -> XrayEvent {
        XrayEvent {
            seq: 0,
            scan_id,
            result,
            material: Some(Material::Metal),
            entered_at_ms: 1_790_000_000_123,
        }
    }

    #[test]
    fn entries_round_trip_and_garbage_is_named() {
        let mut e = event(0x0102_0304, XrayResult::OperatorMark);
        e.seq = 5;
        assert_eq!(XrayEvent::from_registers(&e.to_registers()), Ok(Some(e)));
        assert_eq!(XrayEvent::from_registers(&[0; 8]), Ok(None));
        let mut bad = e.to_registers();
        bad[3] = 0x0901;
        assert_eq!(
            XrayEvent::from_registers(&bad),
            Err(EventError::Result { seq: 5, code: 9 })
        );
        bad[3] = 0x0109;
        assert_eq!(
            XrayEvent::from_registers(&bad),
            Err(EventError::Material { seq: 5, code: 9 })
        );
    }

    #[test]
    fn new_events_follow_the_ring_across_the_wrap() {
        let ring = 3u16;
        let mut regs = vec![0u16; 1 + (ring * EVENT_LEN) as usize];
        let mut w = RingWriter::new(ring);
        w.head = 65534;
        for scan in 0..4u32 {
            let mut e = event(scan, XrayResult::Clear);
            let (at, head) = w.push(&mut e);
            regs[at as usize..(at + EVENT_LEN) as usize].copy_from_slice(&e.to_registers());
            regs[0] = head;
        }
        // Sequences 65535, 1, 2, 3; the ring of 3 holds 1, 2, 3.
        let n = new_events(&regs, 1);
        assert_eq!(
            n.events.iter().map(|e| e.scan_id).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(n.missed, 0);
        let n = new_events(&regs, 65534);
        assert_eq!(n.events.len(), 3);
        assert_eq!(n.missed, 1);
        assert!(new_events(&regs, 3).events.is_empty());
        // A scanner that restarted its numbering: its ring is taken as new, nothing missed.
        let n = new_events(&regs, 10);
        assert!(n.restarted);
        assert_eq!(n.missed, 0);
        assert_eq!(n.events.len(), 3);
        // A garbage entry among the new ones is reported, the others still read.
        let slot = 1 + 2 * EVENT_LEN as usize;
        regs[slot + 3] = 0x7f00;
        let n = new_events(&regs, 1);
        assert_eq!(n.events.len(), 1);
        assert_eq!(n.errors.len(), 1);
    }

    #[test]
    fn the_profile_validates() {
        let p = crate::Profile::parse("t", "name = \"x\"\n[xray]\nevents = 0\nring = 16\n");
        assert!(p.unwrap_err().to_string().contains("ring"));
        // 8192 entries of 8 registers would wrap a u16 to 0.
        let p = crate::Profile::parse("t", "name = \"x\"\n[xray]\nevents = 0\nring = 8192\n");
        assert!(p.unwrap_err().to_string().contains("ring"));
        let p = crate::Profile::parse("t", "name = \"x\"\n[xray]\nevents = 0\n").unwrap();
        assert_eq!(p.xray().unwrap().ring, 15);
    }
}
