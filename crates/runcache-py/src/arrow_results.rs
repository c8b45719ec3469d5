//! polars results in the store as Arrow buffers: a polars frame or series is pickled as its
//! Arrow form (`to_arrow()`, rebuilt by `polars.from_arrow` / `polars.Series`), whose buffers
//! pickle-5 carries out of band; so they are stored as raw blobs and load memory-mapped like
//! numpy arrays, instead of being one in-band copy inside the pickle stream (what polars' own
//! pickling does). pyarrow objects need nothing: they already pickle their buffers out of band.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};

/// The dispatch table the result pickler uses when polars is loaded (`None` when it is not:
/// nothing to do, and polars is never imported from here): `copyreg`'s table as it is now (so
/// reducers registered later still apply) plus the polars classes.
pub fn dispatch_table(py: Python<'_>) -> PyResult<Option<Bound<'_, PyAny>>> {
    static CLASSES: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();
    let classes = match CLASSES.get(py) {
        Some(c) => c,
        None => {
            let modules = py.import("sys")?.getattr("modules")?;
            let Some(pl) = modules.cast::<PyDict>()?.get_item("polars")? else {
                return Ok(None);
            };
            CLASSES.get_or_try_init(py, || -> PyResult<(Py<PyAny>, Py<PyAny>)> {
                Ok((
                    pl.getattr("DataFrame")?.unbind(),
                    pl.getattr("Series")?.unbind(),
                ))
            })?
        }
    };
    let table = py
        .import("copyreg")?
        .getattr("dispatch_table")?
        .call_method0("copy")?;
    let reduce = wrap_pyfunction!(reduce_polars, py)?;
    table.set_item(classes.0.bind(py), &reduce)?;
    table.set_item(classes.1.bind(py), &reduce)?;
    Ok(Some(table))
}

/// Reduces a polars DataFrame or Series to its Arrow form, when that round-trips to the same
/// schema; otherwise (object columns, types Arrow cannot hold) to polars' own reduction.
#[pyfunction]
fn reduce_polars<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    let own = || obj.call_method1("__reduce_ex__", (5,));
    let Ok(as_arrow) = obj.call_method0("to_arrow") else {
        return own();
    };
    let pl = py.import("polars")?;
    let is_frame = obj.is_instance(&pl.getattr("DataFrame")?)?;
    let (rebuild, args) = if is_frame {
        (pl.getattr("from_arrow")?, PyTuple::new(py, [as_arrow])?)
    } else {
        let name = obj.getattr("name")?;
        (pl.getattr("Series")?, PyTuple::new(py, [name, as_arrow])?)
    };
    // Kept only if it rebuilds the same dtypes (categoricals, enums, decimals, time zones).
    let rebuilt = rebuild.call1(&args)?;
    let same = if is_frame {
        rebuilt.getattr("schema")?.eq(obj.getattr("schema")?)?
    } else {
        rebuilt.getattr("dtype")?.eq(obj.getattr("dtype")?)?
    };
    if !same {
        return own();
    }
    Ok(PyTuple::new(py, [rebuild, args.into_any()])?.into_any())
}
