"""Executors start workers; they never run the queue themselves. The store is the single source
of truth: a sweep's items are in the store, workers claim them with the engine's leases, and
every executor only decides where `python -m runcache worker` runs.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runcache._sweep import SweepHandle


@dataclasses.dataclass
class WorkerState:
    """What an executor knows about the workers it started for one sweep.

    ``alive``: workers running or still waiting to start (e.g. pending in SLURM). ``problems``:
    human-readable reports of workers that ended without finishing (with their log paths).
    """

    alive: int
    problems: list[str] = dataclasses.field(default_factory=list)


class Executor:
    """Base class: how the workers of a sweep are started.

    ``launch`` starts workers for ``sweep.queued`` items; ``poll`` reports whether any are still
    alive; ``cancel`` stops them. ``launch`` may be called again for the same sweep when every
    worker ended with items left (a resubmission).
    """

    #: True when the executor runs items in the calling process (no workers at all).
    inline = False

    def launch(self, sweep: "SweepHandle") -> None:
        raise NotImplementedError

    def poll(self, sweep: "SweepHandle") -> WorkerState:
        raise NotImplementedError

    def cancel(self, sweep: "SweepHandle") -> None:
        raise NotImplementedError
