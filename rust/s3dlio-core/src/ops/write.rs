//! Writes: one request below `multipart_threshold`; from it up, a multipart upload whose parts
//! run concurrently. Any failure aborts the upload before the error is returned; a cancellation
//! (the future dropped) aborts it on the runtime's cleanup tracker. Never a completed object
//! with missing parts.

use std::future::Future;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

use super::put_options;
use crate::backend::Backend;
use crate::config::{StoreConfig, MAX_PARTS, MIB};
use crate::error::{Error, Result};

/// The part size for an object of `len` bytes: `part_size`, grown (in whole MiB) when the object
/// would need more than S3's 10,000 parts.
pub fn part_size_for(len: u64, cfg: &StoreConfig) -> u64 {
    cfg.part_size.max(len.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB)
}

/// Write `data` to `key` of `b`.
pub async fn put_bytes(b: &dyn Backend, key: &str, data: Bytes, cfg: &StoreConfig) -> Result<()> {
    let len = data.len() as u64;
    if len < cfg.multipart_threshold {
        return b.put(key, data, &put_options(cfg)).await;
    }
    let data = &data;
    // Each part is a zero-copy view of the caller's buffer.
    put_parts(b, key, len, cfg, None, |offset, n| async move {
        let start = usize::try_from(offset).map_err(|_| Error::invalid_config("offset overflow"))?;
        Ok(data.slice(start..start + n))
    })
    .await
}

/// A multipart upload of `len` bytes whose parts come from `part(offset, len)`, at most
/// `max_concurrency` in flight, and no more than `permits` allows across every caller sharing it
/// (a permit is held from producing a part's bytes until the part is written, so memory is
/// bounded by permits × part size).
pub async fn put_parts<F, Fut>(
    b: &dyn Backend,
    key: &str,
    len: u64,
    cfg: &StoreConfig,
    permits: Option<&Semaphore>,
    part: F,
) -> Result<()>
where
    F: Fn(u64, usize) -> Fut,
    Fut: Future<Output = Result<Bytes>>,
{
    let part_size = part_size_for(len, cfg);
    let upload = b.start_multipart(key, &put_options(cfg)).await?;
    let count = len.div_ceil(part_size).max(1);
    let upload_ref = upload.as_ref();
    let written = futures::stream::iter((0..count).map(|i| {
        let offset = i * part_size;
        let n = usize::try_from(part_size.min(len - offset)).unwrap_or(usize::MAX);
        let part = &part;
        async move {
            let _permit = match permits {
                Some(s) => Some(s.acquire().await.map_err(|_| Error::cancelled())?),
                None => None,
            };
            let data = part(offset, n).await?;
            let number = u32::try_from(i + 1).map_err(|_| Error::invalid_config("too many parts"))?;
            upload_ref.put_part(number, offset, data).await
        }
    }))
    .buffer_unordered(cfg.max_concurrency)
    .try_collect::<Vec<_>>()
    .await;
    match written {
        Ok(parts) => upload.complete(parts, len).await,
        Err(e) => {
            let _ = upload.abort().await; // best effort: the part's error is what the user sees
            Err(e)
        }
    }
}
