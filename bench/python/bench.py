"""runcache's Python API side by side with joblib.Memory and diskcache, in one process and one run.

    python bench/python/bench.py                # 1 GiB arrays, 20 000 hit calls, 10 000-item sweep
    python bench/python/bench.py --quick        # 64 MiB arrays, 5 000 hit calls, smaller sweeps
    python bench/python/bench.py --only sweeps  # one section (hits, arrays, sweeps, clusters; repeatable)

Sections: (a) hit latency with small arguments, (b) a hit whose argument is a large array,
(c) storing a large array result, (d) loading it, (e) sweeps: a fully cached `map` over
rc.Local workers and the throughput of trivial items, against joblib.Parallel, (f) clusters:
trivial items through rc.Dask against client.map of the same function, and a fully cached
sweep through every executor (nothing submitted), (g) batch tasks: an all-cached 10 000-item
batch call on the local store (and S3 / PostgreSQL when their test services run), hashing a
large pyarrow array against numpy. Every figure is
a median; the machine is shared and noisy, so the ratios (measured in the same run) are what
count. The last table checks DESIGN.md §8's targets. exca is benchmarked only if it is
installed. Everything is written to a temporary directory that is removed at the end.

The sweep tasks are defined at module level: `rc.Local` workers import this file by path
(under the name `__mp_main__`, so `main()` below does not run in them).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

import runcache as rc
from runcache import _config, _core
from runcache._task import Terminated

GIB = 1 << 30
MIB = 1 << 20

results: dict[str, float] = {}
paired: dict[str, float] = {}  # median over repetitions of (plain time / runcache time)
sweep_sizes: dict[str, int] = {}  # items of the cached and the throughput sweeps measured


# -- (e) sweep tasks: at module level, so that rc.Local's worker processes can import them ----


@rc.task(name="bench.sweep_item")
def sweep_item(i, lr):
    """A trivial sweep item: the cost measured is runcache's own, per item."""
    return i * lr


def plain_item(i, lr):
    """The same function for joblib (wrapped by joblib.Memory(...).cache in the bench)."""
    return i * lr


def fmt(seconds: float | None) -> str:
    """A duration with a readable unit."""
    if seconds is None:
        return "n/a"
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def per_call(fn: Callable, args: tuple, n: int, warm: int) -> float:
    """Median seconds of ``fn(*args)`` over ``n`` individually timed calls, after ``warm``."""
    for _ in range(warm):
        fn(*args)
    return statistics.median(per_call_times(fn, args, n))


def per_call_times(fn: Callable, args: tuple, n: int) -> list[float]:
    """Seconds of each of ``n`` calls of ``fn(*args)``, timed one by one."""
    clock = time.perf_counter_ns
    times = [0] * n
    gc.disable()
    try:
        for i in range(n):
            t0 = clock()
            fn(*args)
            times[i] = clock() - t0
    finally:
        gc.enable()
    return [t / 1e9 for t in times]


def timed(fn: Callable, *args: Any) -> tuple[float, Any]:
    """Seconds of one call, and its value."""
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def row(section: str, name: str, seconds: float | None, note: str = "") -> None:
    """Records and prints one measurement."""
    results[name] = seconds  # type: ignore[assignment]
    print(f"  {name:<52} {fmt(seconds):>12}  {note}", flush=True)


def vs(name: str, ref: str) -> str:
    """``ref``'s time divided by ``name``'s: how many times faster ``name`` is."""
    a, b = results.get(name), results.get(ref)
    if not a or not b:
        return "n/a"
    return f"{b / a:,.1f}x"


# ------------------------------------------------------------------------------------------


def bench_hits(tmp: str, n: int) -> None:
    rounds = 10
    print(
        f"\n(a) hit latency, small arguments: median of {n:,} individually timed calls per peer "
        f"after warm-up, in {rounds} interleaved rounds"
    )
    warm = max(1000, n // 10)

    def add(x, y):
        return x + y

    import diskcache
    import joblib

    t = rc.task(name="bench.add", store=os.path.join(tmp, "rc-hit"))(add)
    m = rc.Memory(os.path.join(tmp, "rc-mem"), verbose=0).cache(add)
    j = joblib.Memory(os.path.join(tmp, "joblib-hit"), verbose=0).cache(add)
    cache = diskcache.Cache(os.path.join(tmp, "diskcache"))
    d = cache.memoize()(add)
    peers = [
        ("runcache @task hit", t, ""),
        ("runcache.Memory hit", m, ""),
        ("joblib.Memory hit", j, f"joblib {joblib.__version__}"),
        ("diskcache memoize hit", d, f"diskcache {diskcache.__version__}"),
    ]
    times: dict[str, list[float]] = {name: [] for name, _, _ in peers}
    for name, fn, _ in peers:
        fn(1, 2)  # the miss
        per_call(fn, (1, 2), 1, min(warm, 2000))
    for _ in range(rounds):
        # Interleaved rounds: a burst of load from the shared machine hits every peer alike.
        for name, fn, _ in peers:
            times[name].extend(per_call_times(fn, (1, 2), n // rounds))
    for name, _, note in peers:
        row("a", name, statistics.median(times[name]), note)
    cache.close()
    try:
        import exca  # noqa: F401

        print("  exca is installed but its benchmark is not written yet (skipped)")
    except ImportError:
        print("  exca: not installed (skipped; not installed by the setup)")

    # Where runcache's hit time goes.
    print("\n  runcache hit path, piece by piece (medians):")
    task = t.task
    bound = {"x": 1, "y": 2}
    key = _core.compute_key(task.name, task._key_version, bound)
    store = _config.open_store(task._effective())
    sig = task._shared["sig"]

    def doc():
        return _core.key_document(task.name, task._key_version, bound)

    def compute():
        raise AssertionError("a hit must not compute")

    hit_path = task._hit
    pieces = [
        ("empty call (timer + call overhead)", lambda: None, ()),
        ("_core.HitPath (the whole native hit: bind, key, lookup, unpickle)", hit_path, ((1, 2), None)),
        ("_core.compute_key of the bound dict (encode + BLAKE3)", _core.compute_key,
         (task.name, task._key_version, bound)),
        ("_core.Store.load(key) (lookup + unpickle, no key)", store.load, (key, True)),
        ("miss path: _config.current(options)", _config.current, (task._options,)),
        ("miss path: _config.open_store(options)", _config.open_store, (task._effective(),)),
        ("miss path: signature bind", sig.bind, ((1, 2), {})),
        (
            "miss path: _core.Store.call (hit, key given)",
            lambda: store.call(
                task.name, task._key_version, "cached", key, doc, compute, mmap=True,
                wait_timeout=None, source_hash=task._shared["source_hash"],
                interrupt_types=(Terminated,),
            ),
            (),
        ),
        ("_core.Store.manifest(key) (read + JSON text)", store.manifest, (key,)),
        ("Task.__call__", task, (1, 2)),
        ("decorated function (Task + wrapper)", t, (1, 2)),
    ]
    for name, fn, args in pieces:
        row("a", f"  {name}", per_call(fn, args, n, warm))


def make_array(nbytes: int) -> np.ndarray:
    """A float32 array of ``nbytes`` with varied content."""
    return np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)


def bench_large_argument(tmp: str, arr: np.ndarray, reps: int) -> None:
    size = fmt_size(arr.nbytes)
    print(f"\n(b) hit whose argument is a {size} float32 array: median per call")
    calls = []

    def first_value(a):
        calls.append(1)
        return float(a[0])

    take = rc.task(name="bench.take", store=os.path.join(tmp, "rc-big"))(first_value)
    take(arr)
    hreps = max(reps, 7)  # ~0.15 s per GiB: enough repetitions for a steady median
    times = [timed(take, arr)[0] for _ in range(hreps)]
    row("b", "runcache hit, fresh array argument (hashed)", statistics.median(times),
        f"{arr.nbytes / statistics.median(times) / 1e9:.1f} GB/s")
    t_key = statistics.median(
        timed(_core.compute_key, "bench", "0", {"a": arr})[0] for _ in range(hreps)
    )
    row("b", "  _core.compute_key of the array alone", t_key, f"{arr.nbytes / t_key / 1e9:.1f} GB/s")

    make = rc.task(name="bench.hold", store=os.path.join(tmp, "rc-big"))(lambda tag: arr)
    make("x")
    loaded = make("x")  # a runcache result: mapped, carries its digest
    row("b", "runcache hit, argument that is a runcache result", per_call(take, (loaded,), 2000, 100),
        "digest carried: not re-hashed")

    import joblib

    j = joblib.Memory(os.path.join(tmp, "joblib-big"), verbose=0).cache(first_value)
    j(arr)
    jreps = max(2, reps - 1)
    row("b", "joblib.Memory hit, array argument (re-hashed)",
        statistics.median(timed(j, arr)[0] for _ in range(jreps)))
    print("  diskcache memoize: skipped (it pickles the whole argument into its SQLite key)")
    t_sum = statistics.median(timed(np.sum, arr.view(np.uint32))[0] for _ in range(hreps))
    row("b", "  reference: np.sum over the array (1 thread)", t_sum, f"{arr.nbytes / t_sum / 1e9:.1f} GB/s")
    assert len(calls) == 2, "the runcache result argument must hit the fresh array's entry"


def fmt_size(n: int) -> str:
    return f"{n / GIB:g} GiB" if n >= GIB else f"{n / MIB:g} MiB"


def bench_store_and_load(tmp: str, arr: np.ndarray, reps: int) -> None:
    size = fmt_size(arr.nbytes)
    print(f"\n(c) storing a {size} array result: median of {reps}")
    loc = os.path.join(tmp, "rc-store")

    def produce(tag):
        return arr

    make = rc.task(name="bench.produce", store=loc)(produce)
    make_sync = make.options(sync=True)
    import joblib

    jmem = joblib.Memory(os.path.join(tmp, "joblib-store"), verbose=0)
    jmake = jmem.cache(produce)
    rows: dict[str, list[float]] = {k: [] for k in ("rc", "rc_sync", "np", "np_sync", "joblib")}

    def np_save_fsync(path, a):
        with open(path, "wb") as f:
            np.save(f, a)
            f.flush()
            os.fsync(f.fileno())

    tag = 0
    last_rc = 0
    for rep in range(reps):
        # Back-to-back pairs, order alternating between repetitions, so the shared disk's slow
        # drifts hit both sides; different content every time, so no blob is deduplicated.
        order = ["np", "rc", "np_sync", "rc_sync"] if rep % 2 == 0 else ["rc", "np", "rc_sync", "np_sync"]
        for kind in order + ["joblib"]:
            tag += 1
            arr[0] = tag
            os.sync()  # no dirty pages of the previous write pending
            # A new file every time, as runcache writes a new blob (overwriting one file would
            # free its cached pages first and make the plain write look faster than it is).
            npy = os.path.join(tmp, f"plain-{tag}.npy")
            if kind == "np":
                t, _ = timed(np.save, npy, arr)
            elif kind == "np_sync":
                t, _ = timed(np_save_fsync, npy, arr)
            elif kind == "rc":
                t, _ = timed(make, tag)
            elif kind == "rc_sync":
                t, _ = timed(make_sync, tag)
                last_rc = tag
            else:
                t, _ = timed(jmake, tag)
            rows[kind].append(t)
    paired["store (sync off)"] = statistics.median(
        n / r for n, r in zip(rows["np"], rows["rc"]))
    paired["store (sync on)"] = statistics.median(
        n / r for n, r in zip(rows["np_sync"], rows["rc_sync"]))
    row("c", "runcache store (sync off)", statistics.median(rows["rc"]),
        f"runs: {', '.join(fmt(t) for t in rows['rc'])}")
    row("c", "np.save", statistics.median(rows["np"]),
        f"runs: {', '.join(fmt(t) for t in rows['np'])}")
    row("c", "runcache store (sync on)", statistics.median(rows["rc_sync"]),
        f"runs: {', '.join(fmt(t) for t in rows['rc_sync'])}")
    row("c", "np.save + fsync", statistics.median(rows["np_sync"]),
        f"runs: {', '.join(fmt(t) for t in rows['np_sync'])}")
    row("c", "joblib.Memory store", statistics.median(rows["joblib"]))

    print(f"\n(d) loading the {size} array result (warm page cache)")
    arr[0] = tag + 1
    npy = os.path.join(tmp, "plain-load.npy")
    np.save(npy, arr)
    row("d", "runcache load, mmap (default)", per_call(make, (last_rc,), 200, 10))
    full = make.options(mmap=False)
    rc_times, np_times = [], []
    for rep in range(max(reps, 7)):  # reads are cheap next to writes: more pairs, steadier median
        for kind in (("rc", "np") if rep % 2 == 0 else ("np", "rc")):
            if kind == "rc":
                t, out = timed(full, last_rc)
                rc_times.append(t)
            else:
                t, out = timed(np.load, npy)
                np_times.append(t)
            del out
    paired["load, full read"] = statistics.median(n / r for n, r in zip(np_times, rc_times))
    row("d", "runcache load, mmap=False (full read)", statistics.median(rc_times),
        f"runs: {', '.join(fmt(t) for t in rc_times)}")
    row("d", "np.load (full read)", statistics.median(np_times),
        f"runs: {', '.join(fmt(t) for t in np_times)}")
    row("d", "np.load(mmap_mode='r')", per_call(lambda: np.load(npy, mmap_mode="r"), (), 200, 10))
    jmap = joblib.Memory(os.path.join(tmp, "joblib-store"), mmap_mode="r", verbose=0).cache(produce)
    row("d", "joblib.Memory load, mmap_mode='r'", per_call(jmap, (tag,), 50, 3))
    times = []
    for _ in range(reps):
        t, out = timed(jmake, tag)
        times.append(t)
        del out
    row("d", "joblib.Memory load (full read)", statistics.median(times))


def sweep_grid(n: int) -> list[dict[str, Any]]:
    """``n`` items (a multiple of 10): ``rc.grid(i=range(n // 10), lr=<10 values>)``."""
    return rc.grid(i=range(n // 10), lr=[round(0.1 * k, 1) for k in range(1, 11)])


def joblib_map(fn: Callable, items: list[dict[str, Any]]) -> list[Any]:
    """``fn`` over the items with ``joblib.Parallel(n_jobs=2, backend="loky")``."""
    from joblib import Parallel, delayed

    return Parallel(n_jobs=2, backend="loky")(delayed(fn)(**it) for it in items)


def stop_loky() -> None:
    """Shuts down joblib's reusable loky pool, so the next Parallel call starts its workers."""
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


def count_files(folder: str) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def commit_phases(loc: str, start: float, end: float) -> tuple[float, float, float]:
    """Where a computing sweep's wall time went, from the modification times of the entries it
    wrote (wall-clock ``start`` and ``end`` of the ``map`` call): (submit and worker start up to
    the first commit, first to last commit, last commit to ``map`` returning)."""
    folder = os.path.join(loc, "manifests")
    times = [
        e.stat().st_mtime
        for sub in os.scandir(folder) if sub.is_dir()
        for e in os.scandir(sub.path) if e.name.endswith(".json")
    ]
    return min(times) - start, max(times) - min(times), end - max(times)


def show_phases(label: str, phases: list[tuple[float, float, float]], n: int) -> None:
    first, body, tail = (statistics.median(p[i] for p in phases) for i in range(3))
    print(f"  {label}: start to first commit {fmt(first)}, first to last commit {fmt(body)} "
          f"({n / body:,.0f} items/s), last commit to map returning {fmt(tail)} (medians; "
          f"tails: {', '.join(fmt(p[2]) for p in phases)})")


def bench_sweeps(tmp: str, cached_n: int, tp_n: int, reps: int) -> None:
    import joblib

    print(
        "\n(e) sweeps: sweep_item.map(items, executor=rc.Local(workers=2)) vs "
        f"joblib.Parallel(n_jobs=2) over a joblib.Memory-cached function (joblib "
        f"{joblib.__version__}); trivial items "
        "(i * lr), so every figure is the per-item cost of the machinery"
    )
    sweep_sizes["cached"] = cached_n
    sweep_sizes["throughput"] = tp_n
    logs = os.path.join(tmp, "worker-logs")

    def rc_map(loc: str, items: list[dict[str, Any]], executor: rc.Executor) -> list[Any]:
        return sweep_item.options(store=loc).map(items, executor=executor, progress=False)

    def check(out: list[Any], items: list[dict[str, Any]], what: str) -> None:
        expected = [it["i"] * it["lr"] for it in items]
        if list(out) != expected:
            raise AssertionError(f"{what}: wrong results")

    # -- a fully cached sweep, end to end --------------------------------------------------
    items = sweep_grid(cached_n)
    loc = os.path.join(tmp, "rc-sweep")
    jdir = os.path.join(tmp, "joblib-sweep")
    jfn = joblib.Memory(jdir, verbose=0).cache(plain_item)
    print(f"  {cached_n:,}-item sweep, every item cached: median of {reps} calls (after a first "
          "call that computes them, timed as info)")
    stop_loky()
    w0 = time.time()
    t, out = timed(rc_map, loc, items, rc.Local(workers=2, log_dir=logs))
    first_phases = commit_phases(loc, w0, time.time())
    check(out, items, "runcache first sweep")
    row("e", f"  first call: runcache computes {cached_n:,} items (Local, 2 workers)", t,
        f"(info) {cached_n / t:,.0f} items/s, workers started")
    show_phases("    runcache first call", [first_phases], cached_n)
    t, out = timed(joblib_map, jfn, items)
    check(out, items, "joblib first run")
    row("e", f"  first call: joblib computes {cached_n:,} items (Parallel, 2 jobs)", t,
        f"(info) {cached_n / t:,.0f} items/s, loky pool started")
    files = count_files(jdir)
    sweeps_written = count_files(os.path.join(loc, "records"))
    if sweeps_written == 0:  # the check below would prove nothing
        raise AssertionError(f"no sweep record found under {loc}/records after the first call")
    rc_times, jl_times = [], []
    for rep in range(reps):
        for kind in (("rc", "jl") if rep % 2 == 0 else ("jl", "rc")):
            if kind == "rc":
                ex = rc.Local(workers=2, log_dir=logs)
                t, out = timed(rc_map, loc, items, ex)
                if ex._procs:
                    raise AssertionError("a fully cached sweep started workers")
                rc_times.append(t)
            else:
                t, out = timed(joblib_map, jfn, items)
                jl_times.append(t)
            check(out, items, f"{kind} cached sweep")
            del out
    if count_files(jdir) != files:
        raise AssertionError("joblib wrote files in its cached runs")
    if count_files(os.path.join(loc, "records")) != sweeps_written:
        raise AssertionError("a fully cached sweep wrote a sweep record")
    row("e", f"runcache {cached_n:,}-item cached sweep (Local)", statistics.median(rc_times),
        f"runs: {', '.join(fmt(t) for t in rc_times)}; no sweep written, no worker started")
    row("e", f"joblib.Parallel {cached_n:,}-item cached run", statistics.median(jl_times),
        f"runs: {', '.join(fmt(t) for t in jl_times)}; (info) loky pool already running")

    # Where the cached sweep's time goes: keys, the status of every key, then every load.
    task = sweep_item.task.options(store=loc)
    store = _config.open_store(task._effective())
    calls = [((), it) for it in items]
    t_keys, keys = timed(lambda: [task._key_of(a, k) for a, k in calls])
    t_status, _ = timed(store.statuses, keys, "cached", "", int(time.time() * 1000))
    t_load, _ = timed(lambda: [store.load(k) for k in keys])
    print(f"  runcache cached sweep, piece by piece: keys {fmt(t_keys)}, store.statuses "
          f"{fmt(t_status)}, loads {fmt(t_load)} ({fmt(t_load / cached_n)} per item)")

    # -- throughput: every item computed -------------------------------------------------
    items = sweep_grid(tp_n)
    print(
        f"\n  throughput, {tp_n:,} trivial items computed and stored once (fresh store / "
        f"joblib.Memory folder each time): median of {reps}; joblib 'cold' starts its loky "
        "pool in the timed call (as a sweep starts its workers), 'warm' reuses the pool of the "
        "previous call"
    )
    times: dict[str, list[float]] = {k: [] for k in ("rc", "jl_cold", "jl_warm", "inline")}
    phases = []
    tag = 0
    for rep in range(reps):
        order = ["rc", "jl_cold", "jl_warm", "inline"]
        if rep % 2:
            order = ["jl_cold", "jl_warm", "rc", "inline"]
        for kind in order:
            tag += 1
            where = os.path.join(tmp, f"tp-{tag}")
            if kind == "rc":
                w0 = time.time()
                t, out = timed(rc_map, where, items, rc.Local(workers=2, log_dir=logs))
                phases.append(commit_phases(where, w0, time.time()))
            elif kind == "inline":
                t, out = timed(rc_map, where, items, rc.Inline())
            else:
                if kind == "jl_cold":
                    stop_loky()
                fn = joblib.Memory(where, verbose=0).cache(plain_item)
                t, out = timed(joblib_map, fn, items)
            check(out, items, kind)
            times[kind].append(t)
            del out
    stop_loky()
    paired["sweep throughput vs joblib (cold)"] = statistics.median(
        j / r for j, r in zip(times["jl_cold"], times["rc"]))
    paired["sweep throughput vs joblib (warm)"] = statistics.median(
        j / r for j, r in zip(times["jl_warm"], times["rc"]))
    labels = {
        "rc": f"runcache {tp_n:,} items, Local(workers=2)",
        "jl_cold": f"joblib.Parallel {tp_n:,} items, cold pool",
        "jl_warm": f"joblib.Parallel {tp_n:,} items, warm pool",
        "inline": f"runcache {tp_n:,} items, Inline() (info)",
    }
    for kind, label in labels.items():
        med = statistics.median(times[kind])
        row("e", label, med,
            f"{tp_n / med:,.0f} items/s; runs: {', '.join(fmt(t) for t in times[kind])}")
    show_phases("runcache Local", phases, tp_n)
    print(f"  throughput ratio (runcache speed / joblib speed, paired per repetition): "
          f"{paired['sweep throughput vs joblib (cold)']:.2f}x vs the cold pool, "
          f"{paired['sweep throughput vs joblib (warm)']:.2f}x vs the warm pool")


def bench_clusters(tmp: str, tp_n: int, cached_n: int, reps: int) -> None:
    """(f) sweeps on a Dask cluster (distributed.LocalCluster, 2 worker processes of 1 thread)
    and on a local Ray (2 CPUs): throughput of trivial items against the engine's own map of
    the same function, and a fully cached sweep through every executor."""
    try:
        import distributed
    except ImportError:
        print("\n(f) clusters: skipped (pip install distributed)")
        return
    print(
        f"\n(f) clusters: {tp_n:,} trivial items through rc.Dask (fresh store each time) vs "
        f"client.map of the same function without runcache (distributed "
        f"{distributed.__version__}, LocalCluster of 2 worker processes, 1 thread each); "
        f"median of {reps}, back to back, order alternating"
    )
    sweep_sizes["cluster_throughput"] = tp_n
    sweep_sizes["cluster_cached"] = cached_n
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = distributed.Client(cluster)
    items = sweep_grid(tp_n)
    i_args, lr_args = [it["i"] for it in items], [it["lr"] for it in items]
    expected = [it["i"] * it["lr"] for it in items]

    def dask_map() -> list[Any]:
        futures = client.map(plain_item, i_args, lr_args, pure=False)
        try:
            return client.gather(futures)
        finally:
            del futures

    def rc_dask(where: str) -> list[Any]:
        return sweep_item.options(store=where).map(items, executor=rc.Dask(client),
                                                   progress=False)

    ray = None
    try:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except ImportError:
        print("  Ray rows skipped (pip install ray)")
    try:
        dask_map()  # the workers import plain_item's module once, outside the timings
        times: dict[str, list[float]] = {"dask": [], "rc": [], "ray": []}
        for rep in range(reps):
            order = ["dask", "rc"] if rep % 2 == 0 else ["rc", "dask"]
            if ray is not None:
                order.append("ray")
            for kind in order:
                where = os.path.join(tmp, f"cluster-tp-{kind}-{rep}")
                if kind == "dask":
                    t, out = timed(dask_map)
                elif kind == "rc":
                    t, out = timed(rc_dask, where)
                else:
                    t, out = timed(lambda: sweep_item.options(store=where).map(
                        items, executor=rc.Ray(), progress=False))
                if list(out) != expected:
                    raise AssertionError(f"{kind}: wrong results")
                times[kind].append(t)
        paired["dask throughput vs client.map"] = statistics.median(
            d / r for d, r in zip(times["dask"], times["rc"]))
        labels = {"rc": f"runcache {tp_n:,} items, Dask (2 workers)",
                  "dask": f"client.map {tp_n:,} items, no runcache",
                  "ray": f"runcache {tp_n:,} items, Ray (2 CPUs) (info)"}
        for kind, label in labels.items():
            if times[kind]:
                med = statistics.median(times[kind])
                row("f", label, med,
                    f"{tp_n / med:,.0f} items/s; runs: {', '.join(fmt(t) for t in times[kind])}")

        # -- a fully cached sweep through each executor: nothing is submitted ---------------
        loc = os.path.join(tmp, "cluster-cached")
        cached = sweep_grid(cached_n)
        t, _ = timed(lambda: sweep_item.options(store=loc).map(
            cached, executor=rc.Dask(client), progress=False))
        row("f", f"  first call: runcache computes {cached_n:,} items (Dask)", t, "(info)")
        devnull = open(os.devnull, "w")
        executors: dict[str, Callable[[], Any]] = {
            "Inline": rc.Inline, "Local": lambda: rc.Local(workers=2),
            "Manual": lambda: rc.Manual(file=devnull), "Slurm": rc.Slurm,
            "Dask": lambda: rc.Dask(client)}
        if ray is not None:
            executors["Ray"] = rc.Ray
        for name, make in executors.items():
            runs = []
            for _ in range(reps):
                ex = make()
                t, out = timed(lambda: sweep_item.options(store=loc).map(
                    cached, executor=ex, progress=False))
                if any(getattr(ex, a, None) for a in ("_procs", "_futures", "_refs",
                                                          "commands", "_tracking")):
                    raise AssertionError(f"a fully cached sweep started workers on {name}")
                runs.append(t)
            row("f", f"runcache {cached_n:,}-item cached sweep ({name})", statistics.median(runs),
                f"runs: {', '.join(fmt(t) for t in runs)}; nothing submitted")
    finally:
        client.close()
        cluster.close()
        if ray is not None:
            ray.shutdown()
    print(f"  throughput ratio (runcache speed / client.map speed, paired per repetition): "
          f"{paired['dask throughput vs client.map']:.2f}x")


def remote_stores() -> dict[str, str]:
    """Fresh S3 / PostgreSQL stores from the test services (scripts/services), when running."""
    import uuid

    out = {}
    tag = uuid.uuid4().hex[:8]
    s3 = os.environ.get("RUNCACHE_TEST_S3")
    if s3 and "/runcache-tests?" in s3:
        out["S3"] = s3.replace("/runcache-tests?", f"/bench-{tag}?")
    pg = os.environ.get("RUNCACHE_TEST_POSTGRES")
    if pg:
        out["PostgreSQL"] = pg + ("&" if "?" in pg else "?") + f"schema=bench_{tag}"
    return out


def bench_batch(tmp: str, n: int, size: int, reps: int) -> None:
    """(g) batch tasks: an all-cached call of n items, per store; hashing columnar arguments."""
    print(f"\n(g) batch tasks: a {n:,}-item call whose items are all cached (batch_size 64), "
          f"end to end; median of {reps}")
    stores = {"local": os.path.join(tmp, "batch-store"), **remote_stores()}
    if len(stores) == 1:
        print("  S3 / PostgreSQL: skipped (start them: eval \"$(scripts/services/s3 start)\"; "
              "eval \"$(scripts/services/postgres start)\")")
    items = [f"segment {i}" for i in range(n)]
    for label, loc in stores.items():
        @rc.batch_task(name=f"bench.embed.{label}", batch_size=64, store=loc)
        def embed(texts, model="m"):
            return [np.full(16, len(t), dtype=np.float32) for t in texts]

        t_cold, _ = timed(embed, items)
        # The moto S3 server of the test services answers one request at a time: one rep.
        runs = [timed(embed, items)[0] for _ in range(1 if label == "S3" else reps)]
        row("g", f"runcache {n:,}-item cached batch call ({label})", statistics.median(runs),
            f"first call (computes all, {-(-n // 64)} batches): {fmt(t_cold)}")
        if label != "local":
            embed.task.clear()

    print(f"\n  hashing a {fmt_size(size)} argument (_core.compute_key; median of {reps})")
    data = np.frombuffer(np.random.default_rng(0).bytes(size), dtype=np.float32)

    def hash_time(value: Any) -> float:
        return statistics.median(timed(_core.compute_key, "b", "1", {"x": value})[0]
                                 for _ in range(reps))

    t_np = hash_time(data)
    row("g", "hash a numpy array", t_np, f"{size / t_np / 1e9:.1f} GB/s")
    try:
        import pyarrow as pa
    except ImportError:
        print("  pyarrow: not installed (skipped)")
    else:
        t_pa = hash_time(pa.array(data))  # shares the numpy buffer: nothing is copied
        row("g", "hash a pyarrow array", t_pa, f"{size / t_pa / 1e9:.1f} GB/s")
        paired["arrow hash vs numpy"] = t_np / t_pa
    try:
        import torch  # noqa: F401
        print("  torch tensors are not keyed yet (docs/batch.md)")
    except ImportError:
        print("  torch: not installed (skipped; see docs/batch.md for why the setup leaves it out)")


def targets(ran: set[str]) -> None:
    r = results

    def ratio(peer: str, ours: str) -> float | None:
        a, b = r.get(ours), r.get(peer)
        return b / a if a and b else None

    def x1(v: float) -> str:
        return f"{v:,.1f}x"

    def x2(v: float) -> str:
        return f"{v:,.2f}x"

    # (section, name, value, test or None for an informational row, how to show the value,
    #  why the test does not apply to this run or "")
    checks: list[tuple[str, str, float | None, Callable | None, Callable, str]] = [
        ("hits", "hit, small args: <= 10 µs median", r.get("runcache @task hit"),
         lambda v: v <= 10e-6, fmt, ""),
        ("hits", "hit, small args: <= 4 µs median (issue 13)", r.get("runcache @task hit"),
         lambda v: v <= 4e-6, fmt, ""),
        ("hits", "hit: >= 20x faster than joblib.Memory",
         ratio("joblib.Memory hit", "runcache @task hit"), lambda v: v >= 20, x1, ""),
        ("hits", "hit: >= 4x faster than diskcache memoize (issue 13)",
         ratio("diskcache memoize hit", "runcache @task hit"), lambda v: v >= 4, x2, ""),
        ("arrays", "hashing a large array: >= 15x joblib",
         ratio("joblib.Memory hit, array argument (re-hashed)",
               "runcache hit, fresh array argument (hashed)"), lambda v: v >= 15, x1, ""),
        ("arrays", "argument that is a runcache result: µs (<= 100 µs)",
         r.get("runcache hit, argument that is a runcache result"), lambda v: v <= 100e-6, fmt, ""),
        ("arrays", "store (sync off): >= 0.8x np.save speed", paired.get("store (sync off)"),
         lambda v: v >= 0.8, x2, ""),
        ("arrays", "store (sync on): >= 0.8x np.save + fsync speed",
         paired.get("store (sync on)"), lambda v: v >= 0.8, x2, ""),
        ("arrays", "load, mmap: < 1 ms", r.get("runcache load, mmap (default)"),
         lambda v: v < 1e-3, fmt, ""),
        ("arrays", "load, full read: >= 0.8x np.load speed", paired.get("load, full read"),
         lambda v: v >= 0.8, x2, ""),
    ]
    if "sweeps" in ran:
        n, m = sweep_sizes["cached"], sweep_sizes["throughput"]
        checks += [
            ("sweeps", "10k-item cached sweep end to end: < 0.5 s",
             r.get(f"runcache {n:,}-item cached sweep (Local)"), lambda v: v < 0.5, fmt,
             "" if n == 10_000 else f"n/a: measured {n:,} items (--sweep-items 10000)"),
            ("sweeps", f"{m:,}-item sweep throughput vs joblib.Parallel",
             paired.get("sweep throughput vs joblib (cold)"), None, x2,
             "cold pool: both start their workers"),
            ("sweeps", f"{m:,}-item sweep throughput vs joblib.Parallel",
             paired.get("sweep throughput vs joblib (warm)"), None, x2,
             "warm pool: joblib's workers already run"),
        ]
    if "batch" in ran:
        n = sweep_sizes["batch"]
        checks.append(
            ("batch", f"{n:,}-item all-cached batch call, local: < 0.2 s",
             r.get(f"runcache {n:,}-item cached batch call (local)"), lambda v: v < 0.2, fmt,
             "" if n == 10_000 else f"n/a: measured {n:,} items"))
        for label in ("S3", "PostgreSQL"):
            checks.append(
                ("batch", f"{n:,}-item all-cached batch call, {label}",
                 r.get(f"runcache {n:,}-item cached batch call ({label})"), None, fmt,
                 "no target"))
        checks.append(
            ("batch", "hashing a pyarrow array: numpy's speed (>= 0.9x)",
             paired.get("arrow hash vs numpy"), lambda v: v >= 0.9, x2, ""))
    if "clusters" in ran and sweep_sizes.get("cluster_cached"):
        n, m = sweep_sizes["cluster_cached"], sweep_sizes["cluster_throughput"]
        checks.append(
            ("clusters", f"{m:,}-item sweep on Dask: >= 0.5x client.map speed",
             paired.get("dask throughput vs client.map"), lambda v: v >= 0.5, x2, ""))
        for name in ("Inline", "Local", "Manual", "Slurm", "Dask", "Ray"):
            checks.append(
                ("clusters", f"{n:,}-item cached sweep, {name}: < 0.5 s",
                 r.get(f"runcache {n:,}-item cached sweep ({name})"), lambda v: v < 0.5, fmt,
                 "" if n == 10_000 else f"n/a: measured {n:,} items"))
    print("\nDESIGN §8 targets (ratios are speed: peer time / runcache time; store, full read and"
          " sweep throughput: median over repetitions of back-to-back pairs)")
    for section, name, value, ok, show, why in checks:
        if section not in ran:
            continue
        if value is None:
            verdict = "n/a"
        elif ok is None:
            verdict = f"(info) {why}"
        elif why:
            verdict = why
        else:
            verdict = "met" if ok(value) else "MISSED"
        print(f"  {name:<52} {('n/a' if value is None else show(value)):>12}  {verdict}")


def summary() -> None:
    print("\nRatios (how many times faster runcache is; < 1 means slower)")
    pairs = [
        ("runcache @task hit", "joblib.Memory hit"),
        ("runcache @task hit", "diskcache memoize hit"),
        ("runcache.Memory hit", "joblib.Memory hit"),
        ("runcache.Memory hit", "diskcache memoize hit"),
        ("runcache hit, fresh array argument (hashed)", "joblib.Memory hit, array argument (re-hashed)"),
        ("runcache hit, argument that is a runcache result", "joblib.Memory hit, array argument (re-hashed)"),
        ("runcache store (sync off)", "np.save"),
        ("runcache store (sync off)", "joblib.Memory store"),
        ("runcache store (sync on)", "np.save + fsync"),
        ("runcache load, mmap (default)", "np.load(mmap_mode='r')"),
        ("runcache load, mmap (default)", "joblib.Memory load, mmap_mode='r'"),
        ("runcache load, mmap=False (full read)", "np.load (full read)"),
        ("runcache load, mmap=False (full read)", "joblib.Memory load (full read)"),
    ]
    # (The sweep throughput ratios are paired per repetition: see (e) and the targets table.)
    n = sweep_sizes.get("cached", 0)
    pairs.append(
        (f"runcache {n:,}-item cached sweep (Local)", f"joblib.Parallel {n:,}-item cached run"))
    for ours, peer in pairs:
        if ours not in results or peer not in results:
            continue
        print(f"  {ours:<48} vs {peer:<46} {vs(ours, peer):>10}")


SECTIONS = ("hits", "arrays", "sweeps", "clusters", "batch")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="64 MiB arrays, 5 000 hit calls, 2 000 cached / 500 computed sweep items")
    p.add_argument("--only", action="append", choices=SECTIONS, default=None,
                   help="run only this section (repeatable): hits = (a), arrays = (b) (c) (d), "
                        "sweeps = (e), clusters = (f) (Dask and Ray), batch = (g)")
    p.add_argument("--calls", type=int, default=None, help="hit calls per peer (default 20 000)")
    p.add_argument("--size-mib", type=int, default=None, help="array size in MiB (default 1024)")
    p.add_argument("--sweep-items", type=int, default=None,
                   help="items of the cached sweep (default 10 000; a multiple of 10)")
    p.add_argument("--throughput-items", type=int, default=None,
                   help="items of the throughput sweeps (default 2 000; a multiple of 10)")
    p.add_argument("--dir", default=None, help="scratch directory (default $TMPDIR or /tmp)")
    p.add_argument("--json", default=None, help="also write the raw results (seconds) to this file")
    a = p.parse_args()
    ran = set(a.only or SECTIONS)
    n = a.calls or (5_000 if a.quick else 20_000)
    size = (a.size_mib or (64 if a.quick else 1024)) * MIB
    reps = 5 if a.quick else 3
    cached_n = a.sweep_items or (2_000 if a.quick else 10_000)
    tp_n = a.throughput_items or (500 if a.quick else 2_000)
    for opt, v in (("--sweep-items", cached_n), ("--throughput-items", tp_n)):
        if v < 10 or v % 10:
            p.error(f"{opt} {v}: give a multiple of 10")
    tmp = tempfile.mkdtemp(prefix="runcache-pybench-", dir=a.dir)
    print(
        f"runcache {rc.__version__} Python benchmark: {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}, numpy {np.__version__}; temp dir {tmp}"
    )
    try:
        if "hits" in ran:
            bench_hits(tmp, n)
        if "arrays" in ran:
            arr = make_array(size)
            bench_large_argument(tmp, arr, reps)
            bench_store_and_load(tmp, arr, reps)
            del arr
        if "sweeps" in ran:
            bench_sweeps(tmp, cached_n, tp_n, 5)
        if "clusters" in ran:
            bench_clusters(tmp, 1000, cached_n, reps)
        if "batch" in ran:
            sweep_sizes["batch"] = cached_n
            bench_batch(tmp, cached_n, size, reps)
        summary()
        targets(ran)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
