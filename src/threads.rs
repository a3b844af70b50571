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
//! - **The main runtime** (the process's async workers) runs the uplink, the staff view, the
//!   evidence and camera pipelines, housekeeping and reloads. However busy a backlog drain,
//!   a purge or a flood of browser connections makes it, the floor thread's parcels are not
//!   behind it in any queue.
//!
//! Each is a single-threaded tokio runtime on its own OS thread: tasks spawned on it keep
//! their timers and I/O there. Channels between runtimes need no care.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

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
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(name)
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
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

impl Drop for Dedicated {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
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
}
