"""What a cluster engine's task runs (``Dask``, ``Ray``): one runcache worker as a child process,
with only its exit status as the task's result.

The worker is a real process of its own, not a loop inside the engine's worker: a kill of it is
a real process death (its leases die with it), it captures each item's output by redirecting
its own file descriptors (which threads of a shared engine process cannot do), and it takes
SIGTERM as every worker does (the running item is recorded interrupted and released). The child
is told to receive SIGTERM when the engine's process dies, so an engine worker that is killed
or preempted never leaves a runcache worker behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from typing import Any, Callable

from runcache._executors import WORKER_SETUP_FAILED, WorkerState, _exit_text, _tail

#: The child's program: it asks Linux for SIGTERM when its parent (the engine's process, whose pid
#: is the first argument) ends, checks that the parent has not already ended, then runs the
#: worker with the remaining arguments. (Done in the child itself: a ``preexec_fn`` is not safe in
#: the threaded processes the engines run tasks in.)
_CHILD = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0)\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('runcache worker: the engine process that started it is gone')\n"
    "from runcache import _worker\n"
    "sys.exit(_worker.main(sys.argv[2:]))\n"
)


def log_path(log_dir: str | None, sweep_id: str, name: str) -> str:
    """Where one worker's own output goes, on the machine that runs it."""
    base = log_dir or os.path.join(tempfile.gettempdir(), "runcache-workers")
    folder = os.path.join(base, sweep_id)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{name}.log")


def run_worker(
    argv: list[str],
    env: dict[str, str],
    log: str,
    stop_requested: Callable[[float], bool],
) -> dict[str, Any]:
    """Runs the worker command until it exits or ``stop_requested(seconds)`` (which waits up to
    that long for a stop) says to stop it; returns its status as a small dict: exit ``code``,
    ``log`` path, the log's last lines, ``host`` and ``pid``.

    The interpreter is this process's own (the one the engine runs, which has runcache
    installed), not the submitter's path, which may not exist on this machine.
    """
    status: dict[str, Any] = {"host": socket.gethostname(), "log": log, "pid": None}
    if stop_requested(0):
        return {**status, "code": None, "tail": [], "stopped": True}
    # The worker's own arguments (after `-m runcache worker`), run by this interpreter.
    command = [sys.executable, "-c", _CHILD, str(os.getpid()), *argv[argv.index("worker") + 1:]]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    status["pid"] = proc.pid
    stopped = False
    try:
        while proc.poll() is None:
            if stop_requested(0.25) and proc.poll() is None:
                stopped = True
                _stop(proc)
    except BaseException:  # the engine cancels the task (Ray raises KeyboardInterrupt)
        _stop(proc)
        raise
    return {**status, "code": proc.returncode, "tail": _tail(log), "stopped": stopped}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the item is recorded interrupted and released), SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def problem(label: str, status: dict[str, Any]) -> str | None:
    """One human-readable report of a worker that ended badly (None if it ended well)."""
    code = status.get("code")
    if code in (0, None) or status.get("stopped"):
        return None
    where = f" on {status['host']}" if status.get("host") else ""
    return (
        f"{label}: worker pid {status.get('pid')}{where} exited with {_exit_text(code)} "
        f"(log: {status.get('log')})"
        + "".join(f"\n    | {line}" for line in status.get("tail") or [])
    )


def setup_failed(status: dict[str, Any]) -> bool:
    """The worker could not start on the sweep (starting more would fail the same way)."""
    return status.get("code") == WORKER_SETUP_FAILED


def worker_state(kind: str, ended: list[tuple[str, dict[str, Any]]], alive: int) -> WorkerState:
    """What ``poll`` reports for a cluster engine's worker tasks: ``alive`` still running, and
    ``ended`` (task name, status) the others, each reported if it failed or ended badly; fatal
    once every task ended because its worker could not start."""
    problems = [
        f"{kind} task {name} failed: {status['error']}" if "error" in status
        else problem(f"{kind} task {name}", status)
        for name, status in ended
    ]
    fatal = bool(ended) and alive == 0 and all(setup_failed(s) for _, s in ended)
    return WorkerState(alive=alive, problems=[p for p in problems if p], fatal=fatal)
