//! The one mapping from core errors to Python exceptions (classes live in `s3dlio.exceptions`).

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use s3dlio_core::{Error, ErrorKind};

fn class_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound => "NotFoundError",
        ErrorKind::PermissionDenied => "AccessDeniedError",
        ErrorKind::Throttled => "ThrottledError",
        ErrorKind::Timeout => "StorageTimeoutError",
        ErrorKind::Cancelled => "CancelledError",
        ErrorKind::InvalidUri => "InvalidUriError",
        ErrorKind::InvalidConfig => "InvalidConfigError",
        ErrorKind::InvalidRange => "RangeError",
        ErrorKind::DirectIoUnsupported => "DirectIOUnsupported",
        ErrorKind::Changed => "StorageIOError",
        _ => "StorageIOError",
    }
}

/// The exception class `name` from `s3dlio.exceptions`, imported once per interpreter.
pub fn exception_class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let module = MODULE.get_or_try_init(py, || py.import("s3dlio.exceptions").map(Bound::unbind))?;
    Ok(module.bind(py).getattr(name)?.cast_into::<PyType>()?)
}

/// Convert a core error into the matching `s3dlio.exceptions` instance (lazily constructed).
pub fn to_pyerr(err: Error) -> PyErr {
    Python::attach(|py| match exception_class(py, class_name(err.kind())) {
        Ok(cls) => {
            let d = err.detail().cloned().unwrap_or_default();
            PyErr::from_type(
                cls,
                (err.to_string(), err.uri().map(str::to_owned), d.status, d.code, d.request_id),
            )
        }
        Err(import_err) => {
            PyRuntimeError::new_err(format!("{err} (and s3dlio.exceptions failed: {import_err})"))
        }
    })
}

/// An `InvalidConfigError` (a `ValueError`) with `message`.
pub fn invalid_config(message: impl Into<String>) -> PyErr {
    to_pyerr(Error::invalid_config(message))
}
