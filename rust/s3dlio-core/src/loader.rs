//! Loaders: a pool of object requests feeding batches into a bounded channel, under one
//! cancellation token.
//!
//! * [`spawn_prefetch`]: the generic building block, a producer task feeding a bounded channel.
//! * [`BatchLoader`]: an epoch's objects (in a given order) fetched with `pool_size` requests in
//!   flight, in order or in completion order, grouped into batches.
//!
//! Cancelling the loader's token (Ctrl-C, `close()`, drop) stops it: no new request starts, the
//! requests in flight are dropped (aborted), the channel closes, and [`BatchLoader::close`] joins
//! every task the loader spawned, after which [`BatchLoader::live_tasks`] is 0.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::StoreConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::limiter::Limiter;
use crate::ops;
use crate::options::{LoaderOptions, OnError, PoolConfig, RangeEngineConfig};
use crate::runtime::Context;
use crate::scope::Scope;
use crate::uri::Location;

/// Spawn `producer` on `ctx`, tracked by `tracker` (and by `ctx`), feeding a channel of capacity `cap`. The
/// producer gets the sender; it should stop when `send` fails (receiver gone). When `token` is
/// cancelled the producer future is dropped at once, which closes the channel.
pub fn spawn_prefetch<T, F, Fut>(
    ctx: &Context,
    tracker: &TaskTracker,
    cap: usize,
    token: CancellationToken,
    producer: F,
) -> mpsc::Receiver<T>
where
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(cap.max(1));
    let work = producer(tx);
    // Tracked twice: by the loader's tracker (its own live count, joined by close) and by the
    // process context (s3dlio.live_tasks()).
    drop(ctx.spawn(tracker.track_future(async move {
        tokio::select! {
            biased;
            () = token.cancelled() => {}
            () = work => {}
        }
    })));
    rx
}

/// The objects a loader can read: URIs, with sizes where known (from a listing or manifest), so
/// no HEAD is needed to decide on the range engine.
#[derive(Debug, Default)]
pub struct Source {
    pub uris: Vec<String>,
    pub sizes: Vec<Option<u64>>,
}

impl Source {
    pub fn new(uris: Vec<String>, sizes: Option<Vec<Option<u64>>>) -> Result<Source> {
        let sizes = match sizes {
            None => vec![None; uris.len()],
            Some(s) if s.len() == uris.len() => s,
            Some(s) => {
                return Err(Error::invalid_config(format!(
                    "{} sizes given for {} URIs",
                    s.len(),
                    uris.len()
                )));
            }
        };
        for u in &uris {
            Location::parse_object(u)?;
        }
        Ok(Source { uris, sizes })
    }

    pub fn len(&self) -> usize {
        self.uris.len()
    }

    pub fn is_empty(&self) -> bool {
        self.uris.is_empty()
    }
}

/// One batch: for each sample, its position in the epoch order the loader was given, its dataset
/// index, and its bytes. In order, positions are consecutive; in completion order they are not.
#[derive(Debug)]
pub struct Batch {
    pub positions: Vec<usize>,
    pub indices: Vec<u64>,
    pub data: Vec<Bytes>,
}

/// A batch that could not be read: its samples and the first error (which names the URI).
#[derive(Debug)]
pub struct BatchFailure {
    pub positions: Vec<usize>,
    pub indices: Vec<u64>,
    pub error: Error,
}

pub type BatchResult = std::result::Result<Batch, BatchFailure>;

/// Counters of one loader, readable while it runs.
#[derive(Debug, Default)]
pub struct LoaderStats {
    /// Object requests started.
    pub requests_started: AtomicU64,
    /// Object requests that finished (successfully or not).
    pub requests_finished: AtomicU64,
    /// Bytes received.
    pub bytes: AtomicU64,
}

impl LoaderStats {
    pub fn started(&self) -> u64 {
        self.requests_started.load(Ordering::Relaxed)
    }
    pub fn finished(&self) -> u64 {
        self.requests_finished.load(Ordering::Relaxed)
    }
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Fetches one epoch's objects and groups them into batches.
pub struct BatchLoader {
    rx: mpsc::Receiver<BatchResult>,
    token: CancellationToken,
    tracker: TaskTracker,
    stats: Arc<LoaderStats>,
    scope: Arc<Scope>,
}

/// Everything one fetch needs; shared by all the loader's requests.
struct Fetcher {
    source: Arc<Source>,
    cfg: StoreConfig,
    range: RangeEngineConfig,
    request_timeout: Option<Duration>,
    stats: Arc<LoaderStats>,
}

impl Fetcher {
    async fn fetch(&self, idx: u64) -> Result<Bytes> {
        self.stats.requests_started.fetch_add(1, Ordering::Relaxed);
        let r = self.fetch_inner(idx).await;
        self.stats.requests_finished.fetch_add(1, Ordering::Relaxed);
        if let Ok(b) = &r {
            self.stats.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        r
    }

    async fn fetch_inner(&self, idx: u64) -> Result<Bytes> {
        let i = usize::try_from(idx).unwrap_or(usize::MAX);
        let (Some(uri), Some(size)) = (self.source.uris.get(i), self.source.sizes.get(i)) else {
            return Err(Error::invalid_config(format!(
                "index {idx} is out of range (dataset has {})",
                self.source.len()
            )));
        };
        let work = ops::get_sized(uri, *size, &self.cfg, &self.range);
        match self.request_timeout {
            None => work.await,
            Some(d) => tokio::time::timeout(d, work).await.map_err(|_| {
                Error::new(ErrorKind::Timeout, Some(uri), format!("request_timeout ({d:?}) expired"))
            })?,
        }
    }
}

impl BatchLoader {
    /// Start fetching `order` (dataset indices, in epoch order) from `source`. The loader's root
    /// token is a child of `parent`: cancelling `parent` stops every loader made from it.
    ///
    /// The loader's requests count in `scope` (a loader's counters and adaptive limit, kept across
    /// its epochs; see [`BatchLoader::scope_for`]), or in a new scope of their own.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        ctx: &Context,
        source: Arc<Source>,
        mut order: Vec<u64>,
        opts: &LoaderOptions,
        pool: &PoolConfig,
        range: &RangeEngineConfig,
        cfg: &StoreConfig,
        parent: Option<&CancellationToken>,
        scope: Option<Arc<Scope>>,
    ) -> BatchLoader {
        let scope = scope.unwrap_or_else(|| BatchLoader::scope_for(pool, range));
        let token = parent.map_or_else(CancellationToken::new, CancellationToken::child_token);
        let tracker = TaskTracker::new();
        let batch_size = opts.batch_size.max(1);
        if opts.drop_last {
            order.truncate(order.len() / batch_size * batch_size); // never fetch what is dropped
        }
        let (in_order, on_error, pool_size) = (opts.in_order, opts.on_error, pool.pool_size.max(1));
        let (cfg, range, request_timeout) = (cfg.clone(), range.clone(), pool.request_timeout);
        let stats = Arc::new(LoaderStats::default());
        let fetch_stats = Arc::clone(&stats);
        // The producer also watches the token itself: a producer whose requests and sends are all
        // ready can loop many times within one poll, never returning to spawn_prefetch's select.
        let stop = token.clone();
        let fetch_scope = Arc::clone(&scope);
        let rx = spawn_prefetch(ctx, &tracker, pool.readahead_batches, token.clone(), move |tx| async move {
            let scope = fetch_scope;
            let fetcher = Arc::new(Fetcher { source, cfg, range, request_timeout, stats: fetch_stats });
            // take_until: once cancelled, not one more request starts.
            let order = futures::stream::iter(order.into_iter().enumerate())
                .take_until(stop.clone().cancelled_owned());
            let req_scope = Arc::clone(&scope);
            let requests = order.map(move |(pos, idx)| {
                let f = Arc::clone(&fetcher);
                let fetch = Scope::run(&req_scope, async move { f.fetch(idx).await });
                async move { (pos, idx, fetch.await) }
            });
            let items: BoxStream<'static, (usize, u64, Result<Bytes>)> = if in_order {
                requests.buffered(pool_size).boxed()
            } else {
                requests.buffer_unordered(pool_size).boxed()
            };
            let mut batches = items.chunks(batch_size);
            while let Some(chunk) = batches.next().await {
                let n = chunk.len();
                let mut positions = Vec::with_capacity(n);
                let mut indices = Vec::with_capacity(n);
                let mut data = Vec::with_capacity(n);
                let mut error = None;
                for (pos, idx, r) in chunk {
                    positions.push(pos);
                    indices.push(idx);
                    match r {
                        Ok(b) => data.push(b),
                        Err(e) => {
                            error.get_or_insert(e);
                        }
                    }
                }
                let (msg, halt) = match error {
                    None => (Ok(Batch { positions, indices, data }), false),
                    Some(error) => {
                        (Err(BatchFailure { positions, indices, error }), on_error == OnError::Raise)
                    }
                };
                if stop.is_cancelled() {
                    break;
                }
                // Room in the window at once, or the batch waits for the consumer.
                let sent = match tx.try_send(msg) {
                    Ok(()) => {
                        scope.stall.producer_waited(Duration::ZERO);
                        true
                    }
                    Err(mpsc::error::TrySendError::Full(msg)) => {
                        let t = tokio::time::Instant::now();
                        let ok = tx.send(msg).await.is_ok();
                        scope.stall.producer_waited(t.elapsed());
                        ok
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                };
                if !sent || halt {
                    break;
                }
            }
        });
        tracker.close();
        BatchLoader { rx, token, tracker, stats, scope }
    }

    /// A loader's scope: its counters, its stall times and (with `pool.adaptive`) its adaptive
    /// limit on attempts in flight, between `min_pool_size` and `pool_size` requests of
    /// `max_concurrent_ranges` ranges each.
    pub fn scope_for(pool: &PoolConfig, range: &RangeEngineConfig) -> Arc<Scope> {
        let mut limit = pool.limiter();
        limit.max = limit.max.saturating_mul(range.max_concurrent_ranges.max(1));
        Scope::new(pool.adaptive.then(|| Limiter::new(limit)))
    }

    /// The loader's counters, stall times and limit.
    pub fn scope(&self) -> &Arc<Scope> {
        &self.scope
    }

    /// The next batch, or `None` at the end of the epoch (or after cancellation).
    pub async fn next(&mut self) -> Option<BatchResult> {
        let t = tokio::time::Instant::now();
        let next = self.rx.recv().await;
        if next.is_some() {
            self.scope.stall.consumer_waited(t.elapsed());
        }
        next
    }

    /// The loader's root token.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Cancel: no new request starts, requests in flight are dropped, the channel closes.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// The loader's counters.
    pub fn stats(&self) -> &Arc<LoaderStats> {
        &self.stats
    }

    /// Tasks this loader has alive (0 once finished or closed).
    pub fn live_tasks(&self) -> usize {
        self.tracker.len()
    }

    /// A handle on the loader's tasks that outlives a borrow of the loader: `len()` counts them,
    /// `wait()` resolves once they have all ended.
    pub fn tracker(&self) -> TaskTracker {
        self.tracker.clone()
    }

    /// Cancel and wait until every task the loader spawned has ended. Idempotent.
    pub async fn close(&mut self) {
        self.token.cancel();
        self.rx.close();
        self.tracker.wait().await;
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        self.token.cancel();
    }
}
