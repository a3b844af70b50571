//! bondline: the edge controller of a customs-supervised sorting line.
//!
//! # Layout
//! - [`config`]: the TOML configuration, validated up front into ready-to-use structures.
//! - [`floor`]: the messages the floor's tasks pass each other (scans, divert jobs and the
//!   PLC's answers, lane states, X-ray verdicts, clearance changes); every task imports it.
//! - [`fieldbus`]: device tasks: the barcode scanner reader (serial/TCP) and the sorter PLC
//!   link (Modbus TCP/RTU) with its divert handshake.
//! - [`rules`]: pure customs logic: the clearance table, consumer histories, the rules engine
//!   and the lane decision, fail closed.
//! - [`policy`]: the rule set in force: from the rule file or the platform, reloaded whole.
//! - [`line`]: one line's pipeline, scan → decision → divert job; never waits on I/O.
//! - [`evidence`]: X-ray images from the spool or an upload: checked, thumbnailed, kept by
//!   hash and forwarded in chunks; each handed to its line as an image record.
//! - [`camera`]: camera snapshots of each parcel at the scanner and at watched lanes, taken
//!   off the decision path and kept and forwarded like X-ray images.
//! - [`journal`]: the durable record store and outbox on sled; its doc states the invariants.
//! - [`uplink`]: MQTT to the clearance platform; records leave the outbox only on PUBACK.
//! - [`view`]: the customs staff view over HTTP: live lane board, parcel lookup, device
//!   health, JSON API, `/metrics`; read-only.
//! - [`app`]: wires the tasks together and shuts them down in an order that loses nothing.
//! - [`explain`]: `bondline explain WAYBILL`, a decision explained from the store.
//! - [`report`]: the monthly customs report from the journal.
//! - [`alarm`]: alarms for operators and the platform (log + `P/events`).
//! - [`memory`]: gives the allocator's free memory back after a burst.
//! - [`service`]: systemd readiness, watchdog (gated on the lines being alive), reload notices.
//! - [`tls`]: TLS material from files (certificates, keys, CA bundles, passwords), for the
//!   uplink, the staff view and the cameras alike.
//! - [`retention`]: forgets platform state older than `storage.clearance_days`, hourly.
//! - [`trust`]: signature checks on platform messages: only the platform steers the lanes.
//! - [`fds`]: file descriptors: the soft limit raised, HTTP clients sized to leave a reserve.
//! - [`cli`], [`telemetry`], [`shutdown`], [`metrics`], [`backoff`]: the edges.
//!
//! - [`threads`]: the threading rule: the decision path on a floor thread of its own, the
//!   journal's writer on another, everything else on the main runtime.
//!
//! The demo line and the benches are a crate of their own, `bondline-lab` (`lab/`): the
//! daemon's binary links no simulator and no MQTT broker.
//!
//! Data flows one way on the decision path (scanner → line → PLC link → journal → uplink);
//! platform messages flow the other way into the clearance table, which the line reads.

pub(crate) mod alarm;
pub mod app;
pub(crate) mod backoff;
pub mod camera;
pub mod cli;
pub mod config;
pub mod evidence;
pub(crate) mod explain;
pub mod fds;
pub mod fieldbus;
pub mod floor;
pub mod journal;
pub(crate) mod line;
pub(crate) mod memory;
pub mod metrics;
pub mod policy;
pub mod report;
pub(crate) mod retention;
pub mod rules;
pub(crate) mod service;
pub mod shutdown;
pub mod telemetry;
pub mod threads;
pub mod tls;
pub(crate) mod trust;
pub mod uplink;
pub mod view;
