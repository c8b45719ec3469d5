"""``runcache.Ray``: a sweep's workers run as tasks of a Ray cluster.

Each Ray task runs one runcache worker (``_remote.run_worker``: a child process of the Ray
worker) that claims items from the store until the sweep is drained; the task's result is only
that worker's exit status. Items, arguments and results never pass through Ray's object store.
A small named actor per sweep (no CPU) carries what other sessions need: the stop request and
which worker tasks started and ended.
"""

from __future__ import annotations

import time
from typing import Any

from runcache import _remote
from runcache._executors import Executor, SweepView, WorkerState

#: The Ray namespace of the per-sweep control actors (a driver's own namespace is anonymous).
NAMESPACE = "runcache"


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError("runcache.Ray needs Ray: pip install ray") from None
    return ray


#: A worker not heard of for this long is no longer counted alive by other sessions (its task
#: asks the control actor for a stop every 0.5 s; Ray ends a driver's tasks with the driver).
SILENCE = 10.0


class _Control:
    """One sweep's control actor: a stop flag and the workers' start, end and last-seen
    reports."""

    def __init__(self) -> None:
        self.stop_requested = False
        self.seen: dict[str, float] = {}
        self.ended: dict[str, dict[str, Any]] = {}

    def stop(self) -> None:
        self.stop_requested = True

    def clear(self) -> None:
        self.stop_requested = False

    def stopped(self, name: str) -> bool:
        self.seen[name] = time.monotonic()
        return self.stop_requested

    def begin(self, name: str) -> bool:
        self.ended.pop(name, None)  # Ray runs a task again after its process died
        return self.stopped(name)

    def end(self, name: str, status: dict[str, Any]) -> None:
        self.ended[name] = status

    def report(self) -> tuple[list[str], dict[str, dict[str, Any]]]:
        """The workers heard of lately and not ended, and how the ended ones ended."""
        now = time.monotonic()
        live = [n for n, t in self.seen.items() if n not in self.ended and now - t < SILENCE]
        return sorted(live), dict(self.ended)


def _control_name(sweep_id: str) -> str:
    return f"runcache-{sweep_id}"


def _control(sweep_id: str, create: bool) -> Any:
    """The sweep's control actor (created when ``create``), or None if there is none."""
    ray = _ray()
    if create:
        actor = ray.remote(num_cpus=0)(_Control)
        return actor.options(
            name=_control_name(sweep_id), namespace=NAMESPACE, lifetime="detached",
            get_if_exists=True,
        ).remote()
    try:
        return ray.get_actor(_control_name(sweep_id), namespace=NAMESPACE)
    except ValueError:
        return None


def worker_task(argv: list[str], env: dict[str, str], log_dir: str | None, sweep_id: str,
                name: str) -> dict[str, Any]:
    """The Ray task: runs one worker until it ends or the sweep's control actor says stop."""
    ray = _ray()
    control = _control(sweep_id, create=False)
    if control is None or ray.get(control.begin.remote(name)):
        return {"code": None, "stopped": True}
    last = [0.0]

    def stop_requested(seconds: float) -> bool:
        # Asked at most every 0.5 s (one actor call); waits in between.
        time.sleep(seconds)
        if time.monotonic() - last[0] < 0.5:
            return False
        last[0] = time.monotonic()
        return bool(ray.get(control.stopped.remote(name)))

    log = _remote.log_path(log_dir, sweep_id, name)
    status = _remote.run_worker(argv, env, log, stop_requested)
    control.end.remote(name, status)
    return status


#: Task resource names that are Ray's own arguments rather than custom resources.
_RAY_ARGUMENTS = {"cpu": "num_cpus", "cpus": "num_cpus", "gpu": "num_gpus", "gpus": "num_gpus"}


class Ray(Executor):
    """Runs a sweep's workers on a Ray cluster: ``Ray()`` uses the session's Ray (or starts or
    joins one with ``ray.init()``), ``Ray(address="ray://head:10001")`` joins a cluster.

    Each worker loop is one Ray task asking for ``num_cpus`` CPUs and ``resources`` (custom Ray
    resources); the task's declared resources come on top: ``cpu``/``gpu`` become Ray's
    ``num_cpus``/``num_gpus``, any other name a custom resource the cluster must have. A launch
    starts as many loops as the cluster's CPUs allow (``workers`` to choose), at most one per
    queued item. Ray ends a driver's tasks when the driver exits (what they completed stays in
    the store, what they held is recorded interrupted); while it runs, another session
    reattaches with ``runcache.sweep(ID, executor=runcache.Ray())`` (after ``ray.init(address)``)
    and sees or cancels them, and its ``wait`` starts workers again once they are gone.
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus: float = 1,
        resources: dict[str, float] | None = None,
        workers: int | None = None,
        log_dir: str | None = None,
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers={workers}: give at least 1")
        _ray()
        self.address = address
        self.num_cpus = float(num_cpus)
        self.resources = {str(k): float(v) for k, v in (resources or {}).items()}
        self.workers = workers
        self.log_dir = log_dir
        self._refs: dict[str, list[tuple[str, Any]]] = {}
        self._ended: dict[tuple[str, str], dict[str, Any]] = {}  # (sweep, task): exit status
        self._dropped: set[str] = set()  # sweeps whose control actor this session removed

    def __repr__(self) -> str:
        shown = [f"address={self.address!r}"] if self.address else []
        if self.num_cpus != 1:
            shown.append(f"num_cpus={self.num_cpus:g}")
        if self.resources:
            shown.append(f"resources={self.resources}")
        return f"runcache.Ray({', '.join(shown)})"

    def _connect(self) -> Any:
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=self.address)
        return ray

    def requests(self, sweep: SweepView) -> dict[str, Any]:
        """Ray's resource arguments for one worker loop of the sweep."""
        opts: dict[str, Any] = {"num_cpus": self.num_cpus}
        custom = dict(self.resources)
        for name, amount in sweep.resources.items():
            if not amount:
                continue
            if name.lower() in _RAY_ARGUMENTS:
                opts[_RAY_ARGUMENTS[name.lower()]] = float(amount)
            else:
                custom[name] = custom.get(name, 0.0) + float(amount)
        if custom:
            opts["resources"] = custom
        return opts

    def _check_fits(self, opts: dict[str, Any]) -> None:
        have = self._connect().cluster_resources()
        wanted = {"CPU": opts.get("num_cpus", 0), "GPU": opts.get("num_gpus", 0),
                  **opts.get("resources", {})}
        for name, amount in wanted.items():
            if amount and amount > have.get(name, 0.0):
                raise ValueError(
                    f"one worker needs {name}={amount:g} but the Ray cluster has "
                    f"{have.get(name, 0.0):g}: add nodes with it (ray start --resources), or "
                    "lower the task's or the executor's request"
                )

    def launch(self, sweep: SweepView) -> None:
        ray = self._connect()
        opts = self.requests(sweep)
        self._check_fits(opts)
        control = _control(sweep.id, create=True)
        self._dropped.discard(sweep.id)
        ray.get(control.clear.remote())  # a stop left from an earlier cancel
        refs = self._refs.setdefault(sweep.id, [])
        n = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // max(
            opts["num_cpus"], 1e-9)))
        n = max(1, min(n, sweep.queued))
        task = ray.remote(worker_task).options(**opts)
        start = len(refs)
        for i in range(start, start + n):
            name = f"ray-{i}"
            ref = task.remote(sweep.worker_argv(worker_index=i), sweep.worker_env(),
                              self.log_dir, sweep.id, name)
            refs.append((name, ref))
        sweep.save_executor_info({"kind": "Ray", "control_actor": _control_name(sweep.id),
                                  "namespace": NAMESPACE, "tasks": [n for n, _ in refs]})

    def poll(self, sweep: SweepView) -> WorkerState:
        refs = self._refs.get(sweep.id)
        if refs is None:
            return self._poll_elsewhere(sweep)
        ray = _ray()
        waiting = [(n, r) for n, r in refs if (sweep.id, n) not in self._ended]
        if waiting:
            ready, _ = ray.wait([r for _, r in waiting], num_returns=len(waiting), timeout=0)
            done = set(ready)
            for n, r in waiting:
                if r in done:
                    try:
                        self._ended[(sweep.id, n)] = ray.get(r)
                    except Exception as e:  # noqa: BLE001 - reported as the task's problem
                        self._ended[(sweep.id, n)] = {"error": f"{type(e).__name__}: {e}"}
        ended = [(n, self._ended[(sweep.id, n)]) for n, _ in refs if (sweep.id, n) in self._ended]
        alive = len(refs) - len(ended)
        state = _remote.worker_state("Ray", ended, alive)
        if alive == 0 and sweep.id not in self._dropped:
            self._dropped.add(sweep.id)
            self._drop_control(sweep)
        return state

    def _poll_elsewhere(self, sweep: SweepView) -> WorkerState:
        """A session that did not launch the tasks: what the control actor was told."""
        self._connect()
        control = _control(sweep.id, create=False)
        if control is None:
            return WorkerState(alive=0)
        live, ended = _ray().get(control.report.remote())
        return _remote.worker_state("Ray", sorted(ended.items()), len(live))

    def _drop_control(self, sweep: SweepView) -> None:
        control = _control(sweep.id, create=False)
        if control is not None:
            _ray().kill(control)

    def pause(self, sweep: SweepView, seconds: float) -> None:
        """Returns after ``seconds``, or as soon as one of the sweep's Ray tasks ends."""
        waiting = [r for n, r in self._refs.get(sweep.id, []) if (sweep.id, n) not in self._ended]
        if not waiting:
            super().pause(sweep, seconds)
            return
        _ray().wait(waiting, num_returns=1, timeout=seconds)

    def cancel(self, sweep: SweepView) -> None:
        """Tells every worker of the sweep to stop (their running items are recorded interrupted
        and released), waits up to 30 s for the Ray tasks to end, then cancels what is left."""
        ray = self._connect()
        control = _control(sweep.id, create=False)
        if control is not None:
            ray.get(control.stop.remote())
        refs = [r for n, r in self._refs.get(sweep.id, []) if (sweep.id, n) not in self._ended]
        if refs:
            _, left = ray.wait(refs, num_returns=len(refs), timeout=30)
            for r in left:
                ray.cancel(r, force=True)
        elif control is not None:  # another session's tasks: wait until they report an end
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                live, _ = ray.get(control.report.remote())
                if not live:
                    break
                time.sleep(0.1)
        if self._refs.get(sweep.id):
            self.poll(sweep)  # records how each task ended, drops the control actor
        elif control is not None:
            ray.kill(control)
