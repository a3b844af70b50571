//! The threads the decision path runs on, apart from everything else.
//!
//! # The threading rule
//! - **The floor thread** runs the decision path and nothing else: the scanner readers, the
//!   line tasks, the PLC links and the X-ray verdict readers of every line, on a runtime of
//!   their own. Nothing there waits on the disk, the network beyond the field devices, or a
//!   lock another thread may hold for long; records leave through unbounded queues,
//!   anomalies and camera requests with `try_send`.
//! - **The journal thread** owns the journal's writer: every sled commit and flush of the
//!   record path happens there, never on a thread the lines or the uplink need.
//! - **The intents thread** stores release intents, the one write a line waits for (a
//!   release command waits for its decision record to be durable): a group commit's
//!   synchronous work on the journal thread never stands in front of it. It runs at the
//!   floor's scheduling; its work per batch of intents is one write and `fdatasync` of the
//!   intents' write-ahead log. The intent store itself (sled's applies, settles and flushes)
//!   is written by `bondline-intents-store`, a thread of its own, in the log's order.
//! - **The uplink thread** runs the MQTT session: its event loop, the record feeder and the
//!   ingest stages, which wake each other for every record and are cheapest on one thread;
//!   outbox reads and clears run on its blocking threads, never on it.
//! - **The main runtime** (the process's async workers) runs the staff view, the evidence
//!   and camera pipelines, housekeeping and reloads. However busy a backlog drain,
//!   a purge or a flood of browser connections makes it, the floor thread's parcels are not
//!   behind it in any queue.
//!
//! - **The log's thread** writes log lines (`crate::telemetry`): a thread that logs, the floor
//!   thread included, never waits on stderr or journald.
//!
//! The floor, journal, intents and uplink threads are each a single-threaded tokio runtime on its own
//! OS thread: tasks spawned on it keep their timers and I/O there. Channels between runtimes
//! need no care.
//!
//! Threads do not protect against a neighbour that takes the CPU: on a two-core gateway a
//! backlog drain keeps both cores busy. The main runtime's and the uplink's threads therefore
//! run at a lower scheduling priority ([`yield_to_floor`], nice +10: about a tenth of the CPU weight of the
//! floor and journal threads when they compete), which needs no privilege. Weight is not
//! latency: a thread that wakes may still wait for a busy neighbour's time slice to end
//! (milliseconds). The floor thread therefore asks to run the moment it wakes ([`urgent`]):
//! real-time priority when the process may take it (the systemd unit's `LimitRTPRIO=10`),
//! else a short time slice (Linux 6.12 and later preempt for it), and logs which it got.
//! `BONDLINE_FLOOR_SCHED=slice` or `=normal` in the environment asks for less, to measure
//! what each one gives (BENCHMARKS.md).
//!
//! Nor is a real-time thread safe from every neighbour: a kernel that does not preempt inside
//! system calls (`PREEMPT_NONE`) lets a neighbour's system call finish before the floor
//! thread runs, and a virtual machine's host takes busy vCPUs away for milliseconds. The
//! one neighbour that can keep both cores busy for minutes, a platform backlog being taken
//! in, is therefore held to a pace while the lines sort (`uplink::ingest_pace`).
//!
//! Priority is not wake-up time either: an idle CPU sleeps in a power-saving state, and
//! leaving it is part of every frame's latency once the line is quiet (on the 2-core bench
//! machine, an idle gateway's p99 was above a busy one's). `[floor] cpu_wake_latency_us` asks
//! the kernel to keep the CPUs out of idle states slower to leave than that
//! ([`WakeLatency`], the kernel's PM QoS request on `/dev/cpu_dma_latency`), for as long as
//! the daemon runs. It costs power (0 makes idle CPUs poll), so it is the operator's choice.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// `[floor]` settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FloorSettings {
    /// Keep the CPUs out of idle states that take longer than this to leave (see
    /// [`WakeLatency`]); `None`: the kernel's own choice.
    pub cpu_wake_latency_us: Option<u32>,
}

/// A held request to the kernel that no CPU sleeps in an idle state slower to leave than the
/// given latency (PM QoS: the value written to `/dev/cpu_dma_latency` stays in force while
/// the file is open). Dropped, or the process gone for any reason, the request ends with it.
#[derive(Debug)]
pub struct WakeLatency {
    _held: std::fs::File,
    pub us: u32,
}

impl WakeLatency {
    /// Where the kernel takes the request.
    pub const DEVICE: &'static str = "/dev/cpu_dma_latency";

    /// Asks for `us` microseconds at most. Fails where the device is missing or not writable
    /// by the service's user (see deploy/udev).
    pub fn hold(us: u32) -> std::io::Result<WakeLatency> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(Self::DEVICE)?;
        // The kernel reads a native-endian 32-bit integer (microseconds).
        f.write_all(&(us.min(i32::MAX as u32) as i32).to_ne_bytes())?;
        Ok(WakeLatency { _held: f, us })
    }
}

/// A single-threaded runtime on a dedicated OS thread. Dropping it lets the thread end once
/// the runtime's `block_on` returns; tasks still spawned on it are dropped with it, so its
/// owner awaits their handles first.
pub struct Dedicated {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl Dedicated {
    /// Starts the thread named `name`.
    pub fn start(name: &str) -> std::io::Result<Dedicated> {
        Dedicated::start_inner(name, || {}, Priority::Normal)
    }

    /// Starts the floor thread: like [`Dedicated::start`], and the thread asks the kernel to
    /// run it the moment it wakes (see [`urgent`]).
    pub fn start_urgent(name: &str) -> std::io::Result<Dedicated> {
        Dedicated::start_inner(name, || {}, Priority::Urgent)
    }

    /// [`Dedicated::start_urgent`] whose blocking threads run `on_blocking_start` first
    /// (they never inherit the thread's real-time priority: see [`urgent`]).
    pub fn start_urgent_with(name: &str, on_blocking_start: fn()) -> std::io::Result<Dedicated> {
        Dedicated::start_inner(name, on_blocking_start, Priority::Urgent)
    }

    /// Like [`Dedicated::start`]; the runtime's blocking threads (`spawn_blocking`) run
    /// `on_blocking_start` first: [`yield_to_floor`] keeps heavy blocking work below the
    /// thread's own priority.
    pub fn start_with(name: &str, on_blocking_start: fn()) -> std::io::Result<Dedicated> {
        Dedicated::start_inner(name, on_blocking_start, Priority::Normal)
    }

    /// A thread for work of the main runtime's kind that is better kept on one thread (the
    /// uplink: its event loop, record feeder and acknowledges wake each other for every
    /// record, which across threads costs a system call and a context switch each time):
    /// it and its blocking threads [`yield_to_floor`] like the main runtime's.
    pub fn start_yielding(name: &str) -> std::io::Result<Dedicated> {
        Dedicated::start_inner(name, yield_to_floor, Priority::Yielding)
    }

    fn start_inner(
        name: &str,
        on_blocking_start: fn(),
        priority: Priority,
    ) -> std::io::Result<Dedicated> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(name)
            .on_thread_start(on_blocking_start)
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                match priority {
                    Priority::Urgent => {
                        let got = urgent();
                        tracing::info!(thread = %std::thread::current().name().unwrap_or(""), scheduling = ?got, "floor thread scheduling");
                    }
                    Priority::Yielding => yield_to_floor(),
                    Priority::Normal => {}
                }
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(Dedicated {
            handle,
            stop: Some(stop),
        })
    }

    /// Runs `fut` on this thread.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }
}

/// How a [`Dedicated`] thread is scheduled.
#[derive(Clone, Copy)]
enum Priority {
    /// [`urgent`]: the floor thread.
    Urgent,
    /// As the process was started: the journal thread.
    Normal,
    /// [`yield_to_floor`], like the main runtime's threads.
    Yielding,
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// How much nicer than the floor the main runtime's threads are.
pub const MAIN_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority by [`MAIN_NICE`]: for the main runtime's
/// worker and blocking threads (`on_thread_start`), so that whatever they do, the floor and
/// journal threads get the CPU first. Linux gives each thread its own nice value; elsewhere,
/// or if the call fails, nothing changes.
pub fn yield_to_floor() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread's own id; no memory is shared.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, (now + MAIN_NICE).min(19));
    }
}

/// Real-time priority of the floor thread when the process may use it (`LimitRTPRIO` or
/// `CAP_SYS_NICE`): above every normal thread, below the kernel's own real-time threads.
pub const FLOOR_RT_PRIORITY: i32 = 10;

/// A short scheduling slice (Linux 6.12 and later: a waking thread with a shorter slice
/// preempts the running one) for the floor thread when real-time priority is not allowed.
pub const FLOOR_SLICE_NS: u64 = 100_000;

/// How the calling thread asked for the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// `SCHED_FIFO` at [`FLOOR_RT_PRIORITY`]: runs the moment it wakes.
    RealTime,
    /// Normal scheduling with a [`FLOOR_SLICE_NS`] slice.
    ShortSlice,
    /// Neither was allowed: normal scheduling.
    Normal,
}

/// Asks the kernel to run the calling thread as soon as it wakes: real-time priority when
/// permitted, else a short slice. The floor thread sleeps almost all the time (a parcel
/// takes microseconds), so it cannot starve the rest; what it gains is not waiting behind a
/// busy neighbour's time slice (milliseconds) each time a frame arrives.
pub fn urgent() -> Urgency {
    let want = std::env::var("BONDLINE_FLOOR_SCHED").unwrap_or_default();
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread with a fully initialised argument.
    unsafe {
        if want != "slice" && want != "normal" {
            let param = libc::sched_param {
                sched_priority: FLOOR_RT_PRIORITY,
            };
            // Threads this one starts (its runtime's blocking threads) get normal scheduling
            // back instead of inheriting the real-time priority.
            if libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
                == 0
            {
                return Urgency::RealTime;
            }
        }
        if want != "normal" {
            let attr = SchedAttr {
                size: std::mem::size_of::<SchedAttr>() as u32,
                sched_policy: libc::SCHED_OTHER as u32,
                sched_flags: 0,
                sched_nice: 0,
                sched_priority: 0,
                sched_runtime: FLOOR_SLICE_NS,
                sched_deadline: 0,
                sched_period: 0,
            };
            if libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) == 0 {
                return Urgency::ShortSlice;
            }
        }
    }
    let _ = want;
    Urgency::Normal
}

/// The kernel's `struct sched_attr` (first version, 48 bytes).
#[cfg(target_os = "linux")]
#[repr(C)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_its_own_named_thread() {
        let t = Dedicated::start("bondline-test").unwrap();
        let name = t
            .spawn(async {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                std::thread::current().name().map(str::to_string)
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("bondline-test"));
        assert_ne!(
            std::thread::current().name(),
            Some("bondline-test"),
            "the caller's thread is another"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_main_thread_yields_and_a_dedicated_one_does_not() {
        fn nice() -> i32 {
            // SAFETY: reads the calling thread's own priority.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::getpriority(libc::PRIO_PROCESS, tid)
            }
        }
        let before = std::thread::spawn(nice).join().unwrap();
        let after = std::thread::spawn(|| {
            yield_to_floor();
            nice()
        })
        .join()
        .unwrap();
        assert_eq!(after, (before + MAIN_NICE).min(19));
    }
}
