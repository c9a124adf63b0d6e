//! Per-process transfer counters: requests, bytes, objects, errors and retries by cause, requests in
//! flight, and latency histograms. Updated where the work happens (the metered backend wrapper in
//! [`crate::backend::metered`], the retry loops, the request senders) and read by Python:
//! `s3dlio.stats()`, the CLI's progress bars and `s3dlio bench`.
//!
//! Every counter is a relaxed atomic: updating one costs a few nanoseconds and never blocks. The
//! counters live in the process's [`crate::runtime::Context`], so a forked child starts from zero.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{Error, ErrorKind};

/// The operations counted, one request (as the caller sees it, retries included) each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A read of an object or of a range of it.
    Get,
    /// A whole-object write, or one part of a multipart upload.
    Put,
    /// A metadata read.
    Head,
    /// One page of a listing.
    List,
    /// A delete, or one batch delete.
    Delete,
    /// A server-side copy.
    Copy,
    /// Starting, completing or aborting a multipart upload.
    Multipart,
}

impl Op {
    pub const ALL: [Op; 7] = [Op::Get, Op::Put, Op::Head, Op::List, Op::Delete, Op::Copy, Op::Multipart];

    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Head => "head",
            Op::List => "list",
            Op::Delete => "delete",
            Op::Copy => "copy",
            Op::Multipart => "multipart",
        }
    }
}

/// Why a request failed or was retried, coarse enough to act on.
pub const CAUSES: [&str; 10] = [
    "not_found",
    "permission_denied",
    "throttled",
    "timeout",
    "cancelled",
    "invalid",
    "changed",
    "server_error",
    "connection",
    "direct_io",
];

/// The cause of `e`, one of [`CAUSES`].
pub fn cause(e: &Error) -> &'static str {
    match e.kind() {
        ErrorKind::NotFound => "not_found",
        ErrorKind::PermissionDenied => "permission_denied",
        ErrorKind::Throttled => "throttled",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Cancelled => "cancelled",
        ErrorKind::InvalidUri | ErrorKind::InvalidConfig | ErrorKind::InvalidRange => "invalid",
        ErrorKind::Changed => "changed",
        ErrorKind::DirectIoUnsupported => "direct_io",
        ErrorKind::Io => match e.status() {
            Some(_) => "server_error",
            None => "connection",
        },
    }
}

fn cause_index(e: &Error) -> usize {
    let c = cause(e);
    CAUSES.iter().position(|x| *x == c).unwrap_or(0) // every cause is in CAUSES
}

/// Sub-buckets per power of two: bucket bounds are within 1/8 (12.5 %) of each other.
const SUB: u32 = 8;
const SUB_BITS: u32 = 3;
/// Octaves of microseconds covered: up to 2^40 µs (12 days); longer values land in the last.
const OCTAVES: u32 = 40;
const BUCKETS: usize = (SUB + (OCTAVES - SUB_BITS) * SUB) as usize;

/// A log-linear histogram of durations in microseconds: exact below 8 µs, then 8 buckets per
/// power of two. Quantiles are read as the upper bound of the bucket they fall in (at most 12.5 %
/// high).
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

fn bucket_of(us: u64) -> usize {
    if us < u64::from(SUB) {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros(); // >= SUB_BITS
    let sub = (us >> (exp - SUB_BITS)) & u64::from(SUB - 1);
    let idx = (SUB + (exp - SUB_BITS) * SUB) as usize + sub as usize;
    idx.min(BUCKETS - 1)
}

/// The largest value bucket `idx` holds.
fn bucket_upper(idx: usize) -> u64 {
    if idx < SUB as usize {
        return idx as u64;
    }
    let rel = idx as u32 - SUB;
    let exp = rel / SUB + SUB_BITS;
    let sub = u64::from(rel % SUB);
    let lower = (1u64 << exp) + (sub << (exp - SUB_BITS));
    lower + (1u64 << (exp - SUB_BITS)) - 1
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    fn take(&self, reset: bool) -> HistogramSnapshot {
        let read =
            |a: &AtomicU64| if reset { a.swap(0, Ordering::Relaxed) } else { a.load(Ordering::Relaxed) };
        let buckets: Vec<u64> = self.buckets.iter().map(read).collect();
        HistogramSnapshot {
            count: buckets.iter().sum(),
            sum_us: read(&self.sum_us),
            max_us: read(&self.max_us),
            buckets,
        }
    }
}

/// A histogram read at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub count: u64,
    pub sum_us: u64,
    pub max_us: u64,
    buckets: Vec<u64>,
}

impl HistogramSnapshot {
    /// The value (µs) below which a fraction `q` of the samples lie (`None` when empty): the upper
    /// bound of the bucket the `q`-th sample falls in, never above the largest sample.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_upper(i).min(self.max_us));
            }
        }
        Some(self.max_us)
    }

    pub fn mean_us(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_us as f64 / self.count as f64)
    }
}

/// The counters of one [`Op`].
#[derive(Default)]
struct OpCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    latency: Histogram,
    ttfb: Histogram,
}

/// Every counter of one process.
pub struct Metrics {
    ops: [OpCounters; 7],
    in_flight: AtomicI64,
    max_in_flight: AtomicU64,
    objects_read: AtomicU64,
    objects_written: AtomicU64,
    objects_deleted: AtomicU64,
    keys_listed: AtomicU64,
    errors: [AtomicU64; CAUSES.len()],
    retries: [AtomicU64; CAUSES.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            ops: Default::default(),
            in_flight: AtomicI64::new(0),
            max_in_flight: AtomicU64::new(0),
            objects_read: AtomicU64::new(0),
            objects_written: AtomicU64::new(0),
            objects_deleted: AtomicU64::new(0),
            keys_listed: AtomicU64::new(0),
            errors: Default::default(),
            retries: Default::default(),
        }
    }
}

/// What counts when a request ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub bytes: u64,
    pub objects_read: u64,
    pub objects_written: u64,
    pub objects_deleted: u64,
}

/// One request in flight; [`Metrics::finish`] ends it. Dropped without finishing (its future was
/// cancelled), it leaves the in-flight count and counts as cancelled.
pub struct InFlight<'a> {
    metrics: &'a Metrics,
    op: Op,
    started: std::time::Instant,
    done: bool,
}

impl InFlight<'_> {
    /// Count the request: its latency, bytes and objects, or its error.
    pub fn finish<T>(mut self, r: &Result<T, Error>, outcome: impl FnOnce(&T) -> Outcome) {
        self.done = true;
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.ended(self.op, self.started, r, outcome);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Metrics {
    fn op(&self, op: Op) -> &OpCounters {
        &self.ops[op as usize]
    }

    /// A request of `op` that started at `started` (and was not counted in flight) ended with `r`.
    pub fn record<T>(
        &self,
        op: Op,
        started: std::time::Instant,
        r: &Result<T, Error>,
        outcome: impl FnOnce(&T) -> Outcome,
    ) {
        self.op(op).requests.fetch_add(1, Ordering::Relaxed);
        self.ended(op, started, r, outcome);
    }

    fn ended<T>(
        &self,
        op: Op,
        started: std::time::Instant,
        r: &Result<T, Error>,
        outcome: impl FnOnce(&T) -> Outcome,
    ) {
        let m = self;
        let c = m.op(op);
        c.latency.record(started.elapsed());
        match r {
            Ok(v) => {
                let o = outcome(v);
                c.bytes.fetch_add(o.bytes, Ordering::Relaxed);
                m.objects_read.fetch_add(o.objects_read, Ordering::Relaxed);
                m.objects_written.fetch_add(o.objects_written, Ordering::Relaxed);
                m.objects_deleted.fetch_add(o.objects_deleted, Ordering::Relaxed);
            }
            Err(e) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                m.errors[cause_index(e)].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A request of `op` starts now.
    pub fn start(&self, op: Op) -> InFlight<'_> {
        self.op(op).requests.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(u64::try_from(now).unwrap_or(0), Ordering::Relaxed);
        InFlight { metrics: self, op, started: std::time::Instant::now(), done: false }
    }

    /// A request's response headers arrived `d` after it was sent (time to first byte).
    pub fn ttfb(&self, op: Op, d: Duration) {
        self.op(op).ttfb.record(d);
    }

    /// A transient failure `e` is about to be retried.
    pub fn retry(&self, e: &Error) {
        self.retries[cause_index(e)].fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes that moved outside a counted request (a local streaming write or read).
    pub fn add_bytes(&self, op: Op, n: u64) {
        self.op(op).bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_keys_listed(&self, n: u64) {
        self.keys_listed.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_objects_written(&self, n: u64) {
        self.objects_written.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_objects_read(&self, n: u64) {
        self.objects_read.fetch_add(n, Ordering::Relaxed);
    }

    /// Read every counter; with `reset`, start them again from zero (a counter updated during the
    /// read lands in this snapshot or the next, never in neither). The in-flight count is never
    /// reset; its maximum restarts from the current count.
    pub fn snapshot(&self, reset: bool) -> Snapshot {
        let read =
            |a: &AtomicU64| if reset { a.swap(0, Ordering::Relaxed) } else { a.load(Ordering::Relaxed) };
        let in_flight = self.in_flight.load(Ordering::Relaxed).max(0) as u64;
        let max_in_flight = if reset {
            self.max_in_flight.swap(in_flight, Ordering::Relaxed)
        } else {
            self.max_in_flight.load(Ordering::Relaxed)
        };
        Snapshot {
            ops: Op::ALL
                .iter()
                .map(|&op| {
                    let c = self.op(op);
                    OpSnapshot {
                        op,
                        requests: read(&c.requests),
                        errors: read(&c.errors),
                        bytes: read(&c.bytes),
                        latency: c.latency.take(reset),
                        ttfb: c.ttfb.take(reset),
                    }
                })
                .collect(),
            in_flight,
            max_in_flight,
            objects_read: read(&self.objects_read),
            objects_written: read(&self.objects_written),
            objects_deleted: read(&self.objects_deleted),
            keys_listed: read(&self.keys_listed),
            errors: CAUSES.iter().zip(&self.errors).map(|(c, a)| (*c, read(a))).collect(),
            retries: CAUSES.iter().zip(&self.retries).map(|(c, a)| (*c, read(a))).collect(),
        }
    }
}

/// The counters of one [`Op`] at one moment.
#[derive(Debug, Clone)]
pub struct OpSnapshot {
    pub op: Op,
    pub requests: u64,
    pub errors: u64,
    pub bytes: u64,
    /// Whole requests, retries included, as the caller waited for them.
    pub latency: HistogramSnapshot,
    /// Per attempt: from sending the request to its response headers (network stores only).
    pub ttfb: HistogramSnapshot,
}

/// Every counter at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub ops: Vec<OpSnapshot>,
    pub in_flight: u64,
    pub max_in_flight: u64,
    pub objects_read: u64,
    pub objects_written: u64,
    pub objects_deleted: u64,
    pub keys_listed: u64,
    /// Failed requests by cause (every one of [`CAUSES`]).
    pub errors: Vec<(&'static str, u64)>,
    /// Retried attempts by the cause of the failure retried.
    pub retries: Vec<(&'static str, u64)>,
}

impl Snapshot {
    pub fn op(&self, op: Op) -> &OpSnapshot {
        &self.ops[op as usize]
    }
}

/// The current process's counters, when its context can be built.
pub fn current() -> Option<&'static Metrics> {
    crate::runtime::context().ok().map(|c| c.metrics())
}

/// Count a time to first byte (from the backends' request senders).
pub(crate) fn ttfb(op: Op, d: Duration) {
    if let Some(m) = current() {
        m.ttfb(op, d);
    }
    if let Some(s) = crate::scope::current() {
        s.metrics.ttfb(op, d);
    }
}

/// Count a retry of `e` (from the retry loops).
pub(crate) fn retried(e: &Error) {
    if let Some(m) = current() {
        m.retry(e);
    }
    if let Some(s) = crate::scope::current() {
        s.metrics.retry(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut last = 0;
        for us in (0..100_000u64).chain([1 << 20, 1 << 30, u64::MAX / 2]) {
            let b = bucket_of(us);
            assert!(b >= last || us < 100_000, "{us}");
            assert!(bucket_upper(b) >= us.min(bucket_upper(BUCKETS - 1)), "{us} -> {b}");
            if (8..1 << 39).contains(&us) {
                assert!(bucket_upper(b) as f64 <= us as f64 * 1.125 + 1.0, "{us} -> {}", bucket_upper(b));
            }
            last = b;
        }
    }

    #[test]
    fn quantiles_and_reset() {
        let m = Metrics::default();
        for ms in 1..=100u64 {
            let f = m.start(Op::Get);
            f.finish(&Ok::<_, Error>(()), |_| Outcome { bytes: 10, objects_read: 1, ..Outcome::default() });
            m.op(Op::Get).latency.record(Duration::from_millis(ms)); // a known distribution too
        }
        let s = m.snapshot(false);
        let g = s.op(Op::Get);
        assert_eq!(
            (g.requests, g.bytes, s.objects_read, s.in_flight, s.max_in_flight),
            (100, 1000, 100, 0, 1)
        );
        assert_eq!(g.latency.count, 200);
        let p99 = g.latency.quantile(0.99).unwrap();
        assert!((97_000..=100_000).contains(&p99), "{p99}");
        let s = m.snapshot(true);
        assert_eq!(s.op(Op::Get).requests, 100);
        let s = m.snapshot(false);
        assert_eq!((s.op(Op::Get).requests, s.op(Op::Get).latency.count, s.objects_read), (0, 0, 0));
        assert_eq!(s.op(Op::Get).latency.quantile(0.5), None);
    }

    #[test]
    fn errors_cancellations_and_retries_by_cause() {
        let m = Metrics::default();
        let e = Error::new(ErrorKind::Throttled, Some("s3://b/k"), "slow down");
        m.start(Op::Put).finish(&Err::<(), _>(e.clone()), |_| Outcome::default());
        m.retry(&e);
        drop(m.start(Op::Get)); // cancelled: leaves the in-flight count
        let s = m.snapshot(false);
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.op(Op::Put).errors, 1);
        assert!(s.errors.contains(&("throttled", 1)) && s.retries.contains(&("throttled", 1)));
    }
}
