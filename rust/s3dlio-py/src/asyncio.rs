//! asyncio support: pyo3-async-runtimes' `generic` interface routed onto our per-process (fork-safe)
//! runtime instead of its built-in `OnceLock` runtime, which would be dead after fork().

use std::any::Any;
use std::cell::OnceCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};

use pyo3::prelude::*;
use pyo3_async_runtimes::generic::{self, ContextExt, JoinError, Runtime};
use pyo3_async_runtimes::TaskLocals;
use s3dlio_core::runtime::context;
use s3dlio_core::Result;

use crate::errors::to_pyerr;

tokio::task_local! {
    static TASK_LOCALS: OnceCell<TaskLocals>;
}

pub struct S3dlioRuntime;

/// asyncio bridge tasks not yet finished, including their last step: handing the result to the
/// event loop (`call_soon_threadsafe`, which releases and retakes the GIL). Python waits for this
/// to reach 0 at exit (an `atexit` hook): a worker that retakes the GIL once the interpreter is
/// finalizing is ended with `pthread_exit`, which aborts the process when it unwinds Rust frames.
static BRIDGE_TASKS: AtomicUsize = AtomicUsize::new(0);

struct Counted;

impl Counted {
    fn new() -> Counted {
        BRIDGE_TASKS.fetch_add(1, Ordering::SeqCst);
        Counted
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        BRIDGE_TASKS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Number of asyncio bridge tasks still running (see [`BRIDGE_TASKS`]).
#[pyfunction]
pub fn _asyncio_tasks() -> usize {
    BRIDGE_TASKS.load(Ordering::SeqCst)
}

pub struct TaskJoinError(tokio::task::JoinError);

impl JoinError for TaskJoinError {
    fn is_panic(&self) -> bool {
        self.0.is_panic()
    }
    fn into_panic(self) -> Box<dyn Any + Send + 'static> {
        self.0.into_panic()
    }
}

type Joined = Pin<Box<dyn Future<Output = std::result::Result<(), TaskJoinError>> + Send>>;

impl Runtime for S3dlioRuntime {
    type JoinError = TaskJoinError;
    type JoinHandle = Joined;

    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // `future()` below builds the context before handing work to pyo3-async-runtimes.
        #[allow(clippy::expect_used)]
        let ctx = context().expect("s3dlio runtime context exists before asyncio work is spawned");
        let counted = Counted::new();
        let handle = ctx.spawn(async move {
            let _counted = counted;
            fut.await;
        });
        Box::pin(async move { handle.await.map_err(TaskJoinError) })
    }

    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        #[allow(clippy::expect_used)]
        let ctx = context().expect("s3dlio runtime context exists before asyncio work is spawned");
        // pyo3-async-runtimes hands results to the event loop from here (set_result).
        let counted = Counted::new();
        let handle = ctx.runtime().spawn_blocking(move || {
            let _counted = counted;
            f();
        });
        Box::pin(async move { handle.await.map_err(TaskJoinError) })
    }
}

impl ContextExt for S3dlioRuntime {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        let cell = OnceCell::new();
        let _ = cell.set(locals);
        Box::pin(TASK_LOCALS.scope(cell, fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS.try_with(|c| c.get().cloned()).unwrap_or_default()
    }
}

/// Wrap a core future as an awaitable. Cancelling the awaiting asyncio task drops the Rust future.
pub fn future<'py, T, F>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    context().map_err(to_pyerr)?;
    generic::future_into_py::<S3dlioRuntime, _, _>(py, async move { fut.await.map_err(to_pyerr) })
}
