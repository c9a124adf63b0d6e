//! The range engine: a large object is fetched as concurrent ranged reads, each written straight
//! into its offset of one pre-allocated buffer (no assembly copy). Every range after the first is
//! pinned to the version the first response came from (`If-Match` on its ETag), so an object
//! replaced mid-read, even by one of the same size, is never returned as a mix: the read restarts
//! once from scratch, and a second change is an error. A short or failed range fails the whole
//! object; nothing is ever zero-filled.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::within;
use crate::backend::Backend;
use crate::buf::ObjBuf;
use crate::error::{Error, ErrorKind, Result};
use crate::options::RangeEngineConfig;
use crate::types::{ByteRange, GetOptions};

/// Whether an object of `size` bytes is split into ranges.
pub fn should_split(size: Option<u64>, cfg: &RangeEngineConfig) -> bool {
    size.is_some_and(|s| s >= cfg.min_split_size && s > cfg.chunk_size)
}

fn too_large(uri: &str) -> Error {
    Error::new(ErrorKind::Io, Some(uri), "the object is too large for this machine's address space")
}

/// Read the whole object `key` of `b`. `size`, when known (from a listing), must still be the
/// object's size. Backends without ranged reads (local files) read it in one pass.
pub async fn read(b: &dyn Backend, key: &str, size: Option<u64>, cfg: &RangeEngineConfig) -> Result<Bytes> {
    let whole = GetOptions { expected_size: size, ..Default::default() };
    if !b.ranged_reads() || (size.is_some() && !should_split(size, cfg)) {
        // One request: one version by construction.
        return Ok(b.get(key, &whole).await?.data);
    }
    match read_pinned(b, key, size, cfg).await {
        // Replaced while being read: start over once, from the new version's first byte.
        Err(e) if e.kind() == ErrorKind::Changed => read_pinned(b, key, size, cfg).await.map_err(|e| {
            if e.kind() == ErrorKind::Changed {
                Error::new(
                    ErrorKind::Changed,
                    Some(&b.uri(key)),
                    format!("the object changed while it was being read, twice: {}", e.message()),
                )
            } else {
                e
            }
        }),
        r => r,
    }
}

/// One GET of the first `chunk_size` bytes, which also gives the total size and the version;
/// the rest, if any, into one buffer of the full size, pinned to that version: as one more
/// ranged read below `min_split_size`, as concurrent `chunk_size` ranges from it up.
async fn read_pinned(
    b: &dyn Backend,
    key: &str,
    size: Option<u64>,
    cfg: &RangeEngineConfig,
) -> Result<Bytes> {
    let uri = b.uri(key);
    let head = GetOptions {
        range: Some(ByteRange::new(0, Some(cfg.chunk_size))),
        allow_short: true,
        expected_size: size,
        if_match: None,
    };
    let first = match within(cfg.range_timeout, "range_timeout", &uri, b.get(key, &head)).await {
        Ok(got) => got,
        // 416 for a range starting at byte 0: the object is empty (a plain GET says so, or that
        // the size expected is wrong).
        Err(e) if e.kind() == ErrorKind::InvalidRange => {
            return Ok(b.get(key, &GetOptions { expected_size: size, ..Default::default() }).await?.data)
        }
        Err(e) => return Err(e),
    };
    let Some(total) = first.size else {
        return Ok(first.data); // no Content-Range: the server sent the whole object
    };
    let have = first.data.len() as u64;
    if total <= have {
        return Ok(first.data);
    }
    let len = usize::try_from(total).map_err(|_| too_large(&uri))?;
    let chunk = if total >= cfg.min_split_size { cfg.chunk_size } else { total - have };
    let chunk = usize::try_from(chunk).unwrap_or(usize::MAX).max(1);
    let pinned =
        GetOptions { expected_size: Some(total), if_match: first.etag.clone(), ..Default::default() };
    // Recycled from the buffer pool (or fresh), written once in full: the first response copied in
    // (one chunk), the rest by the ranges (any range that fails fails the read).
    let mut buf = ObjBuf::new(len, &uri)?;
    let start = usize::try_from(have).map_err(|_| too_large(&uri))?;
    buf.as_mut_slice()[..start].copy_from_slice(&first.data);
    drop(first);
    // Collected first: a stream holding a closure over `&mut` chunks trips the Send check of
    // callers that box this future (a higher-ranked lifetime limitation of rustc).
    let ranges: Vec<_> = buf.as_mut_slice()[start..]
        .chunks_mut(chunk)
        .enumerate()
        .map(|(i, part)| {
            let at = have + (i * chunk) as u64;
            let (uri, pinned) = (&uri, &pinned);
            async move {
                within(cfg.range_timeout, "range_timeout", uri, b.get_into(key, at, part, pinned)).await?;
                Ok::<_, Error>(())
            }
        })
        .collect();
    futures::stream::iter(ranges)
        .buffer_unordered(cfg.max_concurrent_ranges)
        .try_for_each(|()| async { Ok(()) })
        .await?;
    Ok(buf.freeze())
}
