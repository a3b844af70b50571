//! The contracts bondline speaks on the floor and to the platform.
//!
//! Layout:
//! - [`profile`]: the device-profile schema (scanner framings, PLC register maps) and the
//!   profiles shipped in `devices/profiles/*.toml`, embedded in the binary.
//! - [`framing`]: the barcode-scanner frame decoder and encoder, pure byte logic.
//! - [`plc`]: the sorter PLC's register contract (divert block, acknowledge handshake).
//! - [`xray`]: the X-ray scanner's register contract (the verdict ring).
//! - [`contract`]: the JSON messages exchanged with the customs clearance platform over MQTT.
//! - [`signing`]: Ed25519 signatures on platform messages, shared by the gateway (verifies)
//!   and the platform simulator (signs).
//! - [`test_support`] (feature `test-support`, and in this crate's tests): reference models
//!   the tests and fuzz targets compare the real code against, such as a naive frame decoder.
//!
//! The daemon and the simulators both build on this crate, so a simulator can never drift
//! from what the daemon expects: they read the same profiles and the same message types.

pub mod contract;
pub mod framing;
pub mod plc;
pub mod profile;
pub mod signing;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
pub mod xray;

pub use profile::{Profile, ProfileError, ProfileKind, Profiles};
