"""The SLURM executor without a cluster: batch scripts, array splitting, snapshots, and the
parsing of squeue/scontrol/sacct answers. SLURM's commands are replaced by fakes on PATH."""

import json
import os
import shlex
import stat
import sys
import textwrap

import pytest

import runcache as rc
from runcache import _slurm
from runcache._slurm import Slurm


class FakeSweep:
    """The parts of a SweepHandle an executor uses."""

    def __init__(self, sweep_id="20260101-000000-fit-abc123", queued=8, env=None):
        self.id = sweep_id
        self.queued = queued
        self._env = {"PYTHONPATH": "/proj/src:/opt/lib with space"} if env is None else env
        self.record = {}
        self.saved = []

    def worker_argv(self, max_items=None, idle_exit=None, worker_index=None):
        argv = [sys.executable, "-m", "runcache", "worker", "--store", "/abs/st ore", "--sweep", self.id]
        if max_items is not None:
            argv += ["--max-items", str(max_items)]
        return argv

    def worker_env(self):
        return dict(self._env)

    @property
    def executor_info(self):
        return dict(self.record.get("executor") or {})

    def save_executor_info(self, info):
        self.saved.append(info)
        self.record["executor"] = {**self.executor_info, **info}


def sbatch_lines(script):
    return [line[len("#SBATCH "):] for line in script.splitlines() if line.startswith("#SBATCH ")]


# -- batch script ---------------------------------------------------------------------------


def test_script_has_options_setup_env_and_exec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ex = Slurm(
        partition="gpu",
        time="02:00:00",
        cpus_per_task=4,
        mem="16G",
        gpus=2,
        account="proj",
        qos="high",
        setup=["module load cuda/12", "source /opt/env.sh"],
        extra={"constraint": "a100", "exclusive": True, "nice": None, "mail_type": "END"},
    )
    sweep = FakeSweep()
    folder = ex.sweep_folder(sweep)
    script = ex.batch_script(sweep, folder, None)
    assert script.startswith("#!/bin/bash\n")
    opts = sbatch_lines(script)
    assert f"--job-name=runcache-{sweep.id}" in opts
    for want in (
        "--partition=gpu",
        "--time=02:00:00",
        "--cpus-per-task=4",
        "--mem=16G",
        "--gres=gpu:2",
        "--account=proj",
        "--qos=high",
        "--constraint=a100",
        "--exclusive",
        "--mail-type=END",
        f"--chdir={tmp_path}",
        f"--output={folder}/%A_%a.out",
        f"--error={folder}/%A_%a.out",
    ):
        assert want in opts, (want, opts)
    assert not any("nice" in o for o in opts)
    # #SBATCH lines come before any command, setup before the worker, exec last.
    lines = script.splitlines()
    last_sbatch = max(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    assert all(
        line.startswith("#") or not line.strip() for line in lines[: last_sbatch + 1]
    )
    i_setup = lines.index("module load cuda/12")
    i_env = next(i for i, line in enumerate(lines) if line.startswith("export PYTHONPATH="))
    i_exec = next(i for i, line in enumerate(lines) if line.startswith("exec "))
    assert last_sbatch < i_setup < i_env < i_exec == len(lines) - 1
    assert lines[i_setup + 1] == "source /opt/env.sh"
    # Environment and argv survive the shell.
    assert shlex.split(lines[i_env][len("export "):]) == [
        "PYTHONPATH=/proj/src:/opt/lib with space"
    ]
    assert shlex.split(lines[i_exec])[1:] == sweep.worker_argv()


def test_defaults_and_omitted_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ex = Slurm(time=None, mem=None, cpus_per_task=None)
    sweep = FakeSweep(env={})
    opts = sbatch_lines(ex.batch_script(sweep, ex.sweep_folder(sweep), None))
    assert not [o for o in opts if o.split("=")[0] in (
        "--partition", "--time", "--mem", "--cpus-per-task", "--gres", "--account", "--qos")]
    script = ex.batch_script(sweep, ex.sweep_folder(sweep), None)
    assert "export " not in script
    assert Slurm(time=90).time == 90
    assert "--time=90" in sbatch_lines(Slurm(time=90).batch_script(sweep, "/l", None))
    assert "--gres=gpu:a100:2" in sbatch_lines(Slurm(gpus="a100:2").batch_script(sweep, "/l", None))


def test_default_log_folder_is_absolute_and_per_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = FakeSweep()
    assert Slurm().sweep_folder(sweep) == str(tmp_path / "runcache-slurm" / sweep.id)
    assert Slurm(log_dir="logs").sweep_folder(sweep) == str(tmp_path / "logs" / sweep.id)


def test_sbatch_quoting_round_trips_through_sbatchs_rules():
    def sbatch_read(word):
        # sbatch's own reading of one #SBATCH argument: quotes, backslash escapes, # comments.
        out, quote, escape = [], None, False
        for ch in word:
            if escape:
                out.append(ch)
                escape = False
            elif ch == "\\":
                escape = True
            elif quote:
                if ch == quote:
                    quote = None
                else:
                    out.append(ch)
            elif ch in "\"'":
                quote = ch
            elif ch == "#" or ch.isspace():
                break
            else:
                out.append(ch)
        return "".join(out)

    for word in ["--output=/a/b/%A_%a.out", "--output=/with space/x#y/%A.out",
                 '--comment=say "hi"', "--comment=back\\slash", "--constraint=a100&ib"]:
        quoted = _slurm.sbatch_quote(word)
        assert sbatch_read(quoted) == word, (word, quoted)
    assert _slurm.sbatch_quote("--mem=4G") == "--mem=4G"
    with pytest.raises(ValueError, match="line break"):
        _slurm.sbatch_quote("--comment=a\nb")


def test_percent_in_the_log_folder_is_escaped():
    assert _slurm.log_pattern("/logs/100%") == "/logs/100%%/%A_%a.out"
    assert _slurm.log_path("/logs/100%", "12", 3) == "/logs/100%/12_3.out"


def test_extra_cannot_override_logs_or_array():
    with pytest.raises(ValueError, match="output is set by the executor"):
        Slurm(extra={"output": "/x"})
    with pytest.raises(ValueError, match="array is set by the executor"):
        Slurm(extra={"--array": "0-3"})


def test_bad_environment_names_are_refused():
    with pytest.raises(ValueError, match="environment variable"):
        _slurm.render_script([], [], {"A B": "x"}, ["true"])


def test_array_specs():
    assert _slurm.array_specs(8, 1001) == ["0-7"]
    assert _slurm.array_specs(8, 1001, 3) == ["0-7%3"]
    assert _slurm.array_specs(0, 1001) == ["0-0"]
    assert _slurm.array_specs(1001, 1001) == ["0-1000"]
    assert _slurm.array_specs(1002, 1001) == ["0-1000", "0-0"]
    assert _slurm.array_specs(2500, 1000, 16) == ["0-999%16", "0-999%16", "0-499%16"]


# -- launch with fake SLURM commands ----------------------------------------------------------


def fake_slurm(tmp_path, monkeypatch, max_array_size=1001, accounting="accounting_storage/none",
               squeue="", scontrol_job="", sacct="", sbatch_fails=False, scancel_error=""):
    """Puts fake sbatch/scontrol/squeue/sacct/scancel on PATH. Each call is appended (as a JSON
    argv) to calls.jsonl; sbatch answers job ids 100, 101, ..."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.jsonl"
    counter = tmp_path / "next_job"
    counter.write_text("100")
    (tmp_path / "squeue.out").write_text(squeue)
    (tmp_path / "scontrol_job.out").write_text(scontrol_job)
    (tmp_path / "sacct.out").write_text(sacct)
    (tmp_path / "config.out").write_text(textwrap.dedent(f"""\
        Configuration data as of 2026-01-01T00:00:00
        AccountingStorageType   = {accounting}
        MaxArraySize            = {max_array_size}
        MinJobAge               = 300 sec
        SLURM_VERSION           = 22.05.8
        """))
    py = sys.executable
    prog = textwrap.dedent(f"""\
        #!{py}
        import json, os, sys
        d = {str(tmp_path)!r}
        name = os.path.basename(sys.argv[0])
        with open(os.path.join(d, "calls.jsonl"), "a") as f:
            f.write(json.dumps([name] + sys.argv[1:]) + "\\n")
        def show(fn):
            sys.stdout.write(open(os.path.join(d, fn)).read())
        if name == "sbatch":
            with open(os.path.join(d, "offsets"), "a") as f:
                f.write(os.environ.get("RUNCACHE_TASK_OFFSET", "-") + "\\n")
            if {sbatch_fails!r}:
                sys.stderr.write("sbatch: error: Batch job submission failed: Invalid partition name specified\\n")
                sys.exit(1)
            n = int(open(os.path.join(d, "next_job")).read())
            open(os.path.join(d, "next_job"), "w").write(str(n + 1))
            print(n)
        elif name == "scontrol" and sys.argv[1:3] == ["show", "config"]:
            show("config.out")
        elif name == "scontrol":
            show("scontrol_job.out")
        elif name == "squeue":
            show("squeue.out")
        elif name == "sacct":
            show("sacct.out")
        elif name == "scancel" and {scancel_error!r}:
            sys.stderr.write({scancel_error!r} + "\\n")
            sys.exit(1)
        """)
    for name in ("sbatch", "scontrol", "squeue", "sacct", "scancel"):
        p = bin_dir / name
        p.write_text(prog)
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def read_calls():
        if not calls.exists():
            return []
        return [json.loads(line) for line in calls.read_text().splitlines()]

    return read_calls


def test_launch_submits_one_array_and_records_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = fake_slurm(tmp_path, monkeypatch)
    sweep = FakeSweep(queued=8)
    ex = Slurm(array_parallelism=3)
    ex.launch(sweep)
    sbatch = [c for c in calls() if c[0] == "sbatch"]
    folder = str(tmp_path / "runcache-slurm" / sweep.id)
    assert sbatch == [["sbatch", "--parsable", "--array=0-7%3", f"{folder}/job.sh"]]
    assert os.access(f"{folder}/job.sh", os.X_OK)
    info = sweep.executor_info
    assert info["kind"] == "Slurm" and info["job_ids"] == ["100"] and info["tasks"] == [8]
    assert info["log_dir"] == folder


def test_max_tasks_caps_the_array(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = fake_slurm(tmp_path, monkeypatch)
    Slurm(max_tasks=3).launch(FakeSweep(queued=50))
    Slurm(max_tasks=30).launch(FakeSweep(sweep_id="s2", queued=5))
    Slurm().launch(FakeSweep(sweep_id="s3", queued=0))
    arrays = [c[2] for c in calls() if c[0] == "sbatch"]
    assert arrays == ["--array=0-2", "--array=0-4", "--array=0-0"]


def test_launch_splits_above_max_array_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = fake_slurm(tmp_path, monkeypatch, max_array_size=4)
    sweep = FakeSweep(queued=10)
    Slurm().launch(sweep)
    sbatch = [c[1:-1] for c in calls() if c[0] == "sbatch"]
    assert sbatch == [["--parsable", "--array=0-3"]] * 2 + [["--parsable", "--array=0-1"]]
    assert sweep.executor_info["job_ids"] == ["100", "101", "102"]
    assert sweep.executor_info["tasks"] == [4, 4, 2]
    # Each array's workers are told how many tasks came before it (their walks start apart).
    assert (tmp_path / "offsets").read_text().split() == ["0", "4", "8"]
    # config read once per executor
    assert sum(1 for c in calls() if c[:3] == ["scontrol", "show", "config"]) == 1


def test_split_with_parallelism_chains_the_arrays(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = fake_slurm(tmp_path, monkeypatch, max_array_size=4)
    Slurm(array_parallelism=2).launch(FakeSweep(queued=9))
    sbatch = [c[1:-1] for c in calls() if c[0] == "sbatch"]
    assert sbatch == [
        ["--parsable", "--array=0-3%2"],
        ["--parsable", "--array=0-3%2", "--dependency=afterany:100"],
        ["--parsable", "--array=0-0%2", "--dependency=afterany:101"],
    ]


def test_sbatch_missing_or_failing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    with pytest.raises(_slurm.SlurmError, match="SLURM's sbatch is not on PATH"):
        Slurm().launch(FakeSweep(queued=1))
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    fake_slurm(tmp_path, monkeypatch, sbatch_fails=True)
    with pytest.raises(_slurm.SlurmError, match="Invalid partition name"):
        Slurm(partition="nope").launch(FakeSweep(sweep_id="s2", queued=2))


def test_resubmission_adds_job_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake_slurm(tmp_path, monkeypatch)
    sweep = FakeSweep(queued=2)
    ex = Slurm()
    ex.launch(sweep)
    ex.launch(sweep)
    assert sweep.executor_info["job_ids"] == ["100", "101"]


# -- poll ------------------------------------------------------------------------------------


def test_poll_counts_alive_and_reports_failures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    squeue = "100_0 RUNNING\n100_1 PENDING\n100_2 COMPLETED\n100_3 FAILED\n"
    scontrol = (
        "JobId=104 ArrayJobId=100 ArrayTaskId=3 JobName=runcache-x JobState=FAILED "
        "Reason=NonZeroExitCode Dependency=(null) ExitCode=1:0 RunTime=00:00:01 "
        "StdErr=/logs/with space/100_3.out StdIn=/dev/null StdOut=/logs/with space/100_3.out\n"
        "JobId=103 ArrayJobId=100 ArrayTaskId=2 JobState=COMPLETED Reason=None ExitCode=0:0 "
        "StdOut=/l/100_2.out\n"
    )
    calls = fake_slurm(tmp_path, monkeypatch, squeue=squeue, scontrol_job=scontrol)
    sweep = FakeSweep(queued=4)
    ex = Slurm(poll_interval=3600)
    ex.launch(sweep)
    st = ex.poll(sweep)
    assert st.alive == 2
    assert st.problems == [
        "SLURM task 100_3: FAILED, reason NonZeroExitCode, exit code 1:0; "
        f"log: {ex.sweep_folder(sweep)}/100_3.out"
    ]
    # Rate limited: a second poll within poll_interval asks nothing.
    n = len(calls())
    assert ex.poll(sweep) == st
    assert len(calls()) == n
    queries = [c for c in calls() if c[0] in ("squeue", "scontrol", "sacct") and c[1] != "show"]
    assert queries[0] == ["squeue", "-h", "-r", "-t", "all", "-j", "100", "-o", "%i %T"]
    assert not [c for c in calls() if c[0] == "sacct"]  # accounting is off


def test_poll_falls_back_to_sacct_when_accounting_is_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sacct = (
        "100_0|COMPLETED|0:0\n100_0.batch|COMPLETED|0:0\n"
        "100_1|CANCELLED by 0|0:15\n100_1.batch|CANCELLED|0:15\n"
        "100_2|TIMEOUT|0:0\n"
    )
    calls = fake_slurm(tmp_path, monkeypatch, accounting="accounting_storage/slurmdbd",
                       sacct=sacct)
    sweep = FakeSweep(queued=3)
    ex = Slurm(poll_interval=0)
    ex.launch(sweep)
    st = ex.poll(sweep)
    folder = ex.sweep_folder(sweep)
    assert st.alive == 0
    assert st.problems == [
        f"SLURM task 100_1: CANCELLED, exit code 0:15; log: {folder}/100_1.out",
        f"SLURM task 100_2: TIMEOUT; log: {folder}/100_2.out",
    ]
    assert ["sacct", "-n", "-P", "-j", "100", "-o", "JobID,State,ExitCode"] in calls()
    # Ended tasks are not asked about again.
    n = len(calls())
    ex.poll(sweep)
    assert len(calls()) == n


def test_poll_without_any_record_of_the_tasks(tmp_path, monkeypatch):
    # Purged from the controller, no accounting: ended, how is unknown, not a problem.
    monkeypatch.chdir(tmp_path)
    fake_slurm(tmp_path, monkeypatch, accounting="accounting_storage/none",
               sacct="Slurm accounting storage is disabled\n")
    sweep = FakeSweep(queued=2)
    ex = Slurm(poll_interval=0)
    ex.launch(sweep)
    assert ex.poll(sweep).alive == 0
    assert ex.poll(sweep).problems == []


def test_poll_in_a_later_session_uses_the_sweep_record(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = fake_slurm(tmp_path, monkeypatch, squeue="100_0 RUNNING\n100_1 RUNNING\n101_0 PENDING\n")
    sweep = FakeSweep(queued=3)
    sweep.record["executor"] = {"kind": "Slurm", "job_ids": ["100", "101"], "tasks": [2, 1],
                                "log_dir": "/x"}
    ex = Slurm()
    assert ex.poll(sweep).alive == 3
    assert ["squeue", "-h", "-r", "-t", "all", "-j", "100,101", "-o", "%i %T"] in calls()
    ex.cancel(sweep)
    assert ["scancel", "100", "101"] in calls()
    assert Slurm().poll(FakeSweep(sweep_id="other")).alive == 0


def test_parse_squeue():
    text = "26_[2-5%2] PENDING\n26_1 RUNNING\n26_0 COMPLETED\n27_3 CANCELLED\nbad\n"
    assert _slurm.parse_squeue(text) == {
        ("26", 2): "PENDING", ("26", 3): "PENDING", ("26", 4): "PENDING",
        ("26", 5): "PENDING", ("26", 1): "RUNNING", ("26", 0): "COMPLETED",
        ("27", 3): "CANCELLED",
    }


def test_expand_task_ids():
    assert _slurm.expand_task_ids("0-5%2") == [0, 1, 2, 3, 4, 5]
    assert _slurm.expand_task_ids("[1,3-4]") == [1, 3, 4]
    assert _slurm.expand_task_ids("0-10:5") == [0, 5, 10]
    assert _slurm.expand_task_ids("7") == [7]


def test_parse_scontrol_jobs_real_lines():
    # Lines as printed by Slurm 22.05 (`scontrol -o show job 23`), shortened.
    text = (
        "JobId=23 ArrayJobId=23 ArrayTaskId=1 JobName=t.sh UserId=root(0) GroupId=root(0) "
        "MCS_label=N/A Priority=4294901757 Nice=0 Account=(null) QOS=(null) "
        "JobState=CANCELLED Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 "
        "Reboot=0 ExitCode=3:0 RunTime=00:00:04 TimeLimit=UNLIMITED TimeMin=N/A "
        "TRES=cpu=1,mem=4G,node=1,billing=1 Command=/tmp/sl/t.sh WorkDir=/tmp/sl "
        "StdErr=/tmp/sl/x_23_1.out StdIn=/dev/null StdOut=/tmp/sl/x_23_1.out Power=\n"
        "JobId=26 ArrayJobId=26 ArrayTaskId=2-5%2 ArrayTaskThrottle=2 JobName=wrap "
        "JobState=PENDING Reason=JobArrayTaskLimit ExitCode=0:0 StdOut=/tmp/sl/y_%A_%a.out\n"
    )
    got = _slurm.parse_scontrol_jobs(text)
    assert got[("23", 1)] == _slurm.TaskInfo(
        "CANCELLED", "", "3:0", "/tmp/sl/x_23_1.out", "/tmp/sl/x_23_1.out"
    )
    assert sorted(k for k in got if k[0] == "26") == [("26", t) for t in range(2, 6)]
    assert got[("26", 4)].state == "PENDING" and got[("26", 4)].reason == "JobArrayTaskLimit"
    rec = _slurm.parse_scontrol_record("JobId=1 TRES=cpu=1,mem=4G WorkDir=/a b/c StdOut=/x")
    assert rec["TRES"] == "cpu=1,mem=4G" and rec["WorkDir"] == "/a b/c"


def test_parse_sacct_and_disabled_accounting():
    assert _slurm.sacct_disabled("Slurm accounting storage is disabled\n")
    assert not _slurm.sacct_disabled("100_0|COMPLETED|0:0\n")
    got = _slurm.parse_sacct("100_[3-4]|PENDING|0:0\n100_0|OUT_OF_MEMORY|0:125\n100_0.extern|COMPLETED|0:0\n")
    assert got == {
        ("100", 3): _slurm.TaskInfo("PENDING", exit_code="0:0"),
        ("100", 4): _slurm.TaskInfo("PENDING", exit_code="0:0"),
        ("100", 0): _slurm.TaskInfo("OUT_OF_MEMORY", exit_code="0:125"),
    }


def test_parse_config():
    cfg = _slurm.parse_config(
        "Configuration data as of 2026-11-21T22:14:17\nAccountingStorageType   = "
        "accounting_storage/none\nMaxArraySize            = 4001\nSchedulerParameters     = "
        "batch_sched_delay=0\n"
    )
    assert _slurm.max_array_size(cfg) == 4001
    assert not _slurm.accounting_enabled(cfg)
    assert _slurm.accounting_enabled({"AccountingStorageType": "accounting_storage/slurmdbd"})
    assert _slurm.max_array_size({}) == _slurm.DEFAULT_MAX_ARRAY_SIZE
    assert cfg["SchedulerParameters"] == "batch_sched_delay=0"


# -- snapshot --------------------------------------------------------------------------------


def make_project(root):
    files = {
        "main.py": "print('hi')\n",
        "pkg/__init__.py": "",
        "pkg/model.py": "X = 1\n",
        "conf/params.yaml": "lr: 0.1\n",
        "README.md": "# p\n",
        "data/big.csv": "x" * ((1 << 20) + 1),
        "data/small.csv": "a,b\n",
        "data/weights.npy": "binary",
        ".git/config": "[core]\n",
        ".venv/lib/x.py": "",
        "venv/y.py": "",
        "pkg/__pycache__/model.cpython-311.pyc": "",
        ".runcache/z.py": "",
        "otherenv/pyvenv.cfg": "home = /usr\n",
        "otherenv/lib/w.py": "",
        "store/RUNCACHE-STORE.json": "{}",
        "store/entries/a.json": "{}",
        "runcache-slurm/old/code/main.py": "",
        "logs/sweep1/.runcache-slurm-sweep": "",
        "logs/sweep1/code/main.py": "",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_snapshot_copies_code_and_small_text_only(tmp_path):
    src = tmp_path / "proj"
    make_project(src)
    (src / "logs2").mkdir()
    (src / "logs2" / "keep_out.py").write_text("")
    got = sorted(str(p) for p in _slurm.snapshot_files(src, exclude=[src / "logs2"]))
    assert got == sorted([
        "main.py", "pkg/__init__.py", "pkg/model.py", "conf/params.yaml", "README.md",
        "data/small.csv",
    ])
    dest = tmp_path / "copy"
    assert _slurm.take_snapshot(src, dest) == 7  # logs2/keep_out.py is not excluded here
    assert (dest / "pkg" / "model.py").read_text() == "X = 1\n"


def test_snapshot_refuses_huge_trees(tmp_path, monkeypatch):
    src = tmp_path / "proj"
    make_project(src)
    monkeypatch.setattr(_slurm, "SNAPSHOT_MAX_FILES", 2)
    with pytest.raises(ValueError, match="snapshot=True would copy more than"):
        _slurm.snapshot_files(src)


def test_snapshot_launch_puts_the_copy_first(tmp_path, monkeypatch):
    src = tmp_path / "proj"
    make_project(src)
    monkeypatch.chdir(src)
    monkeypatch.setattr(_slurm, "project_dir", lambda: src)
    fake_slurm(tmp_path, monkeypatch)
    sweep = FakeSweep(queued=2)
    ex = Slurm(snapshot=True)
    ex.launch(sweep)
    folder = tmp_path / "proj" / "runcache-slurm" / sweep.id
    code = folder / "code"
    assert (code / "pkg" / "model.py").exists()
    assert not (code / "runcache-slurm").exists()
    script = (folder / "job.sh").read_text()
    exports = dict(
        shlex.split(line[len("export "):])[0].split("=", 1)
        for line in script.splitlines() if line.startswith("export ")
    )
    assert exports["PYTHONPATH"].split(os.pathsep)[0] == str(code)
    assert exports["PYTHONPATH"].endswith("/proj/src:/opt/lib with space")
    assert exports["PYTHONSAFEPATH"] == "1"
    assert exports["RUNCACHE_SNAPSHOT"] == str(code)
    # Edits after submission do not reach the copy; a resubmission keeps the first copy.
    (src / "pkg" / "model.py").write_text("X = 2\n")
    ex.launch(sweep)
    assert (code / "pkg" / "model.py").read_text() == "X = 1\n"
    # A later sweep from the same project does not copy the earlier sweep's folder.
    sweep2 = FakeSweep(sweep_id="second", queued=1)
    ex.launch(sweep2)
    assert sorted(os.listdir(src / "runcache-slurm" / "second" / "code")) == [
        "README.md", "conf", "data", "main.py", "pkg"
    ]


def test_snapshot_without_pythonpath_from_the_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = FakeSweep(env={})
    script = Slurm().batch_script(sweep, "/l", "/l/code")
    assert 'export PYTHONPATH=/l/code"${PYTHONPATH:+:$PYTHONPATH}"' in script


def test_project_dir_is_the_main_scripts_folder(tmp_path, monkeypatch):
    main = sys.modules["__main__"]
    script = tmp_path / "run.py"
    script.write_text("")
    monkeypatch.setattr(main, "__file__", str(script), raising=False)
    assert _slurm.project_dir() == tmp_path.resolve()
    monkeypatch.delattr(main, "__file__", raising=False)
    monkeypatch.chdir(tmp_path / "..")
    assert _slurm.project_dir() == (tmp_path / "..").resolve()


def test_repr_shows_what_differs_from_the_defaults():
    assert repr(Slurm()) == "runcache.Slurm()"
    assert repr(Slurm(partition="gpu", gpus=1)) == "runcache.Slurm(partition='gpu', gpus=1)"


def test_worker_runs_the_snapshot_copy_of_the_main_script(tmp_path, monkeypatch):
    from runcache import _worker

    proj, copy = tmp_path / "proj", tmp_path / "copy"
    (proj / "sub").mkdir(parents=True)
    (copy / "sub").mkdir(parents=True)
    (proj / "sub" / "run.py").write_text("")
    (copy / "sub" / "run.py").write_text("")
    (tmp_path / "elsewhere.py").write_text("")
    script = str(proj / "sub" / "run.py")
    assert _worker._snapshot_copy(script) == script  # no snapshot
    monkeypatch.setenv("RUNCACHE_SNAPSHOT", str(copy))
    monkeypatch.setenv("RUNCACHE_SNAPSHOT_OF", str(proj))
    assert _worker._snapshot_copy(script) == str(copy / "sub" / "run.py")
    outside = str(tmp_path / "elsewhere.py")
    assert _worker._snapshot_copy(outside) == outside  # not under the copied folder
    (copy / "sub" / "run.py").unlink()
    assert _worker._snapshot_copy(script) == script  # not copied (e.g. too large)


def test_cancel_ignores_forgotten_jobs_but_reports_other_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake_slurm(tmp_path, monkeypatch,
               scancel_error="scancel: error: Kill job error on job id 100: Invalid job id specified")
    sweep = FakeSweep(queued=2)
    ex = Slurm()
    ex.launch(sweep)
    ex.cancel(sweep)  # no error
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fakebin").rename(tmp_path / "fakebin-old")
    fake_slurm(tmp_path, monkeypatch,
               scancel_error="scancel: error: Kill job error on job id 100: Access/permission denied")
    with pytest.raises(_slurm.SlurmError, match="permission denied"):
        ex.cancel(sweep)


def test_fatal_when_every_worker_failed_to_set_up(tmp_path, monkeypatch):
    # Exit code 2 (WORKER_SETUP_FAILED) from every task: resubmitting would not help.
    monkeypatch.chdir(tmp_path)
    scontrol = "".join(
        f"JobId={200 + t} ArrayJobId=100 ArrayTaskId={t} JobState=FAILED "
        f"Reason=NonZeroExitCode ExitCode={code}\n"
        for t, code in enumerate(["2:0", "2:0"])
    )
    fake_slurm(tmp_path, monkeypatch, squeue="100_0 FAILED\n100_1 FAILED\n",
               scontrol_job=scontrol)
    sweep = FakeSweep(queued=2)
    ex = Slurm(poll_interval=0)
    ex.launch(sweep)
    st = ex.poll(sweep)
    assert st.alive == 0 and st.fatal and len(st.problems) == 2
    # One task that failed otherwise: not fatal.
    (tmp_path / "scontrol_job.out").write_text(scontrol.replace("ExitCode=2:0", "ExitCode=1:0", 1))
    ex2 = Slurm(poll_interval=0)
    sweep2 = FakeSweep(sweep_id="s2", queued=2)
    ex2.launch(sweep2)
    (tmp_path / "squeue.out").write_text("101_0 FAILED\n101_1 FAILED\n")
    (tmp_path / "scontrol_job.out").write_text(
        scontrol.replace("ArrayJobId=100", "ArrayJobId=101").replace("ExitCode=2:0", "ExitCode=1:0", 1)
    )
    st2 = ex2.poll(sweep2)
    assert st2.alive == 0 and not st2.fatal


def test_only_local_workers_stop_when_the_waiting_caller_is_interrupted():
    # Local workers live with the caller; cluster jobs and hand-started workers outlive it.
    assert rc.Local().stop_on_interrupt
    assert not Slurm().stop_on_interrupt
    assert not rc.Manual().stop_on_interrupt
