//! The X-ray workstation's behaviour over time: from a parcel's passage to its verdict,
//! images and, sometimes, an officer's mark.
//!
//! A [`Passage`] is a scan id and the moment the parcel entered the tunnel (Unix ms, the
//! scanner's clock: the controller joins verdicts to parcels by it). For each one the driver
//! decides an [`Outcome`] from its seed and the scan id alone ([`DriverConfig::outcome`], pure):
//! clear, or suspect at `suspect_rate` (unless the passage says which), a material class, and
//! at `mark_rate` an operator mark. Then it plays the outcome on tokio time:
//!
//! 1. at entry + `processing`, the automatic verdict goes into the unit's ring, with the
//!    images written just before it ([`ImageOrder::Before`]) or some time after it
//!    ([`ImageOrder::After`]) — real workstations do both, and the controller must cope with
//!    a verdict whose images are not there yet as well as with images without a verdict;
//! 2. at verdict + `mark_latency`, the mark, a later entry for the same scan id.
//!
//! Every passage runs as its own task, so one slow image write does not hold up the other
//! passages' verdicts. Writing a scan's two 640 × 480 views takes about 25 ms of CPU in a
//! release build and 200 ms in a debug build; when the writes cannot keep up, images (and,
//! with [`ImageOrder::Before`], verdicts) fall behind in passage order, as on an overloaded
//! workstation. Use smaller images, or no spool, for fast lines in debug builds.
//! Wall-clock times are mapped to tokio instants once, when the driver is made, so a test on
//! paused time (`#[tokio::test(start_paused = true)]`) runs the driver deterministically and
//! instantly.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bondline_devices::xray::{Material, XrayResult};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::rng::SplitMix64;
use super::{XrayImages, XraySimError, XrayState};

const SALT_VERDICT: u64 = 0x0076_6572_6469_6374;
const SALT_MARK: u64 = 0x6F70_6D61_726B;
/// Farthest ahead a time is scheduled: a garbage entry time must not overflow an instant.
const HORIZON: Duration = Duration::from_secs(30 * 24 * 3600);

/// When the images of a scan appear relative to its automatic verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageOrder {
    /// Written, then the verdict published: the controller finds them when it looks.
    Before,
    /// The verdict first, the images this long after it.
    After(Duration),
}

/// How the simulated workstation judges and how fast.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverConfig {
    /// The unit whose ring the verdicts go to.
    pub unit: u8,
    pub seed: u64,
    /// Share of passages the automatic judge flags, 0 to 1.
    pub suspect_rate: f64,
    /// Share of passages an officer marks after the verdict, 0 to 1.
    pub mark_rate: f64,
    /// From tunnel entry to the automatic verdict.
    pub processing: Duration,
    /// From the automatic verdict to the operator mark.
    pub mark_latency: Duration,
    pub image_order: ImageOrder,
}

impl Default for DriverConfig {
    /// Unit 1, seed 0, 5 % suspect, 2 % marked, verdicts 800 ms after entry, marks 3 s after
    /// the verdict, images before the verdict.
    fn default() -> DriverConfig {
        DriverConfig {
            unit: 1,
            seed: 0,
            suspect_rate: 0.05,
            mark_rate: 0.02,
            processing: Duration::from_millis(800),
            mark_latency: Duration::from_secs(3),
            image_order: ImageOrder::Before,
        }
    }
}

/// A parcel entering the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passage {
    pub scan_id: u32,
    /// Unix ms by the scanner's clock.
    pub entered_at_ms: u64,
    /// `Some` when the caller's plan says whether the parcel is suspect; `None` draws it at
    /// the driver's `suspect_rate`.
    pub suspect: Option<bool>,
}

impl Passage {
    pub fn new(scan_id: u32, entered_at_ms: u64) -> Passage {
        Passage {
            scan_id,
            entered_at_ms,
            suspect: None,
        }
    }
}

/// What the workstation will say about one passage, and when (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// `Clear` or `Suspect`.
    pub result: XrayResult,
    pub material: Option<Material>,
    pub verdict_at_ms: u64,
    /// When an officer marks it, if one does.
    pub mark_at_ms: Option<u64>,
}

impl Outcome {
    /// Whether the parcel ends up flagged (suspect, marked or both), and from when.
    pub fn flagged_at_ms(&self) -> Option<u64> {
        if self.result.flags() {
            Some(self.verdict_at_ms)
        } else {
            self.mark_at_ms
        }
    }
}

/// Why a driver cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriverError {
    #[error("{field} must be a share from 0 to 1, not {value}")]
    Rate { field: &'static str, value: f64 },
    #[error(transparent)]
    Sim(#[from] XraySimError),
}

/// What a driver has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    pub passages: u64,
    pub verdicts: u64,
    pub suspects: u64,
    pub marks: u64,
    /// Scans whose every view was written.
    pub image_sets: u64,
    /// Scans whose images could not be written (logged).
    pub image_errors: u64,
}

fn unit_rate(field: &'static str, value: f64) -> Result<(), DriverError> {
    if value.is_finite() && (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(DriverError::Rate { field, value })
    }
}

impl DriverConfig {
    pub fn validate(&self) -> Result<(), DriverError> {
        unit_rate("suspect_rate", self.suspect_rate)?;
        unit_rate("mark_rate", self.mark_rate)
    }

    /// The outcome of passage `p`: a pure function of the seed, the rates, the delays and
    /// the passage. The verdict and the mark draw from streams of their own keyed by scan id,
    /// so changing one rate does not reshuffle the other, and a scan's outcome does not
    /// depend on which scans came before it.
    pub fn outcome(&self, p: &Passage) -> Outcome {
        let key = u64::from(p.scan_id);
        let mut g = SplitMix64::keyed(self.seed, SALT_VERDICT, key);
        let drawn = g.chance(self.suspect_rate);
        let suspect = p.suspect.unwrap_or(drawn);
        let material = material(&mut g, suspect);
        let marked = SplitMix64::keyed(self.seed, SALT_MARK, key).chance(self.mark_rate);
        let verdict_at_ms = p.entered_at_ms.saturating_add(millis(self.processing));
        Outcome {
            result: if suspect {
                XrayResult::Suspect
            } else {
                XrayResult::Clear
            },
            material,
            verdict_at_ms,
            mark_at_ms: marked.then(|| verdict_at_ms.saturating_add(millis(self.mark_latency))),
        }
    }
}

/// What the judge reports seeing: suspect parcels are mostly metal or too dense to see.
fn material(g: &mut SplitMix64, suspect: bool) -> Option<Material> {
    let roll = g.int(0, 99);
    if suspect {
        Some(match roll {
            0..=49 => Material::Metal,
            50..=79 => Material::Dense,
            _ => Material::Mixed,
        })
    } else {
        match roll {
            0..=39 => Some(Material::Organic),
            40..=64 => Some(Material::Inorganic),
            65..=79 => Some(Material::Mixed),
            80..=89 => Some(Material::Metal),
            _ => None,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Unix ms now by the system clock; 0 if the clock is before 1970.
pub(crate) fn unix_now_ms() -> u64 {
    bondline_devices::contract::unix_ms(SystemTime::now())
}

/// Maps Unix ms to tokio instants from one reading of both clocks.
#[derive(Debug, Clone, Copy)]
struct Clock {
    at: Instant,
    unix_ms: u64,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            at: Instant::now(),
            unix_ms: unix_now_ms(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.unix_ms.saturating_add(millis(self.at.elapsed()))
    }

    /// The instant of `unix_ms`; times past are now, times beyond the horizon the horizon.
    fn instant(&self, unix_ms: u64) -> Instant {
        let ahead = Duration::from_millis(unix_ms.saturating_sub(self.now_ms())).min(HORIZON);
        Instant::now() + ahead
    }
}

#[derive(Debug)]
struct Shared {
    config: DriverConfig,
    state: XrayState,
    images: Option<XrayImages>,
    clock: Clock,
    stats: Mutex<DriverStats>,
    /// Image writes at once: one per core. Tokio's semaphore is fair, so when the writes
    /// cannot keep up they still finish in passage order and the lag grows steadily, as on
    /// an overloaded workstation, instead of every write slowing down together.
    writers: Semaphore,
}

impl Shared {
    fn stats(&self) -> MutexGuard<'_, DriverStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn verdict(&self, p: &Passage, o: &Outcome) {
        let unit = self.config.unit;
        match self
            .state
            .pass(unit, p.scan_id, p.entered_at_ms, o.result, o.material)
        {
            Ok(e) => {
                tracing::debug!(
                    unit,
                    scan_id = p.scan_id,
                    seq = e.seq,
                    result = o.result.as_str(),
                    "x-ray verdict"
                );
                let mut s = self.stats();
                s.verdicts += 1;
                s.suspects += u64::from(o.result == XrayResult::Suspect);
            }
            Err(e) => tracing::warn!(%e, "x-ray verdict not written"),
        }
    }

    fn mark(&self, scan_id: u32) {
        let unit = self.config.unit;
        match self.state.mark(unit, scan_id, XrayResult::OperatorMark) {
            Ok(e) => {
                tracing::debug!(unit, scan_id, seq = e.seq, "x-ray operator mark");
                self.stats().marks += 1;
            }
            Err(e) => tracing::warn!(%e, "x-ray mark not written"),
        }
    }

    /// Writes the scan's views off the async threads (rendering and encoding take
    /// milliseconds each).
    async fn write_images(&self, scan_id: u32, suspect: bool) {
        let Some(images) = self.images.clone() else {
            return;
        };
        // The semaphore is never closed, so acquiring only fails if it were.
        let Ok(_permit) = self.writers.acquire().await else {
            return;
        };
        let written =
            tokio::task::spawn_blocking(move || images.write(scan_id, suspect).map(|_| ())).await;
        let mut s = self.stats();
        match written {
            Ok(Ok(())) => s.image_sets += 1,
            Ok(Err(e)) => {
                s.image_errors += 1;
                tracing::warn!(%e, scan_id, "x-ray images not written");
            }
            Err(e) => {
                s.image_errors += 1;
                tracing::warn!(%e, scan_id, "x-ray image writer failed");
            }
        }
    }
}

/// The life of one passage: verdict and images, then the mark.
async fn life(shared: Arc<Shared>, p: Passage, o: Outcome) {
    tokio::time::sleep_until(shared.clock.instant(o.verdict_at_ms)).await;
    let suspect = o.result == XrayResult::Suspect;
    let order = shared.config.image_order;
    if order == ImageOrder::Before {
        shared.write_images(p.scan_id, suspect).await;
    }
    shared.verdict(&p, &o);
    let images_after = async {
        if let ImageOrder::After(delay) = order {
            tokio::time::sleep(delay).await;
            shared.write_images(p.scan_id, suspect).await;
        }
    };
    let mark = async {
        if let Some(at) = o.mark_at_ms {
            tokio::time::sleep_until(shared.clock.instant(at)).await;
            shared.mark(p.scan_id);
        }
    };
    tokio::join!(images_after, mark);
}

/// Plays passages against one unit of an [`XrayState`]; see the module documentation.
#[derive(Debug)]
pub struct XrayDriver {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<(Passage, Outcome)>,
}

/// Where passages go in; cloneable. The driver ends once every feed is dropped and every
/// passage has played out.
#[derive(Debug, Clone)]
pub struct XrayFeed {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<(Passage, Outcome)>,
}

impl XrayDriver {
    /// A driver for `config.unit` of `state`, writing images if `images` is given. Errors: a
    /// rate outside 0..=1, or a unit `state` does not host.
    pub fn new(
        config: DriverConfig,
        state: XrayState,
        images: Option<XrayImages>,
    ) -> Result<(XrayDriver, XrayFeed), DriverError> {
        config.validate()?;
        state.stats(config.unit)?;
        let shared = Arc::new(Shared {
            config,
            state,
            images,
            clock: Clock::now(),
            stats: Mutex::new(DriverStats::default()),
            writers: Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let feed = XrayFeed {
            shared: shared.clone(),
            tx,
        };
        Ok((XrayDriver { shared, rx }, feed))
    }

    /// Plays every passage fed until all feeds are dropped and the last mark is written, or
    /// until `shutdown` (passages in flight are then dropped). Returns what it did.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> DriverStats {
        let mut shutdown = pin!(shutdown);
        let mut lives = JoinSet::new();
        let mut open = true;
        while open || !lives.is_empty() {
            tokio::select! {
                () = shutdown.as_mut() => break,
                msg = self.rx.recv(), if open => match msg {
                    Some((p, o)) => {
                        lives.spawn(life(self.shared.clone(), p, o));
                    }
                    None => open = false,
                },
                Some(_) = lives.join_next(), if !lives.is_empty() => {}
            }
        }
        let stats = *self.shared.stats();
        stats
    }
}

impl XrayFeed {
    /// Hands a passage to the driver and returns its outcome; `None` if the driver has
    /// stopped.
    pub fn pass(&self, p: Passage) -> Option<Outcome> {
        let o = self.shared.config.outcome(&p);
        self.tx.send((p, o)).ok()?;
        self.shared.stats().passages += 1;
        Some(o)
    }

    /// Unix ms now by the driver's clock (tokio time, so paused time in tests).
    pub fn now_ms(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    pub fn config(&self) -> &DriverConfig {
        &self.shared.config
    }

    pub fn stats(&self) -> DriverStats {
        *self.shared.stats()
    }
}

/// Standalone use (`xray-sim --rate`): feeds a passage entering now every `1 / per_s`
/// seconds, scan ids counting up from `first_scan_id` (wrapping past 2^32 - 1 to 1), until
/// the driver stops. A rate that is not a positive finite number feeds nothing.
pub async fn synthetic_passages(feed: XrayFeed, per_s: f64, first_scan_id: u32) {
    if !(per_s.is_finite() && per_s > 0.0) {
        return;
    }
    let period = Duration::from_secs_f64(1.0 / per_s.min(10_000.0));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scan_id = first_scan_id;
    loop {
        tick.tick().await;
        if feed.pass(Passage::new(scan_id, feed.now_ms())).is_none() {
            return;
        }
        scan_id = scan_id.checked_add(1).unwrap_or(1);
    }
}
