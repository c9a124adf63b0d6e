//! Parsing of `s3://bucket/key`, `az://container/blob`, `gs://bucket/object`, `file:///path` and
//! `direct:///path` URIs.
//!
//! Keys are taken literally (no percent-decoding): `s3://b/a b.txt` is the key `a b.txt`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The schemes served, for messages.
const SCHEMES: &str = "s3://, az://, gs://, file://, direct://";

/// A parsed storage location: an object, or a prefix for listing and bulk operations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    S3 { bucket: String, key: String },
    Azure { container: String, key: String },
    Gcs { bucket: String, key: String },
    File { path: PathBuf },
    Direct { path: PathBuf },
}

impl Location {
    /// Parse any URI; the key or path may be empty (a bucket or prefix).
    pub fn parse(uri: &str) -> Result<Self> {
        let (scheme, rest) = uri.split_once("://").ok_or_else(|| {
            Error::invalid_uri(
                uri,
                "expected a URI like s3://bucket/key, az://container/blob, gs://bucket/object, file:///path or direct:///path",
            )
        })?;
        match scheme {
            "s3" => {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                validate_bucket(uri, bucket)?;
                Ok(Location::S3 { bucket: bucket.to_owned(), key: key.to_owned() })
            }
            "az" => {
                let (container, key) = rest.split_once('/').unwrap_or((rest, ""));
                validate_container(uri, container)?;
                Ok(Location::Azure { container: container.to_owned(), key: key.to_owned() })
            }
            "gs" => {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                validate_gcs_bucket(uri, bucket)?;
                Ok(Location::Gcs { bucket: bucket.to_owned(), key: key.to_owned() })
            }
            "file" => Ok(Location::File { path: local_path(uri, rest)? }),
            "direct" => Ok(Location::Direct { path: local_path(uri, rest)? }),
            "gcs" | "http" | "https" => Err(Error::invalid_uri(
                uri,
                format!("the {scheme}:// scheme is not supported yet (supported: {SCHEMES})"),
            )),
            _ => Err(Error::invalid_uri(uri, format!("unknown scheme {scheme:?} (supported: {SCHEMES})"))),
        }
    }

    /// Parse a URI that must name one object (non-empty key / file path).
    pub fn parse_object(uri: &str) -> Result<Self> {
        let loc = Location::parse(uri)?;
        match &loc {
            Location::S3 { key, .. } | Location::Azure { key, .. } | Location::Gcs { key, .. }
                if key.is_empty() || key.ends_with('/') =>
            {
                Err(Error::invalid_uri(uri, "names a bucket or prefix, not an object"))
            }
            Location::File { path } | Location::Direct { path } if path.as_os_str().is_empty() => {
                Err(Error::invalid_uri(uri, "names no file"))
            }
            _ => Ok(loc),
        }
    }

    /// Parse a URI that must name a bucket (S3) or a directory (file/direct), with no key.
    pub fn parse_bucket(uri: &str) -> Result<Self> {
        let loc = Location::parse(uri)?;
        match &loc {
            Location::S3 { key, .. } if !key.trim_end_matches('/').is_empty() => {
                return Err(Error::invalid_uri(uri, "names an object; expected s3://bucket"));
            }
            Location::Azure { key, .. } if !key.trim_end_matches('/').is_empty() => {
                return Err(Error::invalid_uri(uri, "names a blob; expected az://container"));
            }
            Location::Gcs { key, .. } if !key.trim_end_matches('/').is_empty() => {
                return Err(Error::invalid_uri(uri, "names an object; expected gs://bucket"));
            }
            _ => {}
        }
        Ok(loc)
    }

    /// The same location with `suffix` appended to the key or path (as a string, no separator added).
    pub fn join(&self, suffix: &str) -> Location {
        match self {
            Location::S3 { bucket, key } => {
                Location::S3 { bucket: bucket.clone(), key: format!("{key}{suffix}") }
            }
            Location::Azure { container, key } => {
                Location::Azure { container: container.clone(), key: format!("{key}{suffix}") }
            }
            Location::Gcs { bucket, key } => {
                Location::Gcs { bucket: bucket.clone(), key: format!("{key}{suffix}") }
            }
            Location::File { path } => Location::File { path: join_str(path, suffix) },
            Location::Direct { path } => Location::Direct { path: join_str(path, suffix) },
        }
    }

    /// The scheme, as written in URIs.
    pub fn scheme(&self) -> &'static str {
        match self {
            Location::S3 { .. } => "s3",
            Location::Azure { .. } => "az",
            Location::Gcs { .. } => "gs",
            Location::File { .. } => "file",
            Location::Direct { .. } => "direct",
        }
    }

    /// The URI string of this location.
    pub fn to_uri(&self) -> String {
        match self {
            Location::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
            Location::Azure { container, key } => format!("az://{container}/{key}"),
            Location::Gcs { bucket, key } => format!("gs://{bucket}/{key}"),
            Location::File { path } => format!("file://{}", path.display()),
            Location::Direct { path } => format!("direct://{}", path.display()),
        }
    }

    /// The key (S3) or path string (file/direct) that prefix matching works on.
    pub fn key_str(&self) -> String {
        match self {
            Location::S3 { key, .. } | Location::Azure { key, .. } | Location::Gcs { key, .. } => key.clone(),
            Location::File { path } | Location::Direct { path } => path.to_string_lossy().into_owned(),
        }
    }

    /// The same location with the key or path ending in exactly one `/` (a "directory" prefix).
    pub fn as_dir_prefix(&self) -> Location {
        let key = self.key_str();
        if key.is_empty() || key.ends_with('/') {
            self.clone()
        } else {
            self.join("/")
        }
    }
}

fn join_str(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn local_path(uri: &str, rest: &str) -> Result<PathBuf> {
    // RFC 8089: `file://localhost/x` is `/x` (the authority names this machine).
    let rest = match rest.strip_prefix("localhost") {
        Some(after) if after.starts_with('/') => after,
        _ => rest,
    };
    if rest.is_empty() {
        return Err(Error::invalid_uri(uri, "names no path (use file:///absolute/path)"));
    }
    if rest.contains('\0') {
        return Err(Error::invalid_uri(uri, "contains a NUL byte"));
    }
    absolute(Path::new(rest)).map_err(|e| e.with_uri(uri))
}

/// A local path made absolute against the current directory, now: the one place a relative local
/// path (`"dataset"`, `"./dataset"`, `file://rel/x`) is resolved. `.` components and repeated
/// separators go; `..` stays (lexical folding would be wrong across symlinks).
pub fn absolute(path: &Path) -> Result<PathBuf> {
    if path.as_os_str().is_empty() {
        return Err(Error::invalid_config("an empty local path"));
    }
    std::path::absolute(path).map_err(|e| Error::from_io(&e, &path.to_string_lossy()))
}

fn validate_bucket(uri: &str, bucket: &str) -> Result<()> {
    if bucket.is_empty() {
        return Err(Error::invalid_uri(uri, "has no bucket name (expected s3://bucket/key)"));
    }
    if bucket.len() > 255 {
        return Err(Error::invalid_uri(uri, "bucket name is longer than 255 characters"));
    }
    if let Some(c) = bucket.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))) {
        return Err(Error::invalid_uri(uri, format!("bucket name contains {c:?}")));
    }
    Ok(())
}

/// Azure container names: 3-63 characters of lowercase letters, digits and single hyphens,
/// starting and ending with a letter or digit (`$root` and `$web` are the special ones).
fn validate_container(uri: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid_uri(uri, "has no container name (expected az://container/blob)"));
    }
    if name == "$root" || name == "$web" {
        return Ok(());
    }
    let ok_chars = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !(3..=63).contains(&name.len())
        || !ok_chars
        || name.starts_with('-')
        || name.ends_with('-')
        || name.contains("--")
    {
        return Err(Error::invalid_uri(
            uri,
            format!("{name:?} is not a valid Azure container name (3-63 lowercase letters, digits and single hyphens)"),
        ));
    }
    Ok(())
}

/// GCS bucket names: 3-63 characters (up to 222 with dots) of lowercase letters, digits, `-`, `_`
/// and `.`, starting and ending with a letter or digit.
fn validate_gcs_bucket(uri: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid_uri(uri, "has no bucket name (expected gs://bucket/object)"));
    }
    let max = if name.contains('.') { 222 } else { 63 };
    let ok_chars =
        name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=max).contains(&name.len())
        || !ok_chars
        || !alnum(name.chars().next())
        || !alnum(name.chars().last())
    {
        return Err(Error::invalid_uri(
            uri,
            format!(
                "{name:?} is not a valid GCS bucket name (3-63 lowercase letters, digits, '-', '_' and '.')"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn parses_s3() {
        assert_eq!(
            Location::parse("s3://b/a/b c").unwrap(),
            Location::S3 { bucket: "b".into(), key: "a/b c".into() }
        );
        assert_eq!(Location::parse("s3://b").unwrap(), Location::S3 { bucket: "b".into(), key: "".into() });
    }

    #[test]
    fn parses_azure() {
        assert_eq!(
            Location::parse("az://data-1/a/b c").unwrap(),
            Location::Azure { container: "data-1".into(), key: "a/b c".into() }
        );
        assert_eq!(Location::parse("az://data-1/x").unwrap().to_uri(), "az://data-1/x");
        assert!(Location::parse_object("az://data-1/dir/").is_err());
        assert!(Location::parse_bucket("az://data-1/k").is_err());
    }

    #[test]
    fn parses_gcs() {
        assert_eq!(
            Location::parse("gs://my_bucket.x/a/b").unwrap(),
            Location::Gcs { bucket: "my_bucket.x".into(), key: "a/b".into() }
        );
        assert!(Location::parse_object("gs://bkt/dir/").is_err());
        assert!(Location::parse_bucket("gs://bkt/k").is_err());
    }

    #[test]
    fn parses_local() {
        assert_eq!(Location::parse("file:///tmp/x").unwrap(), Location::File { path: "/tmp/x".into() });
        assert_eq!(Location::parse("direct:///d/x").unwrap(), Location::Direct { path: "/d/x".into() });
        assert_eq!(Location::parse("file://localhost/x").unwrap(), Location::File { path: "/x".into() });
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(Location::parse("file://rel/./x").unwrap(), Location::File { path: cwd.join("rel/x") });
        assert_eq!(absolute(Path::new("./d//e")).unwrap(), cwd.join("d/e"));
    }

    #[test]
    fn rejects_bad_uris_with_invalid_uri() {
        for bad in [
            "",
            "bucket/key",
            "s3://",
            "s3:///key",
            "ftp://x/y",
            "s3://Bad!/k",
            "file://",
            "gs://b/k",
            "az://Up/k",
            "az:///k",
        ] {
            let err = Location::parse_object(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidUri, "{bad}: {err}");
            assert_eq!(err.uri(), Some(bad));
        }
    }

    #[test]
    fn object_needs_a_key() {
        assert_eq!(Location::parse_object("s3://b").unwrap_err().kind(), ErrorKind::InvalidUri);
        assert_eq!(Location::parse_object("s3://b/dir/").unwrap_err().kind(), ErrorKind::InvalidUri);
        assert!(Location::parse_object("s3://b/k").is_ok());
    }

    #[test]
    fn dir_prefix() {
        let l = Location::parse("s3://b/data").unwrap().as_dir_prefix();
        assert_eq!(l.to_uri(), "s3://b/data/");
        assert_eq!(Location::parse("s3://b").unwrap().as_dir_prefix().to_uri(), "s3://b/");
    }
}
