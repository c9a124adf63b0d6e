//! Operations over URIs, written once against [`crate::backend::Backend`]: every scheme gets the
//! same semantics for reads, writes, listings, prefix deletes and tree transfers.
//!
//! `operation_timeout` is applied here, around one whole operation: one object read (every range
//! and retry of it), one write, one stat, one delete batch, one listing page.

pub mod range;
pub mod transfer;
pub mod write;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use crate::backend::Backend;
use crate::config::StoreConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::limiter::{Limiter, LimiterConfig};
use crate::options::RangeEngineConfig;
use crate::registry;
use crate::scope::Scope;
use crate::types::{ByteRange, GetOptions, ListPage, ObjectInfo, PutOptions};
use crate::uri::Location;

pub use transfer::{copy, copy_tree, download, upload};

/// Bound `fut` by `limit`: past it, a `Timeout` error naming `uri`.
pub(crate) async fn within<T>(
    limit: Option<Duration>,
    what: &str,
    uri: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match limit {
        None => fut.await,
        Some(d) => tokio::time::timeout(d, fut)
            .await
            .map_err(|_| Error::new(ErrorKind::Timeout, Some(uri), format!("{what} ({d:?}) expired")))?,
    }
}

/// One operation under `operation_timeout`.
pub(crate) async fn operation<T>(
    cfg: &StoreConfig,
    uri: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    within(cfg.operation_timeout, "operation_timeout", uri, fut).await
}

pub(crate) fn put_options(cfg: &StoreConfig) -> PutOptions {
    PutOptions { fsync: cfg.fsync }
}

/// The backend and key of an object URI.
pub(crate) async fn object(uri: &str, cfg: &StoreConfig) -> Result<(Arc<dyn Backend>, String)> {
    registry::resolve(&Location::parse_object(uri)?, cfg).await
}

/// The backend's key of a URI it listed.
pub(crate) fn key_of<'a>(b: &dyn Backend, uri: &'a str) -> Result<&'a str> {
    let root = b.uri("");
    uri.strip_prefix(root.as_str())
        .ok_or_else(|| Error::new(ErrorKind::Io, Some(uri), format!("listed outside its store {root}")))
}

fn check_concurrency(n: usize) -> Result<usize> {
    if n == 0 {
        return Err(Error::invalid_config("max_concurrency must be at least 1"));
    }
    Ok(n)
}

/// Read a whole object. Backends with ranged reads (S3) fetch an object larger than
/// `range.chunk_size` as concurrent ranged GETs pinned to one version (the range engine).
pub async fn get(uri: &str, cfg: &StoreConfig, range: &RangeEngineConfig) -> Result<Bytes> {
    let (b, key) = object(uri, cfg).await?;
    operation(cfg, uri, range::read(b.as_ref(), &key, None, range)).await
}

/// Read `length` bytes at `offset` (to the end when `None`). Never short, never padded; an
/// impossible range is an `InvalidRange` error.
pub async fn get_range(uri: &str, offset: u64, length: Option<u64>, cfg: &StoreConfig) -> Result<Bytes> {
    if length == Some(0) {
        return Err(Error::invalid_range(uri, "length must be at least 1 (or None for the rest)"));
    }
    let r = ByteRange::new(offset, length);
    r.last_byte(uri)?; // offset + length must not pass 2^64
    let (b, key) = object(uri, cfg).await?;
    // Up to this length, a range is read straight into a buffer of its size (mapped lazily: pages
    // the server does not fill are never touched), so an attempt cut mid-body resumes from the byte
    // it reached (see `Backend::get_into`) instead of starting again. Longer ones (more than any
    // object is likely to hold) take one plain ranged GET.
    const RESUMABLE: u64 = 4 << 30;
    if let (true, Some(len)) = (b.ranged_reads(), length.filter(|l| *l <= RESUMABLE)) {
        let n = usize::try_from(len)
            .map_err(|_| Error::invalid_range(uri, "the range does not fit in memory"))?;
        return operation(cfg, uri, async {
            let mut buf = crate::buf::ObjBuf::new(n, uri)?;
            b.get_into(&key, offset, buf.as_mut_slice(), &GetOptions::default()).await?;
            Ok(buf.freeze())
        })
        .await;
    }
    let opts = GetOptions { range: Some(r), ..Default::default() };
    operation(cfg, uri, async { Ok(b.get(&key, &opts).await?.data) }).await
}

/// Read one object as the loader and `get_many` do. With a size (from a listing or manifest) the
/// size must still hold, and a large object goes through the range engine; without one it is
/// one plain GET.
pub async fn get_sized(
    uri: &str,
    size: Option<u64>,
    cfg: &StoreConfig,
    range: &RangeEngineConfig,
) -> Result<Bytes> {
    let (b, key) = object(uri, cfg).await?;
    match size {
        Some(_) => operation(cfg, uri, range::read(b.as_ref(), &key, size, range)).await,
        None => operation(cfg, uri, async { Ok(b.get(&key, &GetOptions::default()).await?.data) }).await,
    }
}

/// Read many objects with at most `concurrency` in flight; results in input order. The first
/// failure (in input order) is returned and the remaining requests are dropped.
pub async fn get_many(uris: &[String], concurrency: usize, cfg: &StoreConfig) -> Result<Vec<Bytes>> {
    let concurrency = check_concurrency(concurrency)?;
    for u in uris {
        Location::parse_object(u)?;
    }
    let range = RangeEngineConfig::default();
    // The call's requests share one adaptive limit (see `crate::limiter`), as a loader's do.
    let limit = LimiterConfig {
        min: 1,
        max: concurrency.saturating_mul(range.max_concurrent_ranges),
        adaptive: true,
        pushback_timeout: crate::options::DEFAULT_PUSHBACK_TIMEOUT,
    };
    let scope = Scope::new(Some(Limiter::new(limit)));
    // Collected first: a stream holding a closure over `&String` trips the Send check of callers
    // that spawn this future (a higher-ranked lifetime limitation of rustc).
    let reads: Vec<_> = uris.iter().map(|u| Scope::run(&scope, get_sized(u, None, cfg, &range))).collect();
    futures::stream::iter(reads).buffered(concurrency).try_collect().await
}

/// Size, ETag and last-modified of one object.
pub async fn stat(uri: &str, cfg: &StoreConfig) -> Result<ObjectInfo> {
    let (b, key) = object(uri, cfg).await?;
    operation(cfg, uri, b.head(&key)).await
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

/// The pages of `prefix` in `b`, each of which must arrive within `operation_timeout`.
fn pages(
    b: &dyn Backend,
    prefix: &str,
    delimiter: bool,
    cfg: &StoreConfig,
) -> BoxStream<'static, Result<ListPage>> {
    let inner = b.list(prefix, delimiter);
    // A listing is a pool of one request: a page the store throttles (a LIST storm from many
    // ranks) waits on the pool's paced probes, which cost it no attempt, for up to the pushback
    // timeout (see `crate::limiter`), instead of failing after `max_attempts` quick retries.
    let scope = Scope::new(Some(Limiter::new(LimiterConfig {
        min: 1,
        max: 1,
        adaptive: true,
        pushback_timeout: crate::options::DEFAULT_PUSHBACK_TIMEOUT,
    })));
    let limit = cfg.operation_timeout;
    let uri = b.uri(prefix);
    futures::stream::unfold(Some(inner), move |state| {
        let (uri, scope) = (uri.clone(), Arc::clone(&scope));
        async move {
            let mut s = state?; // None after a timeout: the stream has ended
            let next = Scope::run(&scope, s.next());
            let Some(limit) = limit else {
                return next.await.map(|p| (p, Some(s)));
            };
            match tokio::time::timeout(limit, next).await {
                Ok(page) => page.map(|p| (p, Some(s))),
                Err(_) => {
                    let msg = format!("operation_timeout ({limit:?}) expired");
                    Some((Err(Error::new(ErrorKind::Timeout, Some(&uri), msg)), None))
                }
            }
        }
    })
    .boxed()
}

/// Stream a listing page by page (every page, no 1,000-key cap), with S3's string-prefix
/// semantics on every backend. `pattern` is a glob matched against each entry's URI relative to
/// `uri`.
pub async fn list_stream(
    uri: &str,
    recursive: bool,
    pattern: Option<&str>,
    cfg: &StoreConfig,
) -> Result<BoxStream<'static, Result<ListPage>>> {
    let matcher = compile_pattern(pattern)?;
    let loc = Location::parse(uri)?;
    let prefix_uri = loc.to_uri();
    let (b, key) = registry::resolve(&loc, cfg).await?;
    let pages = pages(b.as_ref(), &key, !recursive, cfg);
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

/// Write an object: one request below `multipart_threshold`, concurrent parts from it up (aborted
/// on any failure or cancellation). Local files: a temp file renamed into place.
pub async fn put(uri: &str, data: Bytes, cfg: &StoreConfig) -> Result<()> {
    let (b, key) = object(uri, cfg).await?;
    operation(cfg, uri, write::put_bytes(b.as_ref(), &key, data, cfg)).await
}

/// Write many objects with at most `concurrency` in flight (each as [`put`] writes it). The first
/// failure is returned naming its URI and the remaining writes are dropped: an object is either
/// written whole or not at all, but objects already written stay.
pub async fn put_many(items: Vec<(String, Bytes)>, concurrency: usize, cfg: &StoreConfig) -> Result<()> {
    let concurrency = check_concurrency(concurrency)?;
    for (u, _) in &items {
        Location::parse_object(u)?;
    }
    futures::stream::iter(items.into_iter().map(|(uri, data)| async move { put(&uri, data, cfg).await }))
        .buffer_unordered(concurrency)
        .try_for_each(|()| async { Ok(()) })
        .await
}

/// Delete exactly the object named (never a prefix match). Missing objects are not an error.
pub async fn delete(uri: &str, cfg: &StoreConfig) -> Result<()> {
    let (b, key) = object(uri, cfg).await?;
    operation(cfg, uri, b.delete(&key)).await
}

/// Delete what a prefix names, as a directory on every backend: `p` is the object `p` itself and
/// everything under `p/`, never a sibling like `p2` or `p_v2/x`; `p/` is everything under `p/`;
/// a bucket root is the whole bucket. Folder markers are deleted (and counted) too. At most
/// `concurrency` batch deletes (up to the backend's batch size each) are in flight. Returns the
/// number of objects deleted.
/// Delete exactly these objects (a missing one is not an error), in batches of the store's
/// batch-delete limit (S3: 1,000 keys per request), `concurrency` batches at a time; URIs may name
/// several stores. Returns how many were deleted. Any failure is an error naming its URI.
pub async fn delete_many(uris: &[String], concurrency: Option<usize>, cfg: &StoreConfig) -> Result<usize> {
    let concurrency = check_concurrency(concurrency.unwrap_or(cfg.max_concurrency))?;
    // Grouped by backend instance, in the order first seen.
    let mut groups: Vec<(Arc<dyn Backend>, Vec<String>)> = Vec::new();
    for uri in uris {
        let (b, key) = registry::resolve(&Location::parse_object(uri)?, cfg).await?;
        match groups.iter_mut().find(|(g, _)| Arc::ptr_eq(g, &b)) {
            Some((_, keys)) => keys.push(key),
            None => groups.push((b, vec![key])),
        }
    }
    let mut batches = Vec::new();
    for (b, keys) in groups {
        let limit = b.delete_batch_limit().max(1);
        for chunk in keys.chunks(limit) {
            batches.push((Arc::clone(&b), chunk.to_vec()));
        }
    }
    // Collected first: a stream holding a closure over `cfg` trips the Send check of the callers
    // that box this future (as in `range::read_pinned`).
    let deletes: Vec<_> = batches
        .into_iter()
        .map(|(b, batch)| async move {
            let first = b.uri(batch.first().map_or("", String::as_str));
            operation(cfg, &first, b.delete_many(batch)).await
        })
        .collect();
    futures::stream::iter(deletes)
        .buffer_unordered(concurrency)
        .try_fold(0usize, |n, d| async move { Ok(n + d) })
        .await
}

pub async fn delete_prefix(uri: &str, concurrency: Option<usize>, cfg: &StoreConfig) -> Result<usize> {
    let concurrency = check_concurrency(concurrency.unwrap_or(cfg.max_concurrency))?;
    let loc = Location::parse(uri)?;
    if let Location::File { path } | Location::Direct { path } = &loc {
        if path.parent().is_none() {
            return Err(Error::invalid_uri(uri, "refusing to delete everything under the filesystem root"));
        }
    }
    let (b, key) = registry::resolve(&loc, cfg).await?;
    let dir = if key.is_empty() || key.ends_with('/') { key.clone() } else { format!("{key}/") };
    let mut keys: Vec<String> = Vec::new();
    if dir != key {
        match operation(cfg, uri, b.head(&key)).await {
            Ok(_) => keys.push(key.clone()),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let limit = b.delete_batch_limit().max(1);
    let exact = futures::stream::iter(keys.into_iter().map(Ok));
    let listed = pages(b.as_ref(), &dir, false, cfg)
        .map_ok(|page| futures::stream::iter(page.into_iter().map(|o| Ok::<_, Error>(o.uri))))
        .try_flatten();
    let b2 = Arc::clone(&b);
    let listed = listed.and_then(move |u| {
        let k = key_of(b2.as_ref(), &u).map(str::to_owned);
        async move { k }
    });
    let deleted = exact
        .chain(listed)
        .try_chunks(limit)
        .map_err(|e| e.1)
        .map_ok(|batch| {
            let b = Arc::clone(&b);
            async move {
                let first = b.uri(batch.first().map_or("", String::as_str));
                operation(cfg, &first, b.delete_many(batch)).await
            }
        })
        .try_buffer_unordered(concurrency)
        .try_fold(0usize, |n, d| async move { Ok(n + d) })
        .await?;
    b.prune(&dir).await?;
    Ok(deleted)
}

/// Create a bucket (S3) or directory (file/direct).
pub async fn create_bucket(uri: &str, cfg: &StoreConfig) -> Result<()> {
    let (b, key) = registry::resolve(&Location::parse_bucket(uri)?, cfg).await?;
    operation(cfg, uri, b.create_container(&key)).await
}

/// Delete an empty bucket (S3) or empty directory (file/direct).
pub async fn delete_bucket(uri: &str, cfg: &StoreConfig) -> Result<()> {
    let (b, key) = registry::resolve(&Location::parse_bucket(uri)?, cfg).await?;
    operation(cfg, uri, b.delete_container(&key)).await
}
