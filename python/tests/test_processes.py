"""Compute-once and failure handling across real Python processes."""

import os
import signal
import subprocess
import sys
import time

import runcache as rc

WORKER = r"""
import os, sys, time
import runcache as rc
store, mode, marker_dir = sys.argv[1], sys.argv[2], sys.argv[3]
rc.configure(store=store)

@rc.task(name="p.work")
def work(x):
    with open(os.path.join(marker_dir, f"computed-{os.getpid()}"), "w"):
        pass
    if mode == "raise":
        time.sleep(0.3)
        raise ValueError("boom in worker")
    if mode == "slow":
        open(os.path.join(marker_dir, "started"), "w").close()
        time.sleep(60)
    time.sleep(0.2)
    return x * 2

go = os.path.join(marker_dir, "go")
while not os.path.exists(go):
    time.sleep(0.001)
try:
    print("VALUE", work(21), flush=True)
except ValueError as e:
    print("RAISED", e, flush=True)
"""


def spawn(store, mode, marker_dir):
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(store), mode, str(marker_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def computed(marker_dir):
    return [f for f in os.listdir(marker_dir) if f.startswith("computed-")]


def test_processes_racing_on_one_key_compute_once(tmp_path):
    for round_ in range(3):
        d = tmp_path / f"r{round_}"
        d.mkdir()
        store = tmp_path / f"store{round_}"
        procs = [spawn(store, "ok", d) for _ in range(4)]
        time.sleep(0.5)  # let every interpreter start and wait at the barrier
        (d / "go").touch()
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        assert all("VALUE 42" in o for o, _ in outs), outs
        assert len(computed(d)) == 1, computed(d)


def test_a_task_that_raises_does_not_hang_other_callers(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    store = tmp_path / "store"
    procs = [spawn(store, "raise", d) for _ in range(3)]
    time.sleep(0.5)
    (d / "go").touch()
    outs = [p.communicate(timeout=60) for p in procs]
    assert all("RAISED boom in worker" in o for o, _ in outs), outs
    assert len(computed(d)) == 1, "waiters load the recorded failure instead of recomputing"


def test_sigterm_records_interrupted_and_exits_by_signal(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    (d / "go").touch()
    store = tmp_path / "store"
    p = spawn(store, "slow", d)
    deadline = time.time() + 60
    while not (d / "started").exists():
        assert time.time() < deadline, p.stderr.read() if p.poll() is not None else "timeout"
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGTERM
    rc.configure(store=str(store))
    try:

        @rc.task(name="p.work")
        def work(x):
            return x * 2

        assert work.entry(21).status() == "interrupted"
        assert work(21) == 42
    finally:
        rc.configure(store=None)
