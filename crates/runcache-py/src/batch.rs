//! `runcache._core.call_batch`: the batched compute-once call behind `runcache.batch_task`.
//! The engine's loop (`Task::get_or_compute_batch_keyed`) runs with the GIL released; each
//! batch's computation and the unpickling of hits re-acquire it.

use std::sync::Mutex;
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyList;
use runcache::{Failure, Key, Mode};

use crate::codec::{Outcome, PickleCodec, Pickled};
use crate::errors::to_py;
use crate::store::Store;

/// The batched call. `keys` are the distinct item keys (hex); `doc(i)` returns the key
/// document of item `i` as JSON text (called only for items that are computed);
/// `compute(positions)` computes the items at `positions` (a list of int, in order) and returns
/// `(values, metadata_json)` with one value per position. Returns the values of every key, in
/// order. An exception raised by `compute` is re-raised unchanged; nothing is stored for its
/// batch.
#[pyfunction]
#[pyo3(signature = (store, namespace, version, mode, keys, doc, compute, batch_size, mmap=true, wait_timeout=None))]
#[allow(clippy::too_many_arguments)]
pub fn call_batch(
    py: Python<'_>,
    store: &Store,
    namespace: &str,
    version: &str,
    mode: &str,
    keys: Vec<String>,
    doc: Py<PyAny>,
    compute: Py<PyAny>,
    batch_size: usize,
    mmap: bool,
    wait_timeout: Option<f64>,
) -> PyResult<Py<PyList>> {
    let mode: Mode = mode.parse().map_err(to_py)?;
    let keys: Vec<Key> = keys
        .iter()
        .map(|k| k.parse().map_err(to_py))
        .collect::<PyResult<_>>()?;
    let mut task = store.engine().task(namespace).version(version).mode(mode);
    if let Some(t) = wait_timeout {
        task = task.wait_timeout(Duration::from_secs_f64(t));
    }
    let stash: Mutex<Option<PyErr>> = Mutex::new(None);
    let codec = PickleCodec { mmap };
    let doc_fn = |i: usize| item_doc(&doc, i);
    let result = py.detach(|| {
        task.get_or_compute_batch_keyed(&keys, &doc_fn, &codec, batch_size, |at, ctx| {
            Python::attach(|py| {
                run_batch(py, &compute, at, ctx).map_err(|err| {
                    let failure = Failure {
                        error_type: err.get_type(py).to_string(),
                        message: err.value(py).to_string(),
                        ..Default::default()
                    };
                    *stash.lock().unwrap() = Some(err);
                    failure
                })
            })
        })
    });
    match result {
        Ok(values) => Ok(PyList::new(py, values.into_iter().map(|o| o.value))?.unbind()),
        Err(e) => match stash.into_inner().unwrap() {
            Some(original) => Err(original),
            None => Err(to_py(e)),
        },
    }
}

/// The key document of item `i`, from the Python callable.
fn item_doc(doc: &Py<PyAny>, i: usize) -> runcache::Result<serde_json::Value> {
    Python::attach(|py| -> PyResult<serde_json::Value> {
        let text: String = doc.call1(py, (i,))?.extract(py)?;
        serde_json::from_str(&text)
            .map_err(|e| PyRuntimeError::new_err(format!("key document is not JSON: {e}")))
    })
    .map_err(|e| runcache::Error::Invalid(format!("cannot build the key document: {e}")))
}

/// Runs one batch of the Python computation and pickles every value it returns.
fn run_batch(
    py: Python<'_>,
    compute: &Py<PyAny>,
    at: &[usize],
    ctx: &mut runcache::Context,
) -> PyResult<Vec<Outcome>> {
    let out = compute.call1(py, (at.to_vec(),))?;
    let out = out.bind(py);
    let values = out.get_item(0)?;
    let metadata = out.get_item(1)?;
    if !metadata.is_none() {
        let text: String = metadata.extract()?;
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
            .map_err(|e| PyRuntimeError::new_err(format!("metadata is not a JSON object: {e}")))?;
        for (k, v) in map {
            ctx.set_metadata(&k, v).map_err(to_py)?;
        }
    }
    let mut outcomes = Vec::new();
    for value in values.try_iter()? {
        let value = value?;
        let parts = Pickled::of(py, &value)?;
        outcomes.push(Outcome {
            value: value.unbind(),
            parts: Some(parts),
        });
    }
    Ok(outcomes)
}
