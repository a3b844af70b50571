//! The sorter PLC's register contract.
//!
//! One divert command is a block of four holding registers written in one call, so the PLC
//! never sees half a command: `[sequence, lane, parcel id high word, parcel id low word]`.
//! The PLC acknowledges by copying the sequence into the `ack` holding register. Sequences
//! run 1..=65535 and wrap to 1; 0 means "nothing written yet". A later command for the same
//! parcel id replaces the earlier one, as long as the parcel has not reached its gate.
//!
//! Optional sections of the profile, both present in the built-in `sorter-plc`:
//! - **heartbeat**: the controller increments one register every `interval_ms`, the PLC
//!   another. Each side treats a counter that has not changed for `timeout_ms` as a dead peer.
//!   A PLC that loses the controller's heartbeat sends every parcel to its fail-safe lane
//!   (configured in the PLC, normally the hold or inspection lane) until the heartbeat
//!   returns; a controller that loses the PLC's drops the link and reconnects.
//! - **status**: one register per lane (lanes 1..=16) with bit 0 "full" and bit 1
//!   "disabled", which the controller respects when choosing a lane; and a ring of
//!   disposition entries in which the PLC reports what became of each parcel.
//!
//! The encodings live here so the daemon and `plc-sim` cannot disagree on them.

use serde::Deserialize;

/// Validated register map of one PLC model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlcMap {
    /// Modbus unit (slave) id used unless the device config overrides it.
    pub unit_id: u8,
    /// Timeout for every Modbus call and for the acknowledge handshake.
    pub timeout_ms: u64,
    pub divert: DivertRegisters,
    pub heartbeat: Option<HeartbeatRegisters>,
    pub status: Option<StatusRegisters>,
}

/// The two heartbeat counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatRegisters {
    /// Holding register the controller increments.
    pub controller: u16,
    /// Holding register the PLC increments.
    pub plc: u16,
    pub interval_ms: u64,
    /// A counter unchanged for this long means the peer is gone.
    pub timeout_ms: u64,
}

/// Lane states and the disposition ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRegisters {
    /// First of [`LANE_REGISTERS`] registers; lane `n` is at `lanes + n - 1`.
    pub lanes: u16,
    /// The ring's head register (the newest entry's sequence); entries follow it.
    pub dispositions: u16,
    /// Entries in the ring, each [`DISPOSITION_LEN`] registers.
    pub ring: u16,
    /// How often the controller reads the status and the ring.
    pub poll_ms: u64,
}

/// Lanes covered by the lane-state registers.
pub const LANE_REGISTERS: u16 = 16;
/// Registers per disposition entry: `[sequence, parcel high, parcel low, code << 8 | lane]`.
pub const DISPOSITION_LEN: u16 = 4;
/// Lane-state bit: the lane cannot take more parcels now.
pub const LANE_FULL: u16 = 1;
/// Lane-state bit: the lane is switched off.
pub const LANE_DISABLED: u16 = 2;

impl StatusRegisters {
    /// Registers of one read covering the head and the whole ring.
    pub fn ring_len(&self) -> u16 {
        1 + self.ring * DISPOSITION_LEN
    }
}

/// Where the divert command and its acknowledge live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DivertRegisters {
    /// First of the four holding registers of the divert command.
    pub block: u16,
    /// Holding register the PLC copies the accepted sequence into.
    pub ack: u16,
    /// Pause between reads of `ack` while waiting for the acknowledge.
    pub ack_poll_ms: u64,
}

/// Number of registers in a divert command block.
pub const DIVERT_BLOCK_LEN: u16 = 4;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlcMap {
    #[serde(default = "default_unit")]
    unit_id: u8,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    divert: RawDivert,
    #[serde(default)]
    heartbeat: Option<RawHeartbeat>,
    #[serde(default)]
    status: Option<RawStatus>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeartbeat {
    controller: u16,
    plc: u16,
    #[serde(default = "default_hb_interval")]
    interval_ms: u64,
    #[serde(default = "default_hb_timeout")]
    timeout_ms: u64,
}

fn default_hb_interval() -> u64 {
    200
}
fn default_hb_timeout() -> u64 {
    1000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    lanes: u16,
    dispositions: u16,
    #[serde(default = "default_ring")]
    ring: u16,
    #[serde(default = "default_status_poll")]
    poll_ms: u64,
}

fn default_ring() -> u16 {
    30
}
fn default_status_poll() -> u64 {
    50
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDivert {
    block: u16,
    ack: u16,
    #[serde(default = "default_poll")]
    ack_poll_ms: u64,
}

fn default_unit() -> u8 {
    1
}
fn default_timeout() -> u64 {
    200
}
fn default_poll() -> u64 {
    1
}

impl RawPlcMap {
    pub(crate) fn validate(self) -> Result<PlcMap, (&'static str, String)> {
        if self.timeout_ms == 0 || self.timeout_ms > 10_000 {
            return Err(("timeout_ms", "must be between 1 and 10000".into()));
        }
        let block = self.divert.block;
        let end = block as u32 + DIVERT_BLOCK_LEN as u32;
        if end > u16::MAX as u32 + 1 {
            return Err(("divert.block", "block runs past register 65535".into()));
        }
        let ack = self.divert.ack as u32;
        if ack >= block as u32 && ack < end {
            return Err(("divert.ack", "must not lie inside the divert block".into()));
        }
        if self.divert.ack_poll_ms > self.timeout_ms {
            return Err(("divert.ack_poll_ms", "must not exceed timeout_ms".into()));
        }
        // Every register range must fit the address space and none may overlap another.
        let mut ranges: Vec<(&'static str, u32, u32)> = vec![
            ("divert.block", block as u32, DIVERT_BLOCK_LEN as u32),
            ("divert.ack", ack, 1),
        ];
        let heartbeat = match self.heartbeat {
            None => None,
            Some(h) => {
                if h.interval_ms == 0 || h.timeout_ms < 2 * h.interval_ms {
                    return Err((
                        "heartbeat.timeout_ms",
                        "must be at least twice interval_ms (and interval_ms above 0)".into(),
                    ));
                }
                ranges.push(("heartbeat.controller", h.controller as u32, 1));
                ranges.push(("heartbeat.plc", h.plc as u32, 1));
                Some(HeartbeatRegisters {
                    controller: h.controller,
                    plc: h.plc,
                    interval_ms: h.interval_ms,
                    timeout_ms: h.timeout_ms,
                })
            }
        };
        let status = match self.status {
            None => None,
            Some(st) => {
                if st.ring == 0 || 1 + st.ring * DISPOSITION_LEN > 125 {
                    return Err((
                        "status.ring",
                        "must be 1 to 31 entries, so one read covers the ring".into(),
                    ));
                }
                if st.poll_ms == 0 || st.poll_ms > 1000 {
                    return Err(("status.poll_ms", "must be 1 to 1000".into()));
                }
                ranges.push(("status.lanes", st.lanes as u32, LANE_REGISTERS as u32));
                ranges.push((
                    "status.dispositions",
                    st.dispositions as u32,
                    1 + (st.ring * DISPOSITION_LEN) as u32,
                ));
                Some(StatusRegisters {
                    lanes: st.lanes,
                    dispositions: st.dispositions,
                    ring: st.ring,
                    poll_ms: st.poll_ms,
                })
            }
        };
        for (i, (name, start, len)) in ranges.iter().enumerate() {
            if start + len > u16::MAX as u32 + 1 {
                return Err((name, "runs past register 65535".into()));
            }
            for (other, ostart, olen) in &ranges[..i] {
                if start < &(ostart + olen) && ostart < &(start + len) {
                    return Err((name, format!("overlaps {other}")));
                }
            }
        }
        Ok(PlcMap {
            unit_id: self.unit_id,
            timeout_ms: self.timeout_ms,
            divert: DivertRegisters {
                block: self.divert.block,
                ack: self.divert.ack,
                ack_poll_ms: self.divert.ack_poll_ms,
            },
            heartbeat,
            status,
        })
    }
}

/// One divert command as it travels in registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DivertCommand {
    pub seq: u16,
    pub lane: u16,
    pub parcel: u32,
}

impl DivertCommand {
    pub fn to_registers(self) -> [u16; DIVERT_BLOCK_LEN as usize] {
        [
            self.seq,
            self.lane,
            (self.parcel >> 16) as u16,
            self.parcel as u16,
        ]
    }

    /// Decodes a written block; `None` if it has the wrong length or sequence 0.
    pub fn from_registers(regs: &[u16]) -> Option<DivertCommand> {
        match regs {
            [seq, lane, hi, lo] if *seq != 0 => Some(DivertCommand {
                seq: *seq,
                lane: *lane,
                parcel: ((*hi as u32) << 16) | *lo as u32,
            }),
            _ => None,
        }
    }
}

/// What the PLC did with a parcel, as reported in the disposition ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DispositionCode {
    /// Sorted to the commanded lane.
    Sorted,
    /// The commanded lane was full; sent to the overflow lane named in the entry.
    Overflow,
    /// No command arrived before the parcel reached its gate; sent to the exception lane.
    NoDestination,
    /// Tracking was lost (the parcel slipped, was removed or merged); where it went is unknown.
    Lost,
    /// The controller's heartbeat was gone; sent to the fail-safe lane.
    FailSafe,
}

impl DispositionCode {
    pub fn to_u8(self) -> u8 {
        match self {
            DispositionCode::Sorted => 1,
            DispositionCode::Overflow => 2,
            DispositionCode::NoDestination => 3,
            DispositionCode::Lost => 4,
            DispositionCode::FailSafe => 5,
        }
    }

    pub fn from_u8(v: u8) -> Option<DispositionCode> {
        Some(match v {
            1 => DispositionCode::Sorted,
            2 => DispositionCode::Overflow,
            3 => DispositionCode::NoDestination,
            4 => DispositionCode::Lost,
            5 => DispositionCode::FailSafe,
            _ => return None,
        })
    }
}

/// One entry of the disposition ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disposition {
    /// 1..=65535, wrapping to 1; 0 marks an empty slot.
    pub seq: u16,
    pub parcel: u32,
    pub code: DispositionCode,
    /// The lane the parcel physically went to (0 when lost).
    pub lane: u16,
}

impl Disposition {
    pub fn to_registers(self) -> [u16; DISPOSITION_LEN as usize] {
        [
            self.seq,
            (self.parcel >> 16) as u16,
            self.parcel as u16,
            ((self.code.to_u8() as u16) << 8) | (self.lane & 0xff),
        ]
    }

    pub fn from_registers(regs: &[u16]) -> Option<Disposition> {
        match regs {
            [seq, hi, lo, code_lane] if *seq != 0 => Some(Disposition {
                seq: *seq,
                parcel: ((*hi as u32) << 16) | *lo as u32,
                code: DispositionCode::from_u8((code_lane >> 8) as u8)?,
                lane: code_lane & 0xff,
            }),
            _ => None,
        }
    }
}

/// Entries of a ring read (`head` then entries) that are newer than `last_seen`, oldest
/// first, and how many were overwritten before they could be read. Sequence numbers are
/// compared in 16-bit serial arithmetic, skipping 0, so wrapping is handled.
pub fn new_dispositions(regs: &[u16], last_seen: u16) -> (Vec<Disposition>, u16) {
    let Some((&head, entries)) = regs.split_first() else {
        return (Vec::new(), 0);
    };
    if head == 0 || head == last_seen {
        return (Vec::new(), 0);
    }
    let ring = (entries.len() / DISPOSITION_LEN as usize) as u16;
    let behind = if last_seen == 0 {
        // First read: take whatever the ring holds.
        ring
    } else {
        distance(last_seen, head)
    };
    let missed = behind.saturating_sub(ring);
    let mut out: Vec<Disposition> = entries
        .chunks_exact(DISPOSITION_LEN as usize)
        .filter_map(Disposition::from_registers)
        .filter(|d| distance(d.seq, head) < behind.min(ring))
        .collect();
    out.sort_by_key(|d| std::cmp::Reverse(distance(d.seq, head)));
    (out, missed)
}

/// Steps from sequence `from` to sequence `to` in the cycle 1..=65535 that device rings use.
pub fn distance(from: u16, to: u16) -> u16 {
    let (f, t) = (from.max(1) as u32 - 1, to.max(1) as u32 - 1);
    ((t + 65535 - f) % 65535) as u16
}

/// The sequence after `seq`: 1..=65535, skipping 0 which means "nothing written".
pub fn next_seq(seq: u16) -> u16 {
    if seq == u16::MAX {
        1
    } else {
        seq + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trips() {
        let c = DivertCommand {
            seq: 7,
            lane: 3,
            parcel: 0x0012_3456,
        };
        assert_eq!(DivertCommand::from_registers(&c.to_registers()), Some(c));
        assert_eq!(DivertCommand::from_registers(&[0, 1, 0, 1]), None);
        assert_eq!(DivertCommand::from_registers(&[1, 1, 0]), None);
    }

    #[test]
    fn dispositions_round_trip_and_new_ones_are_found_across_the_wrap() {
        let d = Disposition {
            seq: 9,
            parcel: 0x0001_0002,
            code: DispositionCode::Overflow,
            lane: 3,
        };
        assert_eq!(Disposition::from_registers(&d.to_registers()), Some(d));
        assert_eq!(
            Disposition::from_registers(&[9, 0, 1, 0x0901]),
            None,
            "bad code"
        );

        // A ring of 4 written with sequences 65534, 65535, 1, 2 (wrapping).
        let ring = 4u16;
        let mut regs = vec![0u16; 1 + 4 * ring as usize];
        let mut seq = 65533u16;
        for parcel in 0..4u32 {
            seq = next_seq(seq);
            // The PLC writes its entries round-robin by its own count.
            let slot = parcel as usize % ring as usize;
            let e = Disposition {
                seq,
                parcel,
                code: DispositionCode::Sorted,
                lane: 1,
            };
            regs[1 + slot * 4..1 + slot * 4 + 4].copy_from_slice(&e.to_registers());
            regs[0] = seq;
        }
        let (new, missed) = new_dispositions(&regs, 65534);
        assert_eq!(
            new.iter().map(|d| d.parcel).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(missed, 0);
        let (new, _) = new_dispositions(&regs, 2);
        assert!(new.is_empty());
        // Far behind: only the ring's content is there, the rest is reported missed.
        let (new, missed) = new_dispositions(&regs, 65520);
        assert_eq!(new.len(), 4);
        assert_eq!(
            missed, 13,
            "65521..=65535 and 1..=2 are 17 newer; the ring holds 4"
        );
        let (new, _) = new_dispositions(&regs, 0);
        assert_eq!(
            new.iter().map(|d| d.parcel).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
    }

    #[test]
    fn overlapping_registers_are_rejected() {
        let text = |hb: &str| {
            format!("name = \"p\"\n[plc]\n[plc.divert]\nblock = 100\nack = 110\n[plc.heartbeat]\ncontroller = {hb}\nplc = 121\n")
        };
        let err = crate::Profile::parse("t", &text("101"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("overlaps divert.block"), "{err}");
        assert!(crate::Profile::parse("t", &text("120")).is_ok());
    }

    #[test]
    fn sequence_skips_zero() {
        assert_eq!(next_seq(0), 1);
        assert_eq!(next_seq(65535), 1);
        assert_eq!(next_seq(41), 42);
    }
}
