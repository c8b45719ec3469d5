"""The live progress bar of a sweep (terminal and Jupyter, through tqdm) and its one-line
summary."""

from __future__ import annotations

import sys
import time
from typing import Any


def _interactive() -> bool:
    """True in a terminal or a Jupyter kernel: where a live bar is readable."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Shows item counts (completed, cached, running, failed, queued) and an ETA; prints a
    summary line when closed. ``enabled=None`` shows it in terminals and notebooks only."""

    def __init__(self, name: str, total: int, enabled: bool | None = None) -> None:
        self.name = name
        self.enabled = _interactive() if enabled is None else enabled
        self.started = time.monotonic()
        self.last: Any = None
        self.bar: Any = None
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                desc=name.rsplit(".", 1)[-1],
                unit="item",
                dynamic_ncols=True,
                file=sys.stderr,
            )

    def update(self, st: Any) -> None:
        """Shows the latest counts."""
        self.last = st
        if self.bar is None:
            return
        self.bar.n = st.done
        self.bar.set_postfix_str(counts(st), refresh=False)
        self.bar.refresh()

    def write(self, message: str) -> None:
        """Prints a message above the bar (or to stderr)."""
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def close(self) -> None:
        """Closes the bar and prints the summary line."""
        if self.bar is not None:
            self.bar.close()
            if self.last is not None:
                print(summary(self.name, self.last,
                              time.monotonic() - self.started), file=sys.stderr)


def counts(st: Any) -> str:
    """``completed 3, cached 5, running 2, failed 0, queued 10``."""
    cancelled = f", cancelled {st.cancelled}" if st.cancelled else ""
    return (
        f"completed {st.completed}, cached {st.cached}, running {st.running}, "
        f"failed {st.failed}, queued {st.queued}{cancelled}"
    )


def summary(name: str, st: Any, seconds: float) -> str:
    """The one-line summary printed at the end of a sweep."""
    return (
        f"runcache: {name}: computed {st.completed}, loaded {st.cached} from cache, "
        f"failed {st.failed}{f', cancelled {st.cancelled}' if st.cancelled else ''} "
        f"in {seconds:.1f} s"
    )
