"""The ``runcache`` command: ``python -m runcache ls``, or the ``runcache`` script installed with
the package. Same command as the Rust binary (``runcache --help``)."""

from __future__ import annotations

import signal
import sys
from typing import Sequence

from runcache import _core


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["worker"]:
        # Workers run Python callables: they live in this interpreter, not in the Rust command.
        from runcache import _worker

        return _worker.main(args[1:])
    # The command writes to the file descriptors directly: flush what Python has buffered.
    sys.stdout.flush()
    sys.stderr.flush()
    if argv is None:
        # As a command, Ctrl-C stops it at once, like the Rust binary (Python would only notice
        # after the command returned).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    return _core.cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
