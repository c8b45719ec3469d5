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


def run_python(code: str, *, env=None, timeout=120):
    """Runs code in a fresh interpreter (same venv) and returns the CompletedProcess."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=timeout
    )
