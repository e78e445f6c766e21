//! The render pool: a few threads of their own that run renders and other heavy page
//! work at a lower CPU priority than the rest of the process, so that on a busy machine
//! the webhook path (request workers, the committer) is scheduled first. Callers hold a
//! render slot while their job runs, so the pool never queues more jobs than it has
//! threads.

use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// How much higher a nice value the render threads take than the process they start in
/// (capped at 19): under contention a thread at +10 gets about a tenth of the CPU.
pub const NICE: i32 = 10;

/// Why a job did not run to its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("render job panicked: {0}")]
    Panicked(String),
    #[error("render pool stopped")]
    Stopped,
}

/// Threads that live as long as the pool (they exit once it is dropped).
pub struct Pool {
    jobs: mpsc::Sender<Job>,
    /// How many threads started; with none (the OS refused them all) jobs run on tokio's
    /// blocking pool instead of every one failing with [`PoolError::Stopped`].
    threads: usize,
}

impl Pool {
    /// Starts `threads` threads named `render-N`, each [`NICE`] lower in priority (a host
    /// that refuses it keeps the normal priority, with a warning).
    pub fn new(threads: usize) -> Pool {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("render-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => break,
                        }
                    }
                });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::error!(error = %e, "could not start a render thread"),
            }
        }
        Pool {
            jobs: tx,
            threads: started,
        }
    }

    /// Runs `work` on a pool thread and waits for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        if self.threads == 0 {
            return tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| PoolError::Panicked(e.to_string()));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(work));
            let _ = tx.send(result);
        });
        self.jobs.send(job).map_err(|_| PoolError::Stopped)?;
        match rx.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(panic)) => Err(PoolError::Panicked(
                panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default(),
            )),
            Err(_) => Err(PoolError::Stopped),
        }
    }
}

/// Lowers the calling thread's CPU priority (on Linux a nice value is per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        let now = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
        if let Err(e) = rustix::process::setpriority_process(Some(tid), (now + NICE).min(19)) {
            tracing::warn!(error = %e, "render thread keeps the normal CPU priority");
        }
    }
}

/// The nice value of the calling thread (tests and diagnostics).
#[cfg(target_os = "linux")]
pub fn current_nice() -> i32 {
    rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(0)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_lower_priority_threads_and_a_panic_is_an_error() {
        let base = current_nice();
        let pool = Pool::new(2);
        let (name, nice) = pool
            .run(|| {
                (
                    std::thread::current().name().map(str::to_owned),
                    current_nice(),
                )
            })
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("render-"));
        assert_eq!(
            nice,
            (base + NICE).min(19),
            "the render thread runs at nice {nice}"
        );
        assert_eq!(current_nice(), base, "the caller keeps its priority");
        let failed = pool.run(|| -> u32 { panic!("boom") }).await;
        assert!(
            matches!(&failed, Err(PoolError::Panicked(m)) if m.contains("boom")),
            "{failed:?}"
        );
        // The thread that caught the panic still serves jobs.
        for _ in 0..4 {
            assert_eq!(pool.run(|| 7).await, Ok(7));
        }
    }
}
