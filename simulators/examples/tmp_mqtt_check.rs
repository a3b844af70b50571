use bondline_devices::contract::*;
use bondline_simulators::plan::{Plan, PlanKind};
use bondline_simulators::platform::PlatformSim;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let port: u16 = std::env::args().nth(1).unwrap().parse()?;
    let broker = ([127, 0, 0, 1], port).into();
    // An observer that plays the daemon.
    let mut o = MqttOptions::new("observer", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (obs, mut el) = AsyncClient::new(o, 100);
    obs.subscribe("gw/declarations", QoS::AtLeastOnce).await?;
    obs.subscribe("gw/instructions", QoS::AtLeastOnce).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("obs err {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sim = PlatformSim::connect(broker, "gw/", "psim").await?;
    let plan = Plan::new(4);
    sim.publish_plan(&plan, 0..50).await?;
    let declared = plan.parcels(0..50).filter(|p| p.kind.is_declared()).count();
    let instructed = plan
        .parcels(0..50)
        .filter(|p| p.kind.instruction().is_some())
        .count();
    let mut got_d = 0;
    let mut got_i = 0;
    let mut order_ok = true;
    let mut seen = std::collections::HashSet::new();
    while got_d + got_i < declared + instructed {
        let (t, p) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await?
            .unwrap();
        if t.ends_with("declarations") {
            let d = Declaration::parse(&p)?;
            seen.insert(d.waybill);
            got_d += 1;
        } else {
            let i = Instruction::parse(&p)?;
            if !seen.contains(&i.waybill) {
                order_ok = false;
            }
            got_i += 1;
        }
    }
    println!(
        "declarations {got_d}/{declared} instructions {got_i}/{instructed} order_ok {order_ok}"
    );

    let rel = plan
        .parcels(0..50)
        .find(|p| p.kind == PlanKind::Release)
        .unwrap();
    let rec = |seq: u64, role: LaneRole| ParcelRecord {
        schema: SCHEMA,
        msg_id: format!("gw-{seq}"),
        seq,
        prev_hash: String::new(),
        gateway: "gw".into(),
        line: "l1".into(),
        parcel: seq as u32,
        read: ReadOutcome::Ok,
        waybill: Some(rel.waybill.clone()),
        lane: 1,
        lane_role: role,
        rule: "r".into(),
        reason: "x".into(),
        instruction_id: None,
        scanned_at_ms: 0,
        decided_at_ms: 0,
        divert: DivertOutcome {
            status: DivertStatus::Acked,
            plc_seq: Some(1),
            detail: None,
            at_ms: 0,
        },
    };
    for r in [
        rec(1, LaneRole::Release),
        rec(1, LaneRole::Release),
        rec(2, LaneRole::Hold),
    ] {
        obs.publish(
            "gw/records",
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&r)?,
        )
        .await?;
    }
    obs.publish(
        "gw/records",
        QoS::AtLeastOnce,
        false,
        b"\xff garbage".to_vec(),
    )
    .await?;
    let ev = EdgeEvent {
        schema: SCHEMA,
        gateway: "gw".into(),
        kind: EventKind::RejectedMessage,
        at_ms: 1,
        detail: "bad".into(),
        topic: Some("gw/instructions".into()),
    };
    obs.publish(
        "gw/events",
        QoS::AtLeastOnce,
        false,
        serde_json::to_vec(&ev)?,
    )
    .await?;
    println!(
        "wait3 {}",
        sim.wait_for_records(3, Duration::from_secs(5)).await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!(
        "records {} events {} bad {}",
        sim.records().len(),
        sim.events().len(),
        sim.bad_payloads()
    );
    println!("{}", sim.report(&plan, 0..50));
    sim.publish_raw("instructions", b"not json".to_vec())
        .await?;
    let (t, p) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await?
        .unwrap();
    println!("raw: {t} {:?}", String::from_utf8_lossy(&p));

    // Broker restart: the script kills and restarts mosquitto while we wait.
    println!("RESTART-NOW");
    tokio::time::sleep(Duration::from_secs(6)).await;
    obs.publish(
        "gw/records",
        QoS::AtLeastOnce,
        false,
        serde_json::to_vec(&rec(3, LaneRole::Hold))?,
    )
    .await?;
    println!(
        "after restart wait4 {}",
        sim.wait_for_records(4, Duration::from_secs(8)).await
    );
    sim.publish_plan(&plan, 50..60).await?;
    println!("publish after restart ok");
    Ok(())
}
