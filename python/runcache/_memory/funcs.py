"""Cached functions: `MemorizedFunc` (what ``Memory.cache`` returns), `NotMemorizedFunc`
(caching off), and the name-collision check."""

from __future__ import annotations

import functools
import logging
import time
import warnings
from typing import Any, Callable, Iterable

from runcache import _config
from runcache._entry import Entry, Explanation
from runcache._memory.keys import _adapt, _describe, _qualname, _unwrap
from runcache._memory.results import MemorizedResult, NotMemorizedResult, _memmaps, _metadata
from runcache._task import Task, _source_hash

# joblib's logger: its users' logging configuration applies to rc.Memory's messages too.
_log = logging.getLogger("joblib")


class CollisionWarning(UserWarning):
    """Two different functions are cached under the same name (lambdas, a function redefined
    in a notebook): their results are kept apart only if their source differs and is readable."""


# Per cached name: the code object and source hash of the last function cached under it here.
_seen_names: dict[str, tuple[Any, str | None]] = {}


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


def _check_collision(name: str, func: Callable, stacklevel: int) -> None:
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
        stacklevel=stacklevel + 1,
    )


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
        verbose: int = 1,
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
        self._slow_first = True  # the first call checks for a name collision
        self._slow = True  # calls take `_call_fully`, not the hit path

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
            sticky_failures=False,  # joblib never caches an exception
        )
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
        if self._slow:
            return self._call_fully(args, kwargs)
        try:
            return self._call(*args, **kwargs)
        except TypeError:
            self._raise_if_arguments_mismatch(args, kwargs)
            raise

    def _call_fully(self, args: tuple, kwargs: dict) -> Any:
        """A call with everything the hit path leaves out: the collision check (first call),
        the validation callback, joblib's messages (querying at ``verbose >= 20``, the load
        time of a hit at ``> 4``) and ``np.memmap`` results."""
        self._check_collision(3)
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
        except TypeError:
            self._raise_if_arguments_mismatch(args, kwargs)
            raise
        computed = computed != self._computed
        if self._verbose > 4 and not computed:
            print(
                f"[Memory] {self.task.name} cache loaded - {time.perf_counter() - t0:.1f}s",
                flush=True,
            )
        return self._mapped(out, computed, args, kwargs) if self._mmap else out

    def _mapped(self, out: Any, computed: bool, args: tuple, kwargs: dict) -> Any:
        """With ``mmap_mode='r'``: the result as joblib returns it, arrays as ``np.memmap``, the
        first call's too (the stored result is loaded back, mapped, as joblib does)."""
        if computed:
            try:
                out = self.task.entry(*args, **kwargs).load(mmap=True)
            except Exception:
                pass  # not stored (a read-only store): the computed value it is
        return _memmaps(out)

    def _check_collision(self, stacklevel: int) -> None:
        """Runs the collision check once (the warning points ``stacklevel`` frames up), then
        lets plain calls take the hit path."""
        if self._slow_first:
            self._slow_first = False
            _check_collision(self.task.name, self.func, stacklevel + 1)
            self._slow = (
                self._verbose > 4 or self._mmap or self.cache_validation_callback is not None
            )

    def _raise_if_arguments_mismatch(self, args: tuple, kwargs: dict) -> None:
        """Called on a TypeError: raises joblib's error (ValueError) instead if the arguments
        do not fit the signature; returns if they do (the function raised it, or an argument
        cannot be hashed)."""
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
        self._check_collision(2)
        try:
            out = self.task.options(mode="force")(*args, **kwargs)
        except TypeError:
            self._raise_if_arguments_mismatch(args, kwargs)
            raise
        info = self.task.entry(*args, **kwargs).info()
        if self._mmap:
            out = self._mapped(out, True, args, kwargs)
        return out, (_metadata(info) if info else {})

    def call_and_shelve(self, *args: Any, **kwargs: Any) -> MemorizedResult:
        """Computes the result if it is not stored; returns a lazy `MemorizedResult`
        (``.get()`` loads it, ``.clear()`` deletes it) without loading it."""
        args, kwargs = _adapt(args, kwargs)
        self._check_collision(2)
        try:
            if not self._validate(args, kwargs):
                self._call(*args, **kwargs)
        except TypeError:
            self._raise_if_arguments_mismatch(args, kwargs)
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
        except TypeError:
            self._raise_if_arguments_mismatch(args, kwargs)
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
