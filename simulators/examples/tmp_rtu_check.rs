use bondline_devices::plc::DivertCommand;
use bondline_devices::Profiles;
use bondline_simulators::plc::{serve_rtu, PlcState};
use std::time::Duration;
use tokio_modbus::prelude::*;
use tokio_serial::SerialPortBuilderExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let map = Profiles::builtin()
        .get("sorter-plc")
        .unwrap()
        .plc()
        .unwrap()
        .clone();
    let state = PlcState::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let srv = tokio::spawn(serve_rtu(
        "/tmp/plcA",
        19200,
        map.clone(),
        state.clone(),
        async move {
            let _ = rx.await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let port = tokio_serial::new("/tmp/plcB", 19200).open_native_async()?;
    let mut ctx = rtu::attach_slave(port, Slave(1));
    let cmd = DivertCommand {
        seq: 9,
        lane: 3,
        parcel: 77,
    };
    println!(
        "write {:?}",
        ctx.write_multiple_registers(map.divert.block, &cmd.to_registers())
            .await
    );
    println!(
        "ack {:?}",
        ctx.read_holding_registers(map.divert.ack, 1).await
    );
    println!("oob {:?}", ctx.read_holding_registers(65535, 2).await);
    ctx.set_slave(Slave(2));
    println!(
        "other unit {:?}",
        tokio::time::timeout(Duration::from_millis(300), ctx.read_holding_registers(0, 1))
            .await
            .is_err()
    );
    ctx.set_slave(Slave(1));
    // After the other-unit timeout, the line must still work.
    drop(ctx);
    let port2 = tokio_serial::new("/tmp/plcB", 19200).open_native_async()?;
    let mut ctx = rtu::attach_slave(port2, Slave(1));
    println!(
        "again {:?}",
        ctx.read_holding_registers(map.divert.ack, 1).await
    );
    println!("diverts {:?}", state.diverts());
    let _ = tx.send(());
    println!("srv {:?}", srv.await?);
    Ok(())
}
