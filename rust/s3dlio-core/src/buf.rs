//! Zeroed buffers for whole objects, written once (by a read or by ranged GETs) and then owned by a
//! `Bytes` (handed to Python without a copy).
//!
//! Large buffers are anonymous mappings, the kernel hands out their pages zeroed (no memset pass)
//! and `munmap` on drop returns the memory at once. Faulting fresh pages in one 4 KiB page at a
//! time costs a trap per page; buffers up to [`POPULATE_MAX`] are populated in one call instead
//! (`MADV_POPULATE_WRITE`, Linux 5.14+; elsewhere the pages fault in as they are written), which
//! halved the cost of fresh memory on the benchmark machine (docs/benchmarks.md). Larger buffers
//! (a ranged 1 GiB GET) fault in as their ranges arrive, so filling overlaps the network instead
//! of delaying the first request. Huge pages (`MADV_HUGEPAGE`) are deliberately not requested:
//! with the common `defrag=madvise` setting the kernel compacts memory synchronously to find
//! them, which made reads several times slower once the page cache had filled memory.
//! Small buffers come from the heap (`calloc`).

use std::ptr::NonNull;

use bytes::Bytes;

use crate::error::{Error, ErrorKind, Result};

/// Buffers at least this large are mapped (glibc would map them too: s3dlio sets its mmap threshold
/// to 1 MiB, see runtime.rs); smaller ones are heap allocations.
pub const MAP_THRESHOLD: usize = 1 << 20;
/// Mapped buffers up to this size are populated when allocated.
pub const POPULATE_MAX: usize = 64 << 20;
/// `MADV_POPULATE_WRITE` (Linux 5.14), not in every libc crate's constants.
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// A zeroed, writable buffer of `len` bytes (see the module documentation).
pub struct ZeroedBuf(Storage);

enum Storage {
    Heap(Vec<u8>),
    Map { ptr: NonNull<u8>, len: usize },
}

// SAFETY: the mapping is owned exclusively by this value; shared access is read-only (`AsRef`).
unsafe impl Send for ZeroedBuf {}
// SAFETY: see above.
unsafe impl Sync for ZeroedBuf {}

impl ZeroedBuf {
    pub fn new(len: usize, uri: &str) -> Result<ZeroedBuf> {
        if len < MAP_THRESHOLD {
            return Ok(ZeroedBuf(Storage::Heap(vec![0u8; len])));
        }
        let oom = || Error::new(ErrorKind::Io, Some(uri), format!("cannot allocate {len} bytes"));
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(oom());
        }
        if len <= POPULATE_MAX {
            // SAFETY: advice on the mapping just made. Failure (an older kernel) only means the
            // pages fault in one by one as they are written.
            unsafe {
                libc::madvise(raw, len, MADV_POPULATE_WRITE);
            }
        }
        let ptr = NonNull::new(raw.cast::<u8>()).ok_or_else(oom)?;
        Ok(ZeroedBuf(Storage::Map { ptr, len }))
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Storage::Heap(v) => v.len(),
            Storage::Map { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.0 {
            Storage::Heap(v) => v,
            // SAFETY: the mapping is valid for `len` zero-initialised bytes and uniquely borrowed.
            Storage::Map { ptr, len, .. } => unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), *len) },
        }
    }

    /// The buffer as `Bytes`, without a copy.
    pub fn freeze(mut self) -> Bytes {
        match self.0 {
            Storage::Heap(ref mut v) => Bytes::from(std::mem::take(v)),
            Storage::Map { .. } => Bytes::from_owner(self),
        }
    }
}

impl AsRef<[u8]> for ZeroedBuf {
    fn as_ref(&self) -> &[u8] {
        match &self.0 {
            Storage::Heap(v) => v,
            // SAFETY: the mapping is valid for `len` initialised bytes while self lives.
            Storage::Map { ptr, len, .. } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), *len) },
        }
    }
}

impl Drop for ZeroedBuf {
    fn drop(&mut self) {
        if let Storage::Map { ptr, len } = self.0 {
            // SAFETY: the range was mapped in `new` and is no longer referenced.
            unsafe {
                libc::munmap(ptr.as_ptr().cast(), len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_buffers_are_zeroed_writable_and_frozen_without_copy() {
        for len in [0, 1, 4096, MAP_THRESHOLD - 1, MAP_THRESHOLD, MAP_THRESHOLD + 12345, POPULATE_MAX + 1] {
            let mut b = ZeroedBuf::new(len, "test://").unwrap();
            assert_eq!(b.len(), len);
            assert!(b.as_ref().iter().all(|&x| x == 0));
            if let Some(last) = b.as_mut_slice().last_mut() {
                *last = 7;
            }
            let addr = b.as_ref().as_ptr() as usize;
            if len >= MAP_THRESHOLD {
                assert_eq!(addr % 4096, 0, "mapped buffers are page aligned (O_DIRECT needs it)");
            }
            let bytes = b.freeze();
            assert_eq!(bytes.len(), len);
            assert_eq!(bytes.as_ptr() as usize, addr, "freeze does not copy");
            if len > 0 {
                assert_eq!(bytes[len - 1], 7);
            }
        }
    }
}
