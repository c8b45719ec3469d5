"""runcache: make every expensive computation run once and be reused everywhere after.

>>> import runcache as rc
>>> @rc.task(version="1")
... def fit(X, seed, verbose=False): ...
>>> fit(X, 0)          # computes once, then loads — in any process that reaches the store
"""

from runcache import _core
from runcache._batch import BatchTask, batch_task
from runcache._config import config, configure
from runcache._core import (
    CorruptEntryError,
    RecordedFailure,
    RuncacheError,
    SignatureError,
    StoreError,
)
from runcache._dask import Dask
from runcache._entry import Entry, Explanation
from runcache._executors import Executor, Inline, Local, Manual
from runcache._memory import CollisionWarning, Memory
from runcache._ray import Ray
from runcache._run import RunResult, run
from runcache._ui import UI, ui
from runcache._scope import artifact_path, set_metadata
from runcache._slurm import Slurm
from runcache._sweep import (
    Failure,
    Job,
    SweepError,
    SweepHandle,
    SweepStalled,
    SweepStatus,
    grid,
    sweep,
)
from runcache._task import Task, Terminated, task

__version__ = _core.__version__

__all__ = [
    "BatchTask",
    "CollisionWarning",
    "CorruptEntryError",
    "Dask",
    "Entry",
    "Executor",
    "Explanation",
    "Failure",
    "Inline",
    "Job",
    "Local",
    "Manual",
    "Memory",
    "Ray",
    "RecordedFailure",
    "RunResult",
    "RuncacheError",
    "SignatureError",
    "Slurm",
    "StoreError",
    "SweepError",
    "SweepHandle",
    "SweepStalled",
    "SweepStatus",
    "Task",
    "Terminated",
    "UI",
    "__version__",
    "artifact_path",
    "batch_task",
    "config",
    "configure",
    "grid",
    "run",
    "set_metadata",
    "sweep",
    "task",
    "ui",
]
