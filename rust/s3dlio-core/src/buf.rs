//! Zeroed buffers for whole objects, written once (by a read or by ranged GETs) and then owned by a
//! `Bytes` (handed to Python without a copy).
//!
//! Large buffers are anonymous mappings aligned to 2 MiB and advised for transparent huge pages
//! (`MADV_HUGEPAGE`), so that filling 16 MiB takes 8 page faults instead of 4,096. Page faults of
//! fresh memory were the largest client-side cost of reading large objects (docs/benchmarks.md).
//! The kernel hands out mapped pages zeroed, so the buffer is initialised without a memset pass;
//! `munmap` on drop returns the memory at once. Small buffers come from the heap (`calloc`).

use std::ptr::NonNull;

use bytes::Bytes;

use crate::error::{Error, ErrorKind, Result};

/// Transparent-huge-page size on x86-64 and arm64 (4 KiB base pages).
const HUGE: usize = 2 << 20;
/// Buffers at least this large are mapped; smaller ones are heap allocations.
pub const MAP_THRESHOLD: usize = 2 * HUGE;

/// A zeroed, writable buffer of `len` bytes (see the module documentation).
pub struct ZeroedBuf(Storage);

enum Storage {
    Heap(Vec<u8>),
    Map { ptr: NonNull<u8>, len: usize, mapped: usize },
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
        let mapped = len.checked_next_multiple_of(HUGE).ok_or_else(oom)?;
        let reserve = mapped.checked_add(HUGE).ok_or_else(oom)?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(oom());
        }
        // Keep the 2 MiB-aligned part and give back the unaligned head and the surplus tail.
        let start = raw as usize;
        let aligned = start.next_multiple_of(HUGE);
        let head = aligned - start;
        let tail = reserve - head - mapped;
        // SAFETY: both ranges lie inside the mapping just made, and nothing refers to them.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + mapped) as *mut libc::c_void, tail);
            }
            // Advice only: where huge pages are disabled this fails harmlessly.
            libc::madvise(aligned as *mut libc::c_void, mapped, libc::MADV_HUGEPAGE);
        }
        let ptr = NonNull::new(aligned as *mut u8).ok_or_else(oom)?;
        Ok(ZeroedBuf(Storage::Map { ptr, len, mapped }))
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
        if let Storage::Map { ptr, mapped, .. } = self.0 {
            // SAFETY: the range was mapped in `new` and is no longer referenced.
            unsafe {
                libc::munmap(ptr.as_ptr().cast(), mapped);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_buffers_are_zeroed_writable_and_frozen_without_copy() {
        for len in [0, 1, 4096, MAP_THRESHOLD - 1, MAP_THRESHOLD, MAP_THRESHOLD + 12345, 3 * HUGE] {
            let mut b = ZeroedBuf::new(len, "test://").unwrap();
            assert_eq!(b.len(), len);
            assert!(b.as_ref().iter().all(|&x| x == 0));
            if let Some(last) = b.as_mut_slice().last_mut() {
                *last = 7;
            }
            let addr = b.as_ref().as_ptr() as usize;
            if len >= MAP_THRESHOLD {
                assert_eq!(addr % HUGE, 0, "mapped buffers are 2 MiB aligned");
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
