"""Tiered stores: ``rc.configure(store=[local, remote])`` reads the local tier first and fills it
from the remote, writes through to the remote, takes leases there, never writes a read-only
tier, and serves local hits while the remote is unreachable."""

import os
import subprocess
import sys
import time

import pytest

import runcache as rc
from conftest import skip_or_fail

WORKER = r"""
import os, sys, time
import runcache as rc
local, remote, marker_dir = sys.argv[1], sys.argv[2], sys.argv[3]
rc.configure(store=[local, remote])

@rc.task(name="tier.py.race")
def work(x):
    with open(os.path.join(marker_dir, f"computed-{os.getpid()}"), "w"):
        pass
    time.sleep(0.3)
    return b"r" * 200_000

go = os.path.join(marker_dir, "go")
while not os.path.exists(go):
    time.sleep(0.001)
print("LEN", len(work(1)), flush=True)
"""


def snapshot(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[p] = f.read()
    return out


@pytest.fixture
def reset():
    yield
    rc.configure(store=None)


def make_task(name, calls):
    @rc.task(name=name)
    def f(x):
        calls.append(x)
        return {"x": x, "payload": b"p" * 200_000}

    return f


def test_remote_hit_fills_local_and_survives_the_remote_going_away(tmp_path, reset):
    local, remote = str(tmp_path / "local"), str(tmp_path / "remote")
    calls = []
    f = make_task("tier.py.fill", calls)
    rc.configure(store=remote)
    assert f(1)["x"] == 1
    rc.configure(store=[local, remote])
    assert f(1)["x"] == 1
    assert calls == [1], "a hit in the remote tier"
    rc.configure(store=local)
    assert f(1)["payload"] == b"p" * 200_000
    assert calls == [1], "the local tier was filled"

    # A fresh process with the remote unreachable (its path is no longer a directory).
    os.rename(remote, str(tmp_path / "gone"))
    with open(remote, "w") as fh:
        fh.write("not a store")
    code = (
        "import runcache as rc\n"
        f"rc.configure(store=[{local!r}, {remote!r}])\n"
        "@rc.task(name='tier.py.fill')\n"
        "def f(x):\n"
        "    raise SystemExit('computed')\n"
        "print('HIT', f(1)['x'])\n"
        "try:\n"
        "    f(2)\n"
        "except rc.StoreError as e:\n"
        "    print('MISS-ERROR', 'unreachable' in str(e))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert "HIT 1" in out.stdout, (out.stdout, out.stderr)
    assert "MISS-ERROR True" in out.stdout, (out.stdout, out.stderr)


def test_writes_reach_the_remote(tmp_path, reset):
    local, remote = str(tmp_path / "local"), str(tmp_path / "remote")
    calls = []
    f = make_task("tier.py.write", calls)
    rc.configure(store=[local, remote])
    f(1)
    rc.configure(store=remote)
    f(1)
    assert calls == [1]
    assert f.entry(1).exists()


def test_read_only_tier_is_never_written(tmp_path, reset):
    local, team = str(tmp_path / "local"), str(tmp_path / "team")
    calls = []
    f = make_task("tier.py.ro", calls)
    rc.configure(store=team)
    f(1)
    before = snapshot(team)
    rc.configure(store=[local, team + "?readonly=true"])
    assert f(1)["x"] == 1  # hit in the read-only tier, filled locally
    assert f(2)["x"] == 2  # miss: computed and stored locally only
    assert calls == [1, 2]
    assert snapshot(team) == before, "the read-only tier was written"
    rc.configure(store=local)
    f(1), f(2)
    assert calls == [1, 2]


def test_processes_with_separate_local_tiers_compute_once(tmp_path):
    remote = str(tmp_path / "remote")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / f"local-{i}"), remote, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    time.sleep(0.5)
    (tmp_path / "go").touch()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert "LEN 200000" in out, (out, err)
    computed = [n for n in os.listdir(tmp_path) if n.startswith("computed-")]
    assert len(computed) == 1, computed


def test_tiered_over_s3(tmp_path, reset):
    base = os.environ.get("RUNCACHE_TEST_S3")
    if not base:
        skip_or_fail("RUNCACHE_TEST_S3 is not set: the S3 test service is not running",
                     'start it with: eval "$(scripts/services/s3 start)"')
    target, _, query = base.partition("?")
    remote = f"{target.rstrip('/')}/py-tiered-{os.getpid()}-{time.time_ns()}?{query}"
    calls = []
    f = make_task("tier.py.s3", calls)
    rc.configure(store=[str(tmp_path / "a"), remote])
    f(1)
    rc.configure(store=[str(tmp_path / "b"), remote + "&readonly=true"])
    assert f(1)["x"] == 1
    rc.configure(store=str(tmp_path / "b"))
    assert f(1)["x"] == 1
    assert calls == [1]
