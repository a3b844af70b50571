//! The sorter PLC's register contract.
//!
//! One divert command is a block of four holding registers written in one call, so the PLC
//! never sees half a command: `[sequence, lane, parcel id high word, parcel id low word]`.
//! The PLC acknowledges by copying the sequence into the `ack` holding register. Sequences
//! run 1..=65535 and wrap to 1; 0 means "nothing written yet". The encoding lives here so the
//! daemon and `plc-sim` cannot disagree on it.

use serde::Deserialize;

/// Validated register map of one PLC model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlcMap {
    /// Modbus unit (slave) id used unless the device config overrides it.
    pub unit_id: u8,
    /// Timeout for every Modbus call and for the acknowledge handshake.
    pub timeout_ms: u64,
    pub divert: DivertRegisters,
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
        Ok(PlcMap {
            unit_id: self.unit_id,
            timeout_ms: self.timeout_ms,
            divert: DivertRegisters {
                block: self.divert.block,
                ack: self.divert.ack,
                ack_poll_ms: self.divert.ack_poll_ms,
            },
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
    fn sequence_skips_zero() {
        assert_eq!(next_seq(0), 1);
        assert_eq!(next_seq(65535), 1);
        assert_eq!(next_seq(41), 42);
    }
}
