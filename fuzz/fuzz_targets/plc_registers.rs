//! Register values read from a PLC, decoded per the PLC profile's contract: divert
//! acknowledges and the disposition ring. Whatever a device answers, decoding must not panic
//! and must report no more entries than the ring holds.
#![no_main]

use bondline_devices::plc::{new_dispositions, DivertCommand, Disposition};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let regs: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    let _ = DivertCommand::from_registers(&regs);
    let _ = Disposition::from_registers(&regs);
    if let Some((&last_seen, ring)) = regs.split_first() {
        let (got, _missed) = new_dispositions(ring, last_seen);
        assert!(got.len() <= ring.len().saturating_sub(1) / 4 + 1);
    }
});
