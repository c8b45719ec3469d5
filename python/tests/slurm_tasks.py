"""Tasks the SLURM integration tests run (array tasks import them through PYTHONPATH).

Each computation appends ``<item> <SLURM job id>`` to ``<trace>/computed``, so a test can see
how often each item was computed and that SLURM ran it.
"""

import os
import time

import runcache as rc


def _note(trace, name, line):
    with open(os.path.join(trace, name), "a") as f:
        f.write(line + "\n")


def _job():
    return os.environ.get("SLURM_JOB_ID", "none")


@rc.task(version="1")
def cube(x, trace):
    print(f"cube of {x} in array task {os.environ.get('SLURM_ARRAY_TASK_ID')}")
    _note(trace, "computed", f"{x} {_job()}")
    return x**3


@rc.task(version="1")
def picky(x, trace):
    _note(trace, "computed", f"{x} {_job()}")
    if x == 2:
        print("picky does not like 2")
        raise ValueError("2 is not welcome")
    return x * 10


@rc.task(version="1")
def sleepy(x, trace, hold):
    """On item ``hold``, the first computation writes ``started`` (holding
    ``<array job id>_<task id>``) and sleeps up to 120 s, so the test can scancel that array
    task mid-item. Any later computation of it returns at once."""
    if x == hold:
        try:
            fd = os.open(os.path.join(trace, "held-once"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            who = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
            tmp = os.path.join(trace, "started.tmp")
            with open(tmp, "w") as f:
                f.write(who)
            os.rename(tmp, os.path.join(trace, "started"))
            time.sleep(120)
            _note(trace, "slept-through", who)  # the test failed to stop it
    _note(trace, "computed", f"{x} {_job()}")
    return x + 1000


def computed(trace):
    """``computed`` as (item, job id) pairs."""
    path = os.path.join(trace, "computed")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(int(a), b) for a, b in (line.split() for line in f if line.strip())]
