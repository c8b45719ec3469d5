"""What cached functions return: stored results as joblib returns them (``np.memmap`` under
``mmap_mode='r'``), `MemorizedResult` and `NotMemorizedResult` (``call_and_shelve``)."""

from __future__ import annotations

import sys
from typing import Any

from runcache import _config, _core
from runcache._entry import Entry


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
