"""An ensemble of FastICA fits, cached with runcache.

    python examples/ica_ensemble.py                  # first run: computes every fit
    python examples/ica_ensemble.py                  # second run: loads every fit
    python examples/ica_ensemble.py --max-iter 300   # recomputes only the fits that changed
    python examples/ica_ensemble.py --seeds 12       # computes only the 4 new seeds

Each fit is one call of a runcache task: its key is the task's name and version plus a content
hash of its arguments (the data array, the seed, max_iter). The store is ./.runcache, or
$RUNCACHE_STORE, or --store.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
from sklearn.decomposition import FastICA
from sklearn.exceptions import ConvergenceWarning

import runcache as rc


@rc.task(name="examples.ica_ensemble.fit_ica", version="1")
def fit_ica(X: np.ndarray, seed: int, max_iter: int = 500, n_components: int = 5) -> dict:
    """One FastICA fit: the fitted model, its sources and whether it converged."""
    ica = FastICA(
        n_components=n_components, max_iter=max_iter, random_state=seed, whiten="unit-variance"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        sources = ica.fit_transform(X)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return {"model": ica, "sources": sources, "n_iter": int(ica.n_iter_), "converged": converged}


def stability(fits: list[dict]) -> float:
    """Mean |correlation| between each fit's components and their best match in the first fit
    (1.0: every seed found the same components)."""
    ref = fits[0]["model"].components_
    scores = []
    for f in fits[1:]:
        c = np.abs(np.corrcoef(ref, f["model"].components_)[: len(ref), len(ref):])
        scores.append(c.max(axis=1).mean())
    return float(np.mean(scores)) if scores else 1.0


def fmt(seconds: float) -> str:
    """A duration in µs, ms or s."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:7.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:7.1f} ms"
    return f"{seconds:7.2f} s "


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--max-iter", type=int, default=500, help="FastICA max_iter (default 500)")
    p.add_argument("--seeds", type=int, default=8, help="number of random states (default 8)")
    p.add_argument("--store", default=None, help="store location (default $RUNCACHE_STORE or ./.runcache)")
    args = p.parse_args()
    if args.store:
        rc.configure(store=args.store)
    store = args.store or os.environ.get("RUNCACHE_STORE") or "./.runcache"

    X = np.random.RandomState(42).randn(1000, 20)
    print(
        f"FastICA(n_components=5, max_iter={args.max_iter}) on RandomState(42).randn(1000, 20), "
        f"{args.seeds} random states; store: {store}"
    )
    print(f"{'seed':>5}  {'':8}  {'this run':>10}  {'computing it took':>17}  iterations")
    fits, computed, loaded = [], 0, 0
    run_time = compute_time = saved = 0.0
    for seed in range(args.seeds):
        was_stored = fit_ica.entry(X, seed, args.max_iter).exists()
        t0 = time.perf_counter()
        fit = fit_ica(X, seed, args.max_iter)
        elapsed = time.perf_counter() - t0
        took = fit_ica.entry(X, seed, args.max_iter).info()["duration_s"]
        run_time += elapsed
        compute_time += took
        if was_stored:
            loaded += 1
            saved += took - elapsed
        else:
            computed += 1
        note = "" if fit["converged"] else " (hit max_iter)"
        print(
            f"{seed:>5}  {'loaded' if was_stored else 'computed':8}  {fmt(elapsed):>10}  "
            f"{fmt(took):>17}  {fit['n_iter']}{note}"
        )
        fits.append(fit)
    print(
        f"total: {computed} computed, {loaded} loaded; this run took {fmt(run_time).strip()}, "
        f"computing everything took {fmt(compute_time).strip()}"
    )
    if loaded:
        print(f"time saved by runcache: {fmt(saved).strip()} ({compute_time / max(run_time, 1e-9):,.0f}x faster)")
    print(f"ensemble stability (mean |corr| of matched components across seeds): {stability(fits):.3f}")


if __name__ == "__main__":
    main()
