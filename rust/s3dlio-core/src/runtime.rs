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
    s3_clients: Mutex<Lru<crate::backend::s3::ClientKey, Arc<crate::backend::endpoints::Endpoints>>>,
    backends: Mutex<Lru<crate::registry::RegistryKey, Arc<dyn crate::backend::Backend>>>,
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
        raise_open_file_limit();
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
        s3_clients: Mutex::new(Lru::new(CACHED)),
        backends: Mutex::new(Lru::new(CACHED)),
        metrics: crate::metrics::Metrics::default(),
    }));
    *current = Some(ctx);
    Ok(ctx)
}

/// The soft limit on open files s3dlio raises the process's to (within the hard limit).
const WANTED_OPEN_FILES: u64 = 65536;

/// Every request in flight holds a socket: with the common soft limit of 1,024 open files, a pool
/// of 2,048 requests would fail with "Too many open files" (the "dispatch failure" other clients
/// report). Raise the soft limit towards the hard limit, as Go's runtime, Node and Ray do, up to
/// 65,536; never lower it. `S3DLIO_RAISE_NOFILE=0` leaves it alone.
fn raise_open_file_limit() {
    if std::env::var("S3DLIO_RAISE_NOFILE").is_ok_and(|v| v.trim() == "0") {
        return;
    }
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit struct.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return;
            }
            let want = (WANTED_OPEN_FILES as libc::rlim_t).min(lim.rlim_max);
            if lim.rlim_cur < want {
                lim.rlim_cur = want;
                let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }
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
    ) -> MutexGuard<'_, Lru<crate::backend::s3::ClientKey, Arc<crate::backend::endpoints::Endpoints>>> {
        lock(&self.s3_clients)
    }

    /// The counters of every S3 endpoint this process has clients for, one entry per URL (summed
    /// over the client configurations that share it).
    pub fn endpoint_stats(&self, reset: bool) -> Vec<crate::backend::endpoints::EndpointStats> {
        let mut out: Vec<crate::backend::endpoints::EndpointStats> = Vec::new();
        for set in self.clients().values() {
            for e in set.stats(reset) {
                match out.iter_mut().find(|o| o.url == e.url) {
                    Some(o) => {
                        o.requests += e.requests;
                        o.errors += e.errors;
                        o.in_flight += e.in_flight;
                        o.downs += e.downs;
                        o.down |= e.down;
                    }
                    None => out.push(e),
                }
            }
        }
        out.sort_by(|a, b| a.url.cmp(&b.url));
        out
    }

    pub(crate) fn backends(
        &self,
    ) -> MutexGuard<'_, Lru<crate::registry::RegistryKey, Arc<dyn crate::backend::Backend>>> {
        lock(&self.backends)
    }

    /// (backend instances, S3 clients) cached now (each at most 64).
    pub fn cache_sizes(&self) -> (usize, usize) {
        (lock(&self.backends).len(), lock(&self.s3_clients).len())
    }
}

/// Backend instances and SDK clients kept per process: a job that builds configs with
/// ever-changing credentials (rotated keys passed as `StorageConfig` fields) or settings would
/// otherwise grow the caches without bound. The least recently used goes first; one still in use
/// lives on with its users.
const CACHED: usize = 64;

/// A map that keeps at most `cap` entries, evicting the least recently used.
pub(crate) struct Lru<K, V> {
    map: HashMap<K, (V, u64)>,
    tick: u64,
    cap: usize,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Lru<K, V> {
    fn new(cap: usize) -> Lru<K, V> {
        Lru { map: HashMap::new(), tick: 0, cap: cap.max(1) }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values().map(|(v, _)| v)
    }

    /// The value for `key`, marked as just used.
    pub(crate) fn get(&mut self, key: &K) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(key).map(|(v, t)| {
            *t = tick;
            v.clone()
        })
    }

    /// The value for `key`: the one there, or `value` inserted (evicting the least recently used
    /// entry when full).
    pub(crate) fn get_or_insert(&mut self, key: K, value: V) -> V {
        if let Some(v) = self.get(&key) {
            return v;
        }
        if self.map.len() >= self.cap {
            if let Some(oldest) = self.map.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| k.clone()) {
                self.map.remove(&oldest);
            }
        }
        self.tick += 1;
        self.map.insert(key, (value.clone(), self.tick));
        value
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

    #[test]
    fn lru_keeps_the_recently_used_within_its_cap() {
        let mut l = Lru::new(3);
        for i in 0..3 {
            l.get_or_insert(i, i * 10);
        }
        assert_eq!(l.get(&0), Some(0)); // 0 is now the most recent; 1 the least
        assert_eq!(l.get_or_insert(3, 30), 30);
        assert_eq!(l.len(), 3);
        assert_eq!(l.get(&1), None);
        assert_eq!((l.get(&0), l.get(&2), l.get(&3)), (Some(0), Some(20), Some(30)));
        assert_eq!(l.get_or_insert(2, 99), 20); // present: kept
    }
}
