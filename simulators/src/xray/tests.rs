use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bondline_devices::xray::{new_events, EventError, Material, XrayMap, XrayResult};
use bondline_devices::Profiles;
use tokio::sync::oneshot;
use tokio_modbus::client::{Context, Reader as _};
use tokio_modbus::{ExceptionCode, Slave};

use super::images::encode;
use super::*;

fn map() -> XrayMap {
    Profiles::builtin()
        .get("xray-modbus")
        .and_then(|p| p.xray().cloned())
        .expect("built-in xray-modbus profile")
}

/// The daemon spawns these futures; this only has to compile.
#[allow(dead_code)]
fn futures_are_send(sim: XraySim, state: XrayState, driver: XrayDriver) {
    fn send<T: Send + 'static>(_: T) {}
    send(sim.run(async {}));
    send(serve_rtu("/dev/null", 9600, state, async {}));
    send(driver.run(async {}));
}

/// A TCP simulator for `units` on a free port; dropping the sender stops it.
async fn serve(units: &[u8]) -> (SocketAddr, XrayState, oneshot::Sender<()>) {
    let state = XrayState::new(map(), units).expect("units");
    let sim = XraySim::bind("127.0.0.1:0".parse().expect("addr"), state.clone())
        .await
        .expect("bind");
    let addr = sim.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(sim.run(async move {
        let _ = stopped.await;
    }));
    (addr, state, stop)
}

async fn client(addr: SocketAddr, unit: u8) -> Context {
    tokio_modbus::client::tcp::connect_slave(addr, Slave(unit))
        .await
        .expect("connect")
}

type Read = Result<Result<Vec<u16>, ExceptionCode>, tokio_modbus::Error>;

/// One read of the whole ring, as the daemon polls it, with a timeout.
async fn read_ring(ctx: &mut Context) -> Option<Read> {
    let m = map();
    tokio::time::timeout(
        Duration::from_millis(300),
        ctx.read_input_registers(m.events, m.ring_len()),
    )
    .await
    .ok()
}

fn ring_of(read: Option<Read>) -> Vec<u16> {
    read.expect("answered").expect("io").expect("no exception")
}

#[tokio::test]
async fn ring_read_over_tcp_decodes_with_new_events() {
    let (addr, state, _stop) = serve(&[1]).await;
    let t0 = 1_790_000_000_000u64;
    for (scan, result, material) in [
        (100u32, XrayResult::Clear, Some(Material::Organic)),
        (101, XrayResult::Suspect, Some(Material::Metal)),
        (102, XrayResult::Clear, None),
    ] {
        state
            .pass(1, scan, t0 + u64::from(scan), result, material)
            .expect("pass");
    }
    let mut ctx = client(addr, 1).await;
    let n = new_events(&ring_of(read_ring(&mut ctx).await), 0);
    assert_eq!(n.events, state.events(1).expect("unit 1"));
    assert_eq!(n.events.len(), 3);
    assert!(n.errors.is_empty() && n.missed == 0, "{n:?}");
    assert_eq!(n.events[1].scan_id, 101);
    assert_eq!(n.events[1].result, XrayResult::Suspect);
    let last = n.events[2].seq;

    // The officer's mark: a new entry for scan 101 with the passage's entry time.
    state.mark(1, 101, XrayResult::OperatorMark).expect("mark");
    let n = new_events(&ring_of(read_ring(&mut ctx).await), last);
    assert_eq!(n.events.len(), 1, "{n:?}");
    let mark = n.events[0];
    assert_eq!(
        (mark.scan_id, mark.result, mark.entered_at_ms, mark.material),
        (
            101,
            XrayResult::OperatorMark,
            t0 + 101,
            Some(Material::Metal)
        )
    );
    assert_eq!(state.reads_served(1), 2);
    assert_eq!(
        state.mark(1, 999, XrayResult::OperatorMark),
        Err(XraySimError::UnknownScan {
            unit: 1,
            scan_id: 999
        })
    );

    // Refusals are exceptions on a healthy link: outside the ring, another function, and a
    // unit this gateway does not reach.
    let m = map();
    let past = ctx
        .read_input_registers(m.events + 1, m.ring_len())
        .await
        .expect("io");
    assert_eq!(past, Err(ExceptionCode::IllegalDataAddress));
    let holding = ctx.read_holding_registers(m.events, 1).await.expect("io");
    assert_eq!(holding, Err(ExceptionCode::IllegalFunction));
    let mut other = client(addr, 9).await;
    let res = read_ring(&mut other).await.expect("answered").expect("io");
    assert_eq!(res, Err(ExceptionCode::GatewayTargetDevice));
    assert_eq!(state.stats(1).expect("unit 1").exceptions, 2);
}

#[tokio::test]
async fn a_silent_unit_does_not_stop_the_others() {
    let (addr, state, _stop) = serve(&[1, 2]).await;
    state
        .pass(2, 7, 1_000, XrayResult::Clear, None)
        .expect("pass");
    state.set_fault(1, XrayFault::Silent).expect("unit 1");
    let mut one = client(addr, 1).await;
    let mut two = client(addr, 2).await;
    assert!(
        read_ring(&mut one).await.is_none(),
        "unit 1 must not answer"
    );
    let n = new_events(&ring_of(read_ring(&mut two).await), 0);
    assert_eq!(n.events.len(), 1);
    assert_eq!(n.events[0].scan_id, 7);
    let s1 = state.stats(1).expect("unit 1");
    assert_eq!((s1.reads, s1.unanswered), (0, 1));
    assert_eq!(state.reads_served(2), 1);

    // Back on the bus: answers again on a fresh connection.
    state.set_fault(1, XrayFault::Normal).expect("unit 1");
    let mut one = client(addr, 1).await;
    assert!(read_ring(&mut one).await.is_some());
}

#[tokio::test]
async fn exception_mode_answers_every_read_with_its_code() {
    let (addr, state, _stop) = serve(&[3]).await;
    let mut ctx = client(addr, 3).await;
    for code in [
        ExceptionCode::ServerDeviceFailure,
        ExceptionCode::ServerDeviceBusy,
    ] {
        state
            .set_fault(3, XrayFault::Exception(code))
            .expect("unit 3");
        let res = read_ring(&mut ctx).await.expect("answered").expect("io");
        assert_eq!(res, Err(code));
    }
    state.set_fault(3, XrayFault::Normal).expect("unit 3");
    assert!(ring_of(read_ring(&mut ctx).await).iter().all(|r| *r == 0));
    let s = state.stats(3).expect("unit 3");
    assert_eq!((s.reads, s.exceptions), (1, 2));
}

#[tokio::test]
async fn garbage_entries_are_reported_by_the_decoder_not_dropped() {
    let (addr, state, _stop) = serve(&[1]).await;
    state.set_fault(1, XrayFault::Garbage).expect("unit 1");
    state
        .pass(1, 1, 10, XrayResult::Clear, Some(Material::Organic))
        .expect("pass");
    state
        .pass(1, 2, 20, XrayResult::Suspect, Some(Material::Metal))
        .expect("pass");
    let mut ctx = client(addr, 1).await;
    let n = new_events(&ring_of(read_ring(&mut ctx).await), 0);
    assert!(n.events.is_empty(), "{n:?}");
    assert!(
        matches!(
            n.errors[..],
            [
                EventError::Result { seq: 1, code: 0x7F },
                EventError::Material { seq: 2, code: 0x3E }
            ]
        ),
        "{n:?}"
    );

    // Garbage only affects entries written while it holds.
    state.set_fault(1, XrayFault::Normal).expect("unit 1");
    state.pass(1, 3, 30, XrayResult::Clear, None).expect("pass");
    let n = new_events(&ring_of(read_ring(&mut ctx).await), 2);
    assert_eq!(n.events.len(), 1);
    assert!(n.errors.is_empty());
}

#[test]
fn units_and_fault_modes_are_checked() {
    assert_eq!(
        XrayState::new(map(), &[]).err(),
        Some(XraySimError::NoUnits)
    );
    assert_eq!(
        XrayState::new(map(), &[1, 0]).err(),
        Some(XraySimError::BadUnit(0))
    );
    assert_eq!(
        XrayState::new(map(), &[248]).err(),
        Some(XraySimError::BadUnit(248))
    );
    let s = XrayState::new(map(), &[2, 1, 2]).expect("units");
    assert_eq!(s.units(), vec![1, 2]);
    assert_eq!(
        s.pass(3, 1, 1, XrayResult::Clear, None),
        Err(XraySimError::UnknownUnit(3))
    );
    assert_eq!(s.reads_served(3), 0);

    for (text, fault) in [
        ("normal", XrayFault::Normal),
        ("Silent", XrayFault::Silent),
        ("garbage", XrayFault::Garbage),
        (
            "exception",
            XrayFault::Exception(ExceptionCode::ServerDeviceFailure),
        ),
        (
            "exception:6",
            XrayFault::Exception(ExceptionCode::ServerDeviceBusy),
        ),
        (
            "exception:0x0b",
            XrayFault::Exception(ExceptionCode::GatewayTargetDevice),
        ),
    ] {
        assert_eq!(text.parse::<XrayFault>(), Ok(fault), "{text}");
        assert_eq!(fault.to_string().parse::<XrayFault>(), Ok(fault));
    }
    for bad in ["", "loud", "exception:0", "exception:256", "silent:1"] {
        assert!(bad.parse::<XrayFault>().is_err(), "{bad}");
    }
}

/// The wrap of the ring: more entries than slots, read by the decoder as the daemon does.
#[test]
fn the_ring_wraps_like_the_contract_says() {
    let m = map();
    let s = XrayState::new(m.clone(), &[1]).expect("unit");
    let mut last = 0;
    let mut seen = Vec::new();
    for scan in 0..(u32::from(m.ring) * 3) {
        s.pass(1, scan, 5, XrayResult::Clear, None).expect("pass");
        if scan % 7 == 6 {
            let n = new_events(&s.ring(1).expect("ring"), last);
            assert_eq!(n.missed, 0);
            seen.extend(n.events.iter().map(|e| e.scan_id));
            last = n.events.last().map_or(last, |e| e.seq);
        }
    }
    let n = new_events(&s.ring(1).expect("ring"), last);
    seen.extend(n.events.iter().map(|e| e.scan_id));
    assert_eq!(seen, (0..u32::from(m.ring) * 3).collect::<Vec<_>>());
}

fn small_spec(format: ImageFormat) -> ImageSpec {
    ImageSpec {
        width: 160,
        height: 120,
        format,
        ..ImageSpec::default()
    }
}

fn no_part_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).expect("spool").all(|e| {
        !e.expect("entry")
            .file_name()
            .to_string_lossy()
            .ends_with(".part")
    })
}

#[test]
fn images_decode_are_deterministic_and_suspects_differ() {
    let dir = tempfile::tempdir().expect("tempdir");
    let images = XrayImages::new(dir.path(), ImageSpec::default()).expect("spec");
    let files = images.write(4711, false).expect("write");
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["4711_top.jpg", "4711_side.jpg"]);
    for f in &files {
        let img = image::open(f).expect("decodes");
        assert_eq!((img.width(), img.height()), (640, 480));
    }
    assert!(no_part_files(dir.path()));
    let first = std::fs::read(&files[0]).expect("read");
    images.write(4711, false).expect("write again");
    assert_eq!(first, std::fs::read(&files[0]).expect("read"), "same bytes");

    let spec = small_spec(ImageFormat::Png);
    let top = render(4711, "top", false, &spec);
    assert_eq!(top, render(4711, "top", false, &spec));
    assert_ne!(top, render(4711, "top", true, &spec), "suspect differs");
    assert_ne!(top, render(4711, "side", false, &spec), "views differ");
    assert_ne!(top, render(4712, "top", false, &spec), "scans differ");
    // The suspect object is dense: it adds a patch of nearly opaque pixels.
    for scan in 0..20 {
        let (clear, suspect) = (
            dense_pixels(&render(scan, "top", false, &spec)),
            dense_pixels(&render(scan, "top", true, &spec)),
        );
        assert!(suspect > clear + 100, "scan {scan}: {clear} -> {suspect}");
    }

    // PNG is lossless: the file holds exactly the rendered pixels.
    let png = XrayImages::new(dir.path(), spec.clone()).expect("spec");
    let path = png.write_view(5, "top", true).expect("write");
    assert!(path.ends_with("5_top.png"));
    let back = image::open(&path).expect("decodes").to_rgb8();
    assert_eq!(back, render(5, "top", true, &spec));

    let grey = ImageSpec {
        palette: Palette::Grey,
        ..spec
    };
    assert!(render(5, "top", true, &grey)
        .pixels()
        .all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
}

/// Pixels where red and green, which the dense object all but stops, are below 30.
fn dense_pixels(img: &image::RgbImage) -> usize {
    img.pixels().filter(|p| p.0[0] < 30 && p.0[1] < 30).count()
}

/// Corrupt files fail to decode. Half a JPEG may not: the `image` crate decodes JPEG
/// leniently (zune-jpeg with strict mode off) and fills what is missing with grey, so a
/// reader that must reject half-written files has to check for the end-of-image marker,
/// which a truncated file lacks and a whole one has.
#[test]
fn corrupt_and_truncated_files_are_recognisable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let images = XrayImages::new(dir.path(), small_spec(ImageFormat::Jpeg)).expect("spec");
    let corrupt = images.write_corrupt(9, "top").expect("corrupt");
    let truncated = images.write_truncated(9, "side").expect("truncated");
    assert!(corrupt.ends_with("9_top.jpg") && truncated.ends_with("9_side.jpg"));
    assert!(image::open(&corrupt).is_err(), "random bytes decoded");

    let whole = images.write_view(10, "side", false).expect("whole");
    let ends_whole = |p: &Path| std::fs::read(p).expect("read").ends_with(&[0xFF, 0xD9]);
    assert!(ends_whole(&whole));
    assert!(
        !ends_whole(&truncated),
        "a truncated JPEG kept its end marker"
    );
    let bytes = std::fs::read(&truncated).expect("read");
    assert_eq!(&bytes[..2], &[0xFF, 0xD8], "a JPEG's start");
    let complete = image::load_from_memory(
        &encode(
            &render(9, "side", false, images.spec()),
            ImageFormat::Jpeg,
            images.spec().jpeg_quality,
        )
        .expect("encode"),
    )
    .expect("decodes")
    .to_rgb8();
    if let Ok(partial) = image::open(&truncated) {
        assert_ne!(
            partial.to_rgb8(),
            complete,
            "half a JPEG gave the whole picture"
        );
    }
    assert!(no_part_files(dir.path()));
}

#[test]
fn image_specs_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad_size = ImageSpec {
        width: 8,
        ..ImageSpec::default()
    };
    assert!(matches!(
        XrayImages::new(dir.path(), bad_size),
        Err(ImageError::Size { .. })
    ));
    let bad_view = ImageSpec {
        views: vec!["top".into(), "../x".into()],
        ..ImageSpec::default()
    };
    assert!(matches!(
        XrayImages::new(dir.path(), bad_view),
        Err(ImageError::View(v)) if v == "../x"
    ));
    for bad in ["Top", "", "a-very-long-view-name"] {
        let spec = ImageSpec {
            views: vec![bad.into()],
            ..ImageSpec::default()
        };
        assert!(XrayImages::new(dir.path(), spec).is_err(), "{bad}");
    }
}

#[test]
fn outcomes_follow_the_rates_and_the_seed() {
    let config = DriverConfig {
        suspect_rate: 0.2,
        mark_rate: 0.1,
        seed: 3,
        ..DriverConfig::default()
    };
    let outcomes: Vec<Outcome> = (0..4000)
        .map(|scan| config.outcome(&Passage::new(scan, 1_000)))
        .collect();
    let suspects = outcomes
        .iter()
        .filter(|o| o.result == XrayResult::Suspect)
        .count();
    let marks = outcomes.iter().filter(|o| o.mark_at_ms.is_some()).count();
    assert!((640..=960).contains(&suspects), "{suspects}");
    assert!((300..=500).contains(&marks), "{marks}");
    assert!(outcomes.iter().all(|o| o.verdict_at_ms == 1_800));
    assert!(outcomes
        .iter()
        .filter_map(|o| o.mark_at_ms)
        .all(|m| m == 4_800));
    // Same seed, same outcomes; another seed, others.
    assert_eq!(
        config.outcome(&Passage::new(17, 5)),
        outcomes_of(&config, 17)
    );
    let other = DriverConfig {
        seed: 4,
        ..config.clone()
    };
    assert_ne!(
        (0..100)
            .map(|s| outcomes_of(&config, s))
            .collect::<Vec<_>>(),
        (0..100).map(|s| outcomes_of(&other, s)).collect::<Vec<_>>()
    );
    // The plan may decide; the mark does not change with the suspect rate.
    let forced = Passage {
        suspect: Some(true),
        ..Passage::new(17, 5)
    };
    assert_eq!(config.outcome(&forced).result, XrayResult::Suspect);
    let none = DriverConfig {
        suspect_rate: 0.0,
        ..config.clone()
    };
    for s in 0..200 {
        assert_eq!(
            outcomes_of(&none, s).mark_at_ms,
            outcomes_of(&config, s).mark_at_ms
        );
        assert_eq!(outcomes_of(&none, s).result, XrayResult::Clear);
    }
    assert!(matches!(
        DriverConfig {
            mark_rate: 1.5,
            ..DriverConfig::default()
        }
        .validate(),
        Err(DriverError::Rate {
            field: "mark_rate",
            ..
        })
    ));
    // A nonsense entry time saturates instead of overflowing.
    let far = config.outcome(&Passage::new(1, u64::MAX));
    assert_eq!(far.verdict_at_ms, u64::MAX);
}

fn outcomes_of(config: &DriverConfig, scan: u32) -> Outcome {
    config.outcome(&Passage::new(scan, 5))
}

/// A driver on paused tokio time: every verdict and mark lands in the ring with the
/// passage's entry time, every scan's images are written.
#[tokio::test(start_paused = true)]
async fn driver_plays_verdicts_marks_and_images() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = XrayState::new(map(), &[1, 2]).expect("units");
    let images = XrayImages::new(dir.path(), small_spec(ImageFormat::Jpeg)).expect("spec");
    let config = DriverConfig {
        unit: 2,
        mark_rate: 1.0,
        processing: Duration::from_millis(500),
        mark_latency: Duration::from_secs(2),
        ..DriverConfig::default()
    };
    let (driver, feed) = XrayDriver::new(config, state.clone(), Some(images)).expect("driver");
    let t = feed.now_ms();
    let mut outcomes = Vec::new();
    for (i, suspect) in [false, true, false].into_iter().enumerate() {
        let p = Passage {
            suspect: Some(suspect),
            ..Passage::new(300 + i as u32, t + 100 * i as u64)
        };
        outcomes.push(feed.pass(p).expect("driver running"));
    }
    drop(feed);
    let stats = driver.run(std::future::pending()).await;
    assert_eq!(
        (stats.passages, stats.verdicts, stats.suspects, stats.marks),
        (3, 3, 1, 3)
    );
    assert_eq!((stats.image_sets, stats.image_errors), (3, 0));
    let events = state.events(2).expect("unit 2");
    let scans: Vec<(u32, XrayResult)> = events.iter().map(|e| (e.scan_id, e.result)).collect();
    assert_eq!(
        scans,
        vec![
            (300, XrayResult::Clear),
            (301, XrayResult::Suspect),
            (302, XrayResult::Clear),
            (300, XrayResult::OperatorMark),
            (301, XrayResult::OperatorMark),
            (302, XrayResult::OperatorMark),
        ]
    );
    for e in &events {
        let i = u64::from(e.scan_id - 300);
        assert_eq!(e.entered_at_ms, t + 100 * i);
    }
    assert_eq!(outcomes[1].flagged_at_ms(), Some(t + 100 + 500));
    assert_eq!(outcomes[0].flagged_at_ms(), Some(t + 500 + 2000));
    assert!(state.events(1).expect("unit 1").is_empty());
    for scan in 300..303 {
        for view in ["top", "side"] {
            assert!(dir.path().join(format!("{scan}_{view}.jpg")).exists());
        }
    }
}

/// Waits (on paused time) until unit 1's ring holds an entry.
async fn first_verdict(state: &XrayState) {
    while state.events(1).expect("unit 1").is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn images_come_before_or_after_the_verdict_as_configured() {
    for order in [
        ImageOrder::Before,
        ImageOrder::After(Duration::from_secs(1)),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = XrayState::new(map(), &[1]).expect("unit");
        let images = XrayImages::new(dir.path(), small_spec(ImageFormat::Png)).expect("spec");
        let config = DriverConfig {
            image_order: order,
            mark_rate: 0.0,
            ..DriverConfig::default()
        };
        let (driver, feed) = XrayDriver::new(config, state.clone(), Some(images)).expect("driver");
        let task = tokio::spawn(driver.run(std::future::pending()));
        feed.pass(Passage::new(12, feed.now_ms())).expect("running");
        drop(feed);
        first_verdict(&state).await;
        let there = dir.path().join("12_top.png").exists();
        assert_eq!(there, order == ImageOrder::Before, "{order:?}");
        let stats = task.await.expect("driver");
        assert_eq!(stats.image_sets, 1, "{order:?}");
        assert!(dir.path().join("12_side.png").exists());
    }
}

#[tokio::test]
async fn driver_refuses_a_unit_it_cannot_reach() {
    let state = XrayState::new(map(), &[1]).expect("unit");
    let config = DriverConfig {
        unit: 5,
        ..DriverConfig::default()
    };
    assert_eq!(
        XrayDriver::new(config, state, None).err(),
        Some(DriverError::Sim(XraySimError::UnknownUnit(5)))
    );
}

/// Modbus RTU over a pty pair: two units on one "bus", a third address nobody answers.
#[tokio::test]
async fn rtu_over_a_pty_pair_serves_two_units() {
    use tokio_modbus::client::Client as _;
    use tokio_modbus::prelude::SlaveContext as _;
    use tokio_serial::SerialPortBuilderExt as _;

    let socat_found = std::process::Command::new("socat")
        .arg("-V")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !socat_found {
        eprintln!(
            "SKIPPED rtu_over_a_pty_pair_serves_two_units: `socat` is not installed, so no pty \
             pair; install socat to run it"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("xray-a"), dir.path().join("xray-b"));
    let mut socat = std::process::Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start socat");
    let mut waited = 0;
    while !(a.exists() && b.exists()) && waited < 500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }

    let state = XrayState::new(map(), &[1, 2]).expect("units");
    state
        .pass(1, 11, 1_000, XrayResult::Clear, Some(Material::Organic))
        .expect("pass");
    state
        .pass(2, 22, 2_000, XrayResult::Suspect, Some(Material::Dense))
        .expect("pass");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_rtu(
        a.to_str().expect("utf-8 path"),
        115_200,
        state.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    let port = tokio_serial::new(b.to_string_lossy(), 115_200)
        .open_native_async()
        .expect("open pty");
    let mut ctx = tokio_modbus::client::rtu::attach_slave(port, Slave(1));
    let n = new_events(&ring_of(read_ring(&mut ctx).await), 0);
    assert_eq!(
        n.events.iter().map(|e| e.scan_id).collect::<Vec<_>>(),
        vec![11]
    );
    ctx.set_slave(Slave(2));
    let n = new_events(&ring_of(read_ring(&mut ctx).await), 0);
    assert_eq!(n.events[0].scan_id, 22);
    assert_eq!(n.events[0].material, Some(Material::Dense));
    // Nobody on the bus has address 3: no answer, and the bus still works afterwards.
    ctx.set_slave(Slave(3));
    assert!(read_ring(&mut ctx).await.is_none(), "unit 3 answered");
    ctx.set_slave(Slave(1));
    state.set_fault(1, XrayFault::Silent).expect("unit 1");
    assert!(
        read_ring(&mut ctx).await.is_none(),
        "silent unit 1 answered"
    );
    ctx.set_slave(Slave(2));
    assert!(
        ring_of(read_ring(&mut ctx).await)[0] > 0,
        "unit 2 after the silence"
    );
    assert_eq!((state.reads_served(1), state.reads_served(2)), (1, 2));
    let _ = ctx.disconnect().await;
    let _ = stop.send(());
    let _ = server.await;
    let _ = socat.kill();
    let _ = socat.wait();
}
