//! s3dlio-core: the storage engine behind the `s3dlio` Python package, with no pyo3 in it.
//!
//! * [`uri`]: `s3://`, `file://`, `direct://` locations; local paths resolved once.
//! * [`types`]: object metadata, byte ranges, read and write options, shared by everything.
//! * [`backend`]: the one trait every scheme implements, and the backends (`s3`, `local`).
//! * [`registry`]: the per-process backend instances, keyed by scheme and configuration.
//! * [`ops`]: the URI-level API written once against the trait (get, get_range, get_many, stat,
//!   list, put, put_many, delete, delete_prefix, upload, download, buckets), with the range
//!   engine (`ops::range`), multipart writes (`ops::write`) and tree transfers (`ops::transfer`).
//! * [`io`]: the streaming writer and the seekable reader behind `s3dlio.open`.
//! * [`metrics`]: per-process transfer counters and latency histograms (`s3dlio.stats()`);
//!   [`oplog`]: one JSON line per request (`S3DLIO_OPLOG`).
//! * [`limiter`], [`scope`]: adaptive (AIMD) concurrency and the per-pool counters a loader's
//!   requests share.
//! * [`loader`]: batches fetched by a pool of requests under one cancellation token.
//! * [`options`]: the three configuration levels (LoaderOptions, PoolConfig, RangeEngineConfig).
//! * [`buf`]: zeroed object buffers (huge-page mappings when large), frozen into `Bytes`.
//! * [`sampler`]: deterministic per-epoch shuffles and rank/worker sharding.
//! * [`runtime`]: the per-process (fork-safe) tokio runtime and client cache.
//! * [`error`]: the error type, with kinds mapped to Python exceptions by the glue crate.

pub mod backend;
pub mod buf;
pub mod config;
pub mod error;
pub mod io;
pub mod limiter;
pub mod loader;
pub mod metrics;
pub mod oplog;
pub mod ops;
pub mod options;
pub mod registry;
pub mod runtime;
pub mod sampler;
pub mod scope;
pub mod types;
pub mod uri;

pub use config::StoreConfig;
pub use error::{Error, ErrorKind, Result, ServerDetail};
pub use tokio_util::sync::CancellationToken;
pub use types::{ListPage, ObjectInfo};

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
