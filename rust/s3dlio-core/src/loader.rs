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
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
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
///
/// With [`Source::with_items`], the loader's samples are byte ranges of those objects (the samples
/// of indexed shards: tar members, TFRecord records, HDF5 rows) instead of whole objects: dataset
/// index `i` is `items[i]` (or, with `parts` ranges per sample, `items[i * parts..][..parts]`: an
/// HDF5 row of several datasets), and the ranges of one batch that lie in one object within
/// [`Coalesce::max_gap`] of each other are fetched by one ranged GET.
#[derive(Debug, Default)]
pub struct Source {
    pub uris: Vec<String>,
    pub sizes: Vec<Option<u64>>,
    pub items: Option<Vec<Item>>,
    pub parts: usize,
    pub coalesce: Coalesce,
    /// With a budget: ranged samples are served from whole blocks of their objects, kept in
    /// memory across epochs (see [`BlockCache`]).
    pub cache: Option<Arc<BlockCache>>,
}

/// One sample that is a byte range of an object: `len` bytes at `start` of `uris[obj]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub obj: u32,
    pub start: u64,
    pub len: u64,
}

impl Item {
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// How the ranges of one batch are merged into requests: neighbours in one object whose gap is at
/// most `max_gap` bytes share a GET (the gap is read and dropped), while the merged range stays
/// within `max_range` bytes. `max_gap = 0` merges only ranges that touch or overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalesce {
    pub max_gap: u64,
    pub max_range: u64,
}

impl Default for Coalesce {
    fn default() -> Self {
        Coalesce { max_gap: 1 << 20, max_range: 8 << 20 }
    }
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
        Ok(Source { uris, sizes, items: None, parts: 1, coalesce: Coalesce::default(), cache: None })
    }

    /// Samples that are byte ranges of the objects, `parts` consecutive items per sample. Every
    /// item must name an object of the source, be at least one byte long, and end within the
    /// object where its size is known.
    pub fn with_items(mut self, items: Vec<Item>, parts: usize, coalesce: Coalesce) -> Result<Source> {
        if parts == 0 || !items.len().is_multiple_of(parts) {
            return Err(Error::invalid_config(format!(
                "{} ranges do not make samples of {parts} ranges each",
                items.len()
            )));
        }
        for (i, it) in items.iter().enumerate() {
            let Some(uri) = self.uris.get(it.obj as usize) else {
                return Err(Error::invalid_config(format!(
                    "sample {i} names object {} of {}",
                    it.obj,
                    self.uris.len()
                )));
            };
            let end = it.start.checked_add(it.len);
            let size = self.sizes[it.obj as usize];
            if it.len == 0 || end.is_none() || size.is_some_and(|s| end.is_some_and(|e| e > s)) {
                return Err(Error::invalid_range(
                    uri,
                    format!(
                        "sample {i}: {} bytes at {} do not fit in the object ({} bytes)",
                        it.len,
                        it.start,
                        size.map_or_else(|| "unknown".to_owned(), |s| s.to_string())
                    ),
                ));
            }
        }
        if coalesce.max_range == 0 {
            return Err(Error::invalid_config("max_range must be at least 1 byte"));
        }
        self.items = Some(items);
        self.parts = parts;
        self.coalesce = coalesce;
        Ok(self)
    }

    /// Serve ranged samples from `cache` (blocks of objects whose size is known).
    pub fn with_cache(mut self, cache: BlockCache) -> Source {
        self.cache = Some(Arc::new(cache));
        self
    }

    /// Samples: the items when there are any, else the objects.
    pub fn len(&self) -> usize {
        self.items.as_ref().map_or(self.uris.len(), |i| i.len() / self.parts)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Blocks of objects kept in memory for a ranged loader, up to a budget in bytes, least recently
/// used first out, across epochs.
///
/// With a global shuffle, the samples of one batch lie far apart in their shards, so each is a
/// request of its own: the store's cost per request, not bandwidth, sets the pace. A block cache
/// fetches aligned blocks of `block` bytes instead (one ranged GET each, every block once while
/// it stays cached) and cuts samples out of them: zero-copy slices, or one copy for a sample that
/// crosses a block boundary. A dataset that fits in the budget is read once per process, at
/// whole-object speed, whatever the order. Concurrent requests for one block share its fetch.
/// Memory: the budget, plus blocks being fetched, plus evicted blocks that samples still hold.
pub struct BlockCache {
    block: u64,
    budget: u64,
    state: std::sync::Mutex<CacheState>,
    /// Blocks fetched (each a GET), and samples served from a block already cached.
    pub fetched: AtomicU64,
    pub hits: AtomicU64,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("block", &self.block)
            .field("budget", &self.budget)
            .field("bytes", &self.bytes())
            .finish()
    }
}

type BlockCell = Arc<tokio::sync::OnceCell<Bytes>>;

#[derive(Default)]
struct CacheState {
    blocks: std::collections::HashMap<(u32, u64), (BlockCell, u64)>,
    bytes: u64,
    tick: u64,
}

impl BlockCache {
    /// `budget` bytes of blocks of `block` bytes (both at least 1).
    pub fn new(budget: u64, block: u64) -> Result<BlockCache> {
        if budget == 0 || block == 0 {
            return Err(Error::invalid_config(
                "the block cache needs a budget and a block size of at least 1 byte",
            ));
        }
        Ok(BlockCache {
            block,
            budget,
            state: std::sync::Mutex::new(CacheState::default()),
            fetched: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        })
    }

    /// Bytes of blocks held now.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cell(&self, key: (u32, u64)) -> BlockCell {
        let mut st = self.lock();
        st.tick += 1;
        let tick = st.tick;
        let entry = st.blocks.entry(key).or_insert_with(|| (Arc::new(tokio::sync::OnceCell::new()), tick));
        entry.1 = tick;
        Arc::clone(&entry.0)
    }

    /// A block was filled: count it, and evict the least recently used filled blocks over budget.
    fn filled(&self, key: (u32, u64), len: u64) {
        let mut st = self.lock();
        st.bytes += len;
        while st.bytes > self.budget {
            let victim = st
                .blocks
                .iter()
                .filter(|(k, (c, _))| **k != key && c.initialized())
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k);
            let Some(k) = victim else { break };
            if let Some((c, _)) = st.blocks.remove(&k) {
                st.bytes -= c.get().map_or(0, |b| b.len() as u64);
            }
        }
    }
}

/// One request of a ranged loader: a range of one object and the ranges (position in the epoch,
/// item number, offset in the range, length) it serves.
#[derive(Debug)]
struct Group {
    obj: u32,
    start: u64,
    end: u64,
    members: Vec<(usize, u64, u64, u64)>,
}

/// Joins the ranges of samples of `parts` ranges (arriving in any order) into samples: `(position,
/// sample index, its ranges in order)`, the first error of any range failing the sample.
#[allow(clippy::type_complexity)]
fn samples_of(
    parts: usize,
) -> impl FnMut((usize, u64, Result<Bytes>)) -> std::future::Ready<Option<(usize, u64, Result<Vec<Bytes>>)>> {
    let mut pending: std::collections::HashMap<usize, Vec<Option<Result<Bytes>>>> = Default::default();
    move |(pos, item, r)| {
        if parts == 1 {
            return std::future::ready(Some((pos, item, r.map(|b| vec![b]))));
        }
        let slots = pending.entry(pos).or_insert_with(|| vec![None; parts]);
        slots[(item % parts as u64) as usize] = Some(r);
        if slots.iter().any(Option::is_none) {
            return std::future::ready(None);
        }
        let joined = pending.remove(&pos).unwrap_or_default().into_iter().flatten().collect();
        std::future::ready(Some((pos, item / parts as u64, joined)))
    }
}

/// The requests for one batch of ranges (`(position, item number)`): per object, ranges sorted
/// by start and merged under `c`. Every range of the batch is in exactly one group.
fn plan_groups(batch: &[(usize, u64)], items: &[Item], c: Coalesce) -> Vec<Group> {
    let mut sorted: Vec<(Item, usize, u64)> =
        batch.iter().map(|&(pos, idx)| (items[idx as usize], pos, idx)).collect();
    sorted.sort_by_key(|(it, pos, _)| (it.obj, it.start, *pos));
    let mut groups: Vec<Group> = Vec::new();
    let mut pending: Vec<(Item, usize, u64)> = Vec::new();
    let flush = |pending: &mut Vec<(Item, usize, u64)>, groups: &mut Vec<Group>| {
        if let Some(&(first, _, _)) = pending.first() {
            let start = first.start;
            let end = pending.iter().map(|(it, _, _)| it.end()).max().unwrap_or(start);
            let members =
                pending.drain(..).map(|(it, pos, idx)| (pos, idx, it.start - start, it.len)).collect();
            groups.push(Group { obj: first.obj, start, end, members });
        }
    };
    let (mut g_start, mut g_end) = (0u64, 0u64);
    for entry in sorted {
        let it = entry.0;
        let joins = pending.first().is_some_and(|f| f.0.obj == it.obj)
            && it.start <= g_end.saturating_add(c.max_gap)
            && it.end().max(g_end) - g_start <= c.max_range;
        if joins {
            g_end = g_end.max(it.end());
        } else {
            flush(&mut pending, &mut groups);
            (g_start, g_end) = (it.start, it.end());
        }
        pending.push(entry);
    }
    flush(&mut pending, &mut groups);
    groups
}

/// One batch: for each sample, its position in the epoch order the loader was given, its dataset
/// index, and its bytes (`parts` buffers per sample, consecutive, for a source of samples of
/// several ranges). In order, positions are consecutive; in completion order they are not.
#[derive(Debug)]
pub struct Batch {
    pub positions: Vec<usize>,
    pub indices: Vec<u64>,
    pub data: Vec<Bytes>,
    /// The share of the byte budget its objects hold, returned when the batch is dropped (handed
    /// to the consumer).
    _hold: Option<OwnedSemaphorePermit>,
}

/// `PoolConfig::max_bytes`: bytes fetched ahead of the consumer, in units of [`ByteBudget::UNIT`]
/// permits of a FIFO semaphore. A request reserves the running mean object size (the whole budget
/// until the first object is in, so the first request learns the size alone) before it starts, and
/// settles to its object's real size when it is in; the permits go back when the consumer takes
/// the object. FIFO order means the oldest request always gets its share first: with in-order
/// delivery of one object per batch, the object the consumer waits for never waits on later ones.
struct ByteBudget {
    sem: Arc<Semaphore>,
    units: u32,
    done: AtomicU64,
    sum: AtomicU64,
}

impl ByteBudget {
    const UNIT: u64 = 4096;

    fn new(bytes: u64) -> ByteBudget {
        let units =
            bytes.div_ceil(Self::UNIT).clamp(1, u64::from(u32::MAX).min(Semaphore::MAX_PERMITS as u64));
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        ByteBudget {
            sem: Arc::new(Semaphore::new(units as usize)),
            units,
            done: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    fn units_of(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(Self::UNIT).clamp(1, u64::from(self.units))).unwrap_or(self.units)
    }

    async fn reserve(&self) -> Option<OwnedSemaphorePermit> {
        let n = self.done.load(Ordering::Relaxed);
        let want = match self.sum.load(Ordering::Relaxed).checked_div(n) {
            Some(mean) => self.units_of(mean),
            None => self.units, // nothing in yet: the first request learns the size alone
        };
        Arc::clone(&self.sem).acquire_many_owned(want).await.ok()
    }

    /// The object is in: hold what it really takes (more only if free now: it is already here).
    fn settle(&self, permit: &mut OwnedSemaphorePermit, bytes: u64) {
        self.done.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(bytes, Ordering::Relaxed);
        let (want, have) = (self.units_of(bytes) as usize, permit.num_permits());
        if want < have {
            drop(permit.split(have - want));
        } else if want > have {
            if let Ok(more) = Arc::clone(&self.sem).try_acquire_many_owned((want - have) as u32) {
                permit.merge(more);
            }
        }
    }
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

impl Fetcher {
    /// One block of object `obj` (of `size` bytes) through the cache: fetched once, shared.
    async fn block(&self, cache: &BlockCache, obj: u32, size: u64, idx: u64) -> Result<Bytes> {
        let cell = cache.cell((obj, idx));
        if let Some(b) = cell.get() {
            cache.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b.clone());
        }
        let uri = &self.source.uris[obj as usize];
        let start = idx * cache.block;
        let len = cache.block.min(size - start);
        let mut fetched = false;
        let data = cell
            .get_or_try_init(|| async {
                fetched = true;
                self.stats.requests_started.fetch_add(1, Ordering::Relaxed);
                let r = self.timed(uri, ops::get_range(uri, start, Some(len), &self.cfg)).await;
                self.stats.requests_finished.fetch_add(1, Ordering::Relaxed);
                if let Ok(b) = &r {
                    self.stats.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                    cache.fetched.fetch_add(1, Ordering::Relaxed);
                }
                r
            })
            .await?
            .clone();
        if fetched {
            cache.filled((obj, idx), data.len() as u64);
        } else {
            cache.hits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(data)
    }

    /// `request_timeout` around one request.
    async fn timed<F: Future<Output = Result<Bytes>>>(&self, uri: &str, work: F) -> Result<Bytes> {
        match self.request_timeout {
            None => work.await,
            Some(d) => tokio::time::timeout(d, work).await.unwrap_or_else(|_| {
                Err(Error::new(ErrorKind::Timeout, Some(uri), format!("request_timeout ({d:?}) expired")))
            }),
        }
    }

    /// The bytes `[start, end)` of object `obj` from cached blocks: a slice of one block, or the
    /// pieces of several copied together.
    async fn read_blocks(
        &self,
        cache: &BlockCache,
        obj: u32,
        size: u64,
        start: u64,
        end: u64,
    ) -> Result<Bytes> {
        let (first, last) = (start / cache.block, (end - 1) / cache.block);
        let blocks =
            futures::future::try_join_all((first..=last).map(|i| self.block(cache, obj, size, i))).await?;
        let base = first * cache.block;
        if let [one] = blocks.as_slice() {
            let (a, b) = ((start - base) as usize, (end - base) as usize);
            return Ok(one.slice(a..b.min(one.len())));
        }
        let mut out = bytes::BytesMut::with_capacity((end - start) as usize);
        for (k, b) in blocks.iter().enumerate() {
            let b_start = base + k as u64 * cache.block;
            let a = start.saturating_sub(b_start) as usize;
            let z = ((end - b_start) as usize).min(b.len());
            out.extend_from_slice(&b[a..z]);
        }
        Ok(out.freeze())
    }

    /// One ranged request of a ranged loader, cut into its samples (zero-copy slices).
    async fn fetch_group(&self, g: Group) -> Vec<(usize, u64, Result<Bytes>)> {
        if let (Some(cache), Some(Some(size))) = (&self.source.cache, self.source.sizes.get(g.obj as usize)) {
            let r = self.read_blocks(cache, g.obj, *size, g.start, g.end).await;
            return self.cut(g, r);
        }
        self.stats.requests_started.fetch_add(1, Ordering::Relaxed);
        let uri = &self.source.uris[g.obj as usize];
        let r = self.timed(uri, ops::get_range(uri, g.start, Some(g.end - g.start), &self.cfg)).await;
        self.stats.requests_finished.fetch_add(1, Ordering::Relaxed);
        if let Ok(data) = &r {
            self.stats.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        self.cut(g, r)
    }

    /// A group's fetched range cut into its samples (zero-copy slices), or its error for each.
    fn cut(&self, g: Group, r: Result<Bytes>) -> Vec<(usize, u64, Result<Bytes>)> {
        let uri = &self.source.uris[g.obj as usize];
        match r {
            Ok(data) => g
                .members
                .into_iter()
                .map(|(pos, idx, off, len)| {
                    let (a, b) = (off as usize, (off + len) as usize);
                    let slice = if b <= data.len() {
                        Ok(data.slice(a..b))
                    } else {
                        Err(Error::new(
                            ErrorKind::Io,
                            Some(uri),
                            format!(
                                "short read: asked for {} bytes at {}, got {}",
                                g.end - g.start,
                                g.start,
                                data.len()
                            ),
                        ))
                    };
                    (pos, idx, slice)
                })
                .collect(),
            Err(e) => g.members.into_iter().map(|(pos, idx, _, _)| (pos, idx, Err(e.clone()))).collect(),
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
        let max_bytes = pool.max_bytes;
        let stats = Arc::new(LoaderStats::default());
        let fetch_stats = Arc::clone(&stats);
        // The producer also watches the token itself: a producer whose requests and sends are all
        // ready can loop many times within one poll, never returning to spawn_prefetch's select.
        let stop = token.clone();
        let fetch_scope = Arc::clone(&scope);
        let rx = spawn_prefetch(ctx, &tracker, pool.readahead_batches, token.clone(), move |tx| async move {
            let scope = fetch_scope;
            let fetcher = Arc::new(Fetcher { source, cfg, range, request_timeout, stats: fetch_stats });
            let budget = max_bytes.map(|b| Arc::new(ByteBudget::new(b)));
            // take_until: once cancelled, not one more request starts.
            let order = futures::stream::iter(order.into_iter().enumerate())
                .take_until(stop.clone().cancelled_owned());
            let req_scope = Arc::clone(&scope);
            type Hold = Option<OwnedSemaphorePermit>;
            let items: BoxStream<'static, (usize, u64, Result<Vec<Bytes>>, Hold)> =
                if fetcher.source.items.is_some() {
                    // Ranged samples: each batch's ranges become merged requests, whose ranges are
                    // handed on in batch order (a batch's requests are consecutive in the stream),
                    // and a sample of several ranges once all of them are in.
                    let plan = Arc::clone(&fetcher);
                    let parts = fetcher.source.parts.max(1);
                    let groups = order.chunks(batch_size).flat_map(move |batch| {
                        let items = plan.source.items.as_deref().unwrap_or_default();
                        let k = parts as u64;
                        let ranges: Vec<(usize, u64)> = batch
                            .iter()
                            .flat_map(|&(pos, idx)| (0..k).map(move |j| (pos, idx * k + j)))
                            .collect();
                        futures::stream::iter(plan_groups(&ranges, items, plan.source.coalesce))
                    });
                    let requests = groups.map(move |g| {
                        let f = Arc::clone(&fetcher);
                        Scope::run(&req_scope, async move { f.fetch_group(g).await })
                    });
                    let done = if in_order {
                        requests.buffered(pool_size).boxed()
                    } else {
                        requests.buffer_unordered(pool_size).boxed()
                    };
                    done.flat_map(futures::stream::iter)
                        .filter_map(samples_of(parts))
                        .map(|(pos, idx, r)| (pos, idx, r, None))
                        .boxed()
                } else {
                    let requests = order.map(move |(pos, idx)| {
                        let f = Arc::clone(&fetcher);
                        let budget = budget.clone();
                        let fetch = Scope::run(&req_scope, async move { f.fetch(idx).await });
                        async move {
                            let mut hold = match &budget {
                                Some(b) => b.reserve().await,
                                None => None,
                            };
                            let got = fetch.await;
                            if let (Some(b), Some(h), Ok(data)) = (&budget, hold.as_mut(), &got) {
                                b.settle(h, data.len() as u64);
                            }
                            (pos, idx, got.map(|b| vec![b]), hold)
                        }
                    });
                    if in_order {
                        requests.buffered(pool_size).boxed()
                    } else {
                        requests.buffer_unordered(pool_size).boxed()
                    }
                };
            let mut batches = items.chunks(batch_size);
            while let Some(mut chunk) = batches.next().await {
                if in_order {
                    chunk.sort_by_key(|(pos, _, _, _)| *pos); // a batch's merged requests are by offset
                }
                let n = chunk.len();
                let mut positions = Vec::with_capacity(n);
                let mut indices = Vec::with_capacity(n);
                let mut data = Vec::with_capacity(n);
                let mut error = None;
                let mut hold: Option<OwnedSemaphorePermit> = None;
                for (pos, idx, r, h) in chunk {
                    if let Some(h) = h {
                        match hold.as_mut() {
                            Some(all) => all.merge(h),
                            None => hold = Some(h),
                        }
                    }
                    positions.push(pos);
                    indices.push(idx);
                    match r {
                        Ok(b) => data.extend(b),
                        Err(e) => {
                            error.get_or_insert(e);
                        }
                    }
                }
                let (msg, halt) = match error {
                    None => (Ok(Batch { positions, indices, data, _hold: hold }), false),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn it(obj: u32, start: u64, len: u64) -> Item {
        Item { obj, start, len }
    }

    /// (object, start, end, [(position, offset in range, length)]) of each request.
    type Planned = Vec<(u32, u64, u64, Vec<(usize, u64, u64)>)>;

    fn plan(batch: &[(usize, u64)], items: &[Item], max_gap: u64, max_range: u64) -> Planned {
        plan_groups(batch, items, Coalesce { max_gap, max_range })
            .into_iter()
            .map(|g| (g.obj, g.start, g.end, g.members.iter().map(|&(p, _, o, l)| (p, o, l)).collect()))
            .collect()
    }

    #[test]
    fn neighbours_in_one_object_share_a_request() {
        let items = [it(0, 100, 10), it(0, 0, 50), it(1, 0, 10), it(0, 60, 20), it(0, 5000, 10)];
        // batch order: 0, 1, 2, 3, 4 at positions 10..15
        let batch: Vec<(usize, u64)> = (0..5).map(|i| (10 + i, i as u64)).collect();
        assert_eq!(
            plan(&batch, &items, 20, 1 << 20), // 80..100: a gap of exactly max_gap joins
            vec![
                (0, 0, 110, vec![(11, 0, 50), (13, 60, 20), (10, 100, 10)]),
                (0, 5000, 5010, vec![(14, 0, 10)]),
                (1, 0, 10, vec![(12, 0, 10)]),
            ]
        );
    }

    #[test]
    fn a_gap_past_max_gap_splits() {
        let items = [it(0, 0, 80), it(0, 101, 9)];
        assert_eq!(
            plan(&[(0, 0), (1, 1)], &items, 20, 1 << 20),
            vec![(0, 0, 80, vec![(0, 0, 80)]), (0, 101, 110, vec![(1, 0, 9)])]
        );
    }

    #[test]
    fn gap_zero_merges_only_touching_and_overlapping_ranges() {
        let items = [it(0, 0, 10), it(0, 10, 10), it(0, 21, 5), it(0, 5, 3)];
        let batch: Vec<(usize, u64)> = (0..4).map(|i| (i, i as u64)).collect();
        assert_eq!(
            plan(&batch, &items, 0, 1 << 20),
            vec![(0, 0, 20, vec![(0, 0, 10), (3, 5, 3), (1, 10, 10)]), (0, 21, 26, vec![(2, 0, 5)])]
        );
    }

    #[test]
    fn max_range_bounds_a_merged_request_and_repeats_are_served_twice() {
        let items = [it(0, 0, 40), it(0, 40, 40), it(0, 80, 40)];
        // index 1 twice (an "even=pad" repeat): both positions get it
        let batch = [(0, 0), (1, 1), (2, 2), (3, 1)];
        assert_eq!(
            plan(&batch, &items, 1 << 20, 100),
            vec![(0, 0, 80, vec![(0, 0, 40), (1, 40, 40), (3, 40, 40)]), (0, 80, 120, vec![(2, 0, 40)])]
        );
        // a sample larger than max_range is a request of its own
        assert_eq!(plan(&[(0, 0)], &[it(0, 0, 500)], 0, 100), vec![(0, 0, 500, vec![(0, 0, 500)])]);
    }

    #[test]
    fn items_are_checked_against_the_objects() {
        let src =
            || Source::new(vec!["s3://b/a".into(), "s3://b/c".into()], Some(vec![Some(100), None])).unwrap();
        assert!(src().with_items(vec![it(0, 90, 10), it(1, 1 << 40, 5)], 1, Coalesce::default()).is_ok());
        let e = src().with_items(vec![it(0, 95, 10)], 1, Coalesce::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidRange);
        assert!(e.to_string().contains("s3://b/a") && e.to_string().contains("sample 0"), "{e}");
        assert!(src().with_items(vec![it(2, 0, 1)], 1, Coalesce::default()).is_err());
        assert!(src().with_items(vec![it(0, 0, 0)], 1, Coalesce::default()).is_err());
        assert!(src().with_items(vec![it(1, u64::MAX, 2)], 1, Coalesce::default()).is_err());
        let s = src().with_items(vec![it(0, 0, 1); 7], 1, Coalesce::default()).unwrap();
        assert_eq!(s.len(), 7);
        let s = src().with_items(vec![it(0, 0, 1); 6], 3, Coalesce::default()).unwrap();
        assert_eq!(s.len(), 2);
        assert!(src().with_items(vec![it(0, 0, 1); 7], 3, Coalesce::default()).is_err());
    }
}
