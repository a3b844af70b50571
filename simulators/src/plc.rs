//! `plc-sim`: a sorter PLC's Modbus interface, as described by a [`PlcMap`] profile.
//!
//! The simulator holds 65536 holding registers and implements the whole PLC contract of
//! [`bondline_devices::plc`]:
//!
//! - **Divert commands.** When the controller writes a whole divert block (one "write multiple
//!   registers" of four words at `divert.block`) the simulator records the command and copies
//!   its sequence into `divert.ack`, which is the acknowledge the controller polls for. Partial
//!   or misaligned writes are stored like any register write but are not commands, as on a real
//!   PLC whose program only reacts to the sequence word of a complete block. A later command
//!   for the same parcel id replaces the earlier one ([`PlcState::command_for`]).
//! - **Heartbeat** (profiles with a `heartbeat` section). While [`PlcSim::run`] (or
//!   [`serve_rtu`]) serves, the PLC increments its own counter every `interval_ms` and watches
//!   the controller's: a counter that has not changed for `timeout_ms` puts the PLC in
//!   fail-safe mode, in which every parcel goes to the fail-safe lane; the next change takes it
//!   out again. **A PLC starts in fail-safe mode** and leaves it only when it sees the
//!   controller's counter change for the first time: a PLC must not sort on the word of a
//!   controller it has never heard from. The PLC's counter stands still while the PLC refuses
//!   requests ([`PlcState::set_refuse`]), as a PLC in stop mode runs no program.
//! - **Lane states** (profiles with a `status` section): [`PlcState::set_lane_state`] sets the
//!   full/disabled bits the controller reads.
//! - **Dispositions**: [`PlcState::dispose_at_gate`] is the PLC's decision when a parcel
//!   reaches its divert gate (see [`decide_disposition`]); every disposition is written into
//!   the ring round-robin by the PLC's own count and announced in the head register.
//!
//! Who calls `dispose_at_gate` depends on the use: `line-sim` models the conveyor and calls it
//! when each parcel's leading edge reaches the gate; standalone (`plc-sim`, the demo, tests
//! without a conveyor) [`PlcOptions::auto_dispose_after`] disposes each commanded parcel a
//! fixed time after its first command.
//!
//! Fault knobs on [`PlcState`] let tests delay the acknowledge past the controller's timeout,
//! make the PLC refuse every request with a Modbus exception, or take it off the network
//! ([`PlcState::set_down`]), so every failure kind can be driven without a real PLC.
//!
//! Layout: the PLC program's settings and decision table here; `state` (registers, divert
//! handshake, dispositions, fault knobs), `heartbeat` (the watchdog), `server` (Modbus TCP
//! and RTU).

mod heartbeat;
mod server;
mod state;

use std::time::Duration;

use bondline_devices::plc::{DispositionCode, LANE_REGISTERS};

pub use server::{serve_rtu, PlcSim};
pub use state::{PlcState, ReceivedDivert};

/// Lanes the PLC knows: 1..=LANES, one lane-state register each.
pub const LANES: u16 = LANE_REGISTERS;

/// How the simulated PLC program disposes of parcels. The lanes are the PLC's own settings,
/// not the controller's: a real sorter has them in its program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlcOptions {
    /// Where every parcel goes while the controller's heartbeat is missing (default 3, hold).
    pub fail_safe_lane: u16,
    /// Where a parcel without a usable command goes (default 4, exception). The end of the
    /// line: taken even when its lane state says full.
    pub exception_lane: u16,
    /// Where a parcel goes when its commanded lane is full or disabled (default 3, hold).
    pub overflow_lane: u16,
    /// Standalone use: dispose each parcel this long after its first divert command, as if it
    /// had reached its gate then. `None` (default): whoever models the conveyor calls
    /// [`PlcState::dispose_at_gate`].
    pub auto_dispose_after: Option<Duration>,
}

impl Default for PlcOptions {
    fn default() -> PlcOptions {
        PlcOptions {
            fail_safe_lane: 3,
            exception_lane: 4,
            overflow_lane: 3,
            auto_dispose_after: None,
        }
    }
}

/// The PLC program's decision for a parcel at its gate: the disposition code and the lane it
/// physically goes to. Pure, so the table is testable without a server.
///
/// In order: fail-safe mode sends everything to `fail_safe_lane`; no command (or a command for
/// a lane outside 1..=16, which the PLC does not have) sends the parcel to `exception_lane` as
/// "no destination"; a commanded lane that is full or disabled diverts it to `overflow_lane`,
/// unless that lane is full or disabled too, and then it goes to `exception_lane` as "no
/// destination"; otherwise it is sorted to the commanded lane. `lane_state(lane)` gives
/// `(full, disabled)` for lanes 1..=16.
pub fn decide_disposition(
    fail_safe: bool,
    commanded_lane: Option<u16>,
    lane_state: impl Fn(u16) -> (bool, bool),
    options: &PlcOptions,
) -> (DispositionCode, u16) {
    let usable = |lane: u16| {
        (1..=LANES).contains(&lane) && {
            let (full, disabled) = lane_state(lane);
            !full && !disabled
        }
    };
    let no_destination = (DispositionCode::NoDestination, options.exception_lane);
    if fail_safe {
        return (DispositionCode::FailSafe, options.fail_safe_lane);
    }
    match commanded_lane {
        None => no_destination,
        Some(lane) if !(1..=LANES).contains(&lane) => no_destination,
        Some(lane) if usable(lane) => (DispositionCode::Sorted, lane),
        Some(_) if usable(options.overflow_lane) => {
            (DispositionCode::Overflow, options.overflow_lane)
        }
        Some(_) => no_destination,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use super::*;
    use bondline_devices::plc::{
        new_dispositions, Disposition, DivertCommand, HeartbeatRegisters, PlcMap, LANE_DISABLED,
        LANE_FULL,
    };
    use bondline_devices::Profiles;
    use tokio_modbus::client::{Reader as _, Writer as _};
    use tokio_modbus::{ExceptionCode, Request, Response};

    /// The daemon spawns these futures; this only has to compile.
    #[allow(dead_code)]
    fn futures_are_send(sim: PlcSim, map: PlcMap) {
        fn send<T: Send + 'static>(_: T) {}
        send(sim.run(async {}));
        send(serve_rtu("/dev/null", 9600, map, PlcState::new(), async {}));
    }

    fn map() -> PlcMap {
        Profiles::builtin()
            .get("sorter-plc")
            .and_then(|p| p.plc().cloned())
            .expect("built-in sorter-plc profile")
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:0".parse().expect("addr")
    }

    #[test]
    fn handle_checks_ranges_and_functions() {
        let state = PlcState::new();
        let map = map();
        let read = |addr, qty| state.handle(&map, Request::ReadHoldingRegisters(addr, qty));
        assert_eq!(read(65535, 2), Err(ExceptionCode::IllegalDataAddress));
        assert_eq!(read(0, 0), Err(ExceptionCode::IllegalDataValue));
        assert_eq!(read(0, 126), Err(ExceptionCode::IllegalDataValue));
        assert!(
            matches!(read(65411, 125), Ok(Response::ReadHoldingRegisters(v)) if v.len() == 125)
        );
        assert_eq!(
            state.handle(&map, Request::ReadCoils(0, 1)),
            Err(ExceptionCode::IllegalFunction)
        );
        let write = Request::WriteMultipleRegisters(65534, vec![1, 2, 3].into());
        assert_eq!(
            state.handle(&map, write),
            Err(ExceptionCode::IllegalDataAddress)
        );
        // A block with sequence 0 is stored but is not a command.
        let zero = Request::WriteMultipleRegisters(map.divert.block, vec![0, 1, 0, 5].into());
        assert!(state.handle(&map, zero).is_ok());
        assert_eq!(state.divert_count(), 0);
        assert_eq!(state.register(map.divert.block + 3), 5);
        state.set_refuse(true);
        assert_eq!(read(0, 1), Err(ExceptionCode::ServerDeviceFailure));
    }

    #[test]
    fn disposition_decision_table() {
        use DispositionCode::*;
        let o = PlcOptions {
            fail_safe_lane: 3,
            exception_lane: 4,
            overflow_lane: 5,
            auto_dispose_after: None,
        };
        // Lane 2 full, lane 6 disabled, lane 7 full and disabled; the rest open.
        let open = |l: u16| match l {
            2 => (true, false),
            6 => (false, true),
            7 => (true, true),
            _ => (false, false),
        };
        let overflow_blocked = |l: u16| match l {
            2 | 5 => (true, false),
            _ => (false, false),
        };
        type Row<'a> = (
            bool,
            Option<u16>,
            &'a dyn Fn(u16) -> (bool, bool),
            (DispositionCode, u16),
        );
        let rows: [Row; 11] = [
            (true, Some(1), &open, (FailSafe, 3)),
            (true, None, &open, (FailSafe, 3)),
            (true, Some(2), &open, (FailSafe, 3)),
            (false, None, &open, (NoDestination, 4)),
            (false, Some(1), &open, (Sorted, 1)),
            (false, Some(2), &open, (Overflow, 5)),
            (false, Some(6), &open, (Overflow, 5)),
            (false, Some(7), &open, (Overflow, 5)),
            (false, Some(2), &overflow_blocked, (NoDestination, 4)),
            (false, Some(0), &open, (NoDestination, 4)),
            (false, Some(17), &open, (NoDestination, 4)),
        ];
        for (i, (fail_safe, cmd, lanes, want)) in rows.into_iter().enumerate() {
            assert_eq!(
                decide_disposition(fail_safe, cmd, lanes, &o),
                want,
                "row {i}"
            );
        }
        // The commanded lane is the overflow lane and it is full: nowhere but exception.
        let full5 = |l: u16| (l == 5, false);
        assert_eq!(
            decide_disposition(false, Some(5), full5, &o),
            (NoDestination, 4)
        );
    }

    #[test]
    fn dispose_at_gate_uses_latest_command_and_lane_states() {
        let mut map = map();
        map.heartbeat = None;
        let state = PlcState::with_map(&map, PlcOptions::default());
        assert!(!state.fail_safe(), "no heartbeat contract, no fail-safe");
        let block = |seq: u16, lane: u16, parcel: u32| {
            let cmd = DivertCommand { seq, lane, parcel };
            Request::WriteMultipleRegisters(map.divert.block, cmd.to_registers().to_vec().into())
        };
        assert!(state.handle(&map, block(1, 1, 77)).is_ok());
        assert!(state.handle(&map, block(2, 2, 78)).is_ok());
        assert!(state.handle(&map, block(3, 2, 77)).is_ok());
        assert_eq!(state.command_for(77).map(|c| (c.seq, c.lane)), Some((3, 2)));
        assert_eq!(state.command_for(79), None);
        assert_eq!(state.diverts_since(1).len(), 2);
        assert!(state.diverts_since(9).is_empty());

        let o = PlcOptions::default();
        let d = state.dispose_at_gate(77, &o);
        assert_eq!((d.code, d.lane, d.seq), (DispositionCode::Sorted, 2, 1));
        state.set_lane_state(2, true, false);
        assert_eq!(state.lane_state(2), (true, false));
        let st = map.status.clone().expect("status");
        assert_eq!(state.register(st.lanes + 1), LANE_FULL);
        let d = state.dispose_at_gate(78, &o);
        assert_eq!((d.code, d.lane), (DispositionCode::Overflow, 3));
        state.set_lane_state(3, false, true);
        assert_eq!(state.register(st.lanes + 2), LANE_DISABLED);
        let d = state.dispose_at_gate(78, &o);
        assert_eq!((d.code, d.lane), (DispositionCode::NoDestination, 4));
        let d = state.dispose_at_gate(79, &o);
        assert_eq!((d.code, d.lane), (DispositionCode::NoDestination, 4));
        state.set_lane_state(2, false, false);
        assert_eq!(state.register(st.lanes + 1), 0);
        // Lanes the PLC does not have are ignored.
        state.set_lane_state(0, true, true);
        state.set_lane_state(17, true, true);
        assert_eq!(state.lane_state(17), (false, false));
        assert_eq!(state.dispositions().len(), 4);
    }

    #[test]
    fn ring_is_written_round_robin_and_decodes() {
        let map = map();
        let st = map.status.clone().expect("status");
        let state = PlcState::with_map(&map, PlcOptions::default());
        let ring = || {
            (0..st.ring_len())
                .map(|i| state.register(st.dispositions + i))
                .collect::<Vec<_>>()
        };
        for p in 0..10u32 {
            state.report(1000 + p, DispositionCode::Sorted, 1);
        }
        let regs = ring();
        assert_eq!(regs[0], 10, "head holds the newest sequence");
        let fourth = Disposition {
            seq: 4,
            parcel: 1003,
            code: DispositionCode::Sorted,
            lane: 1,
        };
        assert_eq!(&regs[1 + 3 * 4..1 + 4 * 4], &fourth.to_registers());
        let (new, missed) = new_dispositions(&regs, 0);
        assert_eq!(
            new.iter().map(|d| d.parcel).collect::<Vec<_>>(),
            (1000..1010).collect::<Vec<_>>()
        );
        assert_eq!(missed, 0);
        let last_seen = new.last().map(|d| d.seq).expect("some");

        // 35 more: the ring (30) wraps; the reader is 5 entries short.
        for p in 10..45u32 {
            let code = if p % 2 == 0 {
                DispositionCode::Overflow
            } else {
                DispositionCode::FailSafe
            };
            state.report(1000 + p, code, 3);
        }
        let regs = ring();
        let (new, missed) = new_dispositions(&regs, last_seen);
        assert_eq!(missed, 5);
        assert_eq!(
            new.iter().map(|d| d.parcel).collect::<Vec<_>>(),
            (1015..1045).collect::<Vec<_>>()
        );
        // The 45th entry (count 44) went to slot 44 % 30 = 14.
        let last = state.dispositions()[44];
        assert_eq!(&regs[1 + 14 * 4..1 + 15 * 4], &last.to_registers());
        assert_eq!(last.code, DispositionCode::Overflow);
        let (new, _) = new_dispositions(&regs, last.seq);
        assert!(new.is_empty());
    }

    #[tokio::test]
    async fn auto_dispose_once_per_parcel_with_latest_command() {
        let mut map = map();
        map.heartbeat = None;
        let options = PlcOptions {
            auto_dispose_after: Some(Duration::from_millis(80)),
            ..PlcOptions::default()
        };
        let state = PlcState::with_map(&map, options);
        let block = |seq: u16, lane: u16, parcel: u32| {
            let cmd = DivertCommand { seq, lane, parcel };
            Request::WriteMultipleRegisters(map.divert.block, cmd.to_registers().to_vec().into())
        };
        assert!(state.handle(&map, block(1, 1, 5)).is_ok());
        assert!(state.handle(&map, block(2, 2, 5)).is_ok());
        assert!(state.handle(&map, block(3, 1, 6)).is_ok());
        tokio::time::sleep(Duration::from_millis(400)).await;
        let d = state.dispositions();
        assert_eq!(d.len(), 2, "{d:?}");
        let five = d.iter().find(|d| d.parcel == 5).expect("parcel 5");
        assert_eq!((five.code, five.lane), (DispositionCode::Sorted, 2));
    }

    #[tokio::test]
    async fn divert_over_modbus_tcp_is_acknowledged() {
        let map = map();
        let sim = PlcSim::bind(addr(), map.clone()).await.expect("bind");
        let addr = sim.local_addr();
        let state = sim.state();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(sim.run(async move {
            let _ = stop_rx.await;
        }));

        let mut ctx = tokio_modbus::client::tcp::connect(addr)
            .await
            .expect("connect");
        let cmd = DivertCommand {
            seq: 42,
            lane: 2,
            parcel: 0x0001_0203,
        };
        ctx.write_multiple_registers(map.divert.block, &cmd.to_registers())
            .await
            .expect("io")
            .expect("no exception");
        let ack = ctx
            .read_holding_registers(map.divert.ack, 1)
            .await
            .expect("io")
            .expect("no exception");
        assert_eq!(ack, vec![42]);
        let diverts = state.diverts();
        assert_eq!(diverts.len(), 1);
        assert_eq!(
            (diverts[0].seq, diverts[0].lane, diverts[0].parcel),
            (42, 2, 0x0001_0203)
        );

        // The device refusing is an exception on a healthy link, not an I/O error.
        let out_of_range = ctx.read_holding_registers(65535, 2).await.expect("io");
        assert_eq!(out_of_range, Err(ExceptionCode::IllegalDataAddress));

        // A late acknowledge: the ack register still holds the previous sequence for a while.
        state.set_ack_delay(Duration::from_millis(150));
        let late = DivertCommand { seq: 43, ..cmd };
        ctx.write_multiple_registers(map.divert.block, &late.to_registers())
            .await
            .expect("io")
            .expect("no exception");
        let ack = ctx
            .read_holding_registers(map.divert.ack, 1)
            .await
            .expect("io");
        assert_eq!(ack, Ok(vec![42]));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ack = ctx
            .read_holding_registers(map.divert.ack, 1)
            .await
            .expect("io");
        assert_eq!(ack, Ok(vec![43]));

        state.set_refuse(true);
        let refused = ctx.read_holding_registers(0, 1).await.expect("io");
        assert_eq!(refused, Err(ExceptionCode::ServerDeviceFailure));

        let _ = stop_tx.send(());
        server.await.expect("join").expect("serve");
    }

    /// The controller's heartbeat over real Modbus TCP: fail-safe before it starts, off while
    /// it counts, on again within the timeout (plus the watch period and scheduling slack)
    /// after it stops; the PLC's own counter runs all along.
    #[tokio::test]
    async fn heartbeat_watchdog_over_modbus_tcp() {
        let mut map = map();
        let hb = HeartbeatRegisters {
            controller: 120,
            plc: 121,
            interval_ms: 50,
            timeout_ms: 300,
        };
        map.heartbeat = Some(hb.clone());
        let sim = PlcSim::bind(addr(), map).await.expect("bind");
        let addr = sim.local_addr();
        let state = sim.state();
        assert!(
            state.fail_safe(),
            "a PLC that never heard the controller is fail-safe"
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(sim.run(async move {
            let _ = stop_rx.await;
        }));
        let mut ctx = tokio_modbus::client::tcp::connect(addr)
            .await
            .expect("connect");
        let read_plc = |v: Result<Result<Vec<u16>, ExceptionCode>, tokio_modbus::Error>| {
            v.expect("io").expect("no exception")[0]
        };
        let p0 = read_plc(ctx.read_holding_registers(hb.plc, 1).await);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(state.fail_safe(), "still never heard");

        let start = Instant::now();
        for i in 1..=12u16 {
            ctx.write_single_register(hb.controller, i)
                .await
                .expect("io")
                .expect("no exception");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!state.fail_safe(), "heartbeat present");
        let p1 = read_plc(ctx.read_holding_registers(hb.plc, 1).await);
        let ticks = p1.wrapping_sub(p0);
        let expected = (start.elapsed().as_millis() as u16 + 400) / 50;
        assert!(
            ticks >= 5 && ticks <= expected + 2,
            "PLC counter moved {ticks}, expected about {expected}"
        );

        // Stop: fail-safe within timeout + margin, not before the timeout.
        let stopped = Instant::now();
        while !state.fail_safe() {
            assert!(
                stopped.elapsed() < Duration::from_millis(300 + 1000),
                "no fail-safe after {:?}",
                stopped.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = stopped.elapsed();
        // The last write was up to 50 ms before `stopped`.
        assert!(
            took >= Duration::from_millis(240),
            "fail-safe too early: {took:?}"
        );
        let d = state.dispose_at_gate(9, &PlcOptions::default());
        assert_eq!((d.code, d.lane), (DispositionCode::FailSafe, 3));

        // The heartbeat returns: fail-safe ends promptly.
        ctx.write_single_register(hb.controller, 13)
            .await
            .expect("io")
            .expect("no exception");
        let back = Instant::now();
        while state.fail_safe() {
            assert!(back.elapsed() < Duration::from_secs(1), "fail-safe stuck");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = stop_tx.send(());
        server.await.expect("join").expect("serve");
    }

    #[tokio::test]
    async fn down_closes_connections_until_up_again() {
        let sim = PlcSim::bind(addr(), map()).await.expect("bind");
        let addr = sim.local_addr();
        let state = sim.state();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(sim.run(async move {
            let _ = stop_rx.await;
        }));
        let limit = Duration::from_secs(5);
        let mut ctx = tokio_modbus::client::tcp::connect(addr)
            .await
            .expect("connect");
        assert!(ctx.read_holding_registers(0, 1).await.expect("io").is_ok());

        state.set_down(true);
        assert!(state.is_down());
        let res = tokio::time::timeout(limit, ctx.read_holding_registers(0, 1))
            .await
            .expect("answered or closed in time");
        assert!(res.is_err(), "open connection closed: {res:?}");
        // A new connection is accepted by the kernel and closed at once.
        if let Ok(mut c) = tokio_modbus::client::tcp::connect(addr).await {
            let res = tokio::time::timeout(limit, c.read_holding_registers(0, 1))
                .await
                .expect("closed in time");
            assert!(res.is_err(), "new connection closed: {res:?}");
        }

        state.set_down(false);
        let mut ctx = tokio_modbus::client::tcp::connect(addr)
            .await
            .expect("connect");
        assert!(ctx.read_holding_registers(0, 1).await.expect("io").is_ok());
        let _ = stop_tx.send(());
        server.await.expect("join").expect("serve");
    }
}
