//! Simulators of the devices and the platform around a bondline edge controller.
//!
//! They let the daemon run end to end on a laptop or in CI without a sorter, a scanner or a
//! customs platform, and they speak exactly what the real ones speak: every byte format comes
//! from `bondline-devices` (scanner framings, the PLC register map, the platform messages), so a
//! simulator cannot drift from what the daemon expects.
//!
//! # Layout
//! - [`audit`]: what an auditor knows of a rule set: rule kinds by name and the recomputed
//!   random sample; holds the demo rule set.
//! - [`plan`]: a deterministic parcel plan from a seed. The scanner and the platform simulators
//!   share it, so they agree on which waybills exist and what customs says about each, and a
//!   test can state the lane every parcel should reach.
//! - [`plc`]: `plc-sim`, a Modbus TCP/RTU server holding the sorter PLC's registers; records the
//!   divert commands it receives and acknowledges them, runs the heartbeat watchdog (fail-safe
//!   mode), lane states and the disposition ring, with fault knobs (late acknowledge, refusal,
//!   off the network) for tests.
//! - [`scanner`]: `scanner-sim`, writes barcode frames (reads, no-reads, line noise) for plan
//!   parcels at a set rate to a serial port or to a TCP client.
//! - [`platform`]: `platform-sim`, the customs clearance platform on MQTT: publishes
//!   declarations and instructions for the plan, collects the parcel records and events the
//!   daemon sends, and reports what arrived against the plan.
//! - [`chain`]: the platform's check of each gateway's record chain (sequence, SHA-256 links,
//!   duplicates, gaps, reordering) on the payloads as received; `platform-sim` runs it.
//! - [`line`]: `line-sim`, a conveyor model that plays the scanner and the PLC together
//!   against a running daemon from a scenario file (belt speed, parcel spacing, lanes, faults)
//!   and ends with a ledger of where each parcel physically went: leaks, late diverts, wrong
//!   lanes, decision latency.
//! - [`xray`]: `xray-sim`, X-ray scanners on Modbus TCP/RTU (several unit ids on one bus), each
//!   publishing verdicts in the ring of input registers, with fault modes (exception,
//!   garbage entries, silent) switchable at run time; a driver that turns parcel passages into
//!   verdicts, operator marks and synthetic X-ray images in a spool directory.
//! - [`camera`]: `camera-sim`, an IP camera's HTTP snapshot endpoint: JPEG frames stamped
//!   (drawn and in a comment segment) with the time and the parcel under it, basic or digest
//!   credentials, fault modes (error status, hang, garbage, slow).
//! - [`cli`]: the little the binaries share (logging, profile lookup, Ctrl-C).
//!
//! Every long-running function takes a `shutdown` future and returns when it completes, so tests
//! and the daemon's `bondline-lab demo` drive the simulators in-process.

pub mod audit;
pub mod camera;
pub mod chain;
pub mod cli;
pub mod line;
pub mod plan;
pub mod platform;
pub mod plc;
pub mod scanner;
pub mod xray;
