//! The declared value of each e-commerce order that ships as several waybills, for the
//! per-transaction limit.
//!
//! Customs counts a consumer's per-transaction limit over one order, which a warehouse may
//! ship as several waybills, each declared on its own with the order's `order_id`. This
//! structure keeps, per order, the sum of its waybills' declared values, so a decision reads
//! the transaction's value in one lookup. It holds only declarations that name an order (a
//! waybill without one is its own transaction and needs nothing here), keyed by digests: the
//! order by its enterprise and order id (order numbers are the enterprise's own, two
//! enterprises may use the same one), the waybill by its number. A replaced or forgotten
//! declaration leaves its order's sums exactly: each member remembers what it added.

use std::collections::HashMap;

use bondline_devices::contract::Declaration;

use crate::rules::sharded_map::ShardedMap;

/// Sentinel for "declared without a currency".
const NO_CURRENCY: u16 = u16::MAX;

/// What one waybill added to its order.
#[derive(Debug, Clone)]
struct Member {
    order: u128,
    value_minor: Option<u64>,
    currency: u16,
}

/// One order's sums over its declared waybills.
#[derive(Debug, Clone)]
struct Total {
    order_id: Box<str>,
    parcels: u32,
    value_minor: u64,
    without_value: u32,
    /// Waybills per currency: almost always one entry.
    currencies: Vec<(u16, u32)>,
}

/// The figures of one transaction as a rule checks them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transaction {
    /// The order id, or `None` for a waybill that is its own transaction.
    pub order_id: Option<Box<str>>,
    /// Waybills declared in the transaction, this one included.
    pub parcels: u32,
    /// Declared value of all of them, this one included.
    pub value_minor: u64,
    /// Waybills declared without a value.
    pub without_value: u32,
    /// The one currency all of them are declared in; `None` when one has none or they differ.
    pub currency: Option<Box<str>>,
}

/// Per-order sums of declared values (see the module docs).
#[derive(Debug, Default, Clone)]
pub struct OrderTotals {
    members: ShardedMap<u128, Member>,
    orders: ShardedMap<u128, Total>,
    /// Currency codes, numbered (a handful in practice).
    currencies: Vec<Box<str>>,
    currency_ids: HashMap<Box<str>, u16>,
}

fn digest(parts: &[&str]) -> u128 {
    let mut bytes = Vec::new();
    for p in parts {
        bytes.extend_from_slice(p.as_bytes());
        bytes.push(0);
    }
    let h: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes).into()
    };
    u128::from_be_bytes(h[..16].try_into().expect("16 bytes"))
}

impl OrderTotals {
    /// Orders held (with at least one declared waybill).
    pub fn orders(&self) -> usize {
        self.orders.len()
    }

    fn currency_id(&mut self, c: Option<&str>) -> u16 {
        let Some(c) = c else { return NO_CURRENCY };
        if let Some(&id) = self.currency_ids.get(c) {
            return id;
        }
        // Past 65,534 distinct codes (impossible for ISO 4217), they share "unknown", which a
        // currency-bound limit treats as "no currency": fail closed.
        let Ok(id) = u16::try_from(self.currencies.len()) else {
            return NO_CURRENCY;
        };
        if id == NO_CURRENCY {
            return NO_CURRENCY;
        }
        self.currencies.push(c.into());
        self.currency_ids.insert(c.into(), id);
        id
    }

    /// Takes the declaration held for `d.waybill` (if any) out of its order and puts `d` in its
    /// own: called for every declaration the table stores, replacing or not.
    pub fn apply(&mut self, d: &Declaration) {
        self.forget(&d.waybill);
        let Some(order_id) = d.order_id.as_deref() else {
            return;
        };
        let order = digest(&[&d.enterprise, order_id]);
        let currency = self.currency_id(d.currency.as_deref());
        let member = Member {
            order,
            value_minor: d.value_minor,
            currency,
        };
        let total = match self.orders.get_mut(&order) {
            Some(t) => t,
            None => {
                self.orders.insert(
                    order,
                    Total {
                        order_id: order_id.into(),
                        parcels: 0,
                        value_minor: 0,
                        without_value: 0,
                        currencies: Vec::with_capacity(1),
                    },
                );
                self.orders.get_mut(&order).expect("just inserted")
            }
        };
        total.parcels += 1;
        match member.value_minor {
            Some(v) => total.value_minor = total.value_minor.saturating_add(v),
            None => total.without_value += 1,
        }
        match total.currencies.iter_mut().find(|(c, _)| *c == currency) {
            Some((_, n)) => *n += 1,
            None => total.currencies.push((currency, 1)),
        }
        self.members.insert(digest(&[&d.waybill]), member);
    }

    /// Takes `waybill` out of its order (its declaration was forgotten or replaced).
    pub fn forget(&mut self, waybill: &str) {
        let Some(m) = self.members.remove(&digest(&[waybill])) else {
            return;
        };
        let Some(total) = self.orders.get_mut(&m.order) else {
            return;
        };
        total.parcels = total.parcels.saturating_sub(1);
        match m.value_minor {
            Some(v) => total.value_minor = total.value_minor.saturating_sub(v),
            None => total.without_value = total.without_value.saturating_sub(1),
        }
        if let Some(i) = total.currencies.iter().position(|(c, _)| *c == m.currency) {
            total.currencies[i].1 -= 1;
            if total.currencies[i].1 == 0 {
                total.currencies.swap_remove(i);
            }
        }
        if total.parcels == 0 {
            self.orders.remove(&m.order);
        }
    }

    /// The transaction of `waybill`, declared as `d` (the declaration the table holds for it):
    /// its order's figures when it names one, else the waybill's own.
    pub fn transaction(
        &self,
        waybill: &str,
        value_minor: Option<u64>,
        currency: Option<&str>,
    ) -> Transaction {
        let total = self
            .members
            .get(&digest(&[waybill]))
            .and_then(|m| self.orders.get(&m.order));
        match total {
            Some(t) => Transaction {
                order_id: Some(t.order_id.clone()),
                parcels: t.parcels,
                value_minor: t.value_minor,
                without_value: t.without_value,
                currency: match t.currencies.as_slice() {
                    [(c, _)] if *c != NO_CURRENCY => Some(self.currencies[*c as usize].clone()),
                    _ => None,
                },
            },
            None => Transaction {
                order_id: None,
                parcels: 1,
                value_minor: value_minor.unwrap_or(0),
                without_value: u32::from(value_minor.is_none()),
                currency: currency.map(Into::into),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::clearance::tests::decl;
    use proptest::prelude::*;

    fn in_order(
        w: &str,
        order: Option<&str>,
        value: Option<u64>,
        cur: Option<&str>,
    ) -> Declaration {
        let mut d = decl(w, "c", 0);
        d.value_minor = value;
        d.currency = cur.map(str::to_string);
        d.order_id = order.map(str::to_string);
        d
    }

    #[test]
    fn an_order_sums_its_waybills_and_follows_replacements() {
        let mut t = OrderTotals::default();
        t.apply(&in_order("A", Some("O1"), Some(300_000), Some("CNY")));
        t.apply(&in_order("B", Some("O1"), Some(250_000), Some("CNY")));
        t.apply(&in_order("C", Some("O2"), Some(1), Some("CNY")));
        let a = t.transaction("A", Some(300_000), Some("CNY"));
        assert_eq!(
            (
                a.order_id.as_deref(),
                a.parcels,
                a.value_minor,
                a.currency.as_deref()
            ),
            (Some("O1"), 2, 550_000, Some("CNY"))
        );
        // B re-declared in USD: the order now mixes currencies.
        t.apply(&in_order("B", Some("O1"), Some(10), Some("USD")));
        let a = t.transaction("A", Some(300_000), Some("CNY"));
        assert_eq!((a.parcels, a.value_minor, a.currency), (2, 300_010, None));
        // B moved to no order: A is alone in O1 again, in one currency.
        t.apply(&in_order("B", None, Some(10), Some("USD")));
        let a = t.transaction("A", Some(300_000), Some("CNY"));
        assert_eq!(
            (a.parcels, a.value_minor, a.currency.as_deref()),
            (1, 300_000, Some("CNY"))
        );
        let b = t.transaction("B", Some(10), Some("USD"));
        assert_eq!((b.order_id, b.parcels, b.value_minor), (None, 1, 10));
        t.forget("A");
        t.forget("A");
        assert_eq!(t.orders(), 1, "an order without waybills is dropped");
        // The same order number of another enterprise is another order.
        let mut other = in_order("D", Some("O2"), Some(5), Some("CNY"));
        other.enterprise = "E2".into();
        t.apply(&other);
        assert_eq!(t.transaction("C", Some(1), Some("CNY")).value_minor, 1);
        let none = t.transaction("X", None, None);
        assert_eq!((none.without_value, none.currency), (1, None));
    }

    proptest! {
        /// Whatever declarations, re-declarations and forgetting happen, every order's figures
        /// are the sums over the declarations held now that name it.
        #[test]
        fn order_sums_match_the_declarations_held(
            ops in proptest::collection::vec((0u8..8, proptest::option::of(0u8..3), proptest::option::of(0u64..1000), 0u8..3, any::<bool>()), 1..80)
        ) {
            let mut t = OrderTotals::default();
            let mut held: HashMap<u8, Declaration> = HashMap::new();
            for (w, order, value, cur, forget) in ops {
                let waybill = format!("W{w}");
                if forget {
                    t.forget(&waybill);
                    held.remove(&w);
                    continue;
                }
                let cur = ["CNY", "USD"].get(cur as usize).copied();
                let d = in_order(&waybill, order.map(|o| format!("O{o}")).as_deref(), value, cur);
                t.apply(&d);
                held.insert(w, d);
            }
            for (w, d) in &held {
                let got = t.transaction(&format!("W{w}"), d.value_minor, d.currency.as_deref());
                let same: Vec<&Declaration> = match &d.order_id {
                    Some(o) => held.values().filter(|x| x.order_id.as_ref() == Some(o)).collect(),
                    None => vec![d],
                };
                prop_assert_eq!(got.parcels as usize, same.len());
                prop_assert_eq!(got.value_minor, same.iter().filter_map(|x| x.value_minor).sum::<u64>());
                prop_assert_eq!(got.without_value as usize, same.iter().filter(|x| x.value_minor.is_none()).count());
                let first = same[0].currency.as_deref();
                let one = first.is_some() && same.iter().all(|x| x.currency.as_deref() == first);
                prop_assert_eq!(got.currency.as_deref(), if one { first } else { None });
            }
        }
    }
}
