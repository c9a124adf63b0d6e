//! The `file://` (page cache, positioned reads) and `direct://` (O_DIRECT, aligned buffers)
//! backends. Everything here is blocking; callers run it on tokio's blocking pool.
//!
//! `direct://` never falls back to buffered I/O: a filesystem that refuses O_DIRECT (tmpfs on
//! older kernels, ramfs, some FUSE filesystems) yields [`ErrorKind::DirectIoUnsupported`].

use std::alloc::{self, Layout};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use bytes::Bytes;

use crate::buf::{ZeroedBuf, MAP_THRESHOLD};
use crate::error::{Error, ErrorKind, Result};
use crate::store::ObjectInfo;

/// Alignment of O_DIRECT buffers, offsets and lengths (covers 512-byte and 4 KiB sectors).
pub const DIRECT_ALIGN: usize = 4096;
/// Chunk of one O_DIRECT write.
const DIRECT_WRITE_CHUNK: usize = 8 * 1024 * 1024;
/// Entries per listing page.
pub const PAGE: usize = 1000;

/// Which local backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

fn direct_err(e: &io::Error, uri: &str) -> Error {
    if e.raw_os_error() == Some(libc::EINVAL) {
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

fn open_read(path: &Path, mode: Mode, uri: &str) -> Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    if mode == Mode::Direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    let f = opts.open(path).map_err(|e| {
        if mode == Mode::Direct {
            direct_err(&e, uri)
        } else {
            Error::from_io(&e, uri)
        }
    })?;
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

fn round_up(n: u64) -> u64 {
    n.div_ceil(DIRECT_ALIGN as u64) * DIRECT_ALIGN as u64
}

/// Resolve `(offset, length)` against the file size; a range outside the file is an error.
fn check_range(range: Option<(u64, Option<u64>)>, size: u64, uri: &str) -> Result<(u64, u64)> {
    match range {
        None => Ok((0, size)),
        Some((offset, len)) => {
            let len = len.unwrap_or(size.saturating_sub(offset));
            let end = offset.checked_add(len);
            if offset >= size || end.is_none_or(|e| e > size) {
                return Err(Error::new(
                    ErrorKind::InvalidRange,
                    Some(uri),
                    format!("range {offset}+{len} extends past the end of the file (size {size})"),
                ));
            }
            Ok((offset, len))
        }
    }
}

/// Read a whole file, or a range of it.
pub fn get(path: &Path, mode: Mode, range: Option<(u64, Option<u64>)>) -> Result<Bytes> {
    let uri = mode.uri(path);
    let f = open_read(path, mode, &uri)?;
    let size = f.metadata().map_err(|e| Error::from_io(&e, &uri))?.len();
    let (offset, len) = check_range(range, size, &uri)?;
    let len_usize =
        usize::try_from(len).map_err(|_| Error::new(ErrorKind::Io, Some(&uri), "file too large"))?;
    match mode {
        Mode::Buffered => {
            // Zeroed by the kernel (calloc or a fresh mapping), no memset pass.
            let mut buf = ZeroedBuf::new(len_usize, &uri)?;
            read_full(&f, buf.as_mut_slice(), offset, &uri, mode)?;
            Ok(buf.freeze())
        }
        Mode::Direct => {
            let start = offset - offset % DIRECT_ALIGN as u64;
            let span = round_up(offset + len) - start;
            let span_usize =
                usize::try_from(span).map_err(|_| Error::new(ErrorKind::Io, Some(&uri), "file too large"))?;
            let wanted = usize::try_from(offset + len - start).unwrap_or(span_usize);
            let head = (offset - start) as usize;
            let shrank = |got: usize| {
                Error::new(
                    ErrorKind::Io,
                    Some(&uri),
                    format!("file shrank while reading: got {got} of {wanted} bytes"),
                )
            };
            if span_usize >= MAP_THRESHOLD {
                // Page-aligned, as O_DIRECT needs.
                let mut buf = ZeroedBuf::new(span_usize, &uri)?;
                let got = read_direct(&f, buf.as_mut_slice(), start, wanted, &uri)?;
                if got < wanted {
                    return Err(shrank(got));
                }
                return Ok(buf.freeze().slice(head..head + len_usize));
            }
            let mut buf = AlignedBuf::zeroed(span_usize, &uri)?;
            let got = read_direct(&f, &mut buf.as_mut_full()[..span_usize], start, wanted, &uri)?;
            if got < wanted {
                return Err(shrank(got));
            }
            buf.len = wanted;
            Ok(Bytes::from_owner(buf).slice(head..head + len_usize))
        }
    }
}

fn read_full(f: &File, buf: &mut [u8], offset: u64, uri: &str, mode: Mode) -> Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    Some(uri),
                    format!("file shrank while reading: got {done} of {} bytes", buf.len()),
                ))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(if mode == Mode::Direct { direct_err(&e, uri) } else { Error::from_io(&e, uri) })
            }
        }
    }
    Ok(())
}

/// O_DIRECT reads of aligned chunks until `wanted` bytes or end of file; returns bytes read.
fn read_direct(f: &File, buf: &mut [u8], start: u64, wanted: usize, uri: &str) -> Result<usize> {
    let mut done = 0usize;
    while done < wanted {
        match f.read_at(&mut buf[done..], start + done as u64) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                if n % DIRECT_ALIGN != 0 {
                    break; // short read: end of file
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(direct_err(&e, uri)),
        }
    }
    Ok(done.min(wanted))
}

fn file_info(path: &Path, meta: &fs::Metadata, mode: Mode) -> ObjectInfo {
    ObjectInfo {
        uri: mode.uri(path),
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

pub fn stat(path: &Path, mode: Mode) -> Result<ObjectInfo> {
    let uri = mode.uri(path);
    let meta = fs::metadata(path).map_err(|e| Error::from_io(&e, &uri))?;
    if meta.is_dir() {
        return Err(Error::new(ErrorKind::NotFound, Some(&uri), "is a directory, not a file"));
    }
    Ok(file_info(path, &meta, mode))
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.s3dlio-tmp-{}-{n}", std::process::id()))
}

/// Write a file atomically: a temporary file in the same directory, renamed into place.
pub fn put(path: &Path, mode: Mode, data: &[u8]) -> Result<()> {
    let uri = mode.uri(path);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::from_io(&e, &uri))?;
    }
    let tmp = temp_path(path);
    let result = match mode {
        Mode::Buffered => fs::write(&tmp, data).map_err(|e| Error::from_io(&e, &uri)),
        Mode::Direct => write_direct(&tmp, data, &uri),
    }
    .and_then(|()| fs::rename(&tmp, path).map_err(|e| Error::from_io(&e, &uri)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_direct(tmp: &Path, data: &[u8], uri: &str) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(tmp)
        .map_err(|e| direct_err(&e, uri))?;
    let mut chunk = AlignedBuf::zeroed(DIRECT_WRITE_CHUNK.min(round_up(data.len() as u64) as usize), uri)?;
    let mut offset = 0usize;
    while offset < data.len() {
        let n = (data.len() - offset).min(chunk.cap);
        let padded = round_up(n as u64) as usize;
        let dst = chunk.as_mut_full();
        // COPY: O_DIRECT needs an aligned source; the caller's buffer (Python memory) is not.
        dst[..n].copy_from_slice(&data[offset..offset + n]);
        dst[n..padded].fill(0);
        f.write_all_at(&dst[..padded], offset as u64).map_err(|e| direct_err(&e, uri))?;
        offset += n;
    }
    // The last chunk was padded to the alignment: cut the file back to its real length.
    f.set_len(data.len() as u64).map_err(|e| Error::from_io(&e, uri))?;
    Ok(())
}

/// Delete exactly one file; a missing file is not an error (S3 semantics).
pub fn delete(path: &Path, mode: Mode) -> Result<()> {
    let uri = mode.uri(path);
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            Err(Error::new(ErrorKind::InvalidUri, Some(&uri), "is a directory; use delete_prefix"))
        }
        Ok(_) => fs::remove_file(path).map_err(|e| Error::from_io(&e, &uri)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::from_io(&e, &uri)),
    }
}

pub fn create_dir(path: &Path, mode: Mode) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| Error::from_io(&e, &mode.uri(path)))
}

pub fn remove_dir(path: &Path, mode: Mode) -> Result<()> {
    fs::remove_dir(path).map_err(|e| Error::from_io(&e, &mode.uri(path)))
}

/// Walk everything whose path starts with `prefix` (S3 prefix semantics on path strings), calling
/// `emit` with pages of up to [`PAGE`] entries; `emit` returning false stops the walk.
/// `recursive = false` stops at the next `/` and reports directories as `is_dir` entries.
pub fn list(
    prefix: &Path,
    mode: Mode,
    recursive: bool,
    emit: &mut dyn FnMut(Vec<ObjectInfo>) -> bool,
) -> Result<()> {
    let prefix_str = prefix.to_string_lossy();
    let (dir, name_prefix) = if prefix_str.ends_with('/') {
        (PathBuf::from(prefix_str.as_ref()), String::new())
    } else {
        let parent = prefix.parent().map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        let name = prefix.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        (parent, name)
    };
    let mut page = Vec::with_capacity(PAGE);
    let mut walker = Walker { mode, recursive, page: &mut page, emit, stopped: false };
    walker.walk(&dir, Some(&name_prefix))?;
    if !walker.stopped && !page.is_empty() {
        emit(std::mem::take(&mut page));
    }
    Ok(())
}

struct Walker<'a> {
    mode: Mode,
    recursive: bool,
    page: &'a mut Vec<ObjectInfo>,
    emit: &'a mut dyn FnMut(Vec<ObjectInfo>) -> bool,
    stopped: bool,
}

impl Walker<'_> {
    fn push(&mut self, info: ObjectInfo) {
        self.page.push(info);
        if self.page.len() >= PAGE {
            let full = std::mem::replace(self.page, Vec::with_capacity(PAGE));
            if !(self.emit)(full) {
                self.stopped = true;
            }
        }
    }

    /// `name_prefix` filters the entries of the first directory only.
    fn walk(&mut self, dir: &Path, name_prefix: Option<&str>) -> Result<()> {
        let uri = self.mode.uri(dir);
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            // A prefix that matches nothing lists nothing, as on S3.
            Err(e) if e.kind() == io::ErrorKind::NotFound && name_prefix.is_some() => return Ok(()),
            Err(e) => return Err(Error::from_io(&e, &uri)),
        };
        let mut entries = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::from_io(&e, &uri))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name_prefix.is_some_and(|p| !name.starts_with(p)) || name.contains(".s3dlio-tmp-") {
                continue;
            }
            entries.push((name, entry.path()));
        }
        entries.sort();
        for (_, path) in entries {
            if self.stopped {
                return Ok(());
            }
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            }; // dangling symlink or raced delete
            let is_link_dir =
                meta.is_dir() && fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
            if meta.is_dir() {
                if is_link_dir {
                    continue; // never follow directory symlinks (loops)
                }
                if self.recursive {
                    self.walk(&path, None)?;
                } else {
                    self.push(ObjectInfo::dir(format!("{}/", self.mode.uri(&path))));
                }
            } else if meta.is_file() {
                self.push(file_info(&path, &meta, self.mode));
            }
        }
        Ok(())
    }
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

    #[test]
    fn roundtrip_and_ranges() {
        let d = tmpdir("rt");
        let p = d.join("a/b.bin");
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        put(&p, Mode::Buffered, &data).unwrap();
        assert_eq!(&get(&p, Mode::Buffered, None).unwrap()[..], &data[..]);
        assert_eq!(&get(&p, Mode::Buffered, Some((9_999, Some(1)))).unwrap()[..], &data[9_999..]);
        assert_eq!(&get(&p, Mode::Buffered, Some((100, None))).unwrap()[..], &data[100..]);
        let err = get(&p, Mode::Buffered, Some((9_999, Some(2)))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidRange);
        assert_eq!(
            get(&p, Mode::Buffered, Some((10_000, None))).unwrap_err().kind(),
            ErrorKind::InvalidRange
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn listing_prefix_semantics() {
        let d = tmpdir("ls");
        for f in ["x/obj_1", "x/obj_10", "x/obj_2/inner", "x/other"] {
            put(&d.join(f), Mode::Buffered, b"z").unwrap();
        }
        let collect = |prefix: PathBuf, recursive| {
            let mut all = Vec::new();
            list(&prefix, Mode::Buffered, recursive, &mut |p| {
                all.extend(p);
                true
            })
            .unwrap();
            all.into_iter()
                .map(|i| (i.uri.rsplit("/x/").next().unwrap().to_owned(), i.is_dir))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            collect(d.join("x/obj_"), true),
            vec![("obj_1".into(), false), ("obj_10".into(), false), ("obj_2/inner".into(), false)]
        );
        assert_eq!(
            collect(d.join("x/obj_"), false),
            vec![("obj_1".into(), false), ("obj_10".into(), false), ("obj_2/".into(), true)]
        );
        assert!(collect(d.join("missing/"), true).is_empty());
        fs::remove_dir_all(&d).unwrap();
    }
}
