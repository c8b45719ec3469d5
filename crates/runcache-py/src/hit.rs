//! `runcache._core.HitPath`: a task's hit path as one native call. `Task.__call__` asks it
//! first; it returns the stored result when the store settles the call without computing, and
//! the task's `miss` marker otherwise (a miss, a failure, mode `force` or `off`, code replaced
//! in place, a first use of a result from other code), after which the Python call path does
//! everything as before. So the hit path only has to be fast, never complete.
//!
//! What it saves over the Python path: arguments are bound with a plan made once per task (no
//! dict), the options are resolved once per configuration (not per call) and the engine task is
//! built once per store, version and mode.

use std::cell::Cell;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use runcache::Mode;

use crate::codec::PickleCodec;
use crate::errors::to_py;
use crate::hash::{encode_args_py, encode_named_args_py};
use crate::store::{task_validator, Store};

/// Bumped by `runcache.configure()`: every hit path resolves its options again.
static CONFIG_GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set by a hit path's validator when the entry was computed by other source code.
    static CODE_CHANGED: Cell<bool> = const { Cell::new(false) };
}

/// Tells the hit paths that the process-wide options changed (called by `configure()`).
#[pyfunction]
pub fn config_changed() {
    CONFIG_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// How the call arguments of a task with a plain signature (positional-or-keyword parameters
/// only, none ignored, none a file) become its named parameters.
struct ArgPlan {
    names: Vec<Py<PyString>>,
    /// Each parameter's default, if it has one.
    defaults: Vec<Option<Py<PyAny>>>,
}

/// The options of one configuration, resolved.
struct Resolved {
    generation: u64,
    /// None: the mode is never served here (`force`, `off`).
    mode: Option<Mode>,
    mmap: bool,
    store: Py<Store>,
    /// `RUNCACHE_STORE` as it was, when the location comes from it.
    env: Option<Option<OsString>>,
    /// The working directory as it was, when the location is relative.
    cwd: Option<PathBuf>,
    task: Mutex<Option<Arc<CachedTask>>>,
}

impl Resolved {
    /// Whether this resolution still holds: same `configure()` generation, and the same
    /// `RUNCACHE_STORE` and working directory where the location depends on them.
    fn is_current(&self, generation: u64) -> bool {
        self.generation == generation
            && self
                .env
                .as_ref()
                .is_none_or(|e| *e == std::env::var_os("RUNCACHE_STORE"))
            && self
                .cwd
                .as_ref()
                .is_none_or(|c| std::env::current_dir().ok().as_ref() == Some(c))
    }
}

/// The engine task for one store, key version and source hash, and the key prefix of that
/// namespace and version.
struct CachedTask {
    key_version: Py<PyAny>,
    source_hash: Py<PyAny>,
    task: runcache::Task,
    prefix: Vec<u8>,
}

/// A task's native hit path; see the module documentation.
#[pyclass(frozen, module = "runcache._core")]
pub struct HitPath {
    namespace: String,
    plan: Option<ArgPlan>,
    /// `_Signature.bind`: binds arguments the plan does not cover (and raises the usual
    /// TypeError for a wrong call).
    bind: Py<PyAny>,
    /// The task's shared state (`code_owner`, `code`, `key_version`, `source_hash`,
    /// `warned_code`), read on every call so a refreshed task is seen at once.
    shared: Py<PyDict>,
    options: Py<PyDict>,
    sticky_failures: bool,
    /// The `contextvars.ContextVar` of `runcache.config(...)` overrides.
    overrides: Py<PyAny>,
    /// `runcache._config.current` and `runcache._config.hit_settings`.
    current: Py<PyAny>,
    settings: Py<PyAny>,
    miss: Py<PyAny>,
    resolved: Mutex<Option<Arc<Resolved>>>,
}

#[pymethods]
impl HitPath {
    /// `plan` is `(names, defaults)` for a plain signature (defaults: a dict of the parameters
    /// that have one), or None to bind every call with `bind(args, kwargs)`.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        namespace: String,
        plan: Option<(Vec<Py<PyString>>, Bound<'_, PyDict>)>,
        bind: Py<PyAny>,
        shared: Py<PyDict>,
        options: Py<PyDict>,
        sticky_failures: bool,
        config: Bound<'_, PyAny>,
        miss: Py<PyAny>,
    ) -> PyResult<Self> {
        let plan = match plan {
            None => None,
            Some((names, defaults)) => {
                let defaults = names
                    .iter()
                    .map(|n| Ok(defaults.get_item(n.bind(py))?.map(Bound::unbind)))
                    .collect::<PyResult<_>>()?;
                Some(ArgPlan { names, defaults })
            }
        };
        Ok(HitPath {
            namespace,
            plan,
            bind,
            shared,
            options,
            sticky_failures,
            overrides: config.getattr("_overrides")?.unbind(),
            current: config.getattr("current")?.unbind(),
            settings: config.getattr("hit_settings")?.unbind(),
            miss,
            resolved: Mutex::new(None),
        })
    }

    /// The stored result of calling the task with `args` and `kwargs`, or the miss marker.
    fn __call__(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let shared = self.shared.bind(py);
        if !self.code_unchanged(shared)? {
            return Ok(self.miss.clone_ref(py));
        }
        let key_version = item(shared, intern!(py, "key_version"))?;
        let source_hash = item(shared, intern!(py, "source_hash"))?;
        let Some((cached, mmap)) = self.engine_task(py, &key_version, &source_hash)? else {
            return Ok(self.miss.clone_ref(py));
        };
        let Some(prefixed) = self.encode(py, &cached.prefix, args, kwargs)? else {
            return Ok(self.miss.clone_ref(py));
        };
        let key = runcache::key::key_of_prefixed(&prefixed);
        let codec = PickleCodec { mmap };
        CODE_CHANGED.set(false);
        // The manifest is read without the interpreter lock (a stat, or a request to a remote
        // store); it is judged and decoded with it (an inline value needs no I/O; the codec
        // releases the lock around any blob it reads; artifacts are checked without it): two
        // lock handoffs per hit, not four.
        let read = py.detach(|| cached.task.read_for_hit(key)).map_err(to_py)?;
        let hit = if read.checks_blobs() {
            py.detach(|| cached.task.try_hit_read(read, &codec))
        } else {
            cached.task.try_hit_read(read, &codec)
        }
        .map_err(to_py)?;
        match hit {
            // The first use of a result computed by other code goes the Python way, which
            // warns once.
            Some(_)
                if CODE_CHANGED.get()
                    && !item(shared, intern!(py, "warned_code"))?.is_truthy()? =>
            {
                Ok(self.miss.clone_ref(py))
            }
            Some(outcome) => Ok(outcome.value),
            None => Ok(self.miss.clone_ref(py)),
        }
    }
}

fn item<'py>(d: &Bound<'py, PyDict>, name: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyAny>> {
    d.get_item(name)?
        .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(format!("task state lacks {name}")))
}

impl HitPath {
    /// False when the function's `__code__` was replaced since the task last looked (the
    /// Python path refreshes the source hash and key version).
    fn code_unchanged(&self, shared: &Bound<'_, PyDict>) -> PyResult<bool> {
        let py = shared.py();
        let owner = item(shared, intern!(py, "code_owner"))?;
        if owner.is_none() {
            return Ok(true);
        }
        let code = owner.getattr(intern!(py, "__code__"))?;
        Ok(code.is(&item(shared, intern!(py, "code"))?))
    }

    /// `prefix` followed by the canonical bytes of the bound arguments; None when the plan
    /// cannot bind this call (the Python path binds it, or raises the TypeError).
    fn encode(
        &self,
        py: Python<'_>,
        prefix: &[u8],
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Option<Vec<u8>>> {
        let mut out = Vec::with_capacity(prefix.len() + 96);
        out.extend_from_slice(prefix);
        let Some(plan) = &self.plan else {
            let bound = self.bind.bind(py).call1((args, kwargs))?;
            out.extend_from_slice(&encode_args_py(py, bound.cast::<PyDict>()?)?);
            return Ok(Some(out));
        };
        let n = plan.names.len();
        if args.len() > n {
            return Ok(None);
        }
        let mut values: Vec<Option<Bound<'_, PyAny>>> = args.iter().map(Some).collect();
        values.resize(n, None);
        if let Some(kw) = kwargs {
            for (k, v) in kw.iter() {
                let Some(i) = plan
                    .names
                    .iter()
                    .position(|name| name.bind(py).as_any().eq(&k).unwrap_or(false))
                else {
                    return Ok(None);
                };
                if values[i].is_some() {
                    return Ok(None);
                }
                values[i] = Some(v);
            }
        }
        let mut filled = Vec::with_capacity(n);
        for (v, default) in values.into_iter().zip(&plan.defaults) {
            match v.or_else(|| default.as_ref().map(|d| d.bind(py).clone())) {
                Some(v) => filled.push(v),
                None => return Ok(None),
            }
        }
        let names: Vec<Bound<'_, PyString>> =
            plan.names.iter().map(|n| n.bind(py).clone()).collect();
        encode_named_args_py(py, out, &names, &filled).map(Some)
    }

    /// The engine task for this call and whether to map large buffers, or None when the call
    /// is not served here (its mode). Options are resolved again when the process-wide ones,
    /// `RUNCACHE_STORE` or the working directory (where they matter) changed; with
    /// `runcache.config(...)` overrides active, on every call.
    fn engine_task(
        &self,
        py: Python<'_>,
        key_version: &Bound<'_, PyAny>,
        source_hash: &Bound<'_, PyAny>,
    ) -> PyResult<Option<(Arc<CachedTask>, bool)>> {
        // No lock is held while Python code runs (resolving does): the interpreter may switch
        // to another thread calling this same hit path, which would then wait on the lock
        // while holding the GIL.
        let resolved = if self.overrides_active(py)? {
            Arc::new(self.resolve(py, u64::MAX)?)
        } else {
            let generation = CONFIG_GENERATION.load(Ordering::Relaxed);
            let last = self.resolved.lock().unwrap().clone();
            match last.filter(|r| r.is_current(generation)) {
                Some(r) => r,
                None => {
                    let r = Arc::new(self.resolve(py, generation)?);
                    let replaced = self.resolved.lock().unwrap().replace(r.clone());
                    drop(replaced);
                    r
                }
            }
        };
        let Some(mode) = resolved.mode else {
            return Ok(None);
        };
        let last = resolved.task.lock().unwrap().clone();
        let fresh = last.filter(|t| {
            t.key_version.bind(py).is(key_version) && t.source_hash.bind(py).is(source_hash)
        });
        let cached = match fresh {
            Some(t) => t,
            None => {
                let t = Arc::new(self.cached_task(&resolved, mode, key_version, source_hash)?);
                let replaced = resolved.task.lock().unwrap().replace(t.clone());
                drop(replaced);
                t
            }
        };
        Ok(Some((cached, resolved.mmap)))
    }

    /// The engine task of this namespace at `key_version` on the resolved store, with the
    /// validator of Python tasks (dependency versions; a source hash differing from the one
    /// the entry was computed with is noted in `CODE_CHANGED`).
    fn cached_task(
        &self,
        resolved: &Resolved,
        mode: Mode,
        key_version: &Bound<'_, PyAny>,
        source_hash: &Bound<'_, PyAny>,
    ) -> PyResult<CachedTask> {
        let source: Option<String> = source_hash.extract()?;
        let version: String = key_version.extract()?;
        let prefix = runcache::key::key_prefix(&self.namespace, &version);
        let task = resolved
            .store
            .get()
            .engine()
            .task(self.namespace.clone())
            .version(version)
            .mode(mode)
            .validator(task_validator(source, || CODE_CHANGED.set(true)));
        Ok(CachedTask {
            key_version: key_version.clone().unbind(),
            source_hash: source_hash.clone().unbind(),
            task,
            prefix,
        })
    }

    /// Whether `runcache.config(...)` overrides apply in the current context.
    fn overrides_active(&self, py: Python<'_>) -> PyResult<bool> {
        let mut value: *mut pyo3::ffi::PyObject = std::ptr::null_mut();
        // SAFETY: `overrides` is a ContextVar (with a default, so `value` is set on success);
        // the GIL is held; the new reference returned in `value` is owned by `Bound`.
        let value = unsafe {
            if pyo3::ffi::PyContextVar_Get(
                self.overrides.as_ptr(),
                std::ptr::null_mut(),
                &mut value,
            ) < 0
            {
                return Err(PyErr::fetch(py));
            }
            Bound::from_owned_ptr(py, value)
        };
        value.is_truthy()
    }

    /// Resolves the effective options of a call through `runcache._config`.
    fn resolve(&self, py: Python<'_>, generation: u64) -> PyResult<Resolved> {
        let effective = self.current.bind(py).call1((self.options.bind(py),))?;
        let (store, mode, mmap, from_env, from_cwd): (Py<Store>, String, bool, bool, bool) =
            self.settings.bind(py).call1((effective,))?.extract()?;
        let mode = match mode.parse::<Mode>().map_err(to_py)? {
            Mode::Cached if !self.sticky_failures => Some(Mode::Retry),
            Mode::Force | Mode::Off => None,
            m => Some(m),
        };
        Ok(Resolved {
            generation,
            mode,
            mmap,
            store,
            env: from_env.then(|| std::env::var_os("RUNCACHE_STORE")),
            cwd: if from_cwd {
                Some(std::env::current_dir()?)
            } else {
                None
            },
            task: Mutex::new(None),
        })
    }
}
