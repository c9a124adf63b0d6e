//! s3dlio-core: the storage engine behind the `s3dlio` Python package, with no pyo3 in it.
//!
//! * [`uri`]: `s3://`, `file://`, `direct://` locations.
//! * [`store`]: the one async API over every backend (get, get_range, get_many, stat, list, put,
//!   delete, delete_prefix, upload, download, buckets).
//! * [`loader`]: batches fetched by a pool of requests under one cancellation token.
//! * [`options`]: the three configuration levels (LoaderOptions, PoolConfig, RangeEngineConfig).
//! * [`range`]: parallel ranged GETs into one pre-allocated buffer.
//! * [`buf`]: zeroed object buffers (huge-page mappings when large), frozen into `Bytes`.
//! * [`sampler`]: deterministic per-epoch shuffles and rank/worker sharding.
//! * [`runtime`]: the per-process (fork-safe) tokio runtime and client cache.
//! * [`error`]: the error type, with kinds mapped to Python exceptions by the glue crate.

pub mod buf;
pub mod config;
pub mod error;
pub mod loader;
pub mod local;
pub mod options;
pub mod range;
pub mod runtime;
pub mod s3;
pub mod sampler;
pub mod store;
pub mod uri;

pub use config::StoreConfig;
pub use error::{Error, ErrorKind, Result};
pub use store::{ListPage, ObjectInfo};
pub use tokio_util::sync::CancellationToken;

/// Run `fut` until it finishes or `token` is cancelled; cancellation drops `fut` (and with it every
/// request it has in flight) and returns [`ErrorKind::Cancelled`].
pub async fn cancellable<T>(
    token: &CancellationToken,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        biased;
        () = token.cancelled() => Err(Error::cancelled()),
        r = fut => r,
    }
}
