"""``runcache.Dask``: a sweep's workers run as tasks of a Dask cluster (``distributed``).

Each Dask task runs one runcache worker (``_remote.run_worker``: a child process of the Dask
worker) that claims items from the store until the sweep is drained; the task's result is only
that worker's exit status. Items, arguments and results never pass through the scheduler.
"""

from __future__ import annotations

import secrets
from typing import Any

from runcache import _remote
from runcache._executors import Executor, SweepView, WorkerState


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ImportError(
            "runcache.Dask needs Dask's distributed scheduler: pip install distributed"
        ) from None
    return distributed


def _stop_event_name(sweep_id: str) -> str:
    """The Dask ``Event`` that tells a sweep's workers to stop (known to every session)."""
    return f"runcache-stop-{sweep_id}"


def _dataset_name(sweep_id: str) -> str:
    """The published dataset holding a sweep's Dask futures (for reattaching sessions)."""
    return f"runcache-{sweep_id}"


def worker_task(argv: list[str], env: dict[str, str], log_dir: str | None, sweep_id: str,
                name: str) -> dict[str, Any]:
    """The Dask task: runs one worker until it ends or the sweep's stop event is set."""
    distributed = _distributed()
    stop = distributed.Event(_stop_event_name(sweep_id))
    log = _remote.log_path(log_dir, sweep_id, name)
    return _remote.run_worker(argv, env, log, lambda seconds: stop.wait(timeout=seconds))


class Dask(Executor):
    """Runs a sweep's workers on a Dask cluster: ``Dask(client)`` with a ``distributed.Client``,
    ``Dask(address="tcp://scheduler:8786")``, or ``Dask()`` for the session's current client.

    ``workers`` is how many worker loops a launch starts (default: one per thread of the
    cluster's workers, at most one per queued item); each holds one Dask thread until the sweep
    is drained. A task's declared resources become Dask resource restrictions when the cluster's
    workers declare resources (``dask worker --resources "gpu=1"``). Worker output goes to
    ``log_dir`` on each Dask worker's machine (default: a per-sweep folder under its temp dir).
    The workers need the store at the same location and the task's code on their import path.
    Tasks outlive the submitting session: reattach with
    ``runcache.sweep(ID, executor=runcache.Dask(address=...))``.
    """

    def __init__(
        self,
        client: Any = None,
        address: str | None = None,
        workers: int | None = None,
        log_dir: str | None = None,
    ) -> None:
        if client is not None and address is not None:
            raise ValueError("give either client= or address=, not both")
        if workers is not None and workers < 1:
            raise ValueError(f"workers={workers}: give at least 1")
        _distributed()
        self._client = client
        self.address = address
        self.workers = workers
        self.log_dir = log_dir
        self._futures: dict[str, list[Any]] = {}
        self._ended: dict[str, dict[str, Any]] = {}  # per Dask key: the worker's exit status
        self._published: set[str] = set()  # sweeps whose futures are published on the scheduler

    def __repr__(self) -> str:
        shown = [f"address={self.address!r}"] if self.address else []
        if self.workers is not None:
            shown.append(f"workers={self.workers}")
        return f"runcache.Dask({', '.join(shown)})"

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` this executor submits with (connected on first use)."""
        if self._client is None:
            distributed = _distributed()
            if self.address is not None:
                self._client = distributed.Client(self.address)
            else:
                try:
                    self._client = distributed.get_client()
                except ValueError:
                    raise ValueError(
                        "runcache.Dask() found no Dask client in this session: pass "
                        "client=distributed.Client(...) or address='tcp://scheduler:8786'"
                    ) from None
        return self._client

    def _restrictions(self, sweep: SweepView) -> dict[str, float] | None:
        """The Dask resources one worker loop asks for: the task's declared needs, when the
        cluster's workers declare resources at all (otherwise needs are not limited)."""
        need = {k: v for k, v in sweep.resources.items() if v}
        declared: dict[str, float] = {}
        for w in self.client.scheduler_info().get("workers", {}).values():
            for k, v in (w.get("resources") or {}).items():
                declared[k] = max(declared.get(k, 0.0), float(v))
        if not need or not declared:
            return None
        for name, amount in need.items():
            if amount > declared.get(name, 0.0):
                have = f"at most {declared[name]}" if name in declared else "none"
                raise ValueError(
                    f"one item needs {name}={amount} but the Dask workers declare {have}: "
                    f"start workers with --resources \"{name}=...\" or lower the task's need"
                )
        return need

    def _slots(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    def launch(self, sweep: SweepView) -> None:
        client = self.client
        distributed = _distributed()
        restrictions = self._restrictions(sweep)
        futures = self._tracked(sweep)
        n = max(1, min(self.workers or self._slots(), sweep.queued))
        start = len(futures)
        launch = secrets.token_hex(3)
        # A stop left from an earlier cancel would end the new workers at once.
        distributed.Event(_stop_event_name(sweep.id), client=client).clear()
        new = [
            client.submit(
                worker_task,
                sweep.worker_argv(worker_index=start + i),
                sweep.worker_env(),
                self.log_dir,
                sweep.id,
                f"dask-{start + i}",
                key=f"runcache-worker-{sweep.id}-{launch}-{start + i}",
                resources=restrictions,
                pure=False,
            )
            for i in range(n)
        ]
        futures.extend(new)
        # Published on the scheduler: the tasks keep running when this session ends, and another
        # session can find them by sweep id.
        self._unpublish(sweep)
        client.publish_dataset([f for f in futures if f.key not in self._ended],
                               name=_dataset_name(sweep.id))
        self._published.add(sweep.id)
        sweep.save_executor_info({
            "kind": "Dask", "scheduler": client.scheduler.address,
            "tasks": [f.key for f in futures],
        })

    def _restore(self, sweep: SweepView) -> list[Any]:
        """The sweep's futures as published by the session that launched them (none if gone)."""
        try:
            futures = list(self.client.get_dataset(_dataset_name(sweep.id)))
        except KeyError:
            return []
        self._published.add(sweep.id)
        return futures

    def _tracked(self, sweep: SweepView) -> list[Any]:
        futures = self._futures.get(sweep.id)
        if futures is None:
            futures = self._futures[sweep.id] = self._restore(sweep)
        return futures

    def poll(self, sweep: SweepView) -> WorkerState:
        futures = self._tracked(sweep)
        alive = 0
        for f in futures:
            if f.key in self._ended:
                continue
            if f.status in ("pending", "lost"):
                alive += 1  # running, waiting for a thread, or being rescheduled
            elif f.status == "finished":  # fetched once: a finished task never changes
                self._ended[f.key] = f.result()
            elif f.status == "error":
                self._ended[f.key] = {"error": repr(f.exception())}
            else:  # cancelled
                self._ended[f.key] = {"stopped": True}
        ended = [(f.key, self._ended[f.key]) for f in futures if f.key in self._ended]
        if futures and alive == 0 and sweep.id in self._published:
            # Every task ended: released, so that the scheduler does not run a finished one
            # again when the Dask worker holding its (tiny) result goes away.
            for f in futures:
                f.release()
            self._unpublish(sweep)
        return _remote.worker_state("Dask", ended, alive)

    def pause(self, sweep: SweepView, seconds: float) -> None:
        """Returns after ``seconds``, or as soon as one of the sweep's Dask tasks ends."""
        running = [f for f in self._futures.get(sweep.id, []) if f.key not in self._ended]
        if not running:
            super().pause(sweep, seconds)
            return
        try:
            _distributed().wait(running, timeout=seconds, return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass

    def cancel(self, sweep: SweepView) -> None:
        """Tells every worker of the sweep to stop (their running items are recorded interrupted
        and released), waits up to 30 s for the Dask tasks to end, then cancels what is left."""
        client = self.client
        distributed = _distributed()
        distributed.Event(_stop_event_name(sweep.id), client=client).set()
        futures = [f for f in self._tracked(sweep) if f.key not in self._ended]
        try:
            distributed.wait(futures, timeout=30)
        except TimeoutError:
            pass
        client.cancel([f for f in futures if not f.done()], force=True)
        self.poll(sweep)  # records how each task ended, releases them, unpublishes

    def _unpublish(self, sweep: SweepView) -> None:
        if sweep.id in self._published:
            self._published.discard(sweep.id)
            try:
                self.client.unpublish_dataset(_dataset_name(sweep.id))
            except KeyError:  # another session unpublished it
                pass
