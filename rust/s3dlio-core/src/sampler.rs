//! Deterministic epoch order: seeded shuffles that change every epoch, identical on every rank and
//! every platform, and DistributedSampler-style sharding (rank first, then worker).
//!
//! Everything is a pure function of `(n, seed, epoch, shuffle, rank, world_size, ...)`, so the
//! state needed to resume is O(1): those numbers plus a position.

/// SplitMix64: a tiny, well-mixed generator, fully specified (no dependency whose stream might
/// change between versions).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (Lemire's nearly-divisionless method, unbiased). `bound > 0`.
    pub fn below(&mut self, bound: u64) -> u64 {
        let mut m = u128::from(self.next_u64()) * u128::from(bound);
        let mut low = m as u64;
        if low < bound {
            let threshold = bound.wrapping_neg() % bound;
            while low < threshold {
                m = u128::from(self.next_u64()) * u128::from(bound);
                low = m as u64;
            }
        }
        (m >> 64) as u64
    }
}

/// The stream seed of one epoch: different for every (seed, epoch) pair.
fn epoch_seed(seed: u64, epoch: u64) -> u64 {
    let mut g = SplitMix64::new(seed ^ 0x5333_444C_494F_0001);
    let a = g.next_u64();
    SplitMix64::new(a ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
}

/// `0..n` in epoch order: a Fisher-Yates permutation seeded by `(seed, epoch)` when `shuffle`,
/// else the identity.
pub fn epoch_order(n: u64, seed: u64, epoch: u64, shuffle: bool) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).collect();
    if shuffle && n > 1 {
        let mut g = SplitMix64::new(epoch_seed(seed, epoch));
        for i in (1..v.len()).rev() {
            let j = g.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
    v
}

/// How uneven shares are evened out across ranks, as torch's DistributedSampler does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evenness {
    /// Repeat samples from the start of the order so every rank gets `ceil(n / world)`.
    Pad,
    /// Drop the tail so every rank gets `floor(n / world)`.
    Drop,
}

/// The share of `rank` out of `world_size`: `order[rank::world_size]` after padding or dropping
/// so that every rank's share has the same length.
pub fn rank_share(order: &[u64], rank: usize, world_size: usize, evenness: Evenness) -> Vec<u64> {
    if world_size == 0 || rank >= world_size || order.is_empty() {
        return Vec::new();
    }
    let n = order.len();
    let total = match evenness {
        Evenness::Pad => n.div_ceil(world_size) * world_size,
        Evenness::Drop => n / world_size * world_size,
    };
    (rank..total).step_by(world_size).map(|i| order[i % n]).collect()
}

/// The share of worker `worker` out of `num_workers` within a rank's share: round-robin.
pub fn worker_share(share: &[u64], worker: usize, num_workers: usize) -> Vec<u64> {
    if num_workers == 0 || worker >= num_workers {
        return Vec::new();
    }
    share.iter().skip(worker).step_by(num_workers).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn permutation_is_deterministic_and_changes_per_epoch() {
        let a = epoch_order(1000, 7, 0, true);
        assert_eq!(a, epoch_order(1000, 7, 0, true));
        assert_ne!(a, epoch_order(1000, 7, 1, true));
        assert_ne!(a, epoch_order(1000, 8, 0, true));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_eq!(epoch_order(5, 7, 3, false), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn pinned_stream() {
        // The order is part of the resume contract: it must never change between releases. These
        // are golden values (tests/test_sampler_golden.py pins the same ones through Python): a
        // change to SplitMix64, epoch_seed, `below` or the Fisher-Yates loop breaks every saved
        // resume state, and must fail here.
        assert_eq!(epoch_order(8, 42, 0, true), vec![1, 4, 5, 6, 3, 7, 0, 2]);
        assert_eq!(epoch_order(8, 42, 1, true), vec![3, 1, 0, 5, 2, 6, 4, 7]);
        assert_eq!(
            epoch_order(20, 0, 3, true),
            vec![13, 17, 12, 18, 6, 2, 15, 1, 7, 9, 10, 3, 16, 5, 8, 19, 11, 14, 4, 0]
        );
        assert_eq!(&epoch_order(1000, 7, 0, true)[..10], &[242, 705, 715, 683, 362, 277, 561, 435, 307, 283]);
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(g.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn ranks_cover_exactly_once_with_equal_lengths() {
        let order = epoch_order(10, 1, 0, true);
        let shares: Vec<_> = (0..3).map(|r| rank_share(&order, r, 3, Evenness::Pad)).collect();
        assert!(shares.iter().all(|s| s.len() == 4));
        let covered: HashSet<u64> = shares.iter().flatten().copied().collect();
        assert_eq!(covered.len(), 10);
        let dropped: Vec<_> = (0..3).map(|r| rank_share(&order, r, 3, Evenness::Drop)).collect();
        assert!(dropped.iter().all(|s| s.len() == 3));
        let all: Vec<u64> = dropped.iter().flatten().copied().collect();
        assert_eq!(all.iter().copied().collect::<HashSet<_>>().len(), 9);
    }

    #[test]
    fn workers_split_a_rank_disjointly() {
        let share: Vec<u64> = (0..7).collect();
        let w: Vec<_> = (0..2).map(|i| worker_share(&share, i, 2)).collect();
        assert_eq!(w[0], vec![0, 2, 4, 6]);
        assert_eq!(w[1], vec![1, 3, 5]);
    }
}
