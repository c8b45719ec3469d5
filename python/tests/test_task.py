"""The decorator, modes, failures, artifacts, dependencies, config and explain."""

import json
import logging
import os
import warnings

import numpy as np
import pytest

import runcache as rc


def test_computes_once_then_loads(store):
    calls = []

    @rc.task
    def square(x, verbose=False):
        calls.append(x)
        return {"x": x, "sq": x * x}

    assert square(3) == {"x": 3, "sq": 9}
    assert square(3) == {"x": 3, "sq": 9}
    assert square(x=3) == {"x": 3, "sq": 9}
    assert calls == [3]
    assert square(4)["sq"] == 16
    assert calls == [3, 4]
    entry = square.entry(3)
    assert entry.exists() and entry.status() == "completed"
    info = entry.info()
    assert info["namespace"].endswith("square")
    assert info["key_doc"]["args"]["x"] == 3
    assert entry.load() == {"x": 3, "sq": 9}


def test_ignored_arguments_do_not_change_the_key(store):
    calls = []

    @rc.task(ignore=["verbose", "device"])
    def fit(x, verbose=False, device="cpu"):
        calls.append((x, verbose, device))
        return x + 1

    assert fit(1) == 2
    assert fit(1, verbose=True, device="cuda") == 2
    assert len(calls) == 1
    with pytest.raises(TypeError, match="no parameter"):
        rc.task(ignore=["nope"])(lambda x: x)


def test_array_results_are_mapped_read_only_and_copied_on_request(store):
    @rc.task
    def make(n):
        return {"a": np.arange(n, dtype=np.float64), "b": [np.ones((3, 2), dtype=np.int32)]}

    first = make(1 << 18)
    loaded = make(1 << 18)
    assert np.array_equal(loaded["a"], np.arange(1 << 18))
    assert loaded["a"].dtype == np.float64
    assert loaded["b"][0].shape == (3, 2) and loaded["b"][0].dtype == np.int32
    assert not loaded["a"].flags.writeable, "mapped results are read-only"
    copied = make.entry(1 << 18).load(mmap=False)
    assert np.array_equal(copied["a"], first["a"])


def test_modes(store):
    calls = []

    @rc.task
    def f(x):
        calls.append(x)
        return len(calls)

    assert f(1) == 1
    assert f.options(mode="force")(1) == 2
    assert f(1) == 2
    assert f.options(mode="off")(1) == 3, "off never reads"
    assert f(1) == 2, "off never writes"
    assert f.options(mode="read-only")(2) == 4
    assert f.entry(2).info() is None, "read-only never writes"
    with pytest.raises(ValueError, match="unknown mode"):
        f.options(mode="sometimes")


def test_failures_are_recorded_reraised_with_their_type_and_retried(store):
    calls = []

    @rc.task
    def flaky(x):
        calls.append(x)
        if len(calls) == 1:
            raise ValueError(f"bad value {x}")
        return x

    with pytest.raises(ValueError, match="bad value 5"):
        flaky(5)
    assert flaky.entry(5).status() == "failed"
    info = flaky.entry(5).info()
    assert info["error"]["type"] == "builtins.ValueError"
    assert "Traceback" in info["error"]["traceback"] or "line" in info["error"]["traceback"]
    with pytest.raises(ValueError, match="bad value 5") as e:
        flaky(5)
    assert len(calls) == 1, "a recorded failure is re-raised without recomputing"
    assert any("retry" in n for n in getattr(e.value, "__notes__", []))
    assert flaky.options(mode="retry")(5) == 5
    assert flaky(5) == 5


def test_keyboard_interrupt_records_interrupted_and_recomputes(store):
    calls = []

    @rc.task
    def slow(x):
        calls.append(x)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return x * 2

    with pytest.raises(KeyboardInterrupt):
        slow(1)
    assert slow.entry(1).status() == "interrupted"
    assert slow(1) == 2
    assert calls == [1, 1]


def test_config_is_resolved_at_call_time(tmp_path):
    @rc.task
    def where(x):
        return x

    a, b = tmp_path / "a", tmp_path / "b"
    rc.configure(store=str(a))
    try:
        where(1)
        with rc.config(store=str(b)):
            where(2)
            assert where.entry(2).exists() and not where.entry(1).exists()
        assert where.entry(1).exists() and not where.entry(2).exists()
        with rc.config(mode="force"):
            with rc.config(store=str(b)):
                pass
        with pytest.raises(TypeError, match="unknown runcache option"):
            rc.configure(colour="blue")
    finally:
        rc.configure(store=None)


def test_env_var_names_the_default_store(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNCACHE_STORE", str(tmp_path / "envstore"))

    @rc.task
    def g(x):
        return x

    g(1)
    assert (tmp_path / "envstore" / "RUNCACHE-STORE.json").exists()


def test_artifacts_are_stored_and_readable(store):
    @rc.task
    def report(n):
        with open(rc.artifact_path("out/report.txt"), "w") as f:
            f.write("line\n" * n)
        np.save(rc.artifact_path("vec.npy"), np.arange(n))
        rc.set_metadata("rows", n)
        return n

    assert report(3) == 3
    e = report.entry(3)
    assert sorted(e.artifacts()) == ["out/report.txt", "vec.npy"]
    with e.open("out/report.txt", "r") as f:
        assert f.read() == "line\nline\nline\n"
    assert np.array_equal(np.load(e.artifact_file("vec.npy")), np.arange(3))
    assert e.info()["metadata"]["rows"] == 3
    with pytest.raises(RuntimeError, match="inside a running task"):
        rc.artifact_path("x.txt")


def test_dependencies_are_recorded_and_a_version_bump_recomputes_users(store):
    calls = []

    def make_inner(version):
        @rc.task(name="t.inner", version=version)
        def inner(x):
            calls.append(("inner", version))
            return x * 10

        return inner

    inner = make_inner("1")

    @rc.task(name="t.outer")
    def outer(x):
        calls.append(("outer",))
        return inner(x) + 1

    assert outer(2) == 21
    deps = outer.entry(2).info()["dependencies"]
    assert [(d["namespace"], d["version"]) for d in deps] == [("t.inner", "1")]
    assert outer(2) == 21
    assert calls == [("outer",), ("inner", "1")]
    inner = make_inner("2")  # the task's version is bumped
    ex = outer.explain(2)
    assert not ex.hit and "t.inner" in ex.reason and "version 2" in ex.reason, ex.reason
    assert outer(2) == 21
    assert calls[-2:] == [("outer",), ("inner", "2")], "outer recomputed with the new inner"


def test_code_change_warns_once_and_track_code_changes_the_key(store):
    def define(body_value, track=False):
        ns = {}
        src = (
            "import runcache as rc\n"
            f"@rc.task(name='t.code', track_code={track})\n"
            "def f(x):\n"
            f"    return x + {body_value}\n"
        )
        path = store.parent / f"mod_{body_value}_{track}.py"
        path.write_text(src)
        code = compile(src, str(path), "exec")
        exec(code, ns)
        return ns["f"]

    f1 = define(1)
    assert f1(1) == 2
    f2 = define(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert f2(1) == 2, "same key: the stored result is returned"
        assert f2(1) == 2
    code_warnings = [w for w in caught if "different version of the source" in str(w.message)]
    assert len(code_warnings) == 1
    t1, t2 = define(1, track=True), define(2, track=True)
    assert t1.key(1) != t2.key(1)
    assert t2(1) == 3


def test_explain_names_the_differing_argument(store):
    @rc.task(name="t.explain")
    def fit(alpha, seed):
        return alpha * seed

    fit(0.1, 1)
    ex = fit.explain(0.1, 1)
    assert ex.hit
    ex = fit.explain(0.2, 1)
    assert not ex.hit
    assert [d.name for d in ex.nearest[0].differences] == ["alpha"]
    assert "alpha" in str(ex)


def test_clear_returns_the_count(store):
    @rc.task(name="t.clear")
    def h(x):
        return x

    for i in range(4):
        h(i)
    assert h.clear() == 4
    assert not h.entry(1).exists()


def test_corrupted_blob_is_recomputed_with_a_warning(store, caplog):
    calls = []

    @rc.task(name="t.corrupt")
    def big(n):
        calls.append(n)
        return np.full(n, 7, dtype=np.uint8)

    big(100_000)
    info = big.entry(100_000).info()
    digest = [b for b in info["blobs"] if b["role"].startswith("buffer")][0]["digest"]
    blob = store / "blobs" / digest[:2] / digest
    data = bytearray(blob.read_bytes())
    data[5] ^= 1
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        out = big(100_000)
    assert (out == 7).all()
    assert calls == [100_000, 100_000]
    assert any("recomputing" in r.getMessage() or "corrupt" in r.getMessage() for r in caplog.records)


def test_methods_and_config_objects(store):
    from dataclasses import dataclass

    import pydantic

    calls = []

    @dataclass
    class Ridge:
        alpha: float

        @rc.task(name="t.ridge")
        def fit(self, n):
            calls.append((self.alpha, n))
            return self.alpha * n

    class Cfg(pydantic.BaseModel):
        lr: float = 0.1

        @rc.task(name="t.cfg")
        def run(self):
            calls.append(("cfg", self.lr))
            return self.lr

    assert Ridge(2.0).fit(3) == 6.0
    assert Ridge(2.0).fit(3) == 6.0
    assert Ridge(3.0).fit(3) == 9.0
    assert Cfg(lr=0.5).run() == 0.5
    assert Cfg(lr=0.5).run() == 0.5
    assert calls == [(2.0, 3), (3.0, 3), ("cfg", 0.5)]


def test_file_arguments_are_keyed_by_content(store, tmp_path):
    calls = []

    @rc.task(name="t.files", files=["path"])
    def count_lines(path):
        calls.append(path)
        with open(path) as f:
            return sum(1 for _ in f)

    p = tmp_path / "data.txt"
    p.write_text("a\nb\n")
    assert count_lines(str(p)) == 2
    q = tmp_path / "copy.txt"
    q.write_text("a\nb\n")
    assert count_lines(str(q)) == 2, "same content, other path: a hit"
    p.write_text("a\nb\nc\n")
    assert count_lines(str(p)) == 3, "changed content: a miss"
    assert len(calls) == 2


def test_recorded_failure_of_a_class_defined_in_a_function_keeps_its_class(store):
    class LocalError(Exception):  # pickle cannot rebuild it: only this process has it
        pass

    calls = []

    @rc.task
    def fails(x):
        calls.append(x)
        raise LocalError(f"local {x}")

    with pytest.raises(LocalError):
        fails(1)
    with pytest.raises(LocalError, match="local 1") as e:
        fails(1)
    assert calls == [1], "the @rc.task default still records failures"
    assert any("retry" in n for n in getattr(e.value, "__notes__", []))


def test_recorded_failure_of_a_local_class_is_found_through_the_function(store):
    class LocalError(Exception):
        pass

    calls = []

    def fails(x):
        calls.append(x)
        raise LocalError(f"local {x}")

    with pytest.raises(LocalError):
        rc.task(fails)(1)
    later = rc.task(fails)  # a new session: it has not seen LocalError raised
    with pytest.raises(LocalError, match="local 1"):
        later(1)
    assert calls == [1]


def test_recorded_failure_of_a_class_with_its_own_init_keeps_its_class(store):
    calls = []

    @rc.task
    def fails(x):
        calls.append(x)
        raise NeedsTwo("a", "b")

    with pytest.raises(NeedsTwo):
        fails(1)
    with pytest.raises(NeedsTwo):
        fails(1)
    assert calls == [1]


class NeedsTwo(Exception):
    """An exception whose constructor takes two arguments (not one message)."""

    def __init__(self, first, second):
        super().__init__(f"{first}/{second}")


def test_ignore_a_name_that_arrives_through_kwargs(store):
    calls = []

    @rc.task(ignore=["verbose"])
    def fit(x, **kwargs):
        calls.append(kwargs)
        return x

    assert fit(1, verbose=True) == 1 and fit(1, verbose=False) == 1
    assert calls == [{"verbose": True}], "two calls differing only in verbose share an entry"
    assert fit.key(1, verbose=3) == fit.key(1)
    assert fit.key(1, other=3) != fit.key(1), "other kwargs enter the key"
    with pytest.raises(TypeError, match="no parameter"):
        rc.task(lambda x: x, ignore=["verbose"])
