//! The per-process runtime context: the tokio runtime, the task tracker and every client bound to
//! that runtime.
//!
//! A runtime or SDK client created before `fork()` is dead in the child (its threads do not exist
//! there), so the context is tagged with the PID that built it. A process that finds a context built
//! by another PID builds its own and *leaks* the parent's: dropping it would try to join threads
//! that were never copied into this process.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, ErrorKind, Result};

/// Everything bound to one process's runtime.
pub struct Context {
    pid: u32,
    runtime: Runtime,
    tracker: TaskTracker,
    cleanup: TaskTracker,
    s3_clients: Mutex<HashMap<crate::backend::s3::ClientKey, aws_sdk_s3::Client>>,
    backends: Mutex<HashMap<crate::registry::RegistryKey, Arc<dyn crate::backend::Backend>>>,
    metrics: crate::metrics::Metrics,
}

static CURRENT: Mutex<Option<&'static Context>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data behind; keep going.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The context of the current process, built on first use (and again in a forked child).
pub fn context() -> Result<&'static Context> {
    let pid = std::process::id();
    let mut current = lock(&CURRENT);
    if let Some(ctx) = *current {
        if ctx.pid == pid {
            return Ok(ctx);
        }
        // Built by our parent before fork(): leak it (the `&'static` is simply forgotten).
    }
    if current.is_none() {
        tune_allocator(); // once per process image (a forked child inherits the setting)
    }
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("s3dlio-worker")
        .enable_all()
        .build()
        .map_err(|e| Error::new(ErrorKind::Io, None, format!("cannot start the tokio runtime: {e}")))?;
    let ctx: &'static Context = Box::leak(Box::new(Context {
        pid,
        runtime,
        tracker: TaskTracker::new(),
        cleanup: TaskTracker::new(),
        s3_clients: Mutex::new(HashMap::new()),
        backends: Mutex::new(HashMap::new()),
        metrics: crate::metrics::Metrics::default(),
    }));
    *current = Some(ctx);
    Ok(ctx)
}

/// Default for `S3DLIO_MALLOC_MMAP_THRESHOLD`: allocations of at least 1 MiB are served by mmap.
const MMAP_THRESHOLD: usize = 1024 * 1024;

/// Make glibc serve large allocations (object buffers) with mmap, so a freed buffer goes back to
/// the OS at once. By default glibc raises its mmap threshold after the first large free, and then
/// keeps freed object buffers in per-thread arenas: a loader's RSS creeps far above the bytes it
/// actually holds. `S3DLIO_MALLOC_MMAP_THRESHOLD=<bytes>` changes the threshold; `0` leaves glibc's
/// own (dynamic) behaviour alone.
fn tune_allocator() {
    let threshold = std::env::var("S3DLIO_MALLOC_MMAP_THRESHOLD")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(MMAP_THRESHOLD);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if threshold > 0 {
        if let Ok(t) = libc::c_int::try_from(threshold) {
            // SAFETY: mallopt only adjusts allocator parameters; it is safe to call at any time.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, t);
            }
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = threshold;
}

impl Context {
    /// PID of the process that built this context.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Spawn a tracked task: it counts in [`Context::live_tasks`] until it finishes or is dropped.
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn_on(fut, self.runtime.handle())
    }

    /// Spawn work that must finish even though its caller is gone (aborting a multipart upload
    /// after a cancellation). It counts in [`Context::live_tasks`]; [`Context::wait_cleanup`]
    /// waits for it.
    pub fn spawn_cleanup<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.cleanup.spawn_on(fut, self.runtime.handle())
    }

    /// A token that counts as one cleanup task until dropped (blocking filesystem work).
    pub fn cleanup_token(&self) -> TaskTrackerToken {
        self.cleanup.token()
    }

    /// Wait (at most `limit`) until no cleanup work is left; true when none is.
    pub async fn wait_cleanup(&self, limit: Duration) -> bool {
        let idle = async {
            while !self.cleanup.is_empty() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        tokio::time::timeout(limit, idle).await.is_ok()
    }

    /// Tasks spawned through this context, and cleanup and blocking work, still alive.
    pub fn live_tasks(&self) -> usize {
        self.tracker.len() + self.cleanup.len()
    }

    /// This process's transfer counters.
    pub fn metrics(&'static self) -> &'static crate::metrics::Metrics {
        &self.metrics
    }

    pub(crate) fn clients(
        &self,
    ) -> MutexGuard<'_, HashMap<crate::backend::s3::ClientKey, aws_sdk_s3::Client>> {
        lock(&self.s3_clients)
    }

    pub(crate) fn backends(
        &self,
    ) -> MutexGuard<'_, HashMap<crate::registry::RegistryKey, Arc<dyn crate::backend::Backend>>> {
        lock(&self.backends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_reused_and_counts_tasks() {
        let a = context().unwrap();
        let b = context().unwrap();
        assert!(std::ptr::eq(a, b));
        assert_eq!(a.pid(), std::process::id());
        let h = a.spawn(async { 7 });
        assert_eq!(a.runtime().block_on(h).unwrap(), 7);
    }
}
