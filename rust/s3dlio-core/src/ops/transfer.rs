//! Transfers, written once as object-to-object copies between two backends: `upload` (local tree
//! -> any prefix), `download` (any prefix -> local tree), `copy` (one object, any scheme to any
//! scheme) and `copy_tree` (a prefix to a prefix).
//!
//! Files are streamed: a file below `multipart_threshold` is read whole and written in one
//! request; a larger one moves in `part_size` parts (ranged reads into a multipart upload), so
//! memory is bounded by `max_concurrency` × `part_size` whatever the file sizes. One semaphore of
//! `max_concurrency` permits bounds every request in flight across all files.
//! Folder markers and directories are never transferred as objects.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

use super::{key_of, operation, pages, put_options, write};
use crate::backend::Backend;
use crate::config::StoreConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::registry;
use crate::types::{ByteRange, GetOptions, ObjectInfo};
use crate::uri::{absolute, Location};

/// The part of `key` below the directory prefix `dir` (which is empty or ends in `/`): the one
/// place a relative key is computed. A key outside the prefix is an error, never the whole key.
pub fn relative_key<'a>(dir: &str, key: &'a str, uri: &str) -> Result<&'a str> {
    debug_assert!(dir.is_empty() || dir.ends_with('/'));
    match key.strip_prefix(dir) {
        Some(rel) if !rel.is_empty() => Ok(rel),
        _ => Err(Error::new(
            ErrorKind::Io,
            Some(uri),
            format!("listed key {key:?} is not under the prefix {dir:?}"),
        )),
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

/// Copy one object of `size` bytes from `src` to `dst`: inside one store, by the store itself
/// where it can ([`Backend::copy_within`]); otherwise streamed (see the module docs).
async fn copy_object(
    src: &dyn Backend,
    src_key: &str,
    size: u64,
    dst: &dyn Backend,
    dst_key: &str,
    cfg: &StoreConfig,
    permits: &Semaphore,
) -> Result<()> {
    if std::ptr::addr_eq(src as *const dyn Backend, dst as *const dyn Backend) {
        let _permit = permits.acquire().await.map_err(|_| Error::cancelled())?;
        if dst.copy_within(src_key, dst_key, size).await? {
            return Ok(());
        }
    }
    let sized = |range| GetOptions { range, expected_size: Some(size), ..Default::default() };
    if size < cfg.multipart_threshold {
        let _permit = permits.acquire().await.map_err(|_| Error::cancelled())?;
        let data = src.get(src_key, &sized(None)).await?.data;
        return dst.put(dst_key, data, &put_options(cfg)).await;
    }
    write::put_parts(dst, dst_key, size, cfg, Some(permits), |offset, n| {
        let opts = sized(Some(ByteRange::new(offset, Some(n as u64))));
        async move { Ok(src.get(src_key, &opts).await?.data) }
    })
    .await
}

/// Every object under the directory prefix `dir` of `b` (folder markers and directories left out;
/// a non-empty object whose key ends in `/` is an error, it cannot be a file).
async fn objects(b: &dyn Backend, dir: &str, cfg: &StoreConfig) -> Result<Vec<ObjectInfo>> {
    let mut out = Vec::new();
    let mut listing = pages(b, dir, false, cfg);
    while let Some(page) = listing.next().await {
        for o in page? {
            if o.is_dir && o.size > 0 {
                return Err(Error::new(
                    ErrorKind::InvalidUri,
                    Some(&o.uri),
                    format!("the key ends in '/' but the object holds {} bytes: it cannot be a file", o.size),
                ));
            }
            if !o.is_dir {
                out.push(o);
            }
        }
    }
    Ok(out)
}

/// Copy every `(src_key, size, dst_key)` with the file-level and request-level bounds.
async fn copy_all(
    src: Arc<dyn Backend>,
    dst: Arc<dyn Backend>,
    jobs: Vec<(String, u64, String)>,
    cfg: &StoreConfig,
) -> Result<usize> {
    let n = jobs.len();
    let permits = Semaphore::new(cfg.max_concurrency);
    let (src, dst, permits) = (src.as_ref(), dst.as_ref(), &permits);
    futures::stream::iter(jobs.into_iter().map(|(from, size, to)| async move {
        let uri = dst.uri(&to);
        operation(cfg, &uri, copy_object(src, &from, size, dst, &to, cfg, permits)).await
    }))
    .buffer_unordered(cfg.max_concurrency)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(n)
}

fn dir_of(key: &str) -> String {
    if key.is_empty() || key.ends_with('/') {
        key.to_owned()
    } else {
        format!("{key}/")
    }
}

/// Upload a local directory tree (`local_dir` may be relative to the current directory) under a
/// prefix, keeping relative paths: `upload("dataset", "s3://b/ds")` writes `ds/a.bin`. Symlinks
/// to files and directories are followed; a directory loop or a dangling link is an error.
/// Returns the file count.
pub async fn upload(local_dir: &str, uri: &str, cfg: &StoreConfig) -> Result<usize> {
    let root = absolute(Path::new(local_dir))?;
    if !root.is_dir() {
        return Err(Error::new(ErrorKind::NotFound, Some(local_dir), "is not a directory"));
    }
    let src_loc = Location::File { path: root };
    let (src, src_key) = registry::resolve(&src_loc, cfg).await?;
    let (dst, dst_key) = registry::resolve(&Location::parse(uri)?, cfg).await?;
    let (src_dir, dst_dir) = (dir_of(&src_key), dir_of(&dst_key));
    let mut jobs = Vec::new();
    for o in objects(src.as_ref(), &src_dir, cfg).await? {
        let key = key_of(src.as_ref(), &o.uri)?;
        let rel = relative_key(&src_dir, key, &o.uri)?;
        jobs.push((key.to_owned(), o.size, format!("{dst_dir}{rel}")));
    }
    copy_all(src, dst, jobs, cfg).await
}

/// Download every object under a prefix into a local directory (`local_dir` may be relative),
/// keeping relative paths. Folder markers are skipped; keys that would escape `local_dir` are
/// refused. Returns the count.
pub async fn download(uri: &str, local_dir: &str, cfg: &StoreConfig) -> Result<usize> {
    let root = absolute(Path::new(local_dir))?;
    let (src, src_key) = registry::resolve(&Location::parse(uri)?, cfg).await?;
    let (dst, _) = registry::resolve(&Location::File { path: root.clone() }, cfg).await?;
    let src_dir = dir_of(&src_key);
    let mut jobs = Vec::new();
    for o in objects(src.as_ref(), &src_dir, cfg).await? {
        let key = key_of(src.as_ref(), &o.uri)?;
        let rel = safe_relative(relative_key(&src_dir, key, &o.uri)?, &o.uri)?;
        let target = root.join(rel);
        let target = target.to_str().ok_or_else(|| Error::invalid_uri(&o.uri, "not a UTF-8 path"))?;
        jobs.push((key.to_owned(), o.size, target.to_owned()));
    }
    copy_all(src, dst, jobs, cfg).await
}

/// Copy one object to another URI, on any two schemes (`s3://` to `gs://`, a local file to
/// `az://`, ...). Inside one store, the store copies it itself where it can; otherwise it is
/// streamed with memory bounded by `max_concurrency` x `part_size`. Returns the bytes copied.
pub async fn copy(src_uri: &str, dst_uri: &str, cfg: &StoreConfig) -> Result<u64> {
    let (src, src_key) = registry::resolve(&Location::parse_object(src_uri)?, cfg).await?;
    let (dst, dst_key) = registry::resolve(&Location::parse_object(dst_uri)?, cfg).await?;
    let size = operation(cfg, src_uri, src.head(&src_key)).await?.size;
    copy_all(src, dst, vec![(src_key, size, dst_key)], cfg).await?;
    Ok(size)
}

/// Copy every object under the directory prefix `src_uri` (`p` means `p/...`) to the same
/// relative keys under `dst_uri`, on any two schemes. Folder markers are not copied. Returns the
/// object count.
///
/// With `only`, just these relative keys (`a/b.bin` for `<src_uri>/a/b.bin`); one that is not
/// under `src_uri` is a `NotFound` error naming it, and nothing is copied.
pub async fn copy_tree(
    src_uri: &str,
    dst_uri: &str,
    only: Option<&[String]>,
    cfg: &StoreConfig,
) -> Result<usize> {
    let (src, src_key) = registry::resolve(&Location::parse(src_uri)?, cfg).await?;
    let (dst, dst_key) = registry::resolve(&Location::parse(dst_uri)?, cfg).await?;
    let (src_dir, dst_dir) = (dir_of(&src_key), dir_of(&dst_key));
    let mut wanted: Option<std::collections::HashSet<&str>> =
        only.map(|k| k.iter().map(String::as_str).collect());
    let mut jobs = Vec::new();
    for o in objects(src.as_ref(), &src_dir, cfg).await? {
        let key = key_of(src.as_ref(), &o.uri)?;
        let rel = relative_key(&src_dir, key, &o.uri)?;
        if let Some(w) = wanted.as_mut() {
            if !w.remove(rel) {
                continue;
            }
        }
        jobs.push((key.to_owned(), o.size, format!("{dst_dir}{rel}")));
    }
    if let Some(missing) = wanted.and_then(|w| w.into_iter().min()) {
        let uri = src.uri(&format!("{src_dir}{missing}"));
        return Err(Error::new(ErrorKind::NotFound, Some(&uri), "no such object under the source prefix"));
    }
    copy_all(src, dst, jobs, cfg).await
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

    #[test]
    fn relative_keys_never_fall_back_to_the_whole_key() {
        assert_eq!(relative_key("ds/", "ds/a/b.bin", "u").unwrap(), "a/b.bin");
        assert_eq!(relative_key("", "a.bin", "u").unwrap(), "a.bin");
        assert!(relative_key("ds/", "other/a.bin", "u").is_err());
        assert!(relative_key("ds/", "ds/", "u").is_err());
    }
}
