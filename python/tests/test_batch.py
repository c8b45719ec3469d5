"""Batch tasks: per-item entries computed in batches, across real processes (SIGKILL in the
middle, new items, racing interpreters), failures, the length contract, keys and modes."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import runcache as rc
from conftest import skip_or_fail
from sweep_tasks import computed

#: A child that "embeds" items 0..n-1 in batches of 64 and logs every item it computes (one
#: line per item, one `#` line per batch, in one write per batch). With HANG_AT=k it stops
#: inside its k-th batch, after writing the file `<log>.hung`.
EMBED = r"""
import os, sys, time
import numpy as np
import runcache as rc

store, log, n, hang_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rc.configure(store=store)
batches = 0

@rc.batch_task(name="t.embed", batch_size=64, version="1")
def embed(texts, model="m"):
    global batches
    batches += 1
    if batches == hang_at:
        open(log + ".hung", "w").close()
        time.sleep(600)
    with open(log, "a") as f:
        f.write("#\n" + "".join(t + "\n" for t in texts))
    return [np.full(8, int(t.split("-")[1]), dtype=np.float32) for t in texts]

go = log + ".go"
while not os.path.exists(go):
    time.sleep(0.001)
out = embed([f"text-{i}" for i in range(n)])
assert [int(v[0]) for v in out] == list(range(n)), "results in input order"
print("OK", len(out), flush=True)
"""


@rc.batch_task(name="t.embed", batch_size=64, version="1")
def embed(texts, model="m"):
    raise AssertionError("the test process only reads entries")


def run_embed(store, log, n, hang_at=0, go=True):
    proc = subprocess.Popen(
        [sys.executable, "-c", EMBED, str(store), str(log), str(n), str(hang_at)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if go:
        open(f"{log}.go", "w").close()
    return proc


def logged(log):
    """(items computed, batch sizes) from a child's log."""
    if not os.path.exists(log):
        return [], []
    items, sizes = [], []
    for line in open(log).read().splitlines():
        if line == "#":
            sizes.append(0)
        else:
            items.append(line)
            sizes[-1] += 1
    return items, sizes


def text(i):
    return f"text-{i}"


def test_sigkill_mid_call_then_only_missing_and_new_items_are_computed(tmp_path):
    store = tmp_path / "store"
    first = tmp_path / "first.log"
    proc = run_embed(store, first, 1000, hang_at=8)
    deadline = time.monotonic() + 120
    while not os.path.exists(f"{first}.hung"):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the child never reached its 8th batch"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    items, sizes = logged(first)
    assert sizes == [64] * 7, "seven batches returned before the kill"

    rc.configure(store=str(store))
    try:
        stored = {text(i) for i in range(1000) if embed.entry(text(i)).exists()}
        assert stored == set(items), "each returned batch committed all its items, no others"

        second = tmp_path / "second.log"
        proc = run_embed(store, second, 1000)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "OK 1000" in out
        items2, sizes2 = logged(second)
        assert sorted(items2) == sorted(text(i) for i in range(1000) if text(i) not in stored)
        assert len(items2) == len(set(items2)) == 552, "only the items without an entry"
        assert sizes2 == [64] * 8 + [40]

        third = tmp_path / "third.log"
        proc = run_embed(store, third, 1100)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        items3, sizes3 = logged(third)
        assert items3 == [text(i) for i in range(1000, 1100)], "only the 100 new items"
        assert sizes3 == [64, 36], "in two batches"
    finally:
        rc.configure(store=None)


RACER = r"""
import os, sys, time
import runcache as rc

store, log, start, stop, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rc.configure(store=store)

@rc.batch_task(name="t.race", batch_size=32)
def square(xs):
    with open(log, "a") as f:
        f.write("".join(f"{x}\n" for x in xs))
    time.sleep(0.01)
    return [x * x for x in xs]

while not os.path.exists(go):
    time.sleep(0.001)
out = square(range(start, stop))
assert out == [x * x for x in range(start, stop)]
print("OK", flush=True)
"""


def test_processes_racing_on_overlapping_lists_compute_each_item_once(tmp_path):
    store, go = tmp_path / "store", tmp_path / "go"
    ranges = [(0, 600), (300, 900), (100, 800)]
    logs = [tmp_path / f"p{i}.log" for i in range(len(ranges))]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(store), str(log), str(a), str(b), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for log, (a, b) in zip(logs, ranges)
    ]
    time.sleep(0.5)  # let every interpreter start and wait at the barrier
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    computed = [int(x) for log in logs if log.exists() for x in log.read_text().split()]
    assert sorted(computed) == list(range(900)), "every item computed exactly once"


@pytest.fixture
def store(tmp_path):
    rc.configure(store=str(tmp_path / "store"))
    yield tmp_path / "store"
    rc.configure(store=None)


def recording(calls, batch_size=4, **kw):
    @rc.batch_task(batch_size=batch_size, **kw)
    def double(xs, scale=2):
        calls.append(list(xs))
        return [x * scale for x in xs]

    return double


def test_a_failed_batch_stores_nothing_and_names_the_batch(store):
    calls = []

    @rc.batch_task(batch_size=3)
    def flaky(xs):
        calls.append(list(xs))
        if 4 in xs:
            raise MemoryError("out of GPU memory")
        return [x + 1 for x in xs]

    with pytest.raises(MemoryError, match="out of GPU memory") as info:
        flaky(range(9))
    notes = "\n".join(info.value.__notes__)
    assert "the batch of 3 item(s) at position(s) 3, 4, 5 of 9" in notes, notes
    assert "nothing was stored" in notes
    assert [flaky.entry(x).exists() for x in range(9)] == [True] * 3 + [False] * 6
    calls.clear()
    assert flaky(range(4)) == [1, 2, 3, 4]
    assert calls == [[3]], "the first batch's entries stay; only item 3 is computed"


def test_the_length_contract_is_checked(store):
    @rc.batch_task(batch_size=10)
    def short(xs):
        return [x for x in xs][1:]

    with pytest.raises(ValueError, match="returned 2 results for a batch of 3 items") as info:
        short([1, 2, 3])
    assert "exactly one result per item" in str(info.value)
    assert not any(short.entry(x).exists() for x in [1, 2, 3]), "nothing committed"


def test_results_in_order_duplicates_once_and_iterators_accepted(store):
    calls = []
    double = recording(calls)
    assert double(iter([3, 1, 3, 2, 1])) == [6, 2, 6, 4, 2]
    assert calls == [[3, 1, 2]], "each distinct item once, in first-seen order"
    assert double([]) == []

    @rc.batch_task(batch_size=2)
    def gen(xs):
        for x in xs:  # a generator is fine: one result per item
            yield str(x)

    assert gen([1, 2, 3]) == ["1", "2", "3"]


def test_other_arguments_and_item_key_enter_the_key(store):
    calls = []
    double = recording(calls)
    assert double([1, 2]) == [2, 4]
    assert double([1, 2], scale=3) == [3, 6], "another scale is another entry"
    assert calls == [[1, 2], [1, 2]]
    assert double.key(1) != double.key(1, scale=3)
    assert double.entry(1).load() == 2
    assert double.entry(1, scale=3).load() == 3
    explanation = str(double.explain(1, scale=4))
    assert "scale" in explanation, explanation

    seen = []

    @rc.batch_task(item_key=lambda doc: doc["id"], batch_size=8)
    def length(docs):
        seen.extend(d["id"] for d in docs)
        return [len(d["text"]) for d in docs]

    assert length([{"id": "a", "text": "xy"}, {"id": "b", "text": "xyz"}]) == [2, 3]
    # Only the id is keyed: a changed text with the same id is a hit.
    assert length([{"id": "a", "text": "changed"}]) == [2]
    assert seen == ["a", "b"]
    assert length.key({"id": "a", "text": ""}) == length.key({"id": "a", "text": "zz"})


def test_modes_apply_to_batch_tasks(store):
    calls = []
    double = recording(calls, batch_size=2)
    double([1, 2, 3])
    calls.clear()
    double.options(mode="force")([1, 2, 3])
    assert calls == [[1, 2], [3]], "force recomputes every item"
    calls.clear()
    assert double.options(mode="read-only")([1, 9]) == [2, 18]
    assert calls == [[9]] and not double.entry(9).exists(), "read-only stores nothing"
    calls.clear()
    assert double.options(mode="off", batch_size=5)([1, 2, 3]) == [2, 4, 6]
    assert calls == [[1, 2, 3]], "off bypasses the store, still in batches"
    with pytest.raises(ValueError, match="batch_size=0"):
        double.options(batch_size=0)


def test_batch_tasks_work_on_tiered_and_signed_stores(tmp_path):
    near, far = str(tmp_path / "near"), str(tmp_path / "far")
    calls = []
    double = recording(calls, store=[near, far], signing_key="k1")
    assert double([1, 2, 3]) == [2, 4, 6]
    calls.clear()
    assert double([1, 2, 3]) == [2, 4, 6] and calls == []
    # Entries are signed: a reader with another key refuses them.
    other = double.options(signing_key="k2")
    with pytest.raises(rc.SignatureError):
        other([1])


def test_results_load_memory_mapped(store):
    @rc.batch_task(batch_size=2)
    def big(xs):
        return [np.full(1 << 18, x, dtype=np.float64) for x in xs]

    first = big([1, 2])
    again = big([1, 2])
    assert [a[0] for a in again] == [1.0, 2.0]
    assert not again[0].flags.writeable, "a loaded array is a read-only view of the store"
    assert first[0].flags.writeable


SLOW = r"""
import os, sys, time
import runcache as rc

store, marker = sys.argv[1], sys.argv[2]
rc.configure(store=store)

@rc.batch_task(name="t.slow", batch_size=2)
def slow(xs):
    if 2 in xs:
        open(marker, "w").close()
        time.sleep(60)
    return [x * 10 for x in xs]

slow([0, 1, 2, 3])
"""


def test_sigterm_in_a_batch_stores_nothing_of_it_and_exits_by_the_signal(tmp_path):
    store, marker = tmp_path / "store", tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", SLOW, str(store), str(marker)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the second batch never started"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err

    calls = []

    @rc.batch_task(name="t.slow", batch_size=2, store=str(store))
    def slow(xs):
        calls.append(list(xs))
        return [x * 10 for x in xs]

    assert [slow.entry(x).exists() for x in range(4)] == [True, True, False, False]
    assert slow([0, 1, 2, 3]) == [0, 10, 20, 30]
    assert calls == [[2, 3]], "only the interrupted batch is computed again"


def test_progress_counts_items(store, capsys):
    calls = []
    double = recording(calls, batch_size=2, progress=True)
    double([1, 2])
    double([1, 2, 3, 4, 5])
    err = capsys.readouterr().err
    assert "computed 2, loaded 0 from cache" in err, err
    assert "computed 3, loaded 2 from cache" in err, err
    double([1, 2, 3])
    assert "computed" not in capsys.readouterr().err, "an all-cached call shows nothing"


def computed_items(trace):
    """The items the batch tasks of batch_tasks.py computed, one per computation."""
    return [x for x, _ in computed(trace)]


def test_map_spreads_batches_over_workers_and_computes_each_item_once(store, trace):
    from batch_tasks import cube

    items = [x for x in range(200) if x != 13]
    out = cube.map(items, trace, executor=rc.Local(workers=2), progress=False)
    assert out == [x**3 for x in items]
    assert sorted(computed_items(trace)) == items, "every item computed exactly once"
    pids = {pid for _, pid in computed(trace)}
    assert os.getpid() not in pids, "computed by the workers, not here"

    # More items: only the new ones are computed; the known ones load.
    os.unlink(os.path.join(trace, "computed"))
    more = items + list(range(200, 230))
    assert cube.map(more, trace, executor=rc.Local(workers=2), progress=False) == [
        x**3 for x in more
    ]
    assert sorted(computed_items(trace)) == list(range(200, 230))

    # Inline computes here, through the same entries.
    assert cube.map([1, 2], trace, executor=rc.Inline()) == [1, 8]


def test_map_reports_a_failed_batch_and_keeps_the_others(store, trace):
    from batch_tasks import cube

    with pytest.raises(rc.SweepError, match="13 is unlucky"):
        cube.map(range(48), trace, executor=rc.Local(workers=2), progress=False)
    stored = [cube.entry(x, trace).exists() for x in range(48)]
    assert stored == [False] * 16 + [True] * 32, "the failed batch (0..15) stored nothing"


def test_map_runs_batches_on_dask(store, trace):
    try:
        import distributed
    except ImportError:
        skip_or_fail("the distributed package is not installed", "pip install distributed")
    from batch_tasks import cube

    items = [x for x in range(40) if x != 13]
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False)
    client = distributed.Client(cluster)
    try:
        out = cube.map(items, trace, executor=rc.Dask(client), progress=False)
    finally:
        client.close()
        cluster.close()
    assert out == [x**3 for x in items]
    assert sorted(computed_items(trace)) == items, "every item computed exactly once"
