"""Configuration resolved at call time: process defaults (`configure`), context-local overrides
(`config`, safe across threads and asyncio tasks) and the `RUNCACHE_STORE` environment variable.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from typing import Any, Iterator

from runcache import _core

MODES = ("cached", "force", "retry", "read-only", "off")
_KNOWN = {"store", "mode", "mmap", "wait_timeout", "sync", "lease_ttl", "signing_key"}

_defaults: dict[str, Any] = {}
_overrides: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "runcache_config", default={}
)
_stores: dict[tuple, _core.Store] = {}
_stores_lock = threading.Lock()


def _check(options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - _KNOWN
    if unknown:
        raise TypeError(
            f"unknown runcache option(s) {sorted(unknown)}; known: {sorted(_KNOWN)}"
        )
    mode = options.get("mode")
    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of: {', '.join(MODES)}")
    return options


def configure(**options: Any) -> None:
    """Sets process-wide defaults, e.g. ``configure(store="/shared/cache", mode="cached")``.

    Options: ``store`` (path or URL, or a list of them for a tiered store, nearest first, e.g.
    ``["./.runcache", "s3://team/cache?readonly=true"]``), ``mode`` (cached | force | retry | read-only | off),
    ``mmap`` (map large array results read-only; default True; a local store location ending
    in ``?mmap=false`` never maps for any caller, for shared filesystems whose writers you
    cannot all trust), ``wait_timeout`` (seconds to
    wait for another process computing the same entry; default: as long as it lives),
    ``sync`` (fsync on commit), ``lease_ttl`` (seconds), ``signing_key`` (str or bytes: sign
    every entry written and refuse entries read without a valid signature; default:
    ``RUNCACHE_SIGNING_KEY`` if set). ``None`` resets an option.
    """
    for k, v in _check(options).items():
        if v is None:
            _defaults.pop(k, None)
        else:
            _defaults[k] = v
    # Tasks' native hit paths remember the options they resolved: they resolve them again.
    _core.config_changed()


@contextlib.contextmanager
def config(**options: Any) -> Iterator[None]:
    """Temporarily overrides options in this context (thread / asyncio task):

    ``with runcache.config(mode="force"): fit(X, 0)``. Affects tasks decorated earlier too:
    every option is resolved when a task is called.
    """
    merged = {**_overrides.get(), **_check(options)}
    token = _overrides.set(merged)
    try:
        yield
    finally:
        _overrides.reset(token)


def current(task_options: dict[str, Any]) -> dict[str, Any]:
    """The effective options for one call: task options > context > configure() > defaults."""
    ctx = _overrides.get()
    if not ctx and not _defaults and not task_options:
        return {}
    return {**_defaults, **ctx, **task_options}


def _relative(loc: Any) -> bool:
    loc = os.fspath(loc)
    return "://" not in loc and not loc.startswith("/")


def _absolute(loc: Any) -> str:
    # Relative paths are resolved against the working directory at call time.
    return os.path.abspath(loc) if _relative(loc) else os.fspath(loc)


def _given_location(options: dict[str, Any]) -> tuple[Any, bool]:
    """The store location as given (the option, else ``RUNCACHE_STORE``, else ``.runcache``),
    and whether it came from the environment."""
    loc = options.get("store")
    if loc is None:
        return os.environ.get("RUNCACHE_STORE") or ".runcache", True
    return loc, False


def store_location(options: dict[str, Any]) -> str | tuple[str, ...]:
    """The store's location: one path/URL, or a tuple of them (a tiered store, nearest first)."""
    loc, _ = _given_location(options)
    if isinstance(loc, (list, tuple)):
        if not loc:
            raise ValueError("store=[] names no location; give at least one path or URL")
        return tuple(_absolute(x) for x in loc)
    return _absolute(loc)


def hit_settings(options: dict[str, Any]) -> tuple[_core.Store, str, bool, bool, bool]:
    """What a task's native hit path (`_core.HitPath`) needs from the effective options:
    ``(store, mode, mmap, from_env, from_cwd)``. The last two say what else the store's
    location depends on: ``RUNCACHE_STORE`` (no ``store`` option) and the working directory (a
    relative location); the hit path resolves the options again when either changes."""
    loc, from_env = _given_location(options)
    locs = loc if isinstance(loc, (list, tuple)) else (loc,)
    from_cwd = any(_relative(x) for x in locs)
    return (
        open_store(options),
        options.get("mode", "cached"),
        bool(options.get("mmap", True)),
        from_env,
        from_cwd,
    )


def open_store(options: dict[str, Any]) -> _core.Store:
    """The store handle for these options (opened once per location and settings)."""
    loc = store_location(options)
    key = options.get("signing_key")
    ident = (loc, bool(options.get("sync", False)), options.get("lease_ttl"), key)
    store = _stores.get(ident)
    if store is None:
        with _stores_lock:
            store = _stores.get(ident)
            if store is None:
                store = _core.Store(
                    list(loc) if isinstance(loc, tuple) else loc,
                    sync=ident[1],
                    lease_ttl=ident[2],
                    signing_key=key,
                )
                _stores[ident] = store
    return store
