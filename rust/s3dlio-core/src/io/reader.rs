//! The streaming reader: a seekable view of one object, read through concurrent ranged GETs.
//!
//! * The first request is a ranged GET of the first chunk, whose response also carries the
//!   object's size and version (no HEAD). Every later range is pinned to that version
//!   (`If-Match`): an object replaced while it is read is an error, never a mix of versions.
//! * Reading sequentially keeps `readahead` chunks in flight after the one being read. A read
//!   that lands outside them (a random seek) drops the readahead, fetches only the chunk it
//!   needs, and readahead resumes once reading is sequential again.
//! * A large read ([`Reader::read_large`]) is fetched as concurrent ranges straight into the
//!   caller's buffer, with no chunk in between.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::task::JoinHandle;

use crate::backend::{Backend, SyncSource};
use crate::config::StoreConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::ops::{object, within};
use crate::options::RangeEngineConfig;
use crate::runtime::context;
use crate::types::{ByteRange, GetOptions};

/// Options of one reader.
#[derive(Debug, Clone, PartialEq)]
pub struct ReaderOptions {
    /// `chunk_size` is the readahead unit and the range size of large reads,
    /// `max_concurrent_ranges` bounds a large read, `range_timeout` bounds each range.
    pub range: RangeEngineConfig,
    /// Chunks fetched ahead of the one being read while reading sequentially (0: none).
    pub readahead: usize,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        ReaderOptions { range: RangeEngineConfig::default(), readahead: 4 }
    }
}

/// What fetches ranges of one version of one object: `'static`, so a fetch can run as a task.
#[derive(Clone)]
pub struct Fetcher {
    backend: Arc<dyn Backend>,
    key: String,
    uri: String,
    size: u64,
    pinned: GetOptions,
    range: RangeEngineConfig,
}

impl Fetcher {
    /// Exactly `len` bytes at `offset` (inside the object) as a new buffer.
    async fn chunk(&self, offset: u64, len: u64) -> Result<Bytes> {
        let opts = GetOptions { range: Some(ByteRange::new(offset, Some(len))), ..self.pinned.clone() };
        let got =
            within(self.range.range_timeout, "range_timeout", &self.uri, self.backend.get(&self.key, &opts))
                .await?;
        if got.data.len() as u64 != len {
            return Err(Error::new(
                ErrorKind::Io,
                Some(&self.uri),
                format!("range {offset}+{len} came back with {} bytes", got.data.len()),
            ));
        }
        Ok(got.data)
    }

    /// Fill `dst` with the bytes at `offset` (which must lie inside the object), as concurrent
    /// ranges of `chunk_size`, each written in place.
    pub async fn read_at(&self, offset: u64, dst: &mut [u8]) -> Result<()> {
        let chunk = usize::try_from(self.range.chunk_size).unwrap_or(usize::MAX).max(1);
        let ranges: Vec<_> = dst
            .chunks_mut(chunk)
            .enumerate()
            .map(|(i, part)| {
                let at = offset + (i * chunk) as u64;
                async move {
                    within(
                        self.range.range_timeout,
                        "range_timeout",
                        &self.uri,
                        self.backend.get_into(&self.key, at, part, &self.pinned),
                    )
                    .await
                    .map(|_| ())
                }
            })
            .collect();
        futures::stream::iter(ranges)
            .buffer_unordered(self.range.max_concurrent_ranges.max(1))
            .try_for_each(|()| async { Ok(()) })
            .await
    }
}

/// A seekable reader of one object.
pub struct Reader {
    fetch: Fetcher,
    etag: Option<String>,
    pos: u64,
    /// The chunk being read: its offset and bytes.
    cur: Option<(u64, Bytes)>,
    /// Chunks in flight after `cur`, contiguous, in order.
    ahead: VecDeque<(u64, u64, JoinHandle<Result<Bytes>>)>,
    readahead: usize,
    sequential: bool,
    /// Local files: read in place on the caller's thread (`pread` on one open file; the kernel's
    /// readahead and page cache do the rest), no tasks.
    source: Option<Arc<dyn SyncSource>>,
}

/// Reads from a [`SyncSource`] of at least this many bytes go straight into the destination.
const SOURCE_DIRECT: usize = 256 * 1024;
/// Largest chunk of a buffered read from a [`SyncSource`] (readline, peek, small reads); the
/// range engine's `chunk_size` when smaller.
const SOURCE_CHUNK: u64 = 1024 * 1024;

impl Reader {
    /// Open `uri`: one ranged GET of the first chunk, which also gives the size and version.
    /// `size`, when known (a listing), must still be the object's size.
    pub async fn open(
        uri: &str,
        cfg: &StoreConfig,
        opts: ReaderOptions,
        size: Option<u64>,
    ) -> Result<Reader> {
        opts.range.validate()?;
        let (backend, key) = object(uri, cfg).await?;
        let uri = backend.uri(&key);
        if let Some(source) = backend.sync_source(&key).transpose()? {
            let total = source.size();
            if let Some(want) = size.filter(|w| *w != total) {
                return Err(Error::new(
                    ErrorKind::Changed,
                    Some(&uri),
                    format!(
                        "the file is {total} bytes, but {want} were expected (from a listing or the caller)"
                    ),
                ));
            }
            let etag = Some(source.version());
            let pinned =
                GetOptions { expected_size: Some(total), if_match: etag.clone(), ..Default::default() };
            let fetch = Fetcher { backend, key, uri, size: total, pinned, range: opts.range };
            let source: Arc<dyn SyncSource> = Arc::from(source);
            return Ok(Reader {
                fetch,
                etag,
                pos: 0,
                cur: None,
                ahead: VecDeque::new(),
                readahead: 0,
                sequential: true,
                source: Some(source),
            });
        }
        let chunk = opts.range.chunk_size;
        let first_opts = GetOptions {
            range: Some(ByteRange::new(0, Some(chunk))),
            allow_short: true,
            expected_size: size,
            if_match: None,
        };
        let (data, total, etag) =
            match within(opts.range.range_timeout, "range_timeout", &uri, backend.get(&key, &first_opts))
                .await
            {
                Ok(got) => {
                    let total = got.size.unwrap_or(got.data.len() as u64);
                    (got.data, total, got.etag)
                }
                // 416 for a range at byte 0: the object is empty (a plain GET says so, or that the size
                // expected is wrong).
                Err(e) if e.kind() == ErrorKind::InvalidRange => {
                    let got =
                        backend.get(&key, &GetOptions { expected_size: size, ..Default::default() }).await?;
                    let total = got.data.len() as u64;
                    (got.data, total, got.etag)
                }
                Err(e) => return Err(e),
            };
        let pinned = GetOptions { expected_size: Some(total), if_match: etag.clone(), ..Default::default() };
        let fetch = Fetcher { backend, key, uri, size: total, pinned, range: opts.range };
        Ok(Reader {
            fetch,
            etag,
            pos: 0,
            cur: Some((0, data)),
            ahead: VecDeque::new(),
            readahead: opts.readahead,
            sequential: true,
            source: None,
        })
    }

    /// Whether this reader reads in place on the caller's thread ([`Reader::read_now`],
    /// [`Reader::fill_now`]) rather than through tasks.
    pub fn is_in_place(&self) -> bool {
        self.source.is_some()
    }

    /// In-place readers: fill `dst` at the position (blocking), fewer bytes only at the end.
    /// `None` for readers that fetch through tasks.
    pub fn read_now(&mut self, dst: &mut [u8]) -> Option<Result<usize>> {
        let source = self.source.as_ref()?;
        let got = source.read_at(self.pos, dst);
        if let Ok(n) = got {
            self.pos += n as u64;
        }
        Some(got)
    }

    /// In-place readers: buffer the bytes at the position (blocking). `None` for the others.
    pub fn fill_now(&mut self) -> Option<Result<()>> {
        let source = self.source.clone()?;
        if !self.buffered().is_empty() || self.at_end() {
            return Some(Ok(()));
        }
        let len = SOURCE_CHUNK.min(self.fetch.range.chunk_size).min(self.fetch.size - self.pos) as usize;
        let mut buf = vec![0u8; len];
        Some(source.read_at(self.pos, &mut buf).map(|n| {
            buf.truncate(n);
            self.cur = Some((self.pos, Bytes::from(buf)));
        }))
    }

    pub fn uri(&self) -> &str {
        &self.fetch.uri
    }

    pub fn size(&self) -> u64 {
        self.fetch.size
    }

    pub fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The fetcher of this object's version, for [`Fetcher::read_at`] as a task of its own.
    pub fn fetcher(&self) -> Fetcher {
        self.fetch.clone()
    }

    /// Move to `pos` (past the end is allowed: reads there return nothing).
    pub fn seek(&mut self, pos: u64) {
        self.pos = pos;
    }

    /// The buffered bytes at the position (empty when a fetch is needed or at the end).
    pub fn buffered(&self) -> &[u8] {
        match &self.cur {
            Some((off, data)) if self.pos >= *off && self.pos < off + data.len() as u64 => {
                &data[(self.pos - off) as usize..]
            }
            _ => &[],
        }
    }

    /// The buffered bytes at the position as a shared slice (no copy), at most `max`.
    pub fn buffered_bytes(&self, max: usize) -> Bytes {
        match &self.cur {
            Some((off, data)) if self.pos >= *off && self.pos < off + data.len() as u64 => {
                let start = (self.pos - off) as usize;
                data.slice(start..data.len().min(start.saturating_add(max)))
            }
            _ => Bytes::new(),
        }
    }

    /// Advance past `n` buffered bytes.
    pub fn consume(&mut self, n: usize) {
        self.pos += n as u64;
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.fetch.size
    }

    fn drop_ahead(&mut self) {
        for (_, _, t) in self.ahead.drain(..) {
            t.abort();
        }
    }

    fn chunk_len(&self, offset: u64) -> u64 {
        self.fetch.range.chunk_size.min(self.fetch.size - offset)
    }

    /// Keep `readahead` chunks in flight after `cur`.
    fn top_up(&mut self) -> Result<()> {
        if !self.sequential || self.readahead == 0 {
            return Ok(());
        }
        let ctx = context()?;
        while self.ahead.len() < self.readahead {
            let next = match (self.ahead.back(), &self.cur) {
                (Some((off, len, _)), _) => off + len,
                (None, Some((off, data))) => off + data.len() as u64,
                (None, None) => self.pos,
            };
            if next >= self.fetch.size {
                break;
            }
            let len = self.chunk_len(next);
            let f = self.fetch.clone();
            self.ahead.push_back((next, len, ctx.spawn(async move { f.chunk(next, len).await })));
        }
        Ok(())
    }

    /// Make bytes at the position buffered (nothing to do at the end).
    pub async fn fill(&mut self) -> Result<()> {
        if let Some(done) = self.fill_now() {
            return done;
        }
        if !self.buffered().is_empty() || self.at_end() {
            return self.top_up();
        }
        let continuing = self.cur.as_ref().is_some_and(|(off, d)| off + d.len() as u64 == self.pos);
        // Chunks wholly before the position are done with.
        while self.ahead.front().is_some_and(|(off, len, _)| off + len <= self.pos) {
            if let Some((_, _, t)) = self.ahead.pop_front() {
                t.abort();
            }
        }
        self.cur = None;
        match self.ahead.front() {
            Some((off, _, _)) if *off <= self.pos => {
                let Some((off, _, task)) = self.ahead.pop_front() else { return Ok(()) };
                let data =
                    task.await.map_err(|e| Error::new(ErrorKind::Io, Some(self.uri()), e.to_string()))??;
                self.cur = Some((off, data));
                self.sequential = true;
            }
            _ => {
                // Outside the readahead: a random seek, unless it just continues the last chunk.
                self.drop_ahead();
                self.sequential = continuing;
                let len = self.chunk_len(self.pos);
                let data = self.fetch.chunk(self.pos, len).await?;
                self.cur = Some((self.pos, data));
            }
        }
        self.top_up()
    }

    /// Whether a read of `n` more bytes from here should skip the chunks and be fetched straight
    /// into the destination: nothing is buffered at the position, and it spans several chunks.
    pub fn wants_direct(&self, n: usize) -> bool {
        if self.source.is_some() {
            return self.buffered().is_empty() && !self.at_end() && n >= SOURCE_DIRECT;
        }
        self.buffered().is_empty()
            && !self.at_end()
            && n as u64 >= 2 * self.fetch.range.chunk_size
            && !self.ahead.front().is_some_and(|(off, len, _)| *off <= self.pos && self.pos < off + len)
    }

    /// After a direct read of `n` bytes at the position (by [`Fetcher::read_at`]): move past it.
    /// The chunks in flight are dropped; readahead starts again from the new position.
    pub fn advance_direct(&mut self, n: u64) {
        self.drop_ahead();
        self.cur = None;
        self.pos += n;
        self.sequential = true;
    }

    /// Read `dst.len()` bytes (fewer only at the end); returns how many.
    pub async fn read(&mut self, dst: &mut [u8]) -> Result<usize> {
        let mut done = 0;
        while done < dst.len() && !self.at_end() {
            let want = ((self.fetch.size - self.pos) as usize).min(dst.len() - done);
            if self.wants_direct(want) {
                if let Some(got) = self.read_now(&mut dst[done..done + want]) {
                    done += got?;
                    continue;
                }
                let f = self.fetcher();
                f.read_at(self.pos, &mut dst[done..done + want]).await?;
                self.advance_direct(want as u64);
                done += want;
                continue;
            }
            self.fill().await?;
            let avail = self.buffered();
            let n = avail.len().min(dst.len() - done);
            dst[done..done + n].copy_from_slice(&avail[..n]);
            self.consume(n);
            done += n;
        }
        Ok(done)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.drop_ahead();
    }
}
