//! The backend wrapper that counts every request in the process's [`Metrics`]: one place for
//! every scheme, so each backend stays about its protocol. The registry wraps every backend it
//! builds.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

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
        let f = self.metrics.start(Op::Get);
        let r = self.inner.get(key, opts).await;
        // The whole object: no range, or a range from 0 that the object's size says is all of it.
        f.finish(&r, |g| {
            let n = g.data.len() as u64;
            read(n, opts.range.is_none_or(|x| x.offset == 0 && g.size == Some(n)))
        });
        r
    }

    async fn get_into(
        &self,
        key: &str,
        offset: u64,
        dst: &mut [u8],
        opts: &GetOptions,
    ) -> Result<Option<String>> {
        let f = self.metrics.start(Op::Get);
        let n = dst.len() as u64;
        let r = self.inner.get_into(key, offset, dst, opts).await;
        // The ranges of a split read complete its object once: with the one that reaches its end.
        let whole = opts.expected_size == offset.checked_add(n);
        f.finish(&r, |_| read(n, whole));
        r
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo> {
        let f = self.metrics.start(Op::Head);
        let r = self.inner.head(key).await;
        f.finish(&r, |_| none());
        r
    }

    async fn put(&self, key: &str, data: Bytes, opts: &PutOptions) -> Result<()> {
        let f = self.metrics.start(Op::Put);
        let n = data.len() as u64;
        let r = self.inner.put(key, data, opts).await;
        f.finish(&r, |()| written(n, 1));
        r
    }

    async fn start_multipart(&self, key: &str, opts: &PutOptions) -> Result<Box<dyn MultipartUpload>> {
        let f = self.metrics.start(Op::Multipart);
        let r = self.inner.start_multipart(key, opts).await;
        f.finish(&r, |_| none());
        Ok(Box::new(MeteredUpload { inner: r?, metrics: self.metrics }))
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
                    metrics.record(Op::List, started, r, |p: &ListPage| {
                        metrics.add_keys_listed(p.len() as u64);
                        none()
                    });
                }
            }
            polled
        })
        .boxed()
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let f = self.metrics.start(Op::Delete);
        let r = self.inner.delete(key).await;
        f.finish(&r, |()| Outcome { objects_deleted: 1, ..Outcome::default() });
        r
    }

    async fn delete_many(&self, keys: Vec<String>) -> Result<usize> {
        let f = self.metrics.start(Op::Delete);
        let r = self.inner.delete_many(keys).await;
        f.finish(&r, |n| Outcome { objects_deleted: *n as u64, ..Outcome::default() });
        r
    }

    fn delete_batch_limit(&self) -> usize {
        self.inner.delete_batch_limit()
    }

    async fn prune(&self, prefix: &str) -> Result<()> {
        self.inner.prune(prefix).await
    }

    async fn copy_within(&self, src_key: &str, dst_key: &str, size: u64) -> Result<bool> {
        let f = self.metrics.start(Op::Copy);
        let r = self.inner.copy_within(src_key, dst_key, size).await;
        f.finish(&r, |copied| if *copied { written(size, 1) } else { none() });
        r
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
}

#[async_trait]
impl MultipartUpload for MeteredUpload {
    async fn put_part(&self, number: u32, offset: u64, data: Bytes) -> Result<PartInfo> {
        let f = self.metrics.start(Op::Put);
        let n = data.len() as u64;
        let r = self.inner.put_part(number, offset, data).await;
        f.finish(&r, |_| written(n, 0));
        r
    }

    async fn complete(self: Box<Self>, parts: Vec<PartInfo>, size: u64) -> Result<()> {
        let f = self.metrics.start(Op::Multipart);
        let r = self.inner.complete(parts, size).await;
        f.finish(&r, |()| written(0, 1));
        r
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        let f = self.metrics.start(Op::Multipart);
        let r = self.inner.abort().await;
        f.finish(&r, |()| none());
        r
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
