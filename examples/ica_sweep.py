"""A sweep of FastICA fits over seeds x max_iter on local worker processes.

    python examples/ica_sweep.py                 # computes what is missing on 2 workers
    python examples/ica_sweep.py --workers 4     # more workers
    python examples/ica_sweep.py --inline        # in this process (debugging)

The fits are the same task as examples/ica_ensemble.py: whatever that example stored is loaded,
not recomputed. Progress shows completed / cached / running / failed / queued items;
`runcache status` lists the sweeps of the store from any shell.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import runcache as rc
from ica_ensemble import fit_ica


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    p.add_argument("--seeds", type=int, default=12, help="random states (default 12)")
    p.add_argument("--inline", action="store_true", help="compute in this process")
    p.add_argument("--store", default=None, help="store location (default ./.runcache)")
    args = p.parse_args()
    if args.store:
        rc.configure(store=args.store)
    X = np.random.RandomState(42).randn(1000, 20)
    grid = rc.grid(X=[X], seed=range(args.seeds), max_iter=[200, 500])
    executor = rc.Inline() if args.inline else rc.Local(workers=args.workers)
    print(f"{len(grid)} fits (seeds x max_iter) on {executor!r}")
    t0 = time.perf_counter()
    fits = fit_ica.map(grid, executor=executor, progress=True)
    took = time.perf_counter() - t0
    converged = sum(f["converged"] for f in fits)
    print(f"{len(fits)} fits in {took:.2f} s; {converged} converged")
    for max_iter in (200, 500):
        iters = [f["n_iter"] for f, g in zip(fits, grid) if g["max_iter"] == max_iter]
        print(f"  max_iter={max_iter}: mean iterations {np.mean(iters):.0f}")


if __name__ == "__main__":
    main()
