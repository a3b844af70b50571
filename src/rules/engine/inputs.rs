//! What a decision looks at, gathered before evaluation: the declaration, the platform
//! instruction, the enterprise's suspension, the scale's reading, the X-ray verdict, the
//! consumer's history and the parcel's transaction. Borrowed, so that evaluation copies
//! nothing out of the clearance table.

use bondline_devices::contract::Action;

/// A consumer's recent history, for limits over rolling windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerWindow {
    pub parcels: u32,
    pub value_minor: u64,
}

/// What a declaration says, as far as rules look at it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Declared<'a> {
    pub enterprise: &'a str,
    pub consumer: Option<&'a str>,
    pub identity_verified: bool,
    pub value_minor: Option<u64>,
    pub currency: Option<&'a str>,
    pub gross_weight_g: Option<u32>,
}

/// The platform instruction held for a waybill.
#[derive(Debug, Clone, Copy)]
pub struct Ordered<'a> {
    pub id: &'a str,
    pub action: Action,
    pub reason: &'a str,
}

/// Everything a decision may look at, gathered before evaluation.
#[derive(Debug, Clone, Default)]
pub struct Inputs<'a> {
    pub waybill: &'a str,
    pub declaration: Option<Declared<'a>>,
    pub instruction: Option<Ordered<'a>>,
    /// The reason of the declaring enterprise's suspension, if it is suspended.
    pub suspension: Option<&'a str>,
    pub measured_weight_g: Option<u32>,
    /// Whether the parcel's scanner station weighs: a weight rule then needs both a reading
    /// and a declared weight, and fires when either is missing.
    pub weighing: bool,
    /// The X-ray verdict joined to the parcel, on a line with an X-ray scanner.
    pub xray: XrayInput,
    /// The consumer's history over each limit rule's window, by rule index; parcels and
    /// value before this one.
    pub consumer: &'a [(usize, ConsumerWindow)],
    /// The declared figures of the parcel's transaction (its order, or itself alone), for
    /// `transaction_limit` rules; `None` without a declaration.
    pub transaction: Option<crate::rules::orders::Transaction>,
}

/// What the X-ray scanner said about a parcel, as far as a decision is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum XrayInput {
    /// The line has no X-ray scanner.
    #[default]
    NotOnLine,
    /// The line has one and no verdict is joined to the parcel yet.
    Pending,
    /// The latest verdict joined to the parcel.
    Verdict(bondline_devices::xray::XrayResult),
}

impl XrayInput {
    pub(super) fn flagged(self) -> Option<bondline_devices::xray::XrayResult> {
        match self {
            XrayInput::Verdict(r) if r.flags() => Some(r),
            _ => None,
        }
    }
}
