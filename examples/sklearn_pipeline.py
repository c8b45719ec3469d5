"""scikit-learn's Pipeline with runcache.Memory: fitted transformers are reused across fits.

    python examples/sklearn_pipeline.py

The pipeline is fitted three times: the second fit loads the fitted scaler and PCA from the
store; after changing PCA's n_components only PCA (and the classifier) are refitted.
"""

from __future__ import annotations

import os
import time

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import runcache as rc


def main() -> None:
    store = os.environ.get("RUNCACHE_STORE") or "./.runcache"
    rng = np.random.RandomState(0)
    X = rng.randn(20_000, 200)
    y = (X[:, :5].sum(axis=1) > 0).astype(int)
    memory = rc.Memory(store, verbose=1)  # verbose: prints each transformer that is fitted
    pipe = Pipeline(
        [("scale", StandardScaler()), ("pca", PCA(20, random_state=0)), ("clf", LogisticRegression())],
        memory=memory,
    )
    for label, params in [("first fit", {}), ("second fit", {}), ("pca n_components=10", {"pca__n_components": 10})]:
        pipe.set_params(**params)
        t0 = time.perf_counter()
        pipe.fit(X, y)
        print(f"{label}: {time.perf_counter() - t0:.3f} s, train accuracy {pipe.score(X, y):.3f}")


if __name__ == "__main__":
    main()
