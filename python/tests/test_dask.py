"""Sweeps on a real Dask cluster (distributed.LocalCluster: a scheduler and worker processes).

The cluster is started once for the module. Each item notes the pid that computed it, so the
tests count computations per item exactly, and find the process to kill mid-item.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

import runcache as rc
from cluster_tasks import step
from conftest import (
    alive,
    assert_each_computed_once,
    counts_per_item,
    parent,
    skip_or_fail,
    starters,
    wait_for,
    worker_on,
)
from sweep_tasks import computed, square

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def client():
    try:
        import distributed
    except ImportError:
        skip_or_fail("the distributed package is not installed", "pip install distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def _runcache_tasks(client):
    """Keys of runcache worker tasks the cluster is still running."""
    return [k for keys in client.processing().values() for k in keys
            if str(k).startswith("runcache-worker-")]


def test_import_runcache_does_not_need_distributed():
    code = "import sys, runcache; print('distributed' in sys.modules, runcache.Dask.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "Dask"]


def test_a_40_item_sweep_computes_each_item_once_in_worker_processes(client, store, trace):
    items = [{"x": i, "trace": trace} for i in range(40)]
    ex = rc.Dask(client)
    assert step.map(items, executor=ex, progress=False) == [i * 10 for i in range(40)]
    assert_each_computed_once(trace, range(40))
    dask_pids = set(client.run(os.getpid).values())
    pids = {pid for _, pid in computed(trace)}
    assert not pids & (dask_pids | {os.getpid()}), "items run in workers the Dask tasks start"
    (sweep_id,) = ex._futures
    handle = rc.sweep(sweep_id)
    wait_for(lambda: ex.poll(handle).alive == 0)  # the workers exit once the sweep is drained
    statuses = list(ex._ended.values())
    assert statuses and all(s["code"] == 0 for s in statuses), statuses
    assert all("drained" in " ".join(s["tail"]) for s in statuses), "the worker's log tail"
    # Again: everything is cached, nothing is submitted to Dask.
    again = rc.Dask(client)
    assert step.map(items, executor=again, progress=False) == [i * 10 for i in range(40)]
    assert again._futures == {} and len(computed(trace)) == 40


def test_a_killed_worker_process_mid_item_is_replaced_and_nothing_runs_twice(client, store, trace):
    items = [{"x": i, "trace": trace, "hold": (7,)} for i in range(40)]
    jobs = step.map(items, executor=rc.Dask(client), wait=False)
    sweep = jobs[0].sweep
    victim = worker_on(trace, 7)
    os.kill(victim, signal.SIGKILL)  # its lease dies with it; it never records anything
    open(os.path.join(trace, "release"), "w").close()
    assert sweep.results(timeout=300, progress=False) == [i * 10 for i in range(40)]
    assert_each_computed_once(trace, range(40))
    assert dict(computed(trace))[7] != victim
    # The stall report's material: the Dask task reports how its worker ended.
    wait_for(lambda: any(f"worker pid {victim}" in p and "SIGKILL" in p
                          for p in sweep.executor.poll(sweep).problems))


def test_a_killed_dask_worker_process_mid_item_takes_its_worker_along(client, store, trace):
    items = [{"x": i, "trace": trace, "hold": (3,)} for i in range(40)]
    jobs = step.map(items, executor=rc.Dask(client), wait=False)
    sweep = jobs[0].sweep
    runner = worker_on(trace, 3)
    dask_worker = parent(runner)
    assert dask_worker in set(client.run(os.getpid).values())
    os.kill(dask_worker, signal.SIGKILL)
    # The runcache worker learns that its Dask worker died (SIGTERM), records the item
    # interrupted and exits; Dask's nanny starts a new worker and the task runs again.
    wait_for(lambda: not alive(runner))
    open(os.path.join(trace, "release"), "w").close()
    assert sweep.results(timeout=300, progress=False) == [i * 10 for i in range(40)]
    assert_each_computed_once(trace, range(40))
    assert dict(computed(trace))[3] != runner
    client.wait_for_workers(2, timeout=120)


def test_sigterm_of_the_only_worker_records_the_item_interrupted_and_a_new_task_finishes(
    client, store, trace
):
    items = [{"x": i, "trace": trace, "hold": (0,)} for i in range(3)]
    ex = rc.Dask(client, workers=1)
    jobs = step.map(items, executor=ex, wait=False)
    sweep = jobs[0].sweep
    victim = worker_on(trace, 0)
    os.kill(victim, signal.SIGTERM)  # as a preemption does
    entry = step.entry(0, trace, (0,))
    wait_for(lambda: entry.status() == "interrupted")
    open(os.path.join(trace, "release"), "w").close()
    # The only Dask task ended with items left: wait submits a new one.
    assert sweep.results(timeout=300, progress=False) == [0, 10, 20]
    assert victim not in {pid for x, pid in computed(trace) if x == 0}
    assert len(ex._futures[sweep.id]) == 2, "one relaunch"
    wait_for(lambda: ex.poll(sweep).alive == 0)
    said = " ".join(line for s in ex._ended.values() for line in s["tail"])
    assert "SIGTERM: the running item was recorded interrupted and released" in said
    assert not ex.poll(sweep).problems, "a worker that stopped on SIGTERM exits cleanly"


def test_submit_returns_a_job_with_its_status_and_logs(client, store, trace):
    job = square.submit(7, trace, executor=rc.Dask(client))
    assert job.result(timeout=120) == 49
    assert job.status() == "completed" and "squaring 7" in job.logs()


def test_a_dask_sweep_overlapping_a_local_sweep_computes_nothing_twice(client, store, trace):
    on_dask = step.map([{"x": i, "trace": trace, "nap": 0.05} for i in range(30)],
                       executor=rc.Dask(client), wait=False)
    local = step.map([{"x": i, "trace": trace, "nap": 0.05} for i in range(10, 40)],
                     executor=rc.Local(workers=2), progress=False)
    assert local == [i * 10 for i in range(10, 40)]
    assert on_dask[0].sweep.results(timeout=300, progress=False) == [i * 10 for i in range(30)]
    assert_each_computed_once(trace, range(40))


def test_cancel_stops_every_worker_and_leaves_no_dask_task_running(client, store, trace):
    items = [{"x": i, "trace": trace, "hold": tuple(range(10))} for i in range(10)]
    jobs = step.map(items, executor=rc.Dask(client), wait=False)
    sweep = jobs[0].sweep
    wait_for(lambda: len(starters(trace)) >= 2)
    runners = {p for pids in starters(trace).values() for p in pids}
    assert sweep.cancel() == 10
    assert not [p for p in runners if alive(p)], "the workers were stopped"
    assert _runcache_tasks(client) == [], "no Dask task of the sweep runs any more"
    assert sweep.executor.poll(sweep).alive == 0
    out = sweep.results(errors="return", timeout=60, progress=False)
    assert [f.error_type for f in out] == ["runcache.Cancelled"] * 10
    assert computed(trace) == []


REATTACH = """
import json, sys, runcache as rc
h = rc.sweep({sweep_id!r}, store={store!r}, executor=rc.Dask(address={address!r}))
alive = h.executor.poll(h).alive
cancelled = h.cancel()
print(json.dumps([alive, cancelled, h.status().cancelled]))
"""


def test_another_session_reattaches_by_sweep_id_sees_the_workers_and_cancels_them(
    client, store, trace
):
    items = [{"x": i, "trace": trace, "hold": (0, 1, 2, 3, 4, 5)} for i in range(6)]
    jobs = step.map(items, executor=rc.Dask(client), wait=False)
    sweep = jobs[0].sweep
    wait_for(lambda: len(starters(trace)) >= 2)
    runners = {p for pids in starters(trace).values() for p in pids}
    code = REATTACH.format(sweep_id=sweep.id, store=str(store),
                           address=client.scheduler.address)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=HERE, timeout=180)
    assert out.returncode == 0, out.stderr
    seen_alive, cancelled, total_cancelled = json.loads(out.stdout)
    assert seen_alive == 2, "the other session found both Dask tasks by sweep id"
    assert cancelled == 6 and total_cancelled == 6
    assert not [p for p in runners if alive(p)]
    assert _runcache_tasks(client) == []
    assert computed(trace) == []


SUBMIT_AND_EXIT = """
import sys, distributed, runcache as rc
from cluster_tasks import step
client = distributed.Client({address!r})
rc.configure(store={store!r})
jobs = step.map([dict(x=i, trace={trace!r}, hold=(0, 1, 2, 3)) for i in range(4)],
                executor=rc.Dask(client), wait=False)
print(jobs[0].sweep.id, flush=True)
sys.stdin.readline()  # until the test has seen the workers start
client.close()
"""


def test_the_workers_outlive_the_session_that_submitted_them(client, store, trace):
    code = SUBMIT_AND_EXIT.format(address=client.scheduler.address, store=str(store),
                                  trace=trace)
    session = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, cwd=HERE)
    sweep_id = session.stdout.readline().strip()
    wait_for(lambda: len(starters(trace)) >= 2)
    runners = {p for pids in starters(trace).values() for p in pids}
    session.communicate("\n", timeout=120)
    assert session.returncode == 0
    assert all(alive(p) for p in runners), "the Dask tasks keep running"
    open(os.path.join(trace, "release"), "w").close()
    handle = rc.sweep(sweep_id, executor=rc.Dask(client))
    assert handle.results(timeout=300, progress=False) == [0, 10, 20, 30]
    assert counts_per_item(trace) == {0: 1, 1: 1, 2: 1, 3: 1}
    assert {pid for _, pid in computed(trace)} <= runners, "computed by the first workers"
    wait_for(lambda: handle.executor.poll(handle).alive == 0)
    assert sweep_id and f"runcache-{sweep_id}" not in client.list_datasets(), "unpublished"


def test_a_clear_error_names_the_package_to_install_when_distributed_is_missing():
    code = (
        "import sys; sys.modules['distributed'] = None\n"
        "import runcache as rc\n"
        "try:\n    rc.Dask()\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert "pip install distributed" in out.stdout, out.stderr


def test_workers_that_cannot_import_the_task_end_in_a_stall_report(client, store, tmp_path):
    # A task module the submitter has, gone before any worker starts.
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / "vanishing_tasks.py").write_text(
        "import runcache as rc\n\n@rc.task(version='1')\ndef double(x):\n    return 2 * x\n")
    sys.path.insert(0, str(code_dir))
    try:
        import vanishing_tasks

        jobs = vanishing_tasks.double.map([1, 2, 3], executor=rc.Manual(file=open(os.devnull, "w")),
                                          wait=False)
    finally:
        sys.path.remove(str(code_dir))
        sys.modules.pop("vanishing_tasks", None)
    (code_dir / "vanishing_tasks.py").unlink()
    handle = rc.sweep(jobs[0].sweep.id, executor=rc.Dask(client))
    with pytest.raises(rc.SweepStalled) as info:
        handle.wait(timeout=300, progress=False)
    text = str(info.value)
    assert "no worker is left but 3 item(s) are unfinished" in text
    assert "exited with exit code 2" in text and "cannot import the task" in text, text
    assert len(handle.executor._futures[handle.id]) == 2, "setup failures are not relaunched"
