//! The X-ray scanner's verdict ring, as the daemon's reader (`fieldbus::xray`, `Unit::take`)
//! decodes it: a head register and up to 15 entries of 8 input registers, read again and
//! again with the head of the previous read as the last seen sequence. Whatever the scanner
//! answers (any register values, a short or odd-length answer, a head that jumps or goes
//! backwards), decoding must not panic, and what it reports must be consistent: no more
//! entries than the read holds, only entries newer than the last seen, oldest first.
//!
//! Input: `[seen flag, seen hi, seen lo, ring byte, registers (big-endian u16)...]`.
//! - the seen flag's low bit: whether a read came before (else the first read only notes
//!   where the ring stands, as the daemon does);
//! - the ring byte: 1..=15 entries per read (the profile's `ring`, as validated), the
//!   registers then go in reads of `1 + ring * 8`; 0 puts all registers in one read of any
//!   length, as a device answering a different count would.
//!
//! Then, from the same bytes, a writer/reader round trip: events stamped by `RingWriter` (the
//! scanner side) into a ring must be read back exactly, with overwritten ones counted missed.
#![no_main]

use bondline_devices::xray::{
    new_events, Material, RingWriter, XrayEvent, XrayResult, EVENT_LEN,
};
use libfuzzer_sys::fuzz_target;

/// `bondline_devices::plc::distance` (crate-private): steps from `from` to `to` in the
/// sequence space 1..=65535.
fn distance(from: u16, to: u16) -> u16 {
    let (f, t) = (from.max(1) as u32 - 1, to.max(1) as u32 - 1);
    ((t + 65535 - f) % 65535) as u16
}

/// One read, as `Unit::take` handles it; returns the new last seen.
fn take(regs: &[u16], seen: Option<u16>) -> Option<u16> {
    let head = regs.first().copied().unwrap_or(0);
    let Some(last_seen) = seen else {
        return Some(head);
    };
    let new = new_events(regs, last_seen);
    let entries = regs.len().saturating_sub(1) / EVENT_LEN as usize;
    if head == 0 || head == last_seen {
        assert!(new.events.is_empty() && new.errors.is_empty(), "{new:?}");
        assert_eq!((new.missed, new.restarted), (0, false));
        return Some(head);
    }
    assert!(
        new.events.len() + new.errors.len() <= entries,
        "{} events and {} errors from {entries} entries",
        new.events.len(),
        new.errors.len()
    );
    if last_seen == 0 || new.restarted {
        assert_eq!(new.missed, 0, "a first read or a restart counts nothing missed");
    }
    assert!(!(last_seen == 0 && new.restarted), "a first read is not a restart");
    assert!(new.missed <= 32_768);
    for e in &new.events {
        assert_ne!(e.seq, 0);
        assert!(
            (distance(e.seq, head) as usize) < entries,
            "entry {} is older than the ring (head {head})",
            e.seq
        );
        if !new.restarted && last_seen != 0 {
            // Newer than the last seen: between it (exclusive) and the head (inclusive).
            let d = distance(last_seen, e.seq);
            assert!(
                d >= 1 && d <= distance(last_seen, head),
                "entry {} not newer than {last_seen} (head {head})",
                e.seq
            );
        }
    }
    assert!(
        new.events
            .windows(2)
            .all(|w| distance(w[0].seq, head) >= distance(w[1].seq, head)),
        "events not oldest first: {:?}",
        new.events.iter().map(|e| e.seq).collect::<Vec<_>>()
    );
    // What the daemon makes of it: counters and the alert text.
    let _lost = new.missed as u64 + new.errors.len() as u64;
    for e in &new.errors {
        assert!(!e.to_string().is_empty());
    }
    Some(head)
}

fuzz_target!(|data: &[u8]| {
    let Some((head_bytes, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let [flag, hi, lo, ring] = *head_bytes;
    let regs: Vec<u16> = rest
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();

    // Every entry-sized window, and odd sizes, decode or fail with an error, never a panic;
    // a decoded entry re-encodes to the same registers.
    for len in [EVENT_LEN as usize, 1, 7, 9] {
        for chunk in regs.chunks(len) {
            match XrayEvent::from_registers(chunk) {
                Ok(Some(e)) => {
                    assert_eq!(chunk.len(), EVENT_LEN as usize);
                    assert_eq!(&e.to_registers()[..], chunk);
                }
                Ok(None) => assert_eq!(chunk.first().copied().unwrap_or(0), 0),
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
    }

    // The reads, with the last seen carried from one to the next.
    let mut seen = (flag & 1 == 1).then_some(u16::from_be_bytes([hi, lo]));
    let ring = usize::from(ring % 16);
    if ring == 0 {
        take(&regs, seen);
    } else {
        for read in regs.chunks(1 + ring * EVENT_LEN as usize) {
            seen = take(read, seen);
        }
    }

    // Round trip through the scanner side: batches of events written, a read after each.
    let ring = u16::from(head_bytes[3] % 15) + 1;
    let mut slots = vec![0u16; 1 + usize::from(ring * EVENT_LEN)];
    let mut writer = RingWriter::new(ring);
    let mut written: Vec<XrayEvent> = Vec::new();
    let mut seen: Option<u16> = None;
    for (n, batch) in rest.iter().take(64).enumerate() {
        let count = usize::from(batch % 40);
        let before = written.len();
        for i in 0..count {
            let k = (before + i) as u32;
            let mut e = XrayEvent {
                seq: 0,
                scan_id: k.wrapping_mul(2_654_435_761),
                result: XrayResult::from_u8((k % 3) as u8 + 1).unwrap(),
                material: Material::from_u8((k % 6) as u8).unwrap(),
                entered_at_ms: u64::from(k) * 1_000_003,
            };
            let (at, head) = writer.push(&mut e);
            let at = usize::from(at);
            slots[at..at + EVENT_LEN as usize].copy_from_slice(&e.to_registers());
            slots[0] = head;
            written.push(e);
        }
        let Some(last_seen) = seen else {
            // The daemon's first read only notes the head; make it after the first batch.
            if n > 0 || count > 0 {
                seen = Some(slots[0]);
            }
            continue;
        };
        let new = new_events(&slots, last_seen);
        let fresh = &written[before..];
        let kept = fresh.len().min(usize::from(ring));
        assert!(new.errors.is_empty(), "{:?}", new.errors);
        assert!(!new.restarted);
        if last_seen == 0 {
            // The first read saw an empty ring: whatever the ring holds now is taken.
            assert_eq!(new.missed, 0);
            let held = written.len().min(usize::from(ring));
            assert_eq!(new.events, &written[written.len() - held..]);
        } else {
            assert_eq!(usize::from(new.missed), fresh.len() - kept, "missed");
            assert_eq!(new.events, &fresh[fresh.len() - kept..], "events");
        }
        seen = Some(slots[0]);
    }
});
