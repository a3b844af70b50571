//! `scanner-sim`: a fixed-mount barcode scanner sending frames for plan parcels.
//!
//! Each plan parcel becomes one frame in the profile's framing: a read of its waybill (with
//! the plan's scale reading when the profile has a weight field), the
//! profile's no-read token, or (for [`PlanKind::Garbage`]) bytes a real line produces that are
//! no frame at all: line noise, an over-long frame, a frame with bytes no waybill holds. The
//! garbage is built so the daemon's decoder rejects it without losing the parcel after it,
//! which keeps "one record per readable parcel" a valid expectation in tests.
//!
//! Frames go to a serial port (or a pty standing in for one) or, for network scanners, to the
//! TCP client connected to the scanner, paced at a fixed rate like parcels on a belt.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::time::Duration;

use anyhow::Context as _;
use bondline_devices::framing::ScannerFraming;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::time::MissedTickBehavior;

use crate::plan::{Plan, PlanKind, PlannedParcel};

/// Salt of the plan hash used for the noise bytes, apart from the parcel's kind draw.
const NOISE_SALT: u64 = 0x6E6F_6973;

/// A scanner simulator: which parcels, in which framing, how fast.
#[derive(Debug, Clone)]
pub struct ScannerSim {
    pub framing: ScannerFraming,
    pub plan: Plan,
    /// Frames per second; a belt at 2 m/s with 0.5 m pitch is 4 per second.
    pub rate_per_s: f64,
    /// Stop after this many parcels; `None` runs until shutdown.
    pub count: Option<u64>,
    /// Index of the first plan parcel sent.
    pub start_index: u64,
}

/// Why a pacing run ended without an I/O error.
enum Ended {
    /// `count` parcels have been written.
    Done,
    Shutdown,
    /// The TCP client closed its side.
    PeerGone,
}

impl ScannerSim {
    /// 10 parcels per second from index 0, until shutdown.
    pub fn new(framing: ScannerFraming, plan: Plan) -> ScannerSim {
        ScannerSim {
            framing,
            plan,
            rate_per_s: 10.0,
            count: None,
            start_index: 0,
        }
    }

    /// The bytes the scanner sends for parcel `p`.
    ///
    /// Garbage cycles through three shapes by index: line noise (non-ASCII bytes, which can
    /// never contain the ASCII prefix or suffix), an over-long frame, and a frame with spaces
    /// and `#`. Without a prefix the decoder would glue noise onto the next frame and lose that
    /// parcel, so for prefix-less framings the noise is closed by the suffix.
    pub fn frame_for(&self, p: &PlannedParcel) -> Vec<u8> {
        let f = &self.framing;
        match p.kind {
            PlanKind::NoRead => f.encode(&f.no_read),
            PlanKind::Garbage => match p.index % 3 {
                0 => {
                    let h = self.plan.hash(p.index, NOISE_SALT);
                    let n = 2 + (h % 6) as usize;
                    let mut out = vec![0xff, 0xfe];
                    out.extend(h.to_le_bytes().iter().take(n).map(|b| b | 0x80));
                    if f.prefix.is_empty() {
                        out.extend_from_slice(&f.suffix);
                    }
                    out
                }
                1 => {
                    // Longer than anything the decoder accepts, including the no-read token
                    // and, on a weighing station, a weight field (at most 9 bytes).
                    let weight = if f.weight.is_some() { 10 } else { 0 };
                    let len = f.max_len.max(f.no_read.len()) + 10 + weight;
                    f.encode(&"X".repeat(len))
                }
                _ => f.encode("BL 12#4"),
            },
            // A read; a weighing station appends the scale's reading.
            _ => {
                let weight = f.weight.map(|_| self.plan.facts(p).measured_weight_g);
                f.encode(&f.read_payload(&p.waybill, weight))
            }
        }
    }

    /// Writes frames to `w` at `rate_per_s` until `count` parcels are written or `shutdown`
    /// completes; returns the number of parcels written.
    pub async fn write_to<W: AsyncWrite + Unpin>(
        &self,
        w: &mut W,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<u64> {
        let mut shutdown = pin!(shutdown);
        let mut next = self.start_index;
        let mut written = 0;
        self.pace(
            w,
            &mut next,
            &mut written,
            &mut shutdown,
            std::future::pending(),
            None,
        )
        .await?;
        Ok(written)
    }

    /// Writes frames to a serial device, e.g. one end of
    /// `socat pty,raw,echo=0 pty,raw,echo=0` with the daemon on the other.
    pub async fn run_serial(
        &self,
        path: &str,
        baud: u32,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<u64> {
        use tokio_serial::SerialPortBuilderExt as _;
        let mut port = tokio_serial::new(path, baud)
            .open_native_async()
            .with_context(|| format!("cannot open serial port {path}"))?;
        tracing::info!(path, baud, "scanner-sim writing to serial port");
        let n = self
            .write_to(&mut port, shutdown)
            .await
            .with_context(|| format!("writing to {path}"))?;
        Ok(n)
    }

    /// Serves as a network scanner: accepts one client at a time and sends it frames. When the
    /// client goes away the simulator waits for the next one and carries on with the parcel
    /// after the last one written, so a reconnecting daemon misses only what it did not read.
    /// Returns the number of parcels written, at `count` or at shutdown.
    pub async fn run_tcp(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<u64> {
        self.run_tcp_observed(listener, shutdown, None).await
    }

    /// Like [`ScannerSim::run_tcp`]; `observer` gets each parcel's plan index as its frame is
    /// written, for stages further down the belt (an X-ray tunnel) that must know when.
    pub async fn run_tcp_observed(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        observer: Option<tokio::sync::mpsc::UnboundedSender<u64>>,
    ) -> anyhow::Result<u64> {
        let mut shutdown = pin!(shutdown);
        let mut next = self.start_index;
        let mut written = 0;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "scanner-sim listening for a client");
        }
        loop {
            if self.is_done(written) {
                return Ok(written);
            }
            let (mut stream, peer) = tokio::select! {
                res = listener.accept() => match res {
                    Ok(conn) => conn,
                    Err(err) => {
                        // Usually transient (out of file descriptors, aborted handshake).
                        tracing::warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => return Ok(written),
            };
            tracing::info!(%peer, next, "scanner client connected");
            let (mut rd, mut wr) = stream.split();
            let ended = self
                .pace(
                    &mut wr,
                    &mut next,
                    &mut written,
                    &mut shutdown,
                    peer_gone(&mut rd),
                    observer.as_ref(),
                )
                .await;
            match ended {
                Ok(Ended::Done) => {
                    let _ = wr.shutdown().await;
                    return Ok(written);
                }
                Ok(Ended::Shutdown) => return Ok(written),
                Ok(Ended::PeerGone) => tracing::info!(%peer, next, "scanner client disconnected"),
                Err(err) => tracing::info!(%peer, next, %err, "scanner client connection failed"),
            }
        }
    }

    fn is_done(&self, written: u64) -> bool {
        self.count.is_some_and(|c| written >= c)
    }

    /// The pacing loop shared by every transport. `next` and `written` live with the caller so
    /// a TCP reconnect resumes where the last connection stopped; a frame whose write failed is
    /// not counted and is sent again on the next connection.
    async fn pace<W, S, G>(
        &self,
        w: &mut W,
        next: &mut u64,
        written: &mut u64,
        shutdown: &mut S,
        peer_gone: G,
        observer: Option<&tokio::sync::mpsc::UnboundedSender<u64>>,
    ) -> io::Result<Ended>
    where
        W: AsyncWrite + Unpin,
        S: Future<Output = ()> + Unpin,
        G: Future<Output = ()>,
    {
        let period = self.period()?;
        let mut peer_gone = pin!(peer_gone);
        let mut tick = tokio::time::interval(period);
        // Catch up after a stall, so the average rate holds even when the period is below the
        // timer's resolution.
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        loop {
            if self.is_done(*written) {
                return Ok(Ended::Done);
            }
            tokio::select! {
                biased;
                () = &mut *shutdown => return Ok(Ended::Shutdown),
                () = &mut peer_gone => return Ok(Ended::PeerGone),
                _ = tick.tick() => {}
            }
            let frame = self.frame_for(&self.plan.parcel(*next));
            tokio::select! {
                biased;
                () = &mut *shutdown => return Ok(Ended::Shutdown),
                res = async {
                    w.write_all(&frame).await?;
                    w.flush().await
                } => res?,
            }
            if let Some(o) = observer {
                let _ = o.send(*next);
            }
            *next += 1;
            *written += 1;
        }
    }

    fn period(&self) -> io::Result<Duration> {
        let rate = self.rate_per_s;
        let invalid = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("scanner rate must be a positive number of frames per second, not {rate}"),
            )
        };
        if !rate.is_finite() || rate <= 0.0 {
            return Err(invalid());
        }
        let period = Duration::try_from_secs_f64(1.0 / rate).map_err(|_| invalid())?;
        // `interval` rejects a zero period; a microsecond is faster than any wire anyway.
        Ok(period.max(Duration::from_micros(1)))
    }
}

/// Completes when the peer closes its side or the connection fails. Whatever a client sends a
/// scanner (some daemons send triggers) is read and ignored.
async fn peer_gone<R: AsyncRead + Unpin>(rd: &mut R) {
    let mut buf = [0u8; 256];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::framing::{Frame, FrameDecoder, Reject};
    use bondline_devices::Profiles;

    use crate::plan::Mix;

    /// The daemon spawns these futures; this only has to compile.
    #[allow(dead_code)]
    fn futures_are_send(sim: &ScannerSim, l: TcpListener, w: &mut tokio::net::TcpStream) {
        fn send<T: Send>(_: T) {}
        send(sim.run_tcp(l, async {}));
        send(sim.run_serial("/dev/null", 9600, async {}));
        send(sim.write_to(w, async {}));
    }

    fn framing(name: &str) -> ScannerFraming {
        Profiles::builtin()
            .get(name)
            .and_then(|p| p.scanner().cloned())
            .expect("built-in scanner profile")
    }

    /// Every readable parcel decodes to exactly its waybill, every no-read to a no-read, in
    /// order, and garbage only ever to rejects, whatever chunking the transport applies.
    #[test]
    fn frames_decode_back_to_the_plan() {
        for (name, mix) in [
            ("scanner-stx-etx", Mix::default()),
            ("scanner-crlf", Mix::default()),
            ("dws-stx-etx", Mix::every_rule()),
        ] {
            let sim = ScannerSim::new(framing(name), Plan::with_mix(1, mix));
            let parcels: Vec<_> = sim.plan.parcels(0..1000).collect();
            let bytes: Vec<u8> = parcels.iter().flat_map(|p| sim.frame_for(p)).collect();
            let weighs = sim.framing.weight.is_some();
            let expected: Vec<Frame> = parcels
                .iter()
                .filter_map(|p| match p.kind {
                    PlanKind::Garbage => None,
                    PlanKind::NoRead => Some(Frame::NoRead),
                    _ if weighs => Some(Frame::Weighed(
                        p.waybill.clone(),
                        Some(sim.plan.facts(p).measured_weight_g),
                    )),
                    _ => Some(Frame::Read(p.waybill.clone())),
                })
                .collect();
            for chunk in [1, 7, bytes.len()] {
                let mut dec = FrameDecoder::new(sim.framing.clone());
                let mut out = Vec::new();
                for c in bytes.chunks(chunk) {
                    dec.push(c, &mut out);
                }
                let (rejects, frames): (Vec<_>, Vec<_>) =
                    out.into_iter().partition(|f| matches!(f, Frame::Reject(_)));
                assert_eq!(frames, expected, "{name}, chunk {chunk}");
                let garbage = parcels
                    .iter()
                    .filter(|p| p.kind == PlanKind::Garbage)
                    .count();
                assert!(
                    garbage > 10,
                    "{name}: too little garbage to test: {garbage}"
                );
                // Every garbage frame is rejected once; nothing else is.
                assert_eq!(rejects.len(), garbage, "{name}, chunk {chunk}: {rejects:?}");
                for shape in [
                    |r: &Frame| matches!(r, Frame::Reject(Reject::TooLong)),
                    |r: &Frame| matches!(r, Frame::Reject(Reject::Malformed { .. })),
                ] {
                    assert!(rejects.iter().any(shape), "{name}: {rejects:?}");
                }
            }
        }
    }

    #[test]
    fn noise_holds_no_prefix_or_suffix_byte() {
        let f = framing("scanner-stx-etx");
        let sim = ScannerSim::new(f.clone(), Plan::new(9));
        let noise: Vec<_> = sim
            .plan
            .parcels(0..3000)
            .filter(|p| p.kind == PlanKind::Garbage && p.index % 3 == 0)
            .map(|p| sim.frame_for(&p))
            .collect();
        assert!(!noise.is_empty());
        for n in noise {
            assert!(n
                .iter()
                .all(|b| !f.prefix.contains(b) && !f.suffix.contains(b)));
        }
    }

    #[tokio::test]
    async fn write_to_paces_and_stops_at_count() {
        let mut sim = ScannerSim::new(framing("scanner-crlf"), Plan::new(2));
        sim.rate_per_s = 50.0;
        sim.count = Some(9);
        sim.start_index = 100;
        let mut out = Vec::new();
        let start = std::time::Instant::now();
        let n = sim
            .write_to(&mut out, std::future::pending())
            .await
            .expect("write");
        assert_eq!(n, 9);
        // First frame at once, then one per 20 ms; generous upper bound for a loaded machine.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(155), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        let expected: Vec<u8> = sim
            .plan
            .parcels(100..109)
            .flat_map(|p| sim.frame_for(&p))
            .collect();
        assert_eq!(out, expected);
    }

    #[tokio::test]
    async fn write_to_stops_at_shutdown_and_rejects_bad_rate() {
        let mut sim = ScannerSim::new(framing("scanner-crlf"), Plan::new(2));
        sim.rate_per_s = 100.0;
        let mut out = Vec::new();
        let n = sim
            .write_to(&mut out, tokio::time::sleep(Duration::from_millis(105)))
            .await
            .expect("write");
        // About 11 at this rate; timers on a busy CI machine are only roughly on time.
        assert!((2..=40).contains(&n), "{n}");
        let expected: Vec<u8> = sim
            .plan
            .parcels(0..n)
            .flat_map(|p| sim.frame_for(&p))
            .collect();
        assert_eq!(out, expected);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            sim.rate_per_s = bad;
            let err = sim.write_to(&mut out, std::future::pending()).await;
            assert_eq!(err.map_err(|e| e.kind()), Err(io::ErrorKind::InvalidInput));
        }
    }

    #[tokio::test]
    async fn tcp_client_reconnect_resumes_with_next_parcel() {
        let mut sim = ScannerSim::new(framing("scanner-stx-etx"), Plan::new(3));
        sim.rate_per_s = 20.0;
        sim.count = Some(6);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let expected: Vec<u8> = sim
            .plan
            .parcels(0..6)
            .flat_map(|p| sim.frame_for(&p))
            .collect();
        let first_two = sim
            .plan
            .parcels(0..2)
            .map(|p| sim.frame_for(&p).len())
            .sum::<usize>();
        let server =
            tokio::spawn(async move { sim.run_tcp(listener, std::future::pending()).await });

        let mut got = Vec::new();
        {
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let mut buf = vec![0u8; first_two];
            c.read_exact(&mut buf).await.expect("read");
            got.extend(buf);
        }
        // The simulator notices the close and waits; the next client gets the rest.
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        c.read_to_end(&mut got).await.expect("read");
        let n = server.await.expect("join").expect("run");
        assert_eq!(n, 6);
        // A frame written to the dying first connection may be lost, never duplicated or
        // reordered; with the close noticed at once, nothing is lost.
        assert_eq!(got, expected);
    }
}
