//! The one error type of the core. Every failure has a [`ErrorKind`] (what a caller branches on),
//! the URI it concerns, and a message carrying the cause chain. Credentials never enter a message.

use std::fmt;

/// What went wrong, coarse enough to branch on. Mapped 1:1 onto Python exception classes.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Missing object, bucket, file or directory.
    NotFound,
    /// HTTP 403, unknown access key, bad signature, EACCES.
    PermissionDenied,
    /// 503 SlowDown / throttling after every retry.
    Throttled,
    /// A connect, read or operation timeout.
    Timeout,
    /// The operation's cancellation token fired.
    Cancelled,
    /// A URI that cannot be parsed or served.
    InvalidUri,
    /// A bad option or argument.
    InvalidConfig,
    /// A byte range outside the object.
    InvalidRange,
    /// `direct://` on a filesystem that refuses O_DIRECT.
    DirectIoUnsupported,
    /// The object changed while it was being read (an `If-Match` precondition failed).
    Changed,
    /// Everything else: I/O, network, HTTP 5xx after retries, protocol errors.
    Io,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::InvalidUri => "invalid URI",
            ErrorKind::InvalidConfig => "invalid configuration",
            ErrorKind::InvalidRange => "range not satisfiable",
            ErrorKind::DirectIoUnsupported => "O_DIRECT not supported",
            ErrorKind::Changed => "object changed",
            ErrorKind::Io => "I/O error",
        }
    }
}

/// An error from any s3dlio operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    uri: Option<String>,
    message: String,
    detail: Option<Box<ServerDetail>>,
}

/// What the server said about a failed request, where it said it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerDetail {
    /// HTTP status.
    pub status: Option<u16>,
    /// Service error code (`NoSuchKey`, `SlowDown`, ...).
    pub code: Option<String>,
    /// Request id, for the server operator's logs.
    pub request_id: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, uri: Option<&str>, message: impl Into<String>) -> Self {
        Error { kind, uri: uri.map(str::to_owned), message: message.into(), detail: None }
    }

    /// Attach what the server said (status, code, request id).
    pub fn with_detail(mut self, detail: ServerDetail) -> Self {
        self.detail = Some(Box::new(detail));
        self
    }

    /// The same error with `suffix` added to its message.
    pub fn with_suffix(mut self, suffix: &str) -> Self {
        self.message.push_str(suffix);
        self
    }

    /// What the server said, when the error came from a server response.
    pub fn detail(&self) -> Option<&ServerDetail> {
        self.detail.as_deref()
    }

    /// HTTP status of the failed response, if any.
    pub fn status(&self) -> Option<u16> {
        self.detail.as_ref().and_then(|d| d.status)
    }

    /// Whether another attempt of the same request may succeed: throttling, timeouts, 5xx and
    /// connection-level failures; never a 4xx answer, a bad argument or a cancellation.
    pub fn is_transient(&self) -> bool {
        match self.kind {
            ErrorKind::Throttled | ErrorKind::Timeout => true,
            ErrorKind::Io => self.status().is_none_or(|s| s >= 500),
            _ => false,
        }
    }

    /// An impossible byte range (a `ValueError` in Python) about `uri`.
    pub fn invalid_range(uri: &str, message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidRange, Some(uri), message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn uri(&self) -> Option<&str> {
        self.uri.as_deref()
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn cancelled() -> Self {
        Error::new(ErrorKind::Cancelled, None, "the operation was cancelled")
    }

    pub fn invalid_config(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidConfig, None, message)
    }

    pub fn invalid_uri(uri: &str, reason: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidUri, Some(uri), reason)
    }

    /// Attach a URI when the error does not name one yet.
    pub fn with_uri(mut self, uri: &str) -> Self {
        if self.uri.is_none() {
            self.uri = Some(uri.to_owned());
        }
        self
    }

    /// Map a local I/O error about `uri`.
    pub fn from_io(err: &std::io::Error, uri: &str) -> Self {
        use std::io::ErrorKind as K;
        let kind = match err.kind() {
            K::NotFound => ErrorKind::NotFound,
            K::PermissionDenied => ErrorKind::PermissionDenied,
            K::TimedOut => ErrorKind::Timeout,
            K::InvalidInput => ErrorKind::InvalidConfig,
            _ => ErrorKind::Io,
        };
        Error::new(kind, Some(uri), err.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.uri {
            Some(uri) => write!(f, "{}: {}: {}", self.kind.describe(), uri, self.message),
            None => write!(f, "{}: {}", self.kind.describe(), self.message),
        }
    }
}

impl std::error::Error for Error {}

/// Render an error and its `source()` chain as "outer: inner: innermost", skipping repeats.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !s.is_empty() && !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_kind_uri_and_message() {
        let e = Error::new(ErrorKind::NotFound, Some("s3://b/k"), "NoSuchKey");
        assert_eq!(e.to_string(), "not found: s3://b/k: NoSuchKey");
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn io_errors_map_to_kinds() {
        let e = Error::from_io(&std::io::Error::from(std::io::ErrorKind::NotFound), "file:///x");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.uri(), Some("file:///x"));
    }
}
