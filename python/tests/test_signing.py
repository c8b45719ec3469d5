"""Signed entries: with a signing key, entries written are signed and entries read must carry a
valid signature; an unsigned or badly signed entry raises SignatureError (a StoreError) and is
never unpickled, never recomputed over."""

import os
import pathlib
import textwrap

import pytest

import runcache as rc
from runcache import _core

from conftest import run_python

KEY = "team-secret-0123456789abcdef"

# A module both processes import: its result's unpickling creates a marker file (it "runs the
# writer's code").
EVIL = textwrap.dedent(
    """
    import runcache as rc

    def _touch(marker):
        open(marker, "w").close()
        return "pwned"

    class Evil:
        def __init__(self, marker):
            self.marker = marker
        def __reduce__(self):
            return (_touch, (self.marker,))

    @rc.task(name="sig.evil")
    def produce(marker):
        print("COMPUTED", flush=True)
        return Evil(marker)
    """
)

READER = """
import sys
sys.path.insert(0, {moddir!r})
import runcache as rc, evilmod
rc.configure(store={store!r})
try:
    value = evilmod.produce({marker!r})
    print("VALUE", type(value).__name__, flush=True)
except rc.StoreError as e:
    print("REFUSED", type(e).__name__, str(e).replace("\\n", " "), flush=True)
"""


def _env_without_key(**extra):
    env = {k: v for k, v in os.environ.items() if k != "RUNCACHE_SIGNING_KEY"}
    env.update(extra)
    return env


def _run(code, env):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture
def keyed_store(tmp_path):
    path = tmp_path / "store"
    rc.configure(store=str(path), signing_key=KEY)
    yield path
    rc.configure(store=None, signing_key=None)


def _manifest_file(store: pathlib.Path, key: str) -> pathlib.Path:
    (found,) = list((store / "manifests").rglob(f"{key}.json"))
    return found


def test_signed_entries_round_trip(keyed_store):
    calls = []

    @rc.task(name="sig.py.ok")
    def f(x):
        calls.append(x)
        return {"x": x, "big": b"y" * 100_000}

    assert f(1)["x"] == 1
    assert f(1)["x"] == 1
    assert calls == [1]
    info = f.entry(1).info()
    assert info["signature"].startswith("v1.")
    assert f.entry(1).load()["big"] == b"y" * 100_000


def test_unsigned_pickle_is_refused_and_never_unpickled(tmp_path):
    moddir = tmp_path / "mod"
    moddir.mkdir()
    (moddir / "evilmod.py").write_text(EVIL)
    store = str(tmp_path / "store")
    marker = str(tmp_path / "marker")
    code = READER.format(moddir=str(moddir), store=store, marker=marker)

    # Written by a process without the key (the writer itself never unpickles its result).
    out = _run(code, _env_without_key())
    assert "COMPUTED" in out.stdout and "VALUE Evil" in out.stdout, out.stderr
    assert not os.path.exists(marker)

    # A process with the key refuses it: nothing unpickled, nothing recomputed.
    out = _run(code, _env_without_key(RUNCACHE_SIGNING_KEY=KEY))
    assert "REFUSED SignatureError" in out.stdout, (out.stdout, out.stderr)
    assert "signature" in out.stdout and "runcache rm" in out.stdout
    assert "COMPUTED" not in out.stdout
    assert not os.path.exists(marker), "the refused pickle ran its code"

    # Control: without the key the same call does unpickle it (so the check above can fail).
    out = _run(code, _env_without_key())
    assert "VALUE str" in out.stdout, (out.stdout, out.stderr)
    assert os.path.exists(marker)


def test_refusal_in_process_is_a_store_error_and_keeps_the_entry(tmp_path):
    store = tmp_path / "store"
    rc.configure(store=str(store))
    try:

        @rc.task(name="sig.py.unsigned")
        def f(x):
            return x + 1

        assert f(1) == 2
        before = _manifest_file(store, f.key(1)).read_bytes()
        rc.configure(signing_key=KEY)
        with pytest.raises(rc.StoreError) as e:
            f(1)
        assert isinstance(e.value, _core.SignatureError)
        assert "signature" in str(e.value) and f.key(1) in str(e.value)
        with pytest.raises(_core.SignatureError):
            f.entry(1).load()
        with pytest.raises(_core.SignatureError):
            with rc.config(mode="force"):
                f(1)
        assert _manifest_file(store, f.key(1)).read_bytes() == before, "never overwritten"
        assert f.entry(1).delete()
        assert f(1) == 2
        assert f.entry(1).info()["signature"]
    finally:
        rc.configure(store=None, signing_key=None)


def test_tampered_manifest_is_refused(keyed_store):
    @rc.task(name="sig.py.tamper")
    def f(x):
        return x * 3

    assert f(2) == 6
    path = _manifest_file(keyed_store, f.key(2))
    doc = path.read_text()
    assert '"function":"' in doc
    path.write_text(doc.replace('"function":"', '"function":"evil.', 1))
    with pytest.raises(_core.SignatureError, match="modified"):
        f(2)


def test_swapped_blob_is_never_returned(keyed_store):
    calls = []

    @rc.task(name="sig.py.swap")
    def f(x):
        calls.append(x)
        return b"a" * 100_000

    assert f(1) == b"a" * 100_000
    info = f.entry(1).info()
    (pickle_blob,) = [b for b in info["blobs"] if b["role"] == "pickle"]
    assert "inline" not in pickle_blob, "the test needs an external blob"
    (blob_file,) = list((keyed_store / "blobs").rglob(pickle_blob["digest"]))
    import pickle

    evil = pickle.dumps(b"b" * 100_000, protocol=5)
    os.chmod(blob_file, 0o644)
    blob_file.write_bytes(evil)
    # Caught by the digest check: reported as a corrupt entry, never loaded...
    with pytest.raises(rc.CorruptEntryError, match=info["key"]):
        f.entry(1).load()
    # ...and a call recomputes it (the signed manifest still names the right content).
    assert f(1) == b"a" * 100_000
    assert calls == [1, 1]


def test_wrong_key_is_refused_and_no_key_still_reads(tmp_path):
    store = str(tmp_path / "store")
    rc.configure(store=store, signing_key=KEY)
    try:

        @rc.task(name="sig.py.wrong")
        def f(x):
            return [x]

        assert f(1) == [1]
        rc.configure(signing_key=b"another-team-secret-0123456789")
        with pytest.raises(_core.SignatureError, match="another key"):
            f(1)
        rc.configure(signing_key=None)
        env_key = os.environ.pop("RUNCACHE_SIGNING_KEY", None)
        try:
            assert f.entry(1).load() == [1], "without a key signed entries read normally"
        finally:
            if env_key is not None:
                os.environ["RUNCACHE_SIGNING_KEY"] = env_key
    finally:
        rc.configure(store=None, signing_key=None)


def test_signing_key_option_is_validated(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        _core.Store(str(tmp_path / "s"), signing_key="")
    with pytest.raises(TypeError):
        _core.Store(str(tmp_path / "s"), signing_key=3)
    out = run_python(
        "import runcache as rc\n"
        f"rc.configure(store={str(tmp_path / 's2')!r})\n"
        "@rc.task(name='sig.py.env')\n"
        "def f(x): return x\n"
        "f(1)\n"
        "print(f.entry(1).info()['signature'][:3])\n",
        env={"RUNCACHE_SIGNING_KEY": KEY},
    )
    assert out.stdout.strip() == "v1.", (out.stdout, out.stderr)
