import os
import sys

import pytest

import runcache as rc


@pytest.fixture
def store(tmp_path):
    """A fresh store configured as the process default for one test."""
    path = tmp_path / "store"
    rc.configure(store=str(path))
    yield path
    rc.configure(store=None)


@pytest.fixture
def trace(tmp_path):
    """A folder where test tasks note what they computed, and in which process."""
    d = tmp_path / "trace"
    d.mkdir()
    return str(d)


def skip_or_fail(why: str, fix: str) -> None:
    """A test needs something this machine lacks: skip with how to get it, except under CI,
    where everything the tests need is set up by scripts/test, so it is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (under CI, scripts/test provides it)")
    pytest.skip(f"{why}; {fix}")


def run_python(code: str, *, env=None, timeout=120):
    """Runs code in a fresh interpreter (same venv) and returns the CompletedProcess."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=timeout
    )
