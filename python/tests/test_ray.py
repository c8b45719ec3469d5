"""Sweeps on a real local Ray cluster (ray.init: a head node and its worker processes).

Ray is started once for the module. Each item notes the pid that computed it, so the tests
count computations per item exactly, and find the process to kill mid-item.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

import runcache as rc
from cluster_tasks import on_gpu, step
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
def ray():
    try:
        import ray
    except ImportError:
        skip_or_fail("Ray is not installed", "pip install ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _controlalive(sweep_id):
    from runcache import _ray

    return _ray._control(sweep_id, create=False) is not None


def test_a_40_item_sweep_computes_each_item_once_in_worker_processes(ray, store, trace):
    items = [{"x": i, "trace": trace} for i in range(40)]
    ex = rc.Ray()
    assert step.map(items, executor=ex, progress=False) == [i * 10 for i in range(40)]
    assert_each_computed_once(trace, range(40))
    assert os.getpid() not in {pid for _, pid in computed(trace)}
    (sweep_id,) = ex._refs
    handle = rc.sweep(sweep_id)
    wait_for(lambda: ex.poll(handle).alive == 0)  # the workers exit once the sweep is drained
    statuses = list(ex._ended.values())
    assert len(statuses) == 2 and all(s["code"] == 0 for s in statuses), statuses
    assert not _controlalive(sweep_id), "the control actor goes once every task ended"
    # Again: everything is cached, nothing is submitted to Ray.
    again = rc.Ray()
    assert step.map(items, executor=again, progress=False) == [i * 10 for i in range(40)]
    assert again._refs == {} and len(computed(trace)) == 40


def test_a_killed_worker_process_mid_item_is_replaced_and_nothing_runs_twice(ray, store, trace):
    items = [{"x": i, "trace": trace, "hold": (7,)} for i in range(40)]
    jobs = step.map(items, executor=rc.Ray(), wait=False)
    sweep = jobs[0].sweep
    victim = worker_on(trace, 7)
    os.kill(victim, signal.SIGKILL)
    open(os.path.join(trace, "release"), "w").close()
    assert sweep.results(timeout=300, progress=False) == [i * 10 for i in range(40)]
    assert_each_computed_once(trace, range(40))
    assert dict(computed(trace))[7] != victim
    wait_for(lambda: any(f"worker pid {victim}" in p and "SIGKILL" in p
                          for p in sweep.executor.poll(sweep).problems))


def test_a_killed_ray_worker_process_mid_item_takes_its_worker_along(ray, store, trace):
    items = [{"x": i, "trace": trace, "hold": (3,)} for i in range(40)]
    jobs = step.map(items, executor=rc.Ray(), wait=False)
    sweep = jobs[0].sweep
    runner = worker_on(trace, 3)
    ray_worker = parent(runner)
    os.kill(ray_worker, signal.SIGKILL)
    # The runcache worker learns that its Ray worker died (SIGTERM), records the item
    # interrupted and exits; Ray runs the task again in a new worker process.
    wait_for(lambda: not alive(runner))
    open(os.path.join(trace, "release"), "w").close()
    assert sweep.results(timeout=300, progress=False) == [i * 10 for i in range(40)]
    assert_each_computed_once(trace, range(40))
    assert dict(computed(trace))[3] != runner


def test_a_ray_sweep_overlapping_a_local_sweep_computes_nothing_twice(ray, store, trace):
    on_ray = step.map([{"x": i, "trace": trace, "nap": 0.05} for i in range(30)],
                      executor=rc.Ray(), wait=False)
    local = step.map([{"x": i, "trace": trace, "nap": 0.05} for i in range(10, 40)],
                     executor=rc.Local(workers=2), progress=False)
    assert local == [i * 10 for i in range(10, 40)]
    assert on_ray[0].sweep.results(timeout=300, progress=False) == [i * 10 for i in range(30)]
    assert_each_computed_once(trace, range(40))


def test_cancel_stops_every_worker_and_leaves_no_ray_task_running(ray, store, trace):
    items = [{"x": i, "trace": trace, "hold": tuple(range(10))} for i in range(10)]
    jobs = step.map(items, executor=rc.Ray(), wait=False)
    sweep = jobs[0].sweep
    wait_for(lambda: len(starters(trace)) >= 2)
    runners = {p for pids in starters(trace).values() for p in pids}
    assert sweep.cancel() == 10
    assert not [p for p in runners if alive(p)], "the workers were stopped"
    refs = [r for _, r in sweep.executor._refs[sweep.id]]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    assert len(ready) == len(refs), "no Ray task of the sweep runs any more"
    assert sweep.executor.poll(sweep).alive == 0
    assert not _controlalive(sweep.id)
    out = sweep.results(errors="return", timeout=60, progress=False)
    assert [f.error_type for f in out] == ["runcache.Cancelled"] * 10
    assert computed(trace) == []


REATTACH = """
import json, ray, runcache as rc
ray.init(address={address!r}, log_to_driver=False)
h = rc.sweep({sweep_id!r}, store={store!r}, executor=rc.Ray())
alive = h.executor.poll(h).alive
cancelled = h.cancel()
print(json.dumps([alive, cancelled, h.status().cancelled]))
"""


def test_another_session_reattaches_by_sweep_id_sees_the_workers_and_cancels_them(
    ray, store, trace
):
    items = [{"x": i, "trace": trace, "hold": (0, 1, 2, 3, 4, 5)} for i in range(6)]
    jobs = step.map(items, executor=rc.Ray(), wait=False)
    sweep = jobs[0].sweep
    wait_for(lambda: len(starters(trace)) >= 2)
    runners = {p for pids in starters(trace).values() for p in pids}
    address = ray.get_runtime_context().gcs_address
    code = REATTACH.format(sweep_id=sweep.id, store=str(store), address=address)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=HERE, timeout=180)
    assert out.returncode == 0, out.stderr
    seen_alive, cancelled, total_cancelled = json.loads(out.stdout.splitlines()[-1])
    assert seen_alive == 2, "the other session found both workers through the sweep's control actor"
    assert cancelled == 6 and total_cancelled == 6
    assert not [p for p in runners if alive(p)]
    refs = [r for _, r in sweep.executor._refs[sweep.id]]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=60)
    assert len(ready) == len(refs)
    assert computed(trace) == []


def test_task_resources_become_ray_requests_and_a_missing_one_is_named(ray, store):
    ex = rc.Ray(resources={"licence": 1})
    with pytest.raises(ValueError, match="one worker needs GPU=1 but the Ray cluster has 0"):
        on_gpu.map([1, 2], executor=ex, progress=False)
    view = type("View", (), {"resources": {"gpu": 1, "ram": 4, "cpu": 2}})()
    assert ex.requests(view) == {
        "num_cpus": 2.0, "num_gpus": 1.0, "resources": {"licence": 1.0, "ram": 4.0}
    }


SUBMIT_AND_EXIT = """
import sys, time, ray, runcache as rc
from cluster_tasks import step
ray.init(address={address!r}, log_to_driver=False)
rc.configure(store={store!r})
jobs = step.map([dict(x=i, trace={trace!r}, hold=(0, 1, 2, 3)) for i in range(4)],
                executor=rc.Ray(), wait=False)
print(jobs[0].sweep.id, flush=True)
sys.stdin.readline()  # until the test has seen the workers start
"""


def test_a_driver_that_exits_takes_its_workers_along_and_another_session_finishes(
    ray, store, trace
):
    address = ray.get_runtime_context().gcs_address
    code = SUBMIT_AND_EXIT.format(address=address, store=str(store), trace=trace)
    driver = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=HERE)
    sweep_id = driver.stdout.readline().strip()
    wait_for(lambda: len(starters(trace)) >= 2)
    runners = {p for pids in starters(trace).values() for p in pids}
    driver.communicate("\n", timeout=120)
    assert driver.returncode == 0
    # Ray ends the driver's tasks; their workers get SIGTERM and record the items interrupted.
    wait_for(lambda: not [p for p in runners if alive(p)])
    open(os.path.join(trace, "release"), "w").close()
    handle = rc.sweep(sweep_id, executor=rc.Ray())
    # The control actor stops counting the silent workers; wait starts new ones from here.
    assert handle.results(timeout=300, progress=False) == [0, 10, 20, 30]
    per_item = counts_per_item(trace)
    assert per_item == {0: 1, 1: 1, 2: 1, 3: 1}, per_item


def test_submit_returns_a_job_with_its_status_and_logs(ray, store, trace):
    job = square.submit(7, trace, executor=rc.Ray())
    assert job.result(timeout=120) == 49
    assert job.status() == "completed" and "squaring 7" in job.logs()


def test_a_clear_error_names_the_package_to_install_when_ray_is_missing():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import runcache as rc\n"
        "try:\n    rc.Ray()\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert "pip install ray" in out.stdout, out.stderr
