"""``runcache.Memory``: a drop-in for ``joblib.Memory`` backed by a runcache store.

>>> import runcache as rc
>>> memory = rc.Memory("./cache", verbose=0)
>>> @memory.cache(ignore=["verbose"])
... def fit(X, alpha, verbose=False): ...
>>> fit(X, 0.1)                           # computes once, then loads
>>> Pipeline(steps, memory=memory)        # scikit-learn reuses fitted transformers

The store lives in ``location/runcache`` (as joblib's lives in ``location/joblib``), so any
directory works; a ``location`` that already is a runcache store, or a store URL, is used as
is. Failures are never cached, as in joblib. What differs on purpose (docs/joblib.md):

- The key is runcache's canonical content key. Arguments runcache cannot hash by value get a
  key from what defines them, never from a pickle: scikit-learn estimators (anything with
  ``get_params``) by class + parameters + fitted attributes (names ending in ``_``), numpy
  random generators by their state, functions and classes by qualified name. Anything else
  unhashable is a ``TypeError`` naming the argument (give the class ``__runcache_key__``).
- A change of the function's source changes the key (runcache's ``track_code``): the old
  entries are not wiped, ``reduce_size`` evicts them when space is needed.
- Exactly one process computes a missing entry; the others wait and load it.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import re
import sys
import time
import types
import warnings
from typing import Any, Callable, Iterable

from runcache import _config, _core
from runcache._entry import Entry, Explanation
from runcache._task import Task, _source_hash

__all__ = [
    "CollisionWarning",
    "Memory",
    "MemorizedFunc",
    "MemorizedResult",
    "NotMemorizedFunc",
    "NotMemorizedResult",
    "STORE_DIR",
]

#: The subdirectory of ``location`` that holds the store (joblib's is ``joblib``).
STORE_DIR = "runcache"

# joblib's logger: its users' logging configuration applies to rc.Memory's messages too.
_log = logging.getLogger("joblib")


class CollisionWarning(UserWarning):
    """Two different functions are cached under the same name (lambdas, a function redefined
    in a notebook): their results are kept apart only if their source differs and is readable."""


# Per cached name: the code object and source hash of the last function cached under it here.
_seen_names: dict[str, tuple[Any, str | None]] = {}


# Argument types runcache hashes natively with nothing to adapt (the hit path's fast check).
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})

_CALLABLE_TYPES = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.BuiltinMethodType,
    type,
)


def _mmap_of(mmap_mode: str | None) -> bool:
    """joblib's ``mmap_mode`` as runcache's ``mmap`` flag."""
    if mmap_mode is None or mmap_mode == "c":
        # None: arrays are read into memory. 'c' (copy-on-write): writable arrays whose changes
        # are not persisted -- a private copy gives exactly that.
        return False
    if mmap_mode == "r":
        return True
    raise ValueError(
        f"mmap_mode={mmap_mode!r} is not supported: stored results are immutable. "
        "Use 'r' (read-only memory map), 'c' or None (writable in-memory copies)."
    )


def _store_of(location: str) -> str:
    """Where ``Memory(location)`` keeps its store: ``location/runcache``, unless ``location`` is
    a store URL or already a runcache store (stores made before the subdirectory existed)."""
    if "://" in location:
        return location
    location = os.path.expanduser(location)
    if os.path.isfile(os.path.join(location, "RUNCACHE-STORE.json")):
        return location
    return os.path.join(location, STORE_DIR)


def _check_collision(name: str, func: Callable) -> None:
    """Warns (`CollisionWarning`) when a different function was cached under ``name`` in this
    process. The same function, or one defined again with equal code (a notebook cell run
    twice), is no collision."""
    code = getattr(func, "__code__", None)
    source = _source_hash(func)
    previous = _seen_names.get(name)
    _seen_names[name] = (code, source)
    if previous is None or code is None or previous[0] is code or previous[0] == code:
        return
    if source is None or source == previous[1]:
        detail = "runcache cannot tell their sources apart, so their results are mixed up"
    else:
        detail = "their source differs, so their results are kept apart"
    warnings.warn(
        CollisionWarning(
            f"two different functions are cached under the name {name}: {detail}. Give "
            "each its own name (a def instead of a lambda) to avoid the confusion."
        ),
        stacklevel=4,
    )


def _owner(a: Any) -> Any:
    """The object that owns an array's memory (a runcache ``Blob`` for a loaded result)."""
    while True:
        base = a.obj if isinstance(a, memoryview) else getattr(a, "base", None)
        if base is None:
            return a
        a = base


def _memmaps(value: Any) -> Any:
    """``value`` with each numpy array backed by a mapped store blob viewed as a read-only
    ``np.memmap`` (joblib's type for ``mmap_mode='r'``), looking into tuples, lists and dicts."""
    np = sys.modules.get("numpy")
    if np is None:
        return value

    def convert(v: Any) -> Any:
        t = type(v)
        if t is np.ndarray:
            owner = _owner(v)
            if not (isinstance(owner, _core.Blob) and owner.mapped):
                return v
            m = v.view(np.memmap)
            # What np.memmap records of its file: the mapping (keeps slices memmaps), mode.
            m._mmap, m.filename, m.offset, m.mode = owner, None, 0, "r"
            return m
        if t is tuple or t is list:
            items = [convert(x) for x in v]
            return v if all(a is b for a, b in zip(items, v)) else t(items)
        if t is dict:
            out = {k: convert(x) for k, x in v.items()}
            return v if all(out[k] is x for k, x in v.items()) else out
        return v

    return convert(value)


# ------------------------------------------------------------------------------------------
# Keys for arguments runcache does not hash by value


def _is_estimator(v: Any) -> bool:
    return not isinstance(v, type) and callable(getattr(v, "get_params", None))


def _is_numpy_random(v: Any) -> bool:
    return type(v).__module__.startswith("numpy.random") and (
        hasattr(v, "get_state") or hasattr(v, "bit_generator")
    )


def _needs_key(v: Any) -> bool:
    """Whether ``v`` contains something that must be keyed by `_key_of` (cheap; no hashing)."""
    t = type(v)
    if t in _PLAIN:
        return False
    if t is tuple or t is list:
        return any(_needs_key(x) for x in v)
    if isinstance(v, dict):
        return any(_needs_key(x) for x in v.values())
    if hasattr(t, "__runcache_key__"):
        return False
    if _is_named_callable(v) or isinstance(v, functools.partial):
        return True
    mod = t.__module__
    if mod.startswith(("numpy", "pandas")):
        return mod.startswith("numpy.random")
    return _is_estimator(v)


def _is_named_callable(v: Any) -> bool:
    """Functions, methods, classes, builtins, numpy ufuncs: callables that carry a name (plain
    instances with ``__call__`` do not)."""
    return isinstance(v, _CALLABLE_TYPES) or (callable(v) and hasattr(v, "__name__"))


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "builtins"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return f"{module}.{name}"


def _key_of(v: Any) -> Any:
    """A hashable stand-in for ``v``: ``v`` itself when runcache can hash it, else a structure
    describing what defines it (never a pickle)."""
    t = type(v)
    if t in _PLAIN:
        return v
    if t is tuple or t is list:
        items = [_key_of(x) for x in v]
        return v if all(a is b for a, b in zip(items, v)) else t(items)
    if isinstance(v, dict):
        out = {k: _key_of(x) for k, x in v.items()}
        return v if all(out[k] is x for k, x in v.items()) else out
    if hasattr(t, "__runcache_key__"):
        return v
    if isinstance(v, functools.partial):
        return ("$partial", _key_of(v.func), _key_of(list(v.args)), _key_of(dict(v.keywords)))
    if isinstance(v, types.MethodType):
        return ("$method", _key_of(v.__self__), v.__func__.__qualname__)
    if _is_named_callable(v):
        return ("$callable", _qualname(v))
    if _is_numpy_random(v):
        if hasattr(v, "get_state"):  # RandomState
            return ("$numpy.random.RandomState", v.get_state(legacy=False))
        return ("$numpy.random.Generator", v.bit_generator.state)
    if _is_estimator(v):
        return _estimator_key(v)
    return v


def _estimator_key(est: Any) -> Any:
    """An estimator is defined by its class, its parameters and, once fitted, by its fitted
    attributes (scikit-learn's convention: public names ending in ``_``). Nested estimators
    (in parameters or fitted state) are keyed the same way, recursively."""
    params = est.get_params(deep=False)
    fitted = {
        k: v
        for k, v in vars(est).items()
        if k.endswith("_") and not k.startswith("__")
    } if hasattr(est, "__dict__") else {}
    return (
        "$estimator",
        _qualname(type(est)),
        {k: _key_of(p) for k, p in params.items()},
        {k: _key_of(a) for k, a in fitted.items()},
    )


class _Keyed:
    """An argument passed to the task for its key only: the task receives ``obj``."""

    __slots__ = ("obj", "_key")

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self._key: Any = _Keyed  # sentinel: not computed yet

    def __runcache_key__(self) -> Any:
        # Computed lazily (ignored arguments never are) and once (key + key document).
        if self._key is _Keyed:
            self._key = _key_of(self.obj)
        return self._key


def _adapt(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Wraps the arguments that need a derived key; returns the inputs unchanged if none do."""
    for a in args:
        if type(a) not in _PLAIN:
            break
    else:
        if not kwargs:
            return args, kwargs
        for v in kwargs.values():
            if type(v) not in _PLAIN:
                break
        else:
            return args, kwargs
    if any(_needs_key(a) for a in args):
        args = tuple(_Keyed(a) if _needs_key(a) else a for a in args)
    if any(_needs_key(v) for v in kwargs.values()):
        kwargs = {k: _Keyed(v) if _needs_key(v) else v for k, v in kwargs.items()}
    return args, kwargs


def _unwrap(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    args = tuple(a.obj if type(a) is _Keyed else a for a in args)
    kwargs = {k: v.obj if type(v) is _Keyed else v for k, v in kwargs.items()}
    return args, kwargs


def _describe(args: tuple, kwargs: dict, limit: int = 40) -> str:
    """A short readable rendering of a call's arguments (for ``verbose``)."""

    def one(v: Any) -> str:
        if type(v) in _PLAIN:
            text = repr(v)
        elif hasattr(v, "shape") and hasattr(v, "dtype"):
            text = f"<{type(v).__name__} {tuple(v.shape)} {v.dtype}>"
        else:
            text = repr(v) if _is_estimator(v) else f"<{type(v).__name__}>"
        return text if len(text) <= limit else text[: limit - 3] + "..."

    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]
    return ", ".join(parts)


def _metadata(info: dict[str, Any]) -> dict[str, Any]:
    """joblib-style metadata of a stored entry: ``duration`` (s), ``time`` (epoch seconds when
    it was stored), ``input_args`` (the key document's arguments), plus runcache's ``key``,
    ``host`` and ``metadata``."""
    return {
        "duration": info.get("duration_s"),
        "time": info.get("created_unix_ms", 0) / 1000.0,
        "input_args": info.get("key_doc", {}).get("args", {}),
        "key": info.get("key"),
        "host": info.get("host"),
        "metadata": info.get("metadata", {}),
    }


def _parse_bytes(limit: int | str | None) -> int | None:
    if limit is None or isinstance(limit, int):
        return limit
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(limit), re.IGNORECASE)
    if not m:
        raise ValueError(f"bytes_limit {limit!r}: use an int or a string like '500M', '2G'")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


# ------------------------------------------------------------------------------------------
# Results


class MemorizedResult:
    """A lazy, picklable reference to a stored result (what ``call_and_shelve`` returns).

    ``get()`` loads it, ``clear()`` deletes it. Passed as an argument to another runcache task
    or cached function, it enters that key by its entry key: no re-hash, no load.
    """

    __slots__ = ("location", "namespace", "key", "mmap")

    def __init__(self, location: str, namespace: str, key: str, mmap: bool) -> None:
        self.location = location
        self.namespace = namespace
        self.key = key
        self.mmap = mmap

    def __repr__(self) -> str:
        return f"MemorizedResult(location={self.location}, func={self.namespace}, key={self.key[:12]})"

    def __getstate__(self) -> dict[str, Any]:
        return {s: getattr(self, s) for s in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for s in self.__slots__:
            setattr(self, s, state[s])

    def __runcache_key__(self) -> Any:
        return ("runcache.entry", self.key)

    @property
    def entry(self) -> Entry:
        """The runcache entry handle."""
        return Entry(_config.open_store({"store": self.location}), self.key, self.namespace)

    def get(self) -> Any:
        """Loads the stored result (raises if it was cleared)."""
        value = self.entry.load(mmap=self.mmap)
        return _memmaps(value) if self.mmap else value

    def clear(self) -> None:
        """Deletes the stored result."""
        self.entry.delete()


class NotMemorizedResult:
    """A value held in memory: what ``call_and_shelve`` returns when caching is off."""

    __slots__ = ("value", "valid")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.valid = True

    def get(self) -> Any:
        """The value (KeyError after ``clear()``)."""
        if not self.valid:
            raise KeyError("No value stored.")
        return self.value

    def clear(self) -> None:
        """Forgets the value."""
        self.valid = False
        self.value = None

    def __getstate__(self) -> dict[str, Any]:
        return {"valid": self.valid, "value": self.value}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.valid = state["valid"]
        self.value = state["value"]


# ------------------------------------------------------------------------------------------
# Cached functions


class NotMemorizedFunc:
    """What ``Memory(None).cache(f)`` returns: calls ``f`` every time, stores nothing."""

    def __init__(self, func: Callable) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"NotMemorizedFunc(func={self.func})"

    def call(self, *args: Any, **kwargs: Any) -> tuple[Any, dict]:
        """Calls the function; returns ``(output, {})``."""
        return self.func(*args, **kwargs), {}

    def call_and_shelve(self, *args: Any, **kwargs: Any) -> NotMemorizedResult:
        """Calls the function; returns its value in a `NotMemorizedResult`."""
        return NotMemorizedResult(self.func(*args, **kwargs))

    def check_call_in_cache(self, *args: Any, **kwargs: Any) -> bool:
        """Always False: nothing is cached."""
        return False

    def clear(self, warn: bool = True) -> None:
        """Nothing to clear."""


class MemorizedFunc:
    """A function whose results are stored in a runcache store (what ``Memory.cache`` returns).

    Calling it computes once and then loads. joblib's methods: ``call`` (force recomputation;
    returns ``(output, metadata)`` like joblib >= 1.3), ``call_and_shelve`` (a lazy
    `MemorizedResult`), ``check_call_in_cache``, ``clear``. runcache's: ``entry``, ``key``,
    ``explain``, and ``task`` (the underlying :class:`runcache.Task`).
    """

    def __init__(
        self,
        func: Callable,
        location: str,
        *,
        ignore: Iterable[str] | None = None,
        mmap_mode: str | None = None,
        verbose: int = 0,
        cache_validation_callback: Callable[[dict], bool] | None = None,
    ) -> None:
        if cache_validation_callback is not None and not callable(cache_validation_callback):
            raise ValueError(
                f"cache_validation_callback needs to be callable. Got {cache_validation_callback}."
            )
        self.func = func
        self.location = location
        self.ignore = list(ignore or [])
        self.mmap_mode = mmap_mode
        self.cache_validation_callback = cache_validation_callback
        self._verbose = verbose
        self._mmap = _mmap_of(mmap_mode)
        name = _qualname(func)
        self._computed = 0  # calls of the function by this object (tells a load from a compute)
        self._collision_checked = False

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            args, kwargs = _unwrap(args, kwargs)
            self._computed += 1
            if self._verbose > 10:
                _log.warning("[%s]: Computing func %s in location %s", self, name, location)
            if self._verbose > 0:
                shown = {k: v for k, v in kwargs.items() if k not in self.ignore}
                print(f"[Memory] Calling {name}({_describe(args, shown)})", flush=True)
                t0 = time.perf_counter()
                out = func(*args, **kwargs)
                print(f"[Memory] {name} - {time.perf_counter() - t0:.1f}s", flush=True)
                return out
            return func(*args, **kwargs)

        self.task: Task = Task(
            run,
            name=name,
            ignore=self.ignore,
            track_code=True,
            options={"store": location, "mmap": self._mmap},
        )
        self.task._sticky_failures = False  # joblib never caches an exception
        self._call = self.task.__call__
        try:
            functools.update_wrapper(self, func)
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"MemorizedFunc(func={self.func}, location={self.location})"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "func": self.func,
            "location": self.location,
            "ignore": self.ignore,
            "mmap_mode": self.mmap_mode,
            "verbose": self._verbose,
            "cache_validation_callback": self.cache_validation_callback,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state.pop("func"), state.pop("location"), **state)

    # -- calling -----------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = _adapt(args, kwargs)
        if not self._collision_checked or self._verbose > 4:
            return self._call_noisy(args, kwargs)
        computed = self._computed
        try:
            if self.cache_validation_callback is not None:
                self._validate(args, kwargs)
            out = self._call(*args, **kwargs)
        except TypeError as e:
            self._raise_bad_call(e, args, kwargs)
            raise
        return self._mapped(out, computed != self._computed, args, kwargs) if self._mmap else out

    def _mapped(self, out: Any, computed: bool, args: tuple, kwargs: dict) -> Any:
        """With ``mmap_mode='r'``: the result as joblib returns it, arrays as ``np.memmap``, the
        first call's too (the stored result is loaded back, mapped, as joblib does)."""
        if computed:
            try:
                out = self.task.entry(*args, **kwargs).load(mmap=True)
            except Exception:
                pass  # not stored (a read-only store): the computed value it is
        return _memmaps(out)

    def _call_noisy(self, args: tuple, kwargs: dict) -> Any:
        """A call on the slow path: the first one (collision check) or with ``verbose > 4``
        (joblib's messages: querying at >= 20, the load time of a hit at > 4)."""
        self._check_collision()
        if self._verbose >= 20:
            _log.info(
                "[%s]: Querying %s with arguments (%s), key %s; the store location is %s",
                self, self.task.name, _describe(*_unwrap(args, kwargs)),
                self.key(*args, **kwargs), self.location,
            )
        computed, t0 = self._computed, time.perf_counter()
        try:
            if self.cache_validation_callback is not None:
                self._validate(args, kwargs)
            out = self._call(*args, **kwargs)
        except TypeError as e:
            self._raise_bad_call(e, args, kwargs)
            raise
        if self._verbose > 4 and self._computed == computed:
            print(
                f"[Memory] {self.task.name} cache loaded - {time.perf_counter() - t0:.1f}s",
                flush=True,
            )
        return self._mapped(out, computed != self._computed, args, kwargs) if self._mmap else out

    def _check_collision(self) -> None:
        if not self._collision_checked:
            self._collision_checked = True
            _check_collision(self.task.name, self.func)

    def _raise_bad_call(self, error: TypeError, args: tuple, kwargs: dict) -> None:
        """Raises joblib's error (ValueError) if ``error`` comes from arguments that do not fit
        the signature; returns if it does not (raised by the function, an unhashable argument)."""
        sig = self.task._shared["sig"].sig
        try:
            sig.bind(*args, **kwargs)
        except TypeError as mismatch:
            raise ValueError(
                f"{self.task.name}: the arguments do not match its signature {sig}: {mismatch}"
            ) from None

    def _validate(self, args: tuple, kwargs: dict) -> bool:
        """Applies the validation callback; deletes an entry it rejects. True if a valid
        completed entry is stored."""
        entry = self.task.entry(*args, **kwargs)
        info = entry.info()
        if info is None or info["status"] != "completed":
            return False
        if self.cache_validation_callback is not None and not self.cache_validation_callback(
            _metadata(info)
        ):
            entry.delete()
            return False
        return True

    def call(self, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Forces the computation and stores its result; returns ``(output, metadata)`` (as
        joblib >= 1.3 does). ``metadata`` has ``duration``, ``time``, ``input_args``, ``key``."""
        args, kwargs = _adapt(args, kwargs)
        self._check_collision()
        try:
            out = self.task.options(mode="force")(*args, **kwargs)
        except TypeError as e:
            self._raise_bad_call(e, args, kwargs)
            raise
        info = self.task.entry(*args, **kwargs).info()
        if self._mmap:
            out = self._mapped(out, True, args, kwargs)
        return out, (_metadata(info) if info else {})

    def call_and_shelve(self, *args: Any, **kwargs: Any) -> MemorizedResult:
        """Computes the result if it is not stored; returns a lazy `MemorizedResult`
        (``.get()`` loads it, ``.clear()`` deletes it) without loading it."""
        args, kwargs = _adapt(args, kwargs)
        self._check_collision()
        try:
            if not self._validate(args, kwargs):
                self._call(*args, **kwargs)
        except TypeError as e:
            self._raise_bad_call(e, args, kwargs)
            raise
        return MemorizedResult(
            _config.store_location({"store": self.location}),
            self.task.name,
            self.task.key(*args, **kwargs),
            self._mmap,
        )

    def check_call_in_cache(self, *args: Any, **kwargs: Any) -> bool:
        """Whether a valid result of this call is stored (computes nothing but the key)."""
        args, kwargs = _adapt(args, kwargs)
        try:
            return self._validate(args, kwargs)
        except TypeError as e:
            self._raise_bad_call(e, args, kwargs)
            raise

    def clear(self, warn: bool = True) -> int:
        """Deletes every stored result of this function; returns how many."""
        if warn and self._verbose > 0:
            warnings.warn(f"Clearing the cache of {self.task.name}", stacklevel=2)
        return self.task.clear()

    # -- runcache's inspection ---------------------------------------------------------

    def key(self, *args: Any, **kwargs: Any) -> str:
        """The runcache entry key of this call."""
        a, k = _adapt(args, kwargs)
        return self.task.key(*a, **k)

    def entry(self, *args: Any, **kwargs: Any) -> Entry:
        """The runcache entry handle of this call (status, info, load, delete, artifacts)."""
        a, k = _adapt(args, kwargs)
        return self.task.entry(*a, **k)

    def explain(self, *args: Any, **kwargs: Any) -> Explanation:
        """Why this call is (or is not) a hit: the nearest stored entries and what differs."""
        a, k = _adapt(args, kwargs)
        return self.task.explain(*a, **k)


class Memory:
    """joblib.Memory's interface on a runcache store.

    ``location``: a directory (any directory: the store is its subdirectory ``runcache``, see
    `STORE_DIR`; a directory that already is a runcache store is used as is) or a runcache
    store URL; ``None`` disables caching (every call computes, as with joblib). ``mmap_mode``:
    ``'r'`` maps large arrays of loaded results read-only (zero copy, as ``np.memmap``);
    ``None`` (default, as joblib) or ``'c'`` loads copies. ``verbose``: joblib's levels (> 0
    prints each computation, > 4 each load, > 10 and >= 20 log "Computing"/"Querying" to the
    ``joblib`` logger). ``backend``, ``compress`` and ``backend_options`` are accepted for
    compatibility: only ``'local'``/uncompressed exist. ``store_location`` is where the store is.

    Usable wherever joblib.Memory is, e.g. ``Pipeline(steps, memory=runcache.Memory(path))``.
    """

    def __init__(
        self,
        location: Any = None,
        backend: str = "local",
        mmap_mode: str | None = None,
        compress: bool | int = False,
        verbose: int = 0,
        backend_options: dict | None = None,
    ) -> None:
        if backend != "local":
            # joblib's error for a backend it does not know.
            raise TypeError(
                f"Unknown location {location} or backend {backend}: runcache.Memory has the "
                "'local' backend only and selects its store by location (a directory, or a "
                "store URL such as s3://bucket/prefix)"
            )
        if compress:
            warnings.warn(
                "runcache.Memory stores results uncompressed (compress is ignored)", stacklevel=2
            )
        _mmap_of(mmap_mode)  # validate early
        self.location = None if location is None else str(location)
        self.store_location = None if self.location is None else _store_of(self.location)
        self.backend = backend
        self.mmap_mode = mmap_mode
        self.compress = compress
        self._verbose = verbose
        self.backend_options = backend_options or {}
        self._funcs: dict[tuple, MemorizedFunc] = {}

    def __repr__(self) -> str:
        return f"Memory(location={self.location})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_funcs"] = {}
        return state

    def _store(self) -> _core.Store:
        return _config.open_store({"store": self.store_location})

    def cache(
        self,
        func: Callable | None = None,
        ignore: Iterable[str] | None = None,
        verbose: int | None = None,
        mmap_mode: str | None | bool = False,
        cache_validation_callback: Callable[[dict], bool] | None = None,
    ) -> Any:
        """Decorates ``func`` so each call is computed once and then loaded (usable as
        ``@memory.cache`` or ``@memory.cache(ignore=[...])``). ``ignore``: parameters left out
        of the key; ``mmap_mode`` (default: the Memory's); ``cache_validation_callback(metadata)
        -> bool``: a stored result it rejects is deleted and recomputed (metadata has
        ``time`` and ``duration``, so ``joblib.expires_after(...)`` works)."""
        if cache_validation_callback is not None and not callable(cache_validation_callback):
            raise ValueError(
                f"cache_validation_callback needs to be callable. Got {cache_validation_callback}."
            )
        if func is None:
            return functools.partial(
                self.cache,
                ignore=ignore,
                verbose=verbose,
                mmap_mode=mmap_mode,
                cache_validation_callback=cache_validation_callback,
            )
        if isinstance(func, (MemorizedFunc, NotMemorizedFunc)):
            func = func.func
        if self.location is None:
            return NotMemorizedFunc(func)
        if mmap_mode is False:
            mmap_mode = self.mmap_mode
        verbose = self._verbose if verbose is None else verbose
        ident = (func, tuple(ignore or ()), verbose, mmap_mode, cache_validation_callback)
        try:
            cached = self._funcs.get(ident)
        except TypeError:  # an unhashable callable: no reuse
            ident, cached = None, None
        if cached is None:
            # scikit-learn calls cache() at every fit: reusing the object keeps that cheap.
            cached = MemorizedFunc(
                func,
                self.store_location,
                ignore=ignore,
                mmap_mode=mmap_mode,
                verbose=verbose,
                cache_validation_callback=cache_validation_callback,
            )
            if ident is not None:
                self._funcs[ident] = cached
        return cached

    def eval(self, func: Callable, *args: Any, **kwargs: Any) -> Any:
        """``self.cache(func)(*args, **kwargs)``."""
        return self.cache(func)(*args, **kwargs)

    def clear(self, warn: bool = True) -> int:
        """Deletes every entry of the store at ``location`` (like joblib, which erases its whole
        cache directory); returns how many."""
        if self.location is None:
            return 0
        if warn and self._verbose > 0:
            warnings.warn(f"Flushing completely the cache {self.location}", stacklevel=2)
        store = self._store()
        n = 0
        for text in store.entries():
            if store.delete(json.loads(text)["key"]):
                n += 1
        return n

    def reduce_size(
        self,
        bytes_limit: int | str | None = None,
        items_limit: int | None = None,
        age_limit: datetime.timedelta | None = None,
    ) -> dict[str, Any]:
        """Evicts least recently used entries until the store holds at most ``bytes_limit``
        bytes (int, or a string with K/M/G units) and ``items_limit`` entries, and none unused
        for longer than ``age_limit`` (a timedelta), as joblib does. An entry's size is what
        joblib counts: the bytes of its stored result (the pickle and array buffers, plus
        artifacts), not runcache's manifest. Returns ``{"removed": [[key, namespace, size]]}``
        in eviction order; blobs no entry uses any more are deleted afterwards."""
        report: dict[str, Any] = {"removed": []}
        if self.location is None:
            return report
        if age_limit is not None and age_limit < datetime.timedelta(0):
            raise ValueError("age_limit must be a positive timedelta")
        store = self._store()
        # A dry run evicting everything lists every entry, least recently used first, with
        # its result's size and its idle time: the order and the sizes joblib's rule needs.
        everything = json.loads(store.gc(max_size=0, dry_run=True, min_idle=0.0))["removed"]
        max_size = _parse_bytes(bytes_limit)
        total = sum(size for _, _, size in everything)
        excess_bytes = total - max_size if max_size is not None else 0
        excess_items = len(everything) - items_limit if items_limit is not None else 0
        stale = self._unused_since(store, everything, age_limit)
        for key, namespace, size in everything:
            if excess_bytes <= 0 and excess_items <= 0 and key not in stale:
                break
            if store.delete(key):
                report["removed"].append([key, namespace, size])
            excess_bytes -= size
            excess_items -= 1
        if report["removed"]:
            store.gc(min_idle=0.0)  # drops the blobs only the removed entries used
        return report

    @staticmethod
    def _unused_since(
        store: _core.Store, everything: list, age_limit: datetime.timedelta | None
    ) -> set[str]:
        """The keys not used within ``age_limit`` (a dry run of runcache's age eviction)."""
        if age_limit is None:
            return set()
        report = json.loads(
            store.gc(older_than=age_limit.total_seconds(), dry_run=True, min_idle=0.0)
        )
        return {key for key, _, _ in report["removed"]}
