//! The range engine: a large object of known size is fetched as concurrent ranged GETs, each
//! written straight into its offset of one pre-allocated buffer (no assembly copy). A short or
//! failed range fails the whole object; nothing is ever zero-filled.

use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::buf::ZeroedBuf;
use crate::error::{Error, ErrorKind, Result};
use crate::options::RangeEngineConfig;
use crate::s3::S3Store;

/// Whether an object of `size` bytes goes through the range engine.
pub fn should_split(size: Option<u64>, cfg: &RangeEngineConfig) -> bool {
    size.is_some_and(|s| s >= cfg.min_split_size && s > cfg.chunk_size)
}

async fn within<T>(
    limit: Option<Duration>,
    uri: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match limit {
        None => fut.await,
        Some(d) => tokio::time::timeout(d, fut).await.map_err(|_| {
            Error::new(ErrorKind::Timeout, Some(uri), format!("a ranged request took longer than {d:?}"))
        })?,
    }
}

/// Fetch `size` bytes of `s3://bucket/key` as `ceil(size / chunk_size)` ranged GETs with at most
/// `max_concurrent_ranges` in flight. Dropping the future (cancellation) drops every range in flight.
pub async fn get_split(
    store: &S3Store,
    bucket: &str,
    key: &str,
    size: u64,
    cfg: &RangeEngineConfig,
) -> Result<Bytes> {
    let uri = format!("s3://{bucket}/{key}");
    let len = usize::try_from(size).map_err(|_| Error::new(ErrorKind::Io, Some(&uri), "object too large"))?;
    let chunk = usize::try_from(cfg.chunk_size).unwrap_or(usize::MAX).max(1);
    // Zeroed by the kernel and written once, by the ranges.
    let mut buf = ZeroedBuf::new(len, &uri)?;
    fill(store, bucket, key, &uri, buf.as_mut_slice(), 0, chunk, size, cfg).await?;
    Ok(buf.freeze())
}

/// Fill `dst`, which holds the object's bytes from `offset` on, with `chunk`-sized ranged GETs,
/// at most `max_concurrent_ranges` in flight, each checking that the object is `total` bytes.
#[allow(clippy::too_many_arguments)]
async fn fill(
    store: &S3Store,
    bucket: &str,
    key: &str,
    uri: &str,
    dst: &mut [u8],
    offset: u64,
    chunk: usize,
    total: u64,
    cfg: &RangeEngineConfig,
) -> Result<()> {
    // Collected first: a stream holding a closure over `&mut` chunks trips the Send check of
    // callers that box this future (a higher-ranked lifetime limitation of rustc).
    let ranges: Vec<_> = dst
        .chunks_mut(chunk)
        .enumerate()
        .map(|(i, part)| {
            let at = offset + (i * chunk) as u64;
            within(cfg.range_timeout, uri, store.get_range_into(bucket, key, at, part, Some(total)))
        })
        .collect();
    futures::stream::iter(ranges)
        .buffer_unordered(cfg.max_concurrent_ranges)
        .try_for_each(|()| async { Ok(()) })
        .await
}

/// Read a whole object of unknown size: one GET of its first `chunk_size` bytes, which also gives
/// the total size (Content-Range); an object that fits is done, a larger one gets the rest into
/// one buffer of the full size: as one more ranged GET below `min_split_size`, as concurrent
/// `chunk_size` ranged GETs from it up. Each range checks that the size has
/// not changed since the first response (an object replaced mid-read is an error, never a mix).
pub async fn get_whole(store: &S3Store, bucket: &str, key: &str, cfg: &RangeEngineConfig) -> Result<Bytes> {
    let uri = format!("s3://{bucket}/{key}");
    let (first, total) =
        match within(cfg.range_timeout, &uri, store.get_head(bucket, key, cfg.chunk_size)).await {
            Ok(got) => got,
            // 416 for a range starting at byte 0: the object is empty.
            Err(e) if e.kind() == ErrorKind::InvalidRange => return store.get(bucket, key, None).await,
            Err(e) => return Err(e),
        };
    let Some(total) = total else {
        return Ok(first); // no Content-Range: the server sent the whole object
    };
    let have = first.len() as u64;
    if total <= have {
        return Ok(first);
    }
    let len =
        usize::try_from(total).map_err(|_| Error::new(ErrorKind::Io, Some(&uri), "object too large"))?;
    // Below min_split_size the rest is one more request; from it up, chunk_size ranges.
    let chunk = if total >= cfg.min_split_size { cfg.chunk_size } else { total - have };
    let chunk = usize::try_from(chunk).unwrap_or(usize::MAX).max(1);
    // Zeroed by the kernel, written once: the first response copied in (one chunk), the rest by
    // the ranges.
    let mut buf = ZeroedBuf::new(len, &uri)?;
    buf.as_mut_slice()[..first.len()].copy_from_slice(&first);
    drop(first);
    let start = usize::try_from(have).unwrap_or(len);
    fill(store, bucket, key, &uri, &mut buf.as_mut_slice()[start..], have, chunk, total, cfg).await?;
    Ok(buf.freeze())
}
