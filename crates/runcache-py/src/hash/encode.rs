//! The canonical encoder of Python values: walks a Python object and appends the typed,
//! length-prefixed encoding of `runcache::key::canonical` (see "Python values" in
//! `docs/key-format.md`).
//!
//! Common values (None, bool, int, float, str, bytes, list, tuple, dict) are recognised by
//! exact type with pointer comparisons and encoded without calling into Python. Everything
//! else goes through [`Encoder::other`], which recognises numpy and pandas objects by their
//! classes (looked up in `sys.modules`, never imported from here), then the standard library
//! types and the protocols (`__runcache_key__`, dataclasses, pydantic models, enums).

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyByteArray, PyBytes, PyComplex, PyDate, PyDateTime, PyDelta, PyDict, PyFrozenSet, PyList,
    PyMemoryView, PySet, PySlice, PyString, PyTime, PyTuple, PyType,
};

use runcache::digest::{Digest, StreamHasher, PARALLEL_HASH_THRESHOLD};
use runcache::key::canonical as c;

use super::buffer::{digest_of, RawBuf};
use super::File;

/// Containers nested deeper than this are refused (a cycle, or a pathological structure).
pub(crate) const MAX_DEPTH: u32 = 200;

/// Byte strings at least this long enter the key as a DIGEST (length + BLAKE3, hashed in place
/// on all cores) instead of their bytes, exactly like a Rust `runcache::key::Buffer`.
pub(crate) const BIG_BYTES: usize = PARALLEL_HASH_THRESHOLD;

/// One step from a container to the failing value, rendered in Python syntax.
pub(crate) enum Seg {
    /// A dict value under this key: `[repr(key)]` (a bare name at the root of the arguments).
    Key(Py<PyAny>),
    /// A sequence element: `[i]`.
    Index(usize),
    /// An attribute (dataclass, pydantic, named tuple field): `.name`.
    Attr(String),
    /// Anything else, appended verbatim (`.flat[3]`, `.__runcache_key__()`, `.<key #2>`).
    Text(String),
}

pub(crate) enum ErrKind {
    /// A value of a type that has no canonical encoding.
    Unhashable { type_name: String, why: String },
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Two dict keys with the same canonical encoding.
    DuplicateKey(String),
    /// An exception raised by Python code called while encoding (a `__runcache_key__`, an
    /// unreadable file, ...): re-raised with a note saying where.
    Py(PyErr),
}

/// An encoding failure and where it happened (innermost segment first).
pub(crate) struct EncErr {
    rev: Vec<Seg>,
    kind: ErrKind,
}

impl EncErr {
    fn new(kind: ErrKind) -> Self {
        EncErr {
            rev: Vec::new(),
            kind,
        }
    }

    fn at(mut self, seg: Seg) -> Self {
        self.rev.push(seg);
        self
    }

    /// The path in Python syntax. With `root == None` the outermost segment is an argument
    /// name and is rendered bare (`X['train'][3]`); otherwise it follows `root` (`value[3]`).
    fn path(&self, py: Python<'_>, root: Option<&str>) -> String {
        const MAX_SEGMENTS: usize = 24;
        let mut p = String::new();
        let mut segs = self.rev.iter().rev().peekable();
        match root {
            Some(r) => p.push_str(r),
            None => match segs.peek() {
                Some(Seg::Key(k)) => {
                    match k.bind(py).cast::<PyString>() {
                        Ok(s) => p.push_str(&s.to_string_lossy()),
                        Err(_) => p.push_str(&format!("args[{}]", repr(k.bind(py)))),
                    }
                    segs.next();
                }
                _ => p.push_str("args"),
            },
        }
        let n = self.rev.len();
        for (i, seg) in segs.enumerate() {
            if n > MAX_SEGMENTS && i == MAX_SEGMENTS / 2 {
                p.push_str("...");
            }
            if n > MAX_SEGMENTS && i >= MAX_SEGMENTS / 2 && i < n - MAX_SEGMENTS / 2 {
                continue;
            }
            match seg {
                Seg::Key(k) => {
                    p.push('[');
                    p.push_str(&repr(k.bind(py)));
                    p.push(']');
                }
                Seg::Index(i) => p.push_str(&format!("[{i}]")),
                Seg::Attr(a) => {
                    p.push('.');
                    p.push_str(a);
                }
                Seg::Text(t) => p.push_str(t),
            }
        }
        p
    }

    /// The Python exception for this failure.
    pub(crate) fn into_pyerr(self, py: Python<'_>, root: Option<&str>) -> PyErr {
        let path = self.path(py, root);
        let arg = path
            .split(['[', '.'])
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("...");
        match self.kind {
            ErrKind::Unhashable { type_name, why } => PyTypeError::new_err(format!(
                "cannot hash {path} (type {type_name}) into a cache key: {why}. \
                 runcache keys None, bool, int, float, complex, str, bytes, tuple, list, dict, \
                 set, numpy arrays and scalars, pandas DataFrame/Series/Index, pyarrow arrays and \
                 tables, polars frames, xarray data, dataclasses, \
                 pydantic models, enums, pathlib paths, datetime values and runcache files. \
                 Fix: ignore it (ignore=['{arg}']) if it does not change the result, or give \
                 the type a `__runcache_key__(self)` method returning a hashable value that \
                 identifies it"
            )),
            ErrKind::TooDeep => PyValueError::new_err(format!(
                "cannot hash {path} into a cache key: values are nested more than {MAX_DEPTH} \
                 levels deep; is there a cycle (a container that contains itself)?"
            )),
            ErrKind::DuplicateKey(k) => PyValueError::new_err(format!(
                "cannot hash {path} into a cache key: two of its keys have the same canonical \
                 encoding ({k}), e.g. two distinct NaN keys or two objects with equal \
                 `__runcache_key__`"
            )),
            ErrKind::Py(e) => {
                let _ = e.add_note(py, format!("(runcache: while hashing {path})"));
                e
            }
        }
    }
}

impl From<PyErr> for EncErr {
    fn from(e: PyErr) -> Self {
        EncErr::new(ErrKind::Py(e))
    }
}

type R = Result<(), EncErr>;

fn repr(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "<unrepresentable>".into())
}

/// `module.qualname` of a type (`builtins.` omitted).
pub(crate) fn type_name(t: &Bound<'_, PyType>) -> String {
    t.fully_qualified_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "<unknown type>".into())
}

fn unhashable(obj: &Bound<'_, PyAny>, why: &str) -> EncErr {
    EncErr::new(ErrKind::Unhashable {
        type_name: type_name(&obj.get_type()),
        why: why.into(),
    })
}

/// Classes of the standard library the encoder recognises, looked up once.
struct Stdlib {
    enum_type: Py<PyAny>,
    pure_path: Py<PyAny>,
    pure_windows_path: Py<PyAny>,
    dataclass_fields: Py<PyAny>,
}

fn stdlib(py: Python<'_>) -> PyResult<&Stdlib> {
    static CELL: PyOnceLock<Stdlib> = PyOnceLock::new();
    CELL.get_or_try_init(py, || {
        let pathlib = py.import("pathlib")?;
        Ok(Stdlib {
            enum_type: py.import("enum")?.getattr("Enum")?.unbind(),
            pure_path: pathlib.getattr("PurePath")?.unbind(),
            pure_windows_path: pathlib.getattr("PureWindowsPath")?.unbind(),
            dataclass_fields: py.import("dataclasses")?.getattr("fields")?.unbind(),
        })
    })
}

struct Numpy {
    ndarray: Py<PyAny>,
    generic: Py<PyAny>,
    memmap: Py<PyAny>,
}

/// numpy's classes, if numpy has been imported by someone (it is never imported from here: an
/// object that is a numpy array implies numpy is loaded).
fn numpy(py: Python<'_>) -> Option<&Numpy> {
    static CELL: PyOnceLock<Numpy> = PyOnceLock::new();
    if let Some(np) = CELL.get(py) {
        return Some(np);
    }
    let m = loaded_module(py, "numpy")?;
    CELL.get_or_try_init(py, || -> PyResult<Numpy> {
        Ok(Numpy {
            ndarray: m.getattr("ndarray")?.unbind(),
            generic: m.getattr("generic")?.unbind(),
            memmap: m.getattr("memmap")?.unbind(),
        })
    })
    .ok()
}

struct Pandas {
    data_frame: Py<PyAny>,
    series: Py<PyAny>,
    index: Py<PyAny>,
    timestamp: Py<PyAny>,
    timedelta: Py<PyAny>,
    nat_type: Py<PyAny>,
    na_type: Py<PyAny>,
}

fn pandas(py: Python<'_>) -> Option<&Pandas> {
    static CELL: PyOnceLock<Pandas> = PyOnceLock::new();
    if let Some(pd) = CELL.get(py) {
        return Some(pd);
    }
    let m = loaded_module(py, "pandas")?;
    // pandas may be half-imported (we are called from inside its import): try again later.
    CELL.get_or_try_init(py, || -> PyResult<Pandas> {
        Ok(Pandas {
            data_frame: m.getattr("DataFrame")?.unbind(),
            series: m.getattr("Series")?.unbind(),
            index: m.getattr("Index")?.unbind(),
            timestamp: m.getattr("Timestamp")?.unbind(),
            timedelta: m.getattr("Timedelta")?.unbind(),
            nat_type: m.getattr("NaT")?.get_type().into_any().unbind(),
            na_type: m.getattr("NA")?.get_type().into_any().unbind(),
        })
    })
    .ok()
}

fn loaded_module<'py>(py: Python<'py>, name: &str) -> Option<Bound<'py, PyAny>> {
    let modules = py.import("sys").ok()?.getattr("modules").ok()?;
    modules.cast::<PyDict>().ok()?.get_item(name).ok().flatten()
}

fn is_instance(obj: &Bound<'_, PyAny>, cls: &Py<PyAny>) -> bool {
    // SAFETY: both pointers are live type objects / objects; PyType_IsSubtype does not fail.
    unsafe {
        ffi::PyType_IsSubtype(
            ffi::Py_TYPE(obj.as_ptr()),
            cls.as_ptr() as *mut ffi::PyTypeObject,
        ) != 0
    }
}

/// The canonical encoder: appends to `out`.
pub(crate) struct Encoder<'py> {
    py: Python<'py>,
    pub(crate) out: Vec<u8>,
    depth: u32,
}

macro_rules! exact {
    ($t:expr, $ty:ident) => {
        $t == &raw mut ffi::$ty
    };
}

impl<'py> Encoder<'py> {
    pub(crate) fn new(py: Python<'py>, out: Vec<u8>) -> Self {
        Encoder { py, out, depth: 0 }
    }

    /// Appends the canonical encoding of `obj`.
    pub(crate) fn value(&mut self, obj: &Bound<'py, PyAny>) -> R {
        let t = obj.get_type_ptr();
        let p = obj.as_ptr();
        if exact!(t, PyUnicode_Type) {
            // SAFETY: exact type checked.
            return self.str(unsafe { obj.cast_unchecked::<PyString>() });
        }
        if exact!(t, PyLong_Type) {
            return self.int(obj);
        }
        if exact!(t, PyFloat_Type) {
            // SAFETY: exact type checked.
            self.float(unsafe { ffi::PyFloat_AS_DOUBLE(p) });
            return Ok(());
        }
        if obj.is_none() {
            c::write_null(&mut self.out);
            return Ok(());
        }
        if exact!(t, PyBool_Type) {
            // SAFETY: comparing to the True singleton.
            c::write_bool(&mut self.out, p == unsafe { ffi::Py_True() });
            return Ok(());
        }
        if exact!(t, PyDict_Type) {
            // SAFETY: exact type checked.
            return self.dict(unsafe { obj.cast_unchecked::<PyDict>() });
        }
        if exact!(t, PyList_Type) {
            // SAFETY: exact type checked.
            return self.list(unsafe { obj.cast_unchecked::<PyList>() });
        }
        if exact!(t, PyTuple_Type) {
            c::write_typed_header(&mut self.out, "tuple");
            // SAFETY: exact type checked.
            return self.tuple_items(unsafe { obj.cast_unchecked::<PyTuple>() });
        }
        if exact!(t, PyBytes_Type) {
            // SAFETY: exact type checked.
            let b = unsafe { obj.cast_unchecked::<PyBytes>() }.as_bytes();
            self.bytes_like(b, None);
            return Ok(());
        }
        self.other(obj)
    }

    fn enter(&mut self) -> R {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(EncErr::new(ErrKind::TooDeep));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn float(&mut self, v: f64) {
        // Every NaN is keyed as the canonical quiet NaN (Python has no way to tell NaNs apart
        // and arithmetic produces NaNs of either sign).
        c::write_f64(&mut self.out, if v.is_nan() { f64::NAN } else { v });
    }

    fn str(&mut self, s: &Bound<'py, PyString>) -> R {
        match s.to_str() {
            Ok(s) => c::write_str(&mut self.out, s),
            Err(_) => {
                // Lone surrogates: not UTF-8. Keyed by their surrogatepass bytes, typed.
                let b = s.call_method1(intern!(self.py, "encode"), ("utf-8", "surrogatepass"))?;
                c::write_typed_header(&mut self.out, "str:surrogatepass");
                c::write_bytes(
                    &mut self.out,
                    b.cast::<PyBytes>().map_err(PyErr::from)?.as_bytes(),
                );
            }
        }
        Ok(())
    }

    fn int(&mut self, obj: &Bound<'py, PyAny>) -> R {
        let mut overflow = 0;
        // SAFETY: obj is an int (or subclass); errors are reported through overflow / -1.
        let v = unsafe { ffi::PyLong_AsLongLongAndOverflow(obj.as_ptr(), &mut overflow) };
        if overflow == 0 {
            if v == -1 {
                if let Some(e) = PyErr::take(self.py) {
                    return Err(e.into());
                }
            }
            c::write_int(&mut self.out, i128::from(v));
            return Ok(());
        }
        if let Ok(v) = obj.extract::<i128>() {
            c::write_int(&mut self.out, v);
        } else if let Ok(v) = obj.extract::<u128>() {
            c::write_uint(&mut self.out, v);
        } else {
            // Beyond the INT range: typed, by its canonical hexadecimal text.
            let hex = self.py.import("builtins")?.getattr("hex")?.call1((obj,))?;
            c::write_typed_header(&mut self.out, "int");
            c::write_str(
                &mut self.out,
                hex.cast::<PyString>().map_err(PyErr::from)?.to_str()?,
            );
        }
        Ok(())
    }

    /// bytes, bytearray and byte-format memoryviews: BYTES, or DIGEST from [`BIG_BYTES`] on.
    fn bytes_like(&mut self, b: &[u8], known: Option<Digest>) {
        if b.len() >= BIG_BYTES {
            let d = known.unwrap_or_else(|| digest_of(self.py, b));
            c::write_digest(&mut self.out, b.len() as u64, &d);
        } else {
            c::write_bytes(&mut self.out, b);
        }
    }

    fn dict(&mut self, d: &Bound<'py, PyDict>) -> R {
        self.enter()?;
        let pos = c::begin_map(&mut self.out);
        let mut entries: Vec<c::MapEntry> = Vec::with_capacity(d.len());
        for (i, (k, v)) in d.iter().enumerate() {
            let start = self.out.len();
            self.value(&k)
                .map_err(|e| e.at(Seg::Text(format!(".<key #{i}>"))))?;
            let key_end = self.out.len();
            if let Err(e) = self.value(&v) {
                return Err(e.at(Seg::Key(k.unbind())));
            }
            entries.push((start, key_end, self.out.len()));
        }
        c::end_map(&mut self.out, pos, &mut entries)
            .map_err(|dup| EncErr::new(ErrKind::DuplicateKey(c::render(&dup.0))))?;
        self.leave();
        Ok(())
    }

    /// A MAP of argument names to values: the same bytes (and error paths) as [`Encoder::value`]
    /// of the dict `{name: value}`, without building the dict.
    pub(crate) fn named(
        &mut self,
        names: &[Bound<'py, PyString>],
        values: &[Bound<'py, PyAny>],
    ) -> R {
        self.enter()?;
        let pos = c::begin_map(&mut self.out);
        let mut entries: Vec<c::MapEntry> = Vec::with_capacity(names.len());
        for (name, v) in names.iter().zip(values) {
            let start = self.out.len();
            self.str(name)?;
            let key_end = self.out.len();
            if let Err(e) = self.value(v) {
                return Err(e.at(Seg::Key(name.clone().into_any().unbind())));
            }
            entries.push((start, key_end, self.out.len()));
        }
        c::end_map(&mut self.out, pos, &mut entries)
            .map_err(|dup| EncErr::new(ErrKind::DuplicateKey(c::render(&dup.0))))?;
        self.leave();
        Ok(())
    }

    /// A MAP of string keys (attribute names) to values, e.g. dataclass fields.
    fn fields<I>(&mut self, items: I) -> R
    where
        I: IntoIterator<Item = PyResult<(String, Bound<'py, PyAny>)>>,
    {
        self.enter()?;
        let pos = c::begin_map(&mut self.out);
        let mut entries: Vec<c::MapEntry> = Vec::new();
        for item in items {
            let (name, v) = item?;
            let start = self.out.len();
            c::write_str(&mut self.out, &name);
            let key_end = self.out.len();
            self.value(&v).map_err(|e| e.at(Seg::Attr(name.clone())))?;
            entries.push((start, key_end, self.out.len()));
        }
        c::end_map(&mut self.out, pos, &mut entries)
            .map_err(|dup| EncErr::new(ErrKind::DuplicateKey(c::render(&dup.0))))?;
        self.leave();
        Ok(())
    }

    fn list(&mut self, l: &Bound<'py, PyList>) -> R {
        self.enter()?;
        let pos = c::begin_seq(&mut self.out);
        let mut n = 0u64;
        for (i, v) in l.iter().enumerate() {
            self.value(&v).map_err(|e| e.at(Seg::Index(i)))?;
            n += 1;
        }
        c::end_seq(&mut self.out, pos, n);
        self.leave();
        Ok(())
    }

    fn tuple_items(&mut self, t: &Bound<'py, PyTuple>) -> R {
        self.enter()?;
        let pos = c::begin_seq(&mut self.out);
        for (i, v) in t.iter().enumerate() {
            self.value(&v).map_err(|e| e.at(Seg::Index(i)))?;
        }
        c::end_seq(&mut self.out, pos, t.len() as u64);
        self.leave();
        Ok(())
    }

    /// Any iterable as a SEQ, elements in iteration order.
    fn seq_of(&mut self, it: &Bound<'py, PyAny>, seg: impl Fn(usize) -> Seg) -> R {
        self.enter()?;
        let pos = c::begin_seq(&mut self.out);
        let mut n = 0usize;
        for v in it.try_iter()? {
            self.value(&v?).map_err(|e| e.at(seg(n)))?;
            n += 1;
        }
        c::end_seq(&mut self.out, pos, n as u64);
        self.leave();
        Ok(())
    }

    /// set / frozenset: a SEQ sorted by the elements' encodings.
    fn set(&mut self, it: &Bound<'py, PyAny>) -> R {
        self.enter()?;
        c::write_typed_header(&mut self.out, "set");
        let pos = c::begin_seq(&mut self.out);
        let mut els = Vec::new();
        for v in it.try_iter()? {
            let v = v?;
            let start = self.out.len();
            self.value(&v)
                .map_err(|e| e.at(Seg::Text(format!(" (the element {})", repr(&v)))))?;
            els.push((start, self.out.len()));
        }
        c::end_sorted_seq(&mut self.out, pos, &mut els);
        self.leave();
        Ok(())
    }

    fn typed_value(&mut self, name: &str, v: &Bound<'py, PyAny>, seg: Seg) -> R {
        self.enter()?;
        c::write_typed_header(&mut self.out, name);
        self.value(v).map_err(|e| e.at(seg))?;
        self.leave();
        Ok(())
    }

    /// Everything that is not one of the exact common types.
    fn other(&mut self, obj: &Bound<'py, PyAny>) -> R {
        let py = self.py;
        if let Ok(f) = obj.cast::<File>() {
            let path = f.get().path.clone();
            let (digest, len) = py
                .detach(|| runcache::file_digest::file_digest(&path))
                .map_err(|e| EncErr::from(PyErr::from(e)))?;
            c::write_typed_header(&mut self.out, "file");
            c::write_digest(&mut self.out, len, &digest);
            return Ok(());
        }
        let ty = obj.get_type();
        if let Some(m) = ty.getattr_opt(intern!(py, "__runcache_key__"))? {
            if !m.is_none() {
                let name = format!("custom:{}", type_name(&ty));
                let v = obj.call_method0(intern!(py, "__runcache_key__"))?;
                return self.typed_value(&name, &v, Seg::Text(".__runcache_key__()".into()));
            }
        }
        if let Some(np) = numpy(py) {
            if is_instance(obj, &np.ndarray) {
                if !ty.is(np.ndarray.bind(py)) && !is_instance(obj, &np.memmap) {
                    return Err(unhashable(
                        obj,
                        "only plain numpy arrays (and np.memmap) are keyed; for a subclass \
                         (masked array, matrix, ...) pass the parts that matter",
                    ));
                }
                return self.ndarray(obj);
            }
            if is_instance(obj, &np.generic) {
                return self.numpy_scalar(obj);
            }
        }
        if let Some(r) = super::arrow::encode(self, obj) {
            return r;
        }
        if let Some(pd) = pandas(py) {
            if let Some(r) = self.pandas(obj, pd) {
                return r;
            }
        }
        let std = stdlib(py)?;
        if is_instance(obj, &std.enum_type) {
            let name = format!("enum:{}", type_name(&ty));
            let v = obj.getattr(intern!(py, "value"))?;
            return self.typed_value(&name, &v, Seg::Attr("value".into()));
        }
        // Subclasses of the common types (exact ones were handled by `value`).
        if let Ok(s) = obj.cast::<PyString>() {
            return self.str(s);
        }
        if obj.is_instance_of::<pyo3::types::PyBool>() {
            c::write_bool(&mut self.out, obj.is_truthy()?);
            return Ok(());
        }
        if obj.is_instance_of::<pyo3::types::PyInt>() {
            return self.int(obj);
        }
        if obj.is_instance_of::<pyo3::types::PyFloat>() {
            self.float(obj.extract::<f64>()?);
            return Ok(());
        }
        if let Ok(c) = obj.cast::<PyComplex>() {
            c::write_typed_header(&mut self.out, "complex");
            let pos = c::begin_seq(&mut self.out);
            self.float(c.real());
            self.float(c.imag());
            c::end_seq(&mut self.out, pos, 2);
            return Ok(());
        }
        if let Ok(t) = obj.cast::<PyTuple>() {
            if let Some(fields) = ty.getattr_opt(intern!(py, "_fields"))? {
                // A named tuple: its class and its fields by name.
                let name = format!("namedtuple:{}", type_name(&ty));
                c::write_typed_header(&mut self.out, &name);
                let names: Vec<String> = fields.extract()?;
                return self.fields(names.into_iter().map(|n| {
                    let v = obj.getattr(n.as_str())?;
                    Ok((n, v))
                }));
            }
            c::write_typed_header(&mut self.out, "tuple");
            return self.tuple_items(t);
        }
        if let Ok(l) = obj.cast::<PyList>() {
            return self.list(l);
        }
        if let Ok(d) = obj.cast::<PyDict>() {
            return self.dict(d);
        }
        if obj.is_instance_of::<PySet>() || obj.is_instance_of::<PyFrozenSet>() {
            return self.set(obj);
        }
        if obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<PyByteArray>() {
            let buf = RawBuf::simple(obj)?;
            self.bytes_like(buf.bytes(), None);
            return Ok(());
        }
        if obj.is_instance_of::<PyMemoryView>() {
            return self.memoryview(obj);
        }
        if obj.is_instance_of::<PyDateTime>() {
            return self.datetime(obj, "datetime.datetime");
        }
        if obj.is_instance_of::<PyDate>() {
            let iso = obj.call_method0(intern!(py, "isoformat"))?;
            c::write_typed_header(&mut self.out, "datetime.date");
            return self.value(&iso);
        }
        if obj.is_instance_of::<PyTime>() {
            return self.datetime(obj, "datetime.time");
        }
        if obj.is_instance_of::<PyDelta>() {
            c::write_typed_header(&mut self.out, "datetime.timedelta");
            let pos = c::begin_seq(&mut self.out);
            for a in ["days", "seconds", "microseconds"] {
                let v = obj.getattr(a)?;
                self.int(&v)?;
            }
            c::end_seq(&mut self.out, pos, 3);
            return Ok(());
        }
        if is_instance(obj, &std.pure_path) {
            let name = if is_instance(obj, &std.pure_windows_path) {
                "pathlib.PureWindowsPath"
            } else {
                "pathlib.PurePosixPath"
            };
            let s = obj.str()?;
            c::write_typed_header(&mut self.out, name);
            return self.str(&s);
        }
        if !obj.is_instance_of::<PyType>() {
            if ty
                .getattr_opt(intern!(py, "__dataclass_fields__"))?
                .is_some()
            {
                let name = format!("dataclass:{}", type_name(&ty));
                c::write_typed_header(&mut self.out, &name);
                let fields = std.dataclass_fields.bind(py).call1((obj,))?;
                let mut items = Vec::new();
                for f in fields.try_iter()? {
                    let n: String = f?.getattr(intern!(py, "name"))?.extract()?;
                    let v = obj.getattr(n.as_str());
                    items.push(v.map(|v| (n, v)));
                }
                return self.fields(items);
            }
            let pyd_fields = match ty.getattr_opt(intern!(py, "__pydantic_fields__"))? {
                Some(f) => Some(f),
                None if ty.getattr_opt(intern!(py, "__fields_set__"))?.is_some() => {
                    ty.getattr_opt(intern!(py, "__fields__"))?
                }
                None => None,
            };
            if let Some(fields) = pyd_fields {
                if let Ok(fields) = fields.cast::<PyDict>() {
                    return self.pydantic(obj, &ty, fields);
                }
            }
        }
        if let Some(d) = obj.getattr_opt(intern!(py, "__runcache_digest__"))? {
            // Content the engine produced (a loaded blob): its digest is known.
            let digest = digest_attr(&d)?;
            let buf = RawBuf::simple(obj)?;
            self.bytes_like(buf.bytes(), Some(digest));
            return Ok(());
        }
        Err(unhashable(obj, "no canonical encoding for this type"))
    }

    fn pydantic(
        &mut self,
        obj: &Bound<'py, PyAny>,
        ty: &Bound<'py, PyType>,
        fields: &Bound<'py, PyDict>,
    ) -> R {
        let py = self.py;
        let name = format!("pydantic:{}", type_name(ty));
        c::write_typed_header(&mut self.out, &name);
        let mut items = Vec::new();
        for k in fields.keys() {
            let n: String = k.extract()?;
            let v = obj.getattr(n.as_str());
            items.push(v.map(|v| (n, v)));
        }
        if let Some(extra) = obj.getattr_opt(intern!(py, "__pydantic_extra__"))? {
            if let Ok(extra) = extra.cast::<PyDict>() {
                for (k, v) in extra.iter() {
                    items.push(k.extract::<String>().map(|n| (n, v)));
                }
            }
        }
        self.fields(items)
    }

    fn datetime(&mut self, obj: &Bound<'py, PyAny>, name: &str) -> R {
        let py = self.py;
        let iso = obj.call_method0(intern!(py, "isoformat"))?;
        let tz = obj.getattr(intern!(py, "tzinfo"))?;
        c::write_typed_header(&mut self.out, name);
        let pos = c::begin_seq(&mut self.out);
        self.value(&iso)?;
        self.tz(&tz)?;
        c::end_seq(&mut self.out, pos, 2);
        Ok(())
    }

    /// A time zone by name: `ZoneInfo.key`, else `str(tz)` (`UTC`, `UTC+01:00`, pytz names).
    fn tz(&mut self, tz: &Bound<'py, PyAny>) -> R {
        if tz.is_none() {
            c::write_null(&mut self.out);
            return Ok(());
        }
        let name = match tz.getattr_opt(intern!(self.py, "key"))? {
            Some(k) if k.is_instance_of::<PyString>() => {
                k.cast_into::<PyString>().map_err(PyErr::from)?
            }
            _ => tz.str()?,
        };
        self.str(&name)
    }

    fn memoryview(&mut self, obj: &Bound<'py, PyAny>) -> R {
        let py = self.py;
        let format: String = obj.getattr(intern!(py, "format"))?.extract()?;
        let ndim: usize = obj.getattr(intern!(py, "ndim"))?.extract()?;
        let contiguous = obj.getattr(intern!(py, "c_contiguous"))?.is_truthy()?;
        // The view's C-order bytes: its own buffer, or for a large strided view numpy can
        // read, their digest streamed in slabs (bounded memory); else a C-order copy.
        let streamed = if contiguous {
            None
        } else {
            self.strided_view_digest(obj)?
        };
        let owned;
        let buf = match streamed {
            Some(_) => None,
            None if contiguous => Some(RawBuf::simple(obj)?),
            None => {
                owned = obj.call_method0(intern!(py, "tobytes"))?;
                Some(RawBuf::simple(&owned)?)
            }
        };
        if ndim <= 1 && format == "B" {
            match (&buf, streamed) {
                (Some(buf), _) => self.bytes_like(buf.bytes(), None),
                // Streamed views are larger than BIG_BYTES: bytes_like would write this DIGEST.
                (None, Some((len, d))) => c::write_digest(&mut self.out, len, &d),
                (None, None) => unreachable!("one of the two is set"),
            }
            return Ok(());
        }
        c::write_typed_header(&mut self.out, "memoryview");
        let pos = c::begin_map(&mut self.out);
        let mut entries = Vec::new();
        let start = self.out.len();
        c::write_str(&mut self.out, "data");
        let k = self.out.len();
        let (len, d) = match (&buf, streamed) {
            (Some(buf), _) => (buf.bytes().len() as u64, digest_of(py, buf.bytes())),
            (None, Some(streamed)) => streamed,
            (None, None) => unreachable!("one of the two is set"),
        };
        c::write_digest(&mut self.out, len, &d);
        entries.push((start, k, self.out.len()));
        let start = self.out.len();
        c::write_str(&mut self.out, "format");
        let k = self.out.len();
        c::write_str(&mut self.out, &format);
        entries.push((start, k, self.out.len()));
        let start = self.out.len();
        c::write_str(&mut self.out, "shape");
        let k = self.out.len();
        let shape = obj.getattr(intern!(py, "shape"))?;
        self.seq_of(&shape, Seg::Index)?;
        entries.push((start, k, self.out.len()));
        c::end_map(&mut self.out, pos, &mut entries).expect("distinct keys");
        Ok(())
    }

    /// Length and digest of the C-order bytes of a non-contiguous memoryview larger than two
    /// slabs, hashed through a numpy view of it in slabs ([`Encoder::hash_in_slabs`]); `None`
    /// for smaller views, without numpy loaded, or for formats numpy cannot view.
    fn strided_view_digest(&mut self, view: &Bound<'py, PyAny>) -> PyResult<Option<(u64, Digest)>> {
        let py = self.py;
        let nbytes: usize = view.getattr(intern!(py, "nbytes"))?.extract()?;
        if nbytes <= 2 * SLAB_BYTES {
            return Ok(None);
        }
        let Some(np) = loaded_module(py, "numpy") else {
            return Ok(None);
        };
        let Ok(arr) = np.call_method1(intern!(py, "asarray"), (view,)) else {
            return Ok(None);
        };
        let same = arr.getattr(intern!(py, "nbytes"))?.extract::<usize>()? == nbytes
            && !arr
                .getattr(intern!(py, "dtype"))?
                .getattr(intern!(py, "hasobject"))?
                .is_truthy()?;
        if !same {
            return Ok(None);
        }
        let mut hasher = StreamHasher::new();
        self.hash_in_slabs(&arr, nbytes, &mut hasher)
            .map_err(|e| e.into_pyerr(py, None))?;
        Ok(Some((hasher.len(), hasher.finish())))
    }

    /// A numpy dtype: `dtype.str` (kind, item size and byte order, e.g. `<f8`, `>i4`, `<M8[ns]`),
    /// or for structured dtypes their `descr` (field names, formats and offsets).
    fn dtype(&mut self, dtype: &Bound<'py, PyAny>) -> R {
        let py = self.py;
        if dtype.getattr(intern!(py, "fields"))?.is_none() {
            let s = dtype.getattr(intern!(py, "str"))?;
            self.value(&s)
        } else {
            let descr = dtype.getattr(intern!(py, "descr"))?;
            self.value(&descr)
                .map_err(|e| e.at(Seg::Text(".dtype.descr".into())))
        }
    }

    fn ndarray(&mut self, arr: &Bound<'py, PyAny>) -> R {
        let py = self.py;
        let dtype = arr.getattr(intern!(py, "dtype"))?;
        let has_object = dtype.getattr(intern!(py, "hasobject"))?.is_truthy()?;
        c::write_typed_header(&mut self.out, "numpy.ndarray");
        let pos = c::begin_map(&mut self.out);
        let mut entries = Vec::with_capacity(3);

        let start = self.out.len();
        c::write_str(&mut self.out, "data");
        let k = self.out.len();
        if has_object {
            if !dtype.getattr(intern!(py, "fields"))?.is_none() {
                return Err(unhashable(
                    arr,
                    "structured numpy arrays with object fields are not keyed",
                ));
            }
            // Element-wise, in C order.
            let flat = arr.call_method1(intern!(py, "reshape"), (-1,))?;
            let items = flat.call_method0(intern!(py, "tolist"))?;
            self.seq_of(&items, |i| Seg::Text(format!(".flat[{i}]")))?;
        } else {
            self.array_data(arr)?;
        }
        entries.push((start, k, self.out.len()));

        let start = self.out.len();
        c::write_str(&mut self.out, "dtype");
        let k = self.out.len();
        self.dtype(&dtype)?;
        entries.push((start, k, self.out.len()));

        let start = self.out.len();
        c::write_str(&mut self.out, "shape");
        let k = self.out.len();
        let shape = arr.getattr(intern!(py, "shape"))?;
        self.seq_of(&shape, Seg::Index)?;
        entries.push((start, k, self.out.len()));

        c::end_map(&mut self.out, pos, &mut entries).expect("distinct keys");
        Ok(())
    }

    /// DIGEST of the array's element bytes in C order: from the array's own buffer when it is
    /// C-contiguous (no copy), else from a C-order copy. A C-contiguous array that exactly
    /// covers a buffer carrying `__runcache_digest__` (a result loaded from the store) uses
    /// that digest and is not read.
    fn array_data(&mut self, arr: &Bound<'py, PyAny>) -> R {
        let py = self.py;
        let buf = RawBuf::simple(arr).ok();
        if let Some(buf) = buf {
            let bytes = buf.bytes();
            let digest = match self.known_digest(arr, buf.addr(), bytes.len())? {
                Some(d) => d,
                None => digest_of(py, bytes),
            };
            c::write_digest(&mut self.out, bytes.len() as u64, &digest);
            return Ok(());
        }
        // Not C-contiguous (Fortran order, strided views), or a dtype numpy will not export
        // (datetime64): C-order bytes from flat views; `ravel` copies only if it must. A large
        // array is copied and hashed in slabs along its first axis (the C-order bytes of the
        // whole are the slabs' C-order bytes one after the other), so memory stays bounded.
        let nbytes: usize = arr.getattr(intern!(py, "nbytes"))?.extract()?;
        if nbytes <= 2 * SLAB_BYTES {
            let buf = RawBuf::simple(&c_order_bytes(arr)?)?;
            let d = digest_of(py, buf.bytes());
            c::write_digest(&mut self.out, buf.bytes().len() as u64, &d);
            return Ok(());
        }
        let mut hasher = StreamHasher::new();
        self.hash_in_slabs(arr, nbytes, &mut hasher)?;
        c::write_digest(&mut self.out, hasher.len(), &hasher.finish());
        Ok(())
    }

    /// Feeds the C-order bytes of `arr` (`nbytes` long) to `hasher`, copying at most about
    /// [`SLAB_BYTES`] at a time: runs of whole rows along the first axis, or, when one row is
    /// larger than a slab (or there is a single row), each row in turn, recursively.
    fn hash_in_slabs(
        &mut self,
        arr: &Bound<'py, PyAny>,
        nbytes: usize,
        hasher: &mut StreamHasher,
    ) -> R {
        let py = self.py;
        let shape: Vec<usize> = arr.getattr(intern!(py, "shape"))?.extract()?;
        let rows = shape.first().copied().unwrap_or(0);
        if nbytes <= SLAB_BYTES || (shape.len() < 2 && rows < 2) {
            let buf = RawBuf::simple(&c_order_bytes(arr)?)?;
            let bytes = buf.bytes();
            py.detach(|| hasher.update(bytes));
            return Ok(());
        }
        let row_bytes = nbytes / rows;
        if row_bytes > SLAB_BYTES && shape.len() >= 2 {
            for i in 0..rows {
                let row = arr.get_item(i)?;
                self.hash_in_slabs(&row, row_bytes, hasher)?;
            }
            return Ok(());
        }
        let per_slab = (SLAB_BYTES / row_bytes.max(1)).max(1);
        let mut start = 0;
        while start < rows {
            let end = (start + per_slab).min(rows);
            let slab = arr.get_item(PySlice::new(py, start as isize, end as isize, 1))?;
            let buf = RawBuf::simple(&c_order_bytes(&slab)?)?;
            let bytes = buf.bytes();
            py.detach(|| hasher.update(bytes));
            start = end;
        }
        Ok(())
    }

    /// Walks `arr.base` to an object with `__runcache_digest__` whose buffer starts at `addr`
    /// and is `len` bytes long.
    fn known_digest(
        &mut self,
        arr: &Bound<'py, PyAny>,
        addr: usize,
        len: usize,
    ) -> PyResult<Option<Digest>> {
        let py = self.py;
        let mut cur = arr.getattr(intern!(py, "base"))?;
        for _ in 0..64 {
            if cur.is_none() {
                return Ok(None);
            }
            if let Some(d) = cur.getattr_opt(intern!(py, "__runcache_digest__"))? {
                let Ok(buf) = RawBuf::simple(&cur) else {
                    return Ok(None);
                };
                if buf.addr() == addr && buf.bytes().len() == len {
                    return Ok(Some(digest_attr(&d)?));
                }
                return Ok(None);
            }
            let next = if cur.is_instance_of::<PyMemoryView>() {
                cur.getattr(intern!(py, "obj"))?
            } else {
                match cur.getattr_opt(intern!(py, "base"))? {
                    Some(b) => b,
                    None => return Ok(None),
                }
            };
            cur = next;
        }
        Ok(None)
    }

    fn numpy_scalar(&mut self, obj: &Bound<'py, PyAny>) -> R {
        let py = self.py;
        let dtype = obj.getattr(intern!(py, "dtype"))?;
        if dtype.getattr(intern!(py, "hasobject"))?.is_truthy()? {
            return Err(unhashable(obj, "numpy object scalars are not keyed"));
        }
        c::write_typed_header(&mut self.out, "numpy.scalar");
        let pos = c::begin_map(&mut self.out);
        let mut entries = Vec::with_capacity(2);
        let start = self.out.len();
        c::write_str(&mut self.out, "data");
        let k = self.out.len();
        let raw = obj.call_method0(intern!(py, "tobytes"))?;
        c::write_bytes(
            &mut self.out,
            raw.cast::<PyBytes>().map_err(PyErr::from)?.as_bytes(),
        );
        entries.push((start, k, self.out.len()));
        let start = self.out.len();
        c::write_str(&mut self.out, "dtype");
        let k = self.out.len();
        self.dtype(&dtype)?;
        entries.push((start, k, self.out.len()));
        c::end_map(&mut self.out, pos, &mut entries).expect("distinct keys");
        Ok(())
    }

    /// A MAP with static string keys, each value written by a closure.
    fn static_map(&mut self, name: &str, parts: Vec<(&'static str, Bound<'py, PyAny>, bool)>) -> R {
        self.enter()?;
        c::write_typed_header(&mut self.out, name);
        let pos = c::begin_map(&mut self.out);
        let mut entries = Vec::with_capacity(parts.len());
        for (key, v, as_str) in parts {
            let start = self.out.len();
            c::write_str(&mut self.out, key);
            let k = self.out.len();
            let r = if as_str {
                v.str().map_err(EncErr::from).and_then(|s| self.str(&s))
            } else {
                self.value(&v)
            };
            r.map_err(|e| e.at(Seg::Attr(key.to_string())))?;
            entries.push((start, k, self.out.len()));
        }
        c::end_map(&mut self.out, pos, &mut entries).expect("distinct keys");
        self.leave();
        Ok(())
    }

    fn pandas(&mut self, obj: &Bound<'py, PyAny>, pd: &Pandas) -> Option<R> {
        let known = [
            &pd.data_frame,
            &pd.series,
            &pd.index,
            &pd.nat_type,
            &pd.na_type,
            &pd.timestamp,
            &pd.timedelta,
        ];
        if !known.iter().any(|cls| is_instance(obj, cls)) {
            return None;
        }
        Some(self.pandas_value(obj, pd))
    }

    fn pandas_value(&mut self, obj: &Bound<'py, PyAny>, pd: &Pandas) -> R {
        let py = self.py;
        {
            if is_instance(obj, &pd.data_frame) {
                let columns = obj.getattr(intern!(py, "columns"))?;
                let index = obj.getattr(intern!(py, "index"))?;
                let dtypes = obj.getattr(intern!(py, "dtypes"))?;
                let dtype_names = pyo3::types::PyList::empty(py);
                for d in dtypes.call_method0(intern!(py, "tolist"))?.try_iter()? {
                    dtype_names.append(d?.str()?)?;
                }
                let iloc = obj.getattr(intern!(py, "iloc"))?;
                let ncols = columns.len()?;
                let values = pyo3::types::PyList::empty(py);
                let all = pyo3::types::PySlice::full(py);
                for i in 0..ncols {
                    let col = iloc.get_item((all.clone(), i))?;
                    values.append(col.call_method0(intern!(py, "to_numpy"))?)?;
                }
                return self.static_map(
                    "pandas.DataFrame",
                    vec![
                        ("columns", columns, false),
                        ("dtypes", dtype_names.into_any(), false),
                        ("index", index, false),
                        ("values", values.into_any(), false),
                    ],
                );
            }
            if is_instance(obj, &pd.series) {
                return self.static_map(
                    "pandas.Series",
                    vec![
                        ("dtype", obj.getattr(intern!(py, "dtype"))?, true),
                        ("index", obj.getattr(intern!(py, "index"))?, false),
                        ("name", obj.getattr(intern!(py, "name"))?, false),
                        ("values", obj.call_method0(intern!(py, "to_numpy"))?, false),
                    ],
                );
            }
            if is_instance(obj, &pd.index) {
                let names = obj.getattr(intern!(py, "names"))?;
                let names =
                    pyo3::types::PyList::new(py, names.try_iter()?.collect::<PyResult<Vec<_>>>()?)?;
                return self.static_map(
                    "pandas.Index",
                    vec![
                        ("dtype", obj.getattr(intern!(py, "dtype"))?, true),
                        ("names", names.into_any(), false),
                        ("values", obj.call_method0(intern!(py, "to_numpy"))?, false),
                    ],
                );
            }
            if is_instance(obj, &pd.nat_type) {
                c::write_typed_header(&mut self.out, "pandas.NaT");
                c::write_null(&mut self.out);
                return Ok(());
            }
            if is_instance(obj, &pd.na_type) {
                c::write_typed_header(&mut self.out, "pandas.NA");
                c::write_null(&mut self.out);
                return Ok(());
            }
            if is_instance(obj, &pd.timestamp) {
                // Nanoseconds since the epoch (UTC for aware timestamps) and the zone.
                c::write_typed_header(&mut self.out, "pandas.Timestamp");
                let pos = c::begin_seq(&mut self.out);
                let v = obj.getattr(intern!(py, "value"))?;
                self.int(&v)?;
                let tz = obj.getattr(intern!(py, "tzinfo"))?;
                self.tz(&tz)?;
                c::end_seq(&mut self.out, pos, 2);
                return Ok(());
            }
            if is_instance(obj, &pd.timedelta) {
                c::write_typed_header(&mut self.out, "pandas.Timedelta");
                let v = obj.getattr(intern!(py, "value"))?;
                return self.int(&v);
            }
            unreachable!("checked by `pandas`")
        }
    }
}

/// Non-contiguous arrays are copied to C order at most this many bytes at a time.
const SLAB_BYTES: usize = 16 << 20;

/// A flat, C-contiguous `uint8` view of the array's elements in C order (a copy only if the
/// array is not C-contiguous).
fn c_order_bytes<'py>(arr: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = arr.py();
    arr.call_method0(intern!(py, "ravel"))?
        .call_method1(intern!(py, "view"), ("u1",))
}

/// The 32 raw bytes of a `__runcache_digest__` attribute.
fn digest_attr(d: &Bound<'_, PyAny>) -> PyResult<Digest> {
    let b = d.cast::<PyBytes>().map_err(PyErr::from)?.as_bytes();
    let arr: [u8; 32] = b.try_into().map_err(|_| {
        PyValueError::new_err("__runcache_digest__ must be 32 raw bytes (a BLAKE3 digest)")
    })?;
    Ok(Digest::from_bytes(arr))
}
