//! `Buffer`: read-only bytes owned by Rust, exported through the buffer protocol with no copy; and
//! the reverse direction, borrowing any Python buffer as `Bytes` for uploads, also with no copy.

use std::ffi::{c_int, c_void};
use std::hash::{Hash, Hasher};

use bytes::Bytes;
use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;

use crate::errors::invalid_config;

/// Read-only bytes owned by Rust. The exporter (this object) keeps the memory alive for as long as
/// any `memoryview`, numpy array or tensor made from it exists.
#[pyclass(frozen, module = "s3dlio._core", name = "Buffer")]
pub struct Buffer {
    data: Bytes,
}

impl Buffer {
    pub fn new(data: Bytes) -> Self {
        Buffer { data }
    }
}

#[pymethods]
impl Buffer {
    /// # Safety
    /// Called by CPython with a valid `view` to fill.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err(
                "s3dlio.Buffer is read-only (use bytearray(buf) for a writable copy)",
            ));
        }
        let data = &slf.get().data;
        // SAFETY: `view` is valid per the buffer protocol; the pointer/length describe memory owned
        // by `slf`, which PyBuffer_FillInfo INCREFs into view->obj, keeping it alive until release.
        // readonly = 1, so consumers never write through it.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                data.as_ptr() as *mut c_void,
                data.len() as ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if rc == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    /// # Safety
    /// Nothing to release: the exporter owns the memory.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}

    fn __len__(&self) -> usize {
        self.data.len()
    }

    /// Address of the first byte (for zero-copy checks).
    #[getter]
    fn address(&self) -> usize {
        self.data.as_ptr() as usize
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        if let Ok(b) = other.cast::<Buffer>() {
            return Ok(b.get().data == self.data);
        }
        match PyBytesView::get(other) {
            Ok(v) => Ok(v.as_slice() == &self.data[..]),
            Err(_) => Ok(false),
        }
    }

    fn __hash__(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.data.hash(&mut h);
        h.finish()
    }

    fn __repr__(&self) -> String {
        format!("<s3dlio.Buffer len={}>", self.data.len())
    }
}

/// A Python buffer (PyBUF_SIMPLE: contiguous bytes) held open; releases it on drop.
pub struct PyBytesView {
    view: Box<ffi::Py_buffer>,
}

// SAFETY: the view's memory stays valid until PyBuffer_Release; we only read it, and release it
// with the GIL attached in Drop.
unsafe impl Send for PyBytesView {}
// SAFETY: see above; shared access is read-only.
unsafe impl Sync for PyBytesView {}

impl PyBytesView {
    pub fn get(obj: &Bound<'_, PyAny>) -> PyResult<PyBytesView> {
        // SAFETY: Py_buffer is plain data; an all-zero value is a valid "empty" view to fill.
        let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: obj is a live object (GIL held); view points to writable memory.
        let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_SIMPLE) };
        if rc != 0 {
            let err = PyErr::fetch(obj.py());
            if err.is_instance_of::<PyBufferError>(obj.py()) {
                return Err(invalid_config(format!(
                    "data must be a C-contiguous buffer (numpy: np.ascontiguousarray(a)): {err}"
                )));
            }
            if err.is_instance_of::<PyTypeError>(obj.py()) {
                return Err(PyTypeError::new_err(format!(
                    "data must support the buffer protocol (bytes, bytearray, memoryview, numpy array, \
                     s3dlio.Buffer), not {}",
                    obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                )));
            }
            return Err(err);
        }
        Ok(PyBytesView { view })
    }

    pub fn as_slice(&self) -> &[u8] {
        if self.view.len == 0 || self.view.buf.is_null() {
            return &[];
        }
        // SAFETY: a filled PyBUF_SIMPLE view describes `len` contiguous readable bytes at `buf`.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.view.len as usize) }
    }
}

impl AsRef<[u8]> for PyBytesView {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for PyBytesView {
    fn drop(&mut self) {
        // SAFETY: Py_IsInitialized may be called at any time.
        if unsafe { ffi::Py_IsInitialized() } == 0 {
            return; // interpreter gone: leak rather than touch it
        }
        Python::attach(|_py| {
            // SAFETY: the view was filled by PyObject_GetBuffer and is released exactly once.
            unsafe { ffi::PyBuffer_Release(&mut *self.view) }
        });
    }
}

/// Borrow the bytes of any buffer-protocol object (or share an s3dlio.Buffer) without copying.
pub fn bytes_from_py(obj: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if let Ok(b) = obj.cast::<Buffer>() {
        return Ok(b.get().data.clone());
    }
    Ok(Bytes::from_owner(PyBytesView::get(obj)?))
}
