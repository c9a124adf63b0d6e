//! The `gs://bucket/object` backend: Google Cloud Storage's JSON API spoken directly over hyper,
//! one [`GcsBackend`] per bucket and configuration.
//!
//! * Endpoint: `StorageConfig.endpoint_url`, else `STORAGE_EMULATOR_HOST` (fake-gcs-server and
//!   Google's own clients read it), else `https://storage.googleapis.com`.
//! * Credentials: none against an emulator; otherwise `GOOGLE_APPLICATION_CREDENTIALS` (a service
//!   account key, whose JWT is signed here with RS256, or an `authorized_user` refresh token), else
//!   the metadata server of the VM (`GCE_METADATA_HOST` to override). Access tokens are cached and
//!   refreshed a minute before they expire. Never printed.
//! * Reads: `alt=media` downloads with `Range`, pinned to the generation of the first response
//!   (`ifGenerationMatch`): the generation is the version s3dlio reports as the object's ETag.
//! * Writes: every upload is a multipart upload whose metadata carries the body's CRC32C, which the
//!   service checks before storing anything. A large object is written as parallel parts, each
//!   a temporary object under `.s3dlio-uploads/` at the bucket root, then composed (32 at a time)
//!   into the object; the temporary objects are deleted after completion or abort. The composed
//!   object's CRC32C must equal the combination of the parts' CRC32Cs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use super::http::{self as h, Answer, HttpClient};
use super::{Backend, MultipartUpload};
use crate::config::StoreConfig;
use crate::error::{Error, ErrorKind, Result, ServerDetail};
use crate::runtime::context;
use crate::types::{ByteRange, GetOptions, GetResult, ListPage, ObjectInfo, PartInfo, PutOptions};

/// Where the temporary part objects of parallel uploads live (at the bucket root).
pub const UPLOADS_PREFIX: &str = ".s3dlio-uploads/";
/// Most source objects one compose request takes.
const COMPOSE_MAX: usize = 32;
/// After an abandoned upload: how long before the second cleanup pass (see `GcsParts::cleanup`).
const SETTLE: Duration = Duration::from_secs(1);
/// Objects deleted concurrently inside one `delete_many` batch.
const DELETE_CONCURRENCY: usize = 16;

/// Path segments: everything but unreserved characters is percent-encoded (object names' `/`
/// included: the JSON API takes the name as one segment).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn enc(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// How requests are authorised. Holds secrets: never printed.
enum Auth {
    Anonymous,
    /// A service account key: its JWT is exchanged for access tokens at `token_uri`.
    ServiceAccount {
        email: String,
        key: aws_lc_rs::signature::RsaKeyPair,
        token_uri: String,
    },
    /// `gcloud auth application-default login` credentials.
    AuthorizedUser {
        client_id: String,
        client_secret: String,
        refresh_token: String,
        token_uri: String,
    },
    /// The VM's metadata server.
    Metadata {
        host: String,
    },
}

/// One account's way to reach GCS. Shared by every bucket's backend under the same settings.
struct Account {
    /// `scheme://host[:port]`, no trailing `/`.
    endpoint: String,
    auth: Auth,
    project: Option<String>,
    token: h::TokenCache,
}

impl Account {
    fn resolve(cfg: &StoreConfig, uri: &str) -> Result<Account> {
        let emulator = env("STORAGE_EMULATOR_HOST");
        let endpoint = cfg
            .endpoint_url
            .clone()
            .or_else(|| emulator.clone())
            .unwrap_or_else(|| "https://storage.googleapis.com".to_owned());
        let endpoint = if endpoint.contains("://") { endpoint } else { format!("http://{endpoint}") };
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        let mut project = env("GOOGLE_CLOUD_PROJECT").or_else(|| env("GCLOUD_PROJECT"));
        let auth = if let Some(path) = env("GOOGLE_APPLICATION_CREDENTIALS") {
            let (auth, key_project) = Self::from_key_file(&path, uri)?;
            project = project.or(key_project);
            auth
        } else if emulator.is_some() || cfg.endpoint_url.is_some() {
            Auth::Anonymous
        } else {
            let host = env("GCE_METADATA_HOST").unwrap_or_else(|| "169.254.169.254".to_owned());
            Auth::Metadata { host }
        };
        Ok(Account { endpoint, auth, project, token: h::TokenCache::default() })
    }

    fn from_key_file(path: &str, uri: &str) -> Result<(Auth, Option<String>)> {
        let bad = |why: String| {
            Error::new(
                ErrorKind::InvalidConfig,
                Some(uri),
                format!("GOOGLE_APPLICATION_CREDENTIALS ({path}): {why}"),
            )
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let token_uri = s("token_uri").unwrap_or_else(|| "https://oauth2.googleapis.com/token".to_owned());
        match s("type").as_deref() {
            Some("service_account") => {
                let email = s("client_email").ok_or_else(|| bad("no client_email".into()))?;
                let pem = s("private_key").ok_or_else(|| bad("no private_key".into()))?;
                let der = pem_body(&pem).ok_or_else(|| bad("private_key is not a PEM key".into()))?;
                let key = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&der)
                    .map_err(|e| bad(format!("private_key is not a PKCS#8 RSA key: {e}")))?;
                Ok((Auth::ServiceAccount { email, key, token_uri }, s("project_id")))
            }
            Some("authorized_user") => Ok((
                Auth::AuthorizedUser {
                    client_id: s("client_id").ok_or_else(|| bad("no client_id".into()))?,
                    client_secret: s("client_secret").ok_or_else(|| bad("no client_secret".into()))?,
                    refresh_token: s("refresh_token").ok_or_else(|| bad("no refresh_token".into()))?,
                    token_uri,
                },
                s("quota_project_id"),
            )),
            other => Err(bad(format!("unsupported credentials type {other:?}"))),
        }
    }
}

/// The DER bytes of a PEM block.
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).map(str::trim).collect();
    aws_smithy_types::base64::decode(b64).ok()
}

fn b64url(data: &[u8]) -> String {
    aws_smithy_types::base64::encode(data).trim_end_matches('=').replace('+', "-").replace('/', "_")
}

/// One bucket.
pub struct GcsBackend {
    http: HttpClient,
    account: Arc<Account>,
    bucket: String,
    max_attempts: u32,
    initial_backoff: Duration,
    read_timeout: Duration,
}

/// A GET whose body is still to be read.
struct Opened {
    len: Option<u64>,
    total: Option<u64>,
    generation: Option<String>,
    body: Incoming,
}

impl GcsBackend {
    pub async fn new(bucket: &str, cfg: &StoreConfig, uri: &str) -> Result<GcsBackend> {
        Ok(GcsBackend {
            http: h::client(cfg, uri)?,
            account: Arc::new(Account::resolve(cfg, uri)?),
            bucket: bucket.to_owned(),
            max_attempts: cfg.max_attempts.max(1),
            initial_backoff: cfg.initial_backoff,
            read_timeout: cfg.read_timeout,
        })
    }

    fn handle(&self) -> GcsBackend {
        GcsBackend {
            http: self.http.clone(),
            account: Arc::clone(&self.account),
            bucket: self.bucket.clone(),
            max_attempts: self.max_attempts,
            initial_backoff: self.initial_backoff,
            read_timeout: self.read_timeout,
        }
    }

    fn object_path(&self, key: &str) -> String {
        format!("/storage/v1/b/{}/o/{}", enc(&self.bucket), enc(key))
    }

    /// A valid access token (cached), or `None` when requests go unauthenticated.
    async fn bearer(&self, uri: &str) -> Result<Option<String>> {
        if matches!(self.account.auth, Auth::Anonymous) {
            return Ok(None);
        }
        self.account.token.get(self.fetch_token(uri)).await.map(Some)
    }

    async fn fetch_token(&self, uri: &str) -> Result<(String, Duration)> {
        let (url, req) = match &self.account.auth {
            Auth::Anonymous => return Err(Error::new(ErrorKind::Io, Some(uri), "no credentials")),
            Auth::ServiceAccount { email, key, token_uri } => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let header = b64url(br#"{"alg":"RS256","typ":"JWT"}"#);
                let claims = json!({
                    "iss": email,
                    "scope": "https://www.googleapis.com/auth/devstorage.read_write",
                    "aud": token_uri,
                    "iat": now,
                    "exp": now + 3600,
                });
                let signing_input = format!("{header}.{}", b64url(claims.to_string().as_bytes()));
                let mut sig = vec![0u8; key.public_modulus_len()];
                key.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &aws_lc_rs::rand::SystemRandom::new(),
                    signing_input.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| Error::new(ErrorKind::InvalidConfig, Some(uri), "cannot sign the JWT"))?;
                let body = format!(
                    "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={signing_input}.{}",
                    b64url(&sig)
                );
                (token_uri.clone(), h::form_post(token_uri, body, uri)?)
            }
            Auth::AuthorizedUser { client_id, client_secret, refresh_token, token_uri } => {
                let body = format!(
                    "grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={}",
                    enc(client_id),
                    enc(client_secret),
                    enc(refresh_token)
                );
                (token_uri.clone(), h::form_post(token_uri, body, uri)?)
            }
            Auth::Metadata { host } => {
                let url = format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/token");
                let req = Request::get(&url)
                    .header("metadata-flavor", "Google")
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| Error::new(ErrorKind::InvalidConfig, Some(uri), e.to_string()))?;
                (url, req)
            }
        };
        h::fetch_token(&self.http, req, &url, self.read_timeout, uri).await
    }

    /// Send one request (no retries): `path_and_query` under the endpoint.
    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Bytes,
        uri: &str,
    ) -> Result<Answer> {
        let url = format!("{}{path_and_query}", self.account.endpoint);
        let mut req = Request::builder().method(method.clone()).uri(&url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(token) = self.bearer(uri).await? {
            let v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                Error::new(ErrorKind::Io, Some(uri), "the access token is not a valid header")
            })?;
            req = req.header(http::header::AUTHORIZATION, v);
        }
        if method == Method::POST || method == Method::PUT {
            req = req.header(http::header::CONTENT_LENGTH, body.len());
        }
        let req = req.body(Full::new(body)).map_err(|e| {
            Error::new(ErrorKind::InvalidUri, Some(uri), format!("cannot build the request: {e}"))
        })?;
        h::send(&self.http, req, self.read_timeout, uri).await
    }

    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Bytes,
        uri: &str,
    ) -> Result<Answer> {
        let a = self.send(method, path_and_query, headers, body, uri).await?;
        if a.status.is_success() {
            return Ok(a);
        }
        Err(self.error_of(a, uri).await)
    }

    async fn call_retrying(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Bytes,
        uri: &str,
    ) -> Result<Answer> {
        h::retrying(self.max_attempts, self.initial_backoff, || {
            self.call(method.clone(), path_and_query, headers, body.clone(), uri)
        })
        .await
    }

    /// A JSON answer's document.
    async fn json(&self, a: Answer, uri: &str) -> Result<Value> {
        let body = a.bytes(self.read_timeout, uri).await?;
        serde_json::from_slice(&body)
            .map_err(|e| Error::new(ErrorKind::Io, Some(uri), format!("the response is not JSON: {e}")))
    }

    async fn error_of(&self, a: Answer, uri: &str) -> Error {
        let status = a.status.as_u16();
        let request_id = a.header("x-guploader-uploadid").map(str::to_owned);
        let text = match a.bytes(Duration::from_secs(5), uri).await {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(_) => String::new(),
        };
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        let err = parsed.as_ref().and_then(|v| v.get("error"));
        let reason = err
            .and_then(|e| e.get("errors"))
            .and_then(|e| e.get(0))
            .and_then(|e| e.get("reason"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let message =
            err.and_then(|e| e.get("message")).and_then(Value::as_str).map(str::to_owned).unwrap_or_else(
                || {
                    let t = text.trim();
                    if t.is_empty() {
                        StatusCode::from_u16(status)
                            .ok()
                            .and_then(|s| s.canonical_reason())
                            .unwrap_or("error")
                            .to_owned()
                    } else {
                        t.lines().next().unwrap_or_default().chars().take(300).collect()
                    }
                },
            );
        let kind = classify(status, reason.as_deref());
        let shown = reason.clone().unwrap_or_else(|| status.to_string());
        Error::new(kind, Some(uri), format!("{shown}: {message} (HTTP {status})")).with_detail(ServerDetail {
            status: Some(status),
            code: reason,
            request_id,
        })
    }

    async fn open(
        &self,
        key: &str,
        range: Option<ByteRange>,
        opts: &GetOptions,
        uri: &str,
    ) -> Result<Opened> {
        let mut headers = Vec::new();
        if let Some(r) = range {
            headers.push((
                "range",
                match r.last_byte(uri)? {
                    Some(last) => format!("bytes={}-{last}", r.offset),
                    None => format!("bytes={}-", r.offset),
                },
            ));
        }
        let mut path = format!("{}?alt=media", self.object_path(key));
        if let Some(generation) = &opts.if_match {
            let _ = write!(path, "&ifGenerationMatch={}", enc(generation));
        }
        let sent = std::time::Instant::now();
        let a =
            self.call(Method::GET, &path, &headers, Bytes::new(), uri).await.map_err(|e| match range {
                Some(r) if e.kind() == ErrorKind::InvalidRange => Error::invalid_range(
                    uri,
                    format!("range {} is outside the object: {}", r.describe(), e.message()),
                ),
                _ => e,
            })?;
        crate::metrics::ttfb(crate::metrics::Op::Get, sent.elapsed());
        let len = a.header("content-length").and_then(|v| v.parse::<u64>().ok());
        let total = match (range, a.header("content-range")) {
            (_, Some(cr)) => h::total_from_content_range(cr),
            (None, None) => len,
            (Some(r), None) if a.status == StatusCode::OK && r.offset > 0 => {
                // The whole object instead of the range (fake-gcs-server does so for a range
                // past the end): the range is outside it, or the answer is retried.
                if let Some(size) = len {
                    if r.resolve(size, uri).is_err() {
                        return Err(Error::invalid_range(
                            uri,
                            format!("range {} is outside the object (size {size})", r.describe()),
                        ));
                    }
                }
                return Err(Error::new(
                    ErrorKind::Io,
                    Some(uri),
                    format!("the ranged GET of {} was answered with the whole object", r.describe()),
                ));
            }
            (Some(_), None) => len,
        };
        h::check_size(opts.expected_size, total, uri)?;
        let generation = a.header("x-goog-generation").map(str::to_owned);
        Ok(Opened { len, total, generation, body: a.body })
    }

    async fn get_once(&self, key: &str, opts: &GetOptions) -> Result<GetResult> {
        let uri = self.uri(key);
        let Opened { len, total, generation, mut body } = self.open(key, opts.range, opts, &uri).await?;
        let data = h::read_exact(&mut body, len, self.read_timeout, &uri).await?;
        h::check_range(opts.range, opts.allow_short, data.len(), total, &uri)?;
        Ok(GetResult { data, size: total, etag: generation })
    }

    async fn get_into_once(
        &self,
        key: &str,
        offset: u64,
        dst: &mut [u8],
        opts: &GetOptions,
        resume: &mut h::Resume,
    ) -> Result<Option<String>> {
        let uri = self.uri(key);
        let pinned = GetOptions { if_match: resume.version.clone(), ..opts.clone() };
        let range = resume.rest(offset, dst.len());
        let Opened { generation, mut body, .. } = self.open(key, Some(range), &pinned, &uri).await?;
        resume.fill(&mut body, generation.clone(), offset, dst, self.read_timeout, &uri).await?;
        Ok(generation)
    }

    /// Upload `data` as object `key` (multipart: metadata with its CRC32C, then the bytes);
    /// returns the stored object's metadata.
    async fn upload(&self, key: &str, data: &Bytes, uri: &str) -> Result<Value> {
        let crc = crc32c_b64(crc32c(data));
        let meta = json!({ "name": key, "crc32c": crc }).to_string();
        let boundary = "s3dlio-7d1f0e9c5b3a4f62a8e1";
        // COPY: the JSON API takes metadata and bytes as one multipart/related body; one copy of
        // the payload into it (the body type of the shared client is a single buffer).
        let mut body = BytesMut::with_capacity(data.len() + meta.len() + 256);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n--{boundary}\r\ncontent-type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let body = body.freeze();
        let path = format!("/upload/storage/v1/b/{}/o?uploadType=multipart", enc(&self.bucket));
        let headers = [("content-type", format!("multipart/related; boundary={boundary}"))];
        let a = self.call_retrying(Method::POST, &path, &headers, body, uri).await?;
        let stored = self.json(a, uri).await?;
        if let Some(got) = stored.get("crc32c").and_then(Value::as_str) {
            if got != crc {
                return Err(Error::new(
                    ErrorKind::Io,
                    Some(uri),
                    format!("the stored object's CRC32C {got} is not the uploaded bytes' {crc}"),
                ));
            }
        }
        Ok(stored)
    }

    async fn list_page(
        &self,
        prefix: &str,
        delimiter: bool,
        token: Option<String>,
    ) -> Result<(ListPage, Option<String>)> {
        let uri = self.uri(prefix);
        let mut path = format!("/storage/v1/b/{}/o?maxResults=1000", enc(&self.bucket));
        if !prefix.is_empty() {
            let _ = write!(path, "&prefix={}", enc(prefix));
        }
        if delimiter {
            path.push_str("&delimiter=%2F");
        }
        if let Some(t) = token {
            let _ = write!(path, "&pageToken={}", enc(&t));
        }
        let a = self.call_retrying(Method::GET, &path, &[], Bytes::new(), &uri).await?;
        let v = self.json(a, &uri).await?;
        let mut out = Vec::new();
        for p in v.get("prefixes").and_then(Value::as_array).into_iter().flatten() {
            if let Some(p) = p.as_str() {
                out.push(ObjectInfo::dir(self.uri(p)));
            }
        }
        for item in v.get("items").and_then(Value::as_array).into_iter().flatten() {
            out.push(self.info_of(item, &uri)?);
        }
        let next =
            v.get("nextPageToken").and_then(Value::as_str).filter(|t| !t.is_empty()).map(str::to_owned);
        Ok((out, next))
    }

    /// An object resource (JSON) as [`ObjectInfo`].
    fn info_of(&self, item: &Value, uri: &str) -> Result<ObjectInfo> {
        let name = item
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::new(ErrorKind::Io, Some(uri), "an object resource without a name"))?;
        Ok(ObjectInfo {
            uri: self.uri(name),
            size: json_u64(item.get("size")).unwrap_or(0),
            etag: item.get("generation").and_then(json_string),
            last_modified: item.get("updated").and_then(Value::as_str).and_then(rfc3339_secs),
            is_dir: name.ends_with('/'),
        })
    }

    async fn delete_object(&self, key: &str, uri: &str) -> Result<()> {
        match self.call_retrying(Method::DELETE, &self.object_path(key), &[], Bytes::new(), uri).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Compose `sources` (at most 32, in order) into `dest`; returns the new object's metadata.
    async fn compose(&self, sources: &[String], dest: &str, uri: &str) -> Result<Value> {
        let body = json!({
            "sourceObjects": sources.iter().map(|n| json!({ "name": n })).collect::<Vec<_>>(),
            "destination": { "contentType": "application/octet-stream" },
        });
        let path = format!("{}/compose", self.object_path(dest));
        let headers = [("content-type", "application/json".to_owned())];
        let a = self.call_retrying(Method::POST, &path, &headers, Bytes::from(body.to_string()), uri).await?;
        self.json(a, uri).await
    }
}

/// JSON numbers GCS sends as strings (`"size": "123"`) or as numbers.
fn json_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn json_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Seconds since the Unix epoch of an RFC 3339 UTC time (`2026-12-04T10:00:00.123Z`).
fn rfc3339_secs(s: &str) -> Option<f64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    let (time, offset) = match time.rfind(['+', '-']) {
        Some(i) => {
            let (t, o) = time.split_at(i);
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let mut hm = o[1..].split(':').map(|p| p.parse::<i64>().ok());
            (t, sign * (hm.next()?? * 3600 + hm.next().flatten().unwrap_or(0) * 60))
        }
        None => (time, 0),
    };
    let mut t = time.split(':');
    let (hh, mm) = (t.next()?.parse::<i64>().ok()?, t.next()?.parse::<i64>().ok()?);
    let ss: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    #[allow(clippy::cast_precision_loss)]
    Some((days * 86_400 + hh * 3600 + mm * 60 - offset) as f64 + ss)
}

fn crc32c(data: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}

/// GCS's form of a CRC32C: base64 of its big-endian bytes.
fn crc32c_b64(crc: u32) -> String {
    aws_smithy_types::base64::encode(crc.to_be_bytes())
}

/// Error kinds of GCS statuses and reasons.
fn classify(status: u16, reason: Option<&str>) -> ErrorKind {
    match reason {
        Some("notFound") => return ErrorKind::NotFound,
        Some("forbidden" | "accessDenied" | "authError" | "unauthorized" | "required") => {
            return ErrorKind::PermissionDenied;
        }
        Some("rateLimitExceeded" | "userRateLimitExceeded" | "backendError") if status != 500 => {
            return ErrorKind::Throttled;
        }
        Some("conditionNotMet") => return ErrorKind::Changed,
        Some("invalid" | "invalidParameter") if status == 400 => return ErrorKind::InvalidUri,
        _ => {}
    }
    match status {
        404 => ErrorKind::NotFound,
        401 | 403 => ErrorKind::PermissionDenied,
        412 => ErrorKind::Changed,
        416 => ErrorKind::InvalidRange,
        429 | 503 => ErrorKind::Throttled,
        408 | 504 => ErrorKind::Timeout,
        _ => ErrorKind::Io,
    }
}

#[async_trait]
impl Backend for GcsBackend {
    fn uri(&self, key: &str) -> String {
        format!("gs://{}/{key}", self.bucket)
    }

    fn ranged_reads(&self) -> bool {
        true
    }

    async fn get(&self, key: &str, opts: &GetOptions) -> Result<GetResult> {
        h::retrying(self.max_attempts, self.initial_backoff, || self.get_once(key, opts)).await
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
        let mut resume = h::Resume::pinned(opts.if_match.as_deref());
        h::retry_loop!(
            self.max_attempts,
            self.initial_backoff,
            self.get_into_once(key, offset, dst, opts, &mut resume).await
        )
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo> {
        let uri = self.uri(key);
        let a = self.call_retrying(Method::GET, &self.object_path(key), &[], Bytes::new(), &uri).await?;
        let v = self.json(a, &uri).await?;
        let mut info = self.info_of(&v, &uri)?;
        info.uri = uri;
        Ok(info)
    }

    async fn put(&self, key: &str, data: Bytes, _opts: &PutOptions) -> Result<()> {
        let uri = self.uri(key);
        self.upload(key, &data, &uri).await.map(|_| ())
    }

    async fn start_multipart(&self, key: &str, _opts: &PutOptions) -> Result<Box<dyn MultipartUpload>> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let upload = format!("{:016x}{:08x}", nanos as u64, std::process::id());
        Ok(Box::new(GcsParts {
            backend: self.handle(),
            key: key.to_owned(),
            dir: format!("{UPLOADS_PREFIX}{upload}/"),
            parts: Arc::new(Mutex::new(BTreeMap::new())),
            finished: false,
        }))
    }

    fn list(&self, prefix: &str, delimiter: bool) -> BoxStream<'static, Result<ListPage>> {
        let me = self.handle();
        let prefix = prefix.to_owned();
        h::paged(move |token| {
            let me = me.handle();
            let prefix = prefix.clone();
            async move { me.list_page(&prefix, delimiter, token).await }
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let uri = self.uri(key);
        self.delete_object(key, &uri).await
    }

    async fn delete_many(&self, keys: Vec<String>) -> Result<usize> {
        h::delete_each(keys, DELETE_CONCURRENCY, |k| async move { self.delete(&k).await }).await
    }

    fn delete_batch_limit(&self) -> usize {
        256
    }

    /// The rewrite API: the service copies the bytes (in as many calls as it asks for).
    async fn copy_within(&self, src_key: &str, dst_key: &str, _size: u64) -> Result<bool> {
        let uri = self.uri(dst_key);
        let mut token: Option<String> = None;
        loop {
            let mut path =
                format!("{}/rewriteTo/b/{}/o/{}", self.object_path(src_key), enc(&self.bucket), enc(dst_key));
            if let Some(t) = &token {
                let _ = write!(path, "?rewriteToken={}", enc(t));
            }
            let headers = [("content-type", "application/json".to_owned())];
            let a =
                self.call_retrying(Method::POST, &path, &headers, Bytes::from_static(b"{}"), &uri).await?;
            let v = self.json(a, &uri).await?;
            if v.get("done").and_then(Value::as_bool).unwrap_or(true) {
                return Ok(true);
            }
            token = v.get("rewriteToken").and_then(Value::as_str).map(str::to_owned);
            if token.is_none() {
                return Err(Error::new(ErrorKind::Io, Some(&uri), "a rewrite not done and without a token"));
            }
        }
    }

    async fn create_container(&self, _key: &str) -> Result<()> {
        let uri = format!("gs://{}", self.bucket);
        let project = self.account.project.clone().unwrap_or_else(|| "s3dlio".to_owned());
        if self.account.project.is_none() && !matches!(self.account.auth, Auth::Anonymous) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                Some(&uri),
                "creating a bucket needs a project: set GOOGLE_CLOUD_PROJECT",
            ));
        }
        let path = format!("/storage/v1/b?project={}", enc(&project));
        let headers = [("content-type", "application/json".to_owned())];
        let body = Bytes::from(json!({ "name": self.bucket }).to_string());
        self.call_retrying(Method::POST, &path, &headers, body, &uri).await?;
        Ok(())
    }

    async fn delete_container(&self, _key: &str) -> Result<()> {
        let uri = format!("gs://{}", self.bucket);
        let path = format!("/storage/v1/b/{}", enc(&self.bucket));
        self.call_retrying(Method::DELETE, &path, &[], Bytes::new(), &uri).await?;
        Ok(())
    }
}

/// A parallel upload: each part a temporary object, composed into the object on completion.
/// Dropped or aborted, the temporary objects are deleted (on the cleanup tracker when dropped).
struct GcsParts {
    backend: GcsBackend,
    key: String,
    /// `.s3dlio-uploads/<upload id>/`: every temporary object of this upload.
    dir: String,
    /// Part number -> its temporary object.
    parts: Arc<Mutex<BTreeMap<u32, Staged>>>,
    finished: bool,
}

/// One part, written as a temporary object.
#[derive(Clone)]
struct Staged {
    name: String,
    len: u64,
    crc: u32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl GcsParts {
    /// Delete every temporary object of this upload (by listing its directory: intermediate
    /// composites included). `settle`: a part whose request was already on its way when the
    /// upload was abandoned can still be stored after the first pass; a second pass after this
    /// delay deletes it too.
    fn cleanup(
        &self,
        settle: Option<Duration>,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let backend = self.backend.handle();
        let dir = self.dir.clone();
        async move {
            let one_pass = || async {
                let mut pages = backend.list(&dir, false);
                let mut keys = Vec::new();
                while let Some(page) = pages.next().await {
                    for info in page? {
                        if let Some(k) = info.uri.strip_prefix(&backend.uri("")) {
                            keys.push(k.to_owned());
                        }
                    }
                }
                backend.delete_many(keys).await.map(|_| ())
            };
            one_pass().await?;
            if let Some(d) = settle {
                tokio::time::sleep(d).await;
                one_pass().await?;
            }
            Ok(())
        }
    }
}

#[async_trait]
impl MultipartUpload for GcsParts {
    async fn put_part(&self, number: u32, _offset: u64, data: Bytes) -> Result<PartInfo> {
        let name = format!("{}{number:06}", self.dir);
        let uri = self.backend.uri(&self.key);
        let crc = crc32c(&data);
        self.backend.upload(&name, &data, &uri).await?;
        lock(&self.parts).insert(number, Staged { name, len: data.len() as u64, crc });
        Ok(PartInfo { number, etag: None, crc32c: Some(crc32c_b64(crc)) })
    }

    async fn complete(mut self: Box<Self>, parts: Vec<PartInfo>, size: u64) -> Result<()> {
        let uri = self.backend.uri(&self.key);
        let written = lock(&self.parts).clone();
        let mut names = Vec::with_capacity(parts.len());
        let (mut crc, mut total) = (0u32, 0u64);
        let mut numbers: Vec<u32> = parts.iter().map(|p| p.number).collect();
        numbers.sort_unstable();
        for n in numbers {
            let Staged { name, len, crc: part_crc } = written.get(&n).cloned().ok_or_else(|| {
                Error::new(ErrorKind::Io, Some(&uri), format!("part {n} was never written"))
            })?;
            crc = if total == 0 {
                part_crc
            } else {
                crc_fast::checksum_combine(
                    crc_fast::CrcAlgorithm::Crc32Iscsi,
                    u64::from(crc),
                    u64::from(part_crc),
                    len,
                ) as u32
            };
            total += len;
            names.push(name);
        }
        if total != size {
            return Err(Error::new(
                ErrorKind::Io,
                Some(&uri),
                format!("the parts hold {total} bytes, but {size} were written"),
            ));
        }
        // Compose in rounds of 32 until one round makes the object.
        let mut level = 0;
        while names.len() > COMPOSE_MAX {
            let groups: Vec<Vec<String>> = names.chunks(COMPOSE_MAX).map(<[String]>::to_vec).collect();
            let backend = &self.backend;
            let dir = &self.dir;
            let uri_ref = &uri;
            let next =
                futures::future::try_join_all(groups.into_iter().enumerate().map(|(i, g)| async move {
                    let dest = format!("{dir}c{level}-{i:06}");
                    backend.compose(&g, &dest, uri_ref).await.map(|_| dest)
                }))
                .await?;
            names = next;
            level += 1;
        }
        let stored = self.backend.compose(&names, &self.key, &uri).await?;
        self.finished = true;
        let cleanup = self.cleanup(None);
        let stored_size = json_u64(stored.get("size"));
        let stored_crc = stored.get("crc32c").and_then(Value::as_str).map(str::to_owned);
        let _ = cleanup.await; // temporary objects: best effort; the object is complete
        if stored_size.is_some_and(|s| s != size) {
            return Err(Error::new(
                ErrorKind::Io,
                Some(&uri),
                format!("the composed object is {stored_size:?} bytes, but {size} were written"),
            ));
        }
        let want = crc32c_b64(crc);
        if stored_crc.as_deref().is_some_and(|got| got != want) {
            return Err(Error::new(
                ErrorKind::Io,
                Some(&uri),
                format!("the composed object's CRC32C {stored_crc:?} is not the parts' {want}"),
            ));
        }
        Ok(())
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.finished = true;
        self.cleanup(Some(SETTLE)).await
    }
}

impl Drop for GcsParts {
    fn drop(&mut self) {
        if !self.finished {
            if let Ok(ctx) = context() {
                let cleanup = self.cleanup(Some(SETTLE));
                drop(ctx.spawn_cleanup(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(15), cleanup).await;
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339() {
        assert_eq!(rfc3339_secs("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(rfc3339_secs("2026-12-04T10:00:00.5Z"), Some(1_796_378_400.5));
        assert_eq!(rfc3339_secs("2026-12-04T11:00:00+01:00"), Some(1_796_378_400.0));
        assert_eq!(rfc3339_secs("garbage"), None);
    }

    #[test]
    fn crc32c_combines_like_the_whole() {
        let (a, b) = (b"hello ".as_slice(), b"world".as_slice());
        let combined = crc_fast::checksum_combine(
            crc_fast::CrcAlgorithm::Crc32Iscsi,
            u64::from(crc32c(a)),
            u64::from(crc32c(b)),
            b.len() as u64,
        ) as u32;
        assert_eq!(combined, crc32c(b"hello world"));
        assert_eq!(crc32c_b64(crc32c(b"")), "AAAAAA==");
    }

    #[test]
    fn classifies() {
        assert_eq!(classify(404, Some("notFound")), ErrorKind::NotFound);
        assert_eq!(classify(404, None), ErrorKind::NotFound);
        assert_eq!(classify(403, Some("forbidden")), ErrorKind::PermissionDenied);
        assert_eq!(classify(429, Some("rateLimitExceeded")), ErrorKind::Throttled);
        assert_eq!(classify(412, Some("conditionNotMet")), ErrorKind::Changed);
        assert_eq!(classify(416, None), ErrorKind::InvalidRange);
        assert_eq!(classify(500, Some("backendError")), ErrorKind::Io);
    }

    #[test]
    fn names_are_one_path_segment() {
        assert_eq!(enc("a/b c+%"), "a%2Fb%20c%2B%25");
    }
}
