"""The dashboard's JSON API (`runcache ui`) on every kind of store: local, S3 (moto on
loopback) and PostgreSQL, each started by scripts/test."""

import json
import os
import sys
import time
import urllib.error
import urllib.request

import pytest

import runcache as rc
from conftest import skip_or_fail

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ui_tasks  # noqa: E402


def location(kind, tmp_path):
    unique = f"ui_{os.getpid()}_{time.time_ns()}"
    if kind == "local":
        return str(tmp_path / "store")
    var = {"s3": "RUNCACHE_TEST_S3", "postgres": "RUNCACHE_TEST_POSTGRES"}[kind]
    base = os.environ.get(var)
    if not base:
        skip_or_fail(f"{var} is not set: the test service is not running",
                     f"start it with: eval \"$(scripts/services/{kind} start)\"")
    if kind == "postgres":
        return f"{base}?schema={unique}"
    target, _, query = base.partition("?")
    return f"{target.rstrip('/')}/{unique}?{query}"


def get(url, path, method="GET", headers=None):
    req = urllib.request.Request(url.rstrip("/") + path, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=60) as r:
        body = r.read()
        kind = r.headers.get("Content-Type", "")
        return json.loads(body) if kind.startswith("application/json") else (body, kind)


def error_of(url, path, method="GET"):
    with pytest.raises(urllib.error.HTTPError) as e:
        get(url, path, method)
    return e.value.code, e.value.read().decode()


@pytest.mark.parametrize("kind", ["local", "s3", "postgres"])
def test_the_json_api_reads_every_store(kind, tmp_path):
    loc = location(kind, tmp_path)
    gate = tmp_path / "gate"
    gate.mkdir()
    for i in range(2):
        (gate / f"go-{i}").touch()
    rc.configure(store=loc)
    try:
        for x in range(3):
            ui_tasks.plot(x)
        with pytest.raises(ValueError):
            ui_tasks.broken(7)
        jobs = ui_tasks.pace.map([{"x": i, "gate": str(gate)} for i in range(2)],
                                 executor=rc.Local(workers=1), wait=False)
        sweep = jobs[0].sweep
        sweep.wait(timeout=120, progress=False)
        server = rc.ui(port=0)
    finally:
        rc.configure(store=None)
    url = server.url
    try:
        assert get(url, "/api/info")["writable"] is False
        o = get(url, "/api/overview")
        names = {n["name"]: n for n in o["namespaces"]}
        assert names["ui.plot"]["entries"] == 3 and names["ui.broken"]["failed"] == 1
        assert names["ui.pace"]["entries"] == 2 and o["entries"] == 6 and o["sweeps"] == 1

        # Pages of two, chained by their cursor, list every entry once, in key order.
        keys, after = [], None
        while True:
            page = get(url, "/api/entries?limit=2" + (f"&after={after}" if after else ""))
            assert len(page["entries"]) <= 2
            keys += [e["key"] for e in page["entries"]]
            after = page["next"]
            if after is None:
                break
        assert len(keys) == 6 and keys == sorted(set(keys))
        failed = get(url, "/api/entries?status=failed")["entries"]
        assert [e["namespace"] for e in failed] == ["ui.broken"]
        assert "broken beyond repair" in failed[0]["error"]
        plots = get(url, "/api/entries?namespace=ui.plot&min_size=1")["entries"]
        assert len(plots) == 3

        one = [e for e in plots if e["key"] == _plot_key(loc, 1)][0]
        d = get(url, f"/api/entries/{one['key']}")
        assert d["manifest"]["key_doc"]["args"] == {"x": 1, "label": "loss"}
        assert all("inline" not in b for b in d["manifest"]["blobs"])
        assert {a["name"]: a["kind"] for a in d["artifacts"]} == {"plot.png": "image", "notes.txt": "text"}
        assert d["manifest"]["metadata"]["rows"] == 10
        assert d["nearest"] and [x["path"] for x in d["nearest"][0]["differences"]] == ["args.x"]
        body, ctype = get(url, f"/api/entries/{one['key']}/artifacts/notes.txt?inline=1")
        assert body == b"notes for loss 1\n" and ctype.startswith("text/plain")
        body, ctype = get(url, f"/api/entries/{one['key']}/artifacts/plot.png")
        assert body == ui_tasks.tiny_png() and ctype == "image/png"
        with urllib.request.urlopen(url.rstrip("/") + f"/api/entries/{one['key']}/artifacts/notes.txt") as r:
            # Opened on its own an artifact is a sandboxed download, never a page that runs.
            assert r.headers["Content-Security-Policy"].startswith("sandbox")
            assert r.headers["Content-Disposition"].startswith("attachment")
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        code, text = error_of(url, f"/api/entries/{one['key']}/artifacts/missing.txt")
        assert code == 404 and "has no artifact" in text

        broken = get(url, f"/api/entries/{failed[0]['key']}")
        assert "ValueError" in broken["manifest"]["error"]["traceback"]

        sweeps = get(url, "/api/sweeps")["sweeps"]
        assert [s["id"] for s in sweeps] == [sweep.id]
        assert sweeps[0]["counts"]["completed"] == 2 and sweeps[0]["counts"]["drained"]
        detail = get(url, f"/api/sweeps/{sweep.id}")
        assert [i["state"] for i in detail["items"]] == ["completed", "completed"]
        with urllib.request.urlopen(url.rstrip("/") + f"/api/sweeps/{sweep.id}/events", timeout=30) as r:
            first = [r.readline().decode().strip() for _ in range(2)]
        assert first[0] == "event: counts" and json.loads(first[1][len("data: "):])["completed"] == 2

        assert error_of(url, "/api/entries/nothex")[0] == 400
        assert error_of(url, "/api/entries/" + "0" * 64)[0] == 404
        code, text = error_of(url, f"/api/entries/{one['key']}", method="DELETE")
        assert code == 403 and "--allow-write" in text
        code, _ = error_of(url, f"/api/sweeps/{sweep.id}/cancel", method="POST")
        assert code == 403
    finally:
        server.stop()


def _plot_key(loc, x):
    with rc.config(store=loc):
        return ui_tasks.plot.entry(x).key


def test_writes_need_allow_write_and_the_write_header(tmp_path):
    loc = str(tmp_path / "store")
    with rc.config(store=loc):
        ui_tasks.plot(5)
        key = ui_tasks.plot.entry(5).key
    with rc.ui(store=loc, port=0, allow_write=True) as server:
        code, text = error_of(server.url, f"/api/entries/{key}", method="DELETE")
        assert code == 403 and "X-Runcache-Write" in text
        done = get(server.url, f"/api/entries/{key}", method="DELETE",
                   headers={"X-Runcache-Write": "yes"})
        assert done["deleted"] is True
    with rc.config(store=loc):
        assert not ui_tasks.plot.entry(5).exists()


def test_a_foreign_host_name_is_refused(tmp_path):
    loc = str(tmp_path / "store")
    with rc.config(store=loc):
        ui_tasks.plot(6)
    with rc.ui(store=loc, port=0) as server:
        req = urllib.request.Request(server.url + "api/info", headers={"Host": "attacker.example"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req)
        assert e.value.code == 403


def test_cancel_withdraws_the_items_no_worker_started(tmp_path):
    loc = str(tmp_path / "store")
    gate = tmp_path / "gate"
    gate.mkdir()
    with rc.config(store=loc):
        jobs = ui_tasks.pace.map([{"x": i, "gate": str(gate)} for i in range(4)],
                                 executor=rc.Local(workers=1), wait=False)
    sweep = jobs[0].sweep
    with rc.ui(store=loc, port=0, allow_write=True) as server:
        deadline = time.time() + 60
        while get(server.url, f"/api/sweeps/{sweep.id}")["counts"]["running"] != 1:
            assert time.time() < deadline, "no item started"
            time.sleep(0.1)
        done = get(server.url, f"/api/sweeps/{sweep.id}/cancel", method="POST",
                   headers={"X-Runcache-Write": "yes"})
        assert done["cancelled"] == 3
        for i in range(4):
            (gate / f"go-{i}").touch()
        with rc.config(store=loc):
            sweep.wait(timeout=120, progress=False)
        counts = get(server.url, f"/api/sweeps/{sweep.id}")["counts"]
        assert (counts["completed"], counts["cancelled"]) == (1, 3)
