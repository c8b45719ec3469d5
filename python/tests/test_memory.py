"""runcache.Memory: joblib.Memory's API, and scikit-learn's Pipeline(memory=...)."""

import datetime
import pickle
import time

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import runcache as rc

FITS: list = []


class CountingScaler(StandardScaler):
    """A StandardScaler that records each fit (importable, so fitted copies pickle)."""

    def fit(self, X, y=None, sample_weight=None):
        FITS.append(("scale",))
        return super().fit(X, y, sample_weight)


class CountingPCA(PCA):
    """A PCA that records each fit (PCA.fit_transform does not go through fit)."""

    def fit_transform(self, X, y=None):
        FITS.append(("pca", self.n_components))
        return super().fit_transform(X, y)

    def fit(self, X, y=None):
        FITS.append(("pca", self.n_components))
        return super().fit(X, y)


@pytest.fixture
def memory(tmp_path):
    return rc.Memory(tmp_path / "mem", verbose=0)


def data(n=300, d=12, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, d)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    return X, y


# ------------------------------------------------------------------------------------------
# joblib's API


def test_cache_computes_once_and_accepts_decorator_forms(memory):
    calls = []

    @memory.cache
    def square(x):
        calls.append(x)
        return x * x

    @memory.cache(ignore=["verbose"])
    def cube(x, verbose=False):
        calls.append(("cube", x, verbose))
        return x**3

    assert square(3) == 9 and square(3) == 9 and square(x=3) == 9
    assert cube(2) == 8 and cube(2, verbose=True) == 8
    assert calls == [3, ("cube", 2, False)]
    assert memory.cache(square) is square or memory.cache(square).func is square.func
    with pytest.raises(TypeError, match="no parameter"):
        memory.cache(lambda x: x, ignore=["nope"])


def test_verbose_prints_each_computation_only(tmp_path, capsys):
    @rc.Memory(tmp_path / "v", verbose=1).cache(ignore=["secret"])
    def f(x, secret=None):
        return x

    f(1, secret="hunter2")
    f(1, secret="hunter2")
    out = capsys.readouterr().out
    assert out.count("[Memory] Calling") == 1 and "f(1)" in out
    assert "hunter2" not in out, "ignored arguments are not printed"


def test_call_forces_and_returns_output_and_metadata(memory):
    calls = []

    @memory.cache
    def f(x):
        calls.append(x)
        return len(calls)

    assert f(1) == 1
    out, meta = f.call(1)
    assert out == 2 and len(calls) == 2
    assert {"duration", "time", "input_args"} <= set(meta)
    assert meta["input_args"] == {"x": 1}
    assert f(1) == 2, "call() stored the recomputed result"


def test_call_and_shelve_returns_a_lazy_picklable_reference(memory):
    calls = []

    @memory.cache
    def make(n):
        calls.append(n)
        return np.arange(n)

    ref = make.call_and_shelve(5)
    assert np.array_equal(ref.get(), np.arange(5))
    again = make.call_and_shelve(5)
    assert calls == [5], "a stored result is not recomputed"
    clone = pickle.loads(pickle.dumps(again))
    assert np.array_equal(clone.get(), np.arange(5))
    ref.clear()
    assert not make.check_call_in_cache(5)
    with pytest.raises(KeyError):  # as joblib's MemorizedResult.get() after clear()
        clone.get()


def test_check_call_in_cache_before_and_after(memory):
    @memory.cache
    def g(x, y=2):
        return x + y

    assert not g.check_call_in_cache(1)
    g(1)
    assert g.check_call_in_cache(1) and g.check_call_in_cache(1, y=2)
    assert not g.check_call_in_cache(1, y=3)


def test_func_clear_and_memory_clear(memory):
    @memory.cache
    def a(x):
        return x

    @memory.cache
    def b(x):
        return -x

    for i in range(3):
        a(i), b(i)
    assert a.clear(warn=False) == 3
    assert not a.check_call_in_cache(0) and b.check_call_in_cache(0)
    a(0)
    assert memory.clear(warn=False) == 4
    assert not b.check_call_in_cache(1)


def test_reduce_size_removes_entries(memory):
    @memory.cache
    def blob(i):
        return np.full(100_000, i, dtype=np.uint8)

    for i in range(4):
        blob(i)
    memory.reduce_size(bytes_limit=250_000)
    kept = [i for i in range(4) if blob.check_call_in_cache(i)]
    assert 0 < len(kept) < 4
    memory.reduce_size(items_limit=1)
    assert sum(blob.check_call_in_cache(i) for i in range(4)) == 1
    blob(0)
    memory.reduce_size(bytes_limit="1G", age_limit=datetime.timedelta(days=1))
    assert blob.check_call_in_cache(0), "within the limits nothing is evicted"
    time.sleep(0.01)  # every entry is now older than 0 s
    memory.reduce_size(age_limit=datetime.timedelta(0))
    assert not any(blob.check_call_in_cache(i) for i in range(4))


def _owner(a):
    """The object that owns an array's memory (a runcache Blob for loaded results)."""
    while True:
        b = a.obj if isinstance(a, memoryview) else getattr(a, "base", None)
        if b is None:
            return a
        a = b


def test_mmap_mode(tmp_path):
    big = np.arange(1 << 18, dtype=np.float64)  # 2 MiB: above runcache's mapping threshold

    def make():
        return big.copy()

    mapped = rc.Memory(tmp_path / "m", mmap_mode="r").cache(make)
    mapped()
    out = mapped()
    assert np.array_equal(out, big) and not out.flags.writeable
    assert _owner(out).mapped
    copied = rc.Memory(tmp_path / "m").cache(make)()  # joblib's default: mmap_mode=None
    assert np.array_equal(copied, big) and not _owner(copied).mapped
    assert not copied.flags.writeable, "runcache results are read-only, mapped or not"
    with pytest.raises(ValueError, match="immutable"):
        rc.Memory(tmp_path / "m", mmap_mode="r+")


def test_location_none_caches_nothing():
    memory = rc.Memory(None)
    calls = []

    @memory.cache
    def f(x):
        calls.append(x)
        return x

    assert f(1) == 1 and f(1) == 1 and calls == [1, 1]
    assert f.call(1) == (1, {})
    assert f.call_and_shelve(2).get() == 2
    assert not f.check_call_in_cache(1)
    assert memory.location is None


def test_cache_validation_callback(memory):
    calls = []

    def f(x):
        calls.append(x)
        return x

    valid = memory.cache(f, cache_validation_callback=lambda meta: meta["time"] > 0)
    assert valid(1) == 1 and valid(1) == 1 and calls == [1]
    expired = memory.cache(f, cache_validation_callback=lambda meta: False)
    assert expired(1) == 1 and calls == [1, 1], "a rejected entry is recomputed"
    with pytest.raises(ValueError, match="callable"):
        memory.cache(f, cache_validation_callback=3)


def test_code_change_recomputes(memory, tmp_path):
    def define(k):
        ns = {}
        src = f"def f(x):\n    return x + {k}\n"
        path = tmp_path / f"mod_{k}.py"
        path.write_text(src)
        exec(compile(src, str(path), "exec"), ns)
        ns["f"].__module__ = "mod"  # same namespace for both versions
        return memory.cache(ns["f"])

    assert define(1)(1) == 2
    with pytest.warns(rc.CollisionWarning, match="source differs"):
        assert define(2)(1) == 3, "joblib semantics: changed code is recomputed"


def test_memory_pickles_and_explains(memory):
    clone = pickle.loads(pickle.dumps(memory))
    assert clone.location == memory.location

    @clone.cache
    def h(alpha, seed):
        return alpha * seed

    h(0.5, 1)
    ex = h.explain(0.25, 1)
    assert not ex.hit and [d.name for d in ex.nearest[0].differences] == ["alpha"]
    assert h.entry(0.5, 1).exists()


# ------------------------------------------------------------------------------------------
# Keys of objects runcache does not hash by value


def test_estimators_are_keyed_by_class_params_and_fitted_state(memory):
    calls = []

    @memory.cache
    def describe(est, X):
        calls.append(type(est).__name__)
        return type(est).__name__

    X, y = data()
    describe(PCA(3), X)
    describe(PCA(3), X)
    assert calls == ["PCA"], "equal unfitted estimators share a key"
    describe(PCA(4), X)
    describe(StandardScaler(), X)
    assert len(calls) == 3
    a, b = PCA(3).fit(X), PCA(3).fit(X[:100])
    assert describe.key(a, X) != describe.key(b, X), "fitted state enters the key"
    assert describe.key(a, X) != describe.key(PCA(3), X)
    assert describe.key(a, X) == describe.key(PCA(3).fit(X), X)
    assert describe.key(np.random.RandomState(0), 1) == describe.key(np.random.RandomState(0), 1)
    assert describe.key(np.random.RandomState(0), 1) != describe.key(np.random.RandomState(1), 1)
    assert describe.key(np.sum, 1) != describe.key(np.mean, 1)
    assert describe.key(np.log1p, 1) == describe.key(np.log1p, 1) != describe.key(np.expm1, 1)


def test_unhashable_arguments_are_a_clear_error_not_a_pickle(memory):
    class Opaque:
        pass

    @memory.cache
    def f(thing):
        return 1

    with pytest.raises(TypeError, match="__runcache_key__"):
        f(Opaque())


# ------------------------------------------------------------------------------------------
# scikit-learn's Pipeline


def test_pipeline_second_fit_reuses_the_fitted_transformers(memory, monkeypatch):
    X, y = data()
    pipe = Pipeline(
        [("scale", StandardScaler()), ("pca", PCA(5)), ("clf", LogisticRegression())],
        memory=memory,
    )
    pipe.fit(X, y)
    first = pipe.predict_proba(X)

    def refuse(*args, **kwargs):
        raise AssertionError("a transformer was refitted")

    for cls in (StandardScaler, PCA):
        monkeypatch.setattr(cls, "fit_transform", refuse)
        monkeypatch.setattr(cls, "fit", refuse)
    again = Pipeline(
        [("scale", StandardScaler()), ("pca", PCA(5)), ("clf", LogisticRegression())],
        memory=memory,
    )
    again.fit(X, y)
    assert np.array_equal(again.predict_proba(X), first)
    pipe.fit(X, y)  # the same pipeline object, fitted again
    assert np.array_equal(pipe.predict_proba(X), first)


def test_pipeline_param_change_refits_only_what_changed(memory):
    X, y = data()
    FITS.clear()
    pipe = Pipeline(
        [("scale", CountingScaler()), ("pca", CountingPCA(5)), ("clf", LogisticRegression())],
        memory=memory,
    )
    pipe.fit(X, y)
    assert FITS == [("scale",), ("pca", 5)]
    pipe.fit(X, y)
    assert FITS == [("scale",), ("pca", 5)], "second fit loads both transformers"
    pipe.set_params(pca__n_components=3)
    pipe.fit(X, y)
    assert FITS == [("scale",), ("pca", 5), ("pca", 3)], "only PCA is refitted"
    assert pipe.named_steps["pca"].n_components_ == 3
    reference = Pipeline(
        [("scale", StandardScaler()), ("pca", PCA(3)), ("clf", LogisticRegression())]
    ).fit(X, y)
    assert np.allclose(pipe.predict_proba(X), reference.predict_proba(X))
    pipe.fit(X[:200], y[:200])
    assert FITS[-2:] == [("scale",), ("pca", 3)], "other data: refitted"


def test_pipeline_without_caching(tmp_path):
    X, y = data()
    pipe = Pipeline([("pca", PCA(2)), ("clf", LogisticRegression())], memory=rc.Memory(None))
    pipe.fit(X, y)
    assert pipe.score(X, y) > 0.5
