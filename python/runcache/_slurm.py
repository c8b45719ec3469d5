"""The SLURM executor: one job array per sweep, each array task one ``runcache worker``.

The store decides what is computed (workers claim items with the engine's leases); this module
only gets workers running on a cluster and watches them. It talks to SLURM through its command
line tools (``sbatch``, ``squeue``, ``scontrol``, ``sacct``, ``scancel``), like a person would,
and never through a SLURM library.

The text parsers are module functions so they can be tested without a cluster.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import time as _time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from runcache._executors import WORKER_SETUP_FAILED, Executor, SweepView, WorkerState

#: States in which an array task still counts as a worker (running or going to run).
ALIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "CONFIGURING",
        "COMPLETING",
        "REQUEUED",
        "SUSPENDED",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
    }
)

#: End states that are reported as problems (with the task's log).
PROBLEM_STATES = frozenset(
    {
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "SPECIAL_EXIT",
    }
)

#: SLURM's default MaxArraySize, used when ``scontrol show config`` cannot be read.
DEFAULT_MAX_ARRAY_SIZE = 1001

#: Snapshot: file suffixes copied (code and small text/config files).
SNAPSHOT_SUFFIXES = frozenset(
    {
        ".py", ".pyi", ".pyx", ".pxd", ".txt", ".md", ".rst", ".json", ".jsonl", ".yaml",
        ".yml", ".toml", ".cfg", ".ini", ".conf", ".csv", ".tsv", ".sql", ".sh", ".j2",
        ".jinja", ".tmpl", ".template",
    }
)
#: Snapshot: file names copied whatever their suffix.
SNAPSHOT_NAMES = frozenset({"Makefile", "Dockerfile", "requirements.txt", "setup.cfg", ".env.example"})
#: Snapshot: directories never entered.
SNAPSHOT_SKIP_DIRS = frozenset(
    {
        ".git", ".hg", ".svn", ".venv", "venv", "env", "__pycache__", ".runcache",
        ".mypy_cache", ".pytest_cache", ".ruff_cache", ".tox", ".nox", ".ipynb_checkpoints",
        "node_modules", "runcache-slurm", "site-packages",
    }
)
#: Snapshot: directories holding one of these files are never entered.
SNAPSHOT_SKIP_MARKERS = ("pyvenv.cfg", "RUNCACHE-STORE.json", ".runcache-slurm-sweep")
SNAPSHOT_MAX_FILE = 1 << 20  # files above 1 MiB are data, not code
SNAPSHOT_MAX_TOTAL = 200 << 20  # refuse to copy more than this in all
SNAPSHOT_MAX_FILES = 20000


class SlurmError(RuntimeError):
    """A SLURM command is missing or failed."""


class SlurmTimeout(SlurmError):
    """A SLURM command did not answer in time (a busy or restarting controller)."""


# -- parsing SLURM's answers ------------------------------------------------------------------


def parse_config(text: str) -> dict[str, str]:
    """``scontrol show config`` → ``{"MaxArraySize": "1001", ...}``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip()
    return out


def max_array_size(config: Mapping[str, str]) -> int:
    """The cluster's MaxArraySize (task indices must stay below it)."""
    try:
        value = int(config.get("MaxArraySize", ""))
    except ValueError:
        return DEFAULT_MAX_ARRAY_SIZE
    return value if value > 0 else DEFAULT_MAX_ARRAY_SIZE


def accounting_enabled(config: Mapping[str, str]) -> bool:
    """True when the cluster stores accounting (so ``sacct`` can answer)."""
    kind = config.get("AccountingStorageType", "accounting_storage/none").strip()
    return bool(kind) and kind not in ("accounting_storage/none", "(null)")


def expand_task_ids(spec: str) -> list[int]:
    """A SLURM array index expression (``0-5%2``, ``[1,3-4]``, ``0-10:2``) → its indices."""
    spec = spec.strip().strip("[]").split("%", 1)[0]
    ids: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        rng, _, step = part.partition(":")
        first, dash, last = rng.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            continue
        lo = int(first)
        hi = int(last) if dash else lo
        ids.extend(range(lo, hi + 1, int(step) if step.isdigit() and int(step) > 0 else 1))
    return ids


def split_job_id(text: str) -> tuple[str, list[int] | None]:
    """``"123_4"`` → ``("123", [4])``; ``"123_[5-7%2]"`` → ``("123", [5, 6, 7])``; a plain job
    id → ``("123", None)``. Federation suffixes (``123.0``) are dropped."""
    job, sep, task = text.strip().partition("_")
    job = job.split(".", 1)[0]
    if not sep:
        return job, None
    return job, expand_task_ids(task)


def parse_squeue(text: str) -> dict[tuple[str, int], str]:
    """``squeue -h -r -t all -o '%i %T'`` → ``{(array job id, task id): state}``."""
    out: dict[tuple[str, int], str] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        job, tasks = split_job_id(fields[0])
        state = fields[1].upper()
        for t in tasks or ():
            out[(job, t)] = state
    return out


_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


def parse_scontrol_record(line: str) -> dict[str, str]:
    """One ``scontrol -o show job`` line → its fields. Values may contain spaces (paths) and
    ``=`` (TRES lists): a field runs until the next `` Key=``."""
    matches = list(_KEY.finditer(line))
    fields: dict[str, str] = {}
    for m, nxt in zip(matches, matches[1:] + [None]):
        end = nxt.start() if nxt is not None else len(line)
        fields[m.group(1)] = line[m.end() : end].strip()
    return fields


@dataclasses.dataclass
class TaskInfo:
    """What SLURM said about one array task."""

    state: str
    reason: str = ""
    exit_code: str = ""
    stdout: str = ""
    stderr: str = ""


def parse_scontrol_jobs(text: str) -> dict[tuple[str, int], TaskInfo]:
    """``scontrol -o show job ID`` (one line per job record) → per array task information.
    A record standing for several pending tasks (``ArrayTaskId=3-9%2``) gives each of them."""
    out: dict[tuple[str, int], TaskInfo] = {}
    for line in text.splitlines():
        if "JobId=" not in line:
            continue
        f = parse_scontrol_record(line)
        job = f.get("ArrayJobId") or f.get("JobId", "")
        tasks = expand_task_ids(f["ArrayTaskId"]) if "ArrayTaskId" in f else []
        state = f.get("JobState", "").split()[0].upper() if f.get("JobState") else ""
        reason = f.get("Reason", "")
        info = TaskInfo(
            state=state,
            reason="" if reason in ("None", "(null)") else reason,
            exit_code=f.get("ExitCode", ""),
            stdout=f.get("StdOut", ""),
            stderr=f.get("StdErr", ""),
        )
        for t in tasks:
            out[(job, t)] = dataclasses.replace(info)
    return out


def sacct_disabled(text: str) -> bool:
    """True when ``sacct`` said it has nothing to work with (it may still exit 0)."""
    low = text.lower()
    return "accounting storage is disabled" in low or "slurmdbd" in low and "error" in low


def parse_sacct(text: str) -> dict[tuple[str, int], TaskInfo]:
    """``sacct -n -P -o JobID,State,ExitCode`` → per array task state. Job steps (``.batch``,
    ``.extern``) are skipped; ``CANCELLED by 0`` becomes ``CANCELLED``."""
    out: dict[tuple[str, int], TaskInfo] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or "." in parts[0]:
            continue
        job, tasks = split_job_id(parts[0])
        state = parts[1].split()[0].upper() if parts[1].strip() else ""
        for t in tasks or ():
            out[(job, t)] = TaskInfo(state=state, exit_code=parts[2].strip())
    return out


# -- writing the batch script -----------------------------------------------------------------

_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def sbatch_quote(word: str) -> str:
    """Quotes one word of an ``#SBATCH`` line the way sbatch reads it back: sbatch splits at
    blanks, takes ``'``/``"`` quotes, backslash escapes, and an unquoted ``#`` starts a comment."""
    if "\n" in word or "\r" in word:
        raise ValueError(f"an #SBATCH option cannot contain a line break: {word!r}")
    if _SAFE.match(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def log_pattern(folder: str) -> str:
    """The ``--output`` pattern of one array task, with ``%`` in the folder name escaped."""
    return os.path.join(folder.replace("%", "%%"), "%A_%a.out")


def log_path(folder: str, job: str, task: int) -> str:
    """Where the task ``job_task`` writes (what :func:`log_pattern` expands to)."""
    return os.path.join(folder, f"{job}_{task}.out")


def array_specs(n: int, max_size: int, parallelism: int | None = None) -> list[str]:
    """``--array`` values covering ``n`` tasks: one ``0-(n-1)[%P]`` when ``n`` fits under the
    cluster's MaxArraySize, else several arrays of at most ``max_size`` tasks each (indices
    must stay below MaxArraySize, so each one starts again at 0)."""
    n = max(1, n)
    max_size = max(1, max_size)
    limit = f"%{parallelism}" if parallelism else ""
    specs = []
    while n > 0:
        m = min(n, max_size)
        specs.append(f"0-{m - 1}{limit}")
        n -= m
    return specs


def _time_option(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(int(value))  # minutes, as sbatch reads a bare number
    return str(value)


def sbatch_options(executor: "Slurm", job_name: str, folder: str, workdir: str) -> list[str]:
    """The ``--option=value`` words of the batch script's ``#SBATCH`` lines."""
    opts = [f"--job-name={job_name}"]
    if executor.partition:
        opts.append(f"--partition={executor.partition}")
    if executor.time is not None:
        opts.append(f"--time={_time_option(executor.time)}")
    if executor.cpus_per_task:
        opts.append(f"--cpus-per-task={int(executor.cpus_per_task)}")
    if executor.mem:
        opts.append(f"--mem={executor.mem}")
    if executor.gpus:
        opts.append(f"--gres=gpu:{executor.gpus}")
    if executor.account:
        opts.append(f"--account={executor.account}")
    if executor.qos:
        opts.append(f"--qos={executor.qos}")
    for key, value in (executor.extra or {}).items():
        name = str(key).lstrip("-").replace("_", "-")
        if value is None or value is False:
            continue
        opts.append(f"--{name}" if value is True else f"--{name}={value}")
    opts.append(f"--chdir={workdir}")
    pattern = log_pattern(folder)
    opts.append(f"--output={pattern}")
    opts.append(f"--error={pattern}")
    opts.append("--open-mode=append")  # a requeued task adds to its log instead of erasing it
    return opts


def render_script(
    options: Sequence[str],
    setup: Sequence[str],
    env: Mapping[str, str],
    argv: Sequence[str],
    header: str = "",
    env_lines: Sequence[str] = (),
) -> str:
    """The batch script: ``#SBATCH`` lines, then setup lines, environment, ``exec`` worker."""
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH {sbatch_quote(o)}" for o in options]
    if header:
        lines += [f"# {h}" if h else "#" for h in header.splitlines()]
    if setup:
        lines.append("")
        lines.append("# setup")
        lines += list(setup)
    lines.append("")
    for key, value in env.items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise ValueError(f"not a valid environment variable name: {key!r}")
        lines.append(f"export {key}={shlex.quote(value)}")
    lines += list(env_lines)
    lines.append("")
    # exec: the worker is the batch step itself, so scancel's SIGTERM reaches it directly.
    lines.append("exec " + " ".join(shlex.quote(a) for a in argv))
    return "\n".join(lines) + "\n"


# -- snapshot ---------------------------------------------------------------------------------


def project_dir() -> Path:
    """The caller's project: the folder of the ``__main__`` script if there is one, else the
    current directory."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path and os.path.isfile(path):
        return Path(path).resolve().parent
    return Path.cwd().resolve()


def _snapshot_wanted(path: Path) -> bool:
    return path.suffix.lower() in SNAPSHOT_SUFFIXES or path.name in SNAPSHOT_NAMES


def snapshot_files(src: Path, exclude: Iterable[Path] = ()) -> list[Path]:
    """The files a snapshot of ``src`` copies (relative paths): code and small text/config
    files, outside version-control folders, virtual environments, caches, runcache stores and
    the ``exclude`` folders (e.g. the log folder)."""
    src = src.resolve()
    excluded = {Path(e).resolve() for e in exclude}
    found: list[Path] = []
    total = 0
    for root, dirs, files in os.walk(src):
        here = Path(root)
        keep = []
        for d in sorted(dirs):
            p = here / d
            if d in SNAPSHOT_SKIP_DIRS or d.endswith(".egg-info") or p.is_symlink():
                continue
            if p.resolve() in excluded:
                continue
            # Virtual environments, runcache stores and sweep folders, whatever their names.
            if any((p / m).exists() for m in SNAPSHOT_SKIP_MARKERS):
                continue
            keep.append(d)
        dirs[:] = keep
        for name in sorted(files):
            p = here / name
            if not _snapshot_wanted(p):
                continue
            try:
                size = p.stat().st_size
            except OSError:
                continue
            if size > SNAPSHOT_MAX_FILE:
                continue
            total += size
            found.append(p.relative_to(src))
            if total > SNAPSHOT_MAX_TOTAL or len(found) > SNAPSHOT_MAX_FILES:
                raise ValueError(
                    f"snapshot=True would copy more than {SNAPSHOT_MAX_FILES} files or "
                    f"{SNAPSHOT_MAX_TOTAL >> 20} MiB from {src}: run from your project's folder "
                    "(or a script inside it), or use snapshot=False"
                )
    return found


def take_snapshot(src: Path, dest: Path, exclude: Iterable[Path] = ()) -> int:
    """Copies the project's code from ``src`` into ``dest``; returns the number of files."""
    files = snapshot_files(src, exclude)
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, target)
    dest.mkdir(parents=True, exist_ok=True)
    return len(files)


# -- the executor -----------------------------------------------------------------------------


@dataclasses.dataclass
class _Submission:
    job: str
    tasks: int
    launch: int = 0  # which call of launch() submitted it (resubmissions count up)


@dataclasses.dataclass
class _Tracking:
    """What this process knows about one sweep's arrays."""

    folder: str
    submissions: list[_Submission]
    #: Last known state of each task; tasks not in it are assumed pending (just submitted).
    states: dict[tuple[str, int], str] = dataclasses.field(default_factory=dict)
    #: Details of tasks that ended (state, reason, exit code, log paths).
    ended: dict[tuple[str, int], TaskInfo] = dataclasses.field(default_factory=dict)
    last_query: float | None = None


class Slurm(Executor):
    """Runs a sweep's workers as one SLURM job array (one worker per array task).

    ``fit.map(items, executor=runcache.Slurm(partition="gpu", gpus=1, time="04:00:00"))``
    submits a single ``sbatch --array=0-(n-1)`` for ``n = min(items to compute, max_tasks)``
    tasks. Every task runs ``python -m runcache worker`` for the sweep: it claims items in the
    store, computes them and keeps pulling until the sweep is drained, so fewer tasks than items
    is fine (``max_tasks``) and a task that dies only loses the item it held.

    Options (``None`` leaves SLURM's default):

    - ``partition``, ``time`` (``"HH:MM:SS"``, ``"D-HH:MM:SS"`` or minutes), ``cpus_per_task``,
      ``mem`` (per node, e.g. ``"16G"``), ``gpus`` (``--gres=gpu:N``; a string like
      ``"a100:2"`` is passed as is), ``account``, ``qos``.
    - ``array_parallelism``: at most this many tasks run at once (``--array=...%P``).
    - ``setup``: shell lines run before the worker (``module load cuda``, ``source env.sh``).
    - ``extra``: more sbatch options, ``{"constraint": "a100", "exclusive": True}`` →
      ``--constraint=a100`` and ``--exclusive``.
    - ``snapshot``: copy the project's code (the folder of the ``__main__`` script, else the
      current directory; ``*.py`` and small text/config files) into the log folder and put the
      copy first on the workers' ``PYTHONPATH``, so jobs that start later run the code as it was
      at submission, whatever you edit meanwhile.
    - ``log_dir``: where each sweep gets its folder (``<log_dir>/<sweep id>/``) holding the
      batch script, the task logs (``<array job id>_<task id>.out``) and the snapshot. Default:
      ``./runcache-slurm``.
    - ``max_tasks``: at most this many array tasks (default: one per item to compute).
    - ``poll_interval``: at most one ``squeue`` call per this many seconds while waiting.

    Arrays above the cluster's ``MaxArraySize`` are split into several submissions; with
    ``array_parallelism`` each one waits for the previous (``--dependency=afterany``) so the
    limit holds for the whole sweep.
    """

    def __init__(
        self,
        partition: str | None = None,
        time: str | int | None = "01:00:00",
        cpus_per_task: int | None = 1,
        mem: str | None = "4G",
        gpus: int | str = 0,
        array_parallelism: int | None = None,
        account: str | None = None,
        qos: str | None = None,
        setup: Sequence[str] | str = (),
        extra: Mapping[str, Any] | None = None,
        snapshot: bool = False,
        log_dir: str | os.PathLike[str] | None = None,
        max_tasks: int | None = None,
        poll_interval: float = 5.0,
    ) -> None:
        if array_parallelism is not None and array_parallelism < 1:
            raise ValueError(f"array_parallelism={array_parallelism}: give at least 1")
        if max_tasks is not None and max_tasks < 1:
            raise ValueError(f"max_tasks={max_tasks}: give at least 1")
        taken = {"output", "error", "array", "o", "e", "a"} & {
            str(k).lstrip("-").replace("_", "-") for k in (extra or {})
        }
        if taken:
            raise ValueError(
                f"extra={dict(extra or {})!r}: {', '.join(sorted(taken))} is set by the executor "
                "(logs go to log_dir; the array size follows the sweep and max_tasks)"
            )
        if poll_interval < 0:
            raise ValueError(f"poll_interval={poll_interval}: give a non-negative number")
        self.partition = partition
        self.time = time
        self.cpus_per_task = cpus_per_task
        self.mem = mem
        self.gpus = gpus
        self.array_parallelism = array_parallelism
        self.account = account
        self.qos = qos
        self.setup = [setup] if isinstance(setup, str) else list(setup)
        self.extra = dict(extra or {})
        self.snapshot = snapshot
        self.log_dir = log_dir
        self.max_tasks = max_tasks
        self.poll_interval = float(poll_interval)
        self._config: dict[str, str] | None = None
        self._tracking: dict[str, _Tracking] = {}

    def __repr__(self) -> str:
        defaults = Slurm()
        shown = []
        for name in (
            "partition", "time", "cpus_per_task", "mem", "gpus", "array_parallelism",
            "account", "qos", "setup", "extra", "snapshot", "log_dir", "max_tasks",
            "poll_interval",
        ):
            value = getattr(self, name)
            if value != getattr(defaults, name):
                shown.append(f"{name}={value!r}")
        return f"runcache.Slurm({', '.join(shown)})"

    # -- talking to SLURM -------------------------------------------------------------------

    def _run(
        self, argv: list[str], check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
                env=env,
            )
        except FileNotFoundError:
            raise SlurmError(
                f"SLURM's {argv[0]} is not on PATH; run this on a machine of the cluster (a "
                "login node) or add SLURM's bin directory to PATH"
            ) from None
        except subprocess.TimeoutExpired:
            raise SlurmTimeout(f"{shlex.join(argv)} did not answer within 120 s") from None
        if check and proc.returncode != 0:
            raise SlurmError(
                f"{shlex.join(argv)} failed (exit code {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()}"
            )
        return proc

    def cluster_config(self) -> dict[str, str]:
        """``scontrol show config`` as a dict, read once per executor (empty if unreadable)."""
        if self._config is None:
            try:
                proc = self._run(["scontrol", "show", "config"], check=False)
                self._config = parse_config(proc.stdout) if proc.returncode == 0 else {}
            except SlurmError:
                self._config = {}
        return self._config

    # -- launch -----------------------------------------------------------------------------

    def sweep_folder(self, sweep: SweepView) -> str:
        """The absolute folder of one sweep's script, logs and snapshot."""
        base = self.log_dir if self.log_dir is not None else "runcache-slurm"
        return os.path.join(os.path.abspath(os.fspath(base)), sweep.id)

    def task_count(self, sweep: SweepView) -> int:
        n = int(sweep.queued)
        if self.max_tasks is not None:
            n = min(n, self.max_tasks)
        return max(1, n)

    def batch_script(self, sweep: SweepView, folder: str, code_dir: str | None) -> str:
        """The text of the sweep's batch script."""
        env = dict(sweep.worker_env())
        env_lines: list[str] = []
        if code_dir is not None:
            # The snapshot comes first on the import path...
            if env.get("PYTHONPATH"):
                env["PYTHONPATH"] = code_dir + os.pathsep + env["PYTHONPATH"]
            else:
                env.pop("PYTHONPATH", None)
                env_lines.append(
                    f'export PYTHONPATH={shlex.quote(code_dir)}"${{PYTHONPATH:+:$PYTHONPATH}}"'
                )
            # ...and the job's working directory must not come before it (`python -m` puts the
            # current directory first on sys.path unless PYTHONSAFEPATH is set, Python 3.11+).
            env["PYTHONSAFEPATH"] = "1"
            env["RUNCACHE_SNAPSHOT"] = code_dir
            env["RUNCACHE_SNAPSHOT_OF"] = str(project_dir())
        options = sbatch_options(self, f"runcache-{sweep.id}", folder, os.getcwd())
        header = (
            f"runcache sweep {sweep.id}: every array task runs one worker, which computes items\n"
            "until the sweep is drained. Submitted with: sbatch --array=0-(N-1) <this file>"
        )
        return render_script(
            options, self.setup, env, sweep.worker_argv(), header=header, env_lines=env_lines
        )

    def launch(self, sweep: SweepView) -> None:
        folder = self.sweep_folder(sweep)
        os.makedirs(folder, exist_ok=True)
        # Marks the folder so that snapshots never copy it (nor the snapshots inside it).
        Path(folder, ".runcache-slurm-sweep").touch()
        code_dir = None
        if self.snapshot:
            code_dir = os.path.join(folder, "code")
            if not os.path.isdir(code_dir):  # a resubmission keeps the first snapshot
                take_snapshot(project_dir(), Path(code_dir), exclude=[Path(folder)])
        script = os.path.join(folder, "job.sh")
        with open(script, "w") as f:
            f.write(self.batch_script(sweep, folder, code_dir))
        os.chmod(script, 0o755)

        n = self.task_count(sweep)
        config = self.cluster_config() if n > 1 else {}
        specs = array_specs(n, max_array_size(config) if config else n, self.array_parallelism)
        tracking = self._tracking.get(sweep.id) or self._restore(sweep) or _Tracking(folder, [])
        tracking.folder = folder
        launch_no = 1 + max((s.launch for s in tracking.submissions), default=-1)
        previous = None
        offset = 0
        for spec in specs:
            argv = ["sbatch", "--parsable", f"--array={spec}"]
            if previous is not None and self.array_parallelism:
                argv.append(f"--dependency=afterany:{previous}")
            argv.append(script)
            # Each array of a split counts its tasks from 0: the offset (in the environment
            # sbatch passes on) keeps the workers' starting points spread over the items.
            env = {**os.environ, "RUNCACHE_TASK_OFFSET": str(offset)}
            offset += len(expand_task_ids(spec))
            out = self._run(argv, env=env).stdout.strip()
            job = out.splitlines()[-1].split(";", 1)[0].strip() if out else ""
            if not job.isdigit():
                raise SlurmError(f"sbatch answered {out!r}, not a job id ({shlex.join(argv)})")
            previous = job
            tracking.submissions.append(_Submission(job, len(expand_task_ids(spec)), launch_no))
            self._tracking[sweep.id] = tracking
            # Saved after each submission: a later session can see (and cancel) what runs.
            sweep.save_executor_info(
                {
                    "kind": "Slurm",
                    "log_dir": folder,
                    "script": script,
                    "job_ids": [s.job for s in tracking.submissions],
                    "tasks": [s.tasks for s in tracking.submissions],
                    "launches": [s.launch for s in tracking.submissions],
                }
            )

    def _restore(self, sweep: SweepView) -> _Tracking | None:
        """Tracking rebuilt from the sweep record (a sweep reattached in another session)."""
        try:
            info = sweep.executor_info
        except Exception:  # noqa: BLE001 - a record without executor info
            return None
        if info.get("kind") != "Slurm" or not info.get("job_ids"):
            return None
        jobs = [str(j) for j in info["job_ids"]]
        tasks = list(info.get("tasks") or [])
        if len(tasks) != len(jobs):
            tasks = [1] * len(jobs)
        launches = list(info.get("launches") or [])
        if len(launches) != len(jobs):
            launches = [0] * len(jobs)
        t = _Tracking(str(info.get("log_dir") or self.sweep_folder(sweep)), [])
        t.submissions = [
            _Submission(j, int(n), int(k)) for j, n, k in zip(jobs, tasks, launches)
        ]
        return t  # last_query is None: the first poll asks SLURM

    # -- poll -------------------------------------------------------------------------------

    def poll(self, sweep: SweepView) -> WorkerState:
        tracking = self._tracking.get(sweep.id)
        if tracking is None:
            tracking = self._restore(sweep)
            if tracking is None:
                return WorkerState(alive=0)
            self._tracking[sweep.id] = tracking
        now = _time.monotonic()
        if tracking.last_query is None or now - tracking.last_query >= self.poll_interval:
            tracking.last_query = now
            self._refresh(tracking)
        return self._state(tracking)

    def _all_tasks(self, tracking: _Tracking) -> list[tuple[str, int]]:
        return [(s.job, t) for s in tracking.submissions for t in range(s.tasks)]

    def _refresh(self, tracking: _Tracking) -> None:
        """One batched look at SLURM: squeue for every array that may still have live tasks;
        scontrol (then sacct, if the cluster keeps accounting) for tasks squeue no longer lists
        or that ended badly."""
        jobs = sorted(
            {s.job for s in tracking.submissions
             if any((s.job, t) not in tracking.ended for t in range(s.tasks))},
            key=int,
        )
        if not jobs:
            return
        try:
            proc = self._run(
                ["squeue", "-h", "-r", "-t", "all", "-j", ",".join(jobs), "-o", "%i %T"],
                check=False,
            )
        except SlurmTimeout:
            return  # the controller is busy: keep what we knew
        if proc.returncode != 0 and "invalid job id" not in proc.stderr.lower():
            return  # the controller did not answer: keep what we knew
        listed = parse_squeue(proc.stdout) if proc.returncode == 0 else {}
        todo: list[tuple[str, int]] = []
        for key in self._all_tasks(tracking):
            if key[0] not in jobs or key in tracking.ended:
                continue
            state = listed.get(key)
            tracking.states[key] = state or "UNKNOWN"
            if state is not None and state not in ALIVE_STATES | PROBLEM_STATES:
                # Ended well (COMPLETED): nothing more to know.
                tracking.ended[key] = TaskInfo(state, stdout=log_path(tracking.folder, *key))
            elif state is None or state in PROBLEM_STATES:
                todo.append(key)  # gone from squeue, or ended badly: ask for the details
        if not todo:
            return
        details: dict[tuple[str, int], TaskInfo] = {}
        try:
            for job in sorted({k[0] for k in todo}, key=int):
                p = self._run(["scontrol", "-o", "show", "job", job], check=False)
                if p.returncode == 0:
                    details.update(parse_scontrol_jobs(p.stdout))
            missing = [k for k in todo if k not in details]
            if missing and accounting_enabled(self.cluster_config()):
                ids = ",".join(sorted({k[0] for k in missing}, key=int))
                p = self._run(
                    ["sacct", "-n", "-P", "-j", ids, "-o", "JobID,State,ExitCode"], check=False
                )
                if p.returncode == 0 and not sacct_disabled(p.stdout + p.stderr):
                    for k, v in parse_sacct(p.stdout).items():
                        details.setdefault(k, v)
        except SlurmTimeout:
            return  # ask again at the next poll
        for key in todo:
            info = details.get(key)
            listed_state = listed.get(key)
            if info is None:
                if listed_state is None:
                    # Gone from the controller and no accounting: it ended, how is unknown.
                    info = TaskInfo(state="UNKNOWN")
                else:
                    info = TaskInfo(state=listed_state)
            if info.state in ALIVE_STATES:
                tracking.states[key] = info.state
                continue
            # The log path we chose, not scontrol's StdOut: scontrol shows a %% in the folder
            # name unexpanded, and sacct has no paths at all.
            info.stdout = log_path(tracking.folder, *key)
            info.stderr = ""
            tracking.states[key] = info.state
            tracking.ended[key] = info

    def _state(self, tracking: _Tracking) -> WorkerState:
        alive = 0
        problems: list[str] = []
        keys = self._all_tasks(tracking)
        for key in keys:
            info = tracking.ended.get(key)
            if info is None:
                # Listed alive, or submitted and not looked at yet (assumed pending).
                state = tracking.states.get(key)
                if state is None or state in ALIVE_STATES:
                    alive += 1
                continue
            if info.state in PROBLEM_STATES:
                problems.append(problem_line(key, info))
        # Every worker of the latest launch gave up before computing anything (the task cannot
        # be imported, the code differs from the submitter's): another array would fail the
        # same way.
        latest = max((s.launch for s in tracking.submissions), default=0)
        last = [(s.job, t) for s in tracking.submissions if s.launch == latest
                for t in range(s.tasks)]
        setup_failed = f"{WORKER_SETUP_FAILED}:0"
        fatal = bool(last) and alive == 0 and all(
            k in tracking.ended
            and tracking.ended[k].state == "FAILED"
            and tracking.ended[k].exit_code == setup_failed
            for k in last
        )
        return WorkerState(alive=alive, problems=problems, fatal=fatal)

    # -- cancel -----------------------------------------------------------------------------

    def cancel(self, sweep: SweepView) -> None:
        tracking = self._tracking.get(sweep.id) or self._restore(sweep)
        if tracking is None or not tracking.submissions:
            return
        proc = self._run(["scancel", *[s.job for s in tracking.submissions]], check=False)
        # Jobs the controller has already forgotten are not an error: they are not running.
        errors = [
            line for line in proc.stderr.splitlines()
            if line.strip() and "invalid job id" not in line.lower()
        ]
        if proc.returncode != 0 and errors:
            raise SlurmError(f"scancel failed (exit code {proc.returncode}): {' '.join(errors)}")
        tracking.last_query = None  # the next poll asks again


def problem_line(key: tuple[str, int], info: TaskInfo) -> str:
    """One human-readable line about an array task that ended badly."""
    job, task = key
    what = [info.state]
    if info.reason:
        what.append(f"reason {info.reason}")
    if info.exit_code and info.exit_code not in ("0:0",):
        what.append(f"exit code {info.exit_code}")
    logs = [p for p in (info.stdout, info.stderr) if p]
    logs = list(dict.fromkeys(logs))
    where = f"; log: {', '.join(logs)}" if logs else ""
    return f"SLURM task {job}_{task}: {', '.join(what)}{where}"
