//! The `s3://` backend over aws-sdk-s3.
//!
//! Clients are cached per process (see [`crate::runtime`]) and per resolved configuration. Uploads
//! carry a CRC32C header computed here (see [`S3Store::put`]); the SDK's own automatic checksums
//! (aws-chunked trailers) are used only when an operation requires them, so strict S3-compatible
//! servers accept uploads. Retries use the SDK's standard mode (jittered exponential backoff on
//! throttling, 5xx, timeouts and connection errors).

use std::time::Duration;

use aws_config::meta::region::ProvideRegion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart,
    CreateBucketConfiguration, Delete, ObjectIdentifier,
};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};

use crate::buf::{ZeroedBuf, MAP_THRESHOLD};

use crate::config::{StoreConfig, MAX_PARTS, MIB};
use crate::error::{Error, ErrorKind, Result};
use crate::runtime::context;
use crate::store::{ListPage, ObjectInfo};

/// The base64 CRC32C (Castagnoli) of `data`, as `x-amz-checksum-crc32c` carries it.
fn crc32c(data: &[u8]) -> String {
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32;
    aws_smithy_types::base64::encode(crc.to_be_bytes())
}

/// Everything that distinguishes one client from another. Holds secrets: never printed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey {
    endpoint: Option<String>,
    region: String,
    static_creds: Option<(String, String, Option<String>)>,
    profile: Option<String>,
    path_style: bool,
    connect_timeout: Duration,
    read_timeout: Duration,
    operation_timeout: Option<Duration>,
    max_attempts: u32,
    initial_backoff: Duration,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl ClientKey {
    async fn resolve(cfg: &StoreConfig) -> ClientKey {
        let endpoint = cfg.resolved_endpoint();
        let profile = cfg.profile.clone().or_else(|| env("AWS_PROFILE"));
        // Region: explicit, env, profile file, else us-east-1. Never the instance-metadata service.
        let mut region =
            cfg.region.clone().or_else(|| env("AWS_REGION")).or_else(|| env("AWS_DEFAULT_REGION"));
        if region.is_none() {
            let mut provider = aws_config::profile::ProfileFileRegionProvider::builder();
            if let Some(p) = &profile {
                provider = provider.profile_name(p);
            }
            region = provider.build().region().await.map(|r| r.to_string());
        }
        let static_creds = match (&cfg.access_key_id, &cfg.secret_access_key) {
            (Some(a), Some(s)) => Some((a.clone(), s.clone(), cfg.session_token.clone())),
            _ => None,
        };
        ClientKey {
            path_style: cfg.force_path_style.unwrap_or(endpoint.is_some()),
            endpoint,
            region: region.unwrap_or_else(|| "us-east-1".to_owned()),
            static_creds,
            profile,
            connect_timeout: cfg.connect_timeout,
            read_timeout: cfg.read_timeout,
            operation_timeout: cfg.operation_timeout,
            max_attempts: cfg.max_attempts,
            initial_backoff: cfg.initial_backoff,
        }
    }

    async fn build(&self) -> Client {
        let mut timeouts =
            TimeoutConfig::builder().connect_timeout(self.connect_timeout).read_timeout(self.read_timeout);
        timeouts.set_operation_timeout(self.operation_timeout);
        let timeouts = timeouts.build();
        let retry = RetryConfig::standard()
            .with_max_attempts(self.max_attempts)
            .with_initial_backoff(self.initial_backoff);
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .timeout_config(timeouts)
            .retry_config(retry);
        if let Some(p) = &self.profile {
            loader = loader.profile_name(p);
        }
        if let Some((ak, sk, token)) = &self.static_creds {
            // Static credentials: the provider chain (and its instance-metadata probe) is not used.
            loader =
                loader.credentials_provider(Credentials::new(ak, sk, token.clone(), None, "s3dlio-static"));
        }
        let shared = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .force_path_style(self.path_style);
        if let Some(ep) = &self.endpoint {
            b = b.endpoint_url(ep);
        }
        Client::from_conf(b.build())
    }
}

/// An S3 bucket plus the client and settings to reach it.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    cfg: StoreConfig,
}

impl S3Store {
    /// The cached client for `cfg` in this process, built on first use.
    pub async fn new(cfg: &StoreConfig) -> Result<S3Store> {
        let ctx = context()?;
        let key = ClientKey::resolve(cfg).await;
        let cached = ctx.clients().get(&key).cloned();
        let client = match cached {
            Some(c) => c,
            None => {
                let c = key.build().await;
                ctx.clients().entry(key).or_insert(c).clone()
            }
        };
        Ok(S3Store { client, cfg: cfg.clone() })
    }

    fn uri(bucket: &str, key: &str) -> String {
        format!("s3://{bucket}/{key}")
    }

    /// GET the whole object, or `range = (offset, length)` of it.
    ///
    /// The SDK retries failures up to the response headers. A body that breaks off or stalls after
    /// that (connection reset, server stopped sending) is retried here, with the same attempt budget
    /// and jittered exponential backoff.
    pub async fn get(&self, bucket: &str, key: &str, range: Option<(u64, Option<u64>)>) -> Result<Bytes> {
        self.get_retrying(bucket, key, range, true).await.map(|(b, _)| b)
    }

    /// The first `len` bytes of the object (all of it when it is shorter) and the object's total
    /// size when the server says it (Content-Range). An empty object is an `InvalidRange` error
    /// (HTTP 416: no byte 0 to start from).
    pub async fn get_head(&self, bucket: &str, key: &str, len: u64) -> Result<(Bytes, Option<u64>)> {
        self.get_retrying(bucket, key, Some((0, Some(len))), false).await
    }

    async fn get_retrying(
        &self,
        bucket: &str,
        key: &str,
        range: Option<(u64, Option<u64>)>,
        exact: bool,
    ) -> Result<(Bytes, Option<u64>)> {
        let mut attempt = 1;
        loop {
            match self.get_once(bucket, key, range, exact).await {
                Ok(b) => return Ok(b),
                Err((e, true)) if attempt < self.cfg.max_attempts => {
                    tokio::time::sleep(backoff(self.cfg.initial_backoff, attempt)).await;
                    attempt += 1;
                    drop(e);
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// One GET and the object's total size when a Content-Range gives it; the error flag says
    /// whether the failure happened while streaming the body (retryable). With `exact`, a range
    /// must come back whole (a range past the end is an error); without, it may be cut short at
    /// the object's end.
    async fn get_once(
        &self,
        bucket: &str,
        key: &str,
        range: Option<(u64, Option<u64>)>,
        exact: bool,
    ) -> std::result::Result<(Bytes, Option<u64>), (Error, bool)> {
        let uri = Self::uri(bucket, key);
        let mut req = self.client.get_object().bucket(bucket).key(key);
        if let Some((offset, length)) = range {
            req = req.range(match length {
                Some(len) => format!("bytes={}-{}", offset, offset + len - 1),
                None => format!("bytes={offset}-"),
            });
        }
        let resp = req
            .send()
            .await
            .map_err(|e| {
                let err = map_sdk_err(e, &uri);
                match range {
                    Some((offset, len)) if err.kind() == ErrorKind::InvalidRange => Error::new(
                        ErrorKind::InvalidRange,
                        Some(&uri),
                        format!(
                            "range at byte {offset} ({}) is outside the object: {}",
                            len.map_or_else(|| "to the end".to_owned(), |l| format!("{l} bytes")),
                            err.message()
                        ),
                    ),
                    _ => err,
                }
            })
            .map_err(|e| (e, false))?;
        let expected = resp.content_length().and_then(|n| usize::try_from(n).ok());
        let total = resp.content_range().and_then(total_from_content_range);
        let mut body = resp.body;
        let read_timeout = self.cfg.read_timeout;
        let failed =
            |kind: ErrorKind, msg: String, retryable: bool| (Error::new(kind, Some(&uri), msg), retryable);
        let short = |got: usize, n: usize| {
            failed(ErrorKind::Io, format!("body ended after {got} of {n} bytes"), true)
        };
        // The one honest copy: network chunks into one contiguous buffer of the announced size
        // (a huge-page mapping when large: see buf.rs).
        let buf = match expected {
            Some(n) if n >= MAP_THRESHOLD => {
                let mut buf = ZeroedBuf::new(n, &uri).map_err(|e| (e, false))?;
                let dst = buf.as_mut_slice();
                let mut filled = 0usize;
                while let Some(chunk) = next_chunk(&mut body, read_timeout, &uri).await? {
                    let end = filled + chunk.len();
                    if end > n {
                        let msg = format!("server sent more than the {n} bytes it announced");
                        return Err(failed(ErrorKind::Io, msg, true));
                    }
                    dst[filled..end].copy_from_slice(&chunk);
                    filled = end;
                }
                if filled != n {
                    return Err(short(filled, n));
                }
                buf.freeze()
            }
            _ => {
                let mut buf = BytesMut::with_capacity(expected.unwrap_or(0));
                while let Some(chunk) = next_chunk(&mut body, read_timeout, &uri).await? {
                    buf.extend_from_slice(&chunk);
                }
                if let Some(n) = expected {
                    if buf.len() != n {
                        return Err(short(buf.len(), n));
                    }
                }
                buf.freeze()
            }
        };
        if let (Some((offset, Some(len))), true) = (range, exact) {
            if buf.len() as u64 != len {
                let size = total.map_or_else(|| "unknown".to_owned(), |t| t.to_string());
                let msg = format!("range {offset}+{len} extends past the end of the object (size {size})");
                return Err(failed(ErrorKind::InvalidRange, msg, false));
            }
        }
        Ok((buf, total))
    }

    /// GET `dst.len()` bytes at `offset` straight into `dst` (no intermediate buffer). When
    /// `expected_size` is given, the object's total size (from Content-Range) must match it, so a
    /// size taken from an earlier listing can never yield a silently truncated object. Broken or
    /// stalled bodies are retried like [`S3Store::get`].
    pub async fn get_range_into(
        &self,
        bucket: &str,
        key: &str,
        offset: u64,
        dst: &mut [u8],
        expected_size: Option<u64>,
    ) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        let mut attempt = 1;
        loop {
            match self.range_into_once(bucket, key, offset, dst, expected_size).await {
                Ok(()) => return Ok(()),
                Err((_, true)) if attempt < self.cfg.max_attempts => {
                    tokio::time::sleep(backoff(self.cfg.initial_backoff, attempt)).await;
                    attempt += 1;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    async fn range_into_once(
        &self,
        bucket: &str,
        key: &str,
        offset: u64,
        dst: &mut [u8],
        expected_size: Option<u64>,
    ) -> std::result::Result<(), (Error, bool)> {
        let uri = Self::uri(bucket, key);
        let len = dst.len() as u64;
        let failed =
            |kind: ErrorKind, msg: String, retryable: bool| (Error::new(kind, Some(&uri), msg), retryable);
        let resp = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .range(format!("bytes={}-{}", offset, offset + len - 1))
            .send()
            .await
            .map_err(|e| (map_sdk_err(e, &uri), false))?;
        if let (Some(want), Some(total)) =
            (expected_size, resp.content_range().and_then(total_from_content_range))
        {
            if want != total {
                let msg = format!(
                    "object is {total} bytes now, but {want} when listed: it changed while being read"
                );
                return Err(failed(ErrorKind::Io, msg, false));
            }
        }
        let read_timeout = self.cfg.read_timeout;
        let mut body = resp.body;
        let mut filled = 0usize;
        while let Some(chunk) = next_chunk(&mut body, read_timeout, &uri).await? {
            let end = filled + chunk.len();
            if end > dst.len() {
                let msg = format!("server sent more than the {len} bytes asked for at offset {offset}");
                return Err(failed(ErrorKind::Io, msg, false));
            }
            // The one honest copy: network chunk into its offset of the final buffer.
            dst[filled..end].copy_from_slice(&chunk);
            filled = end;
        }
        if filled != dst.len() {
            let msg = format!("range at offset {offset} returned {filled} of {len} bytes");
            return Err(failed(ErrorKind::InvalidRange, msg, false));
        }
        Ok(())
    }

    pub async fn stat(&self, bucket: &str, key: &str) -> Result<ObjectInfo> {
        let uri = Self::uri(bucket, key);
        let head = self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| map_sdk_err(e, &uri))?;
        Ok(ObjectInfo {
            size: head.content_length().unwrap_or(0).max(0) as u64,
            etag: head.e_tag().map(|t| t.trim_matches('"').to_owned()),
            last_modified: head.last_modified().map(|d| d.as_secs_f64()),
            is_dir: false,
            uri,
        })
    }

    /// Stream the listing page by page. `delimiter` = one level.
    pub fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: bool,
    ) -> impl futures::Stream<Item = Result<ListPage>> {
        let bucket_owned = bucket.to_owned();
        let list_uri = Self::uri(bucket, prefix);
        let pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_delimiter(delimiter.then(|| "/".to_owned()))
            .into_paginator()
            .send();
        futures::stream::unfold(pages, |mut pages| async move { pages.next().await.map(|p| (p, pages)) }).map(
            move |page| {
                let page = page.map_err(|e| map_sdk_err(e, &list_uri))?;
                let mut out = Vec::with_capacity(page.key_count().unwrap_or(0).max(0) as usize);
                for p in page.common_prefixes() {
                    if let Some(prefix) = p.prefix() {
                        out.push(ObjectInfo::dir(format!("s3://{bucket_owned}/{prefix}")));
                    }
                }
                for o in page.contents() {
                    if let Some(key) = o.key() {
                        out.push(ObjectInfo {
                            uri: format!("s3://{bucket_owned}/{key}"),
                            size: o.size().unwrap_or(0).max(0) as u64,
                            etag: o.e_tag().map(|t| t.trim_matches('"').to_owned()),
                            last_modified: o.last_modified().map(|d| d.as_secs_f64()),
                            is_dir: false,
                        });
                    }
                }
                Ok(out)
            },
        )
    }

    /// Write an object. Every request body carries its CRC32C (`x-amz-checksum-crc32c`, hardware
    /// accelerated), which the server checks before storing anything: a body altered on the way
    /// is refused (`BadDigest`), never stored. With that check in place the payload is not also
    /// hashed with SHA-256 for SigV4 (`UNSIGNED-PAYLOAD`), the largest client-side CPU cost of an
    /// upload; headers are still signed.
    pub async fn put(&self, bucket: &str, key: &str, data: Bytes) -> Result<()> {
        let uri = Self::uri(bucket, key);
        if (data.len() as u64) < self.cfg.multipart_threshold {
            self.client
                .put_object()
                .bucket(bucket)
                .key(key)
                .checksum_crc32_c(crc32c(&data))
                .body(ByteStream::from(data))
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| map_sdk_err(e, &uri))?;
            return Ok(());
        }
        self.put_multipart(bucket, key, data, &uri).await
    }

    async fn put_multipart(&self, bucket: &str, key: &str, data: Bytes, uri: &str) -> Result<()> {
        let len = data.len() as u64;
        // Grow the part size (whole MiB) when the object would need more than 10,000 parts.
        let part_size = self.cfg.part_size.max(len.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .send()
            .await
            .map_err(|e| map_sdk_err(e, uri))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| {
                Error::new(ErrorKind::Io, Some(uri), "CreateMultipartUpload returned no upload id")
            })?
            .to_owned();
        let mut guard = AbortGuard {
            client: self.client.clone(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            upload_id: Some(upload_id.clone()),
        };
        let result = async {
            let parts = futures::stream::iter((0..len.div_ceil(part_size)).map(|i| {
                let start = (i * part_size) as usize;
                let end = ((i + 1) * part_size).min(len) as usize;
                let number = i as i32 + 1;
                let body = data.slice(start..end); // zero-copy view of the caller's buffer
                let req = self
                    .client
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .checksum_crc32_c(crc32c(&body))
                    .body(ByteStream::from(body));
                async move {
                    let out = req
                        .customize()
                        .disable_payload_signing()
                        .send()
                        .await
                        .map_err(|e| map_sdk_err(e, uri))?;
                    Ok::<_, Error>(
                        CompletedPart::builder()
                            .set_e_tag(out.e_tag)
                            .set_checksum_crc32_c(out.checksum_crc32_c)
                            .part_number(number)
                            .build(),
                    )
                }
            }))
            .buffer_unordered(self.cfg.max_concurrency)
            .try_collect::<Vec<_>>()
            .await?;
            let mut parts = parts;
            parts.sort_by_key(|p| p.part_number());
            self.client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| map_sdk_err(e, uri))?;
            Ok::<_, Error>(())
        }
        .await;
        match result {
            Ok(()) => {
                guard.upload_id = None;
                Ok(())
            }
            Err(e) => {
                guard.abort_now().await;
                Err(e)
            }
        }
    }

    pub async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        let uri = Self::uri(bucket, key);
        self.client.delete_object().bucket(bucket).key(key).send().await.map_err(|e| map_sdk_err(e, &uri))?;
        Ok(())
    }

    /// Delete up to 1,000 keys in one request; any per-key failure is an error.
    pub async fn delete_batch(&self, bucket: &str, keys: Vec<String>) -> Result<usize> {
        let n = keys.len();
        let uri = Self::uri(bucket, keys.first().map_or("", String::as_str));
        let objects = keys
            .into_iter()
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::new(ErrorKind::Io, Some(&uri), e.to_string()))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| Error::new(ErrorKind::Io, Some(&uri), e.to_string()))?;
        let out = self
            .client
            .delete_objects()
            .bucket(bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| map_sdk_err(e, &uri))?;
        if let Some(err) = out.errors().first() {
            let key = err.key().unwrap_or_default();
            let code = err.code().unwrap_or_default();
            let kind = classify(0, Some(code));
            return Err(Error::new(
                if kind == ErrorKind::Io { ErrorKind::Io } else { kind },
                Some(&Self::uri(bucket, key)),
                format!("delete failed: {code}: {}", err.message().unwrap_or_default()),
            ));
        }
        Ok(n)
    }

    pub async fn create_bucket(&self, bucket: &str) -> Result<()> {
        let uri = format!("s3://{bucket}");
        let region = self.client.config().region().map(|r| r.to_string()).unwrap_or_default();
        let mut req = self.client.create_bucket().bucket(bucket);
        if !region.is_empty() && region != "us-east-1" {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region.as_str()))
                    .build(),
            );
        }
        req.send().await.map_err(|e| map_sdk_err(e, &uri))?;
        Ok(())
    }

    pub async fn delete_bucket(&self, bucket: &str) -> Result<()> {
        let uri = format!("s3://{bucket}");
        self.client.delete_bucket().bucket(bucket).send().await.map_err(|e| map_sdk_err(e, &uri))?;
        Ok(())
    }
}

/// The next chunk of a response body. The SDK's read timeout covers the wait for the headers; this
/// one covers a body that stalls. Failures here are retryable (the request can be sent again).
async fn next_chunk(
    body: &mut ByteStream,
    read_timeout: Duration,
    uri: &str,
) -> std::result::Result<Option<Bytes>, (Error, bool)> {
    match tokio::time::timeout(read_timeout, body.next()).await {
        Err(_) => {
            let msg = format!("no data for {read_timeout:?} while reading the response body");
            Err((Error::new(ErrorKind::Timeout, Some(uri), msg), true))
        }
        Ok(None) => Ok(None),
        Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
        Ok(Some(Err(e))) => Err((Error::new(ErrorKind::Io, Some(uri), crate::error::chain(&e)), true)),
    }
}

/// Aborts a multipart upload that did not complete, so no partial object or orphaned parts remain.
/// `abort_now` runs it inline on failure; on drop (cancellation, Ctrl-C) a tracked task runs it.
struct AbortGuard {
    client: Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
}

impl AbortGuard {
    fn request(&self, id: &str) -> impl std::future::Future<Output = ()> + Send + 'static {
        let req = self.client.abort_multipart_upload().bucket(&self.bucket).key(&self.key).upload_id(id);
        async move {
            // Best effort, bounded: the upload is already failing; its error is what the user sees.
            let _ = tokio::time::timeout(Duration::from_secs(10), req.send()).await;
        }
    }

    async fn abort_now(&mut self) {
        if let Some(id) = self.upload_id.take() {
            self.request(&id).await;
        }
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if let Some(id) = self.upload_id.take() {
            if let Ok(ctx) = context() {
                drop(ctx.spawn(self.request(&id)));
            }
        }
    }
}

/// Jittered exponential backoff before retry number `attempt` (1-based): uniform in
/// [base * 2^(attempt-1) / 2, base * 2^(attempt-1)], capped at 20 s.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let full = base.saturating_mul(1u32 << (attempt - 1).min(16)).min(Duration::from_secs(20));
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let jitter = f64::from(nanos % 1000) / 1000.0; // cheap, good enough to de-synchronise retries
    full.mul_f64(0.5 + 0.5 * jitter)
}

/// Total object size from a `Content-Range: bytes a-b/total` header.
fn total_from_content_range(v: &str) -> Option<u64> {
    v.rsplit_once('/').and_then(|(_, t)| t.parse().ok())
}

/// Classify an S3 error code / HTTP status.
fn classify(status: u16, code: Option<&str>) -> ErrorKind {
    match code {
        Some("NoSuchKey" | "NoSuchBucket" | "NotFound" | "NoSuchUpload") => ErrorKind::NotFound,
        Some(
            "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "InvalidToken"
            | "AllAccessDisabled"
            | "AccountProblem",
        ) => ErrorKind::PermissionDenied,
        Some(
            "SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded" | "TooManyRequests",
        ) => ErrorKind::Throttled,
        Some("InvalidRange") => ErrorKind::InvalidRange,
        Some("RequestTimeout") => ErrorKind::Timeout,
        Some("InvalidBucketName" | "InvalidArgument" | "KeyTooLongError") => ErrorKind::InvalidUri,
        _ => match status {
            404 => ErrorKind::NotFound,
            401 | 403 => ErrorKind::PermissionDenied,
            416 => ErrorKind::InvalidRange,
            429 | 503 => ErrorKind::Throttled,
            408 => ErrorKind::Timeout,
            _ => ErrorKind::Io,
        },
    }
}

/// Map an SDK error about `uri` to our error, keeping the cause chain (never credentials).
pub(crate) fn map_sdk_err<E>(err: SdkError<E, HttpResponse>, uri: &str) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let kind = match &err {
        SdkError::TimeoutError(_) => ErrorKind::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => ErrorKind::Timeout,
        SdkError::DispatchFailure(_) => ErrorKind::Io,
        SdkError::ServiceError(s) => classify(s.raw().status().as_u16(), s.err().code()),
        SdkError::ConstructionFailure(_) => {
            let text = crate::error::chain(&err);
            if text.contains("credentials") {
                ErrorKind::PermissionDenied
            } else {
                ErrorKind::Io
            }
        }
        _ => ErrorKind::Io,
    };
    let message = match &err {
        SdkError::ServiceError(s) => {
            let meta = s.err().meta();
            let status = s.raw().status().as_u16();
            let mut m =
                format!("{}: {}", meta.code().unwrap_or("error"), meta.message().unwrap_or("(no message)"));
            m.push_str(&format!(" (HTTP {status}"));
            if let Some(id) = meta.extra("aws_request_id") {
                m.push_str(&format!(", request id {id}"));
            }
            m.push(')');
            m
        }
        _ => crate::error::chain(&err),
    };
    Error::new(kind, Some(uri), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_codes_and_statuses() {
        assert_eq!(classify(404, Some("NoSuchKey")), ErrorKind::NotFound);
        assert_eq!(classify(404, None), ErrorKind::NotFound);
        assert_eq!(classify(403, Some("InvalidAccessKeyId")), ErrorKind::PermissionDenied);
        assert_eq!(classify(503, Some("SlowDown")), ErrorKind::Throttled);
        assert_eq!(classify(416, None), ErrorKind::InvalidRange);
        assert_eq!(classify(500, Some("InternalError")), ErrorKind::Io);
    }

    #[test]
    fn parses_content_range() {
        assert_eq!(total_from_content_range("bytes 0-4/5"), Some(5));
        assert_eq!(total_from_content_range("bytes 0-4/*"), None);
    }
}
