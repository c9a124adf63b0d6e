//! Adaptive concurrency: an AIMD limit on request attempts in flight, shared by one pool's
//! requests (a loader's, or one `get_many`'s).
//!
//! Every attempt of a request (the first and each retry) holds a permit while it is on the wire.
//! When the store pushes back (throttling: 503 SlowDown, 429, Azure's ServerBusy; or no answer at
//! all: a refused or reset connection), the limit is halved, at most once per `cut_interval` (one
//! cut per burst of failures, as TCP cuts once per window), and new attempts pause for a backoff
//! that doubles while the pushback lasts (50 ms up to 2 s, with jitter). A cut with no success
//! since the previous one (a storm, or a store that is down) goes straight to the floor. While the pool waits for a
//! permit no attempt is made, and every pushback starts the pause again: a request loses attempts
//! of its retry budget only to the few probes that go out during a storm, not one per backoff of
//! its own. Once requests succeed again
//! the limit climbs back: by one per success up to half of what was in flight before the episode's
//! first cut (slow start), then by one per `limit` successes (additive increase). A cut halves
//! the attempts actually in flight, not a limit far above them.
//!
//! Waiting for a permit is cancel-safe: dropping the waiting future gives nothing up.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::{Error, ErrorKind};

const PAUSE_MIN: Duration = Duration::from_millis(50);
const PAUSE_MAX: Duration = Duration::from_secs(2);
/// At most one cut per this interval.
const CUT_INTERVAL: Duration = Duration::from_millis(100);

/// The limit's bounds and whether it adapts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterConfig {
    /// The limit never goes below this.
    pub min: usize,
    /// The limit starts here and never goes above it.
    pub max: usize,
    /// `false`: a fixed limit of `max` (throttled requests only back off, each on its own).
    pub adaptive: bool,
    /// How long a request may go on failing by pushback on the pool's probes, without them
    /// counting against its attempts, before it fails.
    pub pushback_timeout: Duration,
}

struct State {
    limit: f64,
    /// Permits the semaphore has issued in all (those in use and those free): `floor(limit)`
    /// once the debt is paid.
    issued: usize,
    /// Permits to take out of circulation as they come back (the limit fell below those in use).
    debt: usize,
    /// Slow start runs while the limit is below this.
    ssthresh: f64,
    last_cut: Option<Instant>,
    pause: Duration,
    paused_until: Option<Instant>,
    cuts: u64,
    /// Attempts that succeeded since the last cut.
    successes: u64,
}

/// An AIMD limit on attempts in flight. See the module docs.
pub struct Limiter {
    cfg: LimiterConfig,
    sem: Semaphore,
    state: Mutex<State>,
}

/// One attempt's permit; give it back with [`Limiter::done`] (dropped without it, the attempt
/// counts as neither success nor pushback).
pub struct Permit<'a> {
    limiter: &'a Limiter,
    permit: Option<SemaphorePermit<'a>>,
    probe: bool,
}

impl Permit<'_> {
    /// Taken while the pool probes a store that pushes back: the limit at its floor, a pause
    /// running or just over.
    pub fn probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            let mut st = self.limiter.lock();
            if st.debt > 0 {
                st.debt -= 1;
                p.forget();
            }
        }
    }
}

/// Whether an attempt's outcome is the store pushing back (throttling, or no answer at all).
pub fn is_pushback(e: &Error) -> bool {
    match e.kind() {
        ErrorKind::Throttled => true,
        ErrorKind::Io => e.status().is_none(),
        _ => false,
    }
}

impl Limiter {
    pub fn new(cfg: LimiterConfig) -> Limiter {
        let max = cfg.max.max(1);
        let cfg = LimiterConfig { min: cfg.min.clamp(1, max), max, ..cfg };
        Limiter {
            cfg,
            sem: Semaphore::new(max),
            state: Mutex::new(State {
                limit: max as f64,
                issued: max,
                debt: 0,
                ssthresh: max as f64,
                last_cut: None,
                pause: Duration::ZERO,
                paused_until: None,
                cuts: 0,
                successes: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> LimiterConfig {
        self.cfg
    }

    /// Wait for a permit, then for the end of a pause if one is running.
    pub async fn acquire(&self) -> Permit<'_> {
        // The semaphore is never closed.
        let permit = self.sem.acquire().await.ok();
        loop {
            let until = self.lock().paused_until;
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => break,
            }
        }
        let probe = {
            let st = self.lock();
            self.cfg.adaptive && !st.pause.is_zero() && st.limit <= self.cfg.min as f64
        };
        Permit { limiter: self, permit, probe }
    }

    /// Give `permit` back, telling how its attempt ended.
    pub fn done<T>(&self, permit: Permit<'_>, outcome: &Result<T, Error>) {
        if self.cfg.adaptive {
            match outcome {
                Ok(_) => self.on_success(),
                Err(e) if is_pushback(e) => self.on_pushback(),
                Err(_) => {}
            }
        }
        drop(permit);
    }

    fn on_success(&self) {
        let mut st = self.lock();
        st.pause = Duration::ZERO;
        st.successes += 1;
        let max = self.cfg.max as f64;
        if st.limit >= max {
            return;
        }
        let step = if st.limit < st.ssthresh { 1.0 } else { 1.0 / st.limit };
        st.limit = (st.limit + step).min(max);
        let target = st.limit.floor() as usize;
        while st.issued < target {
            st.issued += 1;
            if st.debt > 0 {
                st.debt -= 1; // a permit still in use stays in circulation
            } else {
                self.sem.add_permits(1);
            }
        }
    }

    fn on_pushback(&self) {
        let now = Instant::now();
        let mut st = self.lock();
        if st.last_cut.is_some_and(|t| now.duration_since(t) < CUT_INTERVAL) {
            // Within a burst: no second cut, but the pause starts again, so attempts keep
            // pausing while the pushback lasts.
            let pause = st.pause;
            st.paused_until = Some(st.paused_until.map_or(now + pause, |t| t.max(now + pause / 2)));
            return;
        }
        st.last_cut = Some(now);
        st.cuts += 1;
        // Halve what was actually in flight (the limit may be far above it), never below min.
        let in_flight = (st.issued + st.debt).saturating_sub(self.sem.available_permits());
        let half = (st.limit.min(in_flight as f64) / 2.0).max(self.cfg.min as f64);
        if st.pause.is_zero() {
            // The first cut of an episode: slow start climbs back quickly to half of what went
            // through before it, however far further cuts take the limit.
            st.ssthresh = half;
            st.limit = half;
        } else if st.successes == 0 {
            // Nothing got through since the last cut: a storm (or the store is down). Down to
            // the floor at once, and probe from there.
            st.limit = self.cfg.min as f64;
        } else {
            st.limit = half;
        }
        st.successes = 0;
        let target = st.limit.floor() as usize;
        if st.issued > target {
            st.debt += st.issued - target;
            st.issued = target;
            let freed = self.sem.forget_permits(st.debt);
            st.debt -= freed;
        }
        st.pause = (st.pause * 2).clamp(PAUSE_MIN, PAUSE_MAX);
        // Jitter in [pause/2, pause]: probes from several clients spread out.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let pause = st.pause.mul_f64(0.5 + 0.5 * f64::from(nanos % 1000) / 1000.0);
        st.paused_until = Some(now + pause);
    }

    /// The limit now (attempts allowed in flight).
    pub fn limit(&self) -> f64 {
        self.lock().limit
    }

    /// Attempts holding a permit now.
    pub fn in_flight(&self) -> usize {
        let st = self.lock();
        (st.issued + st.debt).saturating_sub(self.sem.available_permits())
    }

    /// Times the limit was cut.
    pub fn cuts(&self) -> u64 {
        self.lock().cuts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttled() -> Result<(), Error> {
        Err(Error::new(ErrorKind::Throttled, Some("s3://b/k"), "SlowDown"))
    }

    #[tokio::test(start_paused = true)]
    async fn cuts_once_per_burst_pauses_and_climbs_back() {
        let l = Limiter::new(LimiterConfig {
            min: 2,
            max: 64,
            adaptive: true,
            pushback_timeout: Duration::from_secs(60),
        });
        let permits: Vec<_> = futures::future::join_all((0..64).map(|_| l.acquire())).await;
        assert_eq!(l.in_flight(), 64);
        let mut it = permits.into_iter();
        for p in it.by_ref().take(10) {
            l.done(p, &throttled()); // a burst: one cut
        }
        assert_eq!((l.limit(), l.cuts()), (32.0, 1));
        drop(it); // the rest come back: the debt is paid by forgetting them
        assert_eq!(l.in_flight(), 0);
        assert_eq!(l.sem.available_permits(), 32);
        // A pause is running: an acquire waits for it.
        let t0 = tokio::time::Instant::now();
        let p = l.acquire().await;
        assert!(t0.elapsed() >= Duration::from_millis(25), "{:?}", t0.elapsed());
        l.done(p, &Ok::<_, Error>(()));
        // Storm: cuts down to the floor, never below.
        for _ in 0..10 {
            tokio::time::advance(CUT_INTERVAL).await;
            let p = l.acquire().await;
            l.done(p, &throttled());
        }
        assert_eq!(l.limit(), 2.0);
        // Recovery: slow start to ssthresh, then additive.
        for _ in 0..200 {
            let p = l.acquire().await;
            l.done(p, &Ok::<_, Error>(()));
        }
        assert!(l.limit() > 15.0, "{}", l.limit());
        assert_eq!(l.sem.available_permits(), l.limit().floor() as usize);
    }

    #[tokio::test]
    async fn fixed_limit_does_not_adapt() {
        let l = Limiter::new(LimiterConfig {
            min: 1,
            max: 8,
            adaptive: false,
            pushback_timeout: Duration::from_secs(60),
        });
        let p = l.acquire().await;
        l.done(p, &throttled());
        assert_eq!((l.limit(), l.cuts()), (8.0, 0));
    }

    #[test]
    fn pushback_is_throttling_or_no_answer() {
        assert!(is_pushback(&Error::new(ErrorKind::Throttled, None, "x")));
        assert!(is_pushback(&Error::new(ErrorKind::Io, None, "connection refused")));
        assert!(!is_pushback(&Error::new(ErrorKind::NotFound, None, "x")));
        assert!(!is_pushback(&Error::new(ErrorKind::Timeout, None, "x")));
    }
}
