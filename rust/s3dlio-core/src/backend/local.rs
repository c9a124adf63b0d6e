//! The `file://` (page cache, positioned reads) and `direct://` (O_DIRECT, aligned buffers)
//! backends. Keys are absolute paths. The filesystem work runs on tokio's blocking pool, in
//! chunks: between chunks it checks whether its caller is gone (Ctrl-C, a dropped future), and
//! then stops, removes its temp file and never renames into place. Until it has stopped it counts
//! in `live_tasks()`.
//!
//! `direct://` never falls back to buffered I/O: a filesystem that refuses O_DIRECT (tmpfs on
//! older kernels, ramfs, some FUSE filesystems) yields [`ErrorKind::DirectIoUnsupported`].
//!
//! Listings follow symbolic links to files and directories; a directory link that loops back to
//! one of its ancestors is an error, and so is a dangling link. File names that are not UTF-8 are
//! refused (keys and URIs are UTF-8), never mangled.

use std::alloc::{self, Layout};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use tempfile::NamedTempFile;

use super::{Backend, MultipartUpload, SyncSink, SyncSource};
use crate::buf::ObjBuf;
use crate::error::{Error, ErrorKind, Result};
use crate::runtime::context;
use crate::types::{GetOptions, GetResult, ListPage, ObjectInfo, PartInfo, PutOptions};

/// Alignment of O_DIRECT buffers, offsets and lengths (covers 512-byte and 4 KiB sectors).
pub const DIRECT_ALIGN: usize = 4096;
/// Bytes one read or write call moves before the caller is checked again (a multiple of
/// [`DIRECT_ALIGN`]).
const CHUNK: usize = 8 * 1024 * 1024;
/// Entries per listing page.
pub const PAGE: usize = 1000;

/// Which local backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Buffered,
    Direct,
}

impl Mode {
    fn scheme(self) -> &'static str {
        match self {
            Mode::Buffered => "file",
            Mode::Direct => "direct",
        }
    }

    pub fn uri(self, path: &Path) -> String {
        format!("{}://{}", self.scheme(), path.display())
    }

    fn io_err(self, e: &io::Error, uri: &str) -> Error {
        if self == Mode::Direct && e.raw_os_error() == Some(libc::EINVAL) {
            Error::new(
                ErrorKind::DirectIoUnsupported,
                Some(uri),
                format!(
                    "the filesystem refused O_DIRECT ({e}); tmpfs/ramfs and some FUSE filesystems do not \
                     support it. Use file:// for buffered I/O"
                ),
            )
        } else {
            Error::from_io(e, uri)
        }
    }
}

/// The local filesystem through one mode.
#[derive(Debug, Clone, Copy)]
pub struct LocalBackend {
    mode: Mode,
}

impl LocalBackend {
    pub fn new(mode: Mode) -> LocalBackend {
        LocalBackend { mode }
    }
}

/// Set when the waiting caller is gone; the blocking job checks it between chunks.
#[derive(Clone, Default)]
struct Stop(Arc<AtomicBool>);

impl Stop {
    fn check(&self, uri: &str) -> Result<()> {
        if self.0.load(Ordering::Relaxed) {
            Err(Error::cancelled().with_uri(uri))
        } else {
            Ok(())
        }
    }
}

struct StopOnDrop(Stop);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0 .0.store(true, Ordering::Relaxed);
    }
}

/// Run blocking filesystem work on tokio's blocking pool. Dropping the returned future tells the
/// work to stop at its next chunk; the work counts in the context's cleanup tracker (and in
/// `live_tasks()`) until it has returned.
async fn blocking<T: Send + 'static>(f: impl FnOnce(&Stop) -> Result<T> + Send + 'static) -> Result<T> {
    let tracked = context()?.cleanup_token();
    let stop = Stop::default();
    let _on_drop = StopOnDrop(stop.clone());
    let job = tokio::task::spawn_blocking(move || {
        let _tracked = tracked;
        f(&stop)
    });
    job.await.map_err(|e| Error::new(ErrorKind::Io, None, format!("filesystem worker failed: {e}")))?
}

fn path_of(key: &str) -> &Path {
    Path::new(key)
}

fn open_read(path: &Path, mode: Mode, uri: &str) -> Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    if mode == Mode::Direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    let f = opts.open(path).map_err(|e| mode.io_err(&e, uri))?;
    let meta = f.metadata().map_err(|e| Error::from_io(&e, uri))?;
    if meta.is_dir() {
        return Err(Error::new(ErrorKind::NotFound, Some(uri), "is a directory, not a file"));
    }
    Ok(f)
}

/// A heap buffer aligned for O_DIRECT. Owned by a `Bytes` once filled (no copy).
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: AlignedBuf uniquely owns its allocation; shared access is read-only via `as_ref`.
unsafe impl Send for AlignedBuf {}
// SAFETY: see above; `&AlignedBuf` only hands out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn zeroed(cap: usize, uri: &str) -> Result<AlignedBuf> {
        let cap = cap.max(DIRECT_ALIGN);
        let layout = Layout::from_size_align(cap, DIRECT_ALIGN)
            .map_err(|_| Error::new(ErrorKind::Io, Some(uri), format!("cannot allocate {cap} bytes")))?;
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(raw).ok_or_else(|| {
            Error::new(ErrorKind::Io, Some(uri), format!("out of memory allocating {cap} bytes"))
        })?;
        Ok(AlignedBuf { ptr, cap, len: 0 })
    }

    fn as_mut_full(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for cap bytes (allocated zeroed) and uniquely borrowed via &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with exactly this layout.
        unsafe {
            alloc::dealloc(self.ptr.as_ptr(), Layout::from_size_align_unchecked(self.cap, DIRECT_ALIGN))
        }
    }
}

fn round_up(n: u64) -> Option<u64> {
    n.checked_next_multiple_of(DIRECT_ALIGN as u64)
}

fn too_large(uri: &str) -> Error {
    Error::new(ErrorKind::Io, Some(uri), "the file is too large for this machine's address space")
}

/// A file's version, as an ETag stands for an object's: its inode (a replacement by rename is a
/// new inode), size and modification time (a write in place changes it).
fn version_of(meta: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("{:x}-{:x}-{:x}.{:x}", meta.ino(), meta.len(), meta.mtime(), meta.mtime_nsec())
}

/// `(offset, length)` to read from a file of `size` bytes, per `opts` (checked arithmetic).
fn span(opts: &GetOptions, size: u64, uri: &str) -> Result<(u64, u64)> {
    if let Some(want) = opts.expected_size {
        if want != size {
            return Err(Error::new(
                ErrorKind::Changed,
                Some(uri),
                format!("the file is {size} bytes now, but {want} were expected (from a listing or the caller): it changed, or the size given is wrong"),
            ));
        }
    }
    match opts.range {
        None => Ok((0, size)),
        Some(r) if opts.allow_short && r.offset < size => {
            let len = r.length.unwrap_or(u64::MAX).min(size - r.offset);
            Ok((r.offset, len))
        }
        Some(r) => r.resolve(size, uri),
    }
}

/// Read `len` bytes at `offset`, in chunks, checking `stop` between them.
fn read_span(f: &File, mode: Mode, offset: u64, len: u64, uri: &str, stop: &Stop) -> Result<Bytes> {
    let len_usize = usize::try_from(len).map_err(|_| too_large(uri))?;
    match mode {
        Mode::Buffered => {
            // pread straight into the buffer (recycled from the pool, or fresh: see buf.rs).
            let mut buf = ObjBuf::new(len_usize, uri)?;
            read_full(f, buf.as_mut_slice(), offset, uri, stop)?;
            Ok(buf.freeze())
        }
        Mode::Direct => {
            let start = offset - offset % DIRECT_ALIGN as u64;
            let end = offset.checked_add(len).ok_or_else(|| too_large(uri))?;
            let span = round_up(end).ok_or_else(|| too_large(uri))? - start;
            let span_usize = usize::try_from(span).map_err(|_| too_large(uri))?;
            let wanted = usize::try_from(end - start).map_err(|_| too_large(uri))?;
            let head = usize::try_from(offset - start).map_err(|_| too_large(uri))?;
            let shrank = |got: usize| {
                Error::new(
                    ErrorKind::Io,
                    Some(uri),
                    format!("file shrank while reading: got {got} of {wanted} bytes"),
                )
            };
            // Page-aligned, as O_DIRECT needs (recycled from the pool, or a fresh mapping). Only
            // the bytes read are exposed.
            let mut buf = ObjBuf::aligned(span_usize, uri)?;
            let got = read_direct(f, buf.as_mut_slice(), start, wanted, uri, stop)?;
            if got < wanted {
                return Err(shrank(got));
            }
            Ok(buf.freeze().slice(head..head + len_usize))
        }
    }
}

fn read_full(f: &File, buf: &mut [u8], offset: u64, uri: &str, stop: &Stop) -> Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        stop.check(uri)?;
        let end = buf.len().min(done + CHUNK);
        match f.read_at(&mut buf[done..end], offset + done as u64) {
            Ok(0) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    Some(uri),
                    format!("file shrank while reading: got {done} of {} bytes", buf.len()),
                ))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::from_io(&e, uri)),
        }
    }
    Ok(())
}

/// O_DIRECT reads of aligned chunks until `wanted` bytes or end of file; returns bytes read.
fn read_direct(f: &File, buf: &mut [u8], start: u64, wanted: usize, uri: &str, stop: &Stop) -> Result<usize> {
    let mut done = 0usize;
    while done < wanted {
        stop.check(uri)?;
        let end = buf.len().min(done + CHUNK);
        match f.read_at(&mut buf[done..end], start + done as u64) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                if n % DIRECT_ALIGN != 0 {
                    break; // short read: end of file
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Mode::Direct.io_err(&e, uri)),
        }
    }
    Ok(done.min(wanted))
}

fn file_info(uri: String, meta: &fs::Metadata) -> ObjectInfo {
    ObjectInfo {
        uri,
        size: meta.len(),
        etag: None,
        last_modified: meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64()),
        is_dir: false,
    }
}

/// A temp file beside `path` (random name, created exclusively: it can never be a user's file),
/// removed on drop unless persisted.
fn temp_beside(path: &Path, mode: Mode, uri: &str) -> Result<NamedTempFile> {
    let parent = path.parent().ok_or_else(|| Error::invalid_uri(uri, "names no file"))?;
    fs::create_dir_all(parent).map_err(|e| Error::from_io(&e, uri))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .make_in(parent, |p| {
            let mut o = OpenOptions::new();
            o.write(true).create_new(true);
            if mode == Mode::Direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(p).inspect_err(|e| {
                // A filesystem refusing O_DIRECT creates the file, then fails the open: the
                // name is ours (create_new), remove it. Never a name that already existed.
                if e.kind() != io::ErrorKind::AlreadyExists {
                    let _ = fs::remove_file(p);
                }
            })
        })
        .map_err(|e| mode.io_err(&e, uri))
}

/// Make the temp file the object: flush it (with `fsync`, file and directory) and rename it into
/// place atomically.
fn publish(tmp: NamedTempFile, path: &Path, fsync: bool, uri: &str) -> Result<()> {
    if fsync {
        tmp.as_file().sync_all().map_err(|e| Error::from_io(&e, uri))?;
    }
    tmp.persist(path).map_err(|e| Error::from_io(&e.error, uri))?;
    if fsync {
        if let Some(parent) = path.parent() {
            File::open(parent).and_then(|d| d.sync_all()).map_err(|e| Error::from_io(&e, uri))?;
        }
    }
    Ok(())
}

/// Write `data` at `offset` of `f`, in chunks, checking `stop` between them. O_DIRECT writes go
/// through an aligned bounce buffer, the last chunk padded (the caller cuts the file back).
fn write_at(f: &File, mode: Mode, data: &[u8], offset: u64, uri: &str, stop: &Stop) -> Result<()> {
    match mode {
        Mode::Buffered => {
            for (i, chunk) in data.chunks(CHUNK).enumerate() {
                stop.check(uri)?;
                f.write_all_at(chunk, offset + (i * CHUNK) as u64).map_err(|e| Error::from_io(&e, uri))?;
            }
        }
        Mode::Direct => {
            if !offset.is_multiple_of(DIRECT_ALIGN as u64) {
                return Err(Error::new(ErrorKind::Io, Some(uri), "O_DIRECT write at an unaligned offset"));
            }
            let cap = CHUNK.min(round_up(data.len() as u64).ok_or_else(|| too_large(uri))? as usize);
            let mut bounce = AlignedBuf::zeroed(cap, uri)?;
            let step = bounce.cap;
            for (i, chunk) in data.chunks(step).enumerate() {
                stop.check(uri)?;
                let n = chunk.len();
                let padded = n.next_multiple_of(DIRECT_ALIGN);
                let dst = bounce.as_mut_full();
                // COPY: O_DIRECT needs an aligned source; the caller's buffer (Python memory) is not.
                dst[..n].copy_from_slice(chunk);
                dst[n..padded].fill(0);
                f.write_all_at(&dst[..padded], offset + (i * step) as u64)
                    .map_err(|e| Mode::Direct.io_err(&e, uri))?;
            }
        }
    }
    Ok(())
}

fn put_file(path: &Path, mode: Mode, data: &[u8], fsync: bool, uri: &str, stop: &Stop) -> Result<()> {
    let tmp = temp_beside(path, mode, uri)?;
    write_at(tmp.as_file(), mode, data, 0, uri, stop)?;
    if mode == Mode::Direct {
        // The last chunk was padded to the alignment: cut the file back to its real length.
        tmp.as_file().set_len(data.len() as u64).map_err(|e| Error::from_io(&e, uri))?;
    }
    stop.check(uri)?;
    publish(tmp, path, fsync, uri) // an error or a stop before this drops (removes) the temp file
}

fn delete_file(path: &Path, uri: &str) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            Err(Error::new(ErrorKind::InvalidUri, Some(uri), "is a directory; use delete_prefix"))
        }
        Ok(_) => match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::from_io(&e, uri)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::from_io(&e, uri)),
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn uri(&self, key: &str) -> String {
        format!("{}://{key}", self.mode.scheme())
    }

    fn ranged_reads(&self) -> bool {
        false
    }

    async fn get(&self, key: &str, opts: &GetOptions) -> Result<GetResult> {
        let (mode, path, uri, opts) = (self.mode, PathBuf::from(key), self.uri(key), opts.clone());
        blocking(move |stop| {
            let f = open_read(&path, mode, &uri)?;
            let meta = f.metadata().map_err(|e| Error::from_io(&e, &uri))?;
            let size = meta.len();
            let version = version_of(&meta);
            if let Some(want) = &opts.if_match {
                if *want != version {
                    return Err(Error::new(
                        ErrorKind::Changed,
                        Some(&uri),
                        "the file was replaced or modified since it was first read",
                    ));
                }
            }
            let (offset, len) = span(&opts, size, &uri)?;
            let data = read_span(&f, mode, offset, len, &uri, stop)?;
            // Checked again after the read: a write in place during it changes the mtime.
            if let Ok(after) = f.metadata() {
                if version_of(&after) != version {
                    return Err(Error::new(
                        ErrorKind::Changed,
                        Some(&uri),
                        "the file changed while it was read",
                    ));
                }
            }
            Ok(GetResult { data, size: Some(size), etag: Some(version) })
        })
        .await
    }

    async fn get_into(
        &self,
        key: &str,
        offset: u64,
        dst: &mut [u8],
        opts: &GetOptions,
    ) -> Result<Option<String>> {
        let range = crate::types::ByteRange::new(offset, Some(dst.len() as u64));
        let got =
            self.get(key, &GetOptions { range: Some(range), allow_short: false, ..opts.clone() }).await?;
        // COPY: the blocking pool cannot borrow the caller's buffer (the read may outlive a dropped
        // caller); local reads normally go through `get`, which reads in place.
        dst.copy_from_slice(&got.data);
        Ok(got.etag)
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo> {
        let (path, uri) = (PathBuf::from(key), self.uri(key));
        blocking(move |_| {
            let meta = fs::metadata(&path).map_err(|e| Error::from_io(&e, &uri))?;
            if meta.is_dir() {
                return Err(Error::new(ErrorKind::NotFound, Some(&uri), "is a directory, not a file"));
            }
            Ok(file_info(uri, &meta))
        })
        .await
    }

    async fn put(&self, key: &str, data: Bytes, opts: &PutOptions) -> Result<()> {
        let (mode, path, uri, fsync) = (self.mode, PathBuf::from(key), self.uri(key), opts.fsync);
        blocking(move |stop| put_file(&path, mode, &data, fsync, &uri, stop)).await
    }

    fn sync_sink(&self, key: &str, opts: &PutOptions) -> Option<Result<Box<dyn SyncSink>>> {
        if self.mode == Mode::Direct {
            return None; // O_DIRECT needs aligned writes: the part path pads and cuts back
        }
        let (path, uri) = (PathBuf::from(key), self.uri(key));
        Some(temp_beside(&path, self.mode, &uri).map(|tmp| {
            Box::new(LocalSink { tmp: Some(tmp), path, uri, fsync: opts.fsync }) as Box<dyn SyncSink>
        }))
    }

    fn sync_source(&self, key: &str) -> Option<Result<Box<dyn SyncSource>>> {
        if self.mode == Mode::Direct {
            return None; // O_DIRECT needs aligned reads: `get` handles them
        }
        let (path, uri) = (PathBuf::from(key), self.uri(key));
        Some((|| {
            let f = open_read(&path, self.mode, &uri)?;
            let meta = f.metadata().map_err(|e| Error::from_io(&e, &uri))?;
            Ok(Box::new(LocalSource { size: meta.len(), version: version_of(&meta), f, uri })
                as Box<dyn SyncSource>)
        })())
    }

    async fn start_multipart(&self, key: &str, opts: &PutOptions) -> Result<Box<dyn MultipartUpload>> {
        let (mode, path, uri) = (self.mode, PathBuf::from(key), self.uri(key));
        let fsync = opts.fsync;
        let tmp = {
            let (path, uri) = (path.clone(), uri.clone());
            blocking(move |_| temp_beside(&path, mode, &uri)).await?
        };
        Ok(Box::new(LocalMultipart {
            tmp: Arc::new(std::sync::Mutex::new(Some(tmp))),
            path,
            uri,
            mode,
            fsync,
        }))
    }

    fn list(&self, prefix: &str, delimiter: bool) -> BoxStream<'static, Result<ListPage>> {
        let (mode, prefix) = (self.mode, prefix.to_owned());
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<ListPage>>(2);
        let tracked = context().map(|c| c.cleanup_token());
        let walker = tokio::task::spawn_blocking(move || {
            let _tracked = tracked;
            let res = walk(&prefix, mode, !delimiter, &mut |page| tx.blocking_send(Ok(page)).is_ok());
            if let Err(e) = res {
                let _ = tx.blocking_send(Err(e));
            }
        });
        drop(walker); // the walker stops at its next page once the receiver is dropped
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed()
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let (path, uri) = (PathBuf::from(key), self.uri(key));
        blocking(move |_| delete_file(&path, &uri).map(drop)).await
    }

    async fn delete_many(&self, keys: Vec<String>) -> Result<usize> {
        let mode = self.mode;
        blocking(move |stop| {
            let mut n = 0;
            for k in &keys {
                let uri = mode.uri(path_of(k));
                stop.check(&uri)?;
                n += usize::from(delete_file(path_of(k), &uri)?);
            }
            Ok(n)
        })
        .await
    }

    fn delete_batch_limit(&self) -> usize {
        256
    }

    async fn prune(&self, prefix: &str) -> Result<()> {
        let dir = PathBuf::from(prefix);
        blocking(move |_| {
            prune_empty_dirs(&dir);
            Ok(())
        })
        .await
    }

    async fn create_container(&self, key: &str) -> Result<()> {
        let (path, uri) = (PathBuf::from(key), self.uri(key));
        blocking(move |_| fs::create_dir_all(&path).map_err(|e| Error::from_io(&e, &uri))).await
    }

    async fn delete_container(&self, key: &str) -> Result<()> {
        let (path, uri) = (PathBuf::from(key), self.uri(key));
        blocking(move |_| fs::remove_dir(&path).map_err(|e| Error::from_io(&e, &uri))).await
    }
}

/// A streaming write in place: a temp file beside the target, appended to on the caller's
/// thread, renamed into place on `complete`; removed when dropped before.
struct LocalSink {
    tmp: Option<NamedTempFile>,
    path: PathBuf,
    uri: String,
    fsync: bool,
}

impl SyncSink for LocalSink {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        use std::io::Write;
        let tmp = self
            .tmp
            .as_mut()
            .ok_or_else(|| Error::new(ErrorKind::Io, Some(&self.uri), "already finished"))?;
        tmp.as_file_mut().write_all(data).map_err(|e| Error::from_io(&e, &self.uri))
    }

    fn complete(mut self: Box<Self>) -> Result<()> {
        let tmp =
            self.tmp.take().ok_or_else(|| Error::new(ErrorKind::Io, Some(&self.uri), "already finished"))?;
        publish(tmp, &self.path, self.fsync, &self.uri)
    }
}

/// One open file read in place with `pread`. A rename over the path does not affect it (it keeps
/// reading the version it opened); a write in place is caught by the modification time.
struct LocalSource {
    f: File,
    size: u64,
    version: String,
    uri: String,
}

impl SyncSource for LocalSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn version(&self) -> String {
        self.version.clone()
    }

    fn read_at(&self, offset: u64, dst: &mut [u8]) -> Result<usize> {
        let want = usize::try_from(self.size.saturating_sub(offset)).unwrap_or(usize::MAX).min(dst.len());
        let mut done = 0;
        while done < want {
            match self.f.read_at(&mut dst[done..want], offset + done as u64) {
                Ok(0) => {
                    let msg =
                        format!("the file shrank while it was read: ends at byte {}", offset + done as u64);
                    return Err(Error::new(ErrorKind::Changed, Some(&self.uri), msg));
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::from_io(&e, &self.uri)),
            }
        }
        let now = self.f.metadata().map_err(|e| Error::from_io(&e, &self.uri))?;
        if version_of(&now) != self.version {
            return Err(Error::new(
                ErrorKind::Changed,
                Some(&self.uri),
                "the file was modified while it was read",
            ));
        }
        Ok(done)
    }
}

/// A local upload in parts: one temp file beside the target, parts written at their offsets,
/// renamed into place on `complete`, removed on `abort` or drop.
struct LocalMultipart {
    tmp: Arc<std::sync::Mutex<Option<NamedTempFile>>>,
    path: PathBuf,
    uri: String,
    mode: Mode,
    fsync: bool,
}

impl LocalMultipart {
    fn file(&self) -> Result<File> {
        let guard = self.tmp.lock().unwrap_or_else(|p| p.into_inner());
        let tmp = guard
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Io, Some(&self.uri), "the upload is already finished"))?;
        tmp.as_file().try_clone().map_err(|e| Error::from_io(&e, &self.uri))
    }
}

#[async_trait]
impl MultipartUpload for LocalMultipart {
    async fn put_part(&self, number: u32, offset: u64, data: Bytes) -> Result<PartInfo> {
        let (f, mode, uri) = (self.file()?, self.mode, self.uri.clone());
        blocking(move |stop| write_at(&f, mode, &data, offset, &uri, stop)).await?;
        Ok(PartInfo { number, etag: None, crc32c: None })
    }

    async fn complete(self: Box<Self>, _parts: Vec<PartInfo>, size: u64) -> Result<()> {
        let tmp = self.tmp.lock().unwrap_or_else(|p| p.into_inner()).take();
        let tmp = tmp.ok_or_else(|| Error::new(ErrorKind::Io, Some(&self.uri), "already finished"))?;
        let (path, uri, fsync) = (self.path.clone(), self.uri.clone(), self.fsync);
        blocking(move |_| {
            // Parts may leave the file longer (O_DIRECT padding) or shorter (an empty last part).
            tmp.as_file().set_len(size).map_err(|e| Error::from_io(&e, &uri))?;
            publish(tmp, &path, fsync, &uri)
        })
        .await
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        let tmp = self.tmp.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tmp) = tmp {
            let uri = self.uri.clone();
            blocking(move |_| tmp.close().map_err(|e| Error::from_io(&e, &uri))).await?;
        }
        Ok(())
    }
}

fn prune_empty_dirs(dir: &Path) {
    fn walk(d: &Path) {
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path());
                }
            }
        }
        let _ = fs::remove_dir(d); // fails (and is ignored) unless empty
    }
    if fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        walk(dir);
    }
}

/// The UTF-8 text of a path, or an error naming it: keys and URIs are UTF-8, and a mangled name
/// would name another file.
fn utf8(path: &Path, mode: Mode) -> Result<&str> {
    path.to_str().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidUri,
            Some(&mode.uri(path)),
            "the file name is not valid UTF-8; s3dlio keys are UTF-8 (rename the file)",
        )
    })
}

fn walk_err(e: walkdir::Error, mode: Mode) -> Error {
    let path = e.path().map_or_else(|| "(unknown)".to_owned(), |p| mode.uri(p));
    if let Some(ancestor) = e.loop_ancestor() {
        return Error::new(
            ErrorKind::InvalidUri,
            Some(&path),
            format!("symlink loop: this directory link points back to {}", ancestor.display()),
        );
    }
    match e.io_error() {
        Some(io) if io.kind() == io::ErrorKind::NotFound => {
            Error::new(ErrorKind::NotFound, Some(&path), format!("dangling symlink or vanished entry: {io}"))
        }
        Some(io) => Error::from_io(io, &path),
        None => Error::new(ErrorKind::Io, Some(&path), e.to_string()),
    }
}

/// Walk everything whose path starts with `prefix` (S3 prefix semantics on path strings), calling
/// `emit` with pages of up to [`PAGE`] entries in path order; `emit` returning false stops the
/// walk. `recursive = false` stops at the next `/` and reports directories as `is_dir` entries.
pub fn walk(prefix: &str, mode: Mode, recursive: bool, emit: &mut dyn FnMut(ListPage) -> bool) -> Result<()> {
    let (dir, name_prefix) = match prefix.rsplit_once('/') {
        Some(("", name)) => (PathBuf::from("/"), name.to_owned()),
        Some((dir, name)) => (PathBuf::from(dir), name.to_owned()),
        None => return Err(Error::invalid_uri(&mode.uri(path_of(prefix)), "is not an absolute path")),
    };
    match fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        // A prefix that matches nothing lists nothing, as on S3.
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::from_io(&e, &mode.uri(&dir))),
    }
    let mut walker = walkdir::WalkDir::new(&dir).min_depth(1).follow_links(true).sort_by_file_name();
    if !recursive {
        walker = walker.max_depth(1);
    }
    let entries = walker
        .into_iter()
        .filter_entry(|e| e.depth() != 1 || e.file_name().as_bytes().starts_with(name_prefix.as_bytes()));
    let mut page = Vec::with_capacity(PAGE);
    for entry in entries {
        let entry = entry.map_err(|e| walk_err(e, mode))?;
        let path = utf8(entry.path(), mode)?;
        let info = if entry.file_type().is_dir() {
            if recursive {
                continue;
            }
            ObjectInfo::dir(format!("{}/", mode.uri(path_of(path))))
        } else if entry.file_type().is_file() {
            let meta = entry.metadata().map_err(|e| walk_err(e, mode))?;
            file_info(mode.uri(path_of(path)), &meta)
        } else {
            continue; // sockets, FIFOs, devices: not objects
        };
        page.push(info);
        if page.len() >= PAGE && !emit(std::mem::replace(&mut page, Vec::with_capacity(PAGE))) {
            return Ok(());
        }
    }
    if !page.is_empty() {
        emit(page);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("s3dlio-local-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn collect(prefix: &Path, recursive: bool) -> Vec<(String, bool)> {
        let mut all = Vec::new();
        walk(prefix.to_str().unwrap(), Mode::Buffered, recursive, &mut |p| {
            all.extend(p);
            true
        })
        .unwrap();
        all.into_iter().map(|i| (i.uri.rsplit("/x/").next().unwrap().to_owned(), i.is_dir)).collect()
    }

    #[test]
    fn roundtrip_ranges_and_listing() {
        let d = tmpdir("ls");
        let stop = Stop::default();
        for f in ["x/obj_1", "x/obj_10", "x/obj_2/inner", "x/other", "x/a.s3dlio-tmp-1"] {
            put_file(&d.join(f), Mode::Buffered, b"z", false, "u", &stop).unwrap();
        }
        assert_eq!(
            collect(&d.join("x/obj_"), true),
            vec![("obj_1".into(), false), ("obj_10".into(), false), ("obj_2/inner".into(), false)]
        );
        assert_eq!(
            collect(&d.join("x/obj_"), false),
            vec![("obj_1".into(), false), ("obj_10".into(), false), ("obj_2/".into(), true)]
        );
        assert!(collect(&d.join("x/a."), true).iter().any(|(n, _)| n == "a.s3dlio-tmp-1"));
        assert!(collect(&d.join("missing/"), true).is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_stopped_write_leaves_nothing() {
        let d = tmpdir("stop");
        let stop = Stop::default();
        stop.0.store(true, Ordering::Relaxed);
        let err = put_file(&d.join("f"), Mode::Buffered, &[1u8; 100], false, "u", &stop).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled);
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0);
        fs::remove_dir_all(&d).unwrap();
    }
}
