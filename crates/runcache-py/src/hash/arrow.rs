//! Keys of columnar data: pyarrow arrays, chunked arrays, record batches, tables, schemas and
//! types; polars data frames and series (through their Arrow form); xarray data arrays and
//! datasets. Each library is recognised only when something else imported it (looked up in
//! `sys.modules`, never imported from here).
//!
//! Arrow data is keyed by its schema and its physical buffers, hashed in place (the digest of
//! a large buffer is computed on all cores, without a copy): an array is TYPED
//! `pyarrow.Array`, payload MAP {`type`: STR of the Arrow type, `length`, `offset`, `buffers`:
//! SEQ of each buffer (NULL for an absent one) as bytes}, plus `dictionary` for a dictionary
//! array. Two arrays of equal values but different physical layout (another chunking, a slice
//! of a larger buffer) key differently: a miss, never a wrong hit.

use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyMemoryView, PyTuple};

use runcache::key::canonical as c;

use super::encode::{EncErr, Encoder};

type R = Result<(), EncErr>;

/// The classes of pyarrow the encoder keys.
struct Arrow {
    array: Py<PyAny>,
    dictionary_array: Py<PyAny>,
    chunked_array: Py<PyAny>,
    record_batch: Py<PyAny>,
    table: Py<PyAny>,
    schema: Py<PyAny>,
    data_type: Py<PyAny>,
}

struct Polars {
    data_frame: Py<PyAny>,
    series: Py<PyAny>,
}

struct Xarray {
    data_array: Py<PyAny>,
    dataset: Py<PyAny>,
}

fn loaded<'py>(py: Python<'py>, name: &str) -> Option<Bound<'py, PyAny>> {
    let modules = py.import("sys").ok()?.getattr("modules").ok()?;
    modules.cast::<PyDict>().ok()?.get_item(name).ok().flatten()
}

fn arrow(py: Python<'_>) -> Option<&Arrow> {
    static CELL: PyOnceLock<Arrow> = PyOnceLock::new();
    if let Some(a) = CELL.get(py) {
        return Some(a);
    }
    let m = loaded(py, "pyarrow")?;
    // A half-imported module (we are called from inside its import) is tried again later.
    CELL.get_or_try_init(py, || -> PyResult<Arrow> {
        Ok(Arrow {
            array: m.getattr("Array")?.unbind(),
            dictionary_array: m.getattr("DictionaryArray")?.unbind(),
            chunked_array: m.getattr("ChunkedArray")?.unbind(),
            record_batch: m.getattr("RecordBatch")?.unbind(),
            table: m.getattr("Table")?.unbind(),
            schema: m.getattr("Schema")?.unbind(),
            data_type: m.getattr("DataType")?.unbind(),
        })
    })
    .ok()
}

fn polars(py: Python<'_>) -> Option<&Polars> {
    static CELL: PyOnceLock<Polars> = PyOnceLock::new();
    if let Some(p) = CELL.get(py) {
        return Some(p);
    }
    let m = loaded(py, "polars")?;
    CELL.get_or_try_init(py, || -> PyResult<Polars> {
        Ok(Polars {
            data_frame: m.getattr("DataFrame")?.unbind(),
            series: m.getattr("Series")?.unbind(),
        })
    })
    .ok()
}

fn xarray(py: Python<'_>) -> Option<&Xarray> {
    static CELL: PyOnceLock<Xarray> = PyOnceLock::new();
    if let Some(x) = CELL.get(py) {
        return Some(x);
    }
    let m = loaded(py, "xarray")?;
    CELL.get_or_try_init(py, || -> PyResult<Xarray> {
        Ok(Xarray {
            data_array: m.getattr("DataArray")?.unbind(),
            dataset: m.getattr("Dataset")?.unbind(),
        })
    })
    .ok()
}

fn isinstance(obj: &Bound<'_, PyAny>, cls: &Py<PyAny>) -> bool {
    obj.is_instance(cls.bind(obj.py())).unwrap_or(false)
}

/// Encodes `obj` if it is one of the columnar types above; `None` if it is not.
pub(crate) fn encode<'py>(enc: &mut Encoder<'py>, obj: &Bound<'py, PyAny>) -> Option<R> {
    let py = obj.py();
    if let Some(a) = arrow(py) {
        if let Some(r) = encode_arrow(enc, obj, a) {
            return Some(r);
        }
    }
    if let Some(p) = polars(py) {
        if isinstance(obj, &p.data_frame) || isinstance(obj, &p.series) {
            return Some(encode_polars(enc, obj, p));
        }
    }
    if let Some(x) = xarray(py) {
        if isinstance(obj, &x.data_array) {
            return Some(typed(enc, "xarray.DataArray", || data_array(obj, true)));
        }
        if isinstance(obj, &x.dataset) {
            return Some(typed(enc, "xarray.Dataset", || dataset(obj)));
        }
    }
    None
}

/// Writes TYPED `name` and the value `build` makes (a dict of plain parts).
fn typed<'py>(
    enc: &mut Encoder<'py>,
    name: &str,
    build: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
) -> R {
    let payload = build()?;
    c::write_typed_header(&mut enc.out, name);
    enc.value(&payload)
}

fn encode_arrow<'py>(enc: &mut Encoder<'py>, obj: &Bound<'py, PyAny>, a: &Arrow) -> Option<R> {
    let py = obj.py();
    let r = if isinstance(obj, &a.array) {
        typed(enc, "pyarrow.Array", || array_parts(obj, a))
    } else if isinstance(obj, &a.chunked_array) {
        typed(enc, "pyarrow.ChunkedArray", || chunked_parts(obj, a))
    } else if isinstance(obj, &a.record_batch) {
        typed(enc, "pyarrow.RecordBatch", || {
            let columns = obj.getattr(intern!(py, "columns"))?;
            columnar_parts(obj, &columns, |c| array_parts(c, a))
        })
    } else if isinstance(obj, &a.table) {
        typed(enc, "pyarrow.Table", || {
            let columns = obj.getattr(intern!(py, "columns"))?;
            columnar_parts(obj, &columns, |c| chunked_parts(c, a))
        })
    } else if isinstance(obj, &a.schema) {
        typed(enc, "pyarrow.Schema", || Ok(schema_text(obj)?.into_any()))
    } else if isinstance(obj, &a.data_type) {
        typed(enc, "pyarrow.DataType", || Ok(obj.str()?.into_any()))
    } else {
        return None;
    };
    Some(r)
}

/// The schema with its field and schema metadata, untruncated.
fn schema_text<'py>(schema: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = schema.py();
    let kwargs = PyDict::new(py);
    kwargs.set_item("truncate_metadata", false)?;
    kwargs.set_item("show_field_metadata", true)?;
    kwargs.set_item("show_schema_metadata", true)?;
    schema.call_method("to_string", (), Some(&kwargs))
}

/// {type, length, offset, buffers[, dictionary]} of one array.
fn array_parts<'py>(arr: &Bound<'py, PyAny>, a: &Arrow) -> PyResult<Bound<'py, PyAny>> {
    let py = arr.py();
    let ty = arr.getattr(intern!(py, "type"))?.str()?;
    let is_dictionary = isinstance(arr, &a.dictionary_array);
    if !is_dictionary && ty.to_str()?.contains("dictionary<") {
        return Err(PyTypeError::new_err(format!(
            "cannot hash a pyarrow array of type {ty} into a cache key: dictionary arrays nested \
             in other types are not keyed (their dictionaries are not among the array's \
             buffers); decode them first with pyarrow.compute.cast or pass the values"
        )));
    }
    let buffers = PyList::empty(py);
    for b in arr.call_method0(intern!(py, "buffers"))?.try_iter()? {
        let b = b?;
        if b.is_none() {
            buffers.append(b)?;
        } else {
            buffers.append(PyMemoryView::from(&b)?)?;
        }
    }
    let parts = PyDict::new(py);
    parts.set_item("type", ty)?;
    parts.set_item("length", arr.len()?)?;
    parts.set_item("offset", arr.getattr(intern!(py, "offset"))?)?;
    parts.set_item("buffers", buffers)?;
    if is_dictionary {
        let dictionary = arr.getattr(intern!(py, "dictionary"))?;
        parts.set_item("dictionary", array_parts(&dictionary, a)?)?;
    }
    Ok(parts.into_any())
}

/// {type, chunks} of a chunked array.
fn chunked_parts<'py>(arr: &Bound<'py, PyAny>, a: &Arrow) -> PyResult<Bound<'py, PyAny>> {
    let py = arr.py();
    let chunks = PyList::empty(py);
    for chunk in arr.getattr(intern!(py, "chunks"))?.try_iter()? {
        chunks.append(array_parts(&chunk?, a)?)?;
    }
    let parts = PyDict::new(py);
    parts.set_item("type", arr.getattr(intern!(py, "type"))?.str()?)?;
    parts.set_item("chunks", chunks)?;
    Ok(parts.into_any())
}

/// {schema, num_rows, columns} of a record batch or table.
fn columnar_parts<'py>(
    obj: &Bound<'py, PyAny>,
    columns: &Bound<'py, PyAny>,
    column: impl Fn(&Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    let encoded = PyList::empty(py);
    for col in columns.try_iter()? {
        encoded.append(column(&col?)?)?;
    }
    let parts = PyDict::new(py);
    parts.set_item("schema", schema_text(&obj.getattr(intern!(py, "schema"))?)?)?;
    parts.set_item("num_rows", obj.getattr(intern!(py, "num_rows"))?)?;
    parts.set_item("columns", encoded)?;
    Ok(parts.into_any())
}

/// A polars frame or series: TYPED `polars.DataFrame` / `polars.Series` over its Arrow form
/// (`to_arrow()`, which shares the column buffers for fixed-width types), plus the series name.
fn encode_polars<'py>(enc: &mut Encoder<'py>, obj: &Bound<'py, PyAny>, p: &Polars) -> R {
    let py = obj.py();
    let as_arrow = obj.call_method0(intern!(py, "to_arrow"))?;
    if isinstance(obj, &p.data_frame) {
        c::write_typed_header(&mut enc.out, "polars.DataFrame");
        return enc.value(&as_arrow);
    }
    let parts = PyTuple::new(py, [obj.getattr(intern!(py, "name"))?, as_arrow])?;
    c::write_typed_header(&mut enc.out, "polars.Series");
    enc.value(parts.as_any())
}

/// {dims, data, attrs[, name, coords]} of a DataArray or of one variable of a Dataset.
fn data_array<'py>(obj: &Bound<'py, PyAny>, with_coords: bool) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    let parts = PyDict::new(py);
    parts.set_item("dims", obj.getattr(intern!(py, "dims"))?)?;
    // `values` is the numpy array (a dask-backed variable is computed).
    parts.set_item("data", obj.getattr(intern!(py, "values"))?)?;
    parts.set_item("attrs", obj.getattr(intern!(py, "attrs"))?)?;
    if with_coords {
        parts.set_item("name", obj.getattr(intern!(py, "name"))?)?;
        parts.set_item("coords", coords(obj)?)?;
    }
    Ok(parts.into_any())
}

/// {name: {dims, data, attrs}} of every coordinate.
fn coords<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    let out = PyDict::new(py);
    let coords = obj.getattr(intern!(py, "coords"))?;
    for name in coords.try_iter()? {
        let name = name?;
        let var = coords.get_item(&name)?;
        out.set_item(&name, data_array(&var, false)?)?;
    }
    Ok(out.into_any())
}

/// {data_vars, coords, attrs} of a Dataset.
fn dataset<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    let vars = PyDict::new(py);
    let data_vars = obj.getattr(intern!(py, "data_vars"))?;
    for name in data_vars.try_iter()? {
        let name = name?;
        vars.set_item(&name, data_array(&data_vars.get_item(&name)?, false)?)?;
    }
    let parts = PyDict::new(py);
    parts.set_item("data_vars", vars)?;
    parts.set_item("coords", coords(obj)?)?;
    parts.set_item("attrs", obj.getattr(intern!(py, "attrs"))?)?;
    Ok(parts.into_any())
}
