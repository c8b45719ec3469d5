"""Tasks whose entries the web UI tests look at (importable by sweep workers)."""

import os
import struct
import time
import zlib

import runcache as rc


def tiny_png() -> bytes:
    """A valid 2x2 red PNG."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * 2 for _ in range(2))
    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@rc.task(version="1", name="ui.plot")
def plot(x, label="loss"):
    with open(rc.artifact_path("plot.png"), "wb") as f:
        f.write(tiny_png())
    with open(rc.artifact_path("notes.txt"), "w") as f:
        f.write(f"notes for {label} {x}\n")
    rc.set_metadata("rows", 10 * x)
    return [x] * 3


@rc.task(version="1", name="ui.broken")
def broken(x):
    raise ValueError(f"item {x} is broken beyond repair")


@rc.task(version="1", name="<img src=x onerror=window.pwned=1>hostile")
def hostile(x):
    raise RuntimeError("<script>window.pwned=2</script> in a message")


@rc.task(version="1", name="ui.pace")
def pace(x, gate):
    """Finishes only once the test creates `<gate>/go-<x>` (so a test controls the pace)."""
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(gate, f"go-{x}")):
        if time.time() > deadline:
            raise RuntimeError("the test never let this item go")
        time.sleep(0.05)
    print(f"paced {x}")
    return x
