//! The backend wrapper that counts every request in the process's [`Metrics`]: one place for
//! every scheme, so each backend stays about its protocol. The registry wraps every backend it
//! builds.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{Backend, MultipartUpload, SyncSink, SyncSource};
use crate::error::Result;
use crate::metrics::{Metrics, Op, Outcome};
use crate::types::{GetOptions, GetResult, ListPage, ObjectInfo, PartInfo, PutOptions};

pub(crate) struct Metered {
    inner: Box<dyn Backend>,
    metrics: &'static Metrics,
}

impl Metered {
    pub(crate) fn new(inner: Box<dyn Backend>, metrics: &'static Metrics) -> Metered {
        Metered { inner, metrics }
    }
}

/// What the op-log says about a request: its URI and byte range.
type Describe<'a> = &'a (dyn Fn() -> (String, Option<(u64, Option<u64>)>) + Sync);

/// Run one request `fut` of `op`, counted in the process's metrics and in the current pool's
/// ([`crate::scope`]), if any, and logged to the op-log when it is on.
async fn counted<T>(
    metrics: &Metrics,
    op: Op,
    describe: Describe<'_>,
    fut: impl std::future::Future<Output = Result<T>>,
    outcome: impl Fn(&T) -> Outcome,
) -> Result<T> {
    let scope = crate::scope::current();
    let f = metrics.start(op);
    let fs = scope.as_deref().map(|s| s.metrics.start(op));
    let logged = crate::oplog::enabled().then(|| {
        (std::time::SystemTime::now(), std::time::Instant::now(), std::sync::Arc::new(AtomicU32::new(0)))
    });
    let r = match &logged {
        None => fut.await,
        Some((_, _, attempts)) => crate::scope::count_attempts(attempts, fut).await,
    };
    if let Some((wall, t0, attempts)) = logged {
        let (uri, range) = describe();
        let start = wall.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        crate::oplog::record(&crate::oplog::Entry {
            start,
            op: op.name(),
            uri: &uri,
            range,
            bytes: r.as_ref().map_or(0, |v| outcome(v).bytes),
            latency_ms: t0.elapsed().as_secs_f64() * 1000.0,
            attempts: attempts.load(Ordering::Relaxed).max(1),
            error: r.as_ref().err(),
        });
    }
    if let Some(fs) = fs {
        fs.finish(&r, &outcome);
    }
    f.finish(&r, &outcome);
    r
}

fn read(bytes: u64, whole: bool) -> Outcome {
    Outcome { bytes, objects_read: u64::from(whole), ..Outcome::default() }
}

fn written(bytes: u64, objects: u64) -> Outcome {
    Outcome { bytes, objects_written: objects, ..Outcome::default() }
}

fn none() -> Outcome {
    Outcome::default()
}

#[async_trait]
impl Backend for Metered {
    fn uri(&self, key: &str) -> String {
        self.inner.uri(key)
    }

    fn ranged_reads(&self) -> bool {
        self.inner.ranged_reads()
    }

    async fn get(&self, key: &str, opts: &GetOptions) -> Result<GetResult> {
        // The whole object: no range, or a range from 0 that the object's size says is all of it.
        let describe = || (self.inner.uri(key), opts.range.map(|r| (r.offset, r.length)));
        counted(self.metrics, Op::Get, &describe, self.inner.get(key, opts), |g| {
            let n = g.data.len() as u64;
            read(n, opts.range.is_none_or(|x| x.offset == 0 && g.size == Some(n)))
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
        let n = dst.len() as u64;
        // The ranges of a split read complete its object once: with the one that reaches its end.
        let whole = opts.expected_size == offset.checked_add(n);
        let describe = || (self.inner.uri(key), Some((offset, Some(n))));
        counted(self.metrics, Op::Get, &describe, self.inner.get_into(key, offset, dst, opts), |_| {
            read(n, whole)
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo> {
        let describe = || (self.inner.uri(key), None);
        counted(self.metrics, Op::Head, &describe, self.inner.head(key), |_| none()).await
    }

    async fn put(&self, key: &str, data: Bytes, opts: &PutOptions) -> Result<()> {
        let n = data.len() as u64;
        let describe = || (self.inner.uri(key), None);
        counted(self.metrics, Op::Put, &describe, self.inner.put(key, data, opts), |()| written(n, 1)).await
    }

    async fn start_multipart(&self, key: &str, opts: &PutOptions) -> Result<Box<dyn MultipartUpload>> {
        let describe = || (self.inner.uri(key), None);
        let r =
            counted(self.metrics, Op::Multipart, &describe, self.inner.start_multipart(key, opts), |_| {
                none()
            })
            .await;
        Ok(Box::new(MeteredUpload { inner: r?, metrics: self.metrics, uri: self.inner.uri(key) }))
    }

    fn list(&self, prefix: &str, delimiter: bool) -> BoxStream<'static, Result<ListPage>> {
        let metrics = self.metrics;
        let mut pages = self.inner.list(prefix, delimiter);
        // One request per page: timed from the poll that asks for it to the page's arrival.
        let mut asked: Option<std::time::Instant> = None;
        futures::stream::poll_fn(move |cx| {
            use std::task::Poll;
            let started = *asked.get_or_insert_with(std::time::Instant::now);
            let polled = pages.poll_next_unpin(cx);
            if let Poll::Ready(page) = &polled {
                asked = None;
                if let Some(r) = page {
                    let scope = crate::scope::current();
                    for m in std::iter::once(metrics).chain(scope.as_deref().map(|s| &s.metrics)) {
                        m.record(Op::List, started, r, |p: &ListPage| {
                            m.add_keys_listed(p.len() as u64);
                            none()
                        });
                    }
                }
            }
            polled
        })
        .boxed()
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let deleted = |(): &()| Outcome { objects_deleted: 1, ..Outcome::default() };
        let describe = || (self.inner.uri(key), None);
        counted(self.metrics, Op::Delete, &describe, self.inner.delete(key), deleted).await
    }

    async fn delete_many(&self, keys: Vec<String>) -> Result<usize> {
        let deleted = |n: &usize| Outcome { objects_deleted: *n as u64, ..Outcome::default() };
        let first = keys.first().map(|k| self.inner.uri(k)).unwrap_or_default();
        let describe = move || (first.clone(), None);
        counted(self.metrics, Op::Delete, &describe, self.inner.delete_many(keys), deleted).await
    }

    fn delete_batch_limit(&self) -> usize {
        self.inner.delete_batch_limit()
    }

    async fn prune(&self, prefix: &str) -> Result<()> {
        self.inner.prune(prefix).await
    }

    async fn copy_within(&self, src_key: &str, dst_key: &str, size: u64) -> Result<bool> {
        let copied = |c: &bool| if *c { written(size, 1) } else { none() };
        let describe = || (self.inner.uri(dst_key), None);
        counted(self.metrics, Op::Copy, &describe, self.inner.copy_within(src_key, dst_key, size), copied)
            .await
    }

    async fn create_container(&self, key: &str) -> Result<()> {
        self.inner.create_container(key).await
    }

    async fn delete_container(&self, key: &str) -> Result<()> {
        self.inner.delete_container(key).await
    }

    fn sync_sink(&self, key: &str, opts: &PutOptions) -> Option<Result<Box<dyn SyncSink>>> {
        let metrics = self.metrics;
        self.inner
            .sync_sink(key, opts)
            .map(|r| r.map(|inner| Box::new(MeteredSink { inner, metrics }) as Box<dyn SyncSink>))
    }

    fn sync_source(&self, key: &str) -> Option<Result<Box<dyn SyncSource>>> {
        let metrics = self.metrics;
        self.inner
            .sync_source(key)
            .map(|r| r.map(|inner| Box::new(MeteredSource { inner, metrics }) as Box<dyn SyncSource>))
    }
}

struct MeteredUpload {
    inner: Box<dyn MultipartUpload>,
    metrics: &'static Metrics,
    uri: String,
}

#[async_trait]
impl MultipartUpload for MeteredUpload {
    async fn put_part(&self, number: u32, offset: u64, data: Bytes) -> Result<PartInfo> {
        let n = data.len() as u64;
        let describe = || (self.uri.clone(), Some((offset, Some(n))));
        counted(self.metrics, Op::Put, &describe, self.inner.put_part(number, offset, data), |_| {
            written(n, 0)
        })
        .await
    }

    async fn complete(self: Box<Self>, parts: Vec<PartInfo>, size: u64) -> Result<()> {
        let describe = || (self.uri.clone(), None);
        counted(self.metrics, Op::Multipart, &describe, self.inner.complete(parts, size), |()| written(0, 1))
            .await
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        let describe = || (self.uri.clone(), None);
        counted(self.metrics, Op::Multipart, &describe, self.inner.abort(), |()| none()).await
    }
}

/// A local streaming write: bytes count as they are written, the object when it is published.
struct MeteredSink {
    inner: Box<dyn SyncSink>,
    metrics: &'static Metrics,
}

impl SyncSink for MeteredSink {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.inner.write(data)?;
        self.metrics.add_bytes(Op::Put, data.len() as u64);
        Ok(())
    }

    fn complete(self: Box<Self>) -> Result<()> {
        let metrics = self.metrics;
        self.inner.complete()?;
        metrics.add_objects_written(1);
        Ok(())
    }
}

/// A local in-place reader: bytes count as they are read.
struct MeteredSource {
    inner: Box<dyn SyncSource>,
    metrics: &'static Metrics,
}

impl SyncSource for MeteredSource {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn version(&self) -> String {
        self.inner.version()
    }

    fn read_at(&self, offset: u64, dst: &mut [u8]) -> Result<usize> {
        let n = self.inner.read_at(offset, dst)?;
        self.metrics.add_bytes(Op::Get, n as u64);
        Ok(n)
    }
}
