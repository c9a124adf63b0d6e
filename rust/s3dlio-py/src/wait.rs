//! The one way a synchronous call waits for Rust work: without the GIL, in 50 ms slices, checking
//! for signals (Ctrl-C) between slices. On KeyboardInterrupt the call's token is cancelled, its task
//! is given a moment to drop its requests and is then aborted, and the interrupt is raised.

use std::future::Future;
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use s3dlio_core::runtime::context;
use s3dlio_core::{cancellable, CancellationToken, Error, Result};

use crate::errors::to_pyerr;

const POLL: Duration = Duration::from_millis(50);
const SETTLE: Duration = Duration::from_millis(150);
const CLEANUP: Duration = Duration::from_secs(2);

/// Map a finished task's outcome; a panic becomes a RuntimeError, never a Python-level panic.
fn joined<T>(r: std::result::Result<Result<T>, tokio::task::JoinError>) -> PyResult<T> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_pyerr(e)),
        Err(e) if e.is_cancelled() => Err(to_pyerr(Error::cancelled())),
        Err(e) => Err(PyRuntimeError::new_err(format!("s3dlio internal error (task panicked): {e}"))),
    }
}

/// Run `fut` on the process's runtime and wait for it, interruptibly. `token` (if given) is the
/// caller's cancellation token: cancelling it also ends the wait.
pub fn wait_with<T, F>(py: Python<'_>, token: Option<&CancellationToken>, fut: F) -> PyResult<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    wait_inner(py, token, false, fut)
}

/// [`wait`] for a future that writes into memory the caller lent it (a Python buffer being
/// filled): on KeyboardInterrupt the task is aborted and then always awaited to the end, so no
/// write into that memory can happen after this returns. (An aborted task stops at its next
/// poll, so this wait is short.)
pub fn wait_lending<T, F>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    wait_inner(py, None, true, fut)
}

fn wait_inner<T, F>(py: Python<'_>, token: Option<&CancellationToken>, lent: bool, fut: F) -> PyResult<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(PyRuntimeError::new_err(
            "a blocking s3dlio call was made from inside s3dlio's async runtime; use the _async variant",
        ));
    }
    let ctx = context().map_err(to_pyerr)?;
    let token = token.map_or_else(CancellationToken::new, CancellationToken::child_token);
    let task_token = token.clone();
    let mut handle = ctx.spawn(async move { cancellable(&task_token, fut).await });
    loop {
        let polled =
            py.detach(|| ctx.runtime().block_on(async { tokio::time::timeout(POLL, &mut handle).await }));
        match polled {
            Ok(done) => return joined(done),
            Err(_elapsed) => {
                if let Err(interrupt) = py.check_signals() {
                    token.cancel();
                    let settled = py.detach(|| {
                        ctx.runtime().block_on(async { tokio::time::timeout(SETTLE, &mut handle).await })
                    });
                    if settled.is_err() {
                        handle.abort();
                        if lent {
                            let _ = py.detach(|| ctx.runtime().block_on(&mut handle));
                        } else {
                            let _ = py.detach(|| {
                                ctx.runtime()
                                    .block_on(async { tokio::time::timeout(SETTLE, &mut handle).await })
                            });
                        }
                    }
                    // Cleanup the cancellation started (aborting a multipart upload, removing a
                    // temp file) finishes before the interrupt is raised, bounded.
                    let _ = py.detach(|| ctx.runtime().block_on(ctx.wait_cleanup(CLEANUP)));
                    return Err(interrupt);
                }
            }
        }
    }
}

/// [`wait_with`] without an outer token.
pub fn wait<T, F>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    wait_with(py, None, fut)
}
