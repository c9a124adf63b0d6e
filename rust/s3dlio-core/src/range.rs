//! The range engine: a large object of known size is fetched as concurrent ranged GETs, each
//! written straight into its offset of one pre-allocated buffer (no assembly copy). A short or
//! failed range fails the whole object; nothing is ever zero-filled.

use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

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
    // vec![0; n] is calloc: the pages come zeroed from the kernel and are written once, by the ranges.
    let mut buf = vec![0u8; len];
    // Collected first: a stream holding a closure over `&mut` chunks trips the Send check of
    // callers that box this future (a higher-ranked lifetime limitation of rustc).
    let ranges: Vec<_> = buf
        .chunks_mut(chunk)
        .enumerate()
        .map(|(i, dst)| {
            let offset = (i * chunk) as u64;
            within(cfg.range_timeout, &uri, store.get_range_into(bucket, key, offset, dst, Some(size)))
        })
        .collect();
    futures::stream::iter(ranges)
        .buffer_unordered(cfg.max_concurrent_ranges)
        .try_for_each(|()| async { Ok(()) })
        .await?;
    Ok(Bytes::from(buf))
}
