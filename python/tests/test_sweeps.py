"""Sweeps: map/submit over executors, workers as real processes, status, logs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import runcache as rc
from conftest import (
    alive,
    assert_each_computed_once,
    counts_per_item,
    skip_or_fail,
    starters,
    wait_for,
    worker_on,
)
from runcache import _config
from runcache._executors import WorkerState
from sweep_tasks import column_means, computed, environment_variable, flaky, hungry, slow, square

HERE = os.path.dirname(os.path.abspath(__file__))


def test_grid_is_the_cartesian_product_in_order():
    g = rc.grid(lr=[0.1, 0.01], seed=range(3), model="mlp")
    assert len(g) == 6
    assert g[0] == {"lr": 0.1, "seed": 0, "model": "mlp"}
    assert g[1] == {"lr": 0.1, "seed": 1, "model": "mlp"}
    assert g[3] == {"lr": 0.01, "seed": 0, "model": "mlp"}
    assert rc.grid() == [{}]


def test_inline_map_returns_ordered_results_and_item_forms(store, trace):
    items = [{"x": 2, "trace": trace}, (3, trace), {"x": 4, "trace": trace}]
    assert square.map(items, executor=rc.Inline()) == [4, 9, 16]
    assert square.map(items, executor=rc.Inline()) == [4, 9, 16]
    assert counts_per_item(trace) == {2: 1, 3: 1, 4: 1}


def test_local_workers_compute_each_item_exactly_once(store, trace):
    items = [{"x": i, "trace": trace} for i in range(200)]
    results = square.map(items, executor=rc.Local(workers=2))
    assert results == [i * i for i in range(200)]
    assert_each_computed_once(trace, range(200))
    pids = {pid for _, pid in computed(trace)}
    assert os.getpid() not in pids  # computed by worker processes
    # The same sweep again computes nothing, writes no new sweep and starts no worker.
    sweeps = len(_config.open_store({"store": str(store)}).sweeps())
    idle = rc.Local(workers=2)
    again = square.map(items, executor=idle)
    assert again == results
    assert len(computed(trace)) == 200
    assert len(_config.open_store({"store": str(store)}).sweeps()) == sweeps
    assert idle._procs == {}


def test_failures_are_summarized_or_returned(store, trace):
    items = [{"x": i, "trace": trace} for i in range(7)]
    with pytest.raises(rc.SweepError) as info:
        flaky.map(items, executor=rc.Local(workers=2))
    err = info.value
    assert len(err.failures) == 3  # 0, 3, 6
    assert "3 of 7 item(s) failed" in str(err)
    assert "ValueError" in str(err) and "multiple of 3" in str(err)
    assert "Traceback" in str(err)  # the first traceback is shown
    got = flaky.map(items, executor=rc.Local(workers=2), errors="return")
    assert [r for i, r in enumerate(got) if i % 3] == [-1, -2, -4, -5]
    fails = [r for r in got if isinstance(r, rc.Failure)]
    assert [f.index for f in fails] == [0, 3, 6]
    assert fails[0].error_type.endswith("ValueError")
    # Recorded failures are not recomputed in cached mode...
    assert len(computed(trace)) == 7
    # ...and are in retry mode.
    with rc.config(mode="retry"):
        flaky.map(items, executor=rc.Inline(), errors="return")
    assert counts_per_item(trace)[3] == 2 and counts_per_item(trace)[1] == 1


def test_logs_are_stored_with_the_entry(store, trace):
    square.map([{"x": 5, "trace": trace}], executor=rc.Local(workers=1))
    logs = square.entry(5, trace).logs()
    assert "squaring 5" in logs and "note on stderr for 5" in logs
    flaky.map([{"x": 3, "trace": trace}], executor=rc.Local(workers=1), errors="return")
    flogs = flaky.entry(3, trace).logs()
    assert "about to fail on 3" in flogs and "ValueError" in flogs
    out = subprocess.run(
        [sys.executable, "-m", "runcache", "--store", str(store), "logs",
         flaky.entry(3, trace).key[:16]],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "about to fail on 3" in out.stdout


def test_submit_returns_a_job(store, trace):
    job = square.submit(7, trace, executor=rc.Local(workers=1))
    assert job.result(timeout=120) == 49
    assert job.done() and job.status() == "completed"
    assert job.key == square.key(7, trace)
    assert "squaring 7" in job.logs()
    # Already settled: a job at once, nothing started.
    again = square.submit(7, trace, executor=rc.Local(workers=1))
    assert again.done() and again.result() == 49
    assert len(computed(trace)) == 1


def test_wait_false_and_reattach_from_another_session(store, trace):
    items = [{"x": i, "trace": trace} for i in range(6)]
    jobs = square.map(items, executor=rc.Local(workers=2), wait=False)
    assert len(jobs) == 6
    sweep_id = jobs[0].sweep.id
    assert [j.result(timeout=120) for j in jobs] == [i * i for i in range(6)]
    code = (
        "import runcache as rc, json\n"
        f"h = rc.sweep({sweep_id!r}, store={str(store)!r})\n"
        "s = h.status()\n"
        "print(json.dumps([s.total, s.completed, s.failed, h.results()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=HERE, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [6, 6, 0, [i * i for i in range(6)]]
    cli = subprocess.run(
        [sys.executable, "-m", "runcache", "--store", str(store), "status", sweep_id, "--json"],
        capture_output=True, text=True,
    )
    assert cli.returncode == 0, cli.stderr
    st = json.loads(cli.stdout)
    assert st["total"] == 6 and st["completed"] == 6 and st["pending"] == 0
    with pytest.raises(ValueError, match="no sweep"):
        rc.sweep("nope", store=str(store))


OVERLAP = """
import sys, runcache as rc
sys.path.insert(0, {here!r})
from sweep_tasks import slow
rc.configure(store={store!r})
lo, hi = int(sys.argv[1]), int(sys.argv[2])
out = slow.map([dict(x=i, trace={trace!r}) for i in range(lo, hi)], executor=rc.Local(workers=2))
assert out == [i + 1000 for i in range(lo, hi)], out
print("ok")
"""


def test_overlapping_sweeps_from_two_processes_share_work(store, trace):
    code = OVERLAP.format(here=HERE, store=str(store), trace=trace)
    a = subprocess.Popen([sys.executable, "-c", code, "0", "30"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    b = subprocess.Popen([sys.executable, "-c", code, "10", "40"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    for p in (a, b):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert out.strip() == "ok"
    assert_each_computed_once(trace, range(40))


def test_sigkill_of_a_worker_mid_item_another_worker_finishes_it(store, trace):
    items = [{"x": i, "trace": trace, "hold": 3} for i in range(8)]
    jobs = slow.map(items, executor=rc.Local(workers=2), wait=False)
    victim = worker_on(trace, 3)
    # The killed worker never records anything; its lease dies with it.
    os.kill(victim, signal.SIGKILL)
    open(os.path.join(trace, "release"), "w").close()
    assert [j.result(timeout=120) for j in jobs] == [i + 1000 for i in range(8)]
    by = dict(computed(trace))
    assert by[3] != victim
    assert counts_per_item(trace)[3] == 1


def test_sigterm_of_a_worker_records_interrupted_and_the_sweep_completes(store, trace):
    items = [{"x": i, "trace": trace, "hold": 0} for i in range(3)]
    jobs = slow.map(items, executor=rc.Local(workers=1), wait=False)
    victim = worker_on(trace, 0)
    os.kill(victim, signal.SIGTERM)
    entry = slow.entry(0, trace, 0)
    wait_for(lambda: entry.status() == "interrupted")
    # Recorded interrupted and queued again: nothing restarts workers until the caller waits.
    st = jobs[0].sweep.status()
    assert (st.interrupted, st.pending, st.queued, st.running) == (1, 2, 3, 0)
    assert [i["state"] for i in st.items] == ["interrupted"]
    open(os.path.join(trace, "release"), "w").close()
    # The executor sees its only worker gone with items left and starts workers again.
    assert jobs[0].sweep.results(timeout=120) == [1000, 1001, 1002]
    assert victim not in {pid for x, pid in computed(trace) if x == 0}
    # The worker said why it stopped, and exited cleanly (status 0: not reported as a problem).
    log_dir = jobs[0].sweep.executor_info["log_dir"]
    said = "".join(open(os.path.join(log_dir, n)).read() for n in os.listdir(log_dir))
    assert "SIGTERM: the running item was recorded interrupted and released" in said
    assert not jobs[0].sweep.executor.poll(jobs[0].sweep).problems


def test_resource_capacity_is_never_exceeded(store, trace):
    items = [{"x": i, "trace": trace} for i in range(12)]
    out = hungry.map(items, executor=rc.Local(workers=4, resources={"ram": 5}))
    assert out == list(range(12))
    with open(os.path.join(trace, "concurrency")) as f:
        seen = [int(line) for line in f]
    assert len(seen) == 12
    assert max(seen) <= 2  # 5 // 2 items at once
    fresh = [{"x": i, "trace": trace} for i in range(100, 102)]
    with pytest.raises(ValueError, match="does not declare"):
        hungry.map(fresh, executor=rc.Local(workers=2, resources={"gpu": 1}))
    with pytest.raises(ValueError, match="has only"):
        hungry.map([{"x": 99, "trace": trace}], executor=rc.Local(resources={"ram": 1}))


def test_manual_prints_a_command_that_completes_the_sweep(store, trace, capsys):
    items = [{"x": i, "trace": trace} for i in range(5)]
    manual = rc.Manual()
    jobs = square.map(items, executor=manual, wait=False)
    printed = capsys.readouterr().out
    assert manual.commands and manual.commands[0] in printed
    worker = subprocess.run(manual.commands[0], shell=True, capture_output=True, text=True,
                            timeout=120)
    assert worker.returncode == 0, worker.stderr
    assert jobs[0].sweep.results(timeout=60) == [i * i for i in range(5)]


def test_sweep_in_read_only_mode_is_refused(store, trace):
    with rc.config(mode="read-only"), pytest.raises(ValueError, match="cached, retry or force"):
        square.map([{"x": 1, "trace": trace}], executor=rc.Local(workers=1))


def test_tasks_defined_in_a_function_are_refused_for_workers(store):
    @rc.task
    def local_task(x):
        return x

    with pytest.raises(TypeError, match="inside a function"):
        local_task.map([1, 2], executor=rc.Local(workers=1))
    assert local_task.map([1, 2], executor=rc.Inline()) == [1, 2]


def _remote(var, unique):
    base = os.environ.get(var)
    if not base:
        skip_or_fail(f"{var} is not set: the test service is not running",
                     "start it with scripts/services/s3 or postgres start")
    if var == "RUNCACHE_TEST_POSTGRES":
        return f"{base}?schema={unique}"
    target, _, query = base.partition("?")
    return f"{target.rstrip('/')}/{unique}?{query}"


@pytest.mark.parametrize("var", ["RUNCACHE_TEST_S3", "RUNCACHE_TEST_POSTGRES"])
def test_sweep_on_a_shared_store(var, trace):
    location = _remote(var, f"sweep_{os.getpid()}_{time.time_ns()}")
    rc.configure(store=location)
    try:
        items = [{"x": i, "trace": trace} for i in range(20)]
        assert square.map(items, executor=rc.Local(workers=2)) == [i * i for i in range(20)]
        assert max(counts_per_item(trace).values()) == 1
        assert "squaring 4" in square.entry(4, trace).logs()
        assert square.map(items, executor=rc.Local(workers=2)) == [i * i for i in range(20)]
        assert len(computed(trace)) == 20
    finally:
        rc.configure(store=None)


def test_inline_failures_and_mode_off(store, trace):
    items = [{"x": i, "trace": trace} for i in range(4)]
    with pytest.raises(rc.SweepError, match="2 of 4 item"):
        flaky.map(items, executor=rc.Inline())
    with rc.config(mode="off"):
        got = flaky.map(items, executor=rc.Inline(), errors="return")
    assert isinstance(got[0], rc.Failure) and got[0].error_type.endswith("ValueError")
    assert got[1:3] == [-1, -2]


def _rust_cli():
    root = os.path.dirname(os.path.dirname(HERE))
    for profile in ("debug", "release"):
        path = os.path.join(root, "target", profile, "runcache")
        if os.path.exists(path):
            return path
    return None


def test_the_rust_command_starts_the_sweeps_python_worker(store, trace):
    binary = _rust_cli()
    if binary is None:
        skip_or_fail("the Rust `runcache` binary (target/*/runcache) is not built", "cargo build")
    manual = rc.Manual(file=open(os.devnull, "w"))
    jobs = square.map([{"x": i, "trace": trace} for i in range(4)], executor=manual, wait=False)
    sweep_id = jobs[0].sweep.id
    out = subprocess.run(
        [binary, "--store", str(store), "worker", "--sweep", sweep_id, "--max-items", "10"],
        capture_output=True, text=True, timeout=120, cwd="/",
    )
    assert out.returncode == 0, out.stderr
    assert jobs[0].sweep.results(timeout=30) == [0, 1, 4, 9]
    status = subprocess.run([binary, "--store", str(store), "status", sweep_id],
                            capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    assert "4/4 done" in status.stdout and "completed 4" in status.stdout


def test_interactive_tasks_get_a_clear_error_before_anything_is_submitted(tmp_path):
    from conftest import run_python

    code = (
        "import runcache as rc\n"
        f"rc.configure(store={str(tmp_path / 'store')!r})\n"
        "@rc.task\n"
        "def f(x):\n"
        "    return x\n"
        "try:\n"
        "    f.map([1], executor=rc.Local(workers=1))\n"
        "except TypeError as e:\n"
        "    print('refused:', e)\n"
        "print(f.map([1, 2], executor=rc.Inline()))\n"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout and "interactive session" in out.stdout
    assert "[1, 2]" in out.stdout


def test_large_array_arguments_reach_workers_once_and_keep_their_keys(store):
    np = pytest.importorskip("numpy")
    X = np.arange(600_000, dtype=np.float64).reshape(-1, 6)  # 4.8 MB, shared by every item
    items = [{"X": X, "scale": s} for s in range(4)]
    got = column_means.map(items, executor=rc.Local(workers=2))
    want = [(X.mean(axis=0) * s).tolist() for s in range(4)]
    assert got == want
    # The array was stored once for the whole sweep, not once per item.
    stored = sum(
        os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(store / "blobs") for f in files
    )
    assert X.nbytes <= stored < 2 * X.nbytes, stored
    assert column_means.map(items, executor=rc.Local(workers=2)) == want


def test_a_wrong_executor_is_refused_by_name(store, trace):
    with pytest.raises(TypeError, match="not an executor"):
        square.map([{"x": 1, "trace": trace}], executor="local")
    with pytest.raises(TypeError, match="abstract"):
        rc.Executor()


def test_progress_ends_with_a_summary_of_what_was_computed_and_loaded(store, trace, capsys):
    square.map([{"x": 1, "trace": trace}], executor=rc.Inline())
    items = [{"x": i, "trace": trace} for i in range(3)]
    square.map(items, executor=rc.Inline(), progress=True)
    err = capsys.readouterr().err
    assert "computed 2, loaded 1 from cache, failed 0" in err
    assert "completed" in err and "queued" in err  # the live counts
    more = [{"x": i, "trace": trace} for i in range(5)]
    square.map(more, executor=rc.Local(workers=2), progress=True)
    err = capsys.readouterr().err
    assert "computed 2, loaded 3 from cache, failed 0" in err


def test_capacity_is_shared_by_the_sweeps_of_one_executor(store, trace):
    executor = rc.Local(workers=4, resources={"ram": 4})
    first = hungry.map([{"x": i, "trace": trace} for i in range(6)], executor=executor, wait=False)
    second = hungry.map([{"x": i, "trace": trace} for i in range(6, 12)], executor=executor,
                        wait=False)
    assert [j.result(timeout=120) for j in first + second] == list(range(12))
    with open(os.path.join(trace, "concurrency")) as f:
        seen = [int(line) for line in f]
    assert len(seen) == 12
    assert max(seen) <= 2  # 4 // 2 items at once over both sweeps


def test_a_job_is_cancelled_only_before_it_starts(store, trace):
    items = [{"x": i, "trace": trace, "hold": 0} for i in range(4)]
    jobs = slow.map(items, executor=rc.Local(workers=1), wait=False)
    wait_for(lambda: starters(trace).get(0))
    # Item 0 is running: like concurrent.futures, it cannot be cancelled. Item 2 has not started.
    assert jobs[0].cancel() is False
    assert jobs[2].cancel() is True
    assert jobs[2].status() == "cancelled" and jobs[2].done()
    open(os.path.join(trace, "release"), "w").close()
    out = jobs[0].sweep.results(errors="return", timeout=120)
    assert out[0] == 1000 and out[1] == 1001 and out[3] == 1003
    assert isinstance(out[2], rc.Failure) and out[2].error_type == "runcache.Cancelled"
    assert 2 not in counts_per_item(trace), "a cancelled item is never computed"
    with pytest.raises(rc.SweepError, match="item 2 was cancelled before it started"):
        jobs[2].result(timeout=10)
    assert jobs[1].cancel() is False, "a completed item stays completed"
    with pytest.raises(rc.SweepError, match="1 of 4 item.s. were cancelled:\n  item 2 was cancelled"):
        jobs[0].sweep.results(timeout=10)
    st = jobs[0].sweep.status()
    assert (st.completed, st.cancelled, st.done) == (3, 1, 4)
    cli = subprocess.run(
        [sys.executable, "-m", "runcache", "--store", str(store), "status", jobs[0].sweep.id],
        capture_output=True, text=True,
    )
    assert cli.returncode == 0, cli.stderr
    assert "4/4 done" in cli.stdout and "cancelled 1" in cli.stdout


def test_cancelling_a_sweep_stops_its_workers_and_starts_nothing_more(store, trace):
    items = [{"x": i, "trace": trace, "hold": 0} for i in range(5)]
    jobs = slow.map(items, executor=rc.Local(workers=1), wait=False)
    sweep = jobs[0].sweep
    wait_for(lambda: starters(trace).get(0))
    # The four waiting items, and item 0 once its stopped worker released it.
    assert sweep.cancel() == 5
    assert sweep.executor.poll(sweep).alive == 0
    out = sweep.results(errors="return", timeout=60)
    assert [f.error_type for f in out] == ["runcache.Cancelled"] * 5
    assert computed(trace) == [], "nothing was computed, and no worker was started again"
    st = sweep.status()
    assert st.cancelled == 5 and st.drained
    # The cancellations belong to that sweep: the same items compute normally in a new one.
    open(os.path.join(trace, "release"), "w").close()
    assert slow.map(items, executor=rc.Local(workers=1)) == [i + 1000 for i in range(5)]


class _DeadArray(rc.Executor):
    """An executor whose 25 workers all died at once (as a big SLURM array can)."""

    def launch(self, sweep):
        pass

    def poll(self, sweep):
        problems = [f"task {i}: FAILED (log: /logs/{i}.out)" for i in range(25)]
        return WorkerState(alive=0, problems=problems, fatal=True)

    def cancel(self, sweep):
        pass


def test_a_stall_report_shows_the_first_problems_and_counts_the_rest(store, trace):
    with pytest.raises(rc.SweepStalled) as info:
        square.map([{"x": i, "trace": trace} for i in range(3)], executor=_DeadArray(),
                   progress=False)
    text = str(info.value)
    assert "task 9: FAILED (log: /logs/9.out)" in text
    assert "task 10:" not in text
    assert "... and 15 more" in text
    assert "-m runcache worker" in text and "--sweep" in text, "it gives the worker command"


INTERRUPTED = """
import sys, runcache as rc
sys.path.insert(0, {here!r})
from sweep_tasks import slow
rc.configure(store={store!r})
slow.map([dict(x=i, trace={trace!r}, hold=i) for i in range(4)], executor=rc.Local(workers=2),
         progress=False)
"""


def test_interrupting_the_caller_stops_local_workers(store, trace):
    # SIGINT to the caller alone (as a notebook's interrupt does), not to its process group.
    script = INTERRUPTED.format(here=HERE, store=str(store), trace=trace)
    p = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    started = wait_for(lambda: len(os.listdir(trace)) >= 2 and os.listdir(trace))
    workers = {int(n.rsplit("-", 1)[1]) for n in started if n.startswith("started-")}
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0 and "KeyboardInterrupt" in err
    assert "stopped the workers of sweep" in err
    wait_for(lambda: not any(alive(w) for w in workers), timeout=30)
    assert computed(trace) == [], "the held items were stopped, not finished"
    # Nothing was lost or cancelled: the same map computes everything afterwards.
    open(os.path.join(trace, "release"), "w").close()
    out = slow.map([dict(x=i, trace=trace, hold=i) for i in range(4)],
                   executor=rc.Local(workers=2), progress=False)
    assert out == [1000, 1001, 1002, 1003]


def test_local_workers_report_done_early_without_leaking_the_pipe_to_tasks(store):
    ex = rc.Local(workers=2)
    jobs = environment_variable.map([("RUNCACHE_DONE_FD", i) for i in range(6)], executor=ex,
                                    wait=False)
    sweep = jobs[0].sweep
    assert sweep.results(timeout=120) == [None] * 6, "tasks never see the worker's pipe"
    wait_for(lambda: sweep.executor.poll(sweep).alive == 0)
    assert ex._done_pipes[sweep.id] == {}, "every pipe is closed once its worker is gone"


class _Dying(rc.Executor):
    """An executor whose workers all die at once, every time; records what each launch was
    asked to start. The first launch computes item 0 here, as a worker would before dying."""

    def __init__(self, trace):
        self.trace = trace
        self.launched = []

    def launch(self, sweep):
        self.launched.append(sweep.queued)
        if len(self.launched) == 1:
            square(0, self.trace)

    def poll(self, sweep):
        return WorkerState(alive=0, problems=["worker died"])

    def cancel(self, sweep):
        pass


def test_dead_workers_are_relaunched_twice_for_what_is_left_then_stall(store, trace):
    ex = _Dying(trace)
    with pytest.raises(rc.SweepStalled, match="2 item.s. are unfinished"):
        square.map([{"x": i, "trace": trace} for i in range(3)], executor=ex, progress=False)
    assert ex.launched == [3, 2, 2], "the first launch for all 3, then two for the 2 left"


def test_a_worker_whose_code_has_another_version_refuses_to_run(store, trace, tmp_path):
    jobs = square.map([{"x": i, "trace": trace} for i in range(2)],
                      executor=rc.Manual(file=open(os.devnull, "w")), wait=False)
    sweep = jobs[0].sweep
    # The same module, edited since the submission: `square` is now version 2.
    edited = tmp_path / "edited"
    edited.mkdir()
    source = open(os.path.join(HERE, "sweep_tasks.py")).read()
    (edited / "sweep_tasks.py").write_text(source.replace(
        '@rc.task(version="1")\ndef square', '@rc.task(version="2")\ndef square'))
    env = {**os.environ, **sweep.worker_env()}
    env["PYTHONPATH"] = os.pathsep.join([str(edited), env.get("PYTHONPATH", "")])
    worker = subprocess.run(sweep.worker_argv(), env=env, capture_output=True, text=True,
                            timeout=120)
    assert worker.returncode == 2, worker.stderr  # a setup failure: executors do not retry
    assert "was submitted for sweep_tasks.square version 1" in worker.stderr
    assert computed(trace) == []
