"""Where a Python hit's instructions go: runs N hits of a two-int task under callgrind (twice,
with a different N, so start-up cancels out) and prints the user-space instructions per hit of
each native piece. Instruction counts are repeatable whatever else the machine does; they leave
out the kernel (the manifest's stat), which `scripts/profile perf-hit` shows in time.

    python bench/python/profile_hit.py [N]         # scripts/profile hit [N]
    python bench/python/profile_hit.py --loop N    # (internal) the measured loop
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

#: (label, a substring of callgrind's function name); inclusive counts, so pieces nest.
PIECES = [
    ("decorated call, whole", None),
    ("  _core.HitPath.__call__ (native)", "HitPath::__pymethod___call__"),
    ("    bind + canonical encoding", "HitPath::encode"),
    ("    BLAKE3 of the key bytes", "key_of_prefixed"),
    ("    engine Task::read_for_hit (without the GIL)", "Task::read_for_hit"),
    ("      Store::lookup (fingerprint + parsed cache)", "engine::store::Store::lookup"),
    ("        manifest fingerprint (path + stat, user side)", "manifest_fingerprint"),
    ("    engine Task::try_hit_read (with the GIL)", "Task::try_hit_read"),
    ("      judge + decode (inline read, verify, unpickle)", "Task::judge"),
    ("        pickle.loads", "_pickle_loads"),
    ("      usage note (note_use)", "Store::note_use"),
]


def loop(n: int) -> None:
    import runcache as rc

    folder = tempfile.mkdtemp(prefix="runcache-profile-")

    @rc.task(name="profile.add", store=os.path.join(folder, "store"))
    def add(x, y):
        return x + y

    add(1, 2)
    for _ in range(n):
        add(1, 2)


def callgrind(n: int, out: str) -> str:
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
         __file__, "--loop", str(n)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", out],
        check=True, capture_output=True, text=True,
    ).stdout


def counts(report: str) -> dict[str | None, int]:
    found: dict[str | None, int] = {}
    for line in report.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*)", line)
        if not m:
            continue
        ir, name = int(m.group(1).replace(",", "")), m.group(2)
        if "PROGRAM TOTALS" in name:
            found[None] = ir
        for _, pattern in PIECES:
            # The first (largest) line of a function is its inclusive count.
            if pattern and pattern in name and " => " not in line and pattern not in found:
                found[pattern] = ir
    return found


def main() -> None:
    if sys.argv[1:2] == ["--loop"]:
        loop(int(sys.argv[2]))
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    base = 1_000
    with tempfile.TemporaryDirectory() as tmp:
        small = counts(callgrind(base, os.path.join(tmp, "small.out")))
        large = counts(callgrind(base + n, os.path.join(tmp, "large.out")))
    print(f"user-space instructions per Python hit (callgrind, {n:,} hits; kernel time not counted)")
    for label, pattern in PIECES:
        a, b = small.get(pattern, 0), large.get(pattern, 0)
        print(f"  {label:<58} {(b - a) / n:>9,.0f}")


if __name__ == "__main__":
    main()
