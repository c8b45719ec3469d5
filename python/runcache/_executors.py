"""Executors start workers; they never run the queue themselves. The store is the single source
of truth: a sweep's items are in the store, workers claim them with the engine's leases, and
every executor only decides where `python -m runcache worker` runs.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Protocol

from runcache import _config, _results
from runcache._progress import Progress


class SweepView(Protocol):
    """What an executor may use of the sweep it runs (``runcache.SweepHandle`` has it all):
    executors sit below the sweep machinery and see a sweep only through this view."""

    @property
    def id(self) -> str:
        """The sweep id."""

    @property
    def queued(self) -> int:
        """Items waiting for a worker."""

    @property
    def resources(self) -> dict[str, float]:
        """What one item needs, as declared by the task."""

    @property
    def executor_info(self) -> dict[str, Any]:
        """What the executor saved in the sweep record (job ids, ...)."""

    def save_executor_info(self, info: dict[str, Any]) -> None:
        """Merges ``info`` into the sweep record's executor section and saves it."""

    def worker_argv(
        self,
        max_items: int | None = None,
        idle_exit: float | None = None,
        worker_index: int | None = None,
    ) -> list[str]:
        """The exact command one worker runs."""

    def worker_env(self) -> dict[str, str]:
        """Environment variables a worker needs (PYTHONPATH of the submitter)."""

    def worker_command(self) -> str:
        """The worker command as one shell line (for stall reports and Manual)."""


@dataclasses.dataclass
class WorkerState:
    """What an executor knows about the workers it started for one sweep.

    ``alive``: workers running or still waiting to start (e.g. pending in SLURM). ``problems``:
    human-readable reports of workers that ended without finishing (with their log paths).
    ``fatal``: workers could not even start on the sweep (exit status 2: the task cannot be
    imported, the code differs from the submitter's): starting more would fail the same way.
    """

    alive: int
    problems: list[str] = dataclasses.field(default_factory=list)
    fatal: bool = False


class Executor(abc.ABC):
    """Base class: how the workers of a sweep are started.

    ``launch`` starts workers for ``sweep.queued`` items; ``poll`` reports whether any are still
    alive; ``cancel`` stops them. ``launch`` may be called again for the same sweep when every
    worker ended with items left (a resubmission).
    """

    #: Whether a caller interrupted while waiting (Ctrl-C, a notebook's interrupt) stops the
    #: workers. True for workers that live with the caller (``Local``); cluster jobs are meant
    #: to outlive the session (reattach with ``runcache.sweep(ID)``).
    stop_on_interrupt = False

    @abc.abstractmethod
    def launch(self, sweep: SweepView) -> None:
        """Starts workers for the sweep's queued items."""

    @abc.abstractmethod
    def poll(self, sweep: SweepView) -> WorkerState:
        """Reports the sweep's workers: how many are alive, and what ended badly."""

    @abc.abstractmethod
    def cancel(self, sweep: SweepView) -> None:
        """Stops the sweep's workers."""

    def pause(self, sweep: SweepView, seconds: float) -> None:
        """Waits between two looks at the sweep's progress. An executor that can see its
        workers end returns early when one does (it usually means the sweep is drained)."""
        time.sleep(seconds)


class Inline:
    """Runs every item in the calling process, one after the other (debugging, notebooks). It
    starts no workers and writes no sweep: each item is an ordinary call of the task."""

    def __repr__(self) -> str:
        return "runcache.Inline()"

    def run(
        self,
        task: Any,
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        opts: dict[str, Any],
        progress: bool | None,
        wait: bool,
        errors: str,
    ) -> list[Any]:
        """Computes (or loads) each call in order through the task itself."""
        store = _config.open_store(opts)
        keys = [task._key_of(a, k) for a, k in calls]
        mode = opts.get("mode", "cached")
        # What is already settled is loaded, not computed (force and off settle nothing).
        before = (
            store.statuses(keys, mode, "", int(time.time() * 1000))
            if mode in ("cached", "retry", "read-only")
            else [False] * len(keys)
        )
        counts = _results.SweepStatus(
            id="", total=len(keys), pending=len(keys), running=0, completed=0, cached=0,
            failed=0, interrupted=0, items=[],
        )
        bar = Progress(task.name, len(keys), enabled=progress)
        results: list[Any] = []
        failures: list[_results.Failure] = []
        try:
            for i, (args, kwargs) in enumerate(calls):
                bar.update(counts)
                counts.pending -= 1
                try:
                    results.append(task(*args, **kwargs))
                    if before[i]:
                        counts.cached += 1
                    else:
                        counts.completed += 1
                except Exception as e:  # noqa: BLE001 - recorded per item
                    failure = _results.failure_of(store, i, keys[i])
                    if failure.error_type == "runcache.Missing":  # nothing recorded (mode off)
                        failure = _results.Failure(
                            i, keys[i], f"{type(e).__module__}.{type(e).__qualname__}", str(e),
                            traceback.format_exc(),
                        )
                    counts.failed += 1
                    failures.append(failure)
                    results.append(failure)
            bar.update(counts)
        finally:
            bar.close()
        if not wait:
            return _results.jobs_of(store, keys, None, opts.get("mmap", True))
        if failures and errors == "raise":
            raise _results.SweepError(_results.summarize(failures, len(keys)), failures, results)
        return results


def check(executor: Any) -> None:
    """Refuses what is not an executor, naming the ones there are."""
    if not isinstance(executor, Executor):
        raise TypeError(
            f"executor={executor!r} is not an executor: use runcache.Local(), runcache.Inline(), "
            "runcache.Manual(), runcache.Slurm(...), runcache.Dask(client), runcache.Ray() or a "
            "subclass of runcache.Executor"
        )


class Local(Executor):
    """Runs items in ``workers`` local worker processes (default: one per CPU this process may use).

    ``resources`` declares the capacity shared by everything this executor runs, e.g.
    ``Local(workers=8, resources={"ram": 64, "gpu": 2})``; with a task declared
    ``@runcache.task(resources={"ram": 16})`` at most 4 of its items run at once. Worker output
    goes to ``log_dir`` (default: a per-sweep folder under the system temp dir). Without
    ``resources``, task needs are not limited (only the number of workers is).
    """

    stop_on_interrupt = True

    def __init__(
        self,
        workers: int | None = None,
        resources: dict[str, float] | None = None,
        log_dir: str | None = None,
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers={workers}: give at least 1")
        self.workers = workers or usable_cpus()
        self.capacity = {str(k): float(v) for k, v in (resources or {}).items()}
        self.log_dir = log_dir
        self._procs: dict[str, list[tuple[subprocess.Popen[bytes], str, dict[str, float]]]] = {}
        # Per sweep: read ends of the pipes whose write end each worker closes when it is done
        # with the sweep (before its interpreter shuts down, which takes tens of ms).
        self._done_pipes: dict[str, dict[int, subprocess.Popen[bytes]]] = {}
        self._wanted: dict[str, int] = {}
        self._started: dict[str, int] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        res = f", resources={self.capacity}" if self.capacity else ""
        return f"runcache.Local(workers={self.workers}{res})"

    def _need(self, sweep: SweepView) -> dict[str, float]:
        """What one item of the sweep takes from the capacity (nothing when none is declared)."""
        return sweep.resources if self.capacity else {}

    def _check_fits(self, need: dict[str, float]) -> None:
        for name, amount in need.items():
            if amount == 0:
                continue
            if name not in self.capacity:
                raise ValueError(
                    f"the task needs resource {name!r} ({amount}), which {self!r} does not "
                    f"declare: pass resources={{{name!r}: ...}} to the executor"
                )
            if amount > self.capacity[name]:
                raise ValueError(
                    f"one item needs {name}={amount} but {self!r} has only "
                    f"{self.capacity[name]}: raise the capacity or lower the task's need"
                )

    def _in_use(self) -> tuple[int, dict[str, float]]:
        live = 0
        used: dict[str, float] = {}
        for procs in self._procs.values():
            for proc, _, need in procs:
                if proc.poll() is None:
                    live += 1
                    for k, v in need.items():
                        used[k] = used.get(k, 0.0) + v
        return live, used

    def launch(self, sweep: SweepView) -> None:
        self._check_fits(self._need(sweep))
        with self._lock:
            self._wanted[sweep.id] = self._wanted.get(sweep.id, 0) + max(
                1, min(self.workers, sweep.queued)
            )
            self._top_up(sweep)

    def _top_up(self, sweep: SweepView) -> None:
        need = self._need(sweep)
        while self._wanted.get(sweep.id, 0) > 0:
            live, used = self._in_use()
            if live >= self.workers:
                return
            if any(used.get(k, 0.0) + v > self.capacity.get(k, 0.0) + 1e-9 for k, v in need.items() if v):
                return
            self._start(sweep, need)
            self._wanted[sweep.id] -= 1

    def _start(self, sweep: SweepView, need: dict[str, float]) -> None:
        base = self.log_dir or os.path.join(tempfile.gettempdir(), "runcache-workers")
        folder = os.path.join(base, sweep.id)
        os.makedirs(folder, exist_ok=True)
        index = self._started.get(sweep.id, 0)
        self._started[sweep.id] = index + 1
        log = os.path.join(folder, f"worker-{index}.log")
        done_r, done_w = os.pipe()
        env = {**os.environ, **sweep.worker_env(), DONE_FD: str(done_w)}
        try:
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    sweep.worker_argv(worker_index=index),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    pass_fds=(done_w,),
                )
        except BaseException:
            os.close(done_r)
            raise
        finally:
            os.close(done_w)
        self._procs.setdefault(sweep.id, []).append((proc, log, need))
        self._done_pipes.setdefault(sweep.id, {})[done_r] = proc
        if index == 0:
            sweep.save_executor_info({"kind": "Local", "log_dir": folder})

    def poll(self, sweep: SweepView) -> WorkerState:
        with self._lock:
            self._top_up(sweep)
            procs = self._procs.get(sweep.id, [])
            alive = sum(p.poll() is None for p, _, _ in procs) + self._wanted.get(sweep.id, 0)
            pipes = self._done_pipes.get(sweep.id, {})
            for fd in [fd for fd, p in pipes.items() if p.returncode is not None]:
                del pipes[fd]
                os.close(fd)
            ended = [(p, log) for p, log, _ in procs if p.returncode not in (None, 0)]
            problems = [
                f"worker pid {p.pid} exited with {_exit_text(p.returncode)} (log: {log})"
                + "".join(f"\n    | {line}" for line in _tail(log))
                for p, log in ended
            ]
            fatal = bool(procs) and all(p.returncode == WORKER_SETUP_FAILED for p, _, _ in procs)
        return WorkerState(alive=alive, problems=problems, fatal=fatal)

    def pause(self, sweep: SweepView, seconds: float) -> None:
        """Returns after ``seconds``, or as soon as a worker is done with the sweep (it closed
        its end of the pipe: it found nothing left, or it died)."""
        pipes = self._done_pipes.get(sweep.id, {})
        if not pipes:
            time.sleep(seconds)
            return
        ready, _, _ = select.select(list(pipes), [], [], seconds)
        for fd in ready:
            if not os.read(fd, 64):  # end of file: that worker is done
                del pipes[fd]
                os.close(fd)

    def cancel(self, sweep: SweepView) -> None:
        with self._lock:
            self._wanted[sweep.id] = 0
            procs = self._procs.get(sweep.id, [])
            for p, _, _ in procs:
                if p.poll() is None:
                    p.terminate()
            deadline = time.monotonic() + 10
            for p, _, _ in procs:
                try:
                    p.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. a container's or a SLURM
    allocation's cpuset), not every CPU of the machine."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


#: Environment variable naming the file descriptor a worker closes when it is done with its
#: sweep (set by ``Local``).
DONE_FD = "RUNCACHE_DONE_FD"


#: Exit status of a worker that could not set up (import the task, read the sweep).
WORKER_SETUP_FAILED = 2


def _tail(path: str, lines: int = 3) -> list[str]:
    """The last lines of a worker log (what it said before it died)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class Manual(Executor):
    """Prints the worker command; you run it on any machine (or several) that reaches the store.
    The caller then waits and shows progress until the sweep is drained."""

    def __init__(self, file: Any = None) -> None:
        self.file = file
        self.commands: list[str] = []

    def __repr__(self) -> str:
        return "runcache.Manual()"

    def launch(self, sweep: SweepView) -> None:
        cmd = sweep.worker_command()
        self.commands.append(cmd)
        out = self.file or sys.stdout
        print(
            f"runcache: sweep {sweep.id}: {sweep.queued} item(s) to compute. Run this command "
            "(as many times, on as many machines reaching the store, as you like):\n"
            f"  {cmd}",
            file=out,
            flush=True,
        )

    def poll(self, sweep: SweepView) -> WorkerState:
        # Workers run outside our sight: wait for the store to say the sweep is drained.
        return WorkerState(alive=1)

    def cancel(self, sweep: SweepView) -> None:
        print(f"runcache: stop the workers of sweep {sweep.id} yourself (Ctrl-C or kill them)",
              file=self.file or sys.stdout)
