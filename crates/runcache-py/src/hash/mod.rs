//! Python value hashing: the canonical, typed encoding of Python values (the "Python values"
//! section of `docs/key-format.md`), keys, key documents and file content digests.
//!
//! Rust API for the rest of the extension (no Python call dispatch): [`compute_key_py`],
//! [`key_document_py`], [`encode_value_py`], [`encode_args_py`]. Python API (`runcache._core`):
//! `compute_key`, `key_document`, `value_digest`, `encode_value`, `file_digest`, `File`,
//! `file_digest_cache_info`.

mod arrow;
mod buffer;
mod document;
mod encode;

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use runcache::key::{compute_key_from_canonical_args, Key, KEY_FORMAT_VERSION};
use runcache::Digest;

use encode::Encoder;

/// Canonical bytes of the arguments `{name: value}` (a MAP of the names to the values), as
/// keyed by [`compute_key_py`]. Errors name the argument path in Python syntax
/// (`X['train'][3]`, `cfg.lr`).
pub(crate) fn encode_args_py(py: Python<'_>, args: &Bound<'_, PyDict>) -> PyResult<Vec<u8>> {
    let mut enc = Encoder::new(py, Vec::with_capacity(128));
    enc.value(args.as_any())
        .map_err(|e| e.into_pyerr(py, None))?;
    Ok(enc.out)
}

/// [`encode_args_py`] of the arguments given as parallel lists of names and values (a task's
/// bound parameters), without building the dict.
/// The canonical bytes are appended to `out` (e.g. a key prefix).
pub(crate) fn encode_named_args_py<'py>(
    py: Python<'py>,
    out: Vec<u8>,
    names: &[Bound<'py, PyString>],
    values: &[Bound<'py, PyAny>],
) -> PyResult<Vec<u8>> {
    let mut enc = Encoder::new(py, out);
    enc.named(names, values)
        .map_err(|e| e.into_pyerr(py, None))?;
    Ok(enc.out)
}

/// Canonical bytes of one value; errors are rooted at `value` (`value[3].lr`).
pub(crate) fn encode_value_py(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let mut enc = Encoder::new(py, Vec::with_capacity(64));
    enc.value(value)
        .map_err(|e| e.into_pyerr(py, Some("value")))?;
    Ok(enc.out)
}

/// The key of a task call: namespace, version and the bound arguments `{name: value}`.
/// Equal to `runcache::key::compute_key(namespace, version, &map)` for a Rust map of the same
/// names to the same plain values (`{"x": 5}` ~ `btreemap!{"x" => 5i64}`).
pub(crate) fn compute_key_py(
    py: Python<'_>,
    namespace: &str,
    version: &str,
    args: &Bound<'_, PyDict>,
) -> PyResult<Key> {
    let bytes = encode_args_py(py, args)?;
    Ok(compute_key_from_canonical_args(namespace, version, &bytes))
}

/// The readable argument document stored with an entry:
/// `{"key_format": 1, "namespace": .., "version": .., "args": {..}}`.
pub(crate) fn key_document_py(
    py: Python<'_>,
    namespace: &str,
    version: &str,
    args: &Bound<'_, PyDict>,
) -> PyResult<serde_json::Value> {
    let bytes = encode_args_py(py, args)?;
    let doc = document::to_document(&bytes)
        .ok_or_else(|| PyValueError::new_err("internal error: malformed canonical encoding"))?;
    Ok(serde_json::json!({
        "key_format": KEY_FORMAT_VERSION,
        "namespace": namespace,
        "version": version,
        "args": doc,
    }))
}

/// Key of a task call, as 64 hex digits. `args` maps argument names to values.
#[pyfunction]
#[pyo3(name = "compute_key")]
fn py_compute_key(
    py: Python<'_>,
    namespace: &str,
    version: &str,
    args: &Bound<'_, PyDict>,
) -> PyResult<String> {
    Ok(compute_key_py(py, namespace, version, args)?.to_hex())
}

/// JSON text of what went into a key (large values as digests).
#[pyfunction]
#[pyo3(name = "key_document")]
fn py_key_document(
    py: Python<'_>,
    namespace: &str,
    version: &str,
    args: &Bound<'_, PyDict>,
) -> PyResult<String> {
    Ok(key_document_py(py, namespace, version, args)?.to_string())
}

/// Hex BLAKE3 of one value's canonical encoding (to compare arguments between calls).
#[pyfunction]
fn value_digest(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<String> {
    let bytes = encode_value_py(py, value)?;
    Ok(Digest::of(&bytes).to_hex())
}

/// The canonical bytes of one value.
#[pyfunction]
fn encode_value<'py>(py: Python<'py>, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let bytes = encode_value_py(py, value)?;
    Ok(PyBytes::new(py, &bytes))
}

/// Hex BLAKE3 of a file's content, remembered by (device, inode, size, mtime, ctime).
#[pyfunction]
fn file_digest(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    let (d, _) = py.detach(|| runcache::file_digest::file_digest(&path))?;
    Ok(d.to_hex())
}

/// Counters of the file digest cache: `{"hits", "disk_hits", "reads"}`; `clear=True` also
/// forgets the in-process digests (the on-disk cache stays).
#[pyfunction]
#[pyo3(signature = (clear = false))]
fn file_digest_cache_info(py: Python<'_>, clear: bool) -> PyResult<Bound<'_, PyDict>> {
    if clear {
        runcache::file_digest::clear_memory();
    }
    let (hits, disk_hits, reads) = runcache::file_digest::stats();
    let d = PyDict::new(py);
    d.set_item("hits", hits)?;
    d.set_item("disk_hits", disk_hits)?;
    d.set_item("reads", reads)?;
    Ok(d)
}

/// Marks a path whose file *content* enters the key, not the path: `File("data.csv")` keys as
/// the content's length and BLAKE3 (digest remembered by the file's fingerprint).
#[pyclass(module = "runcache._core", frozen)]
pub(crate) struct File {
    pub(crate) path: PathBuf,
}

#[pymethods]
impl File {
    #[new]
    fn new(path: PathBuf) -> Self {
        File { path }
    }

    /// The path.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    fn __fspath__(&self) -> PathBuf {
        self.path.clone()
    }

    fn __repr__(&self) -> String {
        format!("File({:?})", self.path.display().to_string())
    }
}

/// Registers the hashing functions and classes on the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(py_compute_key, m)?)?;
    m.add_function(wrap_pyfunction!(py_key_document, m)?)?;
    m.add_function(wrap_pyfunction!(value_digest, m)?)?;
    m.add_function(wrap_pyfunction!(encode_value, m)?)?;
    m.add_function(wrap_pyfunction!(file_digest, m)?)?;
    m.add_function(wrap_pyfunction!(file_digest_cache_info, m)?)?;
    m.add_class::<File>()?;
    Ok(())
}
