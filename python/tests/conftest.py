import os
import sys

import pytest

import runcache as rc


@pytest.fixture
def store(tmp_path):
    """A fresh store configured as the process default for one test."""
    path = tmp_path / "store"
    rc.configure(store=str(path))
    yield path
    rc.configure(store=None)


@pytest.fixture
def trace(tmp_path):
    """A folder where test tasks note what they computed, and in which process."""
    d = tmp_path / "trace"
    d.mkdir()
    return str(d)


def skip_or_fail(why: str, fix: str) -> None:
    """A test needs something this machine lacks: skip with how to get it, except under CI,
    where everything the tests need is set up by scripts/test, so it is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (under CI, scripts/test provides it)")
    pytest.skip(f"{why}; {fix}")


def run_python(code: str, *, env=None, timeout=120):
    """Runs code in a fresh interpreter (same venv) and returns the CompletedProcess."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=timeout
    )


def wait_for(pred, timeout=120.0):
    """Polls ``pred`` until it returns something true (returned), or fails after ``timeout``."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def counts_per_item(trace):
    """How many times each item was computed, from the trace the sweep test tasks write."""
    import collections

    from sweep_tasks import computed

    return collections.Counter(x for x, _ in computed(trace))


def assert_each_computed_once(trace, items):
    """Every item of ``items`` was computed, and none more than once."""
    per_item = counts_per_item(trace)
    assert set(per_item) == set(items) and max(per_item.values()) == 1, per_item


def starters(trace):
    """Pids of the processes that started an item, by item."""
    import collections

    out = collections.defaultdict(set)
    for n in os.listdir(trace):
        if n.startswith("started-"):
            _, x, pid = n.split("-")
            out[int(x)].add(int(pid))
    return out


def worker_on(trace, x):
    """The pid of the worker that started item ``x`` (waiting for it to start)."""
    return min(wait_for(lambda: starters(trace).get(x)))


def alive(pid):
    """Whether process ``pid`` runs (a zombie has exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def parent(pid):
    """The parent pid of process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().split(")")[-1].split()[1])
