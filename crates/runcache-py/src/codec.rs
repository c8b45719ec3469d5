//! Python results in the store: pickle protocol 5 with out-of-band buffers. The pickle stream is
//! the `pickle` blob; every out-of-band buffer (numpy arrays, also inside pandas objects, dicts,
//! tuples) is its own raw blob `buffer:<i>`, written straight from the object's memory and loaded
//! back as a read-only memory map (or a verified copy).

use std::borrow::Cow;

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList};
use runcache::manifest::{BlobRef, Manifest};
use runcache::{Error, Key, Result, Store, ValueCodec};

use crate::blob::Blob;

/// Name of the encoding in manifests.
pub const ENCODING: &str = "pickle5";

/// Buffers at least this large are memory-mapped on load (when mapping is on).
pub const MAP_THRESHOLD: u64 = 1 << 20;

/// A result as it travels through the engine: the Python object, plus (when just computed) its
/// pickled parts borrowed from the object's own memory.
pub struct Outcome {
    /// The object returned to the caller.
    pub value: Py<PyAny>,
    /// The pickled form, present only for a result computed in this call.
    pub parts: Option<Pickled>,
}

/// A pickled result: the stream and the out-of-band buffers, held exported so their memory
/// stays valid (and unmovable) while it is written without the GIL.
pub struct Pickled {
    /// The protocol-5 pickle stream.
    pub stream: Vec<u8>,
    /// Raw out-of-band buffers, in pickle order.
    pub buffers: Vec<PyBuffer<u8>>,
}

impl Pickled {
    /// Pickles `value` with protocol 5, collecting out-of-band buffers.
    pub fn of(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Pickled> {
        let pickle = py.import("pickle")?;
        let collected = PyList::empty(py);
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("protocol", 5)?;
        kwargs.set_item("buffer_callback", collected.getattr("append")?)?;
        let stream = match crate::arrow_results::dispatch_table(py)? {
            None => pickle.call_method("dumps", (value,), Some(&kwargs))?,
            Some(table) => {
                // polars is loaded: its frames are pickled as Arrow buffers (out of band).
                let file = py.import("io")?.getattr("BytesIO")?.call0()?;
                let pickler = pickle.getattr("Pickler")?.call((&file,), Some(&kwargs))?;
                pickler.setattr("dispatch_table", &table)?;
                pickler.call_method1("dump", (value,))?;
                file.call_method0("getvalue")?
            }
        };
        let stream = stream.cast::<PyBytes>()?.as_bytes().to_vec();
        let mut buffers = Vec::with_capacity(collected.len());
        for pb in collected.iter() {
            // PickleBuffer.raw(): a contiguous, byte-formatted memoryview of the object's data.
            let raw = pb.call_method0("raw")?;
            buffers.push(PyBuffer::<u8>::get(&raw)?);
        }
        Ok(Pickled { stream, buffers })
    }
}

/// The codec; `mmap` chooses mapping or copying on load.
pub struct PickleCodec {
    /// Map large buffers read-only instead of reading them.
    pub mmap: bool,
}

impl ValueCodec<Outcome> for PickleCodec {
    fn name(&self) -> &str {
        ENCODING
    }

    fn encode<'v>(&self, value: &'v Outcome) -> Result<Vec<(String, Cow<'v, [u8]>)>> {
        let parts = value.parts.as_ref().ok_or_else(|| {
            Error::Invalid("internal: a loaded result cannot be stored again".into())
        })?;
        let mut out = Vec::with_capacity(1 + parts.buffers.len());
        out.push(("pickle".to_string(), Cow::Borrowed(parts.stream.as_slice())));
        for (i, b) in parts.buffers.iter().enumerate() {
            // SAFETY: the buffer is exported (held by `PyBuffer`) for as long as `value` lives,
            // it is contiguous bytes (PickleBuffer.raw()), and nothing here mutates it.
            let bytes =
                unsafe { std::slice::from_raw_parts(b.buf_ptr() as *const u8, b.len_bytes()) };
            out.push((format!("buffer:{i}"), Cow::Borrowed(bytes)));
        }
        Ok(out)
    }

    fn decode(&self, store: &Store, manifest: &Manifest) -> Result<Outcome> {
        let read_stream = || store.read_role(manifest, "pickle", ENCODING, "Python object");
        // An inline stream comes with the manifest; a stream in its own blob is read without
        // the interpreter lock (a hit may judge an entry with it held: see `hit.rs`).
        let stream = match manifest.blob("pickle") {
            Some(b) if b.inline.is_none() => Python::attach(|py| py.detach(read_stream))?,
            _ => read_stream()?,
        };
        // Most results have no out-of-band buffer: no names to format then.
        let buffers: Vec<&BlobRef> = if manifest.blobs.len() > 1 {
            (0..)
                .map_while(|i| manifest.blob(&format!("buffer:{i}")))
                .collect()
        } else {
            Vec::new()
        };
        load_pickled(store, &manifest.key, stream, &buffers, self.mmap)
    }
}

/// Rebuilds a pickled object from its verified stream and its buffers (mapped read-only when
/// `mmap`, else read). `key` names the entry in errors.
pub fn load_pickled(
    store: &Store,
    key: &Key,
    stream: Vec<u8>,
    buffers: &[&BlobRef],
    mmap: bool,
) -> Result<Outcome> {
    let threshold = if mmap { MAP_THRESHOLD } else { u64::MAX };
    let load = || -> Result<Vec<Blob>> {
        let mut blobs = Vec::with_capacity(buffers.len());
        for b in buffers {
            blobs.push(Blob::new(store.load_blob(key, b, threshold)?, b.digest));
        }
        Ok(blobs)
    };
    // Blobs not inline are files or objects to read: never with the interpreter lock held.
    let blobs = if buffers.is_empty() {
        Vec::new()
    } else {
        Python::attach(|py| py.detach(load))?
    };
    Python::attach(|py| unpickle(py, &stream, blobs))
        .map(|value| Outcome { value, parts: None })
        .map_err(|e| Error::Decode {
            key: key.to_hex(),
            type_name: "Python object",
            message: Python::attach(|py| e.value(py).to_string()),
        })
}

/// `pickle.loads`, looked up once.
static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn unpickle(py: Python<'_>, stream: &[u8], blobs: Vec<Blob>) -> PyResult<Py<PyAny>> {
    let loads = LOADS.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("pickle")?.getattr("loads")?.unbind())
    })?;
    let stream = PyBytes::new(py, stream);
    if blobs.is_empty() {
        // The common small result: no out-of-band buffers, no keyword arguments.
        return loads.call1(py, (stream,));
    }
    let buffers = PyList::empty(py);
    for b in blobs {
        buffers.append(Py::new(py, b)?)?;
    }
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("buffers", buffers)?;
    loads.call(py, (stream,), Some(&kwargs))
}
