//! Raw access to a Python object's buffer (the buffer protocol), without copying it.

use std::ffi::c_int;

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;

use runcache::digest::{Digest, PARALLEL_HASH_THRESHOLD};

/// A buffer exported by a Python object, released on drop. Must be dropped while attached to
/// the interpreter (it always is: it never leaves the encoder).
pub(crate) struct RawBuf {
    view: Box<ffi::Py_buffer>,
}

impl RawBuf {
    /// Requests a C-contiguous byte view of `obj` (`PyBUF_SIMPLE`: no format, no shape). Fails
    /// for exporters that cannot give one (non-contiguous arrays, some numpy dtypes).
    pub(crate) fn simple(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        Self::get(obj, ffi::PyBUF_SIMPLE)
    }

    fn get(obj: &Bound<'_, PyAny>, flags: c_int) -> PyResult<Self> {
        // SAFETY: an all-zero Py_buffer is a valid "empty" value; PyObject_GetBuffer fills it.
        let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: obj is a live object and we are attached; on success the view must be
        // released exactly once, which Drop does.
        let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, flags) };
        if rc != 0 {
            return Err(PyErr::take(obj.py())
                .unwrap_or_else(|| PyBufferError::new_err("the object exports no buffer")));
        }
        Ok(RawBuf { view })
    }

    /// The exported bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        let len = usize::try_from(self.view.len).unwrap_or(0);
        if len == 0 || self.view.buf.is_null() {
            return &[];
        }
        // SAFETY: the exporter guarantees `len` readable bytes at `buf` while the view is held
        // (PyBUF_SIMPLE: contiguous); the view lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, len) }
    }

    /// Start address of the exported bytes.
    pub(crate) fn addr(&self) -> usize {
        self.view.buf as usize
    }
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        // SAFETY: the view was filled by a successful PyObject_GetBuffer and is released once.
        // RawBuf never leaves code that holds the GIL (it is not Send).
        unsafe { ffi::PyBuffer_Release(&mut *self.view) }
    }
}

/// BLAKE3 of `bytes`: large buffers are hashed with the interpreter released (other Python
/// threads keep running) and on all cores; small ones directly.
pub(crate) fn digest_of(py: Python<'_>, bytes: &[u8]) -> Digest {
    if bytes.len() >= PARALLEL_HASH_THRESHOLD {
        py.detach(|| Digest::of(bytes))
    } else {
        Digest::of_single_threaded(bytes)
    }
}
