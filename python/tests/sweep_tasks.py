"""Tasks run by sweep workers in the tests (importable from the workers' PYTHONPATH).

Each computation appends one line `<item> <pid>` to `<trace>/computed`, so a test can count
how many times each item was computed and by which process.
"""

import os
import sys
import time

import runcache as rc


def _note(trace, name, line):
    with open(os.path.join(trace, name), "a") as f:
        f.write(line + "\n")


@rc.task(version="1")
def square(x, trace):
    _note(trace, "computed", f"{x} {os.getpid()}")
    print(f"squaring {x}")
    print(f"note on stderr for {x}", file=sys.stderr)
    return x * x


@rc.task(version="1")
def flaky(x, trace):
    _note(trace, "computed", f"{x} {os.getpid()}")
    if x % 3 == 0:
        print(f"about to fail on {x}")
        raise ValueError(f"{x} is a multiple of 3")
    return -x


@rc.task(version="1")
def slow(x, trace, hold=None):
    """Writes `started-<x>-<pid>`; on the item `hold` it waits until the test creates `release`,
    so a test can kill it mid-item (and fails after 60 s if the test never does)."""
    open(os.path.join(trace, f"started-{x}-{os.getpid()}"), "w").close()
    if x == hold:
        deadline = time.time() + 60
        while not os.path.exists(os.path.join(trace, "release")):
            if time.time() > deadline:
                raise RuntimeError("the test never created `release`")
            time.sleep(0.05)
    _note(trace, "computed", f"{x} {os.getpid()}")
    return x + 1000


@rc.task(version="1", resources={"ram": 2})
def hungry(x, trace):
    """Records how many items of this task run at once (via marker files)."""
    mine = os.path.join(trace, f"running-{x}")
    open(mine, "w").close()
    running = sum(1 for n in os.listdir(trace) if n.startswith("running-"))
    _note(trace, "concurrency", str(running))
    time.sleep(0.15)
    os.unlink(mine)
    _note(trace, "computed", f"{x} {os.getpid()}")
    return x


def computed(trace):
    """Lines of `computed` as (item, pid) pairs."""
    path = os.path.join(trace, "computed")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [tuple(int(v) for v in line.split()) for line in f if line.strip()]


@rc.task(version="1")
def column_means(X, scale):
    """Takes a large array argument (passed to workers as a mapped blob)."""
    return (X.mean(axis=0) * scale).tolist()


@rc.task(version="1")
def environment_variable(name, x):
    """The value of environment variable ``name`` where the item runs (None if unset)."""
    return os.environ.get(name)
