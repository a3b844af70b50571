//! bondline's integration tests: one binary, a shared harness, real parts (Mosquitto,
//! pseudo-terminals from socat, Modbus TCP to plc-sim, sled on disk, headless chromium).

mod backlog;
mod budgets;
mod camera;
mod capacity;
mod cli;
mod delivery;
mod demo_rules;
mod duplicates;
mod faults;
mod framing;
mod handshake;
mod harness;
mod integrity;
mod loading;
mod oversized;
mod reconnect;
mod report;
mod rules;
mod salvage;
mod scenarios;
mod service;
mod shift_export;
mod skeleton;
mod tls;
mod trust;
mod view;
mod view_charts;
mod view_evidence;
mod xray;
