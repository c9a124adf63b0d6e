//! The `s3://` backend over aws-sdk-s3: one [`S3Backend`] per bucket and configuration.
//!
//! SDK clients are cached per process (see [`crate::runtime`]) and per resolved configuration.
//! Uploads carry a CRC32C header computed here; the SDK's own automatic checksums (aws-chunked
//! trailers) are used only when an operation requires them, so strict S3-compatible servers
//! accept uploads.
//!
//! Retries: `max_attempts` counts every attempt of one request once. Requests without a streamed
//! body use the SDK's standard retry mode (jittered exponential backoff on throttling, 5xx,
//! timeouts and connection errors). GETs disable the SDK's retries and retry here instead, so a
//! failure of the headers and one of the body (a reset, a stall) draw on the same budget.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
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
use futures::stream::BoxStream;

use super::endpoints::{split_endpoints, Endpoints, Lease, Policy};
use super::http::{check_size, total_from_content_range, Resume};
use super::{Backend, MultipartUpload};
use crate::buf::{ObjBuf, POOL_MIN};
use crate::config::StoreConfig;
use crate::error::{Error, ErrorKind, Result, ServerDetail};
use crate::runtime::context;
use crate::types::{ByteRange, GetOptions, GetResult, ListPage, ObjectInfo, PartInfo, PutOptions};

/// S3's CopyObject limit.
const MAX_COPY_OBJECT: u64 = 5 * 1024 * 1024 * 1024;
/// `x-amz-copy-source` is `bucket/key` with the key URL-encoded (its `/` kept).
const COPY_SOURCE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

/// The base64 CRC32C (Castagnoli) of `data`, as `x-amz-checksum-crc32c` carries it.
fn crc32c(data: &[u8]) -> String {
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32;
    aws_smithy_types::base64::encode(crc.to_be_bytes())
}

/// Everything that distinguishes one client from another. Holds secrets: never printed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey {
    endpoints: Vec<String>,
    policy: Policy,
    region: String,
    static_creds: Option<(String, String, Option<String>)>,
    profile: Option<String>,
    path_style: bool,
    connect_timeout: Duration,
    read_timeout: Duration,
    max_attempts: u32,
    initial_backoff: Duration,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl ClientKey {
    async fn resolve(cfg: &StoreConfig) -> ClientKey {
        let endpoints = cfg.resolved_endpoint().map(|e| split_endpoints(&e)).unwrap_or_default();
        // validated with the config: an unknown name never gets here
        let policy = Policy::parse(cfg.endpoint_policy.as_deref().unwrap_or("round_robin"))
            .unwrap_or(Policy::RoundRobin);
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
            path_style: cfg.force_path_style.unwrap_or(!endpoints.is_empty()),
            endpoints,
            policy,
            region: region.unwrap_or_else(|| "us-east-1".to_owned()),
            static_creds,
            profile,
            connect_timeout: cfg.connect_timeout,
            read_timeout: cfg.read_timeout,
            max_attempts: cfg.max_attempts,
            initial_backoff: cfg.initial_backoff,
        }
    }

    /// One client per endpoint (one for AWS's own when none is set), sharing the settings.
    async fn build(&self) -> Endpoints {
        if self.endpoints.is_empty() {
            let (client, single) = self.client(None).await;
            return Endpoints::new(vec![(None, client, single)], self.policy);
        }
        let mut members = Vec::with_capacity(self.endpoints.len());
        for ep in &self.endpoints {
            let (client, single) = self.client(Some(ep)).await;
            members.push((Some(ep.clone()), client, single));
        }
        Endpoints::new(members, self.policy)
    }

    /// The endpoint's client, and the same with the SDK's retries off (for s3dlio's own loops).
    async fn client(&self, endpoint: Option<&str>) -> (Client, Client) {
        // operation_timeout is not the SDK's: s3dlio applies it around a whole operation, body and
        // its own retries included (crate::ops).
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .build();
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
        if let Some(ep) = endpoint {
            b = b.endpoint_url(ep);
        }
        let single = b.clone().retry_config(RetryConfig::disabled()).build();
        (Client::from_conf(b.build()), Client::from_conf(single))
    }
}

/// One bucket, with the client and settings to reach it.
pub struct S3Backend {
    endpoints: Arc<Endpoints>,
    bucket: String,
    max_attempts: u32,
    initial_backoff: Duration,
    read_timeout: Duration,
}

/// A response without its body read yet, and what its headers said.
struct Opened {
    body: Body,
    /// Bytes the caller gets from `body` (Content-Length, or the range asked for when the server
    /// sent the whole object).
    len: Option<usize>,
    /// The whole object's size (Content-Range, or Content-Length of a whole-object GET).
    total: Option<u64>,
    etag: Option<String>,
    /// The endpoint, in flight until the body has been read.
    _lease: Lease,
}

fn etag_of(t: Option<&str>) -> Option<String> {
    t.map(|t| t.trim_matches('"').to_owned())
}

/// The ETag S3 gives a multipart object: the MD5 of the parts' binary MD5s, then `-<parts>`.
/// `None` when a part's ETag is not an MD5 (some servers use other ETags).
fn multipart_etag(parts: &[PartInfo]) -> Option<String> {
    use md5::Digest;
    let mut h = md5::Md5::new();
    for p in parts {
        let hex = p.etag.as_deref()?;
        if hex.len() != 32 {
            return None;
        }
        for i in (0..32).step_by(2) {
            h.update([u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()?]);
        }
    }
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("{hex}-{}", parts.len()))
}

/// S3's composite checksum of a multipart object: the CRC32C of the parts' binary CRC32Cs, then
/// `-<parts>`. `None` when a part has no CRC32C.
fn composite_crc32c(parts: &[PartInfo]) -> Option<String> {
    let mut raw = Vec::with_capacity(parts.len() * 4);
    for p in parts {
        let b = aws_smithy_types::base64::decode(p.crc32c.as_deref()?).ok()?;
        raw.extend_from_slice(&b);
    }
    Some(format!("{}-{}", crc32c(&raw), parts.len()))
}

impl S3Backend {
    /// The backend for `bucket` under `cfg`: the process's cached SDK client for the resolved
    /// settings (endpoint, region, credentials, timeouts), built on first use.
    pub async fn new(bucket: &str, cfg: &StoreConfig) -> Result<S3Backend> {
        let ctx = context()?;
        let key = ClientKey::resolve(cfg).await;
        let cached = ctx.clients().get(&key);
        let endpoints = match cached {
            Some(c) => c,
            None => {
                let c = Arc::new(key.build().await);
                ctx.clients().get_or_insert(key, c)
            }
        };
        Ok(S3Backend {
            endpoints,
            bucket: bucket.to_owned(),
            max_attempts: cfg.max_attempts,
            initial_backoff: cfg.initial_backoff,
            read_timeout: cfg.read_timeout,
        })
    }

    /// Retry `attempt` while it fails transiently, `max_attempts` attempts in all.
    async fn retrying<T, F, Fut>(&self, attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = Result<T>> + Send,
    {
        super::http::retrying(self.max_attempts, self.initial_backoff, attempt).await
    }

    /// Send one GET (no SDK retries: the caller retries, body included) and read its headers.
    async fn open(&self, key: &str, range: Option<ByteRange>, if_match: Option<&str>) -> Result<Opened> {
        let uri = self.uri(key);
        let lease = self.endpoints.lease();
        let mut req = lease
            .single_attempt()
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_match(if_match.map(str::to_owned));
        if let Some(r) = range {
            req = req.range(match r.last_byte(&uri)? {
                Some(last) => format!("bytes={}-{last}", r.offset),
                None => format!("bytes={}-", r.offset),
            });
        }
        let sent = std::time::Instant::now();
        let sent_req = req.send().await.map_err(|e| {
            let err = map_sdk_err(e, &uri);
            match range {
                Some(r) if err.kind() == ErrorKind::InvalidRange => Error::invalid_range(
                    &uri,
                    format!("range {} is outside the object: {}", r.describe(), err.message()),
                ),
                _ => err,
            }
        });
        let resp = lease.record(sent_req)?;
        crate::metrics::ttfb(crate::metrics::Op::Get, sent.elapsed());
        let len = resp.content_length().and_then(|n| usize::try_from(n).ok());
        let etag = etag_of(resp.e_tag());
        let (total, body) = match (range, resp.content_range()) {
            (_, Some(cr)) => (total_from_content_range(cr), Body::new(resp.body, 0, None)),
            (None, None) => (len.map(|n| n as u64), Body::new(resp.body, 0, None)),
            (Some(r), None) => {
                let (skip, take, total) = whole_answer(r, len, &uri)?;
                (total, Body::new(resp.body, skip, take))
            }
        };
        let len = body.take.or(len);
        Ok(Opened { etag, body, len, total, _lease: lease })
    }

    /// One whole attempt of a GET: headers and body.
    async fn get_once(&self, key: &str, opts: &GetOptions) -> Result<GetResult> {
        let uri = self.uri(key);
        let opened = self.open(key, opts.range, opts.if_match.as_deref()).await?;
        check_size(opts.expected_size, opened.total, &uri)?;
        let Opened { mut body, len, total, etag, _lease } = opened;
        let short = |got: usize, n: usize| {
            Error::new(ErrorKind::Io, Some(&uri), format!("body ended after {got} of {n} bytes"))
        };
        // The one honest copy: network chunks into one contiguous buffer of the announced size
        // (recycled from the buffer pool, or fresh: see buf.rs).
        let data = match len {
            Some(n) if n >= POOL_MIN => {
                let mut buf = ObjBuf::new(n, &uri)?;
                let mut filled = 0;
                fill_from(&mut body, buf.as_mut_slice(), &mut filled, self.read_timeout, &uri).await?;
                if filled != n {
                    return Err(short(filled, n));
                }
                buf.freeze()
            }
            _ => {
                let mut buf = BytesMut::with_capacity(len.unwrap_or(0));
                while let Some(chunk) = body.next(self.read_timeout, &uri).await? {
                    buf.extend_from_slice(&chunk);
                }
                if let Some(n) = len {
                    if buf.len() != n {
                        return Err(short(buf.len(), n));
                    }
                }
                buf.freeze()
            }
        };
        if let (Some(ByteRange { offset, length: Some(want) }), false) = (opts.range, opts.allow_short) {
            if data.len() as u64 != want {
                let size = total.map_or_else(|| "unknown".to_owned(), |t| t.to_string());
                return Err(Error::invalid_range(
                    &uri,
                    format!("range {offset}+{want} extends past the end of the object (size {size})"),
                ));
            }
        }
        Ok(GetResult { data, size: total, etag })
    }

    /// One attempt of a ranged read into `dst`: only what `resume` says is still missing,
    /// pinned to the version the first bytes came from.
    async fn get_into_once(
        &self,
        key: &str,
        offset: u64,
        dst: &mut [u8],
        opts: &GetOptions,
        resume: &mut Resume,
    ) -> Result<Option<String>> {
        let uri = self.uri(key);
        let range = resume.rest(offset, dst.len());
        let opened = self.open(key, Some(range), resume.version.as_deref()).await?;
        check_size(opts.expected_size, opened.total, &uri)?;
        let Opened { mut body, etag, .. } = opened;
        if resume.version.is_none() {
            resume.version.clone_from(&etag);
        }
        let start = resume.filled;
        let mut got = 0;
        let r = fill_from(&mut body, &mut dst[start..], &mut got, self.read_timeout, &uri).await;
        resume.filled = start + got;
        r?;
        if resume.filled != dst.len() {
            return Err(Error::invalid_range(
                &uri,
                format!("range at offset {offset} returned {} of {} bytes", resume.filled, dst.len()),
            ));
        }
        Ok(etag)
    }
}

/// Stream a body into `dst` (the one honest copy: network chunk into its offset of the final
/// buffer), advancing `filled` as chunks land (after an error it still counts what arrived). More
/// bytes than `dst` holds is an error.
async fn fill_from(
    body: &mut Body,
    dst: &mut [u8],
    filled: &mut usize,
    read_timeout: Duration,
    uri: &str,
) -> Result<()> {
    while let Some(chunk) = body.next(read_timeout, uri).await? {
        let end = *filled + chunk.len();
        if end > dst.len() {
            let msg = format!("server sent more than the {} bytes it announced", dst.len());
            return Err(Error::new(ErrorKind::Io, Some(uri), msg));
        }
        dst[*filled..end].copy_from_slice(&chunk);
        *filled = end;
    }
    Ok(())
}

#[async_trait]
impl Backend for S3Backend {
    fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    fn ranged_reads(&self) -> bool {
        true
    }

    async fn get(&self, key: &str, opts: &GetOptions) -> Result<GetResult> {
        self.retrying(|| self.get_once(key, opts)).await
    }

    async fn get_into(
        &self,
        key: &str,
        offset: u64,
        dst: &mut [u8],
        opts: &GetOptions,
    ) -> Result<Option<String>> {
        if dst.is_empty() {
            return Ok(None);
        }
        // A retry resumes from the byte the failed attempt reached.
        let mut resume = Resume::pinned(opts.if_match.as_deref());
        super::http::retry_loop!(
            self.max_attempts,
            self.initial_backoff,
            self.get_into_once(key, offset, dst, opts, &mut resume).await
        )
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo> {
        let uri = self.uri(key);
        let head = self
            .endpoints
            .run(|c| {
                let req = c.head_object().bucket(&self.bucket).key(key);
                let uri = &uri;
                async move { req.send().await.map_err(|e| map_sdk_err(e, uri)) }
            })
            .await?;
        Ok(ObjectInfo {
            size: head.content_length().unwrap_or(0).max(0) as u64,
            etag: etag_of(head.e_tag()),
            last_modified: head.last_modified().map(|d| d.as_secs_f64()),
            is_dir: false,
            uri,
        })
    }

    /// Every request body carries its CRC32C (`x-amz-checksum-crc32c`, hardware accelerated),
    /// which the server checks before storing anything: a body altered on the way is refused
    /// (`BadDigest`), never stored. With that check in place the payload is not also hashed with
    /// SHA-256 for SigV4 (`UNSIGNED-PAYLOAD`), the largest client-side CPU cost of an upload;
    /// headers are still signed.
    async fn put(&self, key: &str, data: Bytes, _opts: &PutOptions) -> Result<()> {
        let uri = self.uri(key);
        let crc = crc32c(&data);
        self.endpoints
            .run(|c| {
                let req = c
                    .put_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .checksum_crc32_c(crc.clone())
                    .body(ByteStream::from(data.clone()))
                    .customize()
                    .disable_payload_signing();
                let uri = &uri;
                async move { req.send().await.map_err(|e| map_sdk_err(e, uri)) }
            })
            .await?;
        Ok(())
    }

    async fn start_multipart(&self, key: &str, _opts: &PutOptions) -> Result<Box<dyn MultipartUpload>> {
        let uri = self.uri(key);
        let created = self
            .endpoints
            .run(|c| {
                let req = c
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .checksum_algorithm(ChecksumAlgorithm::Crc32C);
                let uri = &uri;
                async move { req.send().await.map_err(|e| map_sdk_err(e, uri)) }
            })
            .await?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| {
                Error::new(ErrorKind::Io, Some(&uri), "CreateMultipartUpload returned no upload id")
            })?
            .to_owned();
        Ok(Box::new(S3Multipart {
            endpoints: Arc::clone(&self.endpoints),
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            uri,
            upload_id,
            finished: false,
        }))
    }

    /// One request per page, retried by s3dlio's own loop (the SDK's retries off, as for GETs):
    /// every attempt counts once against `max_attempts`, and inside a pool's scope (a listing's,
    /// see `ops::pages`) throttled pages wait on the pool's probes.
    fn list(&self, prefix: &str, delimiter: bool) -> BoxStream<'static, Result<ListPage>> {
        let (endpoints, bucket, prefix) =
            (Arc::clone(&self.endpoints), self.bucket.clone(), prefix.to_owned());
        let list_uri = self.uri(&prefix);
        let (max_attempts, initial_backoff) = (self.max_attempts, self.initial_backoff);
        super::http::paged(move |marker: Option<String>| {
            let (endpoints, bucket, prefix, list_uri) =
                (Arc::clone(&endpoints), bucket.clone(), prefix.clone(), list_uri.clone());
            async move {
                let page = super::http::retrying(max_attempts, initial_backoff, || {
                    let lease = endpoints.lease();
                    let req = lease
                        .single_attempt()
                        .list_objects_v2()
                        .bucket(&bucket)
                        .prefix(&prefix)
                        .set_delimiter(delimiter.then(|| "/".to_owned()))
                        .set_continuation_token(marker.clone());
                    let uri = list_uri.clone();
                    async move { lease.record(req.send().await.map_err(|e| map_sdk_err(e, &uri))) }
                })
                .await?;
                let mut out = Vec::with_capacity(page.key_count().unwrap_or(0).max(0) as usize);
                for p in page.common_prefixes() {
                    if let Some(prefix) = p.prefix() {
                        out.push(ObjectInfo::dir(format!("s3://{bucket}/{prefix}")));
                    }
                }
                for o in page.contents() {
                    if let Some(key) = o.key() {
                        out.push(ObjectInfo {
                            uri: format!("s3://{bucket}/{key}"),
                            size: o.size().unwrap_or(0).max(0) as u64,
                            etag: etag_of(o.e_tag()),
                            last_modified: o.last_modified().map(|d| d.as_secs_f64()),
                            // A folder marker (the console's "Create folder"): never a sample.
                            is_dir: key.ends_with('/'),
                        });
                    }
                }
                let next = if page.is_truncated().unwrap_or(false) {
                    match page.next_continuation_token() {
                        Some(t) => Some(t.to_owned()),
                        None => {
                            let msg = "the listing is truncated but carries no continuation token";
                            return Err(Error::new(ErrorKind::Io, Some(&list_uri), msg));
                        }
                    }
                } else {
                    None
                };
                Ok((out, next))
            }
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let uri = self.uri(key);
        self.endpoints
            .run(|c| {
                let req = c.delete_object().bucket(&self.bucket).key(key);
                let uri = &uri;
                async move { req.send().await.map_err(|e| map_sdk_err(e, uri)) }
            })
            .await?;
        Ok(())
    }

    async fn delete_many(&self, keys: Vec<String>) -> Result<usize> {
        let n = keys.len();
        if n == 0 {
            return Ok(0);
        }
        let uri = self.uri(keys.first().map_or("", String::as_str));
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
            .endpoints
            .run(|c| {
                let req = c.delete_objects().bucket(&self.bucket).delete(delete.clone());
                let uri = &uri;
                async move { req.send().await.map_err(|e| map_sdk_err(e, uri)) }
            })
            .await?;
        if let Some(err) = out.errors().first() {
            let key = err.key().unwrap_or_default();
            let code = err.code().unwrap_or_default();
            return Err(Error::new(
                classify(0, Some(code)),
                Some(&self.uri(key)),
                format!("delete failed: {code}: {}", err.message().unwrap_or_default()),
            )
            .with_detail(ServerDetail {
                status: None,
                code: Some(code.to_owned()),
                request_id: None,
            }));
        }
        Ok(n)
    }

    fn delete_batch_limit(&self) -> usize {
        1000
    }

    /// CopyObject (one request, up to S3's 5 GiB limit; larger objects are streamed instead).
    async fn copy_within(&self, src_key: &str, dst_key: &str, size: u64) -> Result<bool> {
        if size > MAX_COPY_OBJECT {
            return Ok(false);
        }
        let uri = self.uri(dst_key);
        let source =
            format!("{}/{}", self.bucket, percent_encoding::utf8_percent_encode(src_key, COPY_SOURCE));
        self.endpoints
            .run(|c| {
                let req = c.copy_object().bucket(&self.bucket).key(dst_key).copy_source(&source);
                let uri = &uri;
                async move { req.send().await.map_err(|e| map_sdk_err(e, uri)) }
            })
            .await?;
        Ok(true)
    }

    async fn create_container(&self, _key: &str) -> Result<()> {
        let uri = format!("s3://{}", self.bucket);
        let region = self.endpoints.any_client().config().region().map(|r| r.to_string()).unwrap_or_default();
        self.endpoints
            .run(|c| {
                let mut req = c.create_bucket().bucket(&self.bucket);
                if !region.is_empty() && region != "us-east-1" {
                    req = req.create_bucket_configuration(
                        CreateBucketConfiguration::builder()
                            .location_constraint(BucketLocationConstraint::from(region.as_str()))
                            .build(),
                    );
                }
                let uri = &uri;
                async move { req.send().await.map_err(|e| map_sdk_err(e, uri)) }
            })
            .await?;
        Ok(())
    }

    async fn delete_container(&self, _key: &str) -> Result<()> {
        let uri = format!("s3://{}", self.bucket);
        self.endpoints
            .run(|c| {
                let req = c.delete_bucket().bucket(&self.bucket);
                let uri = &uri;
                async move { req.send().await.map_err(|e| map_sdk_err(e, uri)) }
            })
            .await?;
        Ok(())
    }
}

/// A multipart upload in progress. Dropped before `complete` or `abort` (cancellation, Ctrl-C),
/// it is aborted on the runtime's cleanup tracker, which an interrupted blocking call waits for
/// before it returns.
struct S3Multipart {
    endpoints: Arc<Endpoints>,
    bucket: String,
    key: String,
    uri: String,
    upload_id: String,
    finished: bool,
}

impl S3Multipart {
    fn abort_request(&self) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let uri = self.uri.clone();
        let (endpoints, bucket, key, upload_id) =
            (Arc::clone(&self.endpoints), self.bucket.clone(), self.key.clone(), self.upload_id.clone());
        let abort = {
            let (endpoints, bucket, key, upload_id) =
                (Arc::clone(&endpoints), bucket.clone(), key.clone(), upload_id.clone());
            move || {
                let lease = endpoints.lease();
                let req =
                    lease.client().abort_multipart_upload().bucket(&bucket).key(&key).upload_id(&upload_id);
                async move {
                    let sent = req.send().await;
                    drop(lease);
                    sent
                }
            }
        };
        async move {
            // Bounded: the upload is already failing; its error is what the user sees.
            let first = match tokio::time::timeout(Duration::from_secs(10), abort()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(map_sdk_err(e, &uri)),
                Err(_) => {
                    Err(Error::new(ErrorKind::Timeout, Some(&uri), "AbortMultipartUpload took over 10 s"))
                }
            };
            // A part whose body had already reached the server when the upload was abandoned can
            // still be stored after the abort, and brings the upload back (S3's documentation
            // says to abort again). A short sweep, a tracked task of its own (it counts in
            // live_tasks) that an interrupted call does not wait for, aborts it again.
            if first.is_ok() {
                if let Ok(ctx) = context() {
                    drop(ctx.spawn(async move {
                        for wait_ms in [250u64, 500, 500] {
                            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                            let lease = endpoints.lease();
                            let listed = lease
                                .client()
                                .list_multipart_uploads()
                                .bucket(&bucket)
                                .prefix(&key)
                                .send()
                                .await;
                            drop(lease);
                            let back = listed.is_ok_and(|l| {
                                l.uploads().iter().any(|u| u.upload_id() == Some(upload_id.as_str()))
                            });
                            if back {
                                let _ = tokio::time::timeout(Duration::from_secs(5), abort()).await;
                            }
                        }
                    }));
                }
            }
            first
        }
    }

    /// After CompleteMultipartUpload: the object must be these parts, whole. The server's
    /// composite CRC32C (when it reports one) must be the one of the parts' CRC32Cs, and a HEAD
    /// must show the size written (and the multipart ETag of the parts, where part ETags are
    /// MD5s). A failed check is an error; the object is left as it is (it may be a concurrent
    /// writer's, which must not be deleted).
    async fn verify_completed(&self, parts: &[PartInfo], size: u64, composite: Option<&str>) -> Result<()> {
        let mut problem = None;
        if let (Some(got), Some(want)) = (composite, composite_crc32c(parts)) {
            if got.contains('-') && got != want {
                problem = Some(format!("the server's composite CRC32C is {got}, the parts' is {want}"));
            }
        }
        if problem.is_none() {
            let lease = self.endpoints.lease();
            let head = lease.client().head_object().bucket(&self.bucket).key(&self.key).send().await;
            drop(lease);
            match head {
                Ok(h) => {
                    let got = h.content_length().unwrap_or(-1);
                    if got < 0 || got as u64 != size {
                        problem = Some(format!("{size} bytes were written but the object has {got}"));
                    } else if let (Some(want), Some(etag)) = (multipart_etag(parts), etag_of(h.e_tag())) {
                        if etag != want {
                            problem = Some(format!("ETag {etag} is not the parts' multipart ETag {want}"));
                        }
                    }
                }
                Err(e) => return Err(map_sdk_err(e, &self.uri)),
            }
        }
        match problem {
            None => Ok(()),
            Some(p) => Err(Error::new(
                ErrorKind::Io,
                Some(&self.uri),
                format!("the completed upload failed verification (do not trust this object): {p}"),
            )),
        }
    }

    /// After a failed CompleteMultipartUpload: is the object there, whole, as these parts? (An
    /// SDK retry of a Complete whose response was lost gets NoSuchUpload although it succeeded.)
    /// A few HEADs a quarter second apart: a server under load can answer the first HEAD before
    /// the completed object is visible (seen with SeaweedFS); the check itself never loosens.
    async fn completed_anyway(&self, parts: &[PartInfo], size: u64) -> bool {
        for attempt in 0..4 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let lease = self.endpoints.lease();
            let head = lease.client().head_object().bucket(&self.bucket).key(&self.key).send().await;
            drop(lease);
            let Ok(head) = head else {
                continue;
            };
            let etag = etag_of(head.e_tag());
            let size_ok = head.content_length().is_some_and(|n| n >= 0 && n as u64 == size);
            let etag_ok = match (multipart_etag(parts), etag) {
                (Some(want), Some(got)) => want == got,
                // A server whose part ETags are not MD5s: at least the part count must match.
                (None, Some(got)) => got.ends_with(&format!("-{}", parts.len())),
                (_, None) => false,
            };
            if size_ok && etag_ok {
                return true;
            }
        }
        false
    }
}

#[async_trait]
impl MultipartUpload for S3Multipart {
    async fn put_part(&self, number: u32, _offset: u64, data: Bytes) -> Result<PartInfo> {
        let number_i32 = i32::try_from(number)
            .map_err(|_| Error::new(ErrorKind::InvalidConfig, Some(&self.uri), "too many parts"))?;
        let sent_crc = crc32c(&data);
        let out = self
            .endpoints
            .run(|c| {
                let req = c
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .upload_id(&self.upload_id)
                    .part_number(number_i32)
                    .checksum_crc32_c(sent_crc.clone())
                    .body(ByteStream::from(data.clone()))
                    .customize()
                    .disable_payload_signing();
                let uri = &self.uri;
                async move { req.send().await.map_err(|e| map_sdk_err(e, uri)) }
            })
            .await?;
        if let Some(acked) = out.checksum_crc32_c() {
            if acked != sent_crc {
                let msg =
                    format!("part {number}: the server stored CRC32C {acked}, the client sent {sent_crc}");
                return Err(Error::new(ErrorKind::Io, Some(&self.uri), msg));
            }
        }
        Ok(PartInfo { number, etag: etag_of(out.e_tag()), crc32c: Some(sent_crc) })
    }

    async fn complete(mut self: Box<Self>, mut parts: Vec<PartInfo>, size: u64) -> Result<()> {
        parts.sort_by_key(|p| p.number);
        let completed = parts
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .set_e_tag(p.etag.as_ref().map(|e| format!("\"{e}\"")))
                    .set_checksum_crc32_c(p.crc32c.clone())
                    .part_number(i32::try_from(p.number).unwrap_or(i32::MAX))
                    .build()
            })
            .collect();
        let completed = CompletedMultipartUpload::builder().set_parts(Some(completed)).build();
        let sent = self
            .endpoints
            .run(|c| {
                let req = c
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .upload_id(&self.upload_id)
                    .multipart_upload(completed.clone());
                let uri = &self.uri;
                async move { req.send().await.map_err(|e| map_sdk_err(e, uri)) }
            })
            .await;
        match sent {
            Ok(out) => {
                self.finished = true;
                self.verify_completed(&parts, size, out.checksum_crc32_c()).await
            }
            Err(err) => {
                if err.kind() == ErrorKind::NotFound && self.completed_anyway(&parts, size).await {
                    self.finished = true;
                    return Ok(());
                }
                Err(err) // still unfinished: dropping self aborts it
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.finished = true;
        self.abort_request().await
    }
}

impl Drop for S3Multipart {
    fn drop(&mut self) {
        if !self.finished {
            if let Ok(ctx) = context() {
                let abort = self.abort_request();
                drop(ctx.spawn_cleanup(async move {
                    let _ = abort.await;
                }));
            }
        }
    }
}

/// The next chunk of a response body. The SDK's read timeout covers the wait for the headers; this
/// one covers a body that stalls. Failures here are transient (the request can be sent again).
async fn next_chunk(body: &mut ByteStream, read_timeout: Duration, uri: &str) -> Result<Option<Bytes>> {
    match tokio::time::timeout(read_timeout, body.next()).await {
        Err(_) => {
            let msg = format!("no data for {read_timeout:?} while reading the response body");
            Err(Error::new(ErrorKind::Timeout, Some(uri), msg))
        }
        Ok(None) => Ok(None),
        Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
        Ok(Some(Err(e))) => Err(Error::new(ErrorKind::Io, Some(uri), crate::error::chain(&e))),
    }
}

/// A ranged GET answered without `Content-Range`. HTTP lets a server ignore `Range` and send the
/// whole object (200); some S3-compatible servers do so now and then. Returns `(skip, take,
/// total)`: the body bytes to drop before the range, the range's length, and the object's size.
/// A body of exactly the range's length is the range itself (a 206 missing its header). Any other
/// body is a transient I/O error naming what came back, never bytes from the wrong offset.
fn whole_answer(r: ByteRange, len: Option<usize>, uri: &str) -> Result<(usize, Option<usize>, Option<u64>)> {
    let body = len.map(|n| n as u64);
    match (r.length, body) {
        (Some(want), Some(n)) if n == want => Ok((0, None, None)),
        (Some(want), Some(n)) if r.offset.checked_add(want).is_some_and(|end| end <= n) => {
            Ok((r.offset as usize, Some(want as usize), Some(n)))
        }
        (None, Some(n)) if r.offset < n => Ok((r.offset as usize, Some((n - r.offset) as usize), Some(n))),
        _ => {
            let got = body.map_or_else(|| "a body of unknown length".to_owned(), |n| format!("{n} bytes"));
            Err(Error::new(
                ErrorKind::Io,
                Some(uri),
                format!(
                    "the server answered the ranged GET of {} with {got} and no Content-Range",
                    r.describe()
                ),
            ))
        }
    }
}

/// A response body, less `skip` leading bytes and cut after `take` bytes when set (see
/// [`whole_answer`]).
struct Body {
    stream: ByteStream,
    skip: usize,
    take: Option<usize>,
    /// Bytes still to hand out, when `take` is set.
    left: Option<usize>,
}

impl Body {
    fn new(stream: ByteStream, skip: usize, take: Option<usize>) -> Body {
        Body { stream, skip, take, left: take }
    }

    async fn next(&mut self, read_timeout: Duration, uri: &str) -> Result<Option<Bytes>> {
        loop {
            if self.left == Some(0) {
                return Ok(None); // the rest of a whole-object answer is not needed
            }
            let Some(mut chunk) = next_chunk(&mut self.stream, read_timeout, uri).await? else {
                return Ok(None);
            };
            if self.skip > 0 {
                let n = self.skip.min(chunk.len());
                self.skip -= n;
                chunk = chunk.slice(n..);
            }
            if let Some(left) = self.left.as_mut() {
                chunk.truncate(*left);
                *left -= chunk.len();
            }
            if !chunk.is_empty() {
                return Ok(Some(chunk));
            }
        }
    }
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
        Some("PreconditionFailed") => ErrorKind::Changed,
        Some("RequestTimeout") => ErrorKind::Timeout,
        Some("InvalidBucketName" | "InvalidArgument" | "KeyTooLongError") => ErrorKind::InvalidUri,
        _ => match status {
            404 => ErrorKind::NotFound,
            401 | 403 => ErrorKind::PermissionDenied,
            416 => ErrorKind::InvalidRange,
            412 => ErrorKind::Changed,
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
    let detail = match &err {
        SdkError::ServiceError(s) => Some(ServerDetail {
            status: Some(s.raw().status().as_u16()),
            code: s.err().meta().code().map(str::to_owned),
            request_id: s.err().meta().extra("aws_request_id").map(str::to_owned),
        }),
        SdkError::ResponseError(r) => {
            Some(ServerDetail { status: Some(r.raw().status().as_u16()), ..Default::default() })
        }
        _ => None,
    };
    let err = Error::new(kind, Some(uri), message);
    match detail {
        Some(d) => err.with_detail(d),
        None => err,
    }
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
        assert_eq!(classify(412, Some("PreconditionFailed")), ErrorKind::Changed);
    }

    #[test]
    fn multipart_etag_is_md5_of_part_md5s() {
        let part = |n, e: &str| PartInfo { number: n, etag: Some(e.to_owned()), crc32c: None };
        // md5("a") = 0cc175b9c0f1b6a831c399e269772661; md5 of its 16 raw bytes, then "-1".
        let one = multipart_etag(&[part(1, "0cc175b9c0f1b6a831c399e269772661")]).unwrap();
        assert!(one.ends_with("-1") && one.len() == 34, "{one}");
        assert_eq!(multipart_etag(&[part(1, "not-an-md5")]), None);
    }

    #[test]
    fn a_ranged_get_answered_whole_is_cut_to_the_range() {
        let r = |o, l| ByteRange::new(o, l);
        // The whole object (100 bytes) for 10+20: skip 10, take 20, size 100.
        assert_eq!(whole_answer(r(10, Some(20)), Some(100), "u").unwrap(), (10, Some(20), Some(100)));
        // Exactly the range's length: the range itself, size unknown.
        assert_eq!(whole_answer(r(10, Some(20)), Some(20), "u").unwrap(), (0, None, None));
        // Open-ended: from the offset to the end.
        assert_eq!(whole_answer(r(10, None), Some(100), "u").unwrap(), (10, Some(90), Some(100)));
        // Neither: a transient I/O error, never bytes from the wrong place.
        for (range, len) in [(r(10, Some(20)), Some(25)), (r(10, Some(20)), None), (r(100, None), Some(100))]
        {
            let e = whole_answer(range, len, "s3://b/k").unwrap_err();
            assert!(e.is_transient() && e.to_string().contains("no Content-Range"), "{e}");
        }
    }

    #[test]
    fn parses_content_range() {
        assert_eq!(total_from_content_range("bytes 0-4/5"), Some(5));
        assert_eq!(total_from_content_range("bytes 0-4/*"), None);
    }
}
