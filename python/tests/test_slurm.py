"""The SLURM executor against a real cluster (``scripts/services/slurm start``, which exports
RUNCACHE_TEST_SLURM and SLURM_CONF). Without one these tests skip, except under CI=true where
they fail."""

import collections
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

import runcache as rc
from conftest import skip_or_fail
from slurm_tasks import computed, cube, picky, sleepy

SBATCH = shutil.which("sbatch")


def _cluster_problem():
    if not os.environ.get("RUNCACHE_TEST_SLURM"):
        return "RUNCACHE_TEST_SLURM is not set"
    if SBATCH is None:
        return "sbatch is not on PATH"
    try:
        p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo failed: {e}"
    if p.returncode != 0:
        return f"sinfo failed: {p.stderr.strip()}"
    if not any(s.startswith(("idle", "mixed", "allocated")) for s in p.stdout.split()):
        return f"no usable node (sinfo: {p.stdout.strip()!r})"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem:
        skip_or_fail(f"the SLURM test cluster is not usable ({problem})",
                     'start one (as root) with: eval "$(scripts/services/slurm start)"')


@pytest.fixture
def counted_sbatch(tmp_path, monkeypatch):
    """An `sbatch` first on PATH that notes each call in a file, then runs the real one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch-calls"
    wrapper = bin_dir / "sbatch"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\nexec {SBATCH} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return lambda: calls.read_text().splitlines() if calls.exists() else []


def wait_until_ended(ex, handle, timeout=60):
    """The executor's view once no task is alive (a task that just finished its last item may
    still be COMPLETING when the sweep is already drained)."""
    deadline = time.monotonic() + timeout
    while True:
        state = ex.poll(handle)
        if state.alive == 0:
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.2)


def held_item_started(trace, timeout=120):
    """Waits until ``sleepy``'s held item has started; returns the path of its marker."""
    started = os.path.join(trace, "started")
    deadline = time.monotonic() + timeout
    while not os.path.exists(started):
        assert time.monotonic() < deadline, "the held item never started"
        time.sleep(0.1)
    return started


def executor(tmp_path, **kw):
    opts = dict(mem="200M", time="00:10:00", log_dir=str(tmp_path / "slurm-logs"),
                poll_interval=0.5)
    opts.update(kw)
    return rc.Slurm(**opts)


def test_a_sweep_runs_as_one_array(cluster, store, trace, tmp_path, counted_sbatch):
    items = [{"x": i, "trace": trace} for i in range(8)]
    ex = executor(tmp_path)
    results = cube.map(items, executor=ex, progress=False)
    assert results == [i**3 for i in range(8)]
    # One sbatch for the whole sweep, an array of one task per item.
    calls = counted_sbatch()
    assert len(calls) == 1, calls
    assert "--array=0-7 " in calls[0] + " "
    # Computed once each, by SLURM jobs, not by this process.
    done = computed(trace)
    assert collections.Counter(x for x, _ in done) == {i: 1 for i in range(8)}
    assert all(job != "none" for _, job in done)
    # What the item printed is in its entry's logs.
    assert "cube of 5 in array task" in cube.entry(5, trace).logs()
    # The workers' own logs are where the executor says (once every task has run: the sweep
    # may be drained before the last tasks even start).
    (sweep_dir,) = (tmp_path / "slurm-logs").iterdir()
    assert wait_until_ended(ex, rc.sweep(sweep_dir.name)).problems == []
    outs = sorted(p.name for p in sweep_dir.glob("*.out"))
    assert len(outs) == 8, outs
    assert all(p.read_text().count("runcache worker") >= 1 for p in sweep_dir.glob("*.out"))
    # Everything settled: a second map computes nothing and submits nothing.
    assert cube.map(items, executor=ex, progress=False) == results
    assert len(counted_sbatch()) == 1
    assert len(computed(trace)) == 8


def test_the_sweep_record_names_the_array(cluster, store, trace, tmp_path):
    items = [{"x": i, "trace": trace} for i in range(3)]
    jobs = cube.map(items, executor=executor(tmp_path), wait=False)
    handle = jobs[0].sweep
    assert [j.result(timeout=120) for j in jobs] == [0, 1, 8]
    # Another session sees the job ids and the log folder in the sweep record.
    again = rc.sweep(handle.id)
    info = again.executor_info
    assert info["kind"] == "Slurm" and len(info["job_ids"]) == 1
    assert info["log_dir"] == str(tmp_path / "slurm-logs" / handle.id)
    state = wait_until_ended(rc.Slurm(poll_interval=0), again)
    assert state.problems == []


def test_a_failing_item_is_reported(cluster, store, trace, tmp_path):
    items = [{"x": i, "trace": trace} for i in range(4)]
    ex = executor(tmp_path, max_tasks=2)
    got = picky.map(items, executor=ex, errors="return", progress=False)
    assert [got[i] for i in (0, 1, 3)] == [0, 10, 30]
    assert isinstance(got[2], rc.Failure)
    assert got[2].index == 2 and "2 is not welcome" in got[2].message
    assert "picky does not like 2" in picky.entry(2, trace).logs()
    # The default raises after the sweep (the failure is recorded: nothing is recomputed).
    with pytest.raises(rc.SweepError, match="2 is not welcome"):
        picky.map(items, executor=ex, progress=False)
    assert len(computed(trace)) == 4


def test_scancel_of_a_task_mid_item_loses_nothing(cluster, store, trace, tmp_path):
    items = [{"x": i, "trace": trace, "hold": 0} for i in range(6)]
    ex = executor(tmp_path, max_tasks=3)
    jobs = sleepy.map(items, executor=ex, wait=False)
    handle = jobs[0].sweep
    started = held_item_started(trace)
    with open(started) as f:
        victim = f.read().strip()
    assert jobs[0].status() == "running"
    subprocess.run(["scancel", victim], check=True, timeout=30)
    results = handle.results(timeout=180, progress=False)
    assert results == [x + 1000 for x in range(6)]
    done = collections.Counter(x for x, _ in computed(trace))
    assert done == {x: 1 for x in range(6)}
    assert not os.path.exists(os.path.join(trace, "slept-through"))
    # The cancelled worker saw SIGTERM and released its item; SLURM reports it cancelled.
    job, task = victim.split("_")
    log = tmp_path / "slurm-logs" / handle.id / f"{job}_{task}.out"
    assert "SIGTERM" in log.read_text()
    state = wait_until_ended(rc.Slurm(poll_interval=0), rc.sweep(handle.id))
    assert any(p.startswith(f"SLURM task {victim}: CANCELLED") for p in state.problems), state
    assert str(log) in " ".join(state.problems)


def test_snapshot_runs_the_code_as_submitted(cluster, store, tmp_path, monkeypatch, request):
    # A module of the project, edited after submission: the array runs the submitted version.
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "snapmod.py").write_text(
        "import runcache as rc\n\n@rc.task(version='1')\ndef answer(x):\n    return ('old', x)\n"
    )
    monkeypatch.chdir(proj)
    monkeypatch.syspath_prepend(str(proj))
    import runcache._slurm as slurm_mod

    monkeypatch.setattr(slurm_mod, "project_dir", lambda: proj)
    import snapmod

    request.addfinalizer(lambda: sys.modules.pop("snapmod", None))
    # Hold the array until the file is edited.
    ex = executor(tmp_path, snapshot=True, extra={"hold": True})
    jobs = snapmod.answer.map([1, 2], executor=ex, wait=False)
    (proj / "snapmod.py").write_text(
        "import runcache as rc\n\n@rc.task(version='1')\ndef answer(x):\n    return ('new', x)\n"
    )
    job_ids = jobs[0].sweep.executor_info["job_ids"]
    subprocess.run(["scontrol", "release", *job_ids], check=True, timeout=30)
    assert [j.result(timeout=120) for j in jobs] == [("old", 1), ("old", 2)]
    code = tmp_path / "slurm-logs" / jobs[0].sweep.id / "code"
    assert (code / "snapmod.py").read_text().count("'old'") == 1


SCRIPT = """\
import sys

import runcache as rc


@rc.task(version="1")
def where(x):
    return ("{version}", x)


if __name__ == "__main__":
    rc.configure(store=sys.argv[1])
    ex = rc.Slurm(snapshot=True, extra={{"hold": True}}, mem="200M", time="00:10:00",
                  log_dir=sys.argv[2])
    jobs = where.map([1, 2], executor=ex, wait=False)
    print(jobs[0].sweep.id)
"""


def test_snapshot_covers_a_task_defined_in_the_main_script(cluster, store, tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    script = proj / "run.py"
    script.write_text(SCRIPT.format(version="old"))
    logs = tmp_path / "slurm-logs"
    p = subprocess.run([sys.executable, str(script), str(store), str(logs)], cwd=proj,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    sweep_id = p.stdout.strip().splitlines()[-1]
    script.write_text(SCRIPT.format(version="new"))  # edited while the jobs wait
    handle = rc.sweep(sweep_id)
    subprocess.run(["scontrol", "release", *handle.executor_info["job_ids"]], check=True,
                   timeout=30)
    assert handle.results(timeout=120, progress=False) == [("old", 1), ("old", 2)]
    assert (logs / sweep_id / "code" / "run.py").exists()


def test_a_sweep_whose_only_task_was_cancelled_is_resubmitted(
    cluster, store, trace, tmp_path, counted_sbatch
):
    items = [{"x": i, "trace": trace, "hold": 1} for i in range(3)]
    ex = executor(tmp_path, max_tasks=1, poll_interval=1.0)
    scancelled = []

    def cancel_when_held():
        with open(held_item_started(trace)) as f:
            scancelled.append(subprocess.run(["scancel", f.read().strip()], timeout=30))

    killer = threading.Thread(target=cancel_when_held, daemon=True)
    killer.start()
    results = sleepy.map(items, executor=ex, progress=False)
    killer.join(timeout=10)
    assert not killer.is_alive() and [p.returncode for p in scancelled] == [0]
    assert results == [1000, 1001, 1002]
    assert collections.Counter(x for x, _ in computed(trace)) == {0: 1, 1: 1, 2: 1}
    # The first array's only task died with item 1 unfinished: the sweep started a second one.
    calls = counted_sbatch()
    assert len(calls) == 2 and all("--array=0-0 " in c + " " for c in calls), calls
    (sweep_dir,) = (tmp_path / "slurm-logs").iterdir()
    assert len(rc.sweep(sweep_dir.name).executor_info["job_ids"]) == 2


def test_workers_that_cannot_import_the_task_are_not_resubmitted(
    cluster, store, tmp_path, monkeypatch, request, counted_sbatch
):
    # The task's module disappears before the (held) array starts: every worker exits with
    # status 2, which the executor reports as fatal, so the sweep stops without resubmitting.
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "gonemod.py").write_text(
        "import runcache as rc\n\n@rc.task(version='1')\ndef gone(x):\n    return x\n"
    )
    monkeypatch.syspath_prepend(str(proj))
    import gonemod

    request.addfinalizer(lambda: sys.modules.pop("gonemod", None))
    ex = executor(tmp_path, extra={"hold": True})
    jobs = gonemod.gone.map([1, 2], executor=ex, wait=False)
    handle = jobs[0].sweep
    (proj / "gonemod.py").unlink()
    subprocess.run(["scontrol", "release", *handle.executor_info["job_ids"]], check=True,
                   timeout=30)
    with pytest.raises(rc.SweepStalled) as info:
        handle.wait(timeout=120, progress=False)
    assert "exit code 2:0" in str(info.value)
    assert len(counted_sbatch()) == 1
    (log,) = (tmp_path / "slurm-logs" / handle.id).glob("*_0.out")
    assert "cannot import the task" in log.read_text()


def test_cancelling_a_sweep_scancels_its_array_and_starts_nothing_more(
    cluster, store, trace, tmp_path, counted_sbatch
):
    items = [{"x": i, "trace": trace, "hold": 0} for i in range(6)]
    jobs = sleepy.map(items, executor=executor(tmp_path, max_tasks=1), wait=False)
    handle = jobs[0].sweep
    held_item_started(trace)
    # The only array task starts its walk at item 0 and holds it: the 5 others are waiting.
    # (The held item is cancelled later, once scancel's SIGTERM made its worker release it.)
    assert handle.cancel() in (5, 6)
    results = handle.results(errors="return", timeout=120, progress=False)
    assert [getattr(r, "error_type", r) for r in results] == ["runcache.Cancelled"] * 6
    assert computed(trace) == []
    assert len(counted_sbatch()) == 1, "a cancelled sweep is not resubmitted"
    assert not os.path.exists(os.path.join(trace, "slept-through"))


def test_a_sweep_above_max_array_size_is_split_into_chained_arrays(
    cluster, store, trace, tmp_path, counted_sbatch
):
    ex = executor(tmp_path, array_parallelism=4)
    max_size = int(ex.cluster_config().get("MaxArraySize", "0"))
    if not 1 < max_size <= 20:
        skip_or_fail(f"the test cluster's MaxArraySize is {max_size}",
                     "scripts/services/slurm sets 12 so that a split is tested with a few tasks")
    n = max_size + 3
    items = [{"x": i, "trace": trace} for i in range(n)]
    assert cube.map(items, executor=ex, progress=False) == [i**3 for i in range(n)]
    calls = counted_sbatch()
    assert len(calls) == 2, calls
    assert f"--array=0-{max_size - 1}%4 " in calls[0] + " "
    assert "--array=0-2%4 " in calls[1] + " " and "--dependency=afterany:" in calls[1]
    done = computed(trace)
    assert collections.Counter(x for x, _ in done) == {i: 1 for i in range(n)}
    # Both arrays are in the sweep record, so any session can follow and cancel them.
    (sweep_dir,) = (tmp_path / "slurm-logs").iterdir()
    info = rc.sweep(sweep_dir.name).executor_info
    assert len(info["job_ids"]) == 2 and info["tasks"] == [max_size, 3]
