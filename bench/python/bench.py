"""runcache's Python API side by side with joblib.Memory and diskcache, in one process and one run.

    python bench/python/bench.py            # 1 GiB arrays, 20 000 hit calls per peer
    python bench/python/bench.py --quick    # 64 MiB arrays, 5 000 hit calls

Sections: (a) hit latency with small arguments, (b) a hit whose argument is a large array,
(c) storing a large array result, (d) loading it. Every figure is a median; the machine is
shared and noisy, so the ratios (measured in the same run) are what count. The last table
checks DESIGN.md §8's targets. exca is benchmarked only if it is installed. Everything is
written to a temporary directory that is removed at the end.
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
    m = rc.Memory(os.path.join(tmp, "rc-mem")).cache(add)
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

    pieces = [
        ("empty call (timer + call overhead)", lambda: None, ()),
        ("_config.current(options)", _config.current, (task._options,)),
        ("_config.open_store(options)", _config.open_store, (task._effective(),)),
        ("signature bind", sig.bind, ((1, 2), {})),
        ("_core.compute_key (2 ints)", _core.compute_key, (task.name, task._key_version, bound)),
        (
            "_core.Store.call (hit, key given)",
            lambda: store.call(
                task.name, task._key_version, "cached", key, doc, compute, mmap=True,
                wait_timeout=None, source_hash=task._shared["source_hash"],
                interrupt_types=(Terminated,),
            ),
            (),
        ),
        ("_core.Store.manifest(key) (read + JSON text)", store.manifest, (key,)),
        ("_core.Store.load(key) (manifest + unpickle)", store.load, (key,)),
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


def targets() -> None:
    r = results

    def ratio(peer: str, ours: str) -> float | None:
        a, b = r.get(ours), r.get(peer)
        return b / a if a and b else None

    checks = [
        ("hit, small args: <= 10 µs median", r.get("runcache @task hit"), lambda v: v <= 10e-6, fmt),
        ("hit: >= 20x faster than joblib.Memory", ratio("joblib.Memory hit", "runcache @task hit"),
         lambda v: v >= 20, lambda v: f"{v:,.1f}x"),
        ("hit: faster than diskcache memoize", ratio("diskcache memoize hit", "runcache @task hit"),
         lambda v: v > 1, lambda v: f"{v:,.2f}x"),
        ("hashing a large array: >= 15x joblib",
         ratio("joblib.Memory hit, array argument (re-hashed)", "runcache hit, fresh array argument (hashed)"),
         lambda v: v >= 15, lambda v: f"{v:,.1f}x"),
        ("argument that is a runcache result: µs (<= 100 µs)",
         r.get("runcache hit, argument that is a runcache result"), lambda v: v <= 100e-6, fmt),
        ("store (sync off): >= 0.8x np.save speed", paired.get("store (sync off)"),
         lambda v: v >= 0.8, lambda v: f"{v:.2f}x"),
        ("store (sync on): >= 0.8x np.save + fsync speed",
         paired.get("store (sync on)"), lambda v: v >= 0.8, lambda v: f"{v:.2f}x"),
        ("load, mmap: < 1 ms", r.get("runcache load, mmap (default)"), lambda v: v < 1e-3, fmt),
        ("load, full read: >= 0.8x np.load speed",
         paired.get("load, full read"),
         lambda v: v >= 0.8, lambda v: f"{v:.2f}x"),
    ]
    print("\nDESIGN §8 targets (ratios are speed: peer time / runcache time; store and full read:"
          " median over repetitions of back-to-back pairs)")
    for name, value, ok, show in checks:
        verdict = "n/a" if value is None else ("met" if ok(value) else "MISSED")
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
    for ours, peer in pairs:
        print(f"  {ours:<48} vs {peer:<46} {vs(ours, peer):>10}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="64 MiB arrays and 5 000 hit calls")
    p.add_argument("--calls", type=int, default=None, help="hit calls per peer (default 20 000)")
    p.add_argument("--size-mib", type=int, default=None, help="array size in MiB (default 1024)")
    p.add_argument("--dir", default=None, help="scratch directory (default $TMPDIR or /tmp)")
    p.add_argument("--json", default=None, help="also write the raw results (seconds) to this file")
    a = p.parse_args()
    n = a.calls or (5_000 if a.quick else 20_000)
    size = (a.size_mib or (64 if a.quick else 1024)) * MIB
    reps = 5 if a.quick else 3
    tmp = tempfile.mkdtemp(prefix="runcache-pybench-", dir=a.dir)
    print(
        f"runcache {rc.__version__} Python benchmark: {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}, numpy {np.__version__}; temp dir {tmp}"
    )
    try:
        bench_hits(tmp, n)
        arr = make_array(size)
        bench_large_argument(tmp, arr, reps)
        bench_store_and_load(tmp, arr, reps)
        summary()
        targets()
        if a.json:
            with open(a.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
