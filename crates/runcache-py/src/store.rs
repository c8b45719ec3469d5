//! `runcache._core.Store`: a handle on one store, and the compute-once call used by every
//! Python task. The engine's loop runs with the GIL released; the computation and unpickling
//! re-acquire it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use runcache::lease::LeaseOptions;
use runcache::manifest::{BlobRef, Manifest, Status};
use runcache::{Claim, Failure, GcOptions, Key, Mode, StoreOptions, SweepRecord, SweepRef};

use crate::codec::{Outcome, PickleCodec, Pickled};
use crate::errors::to_py;

/// A handle on one store.
#[pyclass(frozen, module = "runcache._core")]
pub struct Store {
    inner: runcache::Store,
}

impl Store {
    /// The engine's store behind this handle.
    pub(crate) fn engine(&self) -> &runcache::Store {
        &self.inner
    }
}

fn parse_key(key: &str) -> PyResult<Key> {
    key.parse().map_err(to_py)
}

/// `f` of every key, in order, without holding the GIL; the first error is raised.
fn for_each_key<T: Send>(
    py: Python<'_>,
    keys: &[Key],
    f: impl Fn(&Key) -> runcache::Result<T> + Send + Sync,
) -> PyResult<Vec<T>> {
    py.detach(|| keys.iter().map(&f).collect::<runcache::Result<Vec<T>>>())
        .map_err(to_py)
}

/// The engine's view of sweep `id` submitted at `since_unix_ms`, judging completed entries as
/// calls do (a dependency whose version changed makes an entry stale).
fn sweep_ref(id: String, since_unix_ms: u64) -> SweepRef {
    SweepRef::new(id, since_unix_ms).with_validator(Arc::new(stale_dependency))
}

/// The arguments every per-item sweep call takes: item keys, lookup mode, and the sweep.
fn sweep_items(
    keys: &[String],
    mode: &str,
    sweep_id: String,
    since_unix_ms: u64,
) -> PyResult<(Vec<Key>, Mode, SweepRef)> {
    Ok((
        parse_keys(keys)?,
        mode.parse().map_err(to_py)?,
        sweep_ref(sweep_id, since_unix_ms),
    ))
}

fn parse_keys(keys: &[String]) -> PyResult<Vec<Key>> {
    keys.iter().map(|k| parse_key(k)).collect()
}

/// Current task versions by namespace, registered by the Python decorator: an entry that used
/// a dependency whose version has changed since is stale (datajuicer's rule).
static VERSIONS: LazyLock<Mutex<HashMap<String, String>>> = LazyLock::new(Default::default);

/// Records the current version of a task namespace (called when a task is defined).
#[pyfunction]
pub fn register_version(namespace: &str, version: &str) {
    VERSIONS
        .lock()
        .unwrap()
        .insert(namespace.to_string(), version.to_string());
}

/// The version registered for a task namespace in this process, if any.
#[pyfunction]
pub fn registered_version(namespace: &str) -> Option<String> {
    VERSIONS.lock().unwrap().get(namespace).cloned()
}

/// Why a completed entry is stale, if a dependency's registered version differs from the one it
/// used.
pub(crate) fn stale_dependency(m: &Manifest) -> Option<String> {
    if m.dependencies.is_empty() {
        return None;
    }
    let versions = VERSIONS.lock().unwrap();
    m.dependencies.iter().find_map(|d| {
        let current = versions.get(&d.namespace)?;
        (*current != d.version).then(|| {
            format!(
                "dependency {} is now version {current}, the entry used version {}",
                d.namespace, d.version
            )
        })
    })
}

/// The validator of a Python task's calls: an entry is stale when a dependency's version
/// changed ([`stale_dependency`]); one computed by other source code than `source_hash` is
/// still used, and reported to `code_changed` (the caller warns).
pub(crate) fn task_validator(
    source_hash: Option<String>,
    code_changed: impl Fn() + Send + Sync + 'static,
) -> runcache::Validator {
    Arc::new(move |m: &Manifest| {
        if let (Some(now), Some(then)) = (
            source_hash.as_deref(),
            m.metadata.get("source_hash").and_then(|v| v.as_str()),
        ) {
            if now != then {
                code_changed();
            }
        }
        stale_dependency(m)
    })
}

#[pymethods]
impl Store {
    /// Opens (creating if needed) the store at `location`: a path or URL, or a list of them
    /// for a tiered store (nearest first; `?readonly=true` marks a tier read-only).
    /// `signing_key` (str or bytes) signs every entry written and refuses entries read without
    /// a valid signature; when None, `RUNCACHE_SIGNING_KEY` applies if set.
    #[new]
    #[pyo3(signature = (location, sync=false, lease_ttl=None, signing_key=None))]
    fn new(
        py: Python<'_>,
        location: &Bound<'_, PyAny>,
        sync: bool,
        lease_ttl: Option<f64>,
        signing_key: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let mut options = StoreOptions {
            sync,
            ..Default::default()
        };
        if let Some(ttl) = lease_ttl {
            options.lease = LeaseOptions::with_ttl(Duration::from_secs_f64(ttl));
        }
        if let Some(k) = signing_key {
            let material: Vec<u8> = match k.cast::<PyBytes>() {
                Ok(b) => b.as_bytes().to_vec(),
                Err(_) => k
                    .extract::<String>()
                    .map_err(|_| PyTypeError::new_err("signing_key must be str or bytes"))?
                    .into_bytes(),
            };
            options.signing_key = Some(runcache::SigningKey::new(material).map_err(to_py)?);
        }
        let locations: Vec<String> = if let Ok(one) = location.extract::<String>() {
            vec![one]
        } else {
            location.extract().map_err(|_| {
                PyTypeError::new_err("location must be a str or a list of str (a tiered store)")
            })?
        };
        let inner = py
            .detach(|| match locations.as_slice() {
                [one] => runcache::Store::open_with(one, options),
                many => {
                    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
                    runcache::Store::open_tiered_with(&refs, options)
                }
            })
            .map_err(to_py)?;
        Ok(Store { inner })
    }

    /// Where the store lives.
    #[getter]
    fn location(&self) -> String {
        self.inner.location()
    }

    /// Scratch directory on the store's filesystem (artifacts are written there, then moved).
    fn scratch_dir(&self) -> PathBuf {
        self.inner.backend().scratch_dir()
    }

    /// The compute-once call. Returns `(value, computed, code_changed)`.
    ///
    /// `doc()` returns the key document as JSON text (called only on a miss). `compute()` runs
    /// the user's function and returns `(value, artifacts, metadata_json)` where artifacts is a
    /// list of `(name, path)`; its exception is re-raised unchanged after being recorded
    /// (KeyboardInterrupt and `interrupt_types` record the entry as interrupted).
    #[pyo3(signature = (namespace, version, mode, key, doc, compute, mmap=true, wait_timeout=None, source_hash=None, interrupt_types=None))]
    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        py: Python<'_>,
        namespace: &str,
        version: &str,
        mode: &str,
        key: &str,
        doc: Py<PyAny>,
        compute: Py<PyAny>,
        mmap: bool,
        wait_timeout: Option<f64>,
        source_hash: Option<String>,
        interrupt_types: Option<Py<PyTuple>>,
    ) -> PyResult<(Py<PyAny>, bool, bool)> {
        let mode: Mode = mode.parse().map_err(to_py)?;
        let key = parse_key(key)?;
        let mut task = self.inner.task(namespace).version(version).mode(mode);
        if let Some(t) = wait_timeout {
            task = task.wait_timeout(Duration::from_secs_f64(t));
        }
        let code_changed = Arc::new(AtomicBool::new(false));
        let changed = code_changed.clone();
        task = task.validator(task_validator(source_hash, move || {
            changed.store(true, Ordering::Relaxed)
        }));
        let stash: Mutex<Option<PyErr>> = Mutex::new(None);
        let computed = AtomicBool::new(false);
        let codec = PickleCodec { mmap };
        let doc_fn = || json_doc(&doc, None);
        let result = py.detach(|| {
            task.get_or_compute_keyed(key, &doc_fn, &codec, |ctx| {
                computed.store(true, Ordering::Relaxed);
                Python::attach(|py| {
                    run_compute(py, &compute, ctx).map_err(|err| {
                        let failure = describe(py, &err, interrupt_types.as_ref());
                        *stash.lock().unwrap() = Some(err);
                        failure
                    })
                })
            })
        });
        match result {
            Ok(outcome) => Ok((
                outcome.value,
                computed.load(Ordering::Relaxed),
                code_changed.load(Ordering::Relaxed),
            )),
            Err(e) => match stash.into_inner().unwrap() {
                Some(original) => Err(original),
                None => Err(to_py(e)),
            },
        }
    }

    /// A worker's attempt at one sweep item (see the engine's `Task::claim_keyed`): computes
    /// the item unless its entry already settles it or another live process holds it. Returns
    /// `"done:<status>"`, `"busy"` or `"computed:<status>"`. A failure of the computation is
    /// recorded, not raised, except an interruption (KeyboardInterrupt, `interrupt_types`),
    /// which is recorded and then re-raised. The sweep is `sweep_id`, submitted at
    /// `since_unix_ms`; `log_path` is the item's captured output.
    #[pyo3(signature = (namespace, version, mode, key, sweep_id, since_unix_ms, doc, compute, log_path=None, interrupt_types=None))]
    #[allow(clippy::too_many_arguments)]
    fn claim(
        &self,
        py: Python<'_>,
        namespace: &str,
        version: &str,
        mode: &str,
        key: &str,
        sweep_id: String,
        since_unix_ms: u64,
        doc: Py<PyAny>,
        compute: Py<PyAny>,
        log_path: Option<PathBuf>,
        interrupt_types: Option<Py<PyTuple>>,
    ) -> PyResult<String> {
        let mode: Mode = mode.parse().map_err(to_py)?;
        let key = parse_key(key)?;
        let task = self
            .inner
            .task(namespace)
            .version(version)
            .mode(mode)
            .validator(Arc::new(stale_dependency));
        let sweep = sweep_ref(sweep_id, since_unix_ms);
        let stash: Mutex<Option<(PyErr, bool)>> = Mutex::new(None);
        let doc_fn = || json_doc(&doc, None);
        let codec = PickleCodec { mmap: true };
        let claim = py
            .detach(|| {
                task.claim_keyed(key, &sweep, &doc_fn, &codec, log_path.as_deref(), |ctx| {
                    Python::attach(|py| {
                        run_compute(py, &compute, ctx).map_err(|err| {
                            let failure = describe(py, &err, interrupt_types.as_ref());
                            *stash.lock().unwrap() = Some((err, failure.interrupted));
                            failure
                        })
                    })
                })
            })
            .map_err(to_py)?;
        if let Some((err, true)) = stash.into_inner().unwrap() {
            return Err(err);
        }
        Ok(match claim {
            Claim::Done(s) => format!("done:{}", s.as_str()),
            Claim::Busy => "busy".into(),
            Claim::Cancelled => "cancelled".into(),
            Claim::Computed(s) => format!("computed:{}", s.as_str()),
        })
    }

    /// Stores a Python object outside any entry (pickle protocol 5; large buffers as their own
    /// blobs) and returns its blobs as JSON text, `[[digest, size], ...]` (the stream first),
    /// for `get_value`.
    fn put_value(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<String> {
        let parts = Pickled::of(py, value)?;
        let backend = self.inner.backend().clone();
        let stream = &parts.stream;
        let buffers: Vec<&[u8]> = parts
            .buffers
            .iter()
            // SAFETY: each buffer is exported (held by `parts`) until this function returns,
            // contiguous bytes (PickleBuffer.raw()), and not mutated while we hold the export.
            .map(|b| unsafe { std::slice::from_raw_parts(b.buf_ptr() as *const u8, b.len_bytes()) })
            .collect();
        let described = py
            .detach(|| -> runcache::Result<serde_json::Value> {
                let put = |data: &[u8]| -> runcache::Result<serde_json::Value> {
                    let digest = backend.put_blob_hashing(data)?;
                    Ok(serde_json::json!([digest.to_hex(), data.len()]))
                };
                let mut out = Vec::with_capacity(1 + buffers.len());
                out.push(put(stream)?);
                for b in &buffers {
                    out.push(put(b)?);
                }
                Ok(serde_json::Value::Array(out))
            })
            .map_err(to_py)?;
        Ok(described.to_string())
    }

    /// Loads an object stored by `put_value` (verified; large buffers mapped read-only).
    fn get_value(&self, py: Python<'_>, blobs: &str) -> PyResult<Py<PyAny>> {
        let parts: Vec<(runcache::Digest, u64)> = serde_json::from_str(blobs)
            .map_err(|e| PyRuntimeError::new_err(format!("bad value description: {e}")))?;
        let Some(first) = parts.first() else {
            return Err(PyRuntimeError::new_err("bad value description: no blobs"));
        };
        let as_ref = |(i, (digest, size)): (usize, &(runcache::Digest, u64))| BlobRef {
            role: if i == 0 {
                "pickle".into()
            } else {
                format!("buffer:{}", i - 1)
            },
            digest: *digest,
            size: *size,
            inline: None,
        };
        let refs: Vec<BlobRef> = parts.iter().enumerate().map(as_ref).collect();
        let key = Key(first.0);
        let outcome = py
            .detach(|| {
                let stream = self.inner.read_blob(&key, &refs[0])?;
                let buffers: Vec<&BlobRef> = refs[1..].iter().collect();
                crate::codec::load_pickled(&self.inner, &key, stream, &buffers, true)
            })
            .map_err(to_py)?;
        Ok(outcome.value)
    }

    /// For each key: whether its entry settles an item of sweep `sweep_id`, submitted at
    /// `since_unix_ms`, in `mode` (completed or failed, with retry/force redoing older entries).
    fn statuses(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        mode: &str,
        sweep_id: String,
        since_unix_ms: u64,
    ) -> PyResult<Vec<bool>> {
        let (keys, mode, sweep) = sweep_items(&keys, mode, sweep_id, since_unix_ms)?;
        for_each_key(py, &keys, |k| self.inner.settles(k, mode, &sweep))
    }

    /// The state of each item (`keys`) of sweep `sweep_id`, submitted at `since_unix_ms`, in
    /// `mode`: pending, running, completed, cached, failed, interrupted or cancelled.
    fn item_states(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        mode: &str,
        sweep_id: String,
        since_unix_ms: u64,
    ) -> PyResult<Vec<String>> {
        let (keys, mode, sweep) = sweep_items(&keys, mode, sweep_id, since_unix_ms)?;
        let states = py
            .detach(|| self.inner.item_states(&keys, mode, &sweep))
            .map_err(to_py)?;
        Ok(states
            .into_iter()
            .map(|s| {
                serde_json::to_value(s)
                    .expect("state serializes")
                    .as_str()
                    .expect("a string")
                    .to_string()
            })
            .collect())
    }

    /// Cancels the items `keys` of sweep `sweep_id` (submitted at `since_unix_ms`, in `mode`)
    /// that have not started (see the engine's `Store::cancel_item`); for each, whether it was.
    fn cancel_items(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        mode: &str,
        sweep_id: String,
        since_unix_ms: u64,
    ) -> PyResult<Vec<bool>> {
        let (keys, mode, sweep) = sweep_items(&keys, mode, sweep_id, since_unix_ms)?;
        for_each_key(py, &keys, |k| self.inner.cancel_item(&sweep, mode, k))
    }

    /// The keys of the cancelled items of sweep `sweep_id`.
    fn cancelled_keys(&self, py: Python<'_>, sweep_id: String) -> PyResult<Vec<String>> {
        let sweep = sweep_ref(sweep_id, 0);
        let keys = py
            .detach(|| self.inner.cancelled_items(&sweep))
            .map_err(to_py)?;
        Ok(keys.iter().map(|k| k.to_hex()).collect())
    }

    /// Writes (creates or replaces) a sweep record given as JSON text.
    fn save_sweep(&self, py: Python<'_>, record: &str) -> PyResult<()> {
        let record: SweepRecord = serde_json::from_str(record)
            .map_err(|e| PyRuntimeError::new_err(format!("bad sweep record: {e}")))?;
        py.detach(|| self.inner.save_sweep(&record)).map_err(to_py)
    }

    /// Stores a sweep's item keys; returns the digest of the key list.
    fn save_sweep_keys(&self, py: Python<'_>, keys: Vec<String>) -> PyResult<String> {
        let keys = parse_keys(&keys)?;
        let digest = py
            .detach(|| self.inner.save_sweep_keys(&keys))
            .map_err(to_py)?;
        Ok(digest.to_hex())
    }

    /// The record of sweep `id` as JSON text.
    fn sweep(&self, py: Python<'_>, id: &str) -> PyResult<String> {
        let r = py.detach(|| self.inner.sweep(id)).map_err(to_py)?;
        Ok(serde_json::to_string(&r).expect("record serializes"))
    }

    /// Every sweep record (JSON text), oldest first.
    fn sweeps(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let all = py.detach(|| self.inner.sweeps()).map_err(to_py)?;
        Ok(all
            .iter()
            .map(|r| serde_json::to_string(r).expect("record serializes"))
            .collect())
    }

    /// Deletes a sweep record (its entries stay); returns whether it existed.
    fn delete_sweep(&self, py: Python<'_>, id: &str) -> PyResult<bool> {
        py.detach(|| self.inner.delete_sweep(id)).map_err(to_py)
    }

    /// The item keys of sweep `id`, in order.
    fn sweep_keys(&self, py: Python<'_>, id: &str) -> PyResult<Vec<String>> {
        let keys = py
            .detach(|| {
                let r = self.inner.sweep(id)?;
                self.inner.sweep_keys(&r)
            })
            .map_err(to_py)?;
        Ok(keys.iter().map(Key::to_hex).collect())
    }

    /// Item counts of sweep `id` by state (JSON text); `all_items` lists every item's state.
    #[pyo3(signature = (id, all_items=false))]
    fn sweep_status(&self, py: Python<'_>, id: &str, all_items: bool) -> PyResult<String> {
        let status = py
            .detach(|| {
                let r = self.inner.sweep(id)?;
                self.inner.sweep_status(&r, all_items)
            })
            .map_err(to_py)?;
        Ok(serde_json::to_string(&status).expect("status serializes"))
    }

    /// The manifest of `key` as JSON text, or None.
    fn manifest(&self, py: Python<'_>, key: &str) -> PyResult<Option<String>> {
        let key = parse_key(key)?;
        let m = py.detach(|| self.inner.manifest(&key)).map_err(to_py)?;
        Ok(m.map(|m| String::from_utf8(m.to_bytes()).expect("JSON is UTF-8")))
    }

    /// Loads the completed entry `key` (verified; large buffers mapped unless `mmap=False`).
    #[pyo3(signature = (key, mmap=true))]
    fn load(&self, py: Python<'_>, key: &str, mmap: bool) -> PyResult<Py<PyAny>> {
        let key = parse_key(key)?;
        let codec = PickleCodec { mmap };
        let outcome = py
            .detach(|| -> runcache::Result<Outcome> {
                let m = self
                    .inner
                    .manifest(&key)?
                    .ok_or_else(|| runcache::Error::NotFound {
                        namespace: "-".into(),
                        key: key.to_hex(),
                        hint: String::new(),
                    })?;
                if m.status != Status::Completed {
                    return Err(runcache::Error::NotFound {
                        namespace: m.namespace.clone(),
                        key: key.to_hex(),
                        hint: format!(" (the stored entry is {})", m.status.as_str()),
                    });
                }
                runcache::ValueCodec::decode(&codec, &self.inner, &m)
            })
            .map_err(to_py)?;
        Ok(outcome.value)
    }

    /// Deletes an entry; returns whether it existed.
    fn delete(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        let key = parse_key(key)?;
        py.detach(|| self.inner.delete(&key)).map_err(to_py)
    }

    /// Manifests (JSON text) of every entry, or of one namespace.
    #[pyo3(signature = (namespace=None))]
    fn entries(&self, py: Python<'_>, namespace: Option<&str>) -> PyResult<Vec<String>> {
        let all = py.detach(|| self.inner.entries()).map_err(to_py)?;
        Ok(all
            .into_iter()
            .filter_map(|e| e.manifest)
            .filter(|m| namespace.is_none_or(|ns| m.namespace == ns))
            .map(|m| String::from_utf8(m.to_bytes()).expect("JSON is UTF-8"))
            .collect())
    }

    /// A verified local file holding artifact `name` of entry `key`.
    fn artifact_file(&self, py: Python<'_>, key: &str, name: &str) -> PyResult<PathBuf> {
        let key = parse_key(key)?;
        py.detach(|| self.inner.artifact_file(&key, name))
            .map_err(to_py)
    }

    /// Evicts least-recently-used entries; returns a JSON report.
    #[pyo3(signature = (max_size=None, older_than=None, dry_run=false, min_idle=60.0))]
    fn gc(
        &self,
        py: Python<'_>,
        max_size: Option<u64>,
        older_than: Option<f64>,
        dry_run: bool,
        min_idle: f64,
    ) -> PyResult<String> {
        let options = GcOptions {
            max_size,
            older_than: older_than.map(Duration::from_secs_f64),
            dry_run,
            min_idle: Duration::from_secs_f64(min_idle),
            ..Default::default()
        };
        let report = py
            .detach(|| self.inner.gc(&options, &|_, _, _| {}))
            .map_err(to_py)?;
        Ok(serde_json::to_string(&report).expect("report serializes"))
    }
}

/// Calls the Python key-document builder (`doc()`, or `doc(item)` for an item of a batch call)
/// and parses its JSON text.
pub(crate) fn json_doc(
    doc: &Py<PyAny>,
    item: Option<usize>,
) -> runcache::Result<serde_json::Value> {
    Python::attach(|py| -> PyResult<serde_json::Value> {
        let text = match item {
            None => doc.call0(py)?,
            Some(i) => doc.call1(py, (i,))?,
        };
        let text: String = text.extract(py)?;
        serde_json::from_str(&text)
            .map_err(|e| PyRuntimeError::new_err(format!("key document is not JSON: {e}")))
    })
    .map_err(|e| runcache::Error::Invalid(format!("cannot build the key document: {e}")))
}

/// Runs the Python computation and turns its return into an engine outcome.
fn run_compute(
    py: Python<'_>,
    compute: &Py<PyAny>,
    ctx: &mut runcache::Context,
) -> PyResult<Outcome> {
    let out = compute.call0(py)?;
    let out = out.bind(py);
    let value = out.get_item(0)?;
    let artifacts = out.get_item(1)?;
    let metadata = out.get_item(2)?;
    for item in artifacts.cast::<PyList>()?.iter() {
        let (name, path): (String, PathBuf) = item.extract()?;
        if path.exists() {
            ctx.add_artifact_file(&name, path).map_err(to_py)?;
        }
    }
    set_metadata(ctx, &metadata)?;
    let parts = Pickled::of(py, &value)?;
    Ok(Outcome {
        value: value.unbind(),
        parts: Some(parts),
    })
}

/// Records the metadata a computation returned (JSON object text, or None) on its context.
pub(crate) fn set_metadata(
    ctx: &mut runcache::Context,
    metadata: &Bound<'_, PyAny>,
) -> PyResult<()> {
    if metadata.is_none() {
        return Ok(());
    }
    let text: String = metadata.extract()?;
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| PyRuntimeError::new_err(format!("metadata is not a JSON object: {e}")))?;
    for (k, v) in map {
        ctx.set_metadata(&k, v).map_err(to_py)?;
    }
    Ok(())
}

/// Records a Python exception as a failure (or an interruption).
pub(crate) fn describe(py: Python<'_>, err: &PyErr, interrupts: Option<&Py<PyTuple>>) -> Failure {
    let ty = err.get_type(py);
    let module: String = ty
        .getattr("__module__")
        .and_then(|m| m.extract())
        .unwrap_or_else(|_| "builtins".into());
    let qualname: String = ty
        .getattr("__qualname__")
        .and_then(|m| m.extract())
        .unwrap_or_else(|_| "Exception".into());
    let interrupted = err.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py)
        || interrupts.is_some_and(|t| {
            err.value(py)
                .is_instance(t.bind(py).as_any())
                .unwrap_or(false)
        });
    let traceback = err
        .traceback(py)
        .and_then(|tb| tb.format().ok())
        .unwrap_or_default();
    Failure {
        error_type: format!("{module}.{qualname}"),
        message: err.value(py).to_string(),
        traceback,
        interrupted,
    }
}
