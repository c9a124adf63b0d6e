//! What the backends that speak a REST API directly over hyper share (`az://`, `gs://`): the
//! pooled HTTP(S) client, sending one request with a deadline on its headers, reading bodies with
//! a deadline per chunk, and retrying transient failures with jittered backoff.

use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::StoreConfig;
use crate::error::{Error, ErrorKind, Result};

pub(crate) type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled client for `http://` and `https://` (the system's root certificates).
pub(crate) fn client(cfg: &StoreConfig, uri: &str) -> Result<HttpClient> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_nodelay(true);
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| Error::new(ErrorKind::Io, Some(uri), format!("cannot load TLS root certificates: {e}")))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(tls))
}

/// A response whose body is still to be read.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Incoming,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The whole body (for small answers: errors, listings, metadata).
    pub async fn bytes(mut self, read_timeout: Duration, uri: &str) -> Result<Bytes> {
        let mut buf = BytesMut::new();
        while let Some(chunk) = next_chunk(&mut self.body, read_timeout, uri).await? {
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

/// Send `req` and wait at most `read_timeout` for the response headers.
pub(crate) async fn send(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
    read_timeout: Duration,
    uri: &str,
) -> Result<Answer> {
    match tokio::time::timeout(read_timeout, client.request(req)).await {
        Err(_) => Err(Error::new(ErrorKind::Timeout, Some(uri), format!("no response for {read_timeout:?}"))),
        Ok(Err(e)) => Err(Error::new(ErrorKind::Io, Some(uri), crate::error::chain(&e))),
        Ok(Ok(r)) => {
            let (parts, body) = r.into_parts();
            Ok(Answer { status: parts.status, headers: parts.headers, body })
        }
    }
}

/// The next data chunk of a body; each must come within `read_timeout`.
pub(crate) async fn next_chunk(
    body: &mut Incoming,
    read_timeout: Duration,
    uri: &str,
) -> Result<Option<Bytes>> {
    loop {
        match tokio::time::timeout(read_timeout, body.frame()).await {
            Err(_) => {
                let msg = format!("no data for {read_timeout:?} while reading the response body");
                return Err(Error::new(ErrorKind::Timeout, Some(uri), msg));
            }
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(Error::new(ErrorKind::Io, Some(uri), crate::error::chain(&e))),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// Fill `dst` from `body` (more bytes than it holds is an error), with `filled` advanced as each
/// chunk lands: after an error it still says how many bytes of `dst` are in place.
async fn fill_counting(
    body: &mut Incoming,
    dst: &mut [u8],
    filled: &mut usize,
    read_timeout: Duration,
    uri: &str,
) -> Result<()> {
    while let Some(chunk) = next_chunk(body, read_timeout, uri).await? {
        let end = *filled + chunk.len();
        if end > dst.len() {
            let msg = format!("server sent more than the {} bytes asked for", dst.len());
            return Err(Error::new(ErrorKind::Io, Some(uri), msg));
        }
        dst[*filled..end].copy_from_slice(&chunk);
        *filled = end;
    }
    Ok(())
}

/// A ranged read's progress across its attempts: the bytes already in place at the start of the
/// destination, and the version they came from. A retry asks only for the rest, pinned to that
/// version (`If-Match` / `ifGenerationMatch`): an object replaced in between is a `Changed`
/// error, never a mix of two versions.
#[derive(Debug, Default)]
pub(crate) struct Resume {
    pub filled: usize,
    pub version: Option<String>,
}

impl Resume {
    /// Start from the caller's pin, if any.
    pub fn pinned(version: Option<&str>) -> Resume {
        Resume { filled: 0, version: version.map(str::to_owned) }
    }

    /// The range still to read of a read of `len` bytes at `offset`.
    pub fn rest(&self, offset: u64, len: usize) -> crate::types::ByteRange {
        crate::types::ByteRange::new(offset + self.filled as u64, Some((len - self.filled) as u64))
    }

    /// Fill the rest of `dst` from `body`, a response to [`Resume::rest`] of the version
    /// `version`; `filled` advances as bytes land, so a failed attempt keeps what it received.
    pub async fn fill(
        &mut self,
        body: &mut Incoming,
        version: Option<String>,
        offset: u64,
        dst: &mut [u8],
        read_timeout: Duration,
        uri: &str,
    ) -> Result<()> {
        if self.version.is_none() {
            self.version = version;
        }
        let start = self.filled;
        let mut got = 0;
        let r = fill_counting(body, &mut dst[start..], &mut got, read_timeout, uri).await;
        self.filled = start + got;
        r?;
        if self.filled != dst.len() {
            let msg = format!("range at offset {offset} returned {} of {} bytes", self.filled, dst.len());
            return Err(Error::invalid_range(uri, msg));
        }
        Ok(())
    }
}

/// A whole body whose length is announced (or not): exactly that many bytes, or an error.
pub(crate) async fn read_exact(
    body: &mut Incoming,
    len: Option<u64>,
    read_timeout: Duration,
    uri: &str,
) -> Result<Bytes> {
    if let Some(n) = len.and_then(|n| usize::try_from(n).ok()).filter(|n| *n >= crate::buf::POOL_MIN) {
        // Chunks into one buffer of the announced size (recycled from the pool, or fresh).
        let mut buf = crate::buf::ObjBuf::new(n, uri)?;
        let mut filled = 0usize;
        while let Some(chunk) = next_chunk(body, read_timeout, uri).await? {
            let end = filled + chunk.len();
            if end > n {
                let msg = format!("server sent more than the {n} bytes it announced");
                return Err(Error::new(ErrorKind::Io, Some(uri), msg));
            }
            buf.as_mut_slice()[filled..end].copy_from_slice(&chunk);
            filled = end;
        }
        if filled != n {
            let msg = format!("body ended after {filled} of {n} bytes");
            return Err(Error::new(ErrorKind::Io, Some(uri), msg));
        }
        return Ok(buf.freeze());
    }
    let mut buf = BytesMut::with_capacity(len.map_or(0, |n| n as usize));
    while let Some(chunk) = next_chunk(body, read_timeout, uri).await? {
        buf.extend_from_slice(&chunk);
    }
    if let Some(n) = len {
        if buf.len() as u64 != n {
            let msg = format!("body ended after {} of {n} bytes", buf.len());
            return Err(Error::new(ErrorKind::Io, Some(uri), msg));
        }
    }
    Ok(buf.freeze())
}

/// Jittered exponential backoff before retry number `attempt` (1-based): uniform in
/// [base * 2^(attempt-1) / 2, base * 2^(attempt-1)], capped at 20 s.
pub(crate) fn backoff(base: Duration, attempt: u32) -> Duration {
    let full = base.saturating_mul(1u32 << (attempt - 1).min(16)).min(Duration::from_secs(20));
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    full.mul_f64(0.5 + 0.5 * f64::from(nanos % 1000) / 1000.0)
}

/// One request's retry budget: `max_attempts` attempts in all, counted once whatever failed
/// (connection, status, body). In an adaptive pool ([`crate::scope`]), an attempt that failed by
/// pushback (throttling, no answer) while the pool was probing at its floor is the pool's probe,
/// not the request's own failure: it costs no attempt, for as long as the pool's
/// `pushback_timeout` allows since the request started. So does a 5xx answer to such a probe: a
/// store that stopped answering and comes back answering 500/502/503/504 for a while (a restarted
/// server whose volumes have not registered yet) is the same outage. A store that answers 5xx
/// without having stopped answering first is not probed: those attempts count.
pub(crate) struct Budget {
    max: u32,
    counted: u32,
    attempts: u32,
    started: std::time::Instant,
}

impl Budget {
    pub fn new(max_attempts: u32) -> Budget {
        Budget { max: max_attempts.max(1), counted: 0, attempts: 0, started: std::time::Instant::now() }
    }

    /// Count a failed attempt; true when the request may try again (after [`Budget::pause`]).
    pub fn retry(&mut self, e: &Error, probe: Option<Duration>) -> bool {
        self.attempts += 1;
        let unavailable = matches!(e.status(), Some(500 | 502 | 503 | 504));
        let free = probe.is_some_and(|limit| {
            (crate::limiter::is_pushback(e) || unavailable) && self.started.elapsed() < limit
        });
        if !free {
            self.counted += 1;
        }
        e.is_transient() && self.counted < self.max
    }

    /// The backoff before the next attempt: grows with the attempts counted (probes excluded).
    pub fn pause(&self, base: Duration) -> Duration {
        backoff(base, self.counted.max(1))
    }

    /// The error that ends the request, naming the attempts when there was more than one.
    pub fn give_up(&self, e: Error) -> Error {
        if self.attempts > 1 && e.is_transient() {
            let secs = self.started.elapsed().as_secs_f64();
            e.with_suffix(&format!(" (gave up after {} attempts in {secs:.1} s)", self.attempts))
        } else {
            e
        }
    }
}

/// Run `attempt` until it succeeds or fails for good: transient failures are retried within the
/// request's [`Budget`], with [`backoff`] in between.
pub(crate) async fn retrying<T, F, Fut>(
    max_attempts: u32,
    initial_backoff: Duration,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut budget = Budget::new(max_attempts);
    loop {
        let (r, probe) = crate::scope::attempt(attempt()).await;
        match r {
            Err(e) if budget.retry(&e, probe) => {
                crate::metrics::retried(&e);
                tokio::time::sleep(budget.pause(initial_backoff)).await;
            }
            Err(e) => return Err(budget.give_up(e)),
            ok => return ok,
        }
    }
}

/// The total size in a `Content-Range: bytes a-b/total` header.
pub(crate) fn total_from_content_range(v: &str) -> Option<u64> {
    v.rsplit_once('/').and_then(|(_, t)| t.parse().ok())
}

/// Seconds since the Unix epoch of an HTTP date (`Wed, 02 Dec 2026 10:00:00 GMT`).
pub(crate) fn http_date_secs(v: &str) -> Option<f64> {
    let t = httpdate::parse_http_date(v).ok()?;
    t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs_f64())
}

/// After a ranged read of `got` bytes: an open range from the end on selects no byte (some
/// servers answer it 206 with nothing), and a range that must come back whole (`allow_short`
/// false) did. Either failure is an `InvalidRange` error naming `uri`.
pub(crate) fn check_range(
    range: Option<crate::types::ByteRange>,
    allow_short: bool,
    got: usize,
    total: Option<u64>,
    uri: &str,
) -> Result<()> {
    use crate::types::ByteRange;
    if let (Some(ByteRange { offset, length: None }), Some(size)) = (range, total) {
        if offset >= size {
            let msg = format!("range {offset}.. is outside the object (size {size})");
            return Err(Error::invalid_range(uri, msg));
        }
    }
    if let (Some(ByteRange { offset, length: Some(want) }), false) = (range, allow_short) {
        if got as u64 != want {
            let size = total.map_or_else(|| "unknown".to_owned(), |t| t.to_string());
            let msg = format!("range {offset}+{want} extends past the end of the object (size {size})");
            return Err(Error::invalid_range(uri, msg));
        }
    }
    Ok(())
}

/// A size from a listing or the caller must still be the object's.
pub(crate) fn check_size(expected: Option<u64>, total: Option<u64>, uri: &str) -> Result<()> {
    match (expected, total) {
        (Some(want), Some(total)) if want != total => Err(Error::new(
            ErrorKind::Changed,
            Some(uri),
            format!("object is {total} bytes, but {want} were expected (from a listing or the caller): it changed, or the size given is wrong"),
        )),
        _ => Ok(()),
    }
}

/// An OAuth2 access token, cached until a minute before it expires (so it never expires in
/// flight). Holds a secret: never printed.
#[derive(Default)]
pub(crate) struct TokenCache(tokio::sync::Mutex<Option<(String, std::time::Instant)>>);

impl TokenCache {
    /// The cached token, or a new one from `fetch` (`(token, lifetime)`).
    pub async fn get<F: Future<Output = Result<(String, Duration)>>>(&self, fetch: F) -> Result<String> {
        let mut cached = self.0.lock().await;
        if let Some((t, _)) = cached.as_ref().filter(|(_, until)| std::time::Instant::now() < *until) {
            return Ok(t.clone());
        }
        let (token, lifetime) = fetch.await?;
        let until = std::time::Instant::now() + lifetime.saturating_sub(Duration::from_secs(60));
        *cached = Some((token.clone(), until));
        Ok(token)
    }
}

/// Send a token request to `url` and read `access_token` and `expires_in` (a number or a string)
/// from its JSON answer. A refusal is a `PermissionDenied` error quoting the endpoint's answer
/// (which never holds the credential sent).
pub(crate) async fn fetch_token(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
    url: &str,
    read_timeout: Duration,
    uri: &str,
) -> Result<(String, Duration)> {
    let a = send(client, req, read_timeout, uri).await.map_err(|e| {
        Error::new(e.kind(), Some(uri), format!("no access token from {url}: {}", e.message()))
    })?;
    let status = a.status;
    let body = a.bytes(read_timeout, uri).await?;
    if !status.is_success() {
        let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
        let kind = if status.as_u16() >= 500 { ErrorKind::Io } else { ErrorKind::PermissionDenied };
        return Err(Error::new(
            kind,
            Some(uri),
            format!("the token endpoint {url} refused: HTTP {status}: {text}"),
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| Error::new(ErrorKind::Io, Some(uri), format!("token response is not JSON: {e}")))?;
    let token = v
        .get("access_token")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| Error::new(ErrorKind::Io, Some(uri), "token response without access_token"))?;
    let secs = match v.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    Ok((token.to_owned(), Duration::from_secs(secs.unwrap_or(300))))
}

/// A `application/x-www-form-urlencoded` POST of `body` to `url`.
pub(crate) fn form_post(url: &str, body: String, uri: &str) -> Result<Request<Full<Bytes>>> {
    Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("content-length", body.len())
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Error::new(ErrorKind::InvalidConfig, Some(uri), format!("bad token URI {url}: {e}")))
}

/// `attempt` (an expression, evaluated again for each attempt) until it succeeds or fails for
/// good, at most `max` attempts, with [`backoff`] in between: [`retrying`] for attempts that
/// borrow mutably (a destination buffer), which a closure cannot hand out again.
macro_rules! retry_loop {
    ($max:expr, $base:expr, $attempt:expr) => {{
        let mut budget = $crate::backend::http::Budget::new($max);
        loop {
            let (r, probe) = $crate::scope::attempt(async { $attempt }).await;
            match r {
                Err(e) if budget.retry(&e, probe) => {
                    $crate::metrics::retried(&e);
                    tokio::time::sleep(budget.pause($base)).await;
                }
                Err(e) => break Err(budget.give_up(e)),
                ok => break ok,
            }
        }
    }};
}
pub(crate) use retry_loop;

/// A listing as a stream of pages: `page(marker)` fetches the page after `marker` (`None`: the
/// first) and returns it with the next marker (`None`: the last page).
pub(crate) fn paged<F, Fut>(page: F) -> futures::stream::BoxStream<'static, Result<crate::types::ListPage>>
where
    F: Fn(Option<String>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(crate::types::ListPage, Option<String>)>> + Send + 'static,
{
    use futures::StreamExt;
    futures::stream::unfold((Some(None::<String>), page), |(state, page)| async move {
        let marker = state?;
        match page(marker).await {
            Ok((items, next)) => Some((Ok(items), (next.map(Some), page))),
            Err(e) => Some((Err(e), (None, page))),
        }
    })
    .boxed()
}

/// Run `delete` for every key, `concurrency` at a time; the first failure is the error.
pub(crate) async fn delete_each<F, Fut>(keys: Vec<String>, concurrency: usize, delete: F) -> Result<usize>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    use futures::StreamExt;
    let n = keys.len();
    let mut results = futures::stream::iter(keys.into_iter().map(delete)).buffer_unordered(concurrency);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(n)
}

#[cfg(test)]
mod budget_tests {
    use super::*;
    use crate::error::{ErrorKind, ServerDetail};

    fn http(status: u16) -> Error {
        Error::new(ErrorKind::Io, Some("s3://b/k"), "InternalError")
            .with_detail(ServerDetail { status: Some(status), ..Default::default() })
    }

    #[test]
    fn a_5xx_answer_to_a_probe_is_free_and_otherwise_counts() {
        let probe = Some(Duration::from_secs(60));
        let mut b = Budget::new(2);
        for _ in 0..10 {
            assert!(b.retry(&http(500), probe), "while the pool probes after an outage, 5xx costs nothing");
        }
        assert_eq!(b.counted, 0);
        assert!(b.retry(&http(500), None), "without a probe the first 500 counts");
        assert!(!b.retry(&http(500), None), "and the second ends a budget of 2");
        let mut b = Budget::new(1);
        assert!(!b.retry(&http(404), probe), "a 404 is never free (and not transient)");
    }
}
