"""`rc.run`: cache any shell command, like `runcache run -- CMD` from Python.

The engine does the work (`runcache::run`): the key covers the argv, the working directory, the
content of the declared inputs, the named environment variables, the declared outputs, the
version and the executable's content; a hit replays stdout, stderr, outputs and exit status
without running the command, and identical calls on any machine sharing the store run it once.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
import sys
import tempfile
from typing import IO, Any, Iterable, Sequence

from runcache import _config, _core



class RunResult(subprocess.CompletedProcess):
    """A `subprocess.CompletedProcess` that also says whether it was replayed from the store
    (`replayed`) and under which key (`key`). `stdout`/`stderr` are set with
    `capture_output=True` (bytes, or str with `text=True`), else None."""

    def __init__(
        self, args: Any, returncode: int, stdout: Any, stderr: Any, replayed: bool, key: str
    ) -> None:
        super().__init__(args, returncode, stdout, stderr)
        self.replayed = replayed
        self.key = key

    def __repr__(self) -> str:
        return (
            f"RunResult(args={self.args!r}, returncode={self.returncode}, "
            f"replayed={self.replayed}, key={self.key[:12]!r})"
        )


def _seconds(ttl: float | datetime.timedelta | None) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, datetime.timedelta):
        ttl = ttl.total_seconds()
    if not isinstance(ttl, (int, float)) or ttl < 0:
        raise TypeError(f"ttl={ttl!r}: give seconds (a number >= 0) or a datetime.timedelta")
    return float(ttl)


def _is_fd(stream: IO[Any], fd: int) -> bool:
    """True if `stream` writes straight to file descriptor `fd` (not in a notebook, not
    redirected inside Python)."""
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False


def _forward(data: bytes, stream: IO[Any]) -> None:
    """Writes captured bytes to a Python-level stream (a notebook cell, a redirected sys.stdout)."""
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        buffer.write(data)
        buffer.flush()
    else:
        stream.write(data.decode(errors="replace"))
        stream.flush()


def _strings(name: str, values: Iterable[Any]) -> list[str]:
    if isinstance(values, (str, bytes, os.PathLike)):
        values = [values]
    out = []
    for v in values:
        if not isinstance(v, (str, os.PathLike)):
            raise TypeError(f"{name}: {v!r} is not a path or name (give str or os.PathLike)")
        out.append(os.fspath(v))
    return out


def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
    outputs: Iterable[str | os.PathLike[str]] = (),
    env: Iterable[str] = (),
    version: str = "0",
    name: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    store: Any = None,
    mode: str | None = None,
    ttl: float | datetime.timedelta | None = None,
    ignore_cwd: bool = False,
    hash_executable: bool = True,
    cache_failures: bool = True,
    capture_output: bool = False,
    text: bool = False,
    check: bool = False,
) -> RunResult:
    """Runs the command `args` through the cache and returns how it ended.

    ``rc.run(["Rscript", "plot.R", "data.csv"], inputs=["data.csv", "plot.R"],
    outputs=["plot.png"])`` runs R once; later calls (any process or machine sharing the store)
    restore ``plot.png`` and replay the output and exit status without running it.

    - ``inputs``: files, directories or glob patterns whose content enters the key (unchanged
      files are not re-read). ``env``: names of environment variables whose values enter it
      (the rest of the environment never does). ``version``: bump it to invalidate.
    - ``outputs``: files or directories inside ``cwd`` the command writes; stored, and restored
      in place (atomically, with their modes) on a hit. One missing after exit 0 is an error
      and nothing is stored.
    - A non-zero exit is recorded and replayed like a failed task (``mode="retry"`` runs it
      again); ``cache_failures=False`` stores nothing for it. ``ttl`` (seconds or timedelta):
      an entry older than this is run again.
    - ``capture_output``/``text``/``check`` behave as in ``subprocess.run``; without capture,
      the output goes to this process's stdout and stderr.
    - ``store``/``mode`` default to the current ``rc.config``/``rc.configure`` settings.
    """
    if isinstance(args, (str, bytes)) or not args:
        raise TypeError(
            f"args={args!r}: give the command as a non-empty list like ['make', 'all'] "
            "(a string is not split; for a shell line use ['sh', '-c', line])"
        )
    options = _config.current({} if store is None else {"store": store})
    chosen_mode = mode or options.get("mode") or "cached"
    if chosen_mode not in _config.MODES:
        raise ValueError(f"unknown mode {chosen_mode!r}; use one of: {', '.join(_config.MODES)}")
    engine = _config.open_store(options)
    argv = [os.fspath(a) for a in args]
    call = dict(
        cwd=os.path.abspath(os.fspath(cwd)) if cwd is not None else os.getcwd(),
        inputs=_strings("inputs", inputs),
        outputs=_strings("outputs", outputs),
        env=_strings("env", env),
        version=str(version),
        name=name,
        mode=chosen_mode,
        ttl=_seconds(ttl),
        ignore_cwd=ignore_cwd,
        hash_executable=hash_executable,
        cache_failures=cache_failures,
    )
    streams = (sys.stdout, sys.stderr)
    # Captured when asked, or when Python's streams are not the process's own (a notebook).
    capture = [capture_output or not _is_fd(s, fd) for s, fd in zip(streams, (1, 2))]
    for s in streams:
        try:
            s.flush()
        except (AttributeError, OSError, ValueError):
            pass
    # A scratch folder only when something is captured (the common terminal case needs none).
    with (tempfile.TemporaryDirectory(prefix="runcache-run-") if any(capture)
          else contextlib.nullcontext("")) as tmp:
        paths = [os.path.join(tmp, n) if c else None for n, c in zip(("out", "err"), capture)]
        code, signal, replayed, key = _core.run_command(
            engine, argv, stdout=paths[0], stderr=paths[1], **call
        )
        captured: list[Any] = [None, None]
        for i, path in enumerate(paths):
            if path is None:
                continue
            with open(path, "rb") as f:
                data = f.read()
            if capture_output:
                captured[i] = data.decode() if text else data
            else:
                _forward(data, streams[i])
    returncode = code if code is not None else -(signal or 0)
    result = RunResult(args, returncode, captured[0], captured[1], replayed, key)
    if check:
        result.check_returncode()
    return result
