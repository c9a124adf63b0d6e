//! One async object-store API over every backend, chosen by URI scheme.
//!
//! Each function takes URIs as strings, parses them, and dispatches to [`crate::s3`] or
//! [`crate::local`]. Local filesystem work runs on tokio's blocking pool. Every future here is
//! cancel-safe by drop: dropping it stops issuing requests and drops those in flight (a multipart
//! upload dropped half-way is aborted by its guard).

use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use crate::config::StoreConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::local::{self, Mode};
use crate::options::RangeEngineConfig;
use crate::s3::S3Store;
use crate::uri::Location;

/// One listed or stat'ed object. For a one-level listing, a common prefix has `is_dir = true`,
/// a URI ending in `/` and size 0.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectInfo {
    pub uri: String,
    pub size: u64,
    pub etag: Option<String>,
    /// Seconds since the Unix epoch.
    pub last_modified: Option<f64>,
    pub is_dir: bool,
}

impl ObjectInfo {
    pub fn dir(uri: String) -> ObjectInfo {
        ObjectInfo { uri, size: 0, etag: None, last_modified: None, is_dir: true }
    }
}

/// One page of a listing.
pub type ListPage = Vec<ObjectInfo>;

/// A backend resolved for one location.
enum Backend {
    S3 { store: Box<S3Store>, bucket: String, key: String },
    Local { path: PathBuf, mode: Mode },
}

impl Backend {
    async fn new(loc: Location, cfg: &StoreConfig) -> Result<Backend> {
        Ok(match loc {
            Location::S3 { bucket, key } => {
                Backend::S3 { store: Box::new(S3Store::new(cfg).await?), bucket, key }
            }
            Location::File { path } => Backend::Local { path, mode: Mode::Buffered },
            Location::Direct { path } => Backend::Local { path, mode: Mode::Direct },
        })
    }
}

/// Run blocking filesystem work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::new(ErrorKind::Io, None, format!("filesystem worker failed: {e}")))?
}

/// Read `loc` (a `range` of it when given), reusing `s3` when the caller already has a store.
pub(crate) async fn get_with(
    loc: Location,
    range: Option<(u64, Option<u64>)>,
    s3: Option<&S3Store>,
    cfg: &StoreConfig,
) -> Result<Bytes> {
    match loc {
        Location::S3 { bucket, key } => match s3 {
            Some(store) => store.get(&bucket, &key, range).await,
            None => S3Store::new(cfg).await?.get(&bucket, &key, range).await,
        },
        Location::File { path } => blocking(move || local::get(&path, Mode::Buffered, range)).await,
        Location::Direct { path } => blocking(move || local::get(&path, Mode::Direct, range)).await,
    }
}

/// Read a whole object. On S3, an object larger than `range.chunk_size` is fetched as concurrent
/// ranged GETs (the range engine) once the first chunk's response has given its size.
pub async fn get(uri: &str, cfg: &StoreConfig, range: &RangeEngineConfig) -> Result<Bytes> {
    match Location::parse_object(uri)? {
        Location::S3 { bucket, key } => {
            crate::range::get_whole(&S3Store::new(cfg).await?, &bucket, &key, range).await
        }
        loc => get_with(loc, None, None, cfg).await,
    }
}

/// Read `length` bytes at `offset` (to the end when `None`). Never short, never padded.
pub async fn get_range(uri: &str, offset: u64, length: Option<u64>, cfg: &StoreConfig) -> Result<Bytes> {
    if length == Some(0) {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            Some(uri),
            "length must be at least 1 (or None for the rest)",
        ));
    }
    get_with(Location::parse_object(uri)?, Some((offset, length)), None, cfg).await
}

/// Read many objects with at most `concurrency` in flight; results in input order. The first
/// failure (in input order) is returned and the remaining requests are dropped.
pub async fn get_many(uris: &[String], concurrency: usize, cfg: &StoreConfig) -> Result<Vec<Bytes>> {
    if concurrency == 0 {
        return Err(Error::invalid_config("max_concurrency must be at least 1"));
    }
    let locs = uris.iter().map(|u| Location::parse_object(u)).collect::<Result<Vec<_>>>()?;
    let s3 = if locs.iter().any(|l| matches!(l, Location::S3 { .. })) {
        Some(S3Store::new(cfg).await?)
    } else {
        None
    };
    let s3 = s3.as_ref();
    futures::stream::iter(locs.into_iter().map(|loc| get_with(loc, None, s3, cfg)))
        .buffered(concurrency)
        .try_collect()
        .await
}

/// Size, ETag and last-modified of one object.
pub async fn stat(uri: &str, cfg: &StoreConfig) -> Result<ObjectInfo> {
    match Backend::new(Location::parse_object(uri)?, cfg).await? {
        Backend::S3 { store, bucket, key } => store.stat(&bucket, &key).await,
        Backend::Local { path, mode } => blocking(move || local::stat(&path, mode)).await,
    }
}

/// True when the object exists; errors other than "not found" are returned.
pub async fn exists(uri: &str, cfg: &StoreConfig) -> Result<bool> {
    match stat(uri, cfg).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn compile_pattern(pattern: Option<&str>) -> Result<Option<globset::GlobMatcher>> {
    pattern
        .map(|p| {
            globset::GlobBuilder::new(p)
                .literal_separator(false)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|e| Error::invalid_config(format!("bad glob pattern {p:?}: {e}")))
        })
        .transpose()
}

/// Stream a listing page by page (every page, no 1,000-key cap). `pattern` is a glob matched
/// against each entry's URI relative to `uri`.
pub async fn list_stream(
    uri: &str,
    recursive: bool,
    pattern: Option<&str>,
    cfg: &StoreConfig,
) -> Result<BoxStream<'static, Result<ListPage>>> {
    let matcher = compile_pattern(pattern)?;
    let prefix_uri = Location::parse(uri)?.to_uri();
    let pages: BoxStream<'static, Result<ListPage>> = match Backend::new(Location::parse(uri)?, cfg).await? {
        Backend::S3 { store, bucket, key } => store.list(&bucket, &key, !recursive).boxed(),
        Backend::Local { path, mode } => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<ListPage>>(2);
            let walker = tokio::task::spawn_blocking(move || {
                let res = local::list(&path, mode, recursive, &mut |page| tx.blocking_send(Ok(page)).is_ok());
                if let Err(e) = res {
                    let _ = tx.blocking_send(Err(e));
                }
            });
            drop(walker); // the walker stops at its next page once the receiver is dropped
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
                .boxed()
        }
    };
    Ok(match matcher {
        None => pages,
        Some(m) => pages
            .map_ok(move |page| {
                page.into_iter()
                    .filter(|o| m.is_match(o.uri.strip_prefix(&prefix_uri).unwrap_or(&o.uri)))
                    .collect()
            })
            .boxed(),
    })
}

/// The whole listing, collected.
pub async fn list(
    uri: &str,
    recursive: bool,
    pattern: Option<&str>,
    cfg: &StoreConfig,
) -> Result<Vec<ObjectInfo>> {
    let mut out = Vec::new();
    let mut pages = list_stream(uri, recursive, pattern, cfg).await?;
    while let Some(page) = pages.next().await {
        out.extend(page?);
    }
    Ok(out)
}

/// Write an object. S3: one request below the multipart threshold, concurrent multipart above it
/// (aborted on any failure). Local: temporary file renamed into place.
pub async fn put(uri: &str, data: Bytes, cfg: &StoreConfig) -> Result<()> {
    put_with(Location::parse_object(uri)?, data, None, cfg).await
}

/// Write `loc`, reusing `s3` when the caller already has a store.
async fn put_with(loc: Location, data: Bytes, s3: Option<&S3Store>, cfg: &StoreConfig) -> Result<()> {
    match loc {
        Location::S3 { bucket, key } => match s3 {
            Some(store) => store.put(&bucket, &key, data).await,
            None => S3Store::new(cfg).await?.put(&bucket, &key, data).await,
        },
        Location::File { path } => blocking(move || local::put(&path, Mode::Buffered, &data)).await,
        Location::Direct { path } => blocking(move || local::put(&path, Mode::Direct, &data)).await,
    }
}

/// Write many objects with at most `concurrency` in flight (each as [`put`] writes it: multipart
/// above the threshold). The first failure is returned naming its URI and the remaining writes are
/// dropped: an object is either written whole or not at all (multipart uploads in flight are
/// aborted), but objects already written stay.
pub async fn put_many(items: Vec<(String, Bytes)>, concurrency: usize, cfg: &StoreConfig) -> Result<()> {
    if concurrency == 0 {
        return Err(Error::invalid_config("max_concurrency must be at least 1"));
    }
    let items = items
        .into_iter()
        .map(|(uri, data)| Location::parse_object(&uri).map(|loc| (loc, data)))
        .collect::<Result<Vec<_>>>()?;
    let s3 = if items.iter().any(|(l, _)| matches!(l, Location::S3 { .. })) {
        Some(S3Store::new(cfg).await?)
    } else {
        None
    };
    let s3 = s3.as_ref();
    futures::stream::iter(items.into_iter().map(|(loc, data)| put_with(loc, data, s3, cfg)))
        .buffer_unordered(concurrency)
        .try_for_each(|()| async { Ok(()) })
        .await
}

/// Delete exactly the object named (never a prefix match). Missing objects are not an error.
pub async fn delete(uri: &str, cfg: &StoreConfig) -> Result<()> {
    match Backend::new(Location::parse_object(uri)?, cfg).await? {
        Backend::S3 { store, bucket, key } => store.delete(&bucket, &key).await,
        Backend::Local { path, mode } => blocking(move || local::delete(&path, mode)).await,
    }
}

/// Delete every object whose key starts with the prefix; returns how many were deleted.
pub async fn delete_prefix(uri: &str, cfg: &StoreConfig) -> Result<usize> {
    let loc = Location::parse(uri)?;
    if let Location::File { path } | Location::Direct { path } = &loc {
        if path.parent().is_none() {
            return Err(Error::invalid_uri(uri, "refusing to delete everything under the filesystem root"));
        }
    }
    let mut pages = list_stream(uri, true, None, cfg).await?;
    let mut deleted = 0usize;
    match Backend::new(loc, cfg).await? {
        Backend::S3 { store, bucket, .. } => {
            // Each listing page (<= 1,000 keys) becomes one DeleteObjects request.
            while let Some(page) = pages.next().await {
                let keys: Vec<String> = page?
                    .into_iter()
                    .filter_map(|o| o.uri.strip_prefix(&format!("s3://{bucket}/")).map(str::to_owned))
                    .collect();
                if !keys.is_empty() {
                    deleted += store.delete_batch(&bucket, keys).await?;
                }
            }
        }
        Backend::Local { mode, path } => {
            while let Some(page) = pages.next().await {
                let paths: Vec<PathBuf> = page?
                    .into_iter()
                    .filter_map(|o| o.uri.split_once("://").map(|(_, p)| PathBuf::from(p)))
                    .collect();
                deleted += blocking(move || {
                    for p in &paths {
                        local::delete(p, mode)?;
                    }
                    Ok(paths.len())
                })
                .await?;
            }
            // Prune directories the deletion emptied (best effort; a directory still holding
            // other files stays).
            let root = path.clone();
            let _ = blocking(move || {
                prune_empty_dirs(&root);
                Ok(())
            })
            .await;
        }
    }
    Ok(deleted)
}

fn prune_empty_dirs(dir: &Path) {
    fn walk(d: &Path) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(d); // fails (and is ignored) unless empty
    }
    if dir.is_dir() {
        walk(dir);
    }
}

/// A relative key made safe to join under a local directory: no `..`, no root, no empty parts.
fn safe_relative(rel: &str, uri: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if rel.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_))) || rel.contains("//") {
        return Err(Error::invalid_uri(
            uri,
            format!("refusing to download key {rel:?}: it would escape or collapse the target directory"),
        ));
    }
    Ok(p.to_path_buf())
}

/// Upload a local directory tree under a prefix, keeping relative paths. Returns the file count.
pub async fn upload(local_dir: &str, uri: &str, cfg: &StoreConfig) -> Result<usize> {
    let src_root = PathBuf::from(local_dir);
    if !src_root.is_dir() {
        return Err(Error::new(ErrorKind::NotFound, Some(local_dir), "is not a directory"));
    }
    let dest = Location::parse(uri)?.as_dir_prefix();
    let src = Location::File { path: src_root }.as_dir_prefix();
    let src_prefix = src.to_uri();
    let files = list(&src_prefix, true, None, cfg).await?;
    let n = files.len();
    futures::stream::iter(files.into_iter().map(|f| {
        let rel = f.uri.strip_prefix(&src_prefix).unwrap_or(&f.uri).to_owned();
        let target = dest.join(&rel).to_uri();
        async move {
            let data = get(&f.uri, cfg, &RangeEngineConfig::default()).await?;
            put(&target, data, cfg).await
        }
    }))
    .buffer_unordered(cfg.max_concurrency)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(n)
}

/// Download every object under a prefix into a local directory, keeping relative paths.
pub async fn download(uri: &str, local_dir: &str, cfg: &StoreConfig) -> Result<usize> {
    let src = Location::parse(uri)?.as_dir_prefix();
    let src_prefix = src.to_uri();
    let root = PathBuf::from(local_dir);
    let objects = list(&src_prefix, true, None, cfg).await?;
    let jobs = objects
        .into_iter()
        .map(|o| {
            let rel = safe_relative(o.uri.strip_prefix(&src_prefix).unwrap_or(&o.uri), &o.uri)?;
            Ok((o.uri, root.join(rel)))
        })
        .collect::<Result<Vec<_>>>()?;
    let n = jobs.len();
    futures::stream::iter(jobs.into_iter().map(|(uri, target)| async move {
        let data = get(&uri, cfg, &RangeEngineConfig::default()).await?;
        blocking(move || local::put(&target, Mode::Buffered, &data)).await
    }))
    .buffer_unordered(cfg.max_concurrency)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(n)
}

/// Create a bucket (S3) or directory (file/direct).
pub async fn create_bucket(uri: &str, cfg: &StoreConfig) -> Result<()> {
    match Backend::new(Location::parse_bucket(uri)?, cfg).await? {
        Backend::S3 { store, bucket, .. } => store.create_bucket(&bucket).await,
        Backend::Local { path, mode } => blocking(move || local::create_dir(&path, mode)).await,
    }
}

/// Delete an empty bucket (S3) or empty directory (file/direct).
pub async fn delete_bucket(uri: &str, cfg: &StoreConfig) -> Result<()> {
    match Backend::new(Location::parse_bucket(uri)?, cfg).await? {
        Backend::S3 { store, bucket, .. } => store.delete_bucket(&bucket).await,
        Backend::Local { path, mode } => blocking(move || local::remove_dir(&path, mode)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_relative_refuses_escapes() {
        for bad in ["../x", "a/../../x", "/etc/passwd", "", "a//b", "./a"] {
            assert_eq!(safe_relative(bad, "s3://b/k").unwrap_err().kind(), ErrorKind::InvalidUri, "{bad}");
        }
        assert_eq!(safe_relative("a/b/c.bin", "u").unwrap(), PathBuf::from("a/b/c.bin"));
    }
}
