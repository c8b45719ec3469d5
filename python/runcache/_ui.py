"""`rc.ui()`: the web dashboard (`runcache ui`) of a store, started from Python or a notebook.

The dashboard is the `runcache` command's own server, run as a child process so that it keeps
serving while the interpreter (or notebook kernel) does other work; `UI.stop()` ends it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import webbrowser
from typing import Any

from runcache import _config


class UI:
    """A running dashboard: `url` to open, `stop()` to end it (also on `with ... :` exit)."""

    def __init__(self, process: subprocess.Popen, url: str) -> None:
        self.process = process
        self.url = url

    def stop(self) -> None:
        """Stops the dashboard's server."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "UI":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.process.poll() is None else "stopped"
        return f"UI({self.url!r}, {state})"

    def _repr_html_(self) -> str:
        from html import escape

        return f'<a href="{escape(self.url)}" target="_blank">runcache dashboard: {escape(self.url)}</a>'


def ui(
    store: Any = None,
    *,
    port: int = 8321,
    bind: str = "127.0.0.1",
    token: str | None = None,
    allow_write: bool = False,
    open: bool = False,
    timeout: float = 30.0,
) -> UI:
    """Starts `runcache ui` on `store` (default: the configured store) and returns it once it
    listens. ``port=0`` picks a free port. Binding beyond loopback needs a token (generated
    when not given; it is in ``UI.url``). ``allow_write`` enables deleting entries and
    cancelling sweeps from the page. ``open`` opens the page in a browser."""
    options = _config.current({} if store is None else {"store": store})
    location = _config.store_location(options)
    if isinstance(location, tuple):
        location = location[0]
    argv = [sys.executable, "-m", "runcache", "--store", location, "ui",
            "--port", str(int(port)), "--bind", bind]
    if allow_write:
        argv.append("--allow-write")
    env = dict(os.environ)
    if token is not None:
        env["RUNCACHE_UI_TOKEN"] = token
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    first = line[0] if line else ""
    if " at http" not in first:
        process.kill()
        _, err = process.communicate()
        raise RuntimeError(f"runcache ui did not start: {(err or first).strip() or 'no output'}")
    url = first.rsplit(" at ", 1)[1].strip()
    if open:
        webbrowser.open(url)
    return UI(process, url)
