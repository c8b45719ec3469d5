"""Sweeps: many calls of one task, submitted together, computed by workers, returned in order.

The store is the single source of truth. Submitting writes a sweep record (the item keys and
the pickled arguments) to the store; executors start workers that claim items with the engine's
leases; every state shown here (pending, running, completed, cached, failed, interrupted,
cancelled) is read back
from the store's entries and leases, from any session (`runcache.sweep(ID)`) or the CLI
(`runcache status`).
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shlex
import sys
import time
from typing import Any, Iterable, Sequence

from runcache import _config, _core
from runcache._executors import Executor, WorkerState
from runcache._progress import Progress
from runcache._results import (  # noqa: F401  (re-exported: the sweep API hands them out)
    CANCELLED,
    SETTLED,
    Failure,
    Job,
    SweepError,
    SweepStalled,
    SweepStatus,
    cancelled_failure,
    collect,
    failure_of,
    jobs_of,
    summarize,
)

#: True while a worker runs the submitter's script to find its task (set by ``_worker``): a
#: sweep started at that moment is the script's own top-level code, which must be guarded by
#: `if __name__ == "__main__":`.
importing_main = False

#: How many times a sweep whose workers all ended with items left is handed back to its
#: executor before `wait` gives up.
DEFAULT_RESUBMITS = 2


def grid(**axes: Any) -> list[dict[str, Any]]:
    """The cartesian product of the axes as a list of keyword-argument dicts, last axis fastest:
    ``grid(lr=[0.1, 0.01], seed=range(2))`` gives
    ``[{'lr': 0.1, 'seed': 0}, {'lr': 0.1, 'seed': 1}, {'lr': 0.01, 'seed': 0}, ...]``.
    A string, bytes or non-iterable value is one fixed value (``grid(model="mlp", seed=range(3))``).
    """
    names = list(axes)
    values = []
    for name in names:
        v = axes[name]
        if isinstance(v, (str, bytes)) or not isinstance(v, Iterable) or isinstance(v, dict):
            values.append([v])
        else:
            values.append(list(v))
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def as_call(item: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """One map item as call arguments: a dict is keyword arguments, a tuple positional
    arguments, anything else the single positional argument."""
    if isinstance(item, dict):
        return (), dict(item)
    if isinstance(item, tuple):
        return item, {}
    return (item,), {}


def _shown(problems: list[str], limit: int = 10) -> list[str]:
    """The first ``limit`` problem reports, and how many more there are (a big array can have
    thousands of dead tasks; ``executor.poll(sweep).problems`` lists them all)."""
    if len(problems) <= limit:
        return problems
    more = len(problems) - limit
    return problems[:limit] + [f"... and {more} more (executor.poll(sweep).problems lists all)"]


def _new_id(namespace: str) -> str:
    short = "".join(c if c.isalnum() else "-" for c in namespace.rsplit(".", 1)[-1])[:24]
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{short.strip('-') or 'task'}-{secrets.token_hex(3)}"




class _Tracker:
    """Follows a sweep's item states while waiting: each poll reads only the items not yet
    settled (a settled item never changes for this sweep), so polls get cheaper as the sweep
    progresses and a poll of a finished sweep costs nothing."""

    def __init__(self, sweep: "SweepHandle") -> None:
        self.sweep = sweep
        self.states: list[str] = ["pending"] * sweep.total
        self.open = list(range(sweep.total))

    def settled(self, index: int) -> bool:
        return self.states[index] in SETTLED

    def poll(self) -> SweepStatus:
        rec = self.sweep.record
        keys = self.sweep.keys
        if self.open:
            fresh = self.sweep.store.item_states(
                [keys[i] for i in self.open], rec["mode"], rec["id"], rec["created_unix_ms"]
            )
            for i, state in zip(self.open, fresh):
                self.states[i] = state
            self.open = [i for i in self.open if self.states[i] not in SETTLED]
        n = {
            s: 0
            for s in ("pending", "running", "completed", "cached", "failed", "interrupted",
                      "cancelled")
        }
        for state in self.states:
            n[state] += 1
        return SweepStatus(id=self.sweep.id, total=self.sweep.total, items=[], **n)


class SweepHandle:
    """A submitted sweep: its status, its results in order, and its workers' commands.

    Get one from ``task.map(items, wait=False)`` (as ``jobs[0].sweep``), ``runcache.sweep(ID)``
    in any session, or use the id with ``runcache status ID``.
    """

    def __init__(
        self,
        store: _core.Store,
        location: str | tuple[str, ...],
        record: dict[str, Any],
        executor: Executor | None = None,
        queued: int | None = None,
        keys: list[str] | None = None,
    ) -> None:
        self.store = store
        self.location = location
        self.record = record
        self.executor = executor
        self._queued = queued
        self._keys = keys
        self._cancelling = False

    def __repr__(self) -> str:
        return f"<runcache sweep {self.id} of {self.record['namespace']}: {self.total} items>"

    @property
    def id(self) -> str:
        """The sweep's id (use it with ``runcache.sweep(ID)`` and ``runcache status ID``)."""
        return self.record["id"]

    @property
    def total(self) -> int:
        """Number of items."""
        return int(self.record["count"])

    @property
    def queued(self) -> int:
        """Items to compute as of submission, of the last relaunch, or now if reattached."""
        if self._queued is None:
            self._queued = self.status().queued
        return self._queued

    @property
    def keys(self) -> list[str]:
        """Entry keys of the items, in order."""
        if self._keys is None:
            self._keys = self.store.sweep_keys(self.id)
        return self._keys

    @property
    def resources(self) -> dict[str, float]:
        """What one item needs (e.g. ``{"ram": 1.5}``), as declared by the task."""
        return dict(self.record.get("resources") or {})

    # -- what executors use ------------------------------------------------------------------

    def worker_argv(
        self,
        max_items: int | None = None,
        idle_exit: float | None = None,
        worker_index: int | None = None,
    ) -> list[str]:
        """The exact command one worker runs."""
        runner = self.record["runner"]
        argv = [runner.get("executable") or sys.executable, "-m", "runcache", "worker"]
        locs = self.location if isinstance(self.location, tuple) else (self.location,)
        for loc in locs:
            argv += ["--store", loc]
        argv += ["--sweep", self.id]
        if max_items is not None:
            argv += ["--max-items", str(max_items)]
        if idle_exit is not None:
            argv += ["--idle-exit", str(idle_exit)]
        if worker_index is not None:
            argv += ["--worker-index", str(worker_index)]
        return argv

    def worker_env(self) -> dict[str, str]:
        """Environment a worker needs: the caller's import path, so it imports the same code."""
        paths = [p for p in self.record["runner"].get("sys_path", []) if p]
        return {"PYTHONPATH": os.pathsep.join(paths)} if paths else {}

    def worker_command(self) -> str:
        """The worker command as one shell line (with its environment)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.worker_env().items())
        cmd = " ".join(shlex.quote(a) for a in self.worker_argv())
        return f"{env} {cmd}" if env else cmd

    @property
    def executor_info(self) -> dict[str, Any]:
        """What the executor recorded about this sweep (job ids, log directory)."""
        return dict(self.record.get("executor") or {})

    def save_executor_info(self, info: dict[str, Any]) -> None:
        """Records executor state in the sweep record (visible to later sessions and the CLI)."""
        self.record["executor"] = {**self.executor_info, **info}
        self.store.save_sweep(json.dumps(self.record))

    # -- state -------------------------------------------------------------------------------

    def status(self, all_items: bool = False) -> SweepStatus:
        """Item counts by state, read from the store now. ``items`` lists the failed and
        interrupted items (every item with ``all_items=True``)."""
        s = json.loads(self.store.sweep_status(self.id, all_items))
        return SweepStatus(
            id=s["id"],
            total=s["total"],
            pending=s["pending"],
            running=s["running"],
            completed=s["completed"],
            cached=s["cached"],
            failed=s["failed"],
            interrupted=s["interrupted"],
            cancelled=s["cancelled"],
            items=s["items"],
        )

    def wait(
        self,
        timeout: float | None = None,
        progress: bool | None = None,
        resubmits: int = DEFAULT_RESUBMITS,
        indices: Sequence[int] | None = None,
    ) -> SweepStatus:
        """Waits until every item (or every item in ``indices``) is settled, showing progress.
        Hands the sweep back to its executor when all its workers ended with items left
        (at most ``resubmits`` times), then raises :class:`SweepStalled` naming what died."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = Progress(self.record["namespace"], self.total, enabled=progress)
        watched = list(range(self.total)) if indices is None else sorted(set(indices))
        tracker = _Tracker(self)
        try:
            while True:
                t0 = time.monotonic()
                st = tracker.poll()
                bar.update(st)
                if all(tracker.settled(i) for i in watched):
                    return st
                if self._cancelling and st.queued:
                    # Items whose workers were stopped by cancel() are cancelled once released.
                    self._cancel_open()
                elif self.executor is not None:
                    ws = self.executor.poll(self)
                    if ws.alive == 0 and st.running == 0 and not self._cancelling:
                        st = tracker.poll()
                        if all(tracker.settled(i) for i in watched):
                            return st
                        if resubmits <= 0 or ws.fatal:
                            raise SweepStalled(self._stall_message(st, ws))
                        resubmits -= 1
                        bar.write(
                            f"runcache: every worker of sweep {self.id} ended with "
                            f"{st.queued} item(s) left; starting workers again"
                            + "".join(f"\n  {p}" for p in _shown(ws.problems))
                        )
                        self._queued = st.queued  # the relaunch is sized from what is left
                        self.executor.launch(self)
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"sweep {self.id} is not finished after {timeout} s "
                        f"({st.done}/{st.total} done, {st.running} running, {st.queued} queued)"
                    )
                # Poll every 10 ms, or less often when reading the states is costly (at most a
                # fifth of the time goes to polling), sooner when a worker ends. Settled items
                # are never read again.
                spent = time.monotonic() - t0
                pause = min(max(0.01, spent * 4), 2.0)
                if self.executor is None:
                    time.sleep(pause)
                else:
                    self.executor.pause(self, pause)
        except KeyboardInterrupt:
            if self.executor is not None and self.executor.stop_on_interrupt:
                self.executor.cancel(self)
                bar.write(
                    f"runcache: interrupted; stopped the workers of sweep {self.id}. Completed "
                    "items are kept: run the same map again to compute the rest."
                )
            raise
        finally:
            bar.close()

    def _stall_message(self, st: SweepStatus, ws: WorkerState) -> str:
        lines = [
            f"sweep {self.id}: no worker is left but {st.queued} item(s) are unfinished "
            f"({st.done}/{st.total} done). Start workers with:\n  {self.worker_command()}"
        ]
        lines += [f"  {p}" for p in _shown(ws.problems)]
        return "\n".join(lines)

    def results(
        self,
        errors: str = "raise",
        timeout: float | None = None,
        progress: bool | None = None,
        mmap: bool = True,
    ) -> list[Any]:
        """Waits for the sweep, then returns every result in item order. ``errors="raise"``
        raises :class:`SweepError` (all failures summarized, the first traceback shown) if any
        item failed; ``errors="return"`` puts a :class:`Failure` in place of each failed
        result."""
        if errors not in ("raise", "return"):
            raise ValueError(f"errors={errors!r}: use 'raise' or 'return'")
        self.wait(timeout=timeout, progress=progress)
        cancelled = set(self.store.cancelled_keys(self.id))
        return collect(self.store, self.keys, errors, mmap, cancelled)

    def jobs(self, mmap: bool = True) -> list["Job"]:
        """One :class:`Job` per item, in order."""
        return jobs_of(self.store, self.keys, self, mmap)

    def cancel(self) -> int:
        """Cancels the sweep: no item starts any more, and when this handle has the executor
        that started the workers, they are stopped (the items they were computing are recorded
        interrupted, then cancelled). Settled items keep their entries. Returns how many items
        were cancelled now; ``results()`` gives a ``runcache.Cancelled`` failure for each."""
        self._cancelling = True
        n = self._cancel_open()
        if self.executor is not None:
            self.executor.cancel(self)
            n += self._cancel_open()
        return n

    def _cancel_open(self) -> int:
        """Cancels every item neither settled nor running; returns how many were."""
        rec = self.record
        since = rec["created_unix_ms"]
        states = self.store.item_states(self.keys, rec["mode"], rec["id"], since)
        waiting = list({k for k, s in zip(self.keys, states) if s in ("pending", "interrupted")})
        return sum(self.store.cancel_items(waiting, rec["mode"], rec["id"], since))


def submit(
    task: Any,
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
    executor: Executor,
    opts: dict[str, Any],
) -> tuple[SweepHandle | None, list[str]]:
    """Writes a sweep for ``calls`` when some are unsettled and starts its workers.

    Returns (handle, or None when every item is already settled; the item keys).
    """
    if importing_main:
        raise RuntimeError(
            "a runcache worker imported your script to find the task, and the script started a "
            "sweep at import time. Put the code that starts sweeps under "
            "`if __name__ == \"__main__\":` (workers import the script, as multiprocessing does)."
        )
    mode = opts.get("mode", "cached")
    if mode not in ("cached", "retry", "force"):
        raise ValueError(
            f"a sweep runs in mode cached, retry or force, not {mode!r} (workers must write entries)"
        )
    store = _config.open_store(opts)
    keys = [task._key_of(args, kwargs) for args, kwargs in calls]
    now_ms = int(time.time() * 1000)
    sweep_id = _new_id(task.name)
    # Settled at submit time (force: nothing is).
    states = (
        store.statuses(keys, mode, sweep_id, now_ms) if mode != "force" else [False] * len(keys)
    )
    queued = states.count(False)
    if queued == 0:
        return None, keys
    runner = task._runner()
    record = {
        "format": 1,
        "id": sweep_id,
        "created_unix_ms": now_ms,
        "namespace": task.name,
        "version": task._key_version,
        "mode": mode,
        "count": len(keys),
        "keys": store.save_sweep_keys(keys),
        "payload": json.loads(store.put_value(calls)),
        "runner": runner,
        "resources": dict(task.resources),
        "executor": {"kind": type(executor).__name__},
    }
    store.save_sweep(json.dumps(record))
    handle = SweepHandle(store, _config.store_location(opts), record, executor, queued, keys)
    executor.launch(handle)
    return handle, keys


def sweep(sweep_id: str, store: Any = None, executor: Executor | None = None) -> SweepHandle:
    """Reattaches to a sweep from any session: its status, results and worker command.
    ``store`` defaults to the configured store; pass an executor to start more workers
    (``handle.executor.launch(handle)``) or to let ``wait`` restart them."""
    opts = _config.current({} if store is None else {"store": store})
    st = _config.open_store(opts)
    record = json.loads(st.sweep(sweep_id))
    return SweepHandle(st, _config.store_location(opts), record, executor)
