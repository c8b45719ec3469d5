"""What a sweep gives back: per-item results, failures and jobs, read from the store.

Below the sweep machinery (``_sweep``) and the executors, which both hand these out; it knows
nothing of how items are submitted or computed, only how a settled item reads back.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Collection, Sequence

from runcache import _core
from runcache._entry import logs_of

#: Item states that need nothing more from any worker.
SETTLED = ("completed", "cached", "failed", "cancelled")

#: ``Failure.error_type`` of an item cancelled before it started.
CANCELLED = "runcache.Cancelled"


@dataclasses.dataclass
class Failure:
    """An item that failed (or was cancelled: ``error_type`` is ``"runcache.Cancelled"``),
    returned in place of its result with ``errors="return"``."""

    #: Position of the item in the sweep.
    index: int
    #: Entry key.
    key: str
    #: Exception type (``module.QualName``).
    error_type: str
    #: Exception message.
    message: str
    #: Formatted traceback, as recorded by the worker.
    traceback: str = ""
    #: Host that ran it.
    host: str = ""
    #: Where its captured output is (a file, or the command that prints it), if any.
    log: str | None = None

    @property
    def cancelled(self) -> bool:
        """True when the item was cancelled rather than failed."""
        return self.error_type == CANCELLED

    def __str__(self) -> str:
        if self.cancelled:
            return f"item {self.index} was cancelled before it started"
        where = f" (log: {self.log})" if self.log else ""
        return f"item {self.index} failed: {self.error_type}: {self.message}{where}"


class SweepError(RuntimeError):
    """Raised after a sweep (``errors="raise"``) when items failed. ``failures`` lists them all;
    ``results`` holds every result in order (a :class:`Failure` for failed items)."""

    def __init__(self, message: str, failures: list[Failure], results: list[Any]) -> None:
        super().__init__(message)
        self.failures = failures
        self.results = results


class SweepStalled(RuntimeError):
    """Every worker of a sweep ended (or never started) while items were still unfinished."""


@dataclasses.dataclass
class SweepStatus:
    """Counts of a sweep's items by state, read from the store."""

    id: str
    total: int
    pending: int
    running: int
    completed: int
    cached: int
    failed: int
    interrupted: int
    items: list[dict[str, Any]]
    cancelled: int = 0

    @property
    def done(self) -> int:
        """Items settled: completed, cached, failed or cancelled."""
        return self.completed + self.cached + self.failed + self.cancelled

    @property
    def drained(self) -> bool:
        """True when every item is settled."""
        return self.done == self.total

    @property
    def queued(self) -> int:
        """Items waiting for a worker (pending or interrupted)."""
        return self.pending + self.interrupted


def collect(
    store: _core.Store,
    keys: Sequence[str],
    errors: str,
    mmap: bool = True,
    cancelled: Collection[str] = (),
) -> list[Any]:
    """Loads the results of settled items in order; failures (and the ``cancelled`` keys)
    become :class:`Failure`."""
    results: list[Any] = []
    failures: list[Failure] = []
    for i, key in enumerate(keys):
        try:
            results.append(store.load(key, mmap=mmap))
            continue
        except KeyError:  # no completed entry: the item failed or was cancelled
            pass
        failure = cancelled_failure(i, key) if key in cancelled else failure_of(store, i, key)
        failures.append(failure)
        results.append(failure)
    if failures and errors == "raise":
        raise SweepError(summarize(failures, len(keys)), failures, results)
    return results


def cancelled_failure(index: int, key: str) -> Failure:
    """What a cancelled item gives in place of its result."""
    return Failure(index, key, CANCELLED, "the item was cancelled before it started")


def failure_of(store: _core.Store, index: int, key: str) -> Failure:
    """The recorded failure of one item (or why it has no result)."""
    text = store.manifest(key)
    if text is None:
        return Failure(index, key, "runcache.Missing", "the item has no entry")
    m = json.loads(text)
    err = m.get("error") or {}
    log = next((a for a in m.get("artifacts", []) if a["name"] == "runcache.log"), None)
    return Failure(
        index=index,
        key=key,
        error_type=err.get("type", m.get("status", "?")),
        message=err.get("message", ""),
        traceback=err.get("traceback", ""),
        host=m.get("host", ""),
        log=f"runcache logs {key[:16]}" if log else None,
    )


def summarize(failures: list[Failure], total: int) -> str:
    """A summary of every failure, then the first traceback."""
    cancelled = sum(f.cancelled for f in failures)
    failed = len(failures) - cancelled
    if not cancelled:
        head = f"{failed} of {total} item(s) failed:"
    elif not failed:
        head = f"{cancelled} of {total} item(s) were cancelled:"
    else:
        head = f"{failed} of {total} item(s) failed and {cancelled} were cancelled:"
    lines = [head] + [f"  {f}" for f in failures[:20]]
    if len(failures) > 20:
        lines.append(f"  ... and {len(failures) - 20} more (errors='return' gives them all)")
    first = failures[0]
    if first.traceback:
        lines += [f"first failure (item {first.index}):", first.traceback.rstrip()]
    return "\n".join(lines)


class Job:
    """One item: ``result(timeout)``, ``status()``, ``done()``, ``key``, ``logs()``,
    ``cancel()``. ``sweep`` is its :class:`SweepHandle`, or None when the item was already
    settled at submission (nothing to wait for)."""

    def __init__(
        self,
        store: _core.Store,
        index: int,
        key: str,
        sweep: Any = None,
        mmap: bool = True,
    ) -> None:
        self.store = store
        self.index = index
        self.key = key
        self.sweep = sweep
        self.mmap = mmap

    def __repr__(self) -> str:
        where = f"{self.sweep.id}[{self.index}]" if self.sweep else self.key[:12]
        return f"<runcache job {where} {self.status()}>"

    def status(self) -> str:
        """pending, running, completed, cached, failed, interrupted or cancelled."""
        if self.sweep is None:  # settled before any sweep: whatever is stored is cached
            mode, sweep_id, since = "cached", "", 0
        else:
            rec = self.sweep.record
            mode, sweep_id, since = rec["mode"], rec["id"], rec["created_unix_ms"]
        return self.store.item_states([self.key], mode, sweep_id, since)[0]

    def done(self) -> bool:
        """True when the item is settled (completed, cached or failed)."""
        return self.status() in SETTLED

    def result(self, timeout: float | None = None) -> Any:
        """Waits for the item and returns its result; raises :class:`SweepError` (with the
        recorded failure) if it failed."""
        if self.sweep is not None and not self.done():
            self.sweep.wait(timeout=timeout, progress=False, indices=[self.index])
        try:
            return self.store.load(self.key, mmap=self.mmap)
        except KeyError:
            if self.status() == "cancelled":
                f = cancelled_failure(self.index, self.key)
            else:
                f = failure_of(self.store, self.index, self.key)
            raise SweepError(summarize([f], 1), [f], [f]) from None

    def logs(self) -> str:
        """The item's captured stdout and stderr ('' if it printed nothing)."""
        return logs_of(self.store, self.key)

    def cancel(self) -> bool:
        """Cancels the item unless it has started, like ``concurrent.futures.Future.cancel``:
        True when no worker of its sweep will compute it, False when it is running or settled.
        (``job.sweep.cancel()`` cancels the whole sweep and stops its workers.)"""
        if self.sweep is None:
            return False
        rec = self.sweep.record
        return self.store.cancel_items([self.key], rec["mode"], rec["id"], rec["created_unix_ms"])[0]


def jobs_of(
    store: _core.Store, keys: Sequence[str], sweep: Any, mmap: bool
) -> list[Job]:
    """One :class:`Job` per key, in order (``sweep`` None: everything was settled already)."""
    return [Job(store, i, k, sweep, mmap) for i, k in enumerate(keys)]
