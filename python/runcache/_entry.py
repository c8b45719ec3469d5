"""Entry handles and `explain`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import IO, Any

from runcache import _core


class Entry:
    """A handle on one entry (which may not exist yet)."""

    __slots__ = ("_store", "key", "namespace")

    def __init__(self, store: _core.Store, key: str, namespace: str) -> None:
        self._store = store
        self.key = key
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"<runcache.Entry {self.namespace} {self.key[:12]}>"

    def __runcache_key__(self) -> Any:
        # A lazy handle passed to another task enters its key by this entry's key: no re-hash.
        return ("runcache.entry", self.key)

    def info(self) -> dict[str, Any] | None:
        """The entry's manifest (status, key document, blobs, artifacts, dependencies, error,
        timing, host), or None if nothing is stored."""
        text = self._store.manifest(self.key)
        return None if text is None else json.loads(text)

    def status(self) -> str | None:
        """'completed', 'failed', 'interrupted', or None if nothing is stored."""
        info = self.info()
        return None if info is None else info["status"]

    def exists(self) -> bool:
        """True if a completed entry is stored."""
        return self.status() == "completed"

    def load(self, mmap: bool = True) -> Any:
        """The stored result (large arrays memory-mapped read-only unless ``mmap=False``)."""
        return self._store.load(self.key, mmap=mmap)

    def delete(self) -> bool:
        """Deletes the entry; returns whether it existed."""
        return self._store.delete(self.key)

    def logs(self) -> str:
        """The stdout and stderr a worker captured while computing this entry ('' if none)."""
        return logs_of(self._store, self.key)

    def artifacts(self) -> list[str]:
        """Names of the files stored with the entry."""
        info = self.info()
        return [] if info is None else [a["name"] for a in info.get("artifacts", [])]

    def open(self, name: str, mode: str = "rb") -> IO[Any]:
        """Opens a stored artifact for reading (``"rb"`` or ``"r"``), after verifying it."""
        if mode not in ("r", "rb"):
            raise ValueError("artifacts are read-only: open them with mode 'r' or 'rb'")
        path = self._store.artifact_file(self.key, name)
        return open(path, mode)

    def artifact_file(self, name: str) -> str:
        """A verified local file path holding the artifact ``name``."""
        return str(self._store.artifact_file(self.key, name))


@dataclass
class Difference:
    """One argument (or the version) that differs between a call and a stored entry."""

    name: str
    stored: Any
    requested: Any


@dataclass
class Nearest:
    """A stored entry of the same task and how it differs from the call."""

    key: str
    status: str
    differences: list[Difference]


@dataclass
class Explanation:
    """Why a call is (or is not) a hit. ``str()`` gives a readable report."""

    namespace: str
    key: str
    hit: bool
    status: str | None
    reason: str
    nearest: list[Nearest] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.namespace} {self.key[:12]}: {self.reason}"]
        for n in self.nearest:
            lines.append(f"  nearest stored entry {n.key[:12]} ({n.status}) differs in:")
            for d in n.differences:
                lines.append(f"    {d.name}: stored {_short(d.stored)} -> now {_short(d.requested)}")
        return "\n".join(lines)


def _short(v: Any, limit: int = 80) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _diff(stored: dict[str, Any], requested: dict[str, Any]) -> list[Difference]:
    out = []
    if stored.get("version") != requested.get("version"):
        out.append(Difference("(version)", stored.get("version"), requested.get("version")))
    sa, ra = stored.get("args", {}), requested.get("args", {})
    if not isinstance(sa, dict) or not isinstance(ra, dict):
        if sa != ra:
            out.append(Difference("(args)", sa, ra))
        return out
    for name in sorted(set(sa) | set(ra)):
        if sa.get(name, "<absent>") != ra.get(name, "<absent>"):
            out.append(Difference(name, sa.get(name, "<absent>"), ra.get(name, "<absent>")))
    return out


def explain_call(
    store: _core.Store, namespace: str, version: str, bound: dict[str, Any]
) -> Explanation:
    key = _core.compute_key(namespace, version, bound)
    doc = json.loads(_core.key_document(namespace, version, bound))
    text = store.manifest(key)
    if text is not None:
        m = json.loads(text)
        status = m["status"]
        if status == "completed":
            for dep in m.get("dependencies", []):
                current = _core.registered_version(dep["namespace"])
                if current is not None and current != dep["version"]:
                    reason = (
                        f"stale: dependency {dep['namespace']} is now version {current}, "
                        f"the entry used version {dep['version']}; the next call recomputes it"
                    )
                    return Explanation(namespace, key, False, status, reason)
            return Explanation(namespace, key, True, status, "hit: a completed entry is stored")
        reason = {
            "failed": "stored as FAILED: a plain call re-raises the recorded error; mode='retry' recomputes",
            "interrupted": "stored as INTERRUPTED: the next call recomputes it",
        }.get(status, status)
        return Explanation(namespace, key, False, status, reason)
    candidates = []
    for t in store.entries(namespace):
        m = json.loads(t)
        diffs = _diff(m.get("key_doc", {}), doc)
        candidates.append(Nearest(m["key"], m["status"], diffs))
    candidates.sort(key=lambda n: len(n.differences))
    if not candidates:
        reason = f"miss: no entry of {namespace} is stored"
    else:
        best = candidates[0]
        names = ", ".join(d.name for d in best.differences) or "nothing visible in the key document"
        reason = f"miss: {len(candidates)} entries of this task are stored; the nearest differs in {names}"
    return Explanation(namespace, key, False, None, reason, candidates[:3])


def logs_of(store: _core.Store, key: str) -> str:
    """The captured output stored with an entry, or '' if there is none."""
    try:
        path = store.artifact_file(key, "runcache.log")
    except _core.RuncacheError:
        return ""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()
