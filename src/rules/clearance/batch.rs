//! Applying a batch of platform messages: everything that takes other locks (interning,
//! digests) is done first, then each shard's share under one hold of its write lock, so a
//! lookup sees everything the batch says of a waybill or nothing of it.

use super::declarations::Facts;
use super::shard::Held;
use super::{Applied, ClearanceTable};
use bondline_devices::contract::{Declaration, EnterpriseNotice, Instruction};

/// One platform message, for [`ClearanceTable::apply_many`].
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    Declaration(&'a Declaration),
    Instruction(&'a Instruction),
    Notice(&'a EnterpriseNotice),
}

impl ClearanceTable {
    /// Applies platform messages in order, each shard's share under one hold of its lock:
    /// a lookup sees everything the batch says of a waybill, or nothing of it. Returns what
    /// each message did, in order.
    pub fn apply_many(&self, msgs: &[Message<'_>]) -> Vec<Applied> {
        enum Ready {
            Declaration(Facts),
            Instruction(Held),
            Notice,
        }
        let mut out = vec![Applied::Unchanged; msgs.len()];
        // Everything that takes other locks (interning, digests) is done first.
        let mut ready: Vec<(usize, usize, Ready)> = Vec::with_capacity(msgs.len());
        for (n, m) in msgs.iter().enumerate() {
            match m {
                Message::Declaration(d) => {
                    let digest = self.declaration_digest(d);
                    ready.push((
                        self.place(&d.waybill).shard,
                        n,
                        Ready::Declaration(self.facts(d, digest)),
                    ))
                }
                Message::Instruction(i) => ready.push((
                    self.place(&i.waybill).shard,
                    n,
                    Ready::Instruction(self.held_of(i)),
                )),
                Message::Notice(_) => ready.push((usize::MAX, n, Ready::Notice)),
            }
        }
        // Stable: a shard's messages keep their order.
        ready.sort_by_key(|(s, _, _)| *s);
        let mut rest = &mut ready[..];
        while let Some(first) = rest.first() {
            let s = first.0;
            let len = rest.iter().take_while(|(x, _, _)| *x == s).count();
            let (group, tail) = rest.split_at_mut(len);
            rest = tail;
            if s == usize::MAX {
                for (_, n, _) in group.iter() {
                    if let Message::Notice(notice) = msgs[*n] {
                        out[*n] = self.apply_notice(notice);
                    }
                }
                continue;
            }
            let mut shard = self.shards.write(s);
            for (_, n, r) in group.iter_mut() {
                let r = std::mem::replace(r, Ready::Notice);
                out[*n] = match (msgs[*n], r) {
                    (Message::Declaration(d), Ready::Declaration(f)) => {
                        let place = self.place(&d.waybill);
                        self.declare_in(&mut shard, place, &d.waybill, &f)
                    }
                    (Message::Instruction(i), Ready::Instruction(h)) => {
                        let place = self.place(&i.waybill);
                        self.instruct_in(&mut shard, place, i, h)
                    }
                    _ => Applied::Unchanged,
                };
            }
        }
        for (m, applied) in msgs.iter().zip(&out) {
            if let (Message::Declaration(d), Applied::Changed) = (m, applied) {
                self.after_declaration(d);
            }
        }
        out
    }
}
