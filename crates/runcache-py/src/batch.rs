//! `runcache._core.call_batch`: the batched compute-once call behind `runcache.batch_task`.
//! The engine's loop (`Task::get_or_compute_batch_keyed`) runs with the GIL released; each
//! batch's computation and the unpickling of hits re-acquire it.

use std::sync::Mutex;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyList;
use runcache::{Key, Mode};

use crate::codec::{Outcome, PickleCodec, Pickled};
use crate::errors::to_py;
use crate::store::{describe, json_doc, set_metadata, Store};

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
    let doc_fn = |i: usize| json_doc(&doc, Some(i));
    let result = py.detach(|| {
        task.get_or_compute_batch_keyed(&keys, &doc_fn, &codec, batch_size, |at, ctx| {
            Python::attach(|py| {
                run_batch(py, &compute, at, ctx).map_err(|err| {
                    let failure = describe(py, &err, None);
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
    set_metadata(ctx, &out.get_item(1)?)?;
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
