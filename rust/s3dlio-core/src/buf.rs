//! Buffers for whole objects (and ranges), written once by a read and then owned by a `Bytes`
//! handed to Python without a copy; and the per-process pool they return to.
//!
//! **The pool.** When the last `Bytes` of an [`ObjBuf`] goes away (in Python: the last
//! `memoryview`, numpy array or tensor made from its `s3dlio.Buffer`, and the `Buffer` itself),
//! its memory goes back to a per-process pool instead of to the kernel, and the next read of a
//! similar size takes it: no page faults, no zeroing, no `munmap`/`mmap` pair. Sizes are rounded up
//! to classes (four per power of two, so at most 25 % is unused), and a read may take a free buffer
//! of up to four classes more (twice its size) when its own class has none; the pool keeps at most
//! [`limit`] bytes (`S3DLIO_BUFFER_POOL_BYTES`, or `StorageConfig.buffer_pool_bytes`; by default a
//! sixteenth of physical memory, at most 1 GiB; 0 turns pooling off), evicting the longest-idle
//! buffer first, and a background thread releases buffers idle for [`IDLE`]. A forked child starts
//! with an empty pool of its own (the parent's is never touched: its lock may have been held at the
//! fork); a buffer made by another process is freed, not pooled.
//!
//! Recycling is safe by construction: the memory is only reachable through the `Bytes` (and the
//! Python objects that keep it alive through the buffer protocol), so it is returned exactly when
//! nothing can read it any more. A recycled buffer holds the bytes of an earlier object: every
//! caller writes every byte it exposes (a read that falls short is an error, and the buffer is then
//! dropped, never exposed).
//!
//! **Fresh memory.** Large buffers are anonymous mappings (memmap2): the kernel hands out their
//! pages zeroed (no memset pass). Faulting fresh pages in one 4 KiB page at a time costs a trap per
//! page; buffers up to [`POPULATE_MAX`] are populated when mapped instead (`MAP_POPULATE`), which
//! halved the cost of fresh memory on the benchmark machine (docs/benchmarks.md). Larger buffers
//! (a ranged 1 GiB GET) fault in as their ranges arrive, so filling overlaps the network instead
//! of delaying the first request. Huge pages (`MADV_HUGEPAGE`) are deliberately not requested:
//! with the common `defrag=madvise` setting the kernel compacts memory synchronously to find
//! them, which made reads several times slower once the page cache had filled memory.
//! Small buffers come from the heap (`calloc`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use memmap2::{MmapMut, MmapOptions};

use crate::error::{Error, ErrorKind, Result};

/// Buffers at least this large are mapped (glibc would map them too: s3dlio sets its mmap threshold
/// to 1 MiB, see runtime.rs); smaller ones are heap allocations.
pub const MAP_THRESHOLD: usize = 1 << 20;
/// Mapped buffers up to this size are populated when allocated.
pub const POPULATE_MAX: usize = 64 << 20;
/// Buffers smaller than this are plain heap allocations, never pooled (malloc recycles them well).
pub const POOL_MIN: usize = 16 << 10;
/// A pooled buffer unused for this long is released by the trimming thread
/// (`S3DLIO_BUFFER_POOL_IDLE`: seconds).
pub const IDLE: Duration = Duration::from_secs(10);
/// The default pool bound is physical memory / this, at most [`DEFAULT_MAX`].
const DEFAULT_FRACTION: u64 = 16;
const DEFAULT_MAX: u64 = 1 << 30;
/// A request may take a free buffer up to this many size classes larger than its own (4 classes:
/// at most twice its size).
const FIT: usize = 4;
const PAGE: usize = 4096;

/// A writable buffer of `len` bytes for one read. Fresh ones are zeroed; recycled ones hold an
/// earlier object's bytes, so the caller must write all `len` bytes before [`ObjBuf::freeze`].
pub struct ObjBuf {
    mem: Option<Mem>,
    len: usize,
    /// The pool slot it returns to; `None`: not pooled.
    slot: Option<Slot>,
    /// The process that allocated it (only that process's pool takes it back).
    pid: u32,
}

enum Mem {
    Heap(Vec<u8>),
    Map(MmapMut),
}

impl Mem {
    fn as_slice(&self) -> &[u8] {
        match self {
            Mem::Heap(v) => v,
            Mem::Map(m) => m,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            Mem::Heap(v) => v,
            Mem::Map(m) => m,
        }
    }

    fn capacity(&self) -> usize {
        self.as_slice().len()
    }
}

/// A size class and whether the memory must be page aligned (mapped).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Slot {
    class: usize,
    mapped: bool,
}

/// The class `len` rounds up to: four classes per power of two (so at most 25 % unused), page
/// multiples from 16 KiB.
fn class_of(len: usize) -> Option<usize> {
    if len <= PAGE {
        return Some(PAGE);
    }
    let base = 1usize.checked_shl(usize::BITS - (len - 1).leading_zeros() - 1)?; // largest 2^k < len
    let step = (base / 4).max(PAGE);
    len.checked_next_multiple_of(step)
}

fn fresh(cap: usize, mapped: bool, uri: &str) -> Result<Mem> {
    if !mapped {
        return Ok(Mem::Heap(vec![0u8; cap]));
    }
    let mut opts = MmapOptions::new();
    opts.len(cap.max(1));
    if cap <= POPULATE_MAX {
        opts.populate();
    }
    let map = opts
        .map_anon()
        .map_err(|e| Error::new(ErrorKind::Io, Some(uri), format!("cannot allocate {cap} bytes: {e}")))?;
    Ok(Mem::Map(map))
}

impl ObjBuf {
    /// A buffer of `len` bytes (heap below [`MAP_THRESHOLD`], else mapped).
    pub fn new(len: usize, uri: &str) -> Result<ObjBuf> {
        Self::with(len, len >= MAP_THRESHOLD, uri)
    }

    /// A page-aligned buffer of `len` bytes (for `O_DIRECT`), of any size.
    pub fn aligned(len: usize, uri: &str) -> Result<ObjBuf> {
        Self::with(len, true, uri)
    }

    fn with(len: usize, mapped: bool, uri: &str) -> Result<ObjBuf> {
        let pid = std::process::id();
        let pooled = (len >= POOL_MIN || mapped) && limit()? > 0;
        let slot = if pooled { class_of(len).map(|class| Slot { class, mapped }) } else { None };
        let Some(slot) = slot else {
            let cap = if mapped { len.next_multiple_of(PAGE) } else { len };
            return Ok(ObjBuf { mem: Some(fresh(cap, mapped, uri)?), len, slot: None, pid });
        };
        let pool = pool();
        if let Some((got, mem)) = pool.take(slot) {
            return Ok(ObjBuf { mem: Some(mem), len, slot: Some(got), pid });
        }
        Ok(ObjBuf { mem: Some(fresh(slot.class, mapped, uri)?), len, slot: Some(slot), pid })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len;
        match &mut self.mem {
            Some(m) => &mut m.as_mut_slice()[..len],
            None => &mut [],
        }
    }

    /// The buffer as `Bytes`, without a copy (its memory returns to the pool when the last `Bytes`
    /// sharing it is dropped).
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for ObjBuf {
    fn as_ref(&self) -> &[u8] {
        match &self.mem {
            Some(m) => &m.as_slice()[..self.len],
            None => &[],
        }
    }
}

impl Drop for ObjBuf {
    fn drop(&mut self) {
        if let (Some(slot), Some(mem)) = (self.slot, self.mem.take()) {
            if self.pid == std::process::id() {
                pool().give(slot, mem);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The pool

/// The bound in bytes (`u64::MAX`: not resolved yet).
static LIMIT: AtomicU64 = AtomicU64::new(u64::MAX);
static POOL: AtomicPtr<Pool> = AtomicPtr::new(std::ptr::null_mut());

/// The pool's bound in bytes (resolved from `S3DLIO_BUFFER_POOL_BYTES` on first use; a value that
/// is not a byte count is an error, for every read, until a config sets the bound).
pub fn limit() -> Result<u64> {
    let l = LIMIT.load(Ordering::Relaxed);
    if l != u64::MAX {
        return Ok(l);
    }
    let resolved = match std::env::var("S3DLIO_BUFFER_POOL_BYTES") {
        Ok(v) => parse_bytes(&v).ok_or_else(|| {
            Error::invalid_config(format!(
                "S3DLIO_BUFFER_POOL_BYTES={v:?} is not a byte count (like 1073741824, 512M or 2G; 0 turns \
                 the buffer pool off)"
            ))
        })?,
        Err(_) => default_limit(),
    };
    let _ =
        LIMIT.compare_exchange(u64::MAX, resolved.min(u64::MAX - 1), Ordering::Relaxed, Ordering::Relaxed);
    Ok(LIMIT.load(Ordering::Relaxed))
}

/// Set the bound (bytes; 0 turns pooling off). Buffers over the new bound are released now.
pub fn set_limit(bytes: u64) {
    let bytes = bytes.min(u64::MAX - 1);
    if LIMIT.swap(bytes, Ordering::Relaxed) != bytes {
        pool().shrink_to(bytes);
    }
}

/// How long a pooled buffer may sit unused: `S3DLIO_BUFFER_POOL_IDLE` (seconds), else [`IDLE`].
fn idle() -> Duration {
    std::env::var("S3DLIO_BUFFER_POOL_IDLE")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .unwrap_or(IDLE)
}

/// `S3DLIO_BUFFER_POOL_BYTES`: a byte count, optionally with a K/M/G (binary) suffix.
fn parse_bytes(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, mult) = match v.char_indices().last()? {
        (i, 'k' | 'K') => (&v[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&v[..i], 1 << 20),
        (i, 'g' | 'G') => (&v[..i], 1 << 30),
        _ => (v, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// A sixteenth of physical memory, at most 1 GiB.
fn default_limit() -> u64 {
    // SAFETY: sysconf only reads system parameters.
    let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    if pages <= 0 || size <= 0 {
        return 256 << 20;
    }
    ((pages as u64).saturating_mul(size as u64) / DEFAULT_FRACTION).min(DEFAULT_MAX)
}

/// Counters of the pool, as `s3dlio.stats()["buffer_pool"]` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// The bound in bytes.
    pub limit: u64,
    /// Bytes (and buffers) held for reuse now.
    pub held_bytes: u64,
    pub held_buffers: u64,
    /// Buffers taken from the pool, and allocated fresh because none fitted.
    pub hits: u64,
    pub misses: u64,
    /// Buffers released to the kernel: over the bound, or idle for [`IDLE`].
    pub released: u64,
}

/// This process's pool counters; `reset` zeroes hits, misses and released after the read.
pub fn stats(reset: bool) -> PoolStats {
    let pool = pool();
    let mut st = pool.lock();
    let out = PoolStats {
        limit: limit().unwrap_or(0),
        held_bytes: st.held as u64,
        held_buffers: st.free.values().map(|q| q.len() as u64).sum(),
        hits: st.hits,
        misses: st.misses,
        released: st.released,
    };
    if reset {
        (st.hits, st.misses, st.released) = (0, 0, 0);
    }
    out
}

struct Pool {
    pid: u32,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Free buffers per slot, oldest first (reuse takes the newest: its pages are warmest).
    free: HashMap<Slot, VecDeque<(Mem, Instant)>>,
    held: usize,
    hits: u64,
    misses: u64,
    released: u64,
}

/// This process's pool, built on first use and again in a forked child (which leaks, never touches,
/// its parent's: that one's lock may have been held by another thread at the fork).
fn pool() -> &'static Pool {
    let pid = std::process::id();
    let cur = POOL.load(Ordering::Acquire);
    // SAFETY: a non-null POOL points to a leaked, never-freed Pool.
    if let Some(p) = unsafe { cur.as_ref() } {
        if p.pid == pid {
            return p;
        }
    }
    let new: &'static Pool = Box::leak(Box::new(Pool { pid, state: Mutex::new(State::default()) }));
    match POOL.compare_exchange(cur, new as *const Pool as *mut Pool, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            // Release idle buffers in the background. A failure to start the thread only means idle
            // buffers stay until the bound evicts them.
            let idle = idle();
            let _ = std::thread::Builder::new().name("s3dlio-bufpool".into()).spawn(move || loop {
                std::thread::sleep((idle / 4).max(Duration::from_millis(50)));
                new.release_idle(Instant::now(), idle);
            });
            new
        }
        // Another thread installed one first (the small Pool just built is leaked, once).
        // SAFETY: as above.
        Err(other) => unsafe { &*other },
    }
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing in State is left inconsistent by a panic; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A free buffer of `slot`'s class or, failing that, of one of the next [`FIT`] classes up
    /// (at most twice the size: objects of varied sizes then share buffers instead of each class
    /// keeping its own), with the slot it belongs to.
    fn take(&self, slot: Slot) -> Option<(Slot, Mem)> {
        let mut st = self.lock();
        let mut want = slot;
        let mut got = None;
        for _ in 0..=FIT {
            if let Some(m) = st.free.get_mut(&want).and_then(|q| q.pop_back()) {
                got = Some((want, m.0));
                break;
            }
            match want.class.checked_add(1).and_then(class_of) {
                Some(next) => want.class = next,
                None => break,
            }
        }
        match got {
            Some((found, mem)) => {
                if st.free.get(&found).is_some_and(VecDeque::is_empty) {
                    st.free.remove(&found);
                }
                st.held -= mem.capacity();
                st.hits += 1;
                Some((found, mem))
            }
            None => {
                st.misses += 1;
                None
            }
        }
    }

    fn give(&self, slot: Slot, mem: Mem) {
        let cap = mem.capacity();
        let limit = usize::try_from(limit().unwrap_or(0)).unwrap_or(usize::MAX);
        let mut released = Vec::new(); // freed after the lock is dropped (munmap takes a while)
        {
            let mut st = self.lock();
            if cap > limit {
                st.released += 1;
                released.push(mem);
            } else {
                while st.held + cap > limit {
                    match st.pop_oldest() {
                        Some(old) => released.push(old),
                        None => break,
                    }
                }
                st.held += cap;
                st.free.entry(slot).or_default().push_back((mem, Instant::now()));
            }
        }
        drop(released);
    }

    fn shrink_to(&self, bytes: u64) {
        let limit = usize::try_from(bytes).unwrap_or(usize::MAX);
        let mut released = Vec::new();
        {
            let mut st = self.lock();
            while st.held > limit {
                match st.pop_oldest() {
                    Some(old) => released.push(old),
                    None => break,
                }
            }
        }
        drop(released);
    }

    fn release_idle(&self, now: Instant, idle: Duration) {
        let mut released = Vec::new();
        {
            let mut st = self.lock();
            let mut freed = 0usize;
            for q in st.free.values_mut() {
                while q.front().is_some_and(|(_, at)| now.saturating_duration_since(*at) >= idle) {
                    if let Some((mem, _)) = q.pop_front() {
                        freed += mem.capacity();
                        released.push(mem);
                    }
                }
            }
            st.held -= freed;
            st.released += released.len() as u64;
            st.free.retain(|_, q| !q.is_empty());
        }
        drop(released);
    }
}

impl State {
    /// Remove the buffer that has been idle longest.
    fn pop_oldest(&mut self) -> Option<Mem> {
        let slot = *self
            .free
            .iter()
            .filter_map(|(s, q)| q.front().map(|(_, at)| (s, *at)))
            .min_by_key(|(_, at)| *at)?
            .0;
        let q = self.free.get_mut(&slot)?;
        let (mem, _) = q.pop_front()?;
        if q.is_empty() {
            self.free.remove(&slot);
        }
        self.held -= mem.capacity();
        self.released += 1;
        Some(mem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The pool and its bound are per process and these tests run in parallel threads: each test
    // uses sizes no other test uses, and only the bound-changing test changes the bound.

    #[test]
    fn classes_round_up_by_at_most_a_quarter() {
        assert_eq!(class_of(1), Some(PAGE));
        assert_eq!(class_of(PAGE), Some(PAGE));
        assert_eq!(class_of(16 << 20), Some(16 << 20));
        assert_eq!(class_of((16 << 20) + 1), Some(20 << 20));
        assert_eq!(class_of(20 << 20), Some(20 << 20));
        assert_eq!(class_of(65537), Some(81920));
        for len in [20_000usize, 65536, 100_000, 1 << 20, 3 << 20, (1 << 30) + 7] {
            let c = class_of(len).unwrap();
            assert!(c >= len && c.is_multiple_of(PAGE), "{len} -> {c}");
            assert!((c - len) * 4 <= c, "{len} -> {c} wastes more than a quarter");
        }
    }

    #[test]
    fn fresh_buffers_are_zeroed_writable_and_frozen_without_copy() {
        for len in
            [0, 1, 4096, 16_385, MAP_THRESHOLD - 1, MAP_THRESHOLD, MAP_THRESHOLD + 12345, POPULATE_MAX + 1]
        {
            let mut b = ObjBuf::new(len, "test://").unwrap();
            assert_eq!(b.len(), len);
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
        let b = ObjBuf::aligned(5000, "test://").unwrap();
        assert_eq!(b.as_ref().as_ptr() as usize % 4096, 0);
    }

    #[test]
    fn a_dropped_buffer_is_reused_and_a_live_one_never() {
        let len = (3 << 20) + 333; // a size only this test uses
        let mut a = ObjBuf::new(len, "test://").unwrap();
        a.as_mut_slice().fill(1);
        let a = a.freeze();
        let held = a.clone(); // a second view keeps it alive
        let addr = a.as_ptr() as usize;
        drop(a);
        let mut b = ObjBuf::new(len, "test://").unwrap();
        assert_ne!(b.as_ref().as_ptr() as usize, addr, "memory still viewed must not be handed out");
        b.as_mut_slice().fill(2);
        assert!(held.iter().all(|&x| x == 1), "the old view's bytes are unchanged");
        drop(b);
        drop(held);
        let c = ObjBuf::new(len, "test://").unwrap();
        let reused = [c.as_ref().as_ptr() as usize];
        assert!(reused.contains(&addr) || limit().unwrap() == 0, "the freed buffer is taken again");
    }

    #[test]
    fn a_read_takes_a_larger_free_buffer_up_to_twice_its_size() {
        let p = Pool { pid: std::process::id(), state: Mutex::new(State::default()) };
        let big = Slot { class: 40 << 20, mapped: true };
        p.give(big, Mem::Heap(vec![0; 8])); // stands for a 40 MiB buffer (only the slot matters here)
        let small = Slot { class: 16 << 20, mapped: true };
        assert!(p.take(small).is_none(), "40 MiB is more than twice 16 MiB: not taken");
        let (found, _) = p.take(Slot { class: 24 << 20, mapped: true }).expect("24 -> 40 MiB is within 2x");
        assert_eq!(found, big, "the buffer keeps its own slot (it returns there)");
        assert!(p.lock().free.is_empty());
        p.give(Slot { class: 40 << 20, mapped: false }, Mem::Heap(vec![0; 8]));
        assert!(
            p.take(Slot { class: 24 << 20, mapped: true }).is_none(),
            "heap never serves a mapped request"
        );
    }

    #[test]
    fn parse_bytes_accepts_suffixes() {
        assert_eq!(parse_bytes("0"), Some(0));
        assert_eq!(parse_bytes(" 1024 "), Some(1024));
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes("2g"), Some(2 << 30));
        assert_eq!(parse_bytes("64k"), Some(64 << 10));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes(""), None);
    }

    #[test]
    fn idle_buffers_are_released_and_the_bound_evicts_the_oldest() {
        let p = Pool { pid: std::process::id(), state: Mutex::new(State::default()) };
        let slot = Slot { class: 8192, mapped: false };
        p.give(slot, Mem::Heap(vec![0; 8192]));
        p.give(slot, Mem::Heap(vec![0; 8192]));
        assert_eq!(p.lock().held, 16384);
        p.release_idle(Instant::now(), IDLE);
        assert_eq!(p.lock().held, 16384, "not idle yet");
        p.release_idle(Instant::now() + IDLE, IDLE);
        let st = p.lock();
        assert_eq!((st.held, st.released, st.free.len()), (0, 2, 0));
        drop(st);
        p.give(slot, Mem::Heap(vec![0; 8192]));
        p.give(Slot { class: 12288, mapped: false }, Mem::Heap(vec![0; 12288]));
        p.shrink_to(12288);
        let st = p.lock();
        assert_eq!(st.held, 12288, "the oldest (8 KiB) went first");
        assert!(st.free.contains_key(&Slot { class: 12288, mapped: false }));
    }
}
