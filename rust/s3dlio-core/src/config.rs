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

/// Validated storage settings. `None` fields are resolved from the environment when a client is
/// built. `Debug` redacts secrets.
#[derive(Clone, PartialEq)]
pub struct StoreConfig {
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub profile: Option<String>,
    pub force_path_style: Option<bool>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub operation_timeout: Option<Duration>,
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_concurrency: usize,
    pub multipart_threshold: u64,
    pub part_size: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            endpoint_url: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            profile: None,
            force_path_style: None,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
            operation_timeout: None,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_concurrency: 64,
            multipart_threshold: 16 * MIB,
            part_size: 8 * MIB,
        }
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |v: &Option<String>| v.as_ref().map(|_| "***");
        f.debug_struct("StoreConfig")
            .field("endpoint_url", &self.endpoint_url)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redact(&self.secret_access_key))
            .field("session_token", &redact(&self.session_token))
            .field("profile", &self.profile)
            .field("force_path_style", &self.force_path_style)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_concurrency", &self.max_concurrency)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .finish()
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
        if let Some(ep) = &self.endpoint_url {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                return Err(Error::invalid_config(format!(
                    "endpoint_url must start with http:// or https://, got {ep:?}"
                )));
            }
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
    }
}
