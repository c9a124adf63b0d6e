//! Storage configuration as plain data: endpoint, credentials, timeouts, retries, transfer sizes.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

pub const MIB: u64 = 1024 * 1024;
/// S3's smallest allowed part (all parts but the last).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest allowed part.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
/// S3's part-count limit.
pub const MAX_PARTS: u64 = 10_000;

/// A configuration value crossing into the core from a binding (Python): the one generic form
/// every field is set from and read back as.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(u64),
    Float(f64),
    Str(String),
}

/// How a field is typed, for bindings that convert values and for generated docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// `str | None`
    OptStr,
    /// `bool | None`
    OptBool,
    /// `bool`
    Bool,
    /// Seconds (`float`), positive.
    Seconds,
    /// Seconds (`float | None`), positive.
    OptSeconds,
    /// A non-negative integer.
    Int,
    /// A non-negative integer or `None`.
    OptInt,
}

/// One field of [`StoreConfig`]: the single declaration bindings, docs and tests derive from.
#[derive(Debug, Clone, Copy)]
pub struct FieldSpec {
    pub name: &'static str,
    pub kind: FieldKind,
    /// A credential: redacted when shown (`"***"`).
    pub secret: bool,
    pub doc: &'static str,
}

/// Conversion of one field's type from and to [`Value`].
trait FieldValue: Sized {
    const KIND: FieldKind;
    fn from_value(name: &str, v: Value) -> Result<Self>;
    fn to_value(&self) -> Value;
}

fn wrong(name: &str, what: &str) -> Error {
    Error::invalid_config(format!("{name} must be {what}"))
}

impl FieldValue for Option<String> {
    const KIND: FieldKind = FieldKind::OptStr;
    fn from_value(name: &str, v: Value) -> Result<Self> {
        match v {
            Value::None => Ok(None),
            Value::Str(s) => Ok(Some(s)),
            _ => Err(wrong(name, "a string or None")),
        }
    }
    fn to_value(&self) -> Value {
        self.clone().map_or(Value::None, Value::Str)
    }
}

impl FieldValue for Option<bool> {
    const KIND: FieldKind = FieldKind::OptBool;
    fn from_value(name: &str, v: Value) -> Result<Self> {
        match v {
            Value::None => Ok(None),
            Value::Bool(b) => Ok(Some(b)),
            _ => Err(wrong(name, "a bool or None")),
        }
    }
    fn to_value(&self) -> Value {
        self.map_or(Value::None, Value::Bool)
    }
}

impl FieldValue for bool {
    const KIND: FieldKind = FieldKind::Bool;
    fn from_value(name: &str, v: Value) -> Result<Self> {
        match v {
            Value::Bool(b) => Ok(b),
            _ => Err(wrong(name, "a bool")),
        }
    }
    fn to_value(&self) -> Value {
        Value::Bool(*self)
    }
}

impl FieldValue for Duration {
    const KIND: FieldKind = FieldKind::Seconds;
    fn from_value(name: &str, v: Value) -> Result<Self> {
        match v {
            Value::Float(f) => seconds(name, f),
            #[allow(clippy::cast_precision_loss)]
            Value::Int(i) => seconds(name, i as f64),
            _ => Err(wrong(name, "a number of seconds")),
        }
    }
    fn to_value(&self) -> Value {
        Value::Float(self.as_secs_f64())
    }
}

impl FieldValue for Option<Duration> {
    const KIND: FieldKind = FieldKind::OptSeconds;
    fn from_value(name: &str, v: Value) -> Result<Self> {
        match v {
            Value::None => Ok(None),
            v => Duration::from_value(name, v).map(Some),
        }
    }
    fn to_value(&self) -> Value {
        self.map_or(Value::None, |d| d.to_value())
    }
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl FieldValue for $t {
            const KIND: FieldKind = FieldKind::Int;
            fn from_value(name: &str, v: Value) -> Result<Self> {
                match v {
                    Value::Int(i) => <$t>::try_from(i)
                        .map_err(|_| wrong(name, concat!("an integer that fits ", stringify!($t)))),
                    _ => Err(wrong(name, "a non-negative integer")),
                }
            }
            fn to_value(&self) -> Value {
                Value::Int(*self as u64)
            }
        }
    )*};
}
int_field!(u32, u64, usize);

impl FieldValue for Option<u64> {
    const KIND: FieldKind = FieldKind::OptInt;
    fn from_value(name: &str, v: Value) -> Result<Self> {
        match v {
            Value::None => Ok(None),
            v => u64::from_value(name, v).map(Some),
        }
    }
    fn to_value(&self) -> Value {
        self.map_or(Value::None, Value::Int)
    }
}

/// Declares [`StoreConfig`] once: the struct, its defaults, [`StoreConfig::FIELDS`] and the
/// generic [`StoreConfig::set`] / [`StoreConfig::get`] every binding uses.
macro_rules! store_config {
    ($( #[doc = $doc:literal] $(#[$secret:ident])? $name:ident : $ty:ty = $default:expr; )*) => {
        /// Validated storage settings. `None` fields are resolved from the environment when a
        /// client is built. `Debug` redacts secrets and shows only the last 4 characters of the
        /// access key id.
        #[derive(Clone, PartialEq, Eq, Hash)]
        pub struct StoreConfig {
            $( #[doc = $doc] pub $name: $ty, )*
        }

        impl Default for StoreConfig {
            fn default() -> Self {
                StoreConfig { $( $name: $default, )* }
            }
        }

        impl StoreConfig {
            /// Every field, in declaration order.
            pub const FIELDS: &'static [FieldSpec] = &[
                $( FieldSpec {
                    name: stringify!($name),
                    kind: <$ty as FieldValue>::KIND,
                    secret: store_config!(@secret $($secret)?),
                    doc: $doc.trim_ascii(),
                }, )*
            ];

            /// Set one field by name (unknown names and mistyped values are errors).
            pub fn set(&mut self, name: &str, v: Value) -> Result<()> {
                match name {
                    $( stringify!($name) => self.$name = <$ty as FieldValue>::from_value(name, v)?, )*
                    other => return Err(Error::invalid_config(format!("unknown configuration key {other:?}"))),
                }
                Ok(())
            }

            /// One field's value by name (secrets included: callers redact with [`FieldSpec::secret`]).
            pub fn get(&self, name: &str) -> Option<Value> {
                match name {
                    $( stringify!($name) => Some(self.$name.to_value()), )*
                    _ => None,
                }
            }
        }
    };
    (@secret secret) => { true };
    (@secret) => { false };
}

store_config! {
    /// S3 endpoint (`http(s)://host:port`), or several separated by commas (one store behind several gateways: requests are spread over them by `endpoint_policy`, and one that refuses connections is skipped); `None`: `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, else AWS.
    endpoint_url: Option<String> = None;
    /// How requests pick one of several endpoints: `"round_robin"` or `"least_outstanding"` (fewest requests in flight); `None`: round robin.
    endpoint_policy: Option<String> = None;
    /// Region; `None`: `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile, else `us-east-1`.
    region: Option<String> = None;
    /// Static credentials, with `secret_access_key`; nothing else is probed.
    access_key_id: Option<String> = None;
    /// The secret of `access_key_id`.
    #[secret]
    secret_access_key: Option<String> = None;
    /// Session token of temporary credentials.
    #[secret]
    session_token: Option<String> = None;
    /// Profile of the shared AWS config files; `None`: `AWS_PROFILE`, else `default`.
    profile: Option<String> = None;
    /// Path-style addressing (`http://host/bucket/key`); `None`: on when an endpoint is set.
    force_path_style: Option<bool> = None;
    /// Seconds to establish a connection.
    connect_timeout: Duration = Duration::from_secs(5);
    /// Seconds without receiving a byte before a request attempt fails.
    read_timeout: Duration = Duration::from_secs(30);
    /// Seconds for one whole operation (one object read, write, stat or delete batch, one listing page): every attempt, backoff and the body included (`None`: unlimited).
    operation_timeout: Option<Duration> = None;
    /// Attempts of one request in all (1 = no retries), counted once across connection, status and body failures.
    max_attempts: u32 = 5;
    /// Seconds; base of the jittered exponential retry backoff.
    initial_backoff: Duration = Duration::from_millis(50);
    /// Requests in flight for get_many, put_many, multipart parts, upload/download and delete_prefix.
    max_concurrency: usize = 64;
    /// Objects of at least this many bytes are written in parts (multipart upload).
    multipart_threshold: u64 = 16 * MIB;
    /// Part size of multipart uploads and of streamed upload/download (S3 requires >= 5 MiB).
    part_size: u64 = 8 * MIB;
    /// `file://` and `direct://` writes by put, put_many, upload and download are flushed to stable storage (file and directory) before the call returns. (`s3dlio.open(uri, "wb")` flushes on close by default; its `fsync=False` turns that off.)
    fsync: bool = false;
    /// Bytes of freed read buffers this process keeps for reuse (one pool per process, shared by every store: the value of the config used last wins; 0 turns pooling off); `None`: `S3DLIO_BUFFER_POOL_BYTES`, else a sixteenth of physical memory, at most 1 GiB.
    buffer_pool_bytes: Option<u64> = None;
}

/// The last 4 characters of a key id (`"****1234"`), as the AWS CLI shows it.
pub fn mask_key_id(key: &str) -> String {
    let tail: String = key.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    if key.chars().count() > 4 {
        format!("****{tail}")
    } else {
        "****".to_owned()
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("StoreConfig");
        for spec in Self::FIELDS {
            let shown = match (spec.name, self.get(spec.name)) {
                (_, Some(Value::None)) => "None".to_owned(),
                ("access_key_id", Some(Value::Str(k))) => format!("{:?}", mask_key_id(&k)),
                (_, Some(_)) if spec.secret => "\"***\"".to_owned(),
                (_, Some(v)) => format!("{v:?}"),
                (_, None) => String::new(),
            };
            d.field(spec.name, &format_args!("{shown}"));
        }
        d.finish()
    }
}

/// Seconds as a `Duration`, rejecting negative, NaN, infinite and zero values.
pub fn seconds(name: &str, secs: f64) -> Result<Duration> {
    if !secs.is_finite() || secs <= 0.0 {
        return Err(Error::invalid_config(format!(
            "{name} must be a positive number of seconds, got {secs}"
        )));
    }
    Duration::try_from_secs_f64(secs)
        .map_err(|_| Error::invalid_config(format!("{name} is out of range: {secs}")))
}

impl StoreConfig {
    /// Check every field once; called when the config is constructed.
    pub fn validate(&self) -> Result<()> {
        if let Some(list) = &self.endpoint_url {
            let endpoints = crate::backend::endpoints::split_endpoints(list);
            if endpoints.is_empty() {
                return Err(Error::invalid_config("endpoint_url must not be empty"));
            }
            for ep in endpoints {
                if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                    return Err(Error::invalid_config(format!(
                        "endpoint_url must start with http:// or https://, got {ep:?}"
                    )));
                }
            }
        }
        if let Some(p) = &self.endpoint_policy {
            crate::backend::endpoints::Policy::parse(p)?;
        }
        for (name, v) in [("region", &self.region), ("profile", &self.profile)] {
            if matches!(v, Some(s) if s.is_empty()) {
                return Err(Error::invalid_config(format!("{name} must not be empty")));
            }
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(Error::invalid_config("access_key_id and secret_access_key must be given together"));
        }
        if self.session_token.is_some() && self.access_key_id.is_none() {
            return Err(Error::invalid_config("session_token needs access_key_id and secret_access_key"));
        }
        if self.max_attempts == 0 {
            return Err(Error::invalid_config("max_attempts must be at least 1"));
        }
        if self.max_concurrency == 0 {
            return Err(Error::invalid_config("max_concurrency must be at least 1"));
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return Err(Error::invalid_config(format!(
                "part_size must be between 5 MiB and 5 GiB (S3 limits), got {}",
                self.part_size
            )));
        }
        if self.multipart_threshold < MIN_PART_SIZE {
            return Err(Error::invalid_config(format!(
                "multipart_threshold must be at least 5 MiB, got {}",
                self.multipart_threshold
            )));
        }
        Ok(())
    }

    /// The endpoint: explicit, else `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`.
    pub fn resolved_endpoint(&self) -> Option<String> {
        self.endpoint_url.clone().or_else(|| {
            ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
                .iter()
                .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        StoreConfig::default().validate().unwrap();
    }

    #[test]
    fn rejects_bad_values() {
        let bad = [
            StoreConfig { part_size: 1, ..Default::default() },
            StoreConfig { max_attempts: 0, ..Default::default() },
            StoreConfig { max_concurrency: 0, ..Default::default() },
            StoreConfig { endpoint_url: Some("localhost:9000".into()), ..Default::default() },
            StoreConfig { access_key_id: Some("a".into()), ..Default::default() },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        assert!(seconds("t", -1.0).is_err());
        assert!(seconds("t", f64::NAN).is_err());
        assert_eq!(seconds("t", 0.5).unwrap(), Duration::from_millis(500));
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = StoreConfig {
            access_key_id: Some("AKIA".into()),
            secret_access_key: Some("supersecret".into()),
            session_token: Some("tok".into()),
            ..Default::default()
        };
        let s = format!("{c:?}");
        assert!(!s.contains("supersecret") && !s.contains("tok\""), "{s}");
        let c = StoreConfig { access_key_id: Some("AKIAABCDEFGH1234".into()), ..c };
        let s = format!("{c:?}");
        assert!(s.contains("****1234") && !s.contains("AKIAABCD"), "{s}");
        assert_eq!(mask_key_id("abc"), "****");
    }

    #[test]
    fn fields_are_declared_once_and_round_trip() {
        let mut c = StoreConfig::default();
        assert_eq!(StoreConfig::FIELDS.len(), 18);
        for spec in StoreConfig::FIELDS {
            let v = c.get(spec.name).unwrap();
            c.set(spec.name, v).unwrap();
        }
        assert_eq!(c, StoreConfig::default());
        c.set("max_attempts", Value::Int(3)).unwrap();
        assert_eq!(c.max_attempts, 3);
        assert!(c.set("max_attempts", Value::Str("3".into())).is_err());
        assert!(c.set("nope", Value::None).is_err());
        c.set("buffer_pool_bytes", Value::Int(1 << 20)).unwrap();
        assert_eq!(c.buffer_pool_bytes, Some(1 << 20));
        c.set("buffer_pool_bytes", Value::None).unwrap();
        assert_eq!(c.buffer_pool_bytes, None);
        assert!(c.set("buffer_pool_bytes", Value::Float(1.0)).is_err());
    }
}
