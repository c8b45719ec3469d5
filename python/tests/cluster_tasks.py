"""Tasks that sweeps on Dask and Ray clusters run in the tests (importable from the workers'
PYTHONPATH).

Each computation appends one line `<item> <pid>` to `<trace>/computed` (read back with
`sweep_tasks.computed`), so a test can count how many times each item was computed and where.
"""

import os
import time

import runcache as rc


@rc.task(version="1")
def step(x, trace, hold=(), nap=0.0):
    """Writes `started-<x>-<pid>`; an item in `hold` waits until the test creates `release`
    (so that a test can kill or cancel its worker mid-item; it fails after 120 s if the test
    never does). Others sleep `nap` seconds."""
    open(os.path.join(trace, f"started-{x}-{os.getpid()}"), "w").close()
    if x in hold:
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(trace, "release")):
            if time.time() > deadline:
                raise RuntimeError("the test never created `release`")
            time.sleep(0.05)
    else:
        time.sleep(nap)
    with open(os.path.join(trace, "computed"), "a") as f:
        f.write(f"{x} {os.getpid()}\n")
    return x * 10


@rc.task(version="1", resources={"gpu": 1})
def on_gpu(x):
    """Declares one GPU per item (the cluster's workers must declare it)."""
    return x
