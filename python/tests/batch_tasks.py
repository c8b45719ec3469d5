"""Batch tasks run by sweep workers in the tests (importable from the workers' PYTHONPATH).

Each batch appends one line per item, `<item> <pid>`, to `<trace>/computed`, so a test can
count how many times each item was computed and by which process.
"""

import os

import runcache as rc


@rc.batch_task(batch_size=16, version="1")
def cube(xs, trace):
    with open(os.path.join(trace, "computed"), "a") as f:
        f.write("".join(f"{x} {os.getpid()}\n" for x in xs))
    if 13 in xs:
        raise ValueError("13 is unlucky")
    return [x**3 for x in xs]
