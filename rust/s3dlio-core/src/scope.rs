//! What a pool's requests share while they run: the pool's own counters and its adaptive limit.
//!
//! A loader (or one `get_many`) runs each request's future inside [`Scope::run`]. The metered
//! backend wrapper then counts the request in the scope's [`Metrics`] as well as the process's,
//! and the retry loops take a permit of the scope's [`Limiter`] for every attempt. The scope is a
//! tokio task-local set per future (not per task), so the many requests one task polls
//! (`buffer_unordered`) each carry it, and code outside any pool sees none.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::limiter::Limiter;
use crate::metrics::Metrics;

/// One pool's counters and limit.
pub struct Scope {
    pub metrics: Metrics,
    pub limiter: Option<Limiter>,
    pub stall: Stall,
}

/// Who waited for whom, for a loader: the consumer (the training loop) for batches, or finished
/// batches for the consumer. A loop that mostly waits for batches is input-bound.
#[derive(Debug, Default)]
pub struct Stall {
    consumer_wait_ns: AtomicU64,
    producer_wait_ns: AtomicU64,
    batches: AtomicU64,
}

impl Stall {
    /// The consumer waited `d` for a batch.
    pub fn consumer_waited(&self, d: Duration) {
        self.consumer_wait_ns.fetch_add(nanos(d), Ordering::Relaxed);
    }

    /// A finished batch waited `d` for room in the read-ahead window (the consumer was slower).
    pub fn producer_waited(&self, d: Duration) {
        self.producer_wait_ns.fetch_add(nanos(d), Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    /// (seconds the consumer waited, seconds batches waited, batches delivered); with `reset`,
    /// from zero again after this read.
    pub fn read(&self, reset: bool) -> (f64, f64, u64) {
        let r = |a: &AtomicU64| if reset { a.swap(0, Ordering::Relaxed) } else { a.load(Ordering::Relaxed) };
        let s = |ns: u64| ns as f64 / 1e9;
        (s(r(&self.consumer_wait_ns)), s(r(&self.producer_wait_ns)), r(&self.batches))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

tokio::task_local! {
    static SCOPE: Arc<Scope>;
    /// Attempts of the request being polled (for the op-log).
    static ATTEMPTS: Arc<AtomicU32>;
}

/// Run one request's future `fut`, counting its attempts into `attempts`.
pub fn count_attempts<F: Future>(attempts: &Arc<AtomicU32>, fut: F) -> impl Future<Output = F::Output> {
    ATTEMPTS.scope(Arc::clone(attempts), fut)
}

impl Scope {
    pub fn new(limiter: Option<Limiter>) -> Arc<Scope> {
        Arc::new(Scope { metrics: Metrics::default(), limiter, stall: Stall::default() })
    }

    /// Run `fut` inside `scope`.
    pub fn run<F: Future>(scope: &Arc<Scope>, fut: F) -> impl Future<Output = F::Output> {
        SCOPE.scope(Arc::clone(scope), fut)
    }
}

/// The scope of the request being polled, if any.
pub fn current() -> Option<Arc<Scope>> {
    SCOPE.try_with(Arc::clone).ok()
}

/// Run one attempt of a request: under a permit of the current scope's limiter (when there is
/// one), telling the limiter how it ended. Returns the outcome and, when the attempt was one of
/// the pool's probes (made while the limit sat at its floor during a pushback), the pool's
/// pushback timeout: such an attempt failing by pushback costs no retry budget (see
/// `backend::http::Budget`).
pub async fn attempt<T, Fut: Future<Output = Result<T>>>(fut: Fut) -> (Result<T>, Option<Duration>) {
    let _ = ATTEMPTS.try_with(|a| a.fetch_add(1, Ordering::Relaxed));
    let scope = current();
    let Some(limiter) = scope.as_ref().and_then(|s| s.limiter.as_ref()) else {
        return (fut.await, None);
    };
    let permit = limiter.acquire().await;
    let probe = permit.probe().then(|| limiter.config().pushback_timeout);
    let r = fut.await;
    limiter.done(permit, &r);
    (r, probe)
}
