"""What a running task can reach: artifact paths and entry metadata (context-local)."""

from __future__ import annotations

import contextvars
import os
import tempfile
from typing import Any

_scope: contextvars.ContextVar["Scope | None"] = contextvars.ContextVar(
    "runcache_scope", default=None
)


class Scope:
    """One running computation's artifacts and metadata."""

    __slots__ = ("scratch_root", "dir", "artifacts", "metadata")

    def __init__(self, scratch_root: str | os.PathLike[str]) -> None:
        self.scratch_root = os.fspath(scratch_root)
        self.dir: str | None = None
        self.artifacts: list[tuple[str, str]] = []
        self.metadata: dict[str, Any] = {}

    def artifact_path(self, name: str) -> str:
        norm = os.path.normpath(name)
        if not name or os.path.isabs(name) or norm.startswith("..") or "\\" in name:
            raise ValueError(
                f"artifact name {name!r} must be a relative path without '..' (e.g. 'plots/loss.png')"
            )
        for n, p in self.artifacts:
            if n == name:
                return p
        if self.dir is None:
            os.makedirs(self.scratch_root, exist_ok=True)
            self.dir = tempfile.mkdtemp(prefix="py-artifacts-", dir=self.scratch_root)
        path = os.path.join(self.dir, norm)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.artifacts.append((name, path))
        return path

    def cleanup(self) -> None:
        if self.dir is not None:
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)


def current() -> Scope | None:
    return _scope.get()


def enter(scope: Scope) -> contextvars.Token["Scope | None"]:
    return _scope.set(scope)


def leave(token: contextvars.Token["Scope | None"]) -> None:
    _scope.reset(token)


def artifact_path(name: str) -> str:
    """Inside a running task: a path to write the file ``name`` to; the file is stored with the
    entry when the task succeeds and is readable later with ``entry.open(name)``."""
    scope = _scope.get()
    if scope is None:
        raise RuntimeError(
            "runcache.artifact_path() is only available inside a running task "
            "(a function decorated with @runcache.task that is computing)"
        )
    return scope.artifact_path(name)


def set_metadata(name: str, value: Any) -> None:
    """Inside a running task: attaches a JSON-serializable value to the entry's metadata."""
    scope = _scope.get()
    if scope is None:
        raise RuntimeError("runcache.set_metadata() is only available inside a running task")
    scope.metadata[name] = value
