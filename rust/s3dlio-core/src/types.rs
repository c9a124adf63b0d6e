//! Types shared by every backend and operation: object metadata, byte ranges, and the options of
//! reads and writes. This module imports nothing else of the crate but errors.

use bytes::Bytes;

use crate::error::{Error, Result};

/// One listed or stat'ed object. `is_dir` marks a common prefix of a one-level listing and a
/// folder marker (a zero-byte object whose key ends in `/`): neither is ever a sample, and
/// transfers skip both. Directory URIs end in `/`.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectInfo {
    pub uri: String,
    pub size: u64,
    pub etag: Option<String>,
    /// Seconds since the Unix epoch.
    pub last_modified: Option<f64>,
    pub is_dir: bool,
}

impl ObjectInfo {
    pub fn dir(uri: String) -> ObjectInfo {
        ObjectInfo { uri, size: 0, etag: None, last_modified: None, is_dir: true }
    }
}

/// One page of a listing.
pub type ListPage = Vec<ObjectInfo>;

/// `length` bytes at `offset` (`None`: to the end of the object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub length: Option<u64>,
}

impl ByteRange {
    pub fn new(offset: u64, length: Option<u64>) -> ByteRange {
        ByteRange { offset, length }
    }

    /// The range as `(offset, length)` inside an object of `size` bytes; an empty range or one
    /// that does not lie entirely inside the object is an `InvalidRange` error naming `uri`. All
    /// arithmetic is checked: offsets and lengths come from users.
    pub fn resolve(&self, size: u64, uri: &str) -> Result<(u64, u64)> {
        let len = match self.length {
            Some(l) => l,
            None => size.saturating_sub(self.offset),
        };
        let end = self.offset.checked_add(len);
        if len == 0 || end.is_none_or(|e| e > size) {
            return Err(Error::invalid_range(
                uri,
                format!("range {} is outside the object (size {size})", self.describe()),
            ));
        }
        Ok((self.offset, len))
    }

    /// The last byte's offset (inclusive), or an error when `offset + length` overflows.
    pub fn last_byte(&self, uri: &str) -> Result<Option<u64>> {
        match self.length {
            None => Ok(None),
            Some(0) => Err(Error::invalid_range(uri, "an empty range selects no byte")),
            Some(l) => self.offset.checked_add(l - 1).map(Some).ok_or_else(|| {
                Error::invalid_range(uri, format!("range {} ends past byte 2^64", self.describe()))
            }),
        }
    }

    /// `"<offset>+<length>"` or `"<offset>.."`, for messages.
    pub fn describe(&self) -> String {
        match self.length {
            Some(l) => format!("{}+{l}", self.offset),
            None => format!("{}..", self.offset),
        }
    }
}

/// Options of one read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// Read only this range.
    pub range: Option<ByteRange>,
    /// With a range: the range may be cut short at the object's end (the response says how much
    /// there is). Without it a range must come back whole.
    pub allow_short: bool,
    /// Succeed only while the object still has this ETag (`If-Match`); otherwise
    /// [`crate::ErrorKind::Changed`].
    pub if_match: Option<String>,
    /// The object's total size must be this (a size from a listing): a different size is an
    /// error, never a silently truncated object.
    pub expected_size: Option<u64>,
}

/// A finished read.
#[derive(Debug, Clone)]
pub struct GetResult {
    pub data: Bytes,
    /// The whole object's size, when the response said it (always for a whole-object read).
    pub size: Option<u64>,
    /// The version read, where the backend has one.
    pub etag: Option<String>,
}

/// Options of one write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Local backends: flush the file and its directory to stable storage before the write
    /// returns (like `cp` then `sync`).
    pub fsync: bool,
}

/// One part of a multipart upload, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// 1-based part number.
    pub number: u32,
    /// The part's ETag (S3), for completion and verification.
    pub etag: Option<String>,
    /// The part's base64 CRC32C as the server acknowledged it (S3).
    pub crc32c: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked() {
        let r = |o, l| ByteRange::new(o, l);
        assert_eq!(r(0, None).resolve(10, "u").unwrap(), (0, 10));
        assert_eq!(r(9, Some(1)).resolve(10, "u").unwrap(), (9, 1));
        assert_eq!(r(3, None).resolve(10, "u").unwrap(), (3, 7));
        for bad in [r(10, None), r(9, Some(2)), r(u64::MAX, Some(2)), r(0, Some(0)), r(u64::MAX, None)] {
            let e = bad.resolve(10, "s3://b/k").unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidRange, "{bad:?}");
            assert_eq!(e.uri(), Some("s3://b/k"));
        }
        assert!(r(u64::MAX, Some(2)).last_byte("u").is_err());
        assert_eq!(r(u64::MAX, Some(1)).last_byte("u").unwrap(), Some(u64::MAX));
        assert_eq!(r(5, None).last_byte("u").unwrap(), None);
    }
}
