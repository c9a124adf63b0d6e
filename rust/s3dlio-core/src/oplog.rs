//! The op-log: one JSON line per storage request, appended to a file.
//!
//! Turned on by `S3DLIO_OPLOG=<path>` in the environment (read once per process) or
//! [`set`] (`s3dlio.oplog(path)`). Each line is written with one `write` to a file opened with
//! `O_APPEND`, so lines from several processes (forked loader workers) never interleave. A line
//! carries the request's start time, operation, URI, byte range, outcome, HTTP status, bytes,
//! latency, attempts and error message; never a credential, a signature or a request header.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, Once};

use crate::error::{Error, ErrorKind, Result};

struct Log {
    path: PathBuf,
    /// The file as opened by process `pid` (a forked child opens it again).
    file: Option<(u32, File)>,
}

static LOG: Mutex<Option<Log>> = Mutex::new(None);
static ON: AtomicBool = AtomicBool::new(false);
static ENV: Once = Once::new();

fn lock() -> MutexGuard<'static, Option<Log>> {
    LOG.lock().unwrap_or_else(|p| p.into_inner())
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
        Error::new(ErrorKind::InvalidConfig, None, format!("cannot open the op-log {}: {e}", path.display()))
    })
}

/// Log every request to `path` from now on (`None`: stop). The file is opened (created) here, so
/// a path that cannot be written is an error at once.
pub fn set(path: Option<&Path>) -> Result<()> {
    from_env();
    let mut log = lock();
    match path {
        None => {
            *log = None;
            ON.store(false, Ordering::Release);
        }
        Some(p) => {
            let file = open(p)?;
            *log = Some(Log { path: p.to_path_buf(), file: Some((std::process::id(), file)) });
            ON.store(true, Ordering::Release);
        }
    }
    Ok(())
}

/// The path being logged to, if any.
pub fn path() -> Option<PathBuf> {
    from_env();
    lock().as_ref().map(|l| l.path.clone())
}

fn from_env() {
    ENV.call_once(|| {
        if let Some(p) = std::env::var_os("S3DLIO_OPLOG").filter(|p| !p.is_empty()) {
            *lock() = Some(Log { path: PathBuf::from(p), file: None });
            ON.store(true, Ordering::Release);
        }
    });
}

/// Whether requests are being logged (one relaxed load when they are not).
pub fn enabled() -> bool {
    from_env();
    ON.load(Ordering::Acquire)
}

/// One request, as logged.
pub struct Entry<'a> {
    /// Seconds since the Unix epoch when the request started.
    pub start: f64,
    pub op: &'static str,
    pub uri: &'a str,
    /// `(offset, length)` of a ranged read.
    pub range: Option<(u64, Option<u64>)>,
    pub bytes: u64,
    pub latency_ms: f64,
    pub attempts: u32,
    pub error: Option<&'a Error>,
}

/// Append `e` as one line. A log that cannot be written is turned off (with one line on stderr),
/// never failing the request it describes.
pub fn record(e: &Entry<'_>) {
    let mut line = serde_json::json!({
        "t": e.start,
        "pid": std::process::id(),
        "op": e.op,
        "uri": e.uri,
        "range": e.range.map(|(o, l)| serde_json::json!([o, l])),
        "status": e.error.map_or("ok", crate::metrics::cause),
        "http_status": e.error.and_then(Error::status),
        "bytes": e.bytes,
        "latency_ms": (e.latency_ms * 1000.0).round() / 1000.0,
        "attempts": e.attempts,
        "error": e.error.map(ToString::to_string),
    })
    .to_string();
    line.push('\n');
    let mut log = lock();
    let Some(l) = log.as_mut() else { return };
    let pid = std::process::id();
    if l.file.as_ref().is_none_or(|(p, _)| *p != pid) {
        match open(&l.path) {
            Ok(f) => l.file = Some((pid, f)),
            Err(err) => {
                eprintln!("s3dlio: op-log turned off: {err}");
                *log = None;
                ON.store(false, Ordering::Release);
                return;
            }
        }
    }
    if let Some((_, f)) = l.file.as_mut() {
        if let Err(err) = f.write_all(line.as_bytes()) {
            eprintln!("s3dlio: op-log turned off: cannot write {}: {err}", l.path.display());
            *log = None;
            ON.store(false, Ordering::Release);
        }
    }
}
