//! The one trait every storage backend implements, and the backends (one file per scheme).
//!
//! A backend serves one namespace: one S3 bucket, or the local filesystem (`file://` or
//! `direct://`). Keys are the backend's own: an object key on S3, an absolute path on local
//! filesystems. Operations over URIs (range engine, upload/download, prefix deletes) are written
//! once against this trait in [`crate::ops`]; a backend knows only [`crate::types`] and errors.
//!
//! Every future here is cancel-safe by drop: dropping it stops issuing requests and drops those in
//! flight. Work that must finish even so (aborting a multipart upload, removing a temp file) is
//! handed to the runtime's cleanup tracker, which an interrupted blocking call waits for.

pub mod azure;
pub mod endpoints;
pub mod gcs;
mod http;
pub mod local;
pub(crate) mod metered;
pub mod s3;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::Result;
use crate::types::{GetOptions, GetResult, ListPage, ObjectInfo, PartInfo, PutOptions};

/// One storage namespace.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The URI of `key` (`s3://bucket/key`, `file:///path`).
    fn uri(&self, key: &str) -> String;

    /// Whether whole-object reads are worth splitting into concurrent ranged reads (network
    /// stores) rather than read in one pass (local files).
    fn ranged_reads(&self) -> bool;

    /// Read an object, or a range of it.
    async fn get(&self, key: &str, opts: &GetOptions) -> Result<GetResult>;

    /// Read `dst.len()` bytes at `offset` into `dst`, honouring `opts.if_match` and
    /// `opts.expected_size` (`opts.range` is ignored). Returns the ETag the response carried.
    async fn get_into(
        &self,
        key: &str,
        offset: u64,
        dst: &mut [u8],
        opts: &GetOptions,
    ) -> Result<Option<String>>;

    /// Size, ETag and last-modified of one object.
    async fn head(&self, key: &str) -> Result<ObjectInfo>;

    /// Write a whole object in one request (local: one temp file renamed into place).
    async fn put(&self, key: &str, data: Bytes, opts: &PutOptions) -> Result<()>;

    /// Start a multipart upload of `key`: parts may be written concurrently, in any order;
    /// nothing is visible until `complete`.
    async fn start_multipart(&self, key: &str, opts: &PutOptions) -> Result<Box<dyn MultipartUpload>>;

    /// The objects whose keys start with `prefix` (string-prefix semantics), page by page, in key
    /// order. With `delimiter`, one level: deeper keys are folded into `is_dir` entries.
    fn list(&self, prefix: &str, delimiter: bool) -> BoxStream<'static, Result<ListPage>>;

    /// Delete exactly `key`; a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Delete up to [`Backend::delete_batch_limit`] keys; returns how many were deleted. Any
    /// per-key failure is an error naming that key.
    async fn delete_many(&self, keys: Vec<String>) -> Result<usize>;

    /// Most keys one [`Backend::delete_many`] takes (S3 DeleteObjects: 1,000).
    fn delete_batch_limit(&self) -> usize;

    /// After a prefix delete: remove what only held the deleted objects (empty directories).
    async fn prune(&self, _prefix: &str) -> Result<()> {
        Ok(())
    }

    /// Copy `src_key` (of `size` bytes) to `dst_key` inside this store, without the bytes
    /// leaving it. `Ok(false)` (the default): the store cannot, and the caller streams the copy.
    async fn copy_within(&self, _src_key: &str, _dst_key: &str, _size: u64) -> Result<bool> {
        Ok(false)
    }

    /// Create the bucket (S3) or directory (local) this key names.
    async fn create_container(&self, key: &str) -> Result<()>;

    /// Delete the empty bucket (S3) or empty directory (local) this key names.
    async fn delete_container(&self, key: &str) -> Result<()>;

    /// A writer of `key` that works on the caller's thread (local files: a temp file written in
    /// place), for streaming writes where part buffers and upload tasks would only add copies.
    /// `None` (the default): the backend has none; writes go in parts.
    fn sync_sink(&self, _key: &str, _opts: &PutOptions) -> Option<Result<Box<dyn SyncSink>>> {
        None
    }

    /// A reader of `key` that works on the caller's thread (local files: `pread` on one open
    /// file). `None` (the default): reads go through `get`/`get_into`.
    fn sync_source(&self, _key: &str) -> Option<Result<Box<dyn SyncSource>>> {
        None
    }
}

/// See [`Backend::sync_sink`]. Dropped without `complete`, it removes what it wrote; the previous
/// version of the object stays.
pub trait SyncSink: Send {
    /// Append `data` (blocking).
    fn write(&mut self, data: &[u8]) -> Result<()>;

    /// Publish the object (blocking: fsync per the options, then an atomic rename).
    fn complete(self: Box<Self>) -> Result<()>;
}

/// See [`Backend::sync_source`]: one version of one object, read in place.
pub trait SyncSource: Send + Sync {
    fn size(&self) -> u64;

    /// The version read (as an ETag stands for an object's).
    fn version(&self) -> String;

    /// Fill `dst` from `offset` (blocking); fewer bytes only at the end. The object changing
    /// meanwhile is an error ([`crate::ErrorKind::Changed`]).
    fn read_at(&self, offset: u64, dst: &mut [u8]) -> Result<usize>;
}

/// An upload in parts. Dropping it without `complete` aborts it (on the cleanup tracker).
#[async_trait]
pub trait MultipartUpload: Send + Sync {
    /// Write part `number` (1-based), which holds the object's bytes from `offset` on.
    async fn put_part(&self, number: u32, offset: u64, data: Bytes) -> Result<PartInfo>;

    /// Publish the object from `parts` (any order; sorted here), `size` bytes in all.
    async fn complete(self: Box<Self>, parts: Vec<PartInfo>, size: u64) -> Result<()>;

    /// Discard every part; nothing is published. Runs to completion before returning.
    async fn abort(self: Box<Self>) -> Result<()>;
}
