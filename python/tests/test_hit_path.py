"""The native hit path (`_core.HitPath`) settles a call only when the Python path would return
the same stored result: it never uses options, a store or a binding that the call would not.
Each test makes a hit, changes what the call depends on, and counts computations."""

import asyncio

import pytest

import runcache as rc
from runcache import _task


def counted(calls, **options):
    @rc.task(name="t.hit_path", **options)
    def f(x, y=10):
        calls.append((x, y))
        return x + y

    return f


def test_a_hit_comes_from_the_native_path(store):
    calls = []
    f = counted(calls)
    assert f(1) == 11
    assert f.task._hit((1,), None) == 11, "a stored result is served natively"
    assert f.task._hit((2,), None) is _task._MISS, "a missing one is left to the Python path"
    assert calls == [(1, 10)]


def test_configure_after_hits_switches_the_store(tmp_path):
    calls = []
    f = counted(calls)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    try:
        rc.configure(store=a)
        assert f(1) == 11 and f(1) == 11
        rc.configure(store=b)
        assert f(1) == 11
        assert len(calls) == 2, "a new process-wide store is a miss"
        rc.configure(store=a)
        assert f(1) == 11 and len(calls) == 2, "back to the first store: a hit"
        rc.configure(mode="force")
        assert f(1) == 11 and len(calls) == 3, "a process-wide force recomputes"
    finally:
        rc.configure(store=None, mode=None)


def test_runcache_store_changes_are_followed(tmp_path, monkeypatch):
    calls = []
    f = counted(calls)
    monkeypatch.setenv("RUNCACHE_STORE", str(tmp_path / "one"))
    assert f(1) == 11 and f(1) == 11
    monkeypatch.setenv("RUNCACHE_STORE", str(tmp_path / "two"))
    assert f(1) == 11 and len(calls) == 2
    monkeypatch.setenv("RUNCACHE_STORE", str(tmp_path / "one"))
    assert f(1) == 11 and len(calls) == 2


def test_a_relative_store_follows_the_working_directory(tmp_path, monkeypatch):
    calls = []
    f = counted(calls, store="rel-store")
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    monkeypatch.chdir(tmp_path / "d1")
    assert f(1) == 11 and f(1) == 11
    monkeypatch.chdir(tmp_path / "d2")
    assert f(1) == 11 and len(calls) == 2
    assert (tmp_path / "d2" / "rel-store").is_dir()
    monkeypatch.chdir(tmp_path / "d1")
    assert f(1) == 11 and len(calls) == 2


def test_context_overrides_apply_including_in_a_copied_context(store, tmp_path):
    calls = []
    f = counted(calls)
    other = str(tmp_path / "other")
    assert f(1) == 11 and f(1) == 11
    with rc.config(mode="force"):
        assert f(1) == 11
    assert len(calls) == 2
    with rc.config(mode="read-only"):
        assert f(1) == 11 and len(calls) == 2, "read-only serves hits"

    async def main():
        with rc.config(store=other):
            # The task copies the context, overrides included; it runs after the block ends.
            later = asyncio.ensure_future(call_later())
        return await later

    async def call_later():
        await asyncio.sleep(0)
        return f(1)

    assert asyncio.run(main()) == 11
    assert len(calls) == 3, "the copied context's store was used (a miss there)"
    with rc.config(store=other):
        assert f.entry(1).exists()


def test_binding_errors_and_forms_match_python(store):
    calls = []
    f = counted(calls)
    assert f(1, 10) == 11
    assert f(1) == 11 and f(x=1) == 11 and f(1, y=10) == 11 and f(y=10, x=1) == 11
    assert calls == [(1, 10)], "every spelling of the same call is one key"
    with pytest.raises(TypeError):
        f(1, 2, y=3)  # y twice
    with pytest.raises(TypeError):
        f(1, z=2)
    with pytest.raises(TypeError):
        f()
    with pytest.raises(TypeError):
        f(1, 2, 3)
    assert calls == [(1, 10)]


def test_signatures_the_plan_does_not_cover_still_hit(store):
    calls = []

    @rc.task(name="t.varargs")
    def v(*args, scale=1, **kw):
        calls.append(args)
        return sum(args) * scale + len(kw)

    @rc.task(name="t.ignored", ignore=["verbose"])
    def g(x, verbose=False):
        calls.append(x)
        return x

    assert v(1, 2, scale=3, a=1) == 10 and v(1, 2, scale=3, a=1) == 10
    assert g(5) == 5 and g(5, verbose=True) == 5
    assert calls == [(1, 2), 5]
    assert g.task._hit((5,), {"verbose": True}) == 5


def test_an_options_view_has_its_own_hit_path(store, tmp_path):
    calls = []
    f = counted(calls)
    assert f(1) == 11
    elsewhere = f.options(store=str(tmp_path / "elsewhere"))
    assert elsewhere(1) == 11 and elsewhere(1) == 11
    assert len(calls) == 2
    assert f(1) == 11 and len(calls) == 2


def test_a_function_whose_code_is_replaced_is_rekeyed(store):
    calls = []

    @rc.task(name="t.replaced", track_code=True)
    def f(x):
        calls.append("first")
        return x

    def g(x):
        calls.append("second")
        return x * 2

    assert f(2) == 2 and f(2) == 2
    f.task.fn.__code__ = g.__code__  # what reloaders and notebooks do
    assert f(2) == 4 and f(2) == 4
    assert calls == ["first", "second"]


def test_unhashable_arguments_raise_the_python_error(store):
    f = counted([])
    with pytest.raises(TypeError, match=r"cannot hash x \(type object\)"):
        f(object())


def test_threads_hit_while_the_configuration_changes(tmp_path):
    """Resolving options runs Python code, during which the interpreter switches threads; the
    hit path must hold no lock then (a thread waiting on it with the GIL would deadlock). Run in
    a child process, so that a deadlock fails the test instead of hanging the suite."""
    script = f"""
import sys, threading
import runcache as rc

@rc.task(name="t.threads")
def f(x):
    return x + 10

a, b = {str(tmp_path / "a")!r}, {str(tmp_path / "b")!r}
rc.configure(store=a)
sys.setswitchinterval(1e-6)
errors = []

def hammer():
    try:
        for i in range(3000):
            assert f(i % 5) == i % 5 + 10
    except BaseException as e:
        errors.append(e)

threads = [threading.Thread(target=hammer) for _ in range(6)]
for t in threads:
    t.start()
for i in range(3000):
    rc.configure(store=a if i % 2 else b)
for t in threads:
    t.join()
assert not errors, errors
print("ok")
"""
    import subprocess
    import sys

    try:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        pytest.fail("threads calling one task deadlocked while the configuration changed")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
