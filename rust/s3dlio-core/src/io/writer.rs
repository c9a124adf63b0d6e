//! The streaming writer: bytes are copied into part-sized buffers; each full part is uploaded by a
//! task of its own while the caller keeps writing. Memory is bounded by `part_size ×
//! max_parts_in_flight`: a buffer is allocated only under a permit of the window, and the permit
//! is held until its part is written, so a caller that outruns the store waits for a permit
//! (backpressure).
//!
//! Nothing is published until [`Writer::close`]: below one part it is a single PUT, from there a
//! multipart upload completed from every part's ETag and checksum. A part that fails fails the
//! writer; [`Writer::abort`], a failure, or dropping the writer (an exception in Python, Ctrl-C,
//! garbage collection) aborts the upload, so the previous version of the key stays.
//!
//! Every part carries a CRC32C (S3 checks it before storing the part) and the writer combines the
//! parts' CRC32Cs into the whole object's, which [`Written::crc32c`] reports (checkpoint manifests
//! record it, loaders verify it).

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, MultipartUpload, SyncSink};
use crate::config::{StoreConfig, MAX_PARTS, MAX_PART_SIZE, MIN_PART_SIZE};
use crate::error::{Error, ErrorKind, Result};
use crate::ops::object;
use crate::runtime::context;
use crate::types::{PartInfo, PutOptions};

/// Options of one writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterOptions {
    /// Bytes per part (S3: 5 MiB to 5 GiB). Also the largest object written with a single PUT.
    pub part_size: u64,
    /// Part buffers alive at once: the one being filled plus those uploading.
    pub max_parts_in_flight: usize,
    /// Local backends: flush the file to stable storage before it is renamed into place.
    pub fsync: bool,
}

impl WriterOptions {
    /// The defaults for `cfg`: its `part_size`, 8 parts in flight, and fsync on: a file object
    /// that was closed is durable (a checkpoint survives a power loss), whatever `cfg.fsync`
    /// (which governs one-shot puts) says.
    pub fn from_config(cfg: &StoreConfig) -> WriterOptions {
        WriterOptions { part_size: cfg.part_size, max_parts_in_flight: 8, fsync: true }
    }

    pub fn validate(&self) -> Result<()> {
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return Err(Error::invalid_config(format!(
                "part_size must be between 5 MiB and 5 GiB (S3 limits), got {}",
                self.part_size
            )));
        }
        if self.max_parts_in_flight == 0 {
            return Err(Error::invalid_config("max_parts_in_flight must be at least 1"));
        }
        Ok(())
    }
}

/// What a completed write produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub size: u64,
    /// CRC32C (Castagnoli) of the whole object.
    pub crc32c: u32,
    /// Parts uploaded (0: written in one request, or in place for a local file).
    pub parts: u32,
}

/// CRC32C (Castagnoli) of `data`, continuing from `crc` (0 to start).
pub fn crc32c(data: &[u8], crc: u32) -> u32 {
    let part = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32;
    crc32c_combine(crc, part, data.len() as u64)
}

/// The CRC32C of `a ++ b` from the CRC32Cs of `a` and of `b` (`b_len` bytes).
pub fn crc32c_combine(a: u32, b: u32, b_len: u64) -> u32 {
    if b_len == 0 {
        return a;
    }
    crc_fast::checksum_combine(crc_fast::CrcAlgorithm::Crc32Iscsi, u64::from(a), u64::from(b), b_len) as u32
}

/// A finished part: its info for completion, its length and CRC32C for the whole object's.
struct Part {
    info: PartInfo,
    len: u64,
    crc: u32,
}

type Upload = Arc<Box<dyn MultipartUpload>>;

/// A streaming writer to one object. Not `Sync`: one caller writes.
pub struct Writer {
    backend: Arc<dyn Backend>,
    key: String,
    uri: String,
    put_opts: PutOptions,
    part_size: usize,
    window: Arc<Semaphore>,
    /// The part being filled, with its permit of the window.
    cur: Option<(BytesMut, OwnedSemaphorePermit)>,
    upload: Option<Upload>,
    tasks: Vec<JoinHandle<Result<Part>>>,
    next_part: u32,
    written: u64,
    /// Cancelled when a part fails (wakes a writer waiting for the window) or the writer is dropped.
    token: CancellationToken,
    /// Local files: written in place on the caller's thread instead of in parts (no part buffers,
    /// no tasks, one copy: into the page cache); `crc` is then the running CRC32C.
    sink: Option<Box<dyn SyncSink>>,
    crc: u32,
    failure: Arc<Mutex<Option<Error>>>,
}

impl Writer {
    /// A writer to `uri`. Nothing is sent until the first part fills or the writer is closed.
    pub async fn create(uri: &str, cfg: &StoreConfig, opts: WriterOptions) -> Result<Writer> {
        opts.validate()?;
        let (backend, key) = object(uri, cfg).await?;
        let part_size = usize::try_from(opts.part_size)
            .map_err(|_| Error::invalid_config("part_size exceeds this machine's address space"))?;
        let put_opts = PutOptions { fsync: opts.fsync };
        let sink = backend.sync_sink(&key, &put_opts).transpose()?;
        Ok(Writer {
            sink,
            crc: 0,
            uri: backend.uri(&key),
            backend,
            key,
            put_opts,
            part_size,
            window: Arc::new(Semaphore::new(opts.max_parts_in_flight)),
            cur: None,
            upload: None,
            tasks: Vec::new(),
            next_part: 1,
            written: 0,
            token: CancellationToken::new(),
            failure: Arc::new(Mutex::new(None)),
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Bytes accepted so far.
    pub fn position(&self) -> u64 {
        self.written
    }

    fn failed(&self) -> Option<Error> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Copy as much of `data` as fits into the part being filled; returns the bytes taken (0 when
    /// there is no part buffer or it is full: call [`Writer::make_room`]). Never waits for the
    /// store; a local file is written here (at most `part_size` bytes per call, blocking).
    pub fn fill(&mut self, data: &[u8]) -> Result<usize> {
        if let Some(sink) = self.sink.as_mut() {
            let n = data.len().min(self.part_size);
            sink.write(&data[..n])?;
            self.crc = crc32c(&data[..n], self.crc);
            self.written += n as u64;
            return Ok(n);
        }
        let Some((buf, _)) = self.cur.as_mut() else { return Ok(0) };
        let n = data.len().min(self.part_size - buf.len());
        buf.extend_from_slice(&data[..n]);
        self.written += n as u64;
        Ok(n)
    }

    /// Whether [`Writer::fill`] can take bytes now.
    pub fn has_room(&self) -> bool {
        self.sink.is_some() || self.cur.as_ref().is_some_and(|(b, _)| b.len() < self.part_size)
    }

    /// Make room for more bytes: send the full part (starting the multipart upload on the first),
    /// then wait for a permit of the window and allocate the next part buffer. Errors with the
    /// first failed part's error.
    pub async fn make_room(&mut self) -> Result<()> {
        if let Some(e) = self.failed() {
            return Err(e);
        }
        if self.cur.as_ref().is_some_and(|(b, _)| b.len() >= self.part_size) {
            self.send_part().await?;
        }
        if self.cur.is_none() {
            let permit = tokio::select! {
                biased;
                () = self.token.cancelled() => return Err(self.failed().unwrap_or_else(Error::cancelled)),
                p = self.window.clone().acquire_owned() => p.map_err(|_| Error::cancelled())?,
            };
            // Fresh pages: the part buffer is written once by the caller's bytes.
            self.cur = Some((BytesMut::with_capacity(self.part_size), permit));
        }
        Ok(())
    }

    /// Write all of `data` (waiting for the window as needed).
    pub async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            if !self.has_room() {
                self.make_room().await?;
            }
            let n = self.fill(data)?;
            data = &data[n..];
        }
        Ok(())
    }

    async fn ensure_upload(&mut self) -> Result<Upload> {
        if let Some(u) = &self.upload {
            return Ok(u.clone());
        }
        let u: Upload = Arc::new(self.backend.start_multipart(&self.key, &self.put_opts).await?);
        self.upload = Some(u.clone());
        Ok(u)
    }

    /// Hand the current part to an upload task of its own.
    async fn send_part(&mut self) -> Result<()> {
        let upload = self.ensure_upload().await?;
        let Some((buf, permit)) = self.cur.take() else { return Ok(()) };
        let number = self.next_part;
        if u64::from(number) > MAX_PARTS {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                Some(&self.uri),
                format!(
                    "the object needs more than {MAX_PARTS} parts of {} bytes: raise part_size",
                    self.part_size
                ),
            ));
        }
        self.next_part += 1;
        let offset = self.written - buf.len() as u64;
        let (token, failure, uri) = (self.token.clone(), self.failure.clone(), self.uri.clone());
        let ctx = context()?;
        let task = ctx.spawn(async move {
            let _permit = permit; // released when the part is written (or has failed)
            let data: Bytes = buf.freeze();
            let (len, crc) = (data.len() as u64, crc32c(&data, 0));
            let put = upload.put_part(number, offset, data);
            let r = tokio::select! {
                biased;
                () = token.cancelled() => Err(Error::cancelled()),
                r = put => r.map(|info| Part { info, len, crc }),
            };
            if let Err(e) = &r {
                if e.kind() != ErrorKind::Cancelled {
                    let msg =
                        format!("part {number} (bytes {offset}..{}) failed: {}", offset + len, e.message());
                    let e = Error::new(e.kind(), Some(&uri), msg);
                    let mut slot = failure.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(e);
                    token.cancel(); // fail fast: the other parts stop, a waiting writer wakes
                }
            }
            r
        });
        self.tasks.push(task);
        Ok(())
    }

    /// Publish the object: the last part is sent, every part awaited, the upload completed (or,
    /// below one part, one PUT). Any failure aborts the upload (waiting for the abort) and is
    /// returned.
    pub async fn close(mut self) -> Result<Written> {
        let r = self.finish().await;
        if r.is_err() {
            let _ = self.abort_now().await;
            // A failed completion hands its abort to the cleanup tracker: wait for it, bounded.
            if let Ok(ctx) = context() {
                ctx.wait_cleanup(std::time::Duration::from_secs(10)).await;
            }
        }
        r
    }

    async fn finish(&mut self) -> Result<Written> {
        if let Some(e) = self.failed() {
            return Err(e);
        }
        if let Some(sink) = self.sink.take() {
            let done = tokio::task::spawn_blocking(move || sink.complete()).await;
            done.map_err(|e| Error::new(ErrorKind::Io, Some(&self.uri), format!("publish task: {e}")))??;
            return Ok(Written { size: self.written, crc32c: self.crc, parts: 0 });
        }
        if self.upload.is_none() {
            // Under one part: a single PUT (an empty object too).
            let data = self.cur.take().map(|(b, _)| b.freeze()).unwrap_or_default();
            let crc = crc32c(&data, 0);
            self.backend.put(&self.key, data, &self.put_opts).await?;
            return Ok(Written { size: self.written, crc32c: crc, parts: 0 });
        }
        if self.cur.as_ref().is_some_and(|(b, _)| !b.is_empty()) {
            self.send_part().await?;
        }
        self.cur = None;
        let mut parts = Vec::with_capacity(self.tasks.len());
        for t in std::mem::take(&mut self.tasks) {
            let part = match t.await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return Err(self.failed().unwrap_or(e)),
                Err(e) => return Err(Error::new(ErrorKind::Io, Some(&self.uri), format!("part task: {e}"))),
            };
            parts.push(part);
        }
        parts.sort_by_key(|p| p.info.number);
        let (mut crc, mut size) = (0u32, 0u64);
        for p in &parts {
            crc = crc32c_combine(crc, p.crc, p.len);
            size += p.len;
        }
        if size != self.written {
            // Never publish an object that is not every byte written.
            return Err(Error::new(
                ErrorKind::Io,
                Some(&self.uri),
                format!("parts hold {size} bytes but {} were written", self.written),
            ));
        }
        let upload = self.upload.take().map(Arc::try_unwrap);
        let Some(Ok(upload)) = upload else {
            return Err(Error::new(ErrorKind::Io, Some(&self.uri), "a part task still holds the upload"));
        };
        let count = u32::try_from(parts.len()).unwrap_or(u32::MAX);
        upload.complete(parts.into_iter().map(|p| p.info).collect(), size).await?;
        Ok(Written { size, crc32c: crc, parts: count })
    }

    /// Discard everything written; nothing is published. Waits for the abort to finish.
    pub async fn abort(mut self) -> Result<()> {
        self.abort_now().await
    }

    async fn abort_now(&mut self) -> Result<()> {
        self.token.cancel();
        self.sink = None; // removes the temp file
        self.cur = None;
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await; // cancelled: each returns promptly, dropping its hold on the upload
        }
        match self.upload.take().map(Arc::try_unwrap) {
            Some(Ok(upload)) => upload.abort().await,
            // Still shared (cannot happen once every task is awaited): dropping aborts it.
            Some(Err(_)) | None => Ok(()),
        }
    }
}

impl Drop for Writer {
    /// Not closed: the in-flight parts stop and the upload is aborted (the multipart handle's
    /// own drop hands the abort to the runtime's cleanup tracker).
    fn drop(&mut self) {
        self.token.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnoli_and_combines() {
        assert_eq!(crc32c(b"123456789", 0), 0xE306_9283);
        let whole = crc32c(b"hello, world", 0);
        assert_eq!(crc32c(b", world", crc32c(b"hello", 0)), whole);
        assert_eq!(crc32c(b"", whole), whole);
    }
}
