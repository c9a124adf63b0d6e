//! `Writer` and `Reader`: the native halves of `s3dlio.open`'s file objects. Conversion and GIL
//! handling only; the streaming logic is `s3dlio_core::io`.
//!
//! Each holds its core object in a slot; a call takes it out, and a wait moves it into the
//! runtime's task and back. When a wait is interrupted (Ctrl-C) or fails, the core object is
//! dropped inside the task: a writer aborts its upload, a reader stops its readahead. Later calls
//! then raise `ValueError` (the file is no longer usable).

use std::ffi::c_int;
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::exceptions::{PyBufferError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use s3dlio_core::io::{Fetcher, Reader, ReaderOptions, Writer, WriterOptions, Written};
use s3dlio_core::options::RangeEngineConfig;
use s3dlio_core::StoreConfig;

use crate::asyncio::future;
use crate::buffer::{bytes_from_py, Buffer, PyBytesView};
use crate::config::{resolve, Config};
use crate::errors::to_pyerr;
use crate::wait::{wait, wait_lending};

/// Small copies stay on the calling thread with the GIL held: releasing it costs more.
const DETACH_ABOVE: usize = 256 * 1024;
/// In-place (local) reads go in slices of this size, with a Ctrl-C check between them.
const IN_PLACE_SLICE: usize = 64 * 1024 * 1024;

/// A core file object and the process it belongs to. After `fork()` the child's copy refers to
/// the parent's runtime and tasks, which do not exist in the child: it is leaked there, never
/// awaited or dropped (either could wait forever on a task that will never run).
struct Owned<T> {
    pid: u32,
    inner: Option<T>,
}

impl<T> Owned<T> {
    fn new(v: T) -> Owned<T> {
        Owned { pid: std::process::id(), inner: Some(v) }
    }

    fn take(&mut self) -> Option<T> {
        if self.pid != std::process::id() {
            std::mem::forget(self.inner.take());
            return None;
        }
        self.inner.take()
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if self.pid != std::process::id() {
            std::mem::forget(self.inner.take());
        }
    }
}

type Slot<T> = Mutex<Owned<T>>;

fn slot<T>(v: T) -> Arc<Slot<T>> {
    Arc::new(Mutex::new(Owned::new(v)))
}

fn take<T>(slot: &Slot<T>) -> Option<T> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn put_back<T>(slot: &Slot<T>, v: T) {
    slot.lock().unwrap_or_else(|p| p.into_inner()).inner = Some(v);
}

fn guard<T>(slot: &Slot<T>) -> MutexGuard<'_, Owned<T>> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

fn unusable(what: &str, uri: &str) -> PyErr {
    PyValueError::new_err(format!(
        "I/O operation on a {what} that is closed, aborted or failed (or in use by another call): {uri}"
    ))
}

/// Copy `src` into `dst` (equal lengths), without the GIL when it is large.
fn copy(py: Python<'_>, dst: &mut [u8], src: &[u8]) {
    if src.len() > DETACH_ABOVE {
        py.detach(|| dst.copy_from_slice(src));
    } else {
        dst.copy_from_slice(src);
    }
}

// --- Writer ---------------------------------------------------------------------------------------

/// The native streaming writer behind `s3dlio.open(uri, "wb")`.
#[pyclass(frozen, module = "s3dlio._core", name = "Writer")]
pub struct PyWriter {
    slot: Arc<Slot<Writer>>,
    #[pyo3(get)]
    uri: String,
    written: Mutex<Option<Written>>,
}

fn writer_options(
    cfg: &StoreConfig,
    part_size: Option<u64>,
    max_parts_in_flight: Option<usize>,
    fsync: Option<bool>,
) -> WriterOptions {
    let mut o = WriterOptions::from_config(cfg);
    o.part_size = part_size.unwrap_or(o.part_size);
    o.max_parts_in_flight = max_parts_in_flight.unwrap_or(o.max_parts_in_flight);
    o.fsync = fsync.unwrap_or(o.fsync);
    o
}

impl PyWriter {
    fn new(w: Writer) -> PyWriter {
        PyWriter { uri: w.uri().to_owned(), slot: slot(w), written: Mutex::new(None) }
    }
}

#[pymethods]
impl PyWriter {
    /// Append the bytes of any buffer; returns their count. Waits (GIL released, Ctrl-C answered)
    /// while the window of parts in flight is full.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        let view = PyBytesView::get(data)?;
        let mut rest = view.as_slice();
        let total = rest.len();
        let mut w = take(&self.slot).ok_or_else(|| unusable("writer", &self.uri))?;
        while !rest.is_empty() {
            if !w.has_room() {
                // The writer travels into the wait and comes back; on failure or Ctrl-C it is
                // dropped there, which aborts the upload.
                w = wait(py, async move {
                    match w.make_room().await {
                        Ok(()) => Ok(w),
                        Err(e) => {
                            let _ = w.abort().await; // the part's error is what the caller sees
                            Err(e)
                        }
                    }
                })?;
            }
            let n = if rest.len() > DETACH_ABOVE { py.detach(|| w.fill(rest)) } else { w.fill(rest) };
            // A failed write drops the writer here, which removes what it wrote.
            rest = &rest[n.map_err(to_pyerr)?..];
            if !rest.is_empty() {
                py.check_signals()?; // a large write to a local file answers Ctrl-C between parts
            }
        }
        put_back(&self.slot, w);
        Ok(total)
    }

    /// Publish the object; returns `(size, crc32c, parts)`. Idempotent once it succeeded.
    fn close(&self, py: Python<'_>) -> PyResult<(u64, u32, u32)> {
        if let Some(w) = *lock(&self.written) {
            return Ok((w.size, w.crc32c, w.parts));
        }
        let w = take(&self.slot).ok_or_else(|| unusable("writer", &self.uri))?;
        let done = wait(py, async move { w.close().await })?;
        *lock(&self.written) = Some(done);
        Ok((done.size, done.crc32c, done.parts))
    }

    /// Discard what was written (nothing is published); waits for the abort. Idempotent.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        match take(&self.slot) {
            Some(w) => wait(py, async move { w.abort().await }),
            None => Ok(()),
        }
    }

    fn write_async<'py>(&self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let data = bytes_from_py(data)?;
        let (slot, uri) = (self.slot.clone(), self.uri.clone());
        let mut w = take(&slot).ok_or_else(|| unusable("writer", &uri))?;
        future(py, async move {
            let n = data.len();
            if let Err(e) = w.write(&data).await {
                let _ = w.abort().await;
                return Err(e);
            }
            put_back(&slot, w);
            Ok(n)
        })
    }

    fn close_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let w = take(&self.slot).ok_or_else(|| unusable("writer", &self.uri))?;
        future(py, async move {
            let done = w.close().await?;
            Ok((done.size, done.crc32c, done.parts))
        })
    }

    fn abort_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let w = take(&self.slot);
        future(py, async move {
            match w {
                Some(w) => w.abort().await,
                None => Ok(()),
            }
        })
    }

    /// Bytes written so far.
    fn tell(&self) -> PyResult<u64> {
        if let Some(w) = *lock(&self.written) {
            return Ok(w.size);
        }
        guard(&self.slot).inner.as_ref().map(Writer::position).ok_or_else(|| unusable("writer", &self.uri))
    }
}

#[pyfunction]
#[pyo3(signature = (uri, part_size=None, max_parts_in_flight=None, fsync=None, config=None))]
pub fn open_writer(
    py: Python<'_>,
    uri: String,
    part_size: Option<u64>,
    max_parts_in_flight: Option<usize>,
    fsync: Option<bool>,
    config: Option<&Bound<'_, Config>>,
) -> PyResult<PyWriter> {
    let cfg = resolve(config);
    let opts = writer_options(&cfg, part_size, max_parts_in_flight, fsync);
    wait(py, async move { Writer::create(&uri, &cfg, opts).await }).map(PyWriter::new)
}

#[pyfunction]
#[pyo3(signature = (uri, part_size=None, max_parts_in_flight=None, fsync=None, config=None))]
pub fn open_writer_async<'py>(
    py: Python<'py>,
    uri: String,
    part_size: Option<u64>,
    max_parts_in_flight: Option<usize>,
    fsync: Option<bool>,
    config: Option<&Bound<'py, Config>>,
) -> PyResult<Bound<'py, PyAny>> {
    let cfg = resolve(config);
    let opts = writer_options(&cfg, part_size, max_parts_in_flight, fsync);
    future(py, async move { Writer::create(&uri, &cfg, opts).await.map(PyWriter::new) })
}

// --- Reader ---------------------------------------------------------------------------------------

/// A writable Python buffer (contiguous bytes) held open; released on drop (GIL held there).
struct WritableView {
    view: Box<ffi::Py_buffer>,
}

impl WritableView {
    fn get(obj: &Bound<'_, PyAny>) -> PyResult<WritableView> {
        // SAFETY: Py_buffer is plain data; an all-zero value is a valid "empty" view to fill.
        let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
        let flags: c_int = ffi::PyBUF_SIMPLE | ffi::PyBUF_WRITABLE;
        // SAFETY: obj is a live object (GIL held); view points to writable memory.
        let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, flags) };
        if rc != 0 {
            let err = PyErr::fetch(obj.py());
            if err.is_instance_of::<PyBufferError>(obj.py()) || err.is_instance_of::<PyTypeError>(obj.py()) {
                return Err(PyTypeError::new_err(format!(
                    "readinto needs a writable, C-contiguous buffer (bytearray, memoryview, numpy array): {err}"
                )));
            }
            return Err(err);
        }
        Ok(WritableView { view })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.view.len == 0 || self.view.buf.is_null() {
            return &mut [];
        }
        // SAFETY: a filled writable PyBUF_SIMPLE view describes `len` contiguous writable bytes.
        unsafe { std::slice::from_raw_parts_mut(self.view.buf.cast::<u8>(), self.view.len as usize) }
    }
}

impl Drop for WritableView {
    fn drop(&mut self) {
        // SAFETY: filled by PyObject_GetBuffer, released exactly once; the GIL is held (dropped
        // in the calling method).
        unsafe { ffi::PyBuffer_Release(&mut *self.view) }
    }
}

/// Memory lent to a fetch task (see [`wait_lending`], which outlives every write through it).
struct Lent(*mut u8, usize);
// SAFETY: the pointer is used only by the task `wait_lending` waits for to the end, while the
// borrowed buffer stays alive and is not touched by anyone else.
unsafe impl Send for Lent {}

/// Fill `dst` from `r` at its position: direct concurrent ranges for large spans, the chunks
/// otherwise. Returns how many bytes (fewer only at the end) and the reader, or `None` when it was
/// lost (dropped by a failed or interrupted fill).
fn read_into(py: Python<'_>, mut r: Reader, dst: &mut [u8]) -> (Option<Reader>, PyResult<usize>) {
    let mut done = 0;
    while done < dst.len() && !r.at_end() {
        let want = usize::try_from(r.size() - r.position()).unwrap_or(usize::MAX).min(dst.len() - done);
        if r.wants_direct(want) && r.is_in_place() {
            // A local file: pread straight into the destination, in slices between which Ctrl-C
            // is answered.
            let end = done + want.min(IN_PLACE_SLICE);
            let got = if end - done > DETACH_ABOVE {
                py.detach(|| r.read_now(&mut dst[done..end]))
            } else {
                r.read_now(&mut dst[done..end])
            };
            match got {
                Some(Ok(0)) | None => break,
                Some(Ok(n)) => done += n,
                Some(Err(e)) => return (Some(r), Err(to_pyerr(e))),
            }
            if let Err(e) = py.check_signals() {
                return (Some(r), Err(e));
            }
            continue;
        }
        if r.wants_direct(want) {
            let f: Fetcher = r.fetcher();
            let at = r.position();
            let lent = Lent(dst[done..].as_mut_ptr(), want);
            let got = wait_lending(py, async move {
                let lent = lent;
                // SAFETY: see `Lent`: the buffer outlives this task and nothing else touches it.
                let dst = unsafe { std::slice::from_raw_parts_mut(lent.0, lent.1) };
                f.read_at(at, dst).await
            });
            if let Err(e) = got {
                return (Some(r), Err(e));
            }
            r.advance_direct(want as u64);
            done += want;
            continue;
        }
        if r.buffered().is_empty() && r.is_in_place() {
            if let Some(Err(e)) = py.detach(|| r.fill_now()) {
                return (Some(r), Err(to_pyerr(e)));
            }
        } else if r.buffered().is_empty() {
            r = match wait(py, async move { r.fill().await.map(|()| r) }) {
                Ok(r) => r,
                Err(e) => return (None, Err(e)),
            };
        }
        let avail = r.buffered();
        let n = avail.len().min(dst.len() - done);
        copy(py, &mut dst[done..done + n], &avail[..n]);
        r.consume(n);
        done += n;
    }
    (Some(r), Ok(done))
}

/// The native seekable reader behind `s3dlio.open(uri, "rb")`.
#[pyclass(frozen, module = "s3dlio._core", name = "Reader")]
pub struct PyReader {
    slot: Arc<Slot<Reader>>,
    #[pyo3(get)]
    uri: String,
    #[pyo3(get)]
    size: u64,
    #[pyo3(get)]
    etag: Option<String>,
}

impl PyReader {
    fn new(r: Reader) -> PyReader {
        PyReader { uri: r.uri().to_owned(), size: r.size(), etag: r.etag().map(str::to_owned), slot: slot(r) }
    }

    fn take(&self) -> PyResult<Reader> {
        take(&self.slot).ok_or_else(|| unusable("reader", &self.uri))
    }

    fn finish<T>(&self, r: Option<Reader>, out: PyResult<T>) -> PyResult<T> {
        if let Some(r) = r {
            put_back(&self.slot, r);
        }
        out
    }

    /// Bytes left from the position, bounded by `n` (`None` or negative: all).
    fn remaining(&self, r: &Reader, n: Option<i64>) -> usize {
        let left = usize::try_from(r.size().saturating_sub(r.position())).unwrap_or(usize::MAX);
        match n {
            Some(n) if n >= 0 => left.min(usize::try_from(n).unwrap_or(usize::MAX)),
            _ => left,
        }
    }

    /// Make bytes at the position buffered (one fetch at most); the reader back, or lost.
    fn filled(&self, py: Python<'_>, mut r: Reader) -> PyResult<Reader> {
        if !r.buffered().is_empty() || r.at_end() {
            return Ok(r);
        }
        if r.is_in_place() {
            return match py.detach(|| r.fill_now()) {
                Some(Err(e)) => {
                    put_back(&self.slot, r);
                    Err(to_pyerr(e))
                }
                _ => Ok(r),
            };
        }
        wait(py, async move {
            let mut r = r;
            r.fill().await.map(|()| r)
        })
    }
}

#[pymethods]
impl PyReader {
    /// Read into a writable buffer; returns the bytes read (fewer only at the end).
    fn readinto(&self, py: Python<'_>, buf: &Bound<'_, PyAny>) -> PyResult<usize> {
        let mut view = WritableView::get(buf)?;
        let r = self.take()?;
        let (r, out) = read_into(py, r, view.as_mut_slice());
        self.finish(r, out)
    }

    /// Read `n` bytes (`None`/negative: to the end) as `bytes`.
    #[pyo3(signature = (n=None))]
    fn read<'py>(&self, py: Python<'py>, n: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let r = self.take()?;
        let len = self.remaining(&r, n);
        let mut kept = Some(r);
        let out = PyBytes::new_with(py, len, |dst| {
            let Some(r) = kept.take() else { return Ok(()) };
            let (r, got) = read_into(py, r, dst);
            kept = r;
            got.map(|_| ())
        });
        self.finish(kept, out)
    }

    /// Up to `n` bytes (`None`/negative: what is buffered) with at most one fetch, as a
    /// zero-copy `Buffer` of the fetched chunk.
    #[pyo3(signature = (n=None))]
    fn read1(&self, py: Python<'_>, n: Option<i64>) -> PyResult<Buffer> {
        let r = self.take()?;
        let max = self.remaining(&r, n);
        let r = self.filled(py, r)?;
        let data = r.buffered_bytes(max);
        let mut r = r;
        r.consume(data.len());
        self.finish(Some(r), Ok(Buffer::new(data)))
    }

    /// The buffered bytes at the position (fetching if none), without moving.
    #[pyo3(signature = (n=0))]
    fn peek<'py>(&self, py: Python<'py>, n: i64) -> PyResult<Bound<'py, PyBytes>> {
        let _ = n; // like io.BufferedReader.peek: returns what is buffered, at least one byte
        let r = self.take()?;
        let r = self.filled(py, r)?;
        let out = PyBytes::new(py, r.buffered());
        self.finish(Some(r), Ok(out))
    }

    /// One line (through `\n`), at most `limit` bytes (`None`/negative: no limit).
    #[pyo3(signature = (limit=None))]
    fn readline<'py>(&self, py: Python<'py>, limit: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let mut r = self.take()?;
        let max = self.remaining(&r, limit);
        let mut line = Vec::new();
        while line.len() < max && !r.at_end() {
            r = self.filled(py, r)?;
            let avail = r.buffered();
            let room = (max - line.len()).min(avail.len());
            let (n, found) = match avail[..room].iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (room, false),
            };
            line.extend_from_slice(&avail[..n]);
            r.consume(n);
            if found {
                break;
            }
        }
        let out = PyBytes::new(py, &line);
        self.finish(Some(r), Ok(out))
    }

    /// Move to `offset` relative to `whence` (0 start, 1 current, 2 end); returns the position.
    #[pyo3(signature = (offset, whence=0))]
    fn seek(&self, offset: i64, whence: i32) -> PyResult<u64> {
        let mut g = guard(&self.slot);
        let r = g.inner.as_mut().ok_or_else(|| unusable("reader", &self.uri))?;
        let base: i128 = match whence {
            0 => 0,
            1 => i128::from(r.position()),
            2 => i128::from(r.size()),
            _ => {
                return Err(PyValueError::new_err(format!("invalid whence ({whence}, should be 0, 1 or 2)")))
            }
        };
        let pos = base + i128::from(offset);
        let pos =
            u64::try_from(pos).map_err(|_| PyValueError::new_err(format!("negative seek position {pos}")))?;
        r.seek(pos);
        Ok(pos)
    }

    fn tell(&self) -> PyResult<u64> {
        guard(&self.slot).inner.as_ref().map(Reader::position).ok_or_else(|| unusable("reader", &self.uri))
    }

    /// Stop the readahead and release the buffered chunks (idempotent).
    fn close(&self) {
        drop(take(&self.slot));
    }

    /// Read `n` bytes (`None`/negative: to the end) as a `Buffer`.
    #[pyo3(signature = (n=None))]
    fn read_async<'py>(&self, py: Python<'py>, n: Option<i64>) -> PyResult<Bound<'py, PyAny>> {
        let mut r = self.take()?;
        let len = self.remaining(&r, n);
        let slot = self.slot.clone();
        future(py, async move {
            let mut buf = vec![0u8; len];
            let got = r.read(&mut buf).await?;
            buf.truncate(got);
            put_back(&slot, r);
            Ok(Buffer::new(buf.into()))
        })
    }
}

fn reader_options(range_engine: Option<RangeEngineConfig>, readahead: Option<usize>) -> ReaderOptions {
    let mut o = ReaderOptions::default();
    if let Some(r) = range_engine {
        o.range = r;
    }
    o.readahead = readahead.unwrap_or(o.readahead);
    o
}

#[pyfunction]
#[pyo3(signature = (uri, range_engine=None, readahead=None, size=None, config=None))]
pub fn open_reader(
    py: Python<'_>,
    uri: String,
    range_engine: Option<crate::Range>,
    readahead: Option<usize>,
    size: Option<u64>,
    config: Option<&Bound<'_, Config>>,
) -> PyResult<PyReader> {
    let cfg = resolve(config);
    let opts = reader_options(range_engine.map(|r| r.0), readahead);
    wait(py, async move { Reader::open(&uri, &cfg, opts, size).await }).map(PyReader::new)
}

#[pyfunction]
#[pyo3(signature = (uri, range_engine=None, readahead=None, size=None, config=None))]
pub fn open_reader_async<'py>(
    py: Python<'py>,
    uri: String,
    range_engine: Option<crate::Range>,
    readahead: Option<usize>,
    size: Option<u64>,
    config: Option<&Bound<'py, Config>>,
) -> PyResult<Bound<'py, PyAny>> {
    let cfg = resolve(config);
    let opts = reader_options(range_engine.map(|r| r.0), readahead);
    future(py, async move { Reader::open(&uri, &cfg, opts, size).await.map(PyReader::new) })
}

/// CRC32C (Castagnoli) of any buffer, continuing from `value`.
#[pyfunction]
#[pyo3(signature = (data, value=0))]
pub fn crc32c(py: Python<'_>, data: &Bound<'_, PyAny>, value: u32) -> PyResult<u32> {
    let view = PyBytesView::get(data)?;
    let s = view.as_slice();
    if s.len() > DETACH_ABOVE {
        Ok(py.detach(|| s3dlio_core::io::crc32c(s, value)))
    } else {
        Ok(s3dlio_core::io::crc32c(s, value))
    }
}
