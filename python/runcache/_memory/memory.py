"""`Memory`: joblib.Memory's interface on a runcache store (location, cache, clear,
reduce_size)."""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
import warnings
from typing import Any, Callable, Iterable

from runcache import _config, _core
from runcache._memory.funcs import MemorizedFunc, NotMemorizedFunc, _mmap_of

#: The subdirectory of ``location`` that holds the store (joblib's is ``joblib``).
STORE_DIR = "runcache"


def _store_of(location: str) -> str:
    """Where ``Memory(location)`` keeps its store: ``location/runcache``, unless ``location`` is
    a store URL, already a runcache store (stores made before the subdirectory existed), or
    the store ``@runcache.task`` uses by default (``./.runcache``, ``RUNCACHE_STORE``)."""
    if "://" in location:
        return location
    location = os.path.expanduser(location)
    if os.path.isfile(os.path.join(location, "RUNCACHE-STORE.json")):
        return location
    if os.path.abspath(location) == _config.store_location(_config.current({})):
        return location  # shared with the tasks, which need it to be the store itself
    return os.path.join(location, STORE_DIR)


def _parse_bytes(limit: int | str | None) -> int | None:
    """joblib's ``bytes_limit``: an int, or a string with a K/M/G/T unit (powers of 1024)."""
    if limit is None or isinstance(limit, int):
        return limit
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(limit), re.IGNORECASE)
    if not m:
        raise ValueError(f"bytes_limit {limit!r}: use an int or a string like '500M', '2G'")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


class Memory:
    """joblib.Memory's interface on a runcache store.

    ``location``: a directory (any directory: the store is its subdirectory ``runcache``, see
    `STORE_DIR`; a directory that already is a runcache store is used as is) or a runcache
    store URL; ``None`` disables caching (every call computes, as with joblib).
    ``mmap_mode``: ``'r'`` maps large arrays of loaded results read-only (zero copy, as
    ``np.memmap``); ``None`` (default, as joblib) or ``'c'`` loads copies. ``verbose``:
    joblib's levels (default 1: > 0 prints each computation, > 4 each load, > 10 and >= 20 log
    "Computing"/"Querying" to the ``joblib`` logger). ``backend``, ``compress`` and
    ``backend_options`` are accepted for compatibility: only ``'local'``/uncompressed exist.
    ``store_location`` is where the store is.

    Usable wherever joblib.Memory is, e.g. ``Pipeline(steps, memory=runcache.Memory(path))``.
    """

    def __init__(
        self,
        location: Any = None,
        backend: str = "local",
        mmap_mode: str | None = None,
        compress: bool | int = False,
        verbose: int = 1,
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
