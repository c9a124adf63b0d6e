//! `s3dlio._core`: pyo3 glue over `s3dlio-core`. Type conversion, GIL handling, error mapping and
//! the zero-copy `Buffer`; no storage logic lives here.

mod asyncio;
mod buffer;
mod config;
mod errors;
mod io;
mod loader;
mod wait;

use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use futures::StreamExt;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use s3dlio_core::runtime::context;
use s3dlio_core::{ops, CancellationToken, ListPage, Result};
use tokio::sync::mpsc;

use crate::asyncio::future;
use crate::buffer::{bytes_from_py, Buffer};
use crate::config::{resolve, Config};
use crate::errors::to_pyerr;
use crate::wait::{wait, wait_with};

/// One object (or, in a one-level listing, a common prefix with `is_dir`).
#[pyclass(frozen, module = "s3dlio._core", name = "ObjectInfo", eq, hash)]
#[derive(PartialEq, Hash)]
struct ObjectInfo {
    #[pyo3(get)]
    uri: String,
    #[pyo3(get)]
    size: u64,
    #[pyo3(get)]
    etag: Option<String>,
    /// Seconds since the Unix epoch, as bits (for Hash); exposed as a float.
    last_modified_bits: Option<u64>,
    #[pyo3(get)]
    is_dir: bool,
}

impl From<s3dlio_core::ObjectInfo> for ObjectInfo {
    fn from(o: s3dlio_core::ObjectInfo) -> Self {
        ObjectInfo {
            uri: o.uri,
            size: o.size,
            etag: o.etag,
            last_modified_bits: o.last_modified.map(f64::to_bits),
            is_dir: o.is_dir,
        }
    }
}

#[pymethods]
impl ObjectInfo {
    #[getter]
    fn last_modified(&self) -> Option<f64> {
        self.last_modified_bits.map(f64::from_bits)
    }

    /// Python's own reprs of the fields: `ObjectInfo(uri='s3://b/k', size=3, etag='…',
    /// last_modified=1733000000.0)`, plus `is_dir=True` for directories and folder markers.
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let r = |v: Bound<'_, PyAny>| -> PyResult<String> { Ok(v.repr()?.to_string()) };
        let mut s = format!(
            "ObjectInfo(uri={}, size={}, etag={}, last_modified={}",
            r(self.uri.clone().into_pyobject(py)?.into_any())?,
            self.size,
            r(self.etag.clone().into_pyobject(py)?.into_any())?,
            r(self.last_modified().into_pyobject(py)?.into_any())?,
        );
        if self.is_dir {
            s.push_str(", is_dir=True");
        }
        s.push(')');
        Ok(s)
    }
}

fn infos(v: Vec<s3dlio_core::ObjectInfo>) -> Vec<ObjectInfo> {
    v.into_iter().map(ObjectInfo::from).collect()
}

fn buffers(v: Vec<Bytes>) -> Vec<Buffer> {
    v.into_iter().map(Buffer::new).collect()
}

/// Bytes borrowed from any buffer-protocol object (no copy).
struct Data(Bytes);

impl<'a, 'py> FromPyObject<'a, 'py> for Data {
    type Error = PyErr;
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        bytes_from_py(&obj.to_owned()).map(Data)
    }
}

/// A `RangeEngineConfig.to_dict()`, validated when the call is made.
pub(crate) struct Range(pub(crate) s3dlio_core::options::RangeEngineConfig);

impl<'a, 'py> FromPyObject<'a, 'py> for Range {
    type Error = PyErr;
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        loader::range_config(&obj.to_owned().cast_into::<pyo3::types::PyDict>()?).map(Range)
    }
}

/// Each storage operation exists twice: a blocking function that releases the GIL and answers
/// Ctrl-C, and an `_async` twin returning an awaitable. One body serves both.
macro_rules! twin {
    ($name:ident, $aname:ident, ($($arg:ident : $ty:ty),*), [$($sig:tt)*], $ret:ty, |$cfg:ident| $body:expr) => {
        #[pyfunction]
        #[pyo3(signature = ($($sig)*))]
        fn $name(py: Python<'_>, $($arg: $ty,)* config: Option<&Bound<'_, Config>>) -> PyResult<$ret> {
            let $cfg = resolve(config);
            wait(py, async move { $body })
        }

        #[pyfunction]
        #[pyo3(signature = ($($sig)*))]
        fn $aname<'py>(py: Python<'py>, $($arg: $ty,)* config: Option<&Bound<'py, Config>>) -> PyResult<Bound<'py, PyAny>> {
            let $cfg = resolve(config);
            future(py, async move { $body })
        }
    };
}

twin!(get, get_async, (uri: String, range_engine: Option<Range>), [uri, range_engine=None, config=None], Buffer,
    |cfg| ops::get(&uri, &cfg, &range_engine.map(|r| r.0).unwrap_or_default()).await.map(Buffer::new));
twin!(get_range, get_range_async, (uri: String, offset: u64, length: Option<u64>), [uri, offset, length=None, config=None], Buffer,
    |cfg| ops::get_range(&uri, offset, length, &cfg).await.map(Buffer::new));
twin!(get_many, get_many_async, (uris: Vec<String>, max_concurrency: Option<usize>), [uris, max_concurrency=None, config=None], Vec<Buffer>,
    |cfg| ops::get_many(&uris, max_concurrency.unwrap_or(cfg.max_concurrency), &cfg).await.map(buffers));
twin!(stat, stat_async, (uri: String), [uri, config=None], ObjectInfo,
    |cfg| ops::stat(&uri, &cfg).await.map(ObjectInfo::from));
twin!(exists, exists_async, (uri: String), [uri, config=None], bool,
    |cfg| ops::exists(&uri, &cfg).await);
twin!(list, list_async, (uri: String, recursive: bool, pattern: Option<String>), [uri, recursive=true, pattern=None, config=None], Vec<ObjectInfo>,
    |cfg| ops::list(&uri, recursive, pattern.as_deref(), &cfg).await.map(infos));
twin!(put, put_async, (uri: String, data: Data), [uri, data, config=None], (),
    |cfg| ops::put(&uri, data.0, &cfg).await);
twin!(put_many, put_many_async, (items: Vec<(String, Data)>, max_concurrency: Option<usize>), [items, max_concurrency=None, config=None], (),
    |cfg| ops::put_many(items.into_iter().map(|(u, d)| (u, d.0)).collect(), max_concurrency.unwrap_or(cfg.max_concurrency), &cfg).await);
twin!(delete, delete_async, (uri: String), [uri, config=None], (),
    |cfg| ops::delete(&uri, &cfg).await);
twin!(delete_prefix, delete_prefix_async, (uri: String, max_concurrency: Option<usize>), [uri, max_concurrency=None, config=None], usize,
    |cfg| ops::delete_prefix(&uri, max_concurrency, &cfg).await);
twin!(upload, upload_async, (local_dir: String, uri: String), [local_dir, uri, config=None], usize,
    |cfg| ops::upload(&local_dir, &uri, &cfg).await);
twin!(download, download_async, (uri: String, local_dir: String), [uri, local_dir, config=None], usize,
    |cfg| ops::download(&uri, &local_dir, &cfg).await);
twin!(copy, copy_async, (src_uri: String, dst_uri: String), [src_uri, dst_uri, config=None], u64,
    |cfg| ops::copy(&src_uri, &dst_uri, &cfg).await);
twin!(copy_tree, copy_tree_async, (src_uri: String, dst_uri: String, only: Option<Vec<String>>), [src_uri, dst_uri, only=None, config=None], usize,
    |cfg| ops::copy_tree(&src_uri, &dst_uri, only.as_deref(), &cfg).await);
twin!(delete_many, delete_many_async, (uris: Vec<String>, max_concurrency: Option<usize>), [uris, max_concurrency=None, config=None], usize,
    |cfg| ops::delete_many(&uris, max_concurrency, &cfg).await);
twin!(create_bucket, create_bucket_async, (uri: String), [uri, config=None], (),
    |cfg| ops::create_bucket(&uri, &cfg).await);
twin!(delete_bucket, delete_bucket_async, (uri: String), [uri, config=None], (),
    |cfg| ops::delete_bucket(&uri, &cfg).await);

/// Streams a listing from a background task, one page ahead of the consumer. Frozen, with its
/// state behind a mutex held only between waits, so `close()` works from any thread.
#[pyclass(frozen, module = "s3dlio._core", name = "ListIter")]
struct ListIter {
    state: Mutex<ListState>,
    token: CancellationToken,
}

struct ListState {
    rx: Option<mpsc::Receiver<Result<ListPage>>>,
    page: std::vec::IntoIter<s3dlio_core::ObjectInfo>,
}

fn lock(m: &Mutex<ListState>) -> MutexGuard<'_, ListState> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[pymethods]
impl ListIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<ObjectInfo>> {
        loop {
            let mut rx = {
                let mut st = lock(&self.state);
                if let Some(item) = st.page.next() {
                    return Ok(Some(item.into()));
                }
                match st.rx.take() {
                    Some(rx) => rx,
                    None => return Ok(None),
                }
            };
            // The receiver travels into the wait and comes back with the next page.
            let (rx, next) = wait_with(py, Some(&self.token), async move {
                let next = rx.recv().await;
                Ok((rx, next))
            })?;
            match next {
                None => return Ok(None),
                Some(Err(e)) => return Err(to_pyerr(e)),
                Some(Ok(page)) => {
                    let mut st = lock(&self.state);
                    if self.token.is_cancelled() {
                        return Ok(None); // closed meanwhile
                    }
                    st.rx = Some(rx);
                    st.page = page.into_iter();
                }
            }
        }
    }

    /// Stop the listing task now (idempotent).
    fn close(&self) {
        self.token.cancel();
        let mut st = lock(&self.state);
        st.rx = None;
        st.page = Vec::new().into_iter();
    }
}

impl Drop for ListIter {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

#[pyfunction]
#[pyo3(signature = (uri, recursive=true, pattern=None, config=None))]
fn list_iter(
    uri: String,
    recursive: bool,
    pattern: Option<String>,
    config: Option<&Bound<'_, Config>>,
) -> PyResult<ListIter> {
    let cfg = resolve(config);
    let ctx = context().map_err(to_pyerr)?;
    let token = CancellationToken::new();
    let task_token = token.clone();
    let (tx, rx) = mpsc::channel(1);
    drop(ctx.spawn(async move {
        let work = async {
            match ops::list_stream(&uri, recursive, pattern.as_deref(), &cfg).await {
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                }
                Ok(mut pages) => {
                    while let Some(page) = pages.next().await {
                        let failed = page.is_err();
                        if tx.send(page).await.is_err() || failed {
                            break;
                        }
                    }
                }
            }
        };
        tokio::select! {
            biased;
            () = task_token.cancelled() => {}
            () = work => {}
        }
    }));
    Ok(ListIter { state: Mutex::new(ListState { rx: Some(rx), page: Vec::new().into_iter() }), token })
}

/// Number of tasks s3dlio has running in this process right now (0 when idle).
#[pyfunction]
fn live_tasks() -> PyResult<usize> {
    Ok(context().map_err(to_pyerr)?.live_tasks())
}

/// This process's transfer counters as a dict (see `s3dlio.stats`); with `reset`, they start again
/// from zero after this read.
#[pyfunction]
#[pyo3(signature = (reset = false))]
fn stats(py: Python<'_>, reset: bool) -> PyResult<Bound<'_, PyDict>> {
    let ctx = context().map_err(to_pyerr)?;
    let d = snapshot_dict(py, &ctx.metrics().snapshot(reset))?;
    let endpoints = PyDict::new(py);
    for e in ctx.endpoint_stats(reset) {
        let one = PyDict::new(py);
        one.set_item("requests", e.requests)?;
        one.set_item("errors", e.errors)?;
        one.set_item("in_flight", e.in_flight)?;
        one.set_item("downs", e.downs)?;
        one.set_item("down", e.down)?;
        endpoints.set_item(e.url, one)?;
    }
    d.set_item("endpoints", endpoints)?;
    let bp = s3dlio_core::buf::stats(reset);
    let pool = PyDict::new(py);
    pool.set_item("limit", bp.limit)?;
    pool.set_item("held_bytes", bp.held_bytes)?;
    pool.set_item("held_buffers", bp.held_buffers)?;
    pool.set_item("hits", bp.hits)?;
    pool.set_item("misses", bp.misses)?;
    pool.set_item("released", bp.released)?;
    d.set_item("buffer_pool", pool)?;
    Ok(d)
}

/// A counters snapshot as the dict `s3dlio.stats()` documents.
pub(crate) fn snapshot_dict<'py>(
    py: Python<'py>,
    snap: &s3dlio_core::metrics::Snapshot,
) -> PyResult<Bound<'py, PyDict>> {
    use s3dlio_core::metrics::{HistogramSnapshot, Op};
    let hist = |h: &HistogramSnapshot| -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let ms = |us: Option<u64>| us.map(|v| v as f64 / 1000.0);
        d.set_item("count", h.count)?;
        d.set_item("mean", h.mean_us().map(|v| v / 1000.0))?;
        d.set_item("p50", ms(h.quantile(0.5)))?;
        d.set_item("p90", ms(h.quantile(0.9)))?;
        d.set_item("p99", ms(h.quantile(0.99)))?;
        d.set_item("max", ms((h.count > 0).then_some(h.max_us)))?;
        Ok(d)
    };
    let ops = PyDict::new(py);
    for o in &snap.ops {
        let d = PyDict::new(py);
        d.set_item("requests", o.requests)?;
        d.set_item("errors", o.errors)?;
        d.set_item("bytes", o.bytes)?;
        d.set_item("latency_ms", hist(&o.latency)?)?;
        d.set_item("ttfb_ms", hist(&o.ttfb)?)?;
        ops.set_item(o.op.name(), d)?;
    }
    let by_cause = |v: &[(&str, u64)]| -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (c, n) in v {
            d.set_item(*c, *n)?;
        }
        Ok(d)
    };
    let out = PyDict::new(py);
    out.set_item("bytes_read", snap.op(Op::Get).bytes)?;
    out.set_item("bytes_written", snap.op(Op::Put).bytes)?;
    out.set_item("bytes_copied", snap.op(Op::Copy).bytes)?;
    out.set_item("objects_read", snap.objects_read)?;
    out.set_item("objects_written", snap.objects_written)?;
    out.set_item("objects_deleted", snap.objects_deleted)?;
    out.set_item("keys_listed", snap.keys_listed)?;
    out.set_item("requests", snap.ops.iter().map(|o| o.requests).sum::<u64>())?;
    out.set_item("in_flight", snap.in_flight)?;
    out.set_item("max_in_flight", snap.max_in_flight)?;
    out.set_item("errors", by_cause(&snap.errors)?)?;
    out.set_item("retries", by_cause(&snap.retries)?)?;
    out.set_item("ops", ops)?;
    Ok(out)
}

/// Log every storage request as one JSON line appended to `path` (`None`: stop); returns the path
/// logged to before.
#[pyfunction]
#[pyo3(signature = (path = None))]
fn oplog(path: Option<std::path::PathBuf>) -> PyResult<Option<std::path::PathBuf>> {
    let before = s3dlio_core::oplog::path();
    s3dlio_core::oplog::set(path.as_deref()).map_err(to_pyerr)?;
    Ok(before)
}

/// (backend instances, S3 clients) cached in this process (tests of the cache bound).
#[pyfunction]
fn _debug_cache_sizes() -> PyResult<(usize, usize)> {
    Ok(context().map_err(to_pyerr)?.cache_sizes())
}

/// PID the current runtime context was built in (fork-safety tests).
#[pyfunction]
fn _debug_runtime_pid() -> PyResult<u32> {
    Ok(context().map_err(to_pyerr)?.pid())
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", PyString::new(m.py(), env!("CARGO_PKG_VERSION")))?;
    m.add_class::<Buffer>()?;
    m.add_class::<ObjectInfo>()?;
    m.add_class::<Config>()?;
    m.add_class::<ListIter>()?;
    m.add_function(wrap_pyfunction!(get, m)?)?;
    m.add_function(wrap_pyfunction!(get_async, m)?)?;
    m.add_function(wrap_pyfunction!(get_range, m)?)?;
    m.add_function(wrap_pyfunction!(get_range_async, m)?)?;
    m.add_function(wrap_pyfunction!(get_many, m)?)?;
    m.add_function(wrap_pyfunction!(put_many, m)?)?;
    m.add_function(wrap_pyfunction!(put_many_async, m)?)?;
    m.add_function(wrap_pyfunction!(get_many_async, m)?)?;
    m.add_function(wrap_pyfunction!(stat, m)?)?;
    m.add_function(wrap_pyfunction!(stat_async, m)?)?;
    m.add_function(wrap_pyfunction!(exists, m)?)?;
    m.add_function(wrap_pyfunction!(exists_async, m)?)?;
    m.add_function(wrap_pyfunction!(list, m)?)?;
    m.add_function(wrap_pyfunction!(list_async, m)?)?;
    m.add_function(wrap_pyfunction!(list_iter, m)?)?;
    m.add_function(wrap_pyfunction!(put, m)?)?;
    m.add_function(wrap_pyfunction!(put_async, m)?)?;
    m.add_function(wrap_pyfunction!(delete, m)?)?;
    m.add_function(wrap_pyfunction!(delete_async, m)?)?;
    m.add_function(wrap_pyfunction!(delete_prefix, m)?)?;
    m.add_function(wrap_pyfunction!(delete_prefix_async, m)?)?;
    m.add_function(wrap_pyfunction!(copy, m)?)?;
    m.add_function(wrap_pyfunction!(copy_async, m)?)?;
    m.add_function(wrap_pyfunction!(copy_tree, m)?)?;
    m.add_function(wrap_pyfunction!(copy_tree_async, m)?)?;
    m.add_function(wrap_pyfunction!(delete_many, m)?)?;
    m.add_function(wrap_pyfunction!(delete_many_async, m)?)?;
    m.add_function(wrap_pyfunction!(upload, m)?)?;
    m.add_function(wrap_pyfunction!(upload_async, m)?)?;
    m.add_function(wrap_pyfunction!(download, m)?)?;
    m.add_function(wrap_pyfunction!(download_async, m)?)?;
    m.add_function(wrap_pyfunction!(create_bucket, m)?)?;
    m.add_function(wrap_pyfunction!(create_bucket_async, m)?)?;
    m.add_function(wrap_pyfunction!(delete_bucket, m)?)?;
    m.add_function(wrap_pyfunction!(delete_bucket_async, m)?)?;
    m.add_function(wrap_pyfunction!(live_tasks, m)?)?;
    m.add_function(wrap_pyfunction!(stats, m)?)?;
    m.add_function(wrap_pyfunction!(oplog, m)?)?;
    m.add_function(wrap_pyfunction!(_debug_cache_sizes, m)?)?;
    m.add_function(wrap_pyfunction!(asyncio::_asyncio_tasks, m)?)?;
    m.add_class::<io::PyWriter>()?;
    m.add_class::<io::PyReader>()?;
    m.add_function(wrap_pyfunction!(io::open_writer, m)?)?;
    m.add_function(wrap_pyfunction!(io::open_writer_async, m)?)?;
    m.add_function(wrap_pyfunction!(io::open_reader, m)?)?;
    m.add_function(wrap_pyfunction!(io::open_reader_async, m)?)?;
    m.add_function(wrap_pyfunction!(io::crc32c, m)?)?;
    m.add_class::<loader::CancelToken>()?;
    m.add_class::<loader::BatchStream>()?;
    m.add_class::<loader::LoaderScope>()?;
    m.add_class::<loader::SampleSource>()?;
    m.add_function(wrap_pyfunction!(loader::validate_loader_options, m)?)?;
    m.add_function(wrap_pyfunction!(loader::validate_pool_config, m)?)?;
    m.add_function(wrap_pyfunction!(loader::validate_range_config, m)?)?;
    m.add_function(wrap_pyfunction!(loader::pool_from_loader_options, m)?)?;
    m.add_function(wrap_pyfunction!(loader::epoch_indices, m)?)?;
    m.add_function(wrap_pyfunction!(_debug_runtime_pid, m)?)?;
    Ok(())
}
