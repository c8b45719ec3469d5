"""rc.run: a shell command through the cache from Python (the engine's `runcache::run`)."""

import os
import stat
import subprocess
import sys

import pytest

import runcache as rc
from runcache._run import run as rc_run


def script(path, body):
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def runs(tmp_path):
    p = tmp_path / "runs"
    return len(p.read_text().splitlines()) if p.exists() else 0


def test_a_hit_replays_output_and_restores_outputs(store, tmp_path):
    exe = script(
        tmp_path / "make.sh",
        "echo x >> runs; echo built; echo warn >&2; mkdir -p out; echo 1 > out/f; chmod 600 out/f",
    )
    first = rc_run([exe], cwd=tmp_path, outputs=["out"], capture_output=True)
    assert (first.returncode, first.stdout, first.stderr) == (0, b"built\n", b"warn\n")
    assert not first.replayed
    (tmp_path / "out" / "f").unlink()
    again = rc_run([exe], cwd=tmp_path, outputs=["out"], capture_output=True, text=True)
    assert again.replayed and again.key == first.key
    assert (again.stdout, again.stderr) == ("built\n", "warn\n")
    assert (tmp_path / "out" / "f").read_text() == "1\n"
    assert stat.S_IMODE((tmp_path / "out" / "f").stat().st_mode) == 0o600
    assert runs(tmp_path) == 1


def test_inputs_and_env_enter_the_key(store, tmp_path, monkeypatch):
    exe = script(tmp_path / "cat.sh", 'echo x >> runs; cat data.txt; echo " $SEED"')
    (tmp_path / "data.txt").write_text("a")
    monkeypatch.setenv("SEED", "1")
    call = dict(cwd=tmp_path, inputs=["data.txt"], env=["SEED"], capture_output=True)
    assert rc_run([exe], **call).stdout == b"a 1\n"
    assert rc_run([exe], **call).replayed
    (tmp_path / "data.txt").write_text("b")
    assert rc_run([exe], **call).stdout == b"b 1\n"
    monkeypatch.setenv("SEED", "2")
    assert rc_run([exe], **call).stdout == b"b 2\n"
    assert runs(tmp_path) == 3


def test_a_failure_is_replayed_and_check_raises(store, tmp_path):
    exe = script(tmp_path / "fail.sh", "echo x >> runs; echo oops >&2; exit 3")
    for _ in range(2):
        r = rc_run([exe], cwd=tmp_path, capture_output=True)
        assert (r.returncode, r.stderr) == (3, b"oops\n")
    assert runs(tmp_path) == 1
    with pytest.raises(subprocess.CalledProcessError) as e:
        rc_run([exe], cwd=tmp_path, capture_output=True, check=True)
    assert e.value.returncode == 3 and e.value.stderr == b"oops\n"
    rc_run([exe], cwd=tmp_path, capture_output=True, mode="retry")
    assert runs(tmp_path) == 2


def test_output_reaches_python_streams_when_they_are_not_the_descriptors(store, tmp_path, capsys):
    exe = script(tmp_path / "hi.sh", "echo hello; echo there >&2")
    r = rc_run([exe], cwd=tmp_path)
    assert r.stdout is None
    got = capsys.readouterr()
    assert (got.out, got.err) == ("hello\n", "there\n")
    rc_run([exe], cwd=tmp_path)  # replayed the same way
    got = capsys.readouterr()
    assert (got.out, got.err) == ("hello\n", "there\n")


def test_processes_running_the_same_command_run_it_once(store, tmp_path):
    exe = script(tmp_path / "slow.sh", "echo x >> runs; sleep 1; echo done")
    code = (
        "import runcache as rc, sys\n"
        f"r = rc.run([{exe!r}], cwd={str(tmp_path)!r}, store={str(store)!r}, capture_output=True)\n"
        "sys.stdout.write(r.stdout.decode())\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert [o for o, _ in outs] == [b"done\n"] * 4
    assert runs(tmp_path) == 1


def test_bad_arguments_are_clear_errors(store, tmp_path):
    with pytest.raises(TypeError, match="list like"):
        rc_run("echo hi")
    with pytest.raises(ValueError, match="not inside the working directory"):
        rc_run(["true"], cwd=tmp_path, outputs=["../x"])
    with pytest.raises(ValueError, match="does not exist"):
        rc_run(["true"], cwd=tmp_path, inputs=["nope.csv"])
    with pytest.raises(ValueError, match="unknown mode"):
        rc_run(["true"], mode="sometimes")
    assert not os.path.exists(store) or not any((store / "manifests").rglob("*.json"))
