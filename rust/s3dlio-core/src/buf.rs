//! Zeroed buffers for whole objects, written once (by a read or by ranged GETs) and then owned by a
//! `Bytes` (handed to Python without a copy).
//!
//! Large buffers are anonymous mappings (memmap2): the kernel hands out their pages zeroed (no
//! memset pass) and `munmap` on drop returns the memory at once. Faulting fresh pages in one 4 KiB
//! page at a time costs a trap per page; buffers up to [`POPULATE_MAX`] are populated when mapped
//! instead (`MAP_POPULATE`, which write-faults a private writable mapping), which halved the cost
//! of fresh memory on the benchmark machine (docs/benchmarks.md). Larger buffers
//! (a ranged 1 GiB GET) fault in as their ranges arrive, so filling overlaps the network instead
//! of delaying the first request. Huge pages (`MADV_HUGEPAGE`) are deliberately not requested:
//! with the common `defrag=madvise` setting the kernel compacts memory synchronously to find
//! them, which made reads several times slower once the page cache had filled memory.
//! Small buffers come from the heap (`calloc`).

use bytes::Bytes;
use memmap2::{MmapMut, MmapOptions};

use crate::error::{Error, ErrorKind, Result};

/// Buffers at least this large are mapped (glibc would map them too: s3dlio sets its mmap threshold
/// to 1 MiB, see runtime.rs); smaller ones are heap allocations.
pub const MAP_THRESHOLD: usize = 1 << 20;
/// Mapped buffers up to this size are populated when allocated.
pub const POPULATE_MAX: usize = 64 << 20;

/// A zeroed, writable buffer of `len` bytes (see the module documentation).
pub struct ZeroedBuf(Storage);

enum Storage {
    Heap(Vec<u8>),
    Map(MmapMut),
}

impl ZeroedBuf {
    pub fn new(len: usize, uri: &str) -> Result<ZeroedBuf> {
        if len < MAP_THRESHOLD {
            return Ok(ZeroedBuf(Storage::Heap(vec![0u8; len])));
        }
        let mut opts = MmapOptions::new();
        opts.len(len);
        if len <= POPULATE_MAX {
            opts.populate();
        }
        let map = opts
            .map_anon()
            .map_err(|e| Error::new(ErrorKind::Io, Some(uri), format!("cannot allocate {len} bytes: {e}")))?;
        Ok(ZeroedBuf(Storage::Map(map)))
    }

    pub fn len(&self) -> usize {
        self.as_ref().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.0 {
            Storage::Heap(v) => v,
            Storage::Map(m) => m,
        }
    }

    /// The buffer as `Bytes`, without a copy.
    pub fn freeze(self) -> Bytes {
        match self.0 {
            Storage::Heap(v) => Bytes::from(v),
            Storage::Map(m) => Bytes::from_owner(m),
        }
    }
}

impl AsRef<[u8]> for ZeroedBuf {
    fn as_ref(&self) -> &[u8] {
        match &self.0 {
            Storage::Heap(v) => v,
            Storage::Map(m) => m,
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
