"""``python -m runcache worker``: claims the items of one sweep, computes them, commits their
entries, and keeps pulling until the sweep is drained.

Claiming is the engine's compute-once protocol (``Store.claim``): an item whose entry settles
it is skipped, an item another live worker holds is revisited later, anything else is leased,
computed and committed, with its stdout/stderr captured into the entry. Each claim looks at
one item; a worker walks the item list from its own starting point and then revisits only the
items others held, so no claim scans the queue.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import runpy
import sys
import time
from typing import Any

from runcache import _config, _sweep
from runcache._executors import DONE_FD, WORKER_SETUP_FAILED
from runcache._task import Terminated, _install_sigterm


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="runcache worker",
        description="Compute the items of a sweep until it is drained.",
    )
    p.add_argument("--store", action="append", required=True,
                   help="store location (repeat for a tiered store, nearest first)")
    p.add_argument("--sweep", required=True, help="sweep id (see `runcache status`)")
    p.add_argument("--max-items", type=int, default=None,
                   help="exit after computing this many items")
    p.add_argument("--idle-exit", type=float, default=None,
                   help="exit after this many seconds without anything to claim")
    p.add_argument("--worker-index", type=int, default=None,
                   help="where in the item list to start (default: SLURM_ARRAY_TASK_ID or random)")
    return p


def _say(msg: str) -> None:
    print(f"runcache worker {os.getpid()}: {msg}", file=sys.stderr, flush=True)


def load_callable(runner: dict[str, Any]) -> Any:
    """Imports the task a sweep runs, as the submitting process named it."""
    module_name, qualname = runner["module"], runner["qualname"]
    if module_name == "__main__":
        path = runner.get("main_file")
        if not path:
            raise RuntimeError(
                "the sweep's task was defined in an interactive session (no script file), "
                "which a worker cannot import: move it into a module, or use runcache.Inline()"
            )
        path = _snapshot_copy(path)
        # Like multiprocessing: run the script under another name (its `if __name__ ==
        # "__main__":` block stays off) and let pickled `__main__.X` references resolve to it.
        _sweep.importing_main = True
        try:
            namespace = runpy.run_path(path, run_name="__mp_main__")
        finally:
            _sweep.importing_main = False
        module = type(sys)("__mp_main__")
        module.__dict__.update(namespace)
        sys.modules["__mp_main__"] = module
        sys.modules["__main__"] = module
    else:
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    task = getattr(obj, "task", None)
    if task is None:
        raise RuntimeError(f"{module_name}.{qualname} is not a runcache task")
    return task


def _snapshot_copy(path: str) -> str:
    """The script itself, or its copy when the executor took a snapshot of the submitter's code
    (``runcache.Slurm(snapshot=True)`` exports RUNCACHE_SNAPSHOT, the copy, and
    RUNCACHE_SNAPSHOT_OF, the folder it copied): modules come from the copy through PYTHONPATH,
    and the script must too."""
    copy, original = os.environ.get("RUNCACHE_SNAPSHOT"), os.environ.get("RUNCACHE_SNAPSHOT_OF")
    if not copy or not original:
        return path
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(original))
    candidate = os.path.join(copy, rel)
    if rel.startswith(os.pardir) or not os.path.isfile(candidate):
        return path
    return candidate


class _Capture:
    """Sends file descriptors 1 and 2 (and Python's sys.stdout/stderr) to the worker's log file
    while one item runs. The file stays open between items and is truncated for the next one,
    unless the store took it (an item that printed something): then it is created again."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def _ready(self) -> int:
        fd = self.fd
        if fd is not None:
            try:
                st = os.stat(self.path)
                mine = os.fstat(fd)
                # Reuse it only if it is still our file and the store holds no link to it.
                if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino) and mine.st_nlink == 1:
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        return self.fd

    def __call__(self) -> "_Capture":
        return self

    def __enter__(self) -> "_Capture":
        sys.stdout.flush()
        sys.stderr.flush()
        fd = self._ready()
        self.saved = (os.dup(1), os.dup(2))
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os.dup2(self.saved[0], 1)
            os.dup2(self.saved[1], 2)
            os.close(self.saved[0])
            os.close(self.saved[1])

    def close(self) -> None:
        """Closes and removes the worker's log file."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if os.path.exists(self.path):
            os.unlink(self.path)


def run(argv: list[str]) -> int:
    """Runs a worker; returns its exit code."""
    args = _parser().parse_args(argv)
    locs = args.store
    store = _config.open_store({"store": locs if len(locs) > 1 else locs[0]})
    record = json.loads(store.sweep(args.sweep))
    runner = record.get("runner") or {}
    if runner.get("kind") != "python":
        _say(f"sweep {args.sweep} has no Python runner; nothing this worker can run")
        return WORKER_SETUP_FAILED
    try:
        task = load_callable(runner)
    except Exception as e:  # noqa: BLE001 - reported with the fix, then exit
        _say(f"cannot import the task of sweep {args.sweep}: {type(e).__name__}: {e}")
        return WORKER_SETUP_FAILED
    if (task.name, task._key_version) != (record["namespace"], record["version"]):
        _say(
            f"this worker's code defines {task.name} version {task._key_version}, but sweep "
            f"{args.sweep} was submitted for {record['namespace']} version {record['version']}: "
            "run the worker with the submitter's code (same files, same PYTHONPATH)"
        )
        return WORKER_SETUP_FAILED
    calls = store.get_value(json.dumps(record["payload"]))
    keys = store.sweep_keys(args.sweep)
    n = len(keys)
    start = args.worker_index
    if start is None and os.environ.get("SLURM_ARRAY_TASK_ID", "").isdigit():
        offset = os.environ.get("RUNCACHE_TASK_OFFSET", "0")
        start = int(os.environ["SLURM_ARRAY_TASK_ID"]) + (int(offset) if offset.isdigit() else 0)
    if start is None:
        start = random.randrange(max(n, 1))
    # Spread workers over the list (golden-ratio steps) so they rarely collide.
    offset = int((start * 0.6180339887 % 1.0) * n) if n else 0
    order = [(offset + i) % n for i in range(n)]
    scratch = store.scratch_dir()
    os.makedirs(scratch, exist_ok=True)
    log_path = os.path.join(scratch, f"worker-{os.getpid()}-{random.getrandbits(32):08x}.log")
    capture = _Capture(log_path)
    _install_sigterm()
    computed = failed = 0
    last_progress = time.monotonic()
    pending = order
    # Items others hold are revisited soon (a short item is usually done a few ms later), then
    # less and less often.
    delay = 0.005
    _say(f"sweep {args.sweep}: {n} items of {task.name}")
    try:
        while pending:
            busy = []
            for i in pending:
                call_args, call_kwargs = calls[i]
                t0 = time.monotonic()
                # The item's output goes to this worker's log file; a non-empty one is moved
                # into the store with the entry (the next item recreates it).
                outcome = task._claim(
                    store, record, keys[i], call_args, call_kwargs, log_path,
                    capture=capture,
                )
                if outcome == "busy":
                    busy.append(i)
                    continue
                if outcome.startswith("computed:"):
                    last_progress = time.monotonic()
                    status = outcome.split(":", 1)[1]
                    computed += status == "completed"
                    failed += status == "failed"
                    _say(f"item {i} ({keys[i][:12]}) {status} in {time.monotonic() - t0:.2f} s")
                    if args.max_items is not None and computed + failed >= args.max_items:
                        _say(f"computed {args.max_items} item(s) (--max-items); exiting")
                        return 0
            pending = busy
            if pending:
                if args.idle_exit is not None and time.monotonic() - last_progress > args.idle_exit:
                    _say(f"nothing to claim for {args.idle_exit} s (--idle-exit); exiting")
                    return 0
                time.sleep(delay)
                delay = min(delay * 1.5, 1.0)
    except Terminated:
        _say("SIGTERM: the running item was recorded interrupted and released; exiting")
        return 0
    finally:
        capture.close()
    _say(f"sweep {args.sweep} drained: computed {computed}, failed {failed}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m runcache worker``."""
    done_fd = _done_fd()
    try:
        return run(list(sys.argv[2:] if argv is None else argv))
    finally:
        # Closing it tells the executor that this worker is done, before the interpreter's
        # shutdown (tens of ms), not after.
        if done_fd is not None:
            os.close(done_fd)


def _done_fd() -> int | None:
    """The descriptor ``Local`` watches, taken out of the environment and made non-inheritable
    so that nothing the tasks start sees it."""
    value = os.environ.pop(DONE_FD, "")
    if not value.isdigit():
        return None
    fd = int(value)
    try:
        os.set_inheritable(fd, False)
    except OSError:  # not open: started by hand with a stale environment
        return None
    return fd

