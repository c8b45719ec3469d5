"""rc.Memory behaves as joblib.Memory where a joblib user relies on it (issue 15).

Each scenario is written from joblib's documented behaviour and, where cheap, also run against
the real ``joblib.Memory`` in the same test, so the expectation is joblib's own.
"""

import datetime
import logging
import os
import sys
import tempfile
import warnings

import joblib
import numpy as np
import pytest

import runcache as rc


def memories(tmp_path):
    """One real joblib.Memory and one rc.Memory, each in its own empty folder."""
    return [joblib.Memory(tmp_path / "jl", verbose=0), rc.Memory(tmp_path / "rc", verbose=0)]


def load_module(tmp_path, name, source):
    """Defines functions from a real file (so their source is inspectable), as a module would."""
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    ns = {"__name__": name}
    exec(compile(source, str(path), "exec"), ns)
    return ns


def files_of(folder):
    """Every file and folder below ``folder``, with its modification time."""
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


# ------------------------------------------------------------------------------------------
# 1. Failures are not cached


@pytest.mark.parametrize("kind", ["joblib", "runcache"])
def test_a_failed_call_runs_again_at_the_next_call(tmp_path, kind):
    memory = memories(tmp_path)[kind == "runcache"]
    calls = []

    class Flaky(Exception):  # defined in a function: pickle cannot rebuild it
        pass

    @memory.cache
    def f(x):
        calls.append(x)
        if len(calls) == 1:
            raise Flaky("first call fails")
        return x * 10

    with pytest.raises(Flaky):
        f(1)
    assert f(1) == 10, "the second call runs the function again"
    assert calls == [1, 1]
    assert f(1) == 10 and calls == [1, 1], "a success is cached as usual"


@pytest.mark.parametrize("kind", ["joblib", "runcache"])
def test_a_call_that_always_fails_raises_its_own_class_every_time(tmp_path, kind):
    memory = memories(tmp_path)[kind == "runcache"]
    calls = []

    class MyErr(Exception):
        pass

    @memory.cache
    def f(x):
        calls.append(x)
        raise MyErr(f"no {x}")

    for _ in range(3):
        with pytest.raises(MyErr, match="no 2"):
            f(2)
    assert calls == [2, 2, 2]
    assert not f.check_call_in_cache(2)


# ------------------------------------------------------------------------------------------
# 2. Any directory is a valid location; the store is a subdirectory


def test_location_may_be_a_non_empty_directory_beside_a_joblib_cache(tmp_path):
    (tmp_path / "notes.txt").write_text("user data")
    jl = joblib.Memory(str(tmp_path), verbose=0)  # a str: joblib writes below location/joblib
    jl.cache(lambda x: x + 1)(1)
    before = files_of(tmp_path / "joblib")
    memory = rc.Memory(tmp_path, verbose=0)
    calls = []

    @memory.cache
    def f(x):
        calls.append(x)
        return x * 2

    assert f(3) == 6 and f(3) == 6 and calls == [3]
    assert (tmp_path / "runcache" / "RUNCACHE-STORE.json").is_file()
    assert len(before) > 2, "joblib's cache is there"
    assert memory.location == str(tmp_path), "location is what the user gave, as in joblib"
    after = files_of(tmp_path / "joblib")
    assert after == before, "the joblib cache beside it is untouched"
    assert (tmp_path / "notes.txt").read_text() == "user data"
    memory.clear(warn=False)
    assert (tmp_path / "joblib").is_dir() and (tmp_path / "notes.txt").exists()


def test_memory_dot_and_the_temp_directory_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "script.py").write_text("print(1)")

    @rc.Memory(".").cache
    def f(x):
        return x + 1

    assert f(1) == 2 and f.check_call_in_cache(1)
    assert (tmp_path / "runcache").is_dir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmpdir"))
    os.mkdir(tempfile.gettempdir())
    (tmp_path / "tmpdir" / "other-program.lock").write_text("")
    g = rc.Memory(tempfile.gettempdir()).cache(lambda x: x * 3)
    assert g(2) == 6 and g.check_call_in_cache(2)


def test_a_location_that_is_already_a_runcache_store_is_used_as_is(tmp_path):
    path = tmp_path / ".runcache"

    @rc.task(store=str(path), name="tests.shared")
    def old(x):
        return x + 100

    assert old(1) == 101  # an existing store, written before Memory used a subdirectory
    memory = rc.Memory(path)
    assert memory.clear(warn=False) == 1, "Memory opened the existing store itself"
    assert not (path / "runcache").exists()


def test_the_default_task_store_as_location_is_shared_with_tasks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RUNCACHE_STORE", raising=False)
    memory = rc.Memory("./.runcache")  # what the README showed before the subdirectory

    @memory.cache
    def f(x):
        return x + 1

    @rc.task
    def g(x):
        return x + 2

    assert f(1) == 2 and g(1) == 3, "the task's default store is the Memory's store"
    assert (tmp_path / ".runcache" / "RUNCACHE-STORE.json").is_file()
    assert memory.clear(warn=False) == 2


# ------------------------------------------------------------------------------------------
# 3. A code object replaced in place is noticed


SOURCE = """
def f(x):
    return x + 1

def g(x):
    return x + 2
"""


@pytest.mark.parametrize("kind", ["joblib", "runcache"])
def test_replacing_code_in_place_recomputes(tmp_path, kind):
    memory = memories(tmp_path)[kind == "runcache"]
    mod = load_module(tmp_path, f"mod_{kind}", SOURCE)
    cached = memory.cache(mod["f"])
    assert cached(1) == 2
    mod["f"].__code__ = mod["g"].__code__  # what reloaders and notebooks do
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joblib may warn about the change
        assert cached(1) == 3, "not the stale result of the old code"


def test_task_with_track_code_notices_replaced_code(tmp_path):
    mod = load_module(tmp_path, "mod_task", SOURCE)
    t = rc.task(mod["f"], store=str(tmp_path / "s"), track_code=True)
    assert t(1) == 2
    mod["f"].__code__ = mod["g"].__code__
    assert t(1) == 3
    assert t.entry(1).load() == 3


# ------------------------------------------------------------------------------------------
# 4. mmap_mode='r' gives np.memmap


@pytest.mark.parametrize("kind", ["joblib", "runcache"])
def test_mmap_mode_r_returns_memmaps(tmp_path, kind):
    cls = joblib.Memory if kind == "joblib" else rc.Memory
    memory = cls(tmp_path / kind, mmap_mode="r", verbose=0)
    big = np.arange(1 << 18, dtype=np.float64)

    @memory.cache
    def make(n):
        return big[:n].copy(), {"b": big.copy()}

    first = make(1 << 18)
    assert isinstance(first[0], np.memmap), "the first call returns memmaps too"
    out, extra = make(1 << 18)
    assert isinstance(out, np.memmap) and isinstance(extra["b"], np.memmap)
    assert np.array_equal(out, big) and not out.flags.writeable
    assert out.mode == "r" and isinstance(out[:10], np.memmap)
    assert isinstance(make.call_and_shelve(1 << 18).get()[0], np.memmap)


# ------------------------------------------------------------------------------------------
# 5. Exception types of bad calls and bad backends


@pytest.mark.parametrize("kind", ["joblib", "runcache"])
def test_keyword_only_argument_passed_by_position_is_a_value_error(tmp_path, kind):
    memory = memories(tmp_path)[kind == "runcache"]

    @memory.cache
    def f(a, *, b=1):
        return a + b

    with pytest.raises(ValueError):
        f(1, 2)
    assert f(1, b=2) == 3


@pytest.mark.parametrize("cls", [joblib.Memory, rc.Memory])
def test_unknown_backend_is_a_type_error(tmp_path, cls):
    with pytest.raises(TypeError, match="Unknown location"):
        cls(tmp_path, backend="unknown")


def test_a_function_raising_type_error_keeps_it(tmp_path):
    @rc.Memory(tmp_path).cache
    def f(a):
        raise TypeError("from the function")

    with pytest.raises(TypeError, match="from the function"):
        f(1)


# ------------------------------------------------------------------------------------------
# 6. Collision warnings


@pytest.mark.parametrize("kind", ["joblib", "runcache"])
def test_two_lambdas_under_one_name_warn(tmp_path, kind):
    memory = memories(tmp_path)[kind == "runcache"]
    expected = joblib.memory.JobLibCollisionWarning if kind == "joblib" else rc.CollisionWarning
    a = memory.cache(lambda x: x + 1)
    b = memory.cache(lambda x: x + 2)
    with pytest.warns(expected):
        a(1)
        b(1)


def test_collision_warning_is_a_user_warning():
    assert issubclass(rc.CollisionWarning, UserWarning)


def test_redefined_function_warns_and_the_same_function_does_not(tmp_path):
    memory = rc.Memory(tmp_path)
    first = load_module(tmp_path, "cell1", "def step(x):\n    return x + 1\n")["step"]
    second = load_module(tmp_path, "cell2", "def step(x):\n    return x * 5\n")["step"]
    first.__module__ = second.__module__ = "__main__"  # two notebook cells
    with warnings.catch_warnings():
        warnings.simplefilter("error", rc.CollisionWarning)
        assert memory.cache(first)(2) == 3
        assert rc.Memory(tmp_path).cache(first)(2) == 3, "the same function: no warning"
        same = load_module(tmp_path, "cell3", "def step(x):\n    return x + 1\n")["step"]
        same.__module__ = "__main__"
        assert memory.cache(same)(2) == 3, "identical code re-run: no warning"
    with pytest.warns(rc.CollisionWarning, match="step"):
        assert memory.cache(second)(2) == 10


# ------------------------------------------------------------------------------------------
# 7. verbose levels and the logger


@pytest.mark.parametrize("kind", ["joblib", "runcache"])
def test_verbose_levels_log_querying_and_computing(tmp_path, kind, caplog, capsys):
    cls = joblib.Memory if kind == "joblib" else rc.Memory
    caplog.set_level(logging.DEBUG)

    def f(x):
        return x

    cls(tmp_path / "quiet", verbose=1).cache(f)(1)
    assert not [r for r in caplog.records if "Computing" in r.getMessage()]
    assert "[Memory] Calling" in capsys.readouterr().out, "verbose > 0 prints each call"
    caplog.clear()
    cls(tmp_path / "loud", verbose=11).cache(f)(1)
    computing = [r for r in caplog.records if "Computing" in r.getMessage()]
    assert len(computing) == 1 and computing[0].levelno == logging.WARNING
    assert not [r for r in caplog.records if "Querying" in r.getMessage()]
    caplog.clear()
    cls(tmp_path / "louder", verbose=20).cache(f)(1)
    messages = [r.getMessage() for r in caplog.records]
    assert any("Querying" in m for m in messages) and any("Computing" in m for m in messages)


@pytest.mark.parametrize("cls", [joblib.Memory, rc.Memory])
def test_default_verbosity_prints_each_computation(tmp_path, cls, capsys):
    f = cls(tmp_path / cls.__module__).cache(lambda x: x)  # joblib's default: verbose=1
    f(1)
    f(1)
    assert capsys.readouterr().out.count("[Memory] Calling") == 1


def test_verbose_messages_go_to_the_joblib_logger(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="joblib")
    rc.Memory(tmp_path, verbose=20).cache(lambda x: x)(1)
    names = {r.name for r in caplog.records}
    assert names == {"joblib"}


# ------------------------------------------------------------------------------------------
# 8. reduce_size counts what joblib counts


def test_reduce_size_keeps_as_many_entries_as_joblib(tmp_path):
    kept = []
    for memory in memories(tmp_path):

        @memory.cache
        def payload(i):
            return bytes([i]) * 1300

        for i in range(8):
            payload(i)
        memory.reduce_size(bytes_limit="3K")
        kept.append(sum(payload.check_call_in_cache(i) for i in range(8)))
    assert kept[0] == 2, "joblib counts each result's stored files (~1.4 kB here)"
    assert kept[1] == kept[0]


def test_reduce_size_items_and_age_limits(tmp_path):
    memory = rc.Memory(tmp_path)

    @memory.cache
    def f(i):
        return i

    for i in range(4):
        f(i)
    memory.reduce_size(items_limit=2)
    assert sum(f.check_call_in_cache(i) for i in range(4)) == 2
    memory.reduce_size(age_limit=datetime.timedelta(days=1))
    assert sum(f.check_call_in_cache(i) for i in range(4)) == 2
    with pytest.raises(ValueError, match="positive"):
        memory.reduce_size(age_limit=datetime.timedelta(seconds=-1))


# ------------------------------------------------------------------------------------------
# Issue 14: ignore= names that arrive through **kwargs


def test_memory_ignore_a_name_that_arrives_through_kwargs(tmp_path):
    calls = []

    @rc.Memory(tmp_path).cache(ignore=["verbose"])
    def f(x, **kwargs):
        calls.append(kwargs)
        return x

    assert f(1, verbose=True) == 1 and f(1, verbose=False) == 1
    assert calls == [{"verbose": True}], "the ignored kwarg does not enter the key"
    assert f(1, other=2) == 1 and len(calls) == 2, "other kwargs still do"
    with pytest.raises(TypeError, match="no parameter"):
        rc.Memory(tmp_path).cache(lambda x: x, ignore=["verbose"])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
