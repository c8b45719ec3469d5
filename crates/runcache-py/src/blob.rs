//! `runcache._core.Blob`: the bytes of one stored blob (memory-mapped read-only, or read and
//! verified) exported through the buffer protocol, so `pickle.loads(..., buffers=...)` builds
//! numpy arrays on them without a copy. `__runcache_digest__` carries the blob's BLAKE3 so an
//! array loaded from the store is never re-hashed when it is passed to another task.

use std::ffi::c_int;

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use runcache::{BlobData, Digest};

/// One stored blob's bytes, read-only.
#[pyclass(frozen, module = "runcache._core")]
pub struct Blob {
    data: BlobData,
    digest: Digest,
}

impl Blob {
    /// Wraps verified blob bytes.
    pub fn new(data: BlobData, digest: Digest) -> Self {
        Blob { data, digest }
    }
}

#[pymethods]
impl Blob {
    /// BLAKE3 of the bytes (32 raw bytes): lets the hasher skip re-hashing loaded arrays.
    #[getter(__runcache_digest__)]
    fn runcache_digest<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.digest.as_bytes())
    }

    /// True if the bytes are a read-only memory map of the store's file.
    #[getter]
    fn mapped(&self) -> bool {
        self.data.is_mapped()
    }

    fn __len__(&self) -> usize {
        self.data.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "<runcache Blob {} bytes, {}, blake3 {}>",
            self.data.len(),
            if self.data.is_mapped() {
                "mapped"
            } else {
                "in memory"
            },
            &self.digest.to_hex()[..16]
        )
    }

    /// Exports the bytes read-only (format "B", one dimension).
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("View is null"));
        }
        if (flags & ffi::PyBUF_WRITABLE) == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err(
                "runcache results are read-only; copy the array (np.array(x)) to modify it",
            ));
        }
        let (ptr, len) = {
            let data: &[u8] = &slf.get().data;
            (data.as_ptr(), data.len())
        };
        // SAFETY: `view` is a valid Py_buffer supplied by the interpreter; the exported memory
        // lives as long as `obj` (this Blob), which the view keeps a reference to; the format
        // string is a static C string, so nothing needs freeing in __releasebuffer__.
        unsafe {
            (*view).obj = slf.into_any().into_ptr();
            (*view).buf = ptr as *mut std::ffi::c_void;
            (*view).len = len as isize;
            (*view).readonly = 1;
            (*view).itemsize = 1;
            (*view).format = if (flags & ffi::PyBUF_FORMAT) == ffi::PyBUF_FORMAT {
                c"B".as_ptr() as *mut std::ffi::c_char
            } else {
                std::ptr::null_mut()
            };
            (*view).ndim = 1;
            (*view).shape = if (flags & ffi::PyBUF_ND) == ffi::PyBUF_ND {
                &mut (*view).len
            } else {
                std::ptr::null_mut()
            };
            (*view).strides = if (flags & ffi::PyBUF_STRIDES) == ffi::PyBUF_STRIDES {
                &mut (*view).itemsize
            } else {
                std::ptr::null_mut()
            };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}
}
