//! Loader glue: option dicts <-> core structs, the deterministic sampler, the shared cancellation
//! token, and `BatchStream`, which hands Python one whole batch per call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyTuple};
use s3dlio_core::loader::{
    Batch, BatchFailure, BatchLoader, BlockCache, Coalesce, Item, LoaderStats, Source,
};
use s3dlio_core::options::{LoaderOptions, OnError, PoolConfig, RangeEngineConfig, DEFAULT_PUSHBACK_TIMEOUT};
use s3dlio_core::runtime::context;
use s3dlio_core::sampler::{self, Evenness};
use s3dlio_core::scope::Scope;
use s3dlio_core::{CancellationToken, Error, ErrorKind};
use tokio_util::task::TaskTracker;

use crate::buffer::Buffer;
use crate::config::{resolve, Config};
use crate::errors::{invalid_config, to_pyerr};
use crate::wait::wait_with;

/// Reads typed fields out of an options dict; every key must be consumed (unknown keys are errors).
struct Fields<'py> {
    kind: &'static str,
    dict: Bound<'py, PyDict>,
}

impl<'py> Fields<'py> {
    fn new(kind: &'static str, dict: &Bound<'py, PyDict>) -> PyResult<Self> {
        Ok(Fields { kind, dict: dict.copy()? })
    }

    fn take(&self, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        let v = self.dict.get_item(key)?;
        if v.is_some() {
            self.dict.del_item(key)?;
        }
        Ok(v.filter(|v| !v.is_none()))
    }

    fn usize(&self, key: &str) -> PyResult<Option<usize>> {
        self.take(key)?
            .map(|v| {
                if v.is_instance_of::<PyBool>() {
                    return Err(invalid_config(format!(
                        "{}.{key} must be an integer, not a bool",
                        self.kind
                    )));
                }
                v.extract::<usize>().map_err(|_| {
                    invalid_config(format!("{}.{key} must be a non-negative integer", self.kind))
                })
            })
            .transpose()
    }

    fn u64(&self, key: &str) -> PyResult<Option<u64>> {
        Ok(self.usize(key)?.map(|v| v as u64))
    }

    fn bool(&self, key: &str) -> PyResult<Option<bool>> {
        self.take(key)?
            .map(|v| {
                v.cast::<PyBool>()
                    .map(|b| b.is_true())
                    .map_err(|_| invalid_config(format!("{}.{key} must be True or False", self.kind)))
            })
            .transpose()
    }

    fn seconds(&self, key: &str) -> PyResult<Option<Duration>> {
        self.take(key)?
            .map(|v| {
                let secs: f64 = v.extract().map_err(|_| {
                    invalid_config(format!("{}.{key} must be a number of seconds", self.kind))
                })?;
                s3dlio_core::config::seconds(&format!("{}.{key}", self.kind), secs).map_err(to_pyerr)
            })
            .transpose()
    }

    fn string(&self, key: &str) -> PyResult<Option<String>> {
        self.take(key)?.map(|v| v.extract::<String>()).transpose()
    }

    fn finish(self) -> PyResult<()> {
        if let Some((k, _)) = self.dict.iter().next() {
            return Err(invalid_config(format!("unknown {} field {k}", self.kind)));
        }
        Ok(())
    }
}

pub fn loader_options(d: &Bound<'_, PyDict>) -> PyResult<LoaderOptions> {
    let f = Fields::new("LoaderOptions", d)?;
    let mut o = LoaderOptions::default();
    if let Some(v) = f.usize("batch_size")? {
        o.batch_size = v;
    }
    o.shuffle = f.bool("shuffle")?.unwrap_or(o.shuffle);
    o.seed = f.u64("seed")?.unwrap_or(o.seed);
    o.drop_last = f.bool("drop_last")?.unwrap_or(o.drop_last);
    o.num_workers = f.usize("num_workers")?.unwrap_or(o.num_workers);
    o.prefetch_factor = f.usize("prefetch_factor")?;
    o.pin_memory = f.bool("pin_memory")?.unwrap_or(o.pin_memory);
    o.timeout = f.seconds("timeout")?;
    o.persistent_workers = f.bool("persistent_workers")?.unwrap_or(o.persistent_workers);
    o.in_order = f.bool("in_order")?.unwrap_or(o.in_order);
    o.on_error = match f.string("on_error")?.as_deref() {
        None | Some("raise") => OnError::Raise,
        Some("continue") => OnError::Continue,
        Some(other) => {
            return Err(invalid_config(format!(
                "LoaderOptions.on_error must be 'raise' or 'continue', not {other:?}"
            )))
        }
    };
    f.finish()?;
    o.validate().map_err(to_pyerr)?;
    Ok(o)
}

pub fn pool_config(d: &Bound<'_, PyDict>) -> PyResult<PoolConfig> {
    let f = Fields::new("PoolConfig", d)?;
    let p = PoolConfig {
        pool_size: f.usize("pool_size")?.ok_or_else(|| invalid_config("PoolConfig.pool_size is required"))?,
        readahead_batches: f
            .usize("readahead_batches")?
            .ok_or_else(|| invalid_config("PoolConfig.readahead_batches is required"))?,
        request_timeout: f.seconds("request_timeout")?,
        adaptive: f.bool("adaptive")?.unwrap_or(true),
        min_pool_size: f.usize("min_pool_size")?.unwrap_or(1),
        pushback_timeout: f.seconds("pushback_timeout")?.unwrap_or(DEFAULT_PUSHBACK_TIMEOUT),
        // Not a PoolConfig field in Python: iter_get's byte budget (see `iter_get(max_bytes=)`).
        max_bytes: f.u64("max_bytes")?,
    };
    f.finish()?;
    p.validate().map_err(to_pyerr)?;
    Ok(p)
}

pub fn range_config(d: &Bound<'_, PyDict>) -> PyResult<RangeEngineConfig> {
    let f = Fields::new("RangeEngineConfig", d)?;
    let mut r = RangeEngineConfig::default();
    r.chunk_size = f.u64("chunk_size")?.unwrap_or(r.chunk_size);
    r.max_concurrent_ranges = f.usize("max_concurrent_ranges")?.unwrap_or(r.max_concurrent_ranges);
    r.min_split_size = f.u64("min_split_size")?.unwrap_or(r.min_split_size);
    r.range_timeout = f.seconds("range_timeout")?;
    f.finish()?;
    r.validate().map_err(to_pyerr)?;
    Ok(r)
}

fn pool_dict<'py>(py: Python<'py>, p: &PoolConfig) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("pool_size", p.pool_size)?;
    d.set_item("readahead_batches", p.readahead_batches)?;
    d.set_item("request_timeout", p.request_timeout.map(|t| t.as_secs_f64()))?;
    d.set_item("adaptive", p.adaptive)?;
    d.set_item("min_pool_size", p.min_pool_size)?;
    d.set_item("pushback_timeout", p.pushback_timeout.as_secs_f64())?;
    Ok(d)
}

/// Validate LoaderOptions fields (a dict); raises InvalidConfigError.
#[pyfunction]
pub fn validate_loader_options(options: &Bound<'_, PyDict>) -> PyResult<()> {
    loader_options(options).map(|_| ())
}

/// Validate PoolConfig fields (a dict).
#[pyfunction]
pub fn validate_pool_config(pool: &Bound<'_, PyDict>) -> PyResult<()> {
    pool_config(pool).map(|_| ())
}

/// Validate RangeEngineConfig fields (a dict); `range_timeout` None means "no deadline".
#[pyfunction]
pub fn validate_range_config(range_engine: &Bound<'_, PyDict>) -> PyResult<()> {
    range_config(range_engine).map(|_| ())
}

/// The PoolConfig fields derived from LoaderOptions fields.
#[pyfunction]
pub fn pool_from_loader_options<'py>(
    py: Python<'py>,
    options: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyDict>> {
    pool_dict(py, &PoolConfig::from_loader_options(&loader_options(options)?))
}

/// The sample indices of one epoch for one rank and worker: a seeded permutation (when
/// `shuffle`), split across ranks as DistributedSampler does (`even="pad"` or `"drop"`), then
/// round-robin across workers.
#[pyfunction]
#[pyo3(signature = (n, seed, epoch, shuffle, rank=0, world_size=1, worker=0, num_workers=1, even="pad"))]
#[allow(clippy::too_many_arguments)]
pub fn epoch_indices(
    n: u64,
    seed: u64,
    epoch: u64,
    shuffle: bool,
    rank: usize,
    world_size: usize,
    worker: usize,
    num_workers: usize,
    even: &str,
) -> PyResult<Vec<u64>> {
    if world_size == 0 || rank >= world_size {
        return Err(invalid_config(format!("rank {rank} is outside world_size {world_size}")));
    }
    if num_workers == 0 || worker >= num_workers {
        return Err(invalid_config(format!("worker {worker} is outside num_workers {num_workers}")));
    }
    let evenness = match even {
        "pad" => Evenness::Pad,
        "drop" => Evenness::Drop,
        other => return Err(invalid_config(format!("even must be 'pad' or 'drop', not {other:?}"))),
    };
    let order = sampler::epoch_order(n, seed, epoch, shuffle);
    let share = if world_size == 1 { order } else { sampler::rank_share(&order, rank, world_size, evenness) };
    Ok(if num_workers == 1 { share } else { sampler::worker_share(&share, worker, num_workers) })
}

/// A cancellation token Python can hold and share between loaders. Cancelling it stops every
/// loader made with it (and their requests in flight). Idempotent.
#[pyclass(frozen, module = "s3dlio._core", name = "CancelToken")]
pub struct CancelToken {
    pub token: CancellationToken,
}

#[pymethods]
impl CancelToken {
    #[new]
    fn new() -> Self {
        CancelToken { token: CancellationToken::new() }
    }

    fn cancel(&self) {
        self.token.cancel();
    }

    #[getter]
    fn cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// A token cancelled with this one (but cancellable on its own).
    fn child(&self) -> CancelToken {
        CancelToken { token: self.token.child_token() }
    }

    fn __repr__(&self) -> String {
        format!("<s3dlio.CancelToken cancelled={}>", self.token.is_cancelled())
    }
}

/// One epoch of batches from the Rust pool. `next()` returns `(positions, indices, buffers)`:
/// each sample's position in `order`, its dataset index, and its bytes.
///
/// Frozen: the loader sits in a mutex only while no `next()` is waiting on it, and the token, task
/// tracker and counters live outside it, so `cancel()`, `close()`, `live_tasks()` and `stats()`
/// work from any thread while another thread is blocked in `next()`.
#[pyclass(frozen, module = "s3dlio._core", name = "BatchStream")]
pub struct BatchStream {
    loader: Mutex<Option<BatchLoader>>,
    /// Set once the stream is exhausted, failed for good, or closed.
    done: AtomicBool,
    token: CancellationToken,
    tracker: TaskTracker,
    stats: Arc<LoaderStats>,
    timeout: Option<Duration>,
}

enum Step {
    Batch(Batch),
    Failure(BatchFailure),
    End,
    TimedOut(Duration),
}

#[pymethods]
impl BatchStream {
    #[new]
    #[pyo3(signature = (uris, order, options, pool, range_engine, sizes=None, config=None, token=None, scope=None, source=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        uris: Vec<String>,
        order: Vec<u64>,
        options: &Bound<'_, PyDict>,
        pool: &Bound<'_, PyDict>,
        range_engine: &Bound<'_, PyDict>,
        sizes: Option<Vec<Option<u64>>>,
        config: Option<&Bound<'_, Config>>,
        token: Option<&Bound<'_, CancelToken>>,
        scope: Option<&Bound<'_, LoaderScope>>,
        source: Option<&Bound<'_, SampleSource>>,
    ) -> PyResult<Self> {
        let opts = loader_options(options)?;
        let pool = pool_config(pool)?;
        let range = range_config(range_engine)?;
        let source = match source {
            Some(s) if uris.is_empty() && sizes.is_none() => Arc::clone(&s.get().source),
            Some(_) => return Err(invalid_config("pass either uris (and sizes) or source=, not both")),
            None => Arc::new(Source::new(uris, sizes).map_err(to_pyerr)?),
        };
        if pool.max_bytes.is_some() && (opts.batch_size != 1 || source.items.is_some()) {
            return Err(invalid_config("max_bytes needs batches of one whole object (iter_get)"));
        }
        if let Some(bad) = order.iter().find(|&&i| i >= source.len() as u64) {
            return Err(invalid_config(format!("index {bad} is out of range for {} samples", source.len())));
        }
        let ctx = context().map_err(to_pyerr)?;
        let parent = token.map(|t| t.get().token.clone());
        let loader = BatchLoader::start(
            ctx,
            source,
            order,
            &opts,
            &pool,
            &range,
            &resolve(config),
            parent.as_ref(),
            scope.map(|s| Arc::clone(&s.get().scope)),
        );
        Ok(BatchStream {
            token: loader.token().clone(),
            tracker: loader.tracker(),
            stats: Arc::clone(loader.stats()),
            loader: Mutex::new(Some(loader)),
            done: AtomicBool::new(false),
            timeout: opts.timeout,
        })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next batch as `(positions, indices, buffers)`; raises the batch's error (naming its URI,
    /// with `.indices` and `.positions` set) when one of its objects failed; StopIteration at the end.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyTuple>>> {
        let taken = lock(&self.loader).take();
        let Some(mut loader) = taken else {
            if self.done.load(Ordering::Acquire) {
                return Ok(None);
            }
            return Err(PyRuntimeError::new_err("BatchStream.next() is already running in another thread"));
        };
        let timeout = self.timeout;
        // The loader travels into the wait and comes back with the batch; a Ctrl-C drops it (which
        // cancels it). A timeout is reported as a step, so this wait's own token is not involved.
        let waited = wait_with(py, Some(&self.token), async move {
            let next = match timeout {
                None => loader.next().await,
                Some(t) => match tokio::time::timeout(t, loader.next()).await {
                    Ok(n) => n,
                    Err(_) => return Ok((loader, Step::TimedOut(t))),
                },
            };
            let step = match next {
                None => Step::End,
                Some(Ok(b)) => Step::Batch(b),
                Some(Err(f)) => Step::Failure(f),
            };
            Ok((loader, step))
        });
        let (loader, step) = match waited {
            Ok(v) => v,
            Err(e) => {
                self.done.store(true, Ordering::Release);
                return Err(e);
            }
        };
        match step {
            Step::Batch(batch) => {
                *lock(&self.loader) = Some(loader);
                let buffers: Vec<Buffer> = batch.data.into_iter().map(Buffer::new).collect();
                Ok(Some((batch.positions, batch.indices, buffers).into_pyobject(py)?.unbind()))
            }
            Step::Failure(failure) => {
                *lock(&self.loader) = Some(loader);
                let err = to_pyerr(failure.error);
                let value = err.value(py);
                value.setattr("indices", failure.indices)?;
                value.setattr("positions", failure.positions)?;
                Err(err)
            }
            Step::End => {
                self.done.store(true, Ordering::Release);
                *lock(&self.loader) = Some(loader);
                Ok(None)
            }
            Step::TimedOut(t) => {
                self.done.store(true, Ordering::Release);
                drop(loader); // cancels it
                let msg = format!("no batch arrived within timeout={t:?}");
                Err(to_pyerr(Error::new(ErrorKind::Timeout, None, msg)))
            }
        }
    }

    /// Cancel, then wait (interruptibly) until every task of the stream has ended. Idempotent, and
    /// safe while another thread is blocked in `next()` (that call then ends).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.token.cancel();
        self.done.store(true, Ordering::Release);
        drop(lock(&self.loader).take());
        let tracker = self.tracker.clone();
        wait_with(py, None, async move {
            tracker.wait().await;
            Ok(())
        })
    }

    /// Cancel without waiting (safe from any thread).
    fn cancel(&self) {
        self.token.cancel();
    }

    /// Tasks this stream has alive (0 after close or the end of the epoch).
    fn live_tasks(&self) -> usize {
        self.tracker.len()
    }

    /// `(requests_started, requests_finished, bytes)` so far.
    fn stats(&self) -> (u64, u64, u64) {
        (self.stats.started(), self.stats.finished(), self.stats.bytes())
    }
}

/// The samples of a dataset whose samples are byte ranges of objects (indexed shards), built once
/// and shared by every epoch's stream: the objects (URIs, sizes where known) and, for each
/// sample, its object, start and length, packed as little-endian `u64` triples in `items`
/// (`parts` consecutive triples per sample for samples of several ranges).
#[pyclass(frozen, module = "s3dlio._core", name = "SampleSource")]
pub struct SampleSource {
    source: Arc<Source>,
}

#[pymethods]
impl SampleSource {
    #[new]
    #[pyo3(signature = (uris, items, sizes=None, max_gap=1 << 20, max_range=8 << 20, parts=1, cache_bytes=0, block_size=8 << 20))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        uris: Vec<String>,
        items: &Bound<'_, PyBytes>,
        sizes: Option<Vec<Option<u64>>>,
        max_gap: u64,
        max_range: u64,
        parts: usize,
        cache_bytes: u64,
        block_size: u64,
    ) -> PyResult<Self> {
        let raw = items.as_bytes();
        if raw.len() % 24 != 0 {
            return Err(invalid_config(format!(
                "items must be (object, start, length) u64 triples: {} bytes is not a multiple of 24",
                raw.len()
            )));
        }
        let source = py.detach(|| -> s3dlio_core::Result<Source> {
            let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
            let mut parsed = Vec::with_capacity(raw.len() / 24);
            for (i, t) in raw.chunks_exact(24).enumerate() {
                let obj = u32::try_from(word(&t[..8]))
                    .map_err(|_| Error::invalid_config(format!("sample {i}: object number too large")))?;
                parsed.push(Item { obj, start: word(&t[8..16]), len: word(&t[16..]) });
            }
            let source =
                Source::new(uris, sizes)?.with_items(parsed, parts, Coalesce { max_gap, max_range })?;
            Ok(if cache_bytes > 0 {
                source.with_cache(BlockCache::new(cache_bytes, block_size)?)
            } else {
                source
            })
        });
        Ok(SampleSource { source: Arc::new(source.map_err(to_pyerr)?) })
    }

    fn __len__(&self) -> usize {
        self.source.len()
    }

    /// Objects (shards) the samples are in.
    #[getter]
    fn objects(&self) -> usize {
        self.source.uris.len()
    }

    /// `(bytes held, blocks fetched, samples served from blocks already fetched)` of the block
    /// cache; `None` without one.
    fn cache_stats(&self) -> Option<(u64, u64, u64)> {
        self.source.cache.as_ref().map(|c| {
            (
                c.bytes(),
                c.fetched.load(std::sync::atomic::Ordering::Relaxed),
                c.hits.load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    }

    /// Ranges per sample (each batch has this many buffers per sample, consecutive).
    #[getter]
    fn parts(&self) -> usize {
        self.source.parts
    }

    /// `(max_gap, max_range)`: how a batch's ranges are merged into requests.
    #[getter]
    fn coalesce(&self) -> (u64, u64) {
        (self.source.coalesce.max_gap, self.source.coalesce.max_range)
    }
}

/// One loader's counters, stall times and adaptive limit, shared by the streams of its epochs.
#[pyclass(frozen, module = "s3dlio._core", name = "LoaderScope")]
pub struct LoaderScope {
    scope: Arc<Scope>,
}

#[pymethods]
impl LoaderScope {
    #[new]
    fn new(pool: &Bound<'_, PyDict>, range_engine: &Bound<'_, PyDict>) -> PyResult<Self> {
        Ok(LoaderScope { scope: BatchLoader::scope_for(&pool_config(pool)?, &range_config(range_engine)?) })
    }

    /// The counters as `s3dlio.stats()` reports them, plus `wait` (`consumer_s`, `producer_s`,
    /// `batches`) and `concurrency` (`adaptive`, `limit`, `min`, `max`, `in_flight`, `cuts`).
    #[pyo3(signature = (reset = false))]
    fn stats<'py>(&self, py: Python<'py>, reset: bool) -> PyResult<Bound<'py, PyDict>> {
        let d = crate::snapshot_dict(py, &self.scope.metrics.snapshot(reset))?;
        let (consumer, producer, batches) = self.scope.stall.read(reset);
        let wait = PyDict::new(py);
        wait.set_item("consumer_s", consumer)?;
        wait.set_item("producer_s", producer)?;
        wait.set_item("batches", batches)?;
        d.set_item("wait", wait)?;
        let c = PyDict::new(py);
        match &self.scope.limiter {
            Some(l) => {
                let cfg = l.config();
                c.set_item("adaptive", true)?;
                c.set_item("limit", l.limit())?;
                c.set_item("min", cfg.min)?;
                c.set_item("max", cfg.max)?;
                c.set_item("in_flight", l.in_flight())?;
                c.set_item("cuts", l.cuts())?;
            }
            None => {
                c.set_item("adaptive", false)?;
            }
        }
        d.set_item("concurrency", c)?;
        Ok(d)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
