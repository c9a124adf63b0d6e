//! The three configuration levels of a loader, aligned with PyTorch:
//!
//! 1. [`LoaderOptions`]: what a `torch.utils.data.DataLoader` user sets.
//! 2. [`PoolConfig`]: requests in flight and batches read ahead; derived from the options unless set.
//! 3. [`RangeEngineConfig`]: parallel ranged GETs for large objects.
//!
//! All three are plain data, validated once by `validate()`.

use std::time::Duration;

use crate::config::MIB;
use crate::error::{Error, Result};

/// Default of [`PoolConfig::pushback_timeout`].
pub const DEFAULT_PUSHBACK_TIMEOUT: Duration = Duration::from_secs(60);

/// What happens when an object of the epoch cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Deliver the error (naming the URI) and end the epoch.
    Raise,
    /// Deliver the error (naming the URI) in place of its batch, then go on with the next batch.
    Continue,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoaderOptions {
    /// Samples per batch (>= 1).
    pub batch_size: usize,
    /// Seeded permutation of the dataset, new every epoch.
    pub shuffle: bool,
    /// Seed of the permutation (identical on every rank).
    pub seed: u64,
    /// Drop the last, incomplete batch of an epoch.
    pub drop_last: bool,
    /// Threads that run `transform` and `collate` (0: the consuming thread itself).
    pub num_workers: usize,
    /// Batches prepared ahead per worker (default 2), as torch's `prefetch_factor`.
    pub prefetch_factor: Option<usize>,
    /// Copy batches into page-locked memory (needs CUDA).
    pub pin_memory: bool,
    /// Seconds to wait for one batch before raising a timeout (`None`: wait forever).
    pub timeout: Option<Duration>,
    /// Keep the worker threads alive across epochs.
    pub persistent_workers: bool,
    /// Yield samples in dataset order (true) or as soon as they arrive (false).
    pub in_order: bool,
    /// What a failed object does to the epoch.
    pub on_error: OnError,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions {
            batch_size: 1,
            shuffle: false,
            seed: 0,
            drop_last: false,
            num_workers: 0,
            prefetch_factor: None,
            pin_memory: false,
            timeout: None,
            persistent_workers: false,
            in_order: true,
            on_error: OnError::Raise,
        }
    }
}

impl LoaderOptions {
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::invalid_config("batch_size must be at least 1"));
        }
        if self.prefetch_factor == Some(0) {
            return Err(Error::invalid_config(
                "prefetch_factor must be at least 1 (or None for the default, 2)",
            ));
        }
        if self.persistent_workers && self.num_workers == 0 {
            return Err(Error::invalid_config(
                "persistent_workers=True needs num_workers > 0 (there are no worker threads to keep)",
            ));
        }
        Ok(())
    }

    /// Batches read ahead: `prefetch_factor` per worker, as in torch (the consuming thread counts
    /// as one worker when `num_workers == 0`).
    pub fn readahead_batches(&self) -> usize {
        self.prefetch_factor.unwrap_or(2) * self.num_workers.max(1)
    }
}

/// Requests in flight and batches read ahead.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Object requests in flight at once.
    pub pool_size: usize,
    /// Finished batches buffered ahead of the consumer.
    pub readahead_batches: usize,
    /// Deadline of one object request, retries included (`None`: the storage timeouts only).
    pub request_timeout: Option<Duration>,
    /// Adapt the requests in flight to the store: halve them when it throttles or stops
    /// answering, climb back when requests succeed again (`false`: always `pool_size`).
    pub adaptive: bool,
    /// The fewest requests in flight adaptation may go down to (1 ..= `pool_size`).
    pub min_pool_size: usize,
    /// While the store throttles or does not answer, how long a request keeps waiting on the
    /// pool's probes (which cost it no attempt) before it fails.
    pub pushback_timeout: Duration,
    /// Bytes fetched ahead of the consumer at most, in flight and waiting (`iter_get`; batches of
    /// one object only): a request starts once its share (the running mean object size; the whole
    /// budget until the first object is in) fits. `None`: bounded by requests and batches only.
    pub max_bytes: Option<u64>,
}

impl PoolConfig {
    /// The pool's adaptive limit on attempts in flight.
    pub fn limiter(&self) -> crate::limiter::LimiterConfig {
        crate::limiter::LimiterConfig {
            min: self.min_pool_size,
            max: self.pool_size,
            adaptive: self.adaptive,
            pushback_timeout: self.pushback_timeout,
        }
    }

    /// The pool a loader with these options gets unless one is given: enough requests in flight
    /// to fill the read-ahead window (`readahead_batches × batch_size`), between 16 and 256.
    pub fn from_loader_options(o: &LoaderOptions) -> PoolConfig {
        let readahead_batches = o.readahead_batches();
        PoolConfig {
            pool_size: (o.batch_size.saturating_mul(readahead_batches)).clamp(16, 256),
            readahead_batches,
            request_timeout: None,
            adaptive: true,
            min_pool_size: 1,
            pushback_timeout: DEFAULT_PUSHBACK_TIMEOUT,
            max_bytes: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.pool_size == 0 {
            return Err(Error::invalid_config("pool_size must be at least 1"));
        }
        if self.readahead_batches == 0 {
            return Err(Error::invalid_config("readahead_batches must be at least 1"));
        }
        if self.min_pool_size == 0 || self.min_pool_size > self.pool_size {
            return Err(Error::invalid_config(format!(
                "min_pool_size must be between 1 and pool_size ({}), got {}",
                self.pool_size, self.min_pool_size
            )));
        }
        if self.max_bytes == Some(0) {
            return Err(Error::invalid_config("max_bytes must be at least 1 (or None)"));
        }
        Ok(())
    }
}

/// Parallel ranged GETs for large objects.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeEngineConfig {
    /// Bytes per ranged request.
    pub chunk_size: u64,
    /// Ranged requests in flight for one object.
    pub max_concurrent_ranges: usize,
    /// Objects at least this large (and of known size) are split; smaller ones are one GET.
    pub min_split_size: u64,
    /// Deadline of one ranged request (`None`: the storage timeouts only).
    pub range_timeout: Option<Duration>,
}

impl Default for RangeEngineConfig {
    fn default() -> Self {
        RangeEngineConfig {
            chunk_size: 8 * MIB,
            max_concurrent_ranges: 16,
            min_split_size: 32 * MIB,
            range_timeout: Some(Duration::from_secs(60)),
        }
    }
}

impl RangeEngineConfig {
    pub fn validate(&self) -> Result<()> {
        if self.chunk_size == 0 {
            return Err(Error::invalid_config("chunk_size must be at least 1 byte"));
        }
        if self.max_concurrent_ranges == 0 {
            return Err(Error::invalid_config("max_concurrent_ranges must be at least 1"));
        }
        if self.min_split_size < self.chunk_size {
            return Err(Error::invalid_config(format!(
                "min_split_size ({}) must be at least chunk_size ({})",
                self.min_split_size, self.chunk_size
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_is_derived_from_loader_options() {
        let o =
            LoaderOptions { batch_size: 32, num_workers: 4, prefetch_factor: Some(3), ..Default::default() };
        let p = PoolConfig::from_loader_options(&o);
        assert_eq!(p.readahead_batches, 12);
        assert_eq!(p.pool_size, 256);
        let small = PoolConfig::from_loader_options(&LoaderOptions::default());
        assert_eq!((small.readahead_batches, small.pool_size), (2, 16));
    }

    #[test]
    fn validation() {
        assert!(LoaderOptions { batch_size: 0, ..Default::default() }.validate().is_err());
        assert!(LoaderOptions { persistent_workers: true, ..Default::default() }.validate().is_err());
        assert!(RangeEngineConfig { min_split_size: 1, ..Default::default() }.validate().is_err());
        let pool = |pool_size, min_pool_size| PoolConfig {
            pool_size,
            readahead_batches: 1,
            request_timeout: None,
            adaptive: true,
            min_pool_size,
            pushback_timeout: DEFAULT_PUSHBACK_TIMEOUT,
            max_bytes: None,
        };
        assert!(pool(0, 1).validate().is_err());
        assert!(pool(4, 0).validate().is_err() && pool(4, 5).validate().is_err());
        assert!(pool(4, 4).validate().is_ok());
    }
}
