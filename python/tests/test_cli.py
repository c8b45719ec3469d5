"""The ``runcache`` command installed with the package: ``python -m runcache``, the console
script in the environment's bin directory, and ``_core.cli_main``, against a store populated by
the Python API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import runcache as rc
from runcache import _core


@pytest.fixture
def populated(store: Path) -> Path:
    @rc.task(name="cli.square", version="1")
    def square(x: int) -> list[int]:
        return [x * x] * 5000

    @rc.task(name="cli.boom")
    def boom(x: int) -> None:
        raise ValueError(f"no {x}")

    for x in range(3):
        square(x)
    with pytest.raises(ValueError):
        boom(1)
    return store


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RUNCACHE_STORE", None)
    return env


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)


def test_python_m_runcache_lists_entries(populated: Path) -> None:
    out = _run([sys.executable, "-m", "runcache", "--store", str(populated), "ls", "--json"])
    assert out.returncode == 0, out.stderr
    entries = json.loads(out.stdout)
    assert sorted(e["namespace"] for e in entries) == ["cli.boom"] + ["cli.square"] * 3
    assert {e["status"] for e in entries} == {"completed", "failed"}
    # The store is found through RUNCACHE_STORE too, and usage errors exit with 2.
    env = {**_env(), "RUNCACHE_STORE": str(populated)}
    out = subprocess.run(
        [sys.executable, "-m", "runcache", "ls", "--failed", "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert [e["namespace"] for e in json.loads(out.stdout)] == ["cli.boom"]
    out = _run([sys.executable, "-m", "runcache", "frobnicate"])
    assert out.returncode == 2
    assert "frobnicate" in out.stderr


def test_console_script_is_installed(populated: Path) -> None:
    script = Path(sys.executable).parent / "runcache"
    if not script.exists():
        found = shutil.which("runcache")
        if found is None:
            pytest.fail(
                "the `runcache` console script is not installed next to the interpreter; "
                "reinstall the package (maturin develop / pip install)"
            )
        script = Path(found)
    out = _run([str(script), "--store", str(populated), "du", "--json"])
    assert out.returncode == 0, out.stderr
    usage = json.loads(out.stdout)
    assert usage["entries"] == 4
    assert usage["namespaces"]["cli.square"]["entries"] == 3
    out = _run([str(script), "--version"])
    assert out.returncode == 0
    assert rc.__version__ in out.stdout


def test_cli_main_returns_exit_codes(populated: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert _core.cli_main(["--store", str(populated), "verify", "--json"]) == 0
    report = json.loads(capfd.readouterr().out)
    assert report["entries"] == 4 and report["problems"] == []
    # Errors are exit codes, not exceptions or a process exit; a second call works (logger).
    assert _core.cli_main(["--store", str(populated / "missing"), "ls"]) == 1
    assert "no store at" in capfd.readouterr().err
    assert _core.cli_main(["--help"]) == 0
    assert "init" in capfd.readouterr().out


def test_init_creates_a_store(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from runcache.__main__ import main

    target = tmp_path / "fresh"
    assert main(["init", str(target), "--json"]) == 0
    assert json.loads(capfd.readouterr().out)["created"] is True
    assert (target / "RUNCACHE-STORE.json").exists()


def test_ls_without_a_store_says_how_to_create_one(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    out = _run([sys.executable, "-m", "runcache", "--store", str(missing), "ls"])
    assert out.returncode == 1
    assert "no store at" in out.stderr
    assert f"runcache init {missing}" in out.stderr
    assert "first cached call" in out.stderr
    assert not missing.exists()


def test_stray_objects_are_named_and_repaired(populated: Path) -> None:
    """A stray file and a directory named like a manifest in a store the Python API wrote: every
    listing command names them and exits 0, verify exits 3, verify --repair clears them and the
    entries still load."""
    (populated / "manifests" / "stray").write_text("x")
    shard = next(p for p in (populated / "manifests").iterdir() if p.is_dir())
    fake = shard / (shard.name + "f" * 62 + ".json")
    fake.mkdir()
    base = [sys.executable, "-m", "runcache", "--store", str(populated)]
    for cmd in (["ls"], ["du"], ["leases"], ["status"], ["gc", "--max-size", "1G", "--dry-run"]):
        out = _run(base + cmd)
        assert out.returncode == 0, (cmd, out.stderr)
        assert "manifests/stray" in out.stderr and fake.name in out.stderr, (cmd, out.stderr)
        assert "I/O error" not in out.stdout + out.stderr
    out = _run(base + ["verify"])
    assert out.returncode == 3, out.stdout + out.stderr
    assert "2 damaged objects" in out.stdout
    out = _run(base + ["verify", "--repair"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert not fake.exists() and not (populated / "manifests" / "stray").exists()
    out = _run(base + ["ls", "--json"])
    assert len(json.loads(out.stdout)) == 4
