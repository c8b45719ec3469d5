"""Python value hashing: the canonical typed encoding behind `runcache._core.compute_key`.

The rules tested here are specified in docs/key-format.md ("Python values").
"""

import dataclasses
import datetime
import enum
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time
import zoneinfo
from collections import OrderedDict, namedtuple

import numpy as np
import pandas as pd
import pydantic
import pytest

from runcache import _core


def key(**args):
    return _core.compute_key("tests.hashing", "1", args)


def digest(v):
    return _core.value_digest(v)


def doc(v):
    return json.loads(_core.key_document("tests.hashing", "1", {"v": v}))["args"]["v"]


# ------------------------------------------------------------------------------------------
# Fixtures of every supported type


class Color(enum.Enum):
    RED = "red"
    BLUE = 2


class Level(enum.IntEnum):
    LOW = 1


@dataclasses.dataclass
class Config:
    lr: float
    layers: tuple
    name: str = "net"


@dataclasses.dataclass
class ConfigReordered:  # same fields as Config, declared in another order
    name: str
    layers: tuple
    lr: float


@dataclasses.dataclass
class OtherConfig:
    lr: float
    layers: tuple
    name: str = "net"


class Model(pydantic.BaseModel):
    alpha: float
    tags: list[str] = []


class Keyed:
    def __init__(self, ident, noise):
        self.ident = ident
        self.noise = noise

    def __runcache_key__(self):
        return {"ident": self.ident}


Point = namedtuple("Point", ["x", "y"])


def supported_values():
    return {
        "none": None,
        "bool": True,
        "int": 42,
        "negative int": -7,
        "i128 int": 2**100,
        "big int": 2**300,
        "float": 1.25,
        "nan": float("nan"),
        "complex": 1 + 2j,
        "str": "héllo",
        "bytes": b"\x00\x01",
        "bytearray": bytearray(b"\x00\x02"),
        "memoryview": memoryview(b"abc"),
        "tuple": (1, "a"),
        "list": [1, "a"],
        "dict": {"a": 1, 2: "b"},
        "ordered dict": OrderedDict(a=1),
        "set": {"x", "y"},
        "frozenset": frozenset({1, 2}),
        "namedtuple": Point(1, 2),
        "array": np.arange(6, dtype=np.float32).reshape(2, 3),
        "fortran array": np.asfortranarray(np.arange(6).reshape(2, 3)),
        "object array": np.array([1, "a", None], dtype=object),
        "structured array": np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),
        "datetime64 array": np.array(["2024-01-01"], dtype="M8[ns]"),
        "empty array": np.zeros((0, 3)),
        "0-d array": np.array(3.0),
        "numpy int": np.int64(3),
        "numpy float": np.float32(0.5),
        "numpy bool": np.bool_(True),
        "numpy str": np.str_("s"),
        "numpy datetime": np.datetime64("2024-01-01"),
        "dataframe": pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}),
        "series": pd.Series([1.0, 2.0], name="s"),
        "index": pd.Index([3, 4], name="i"),
        "multiindex": pd.MultiIndex.from_tuples([(1, "a"), (2, "b")]),
        "timestamp": pd.Timestamp("2024-01-01 12:00", tz="Europe/Paris"),
        "timedelta": pd.Timedelta("1s"),
        "nat": pd.NaT,
        "dataclass": Config(0.1, (64, 64)),
        "pydantic": Model(alpha=0.5, tags=["a"]),
        "enum": Color.RED,
        "intenum": Level.LOW,
        "path": pathlib.Path("/data/x.csv"),
        "pure windows path": pathlib.PureWindowsPath("C:/x"),
        "datetime": datetime.datetime(2024, 1, 2, 3, 4, 5, 6),
        "aware datetime": datetime.datetime(2024, 1, 2, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
        "date": datetime.date(2024, 1, 2),
        "time": datetime.time(3, 4, 5),
        "timedelta (stdlib)": datetime.timedelta(days=1, seconds=2),
        "__runcache_key__": Keyed(1, noise=object()),
        "nested": {"X": {"train": [np.zeros(3), (1, 2)], "cfg": Config(1.0, ())}},
    }


@pytest.mark.parametrize("name", list(supported_values()))
def test_every_supported_type_hashes(name):
    v = supported_values()[name]
    again = supported_values()[name]
    d = digest(v)
    assert len(d) == 64
    assert d == digest(again), "equal values built twice must hash alike"
    enc = _core.encode_value(v)
    assert isinstance(enc, bytes) and enc
    json.dumps(doc(v))  # the document renders
    assert len(key(v=v)) == 64


def test_supported_types_are_pairwise_distinct():
    values = supported_values()
    seen = {}
    for name, v in values.items():
        d = digest(v)
        assert d not in seen, f"{name} collides with {seen.get(d)}"
        seen[d] = name


# ------------------------------------------------------------------------------------------
# Distinctions (DESIGN §10) and documented equalities


def test_concatenation_is_unambiguous():
    assert digest(("1", "23")) != digest(("12", "3"))
    assert digest([[1], [2]]) != digest([[1, 2]])
    assert key(a="1", b="23") != key(a="12", b="3")


def test_array_shape_and_dtype_are_keyed():
    assert digest(np.zeros((2, 3))) != digest(np.zeros((3, 2)))
    assert digest(np.zeros(6)) != digest(np.zeros((2, 3)))
    a = np.arange(6, dtype=np.float64)
    assert digest(a) != digest(a.astype(np.float32))
    assert digest(a) != digest(a.astype(">f8")), "byte order is part of the dtype"
    assert digest(np.zeros(3, "M8[ns]")) != digest(np.zeros(3, "M8[us]"))


def test_array_content_is_c_order_whatever_the_layout():
    c = np.arange(12, dtype=np.int32).reshape(3, 4)
    f = np.asfortranarray(c)
    assert not f.flags.c_contiguous
    assert digest(c) == digest(f), "same logical array in Fortran order"
    big = np.arange(100, dtype=np.float64)
    view = big[::3]
    assert not view.flags.c_contiguous
    assert digest(view) == digest(view.copy())
    assert digest(c.T) == digest(np.ascontiguousarray(c.T))
    assert digest(c.T) != digest(c)


def test_large_non_contiguous_arrays_are_hashed_in_slabs():
    # Above 32 MiB, non-contiguous arrays are copied and hashed slab by slab along the first
    # axis; the key must be that of the whole C-order copy (uneven last slab included).
    c = np.arange(3001 * 2048, dtype=np.float64).reshape(3001, 2048)  # 47 MiB
    f = np.asfortranarray(c)
    assert digest(f) == digest(c)
    v = c[:, 1:]
    assert not v.flags.c_contiguous
    assert digest(v) == digest(np.ascontiguousarray(v))
    assert digest(v) != digest(c[:, :-1])


def test_hashing_a_large_non_contiguous_array_copies_a_bounded_amount():
    # A 200 MiB strided view is hashed without a whole C-order copy: the peak of numpy's
    # allocations (tracked by tracemalloc) stays around one slab, whatever the layout, including
    # one row larger than a slab and a leading axis of length 1. Each key is its copy's key.
    base = np.ones((1600, 32768), dtype=np.float64)  # 400 MiB
    base[::7, ::5] = 3.0
    views = {
        "every other column": base[:, ::2],  # 200 MiB, rows of 128 KiB
        "transposed": base[:, ::2].T,  # rows are strided columns
        "one huge row": base.reshape(1, -1)[:, ::2],  # a single 200 MiB row
        "rows above a slab": base.reshape(8, -1)[:, ::2],  # 8 rows of 25 MiB
    }
    for name, v in views.items():
        assert not v.flags.c_contiguous, name
        assert v.nbytes == 200 << 20, name
        assert_hashed_in_bounded_memory(name, v, np.ascontiguousarray(v))


def test_hashing_a_large_non_contiguous_memoryview_copies_a_bounded_amount():
    # Strided memoryviews above two slabs are hashed through a numpy view, slab by slab, with
    # the key of their C-order bytes (what `tobytes()` would give) as before.
    raw = bytearray(400 << 20)
    raw[::4099] = b"\x07" * len(raw[::4099])
    base = np.frombuffer(raw, dtype=np.float64).reshape(1600, 32768)
    views = {
        "bytes, every other one": (memoryview(raw)[::2], memoryview(raw)[::2].tobytes()),
        "2-d float64, every other column": (
            memoryview(base[:, ::2]),
            memoryview(np.ascontiguousarray(base[:, ::2])),
        ),
    }
    for name, (v, contiguous) in views.items():
        assert not v.c_contiguous and v.nbytes == 200 << 20, name
        assert_hashed_in_bounded_memory(name, v, contiguous)


def assert_hashed_in_bounded_memory(name, view, contiguous):
    """Hashing the 200 MiB ``view`` traces under 48 MiB and keys it as its contiguous copy."""
    import tracemalloc

    tracemalloc.start()
    try:
        d = digest(view)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 48 << 20, f"{name}: peak {peak >> 20} MiB while hashing"
    assert d == digest(contiguous), name


def test_array_content_changes_the_key():
    a = np.zeros(1000)
    before = digest(a)
    a[500] = 1.0
    assert digest(a) != before


def test_object_arrays_are_element_wise():
    a = np.array([{"k": 1}, (1, 2)], dtype=object)
    b = np.array([{"k": 1}, (1, 2)], dtype=object)
    assert digest(a) == digest(b)
    b[0] = {"k": 2}
    assert digest(a) != digest(b)


def test_tuple_and_list_differ():
    assert digest((1, 2)) != digest([1, 2])
    assert digest(()) != digest([])


def test_dict_order_does_not_matter():
    assert key(d={"a": 1, "b": 2}) == key(d={"b": 2, "a": 1})
    assert key(a=1, b=2) == _core.compute_key("tests.hashing", "1", {"b": 2, "a": 1})
    assert digest(OrderedDict(a=1, b=2)) == digest({"b": 2, "a": 1})


def test_sets_are_unordered_and_frozenset_equals_set():
    assert digest({"b", "a", "c"}) == digest({"c", "a", "b"})
    assert digest({1, 2}) == digest(frozenset({2, 1}))
    assert digest({1, 2}) != digest([1, 2])
    assert digest({1, 2}) != digest((1, 2))


def test_negative_zero_differs_from_zero():
    # Documented: floats are keyed by their IEEE bits, so -0.0 != 0.0 (they can give
    # different results, e.g. 1/x or atan2).
    assert digest(-0.0) != digest(0.0)


def test_nan_is_stable():
    inf = float("inf")
    nans = [float("nan"), np.nan, inf - inf, -float("nan")]
    assert len({digest(n) for n in nans}) == 1, "every Python NaN keys alike"
    assert digest(float("nan")) != digest(inf)
    assert digest(float("nan")) != digest(None)


def test_big_ints():
    assert digest(2**127 - 1) != digest(2**127)
    assert digest(2**128) != digest(2**128 + 1)
    assert digest(2**300) == digest(2**300)
    assert digest(-(2**300)) != digest(2**300)
    assert digest(2**64) != digest(float(2**64))
    # ints that fit INT share the Rust encoding; larger ones are typed but stable.
    assert _core.encode_value(2**100)[0] == 0x03
    assert _core.encode_value(2**200)[0] == 0x0D


def test_bool_differs_from_int():
    # Documented: True and 1 are different keys (bool has its own tag), as are 1 and 1.0.
    assert digest(True) != digest(1)
    assert digest(False) != digest(0)
    assert digest(1) != digest(1.0)


def test_bytes_bytearray_and_memoryview_are_bytes():
    assert digest(b"abc") == digest(bytearray(b"abc")) == digest(memoryview(b"abc"))
    assert digest(b"abc") != digest("abc")
    m = memoryview(np.zeros((2, 3)))
    assert digest(m) != digest(memoryview(np.zeros((3, 2))))
    big = os.urandom(2 << 20)
    assert digest(big) == digest(bytearray(big))
    assert doc(big)["$buffer"]["len"] == len(big)


def test_numpy_scalars_are_typed_by_dtype():
    # Documented: a numpy scalar is keyed with its dtype, so np.float64(1.5) != 1.5.
    assert digest(np.float64(1.5)) != digest(1.5)
    assert digest(np.float32(1.5)) != digest(np.float64(1.5))
    assert digest(np.int64(1)) != digest(np.int32(1))
    assert digest(np.int64(1)) == digest(np.int64(1))


def test_pandas_column_order_and_index_matter():
    df = pd.DataFrame({"a": [1, 2], "b": [3.0, 4.0]})
    assert digest(df) == digest(df.copy())
    assert digest(df) != digest(df[["b", "a"]])
    assert digest(df) != digest(df.set_axis([10, 11], axis=0))
    assert digest(df) != digest(df.astype({"a": "int32"}))
    assert digest(df) != digest(df.rename(columns={"a": "c"}))
    s = pd.Series([1, 2], name="x")
    assert digest(s) != digest(s.rename("y"))
    assert digest(s) != digest(pd.Series([1, 2], index=[5, 6], name="x"))
    assert digest(pd.Index([1, 2], name="a")) != digest(pd.Index([1, 2], name="b"))


def test_dataclass_field_order_irrelevant_class_name_relevant():
    assert digest(Config(0.1, (1,), "n")) == digest(Config(lr=0.1, layers=(1,), name="n"))
    assert digest(Config(0.1, (1,), "n")) != digest(Config(0.2, (1,), "n"))
    # Field declaration order does not matter ... (the class name does, so compare the
    # encodings after the class name)
    a = _core.encode_value(Config(0.1, (1,), "n"))
    b = _core.encode_value(ConfigReordered("n", (1,), 0.1))
    head_a = 1 + 8 + len(b"dataclass:" + Config.__module__.encode() + b".Config")
    head_b = 1 + 8 + len(b"dataclass:" + Config.__module__.encode() + b".ConfigReordered")
    assert a[head_a:] == b[head_b:]
    # ... but the class does.
    assert digest(Config(0.1, (1,))) != digest(OtherConfig(0.1, (1,)))
    assert digest(Config(0.1, (1,))) != digest({"lr": 0.1, "layers": (1,), "name": "net"})


def test_pydantic_model():
    assert digest(Model(alpha=1.0)) == digest(Model(alpha=1.0, tags=[]))
    assert digest(Model(alpha=1.0)) != digest(Model(alpha=2.0))
    assert "pydantic:" in json.dumps(doc(Model(alpha=1.0)))


def test_enum():
    assert digest(Color.RED) != digest("red")
    assert digest(Color.RED) != digest(Color.BLUE)
    assert digest(Level.LOW) != digest(1)


def test_path():
    assert digest(pathlib.Path("/a/b")) == digest(pathlib.PurePosixPath("/a/b"))
    assert digest(pathlib.Path("/a/b")) != digest("/a/b")
    assert digest(pathlib.Path("/a/b")) != digest(pathlib.Path("/a/c"))


def test_datetime_with_tz():
    naive = datetime.datetime(2024, 3, 1, 12)
    utc = naive.replace(tzinfo=datetime.timezone.utc)
    paris = datetime.datetime(2024, 3, 1, 13, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    assert utc == paris  # the same instant ...
    assert len({digest(naive), digest(utc), digest(paris)}) == 3  # ... keyed with its zone
    assert digest(utc) == digest(datetime.datetime(2024, 3, 1, 12, tzinfo=datetime.timezone.utc))
    assert digest(datetime.date(2024, 3, 1)) != digest(naive)
    assert digest(pd.Timestamp("2024-03-01 12:00:00.000000001")) != digest(
        pd.Timestamp("2024-03-01 12:00")
    )


def test_runcache_key_protocol():
    assert digest(Keyed(1, noise=1)) == digest(Keyed(1, noise=2))
    assert digest(Keyed(1, noise=1)) != digest(Keyed(2, noise=1))
    assert digest(Keyed(1, noise=1)) != digest({"ident": 1})


# ------------------------------------------------------------------------------------------
# Unhashable values: TypeError with the path and the fixes


class Opaque:
    pass


@pytest.mark.parametrize(
    "bad",
    [lambda: 1, Opaque(), "open file"],
    ids=["lambda", "custom class", "open file"],
)
def test_unhashable_names_path_type_and_fix(bad, tmp_path):
    if bad == "open file":
        bad = open(tmp_path / "f", "w")
    try:
        X = {"train": [1, 2, 3, bad], "test": []}
        with pytest.raises(TypeError) as ei:
            key(X=X, lr=0.1)
        msg = str(ei.value)
        assert "X['train'][3]" in msg
        assert type(bad).__name__ in msg
        assert "__runcache_key__" in msg
        assert "ignore=['X']" in msg
    finally:
        if hasattr(bad, "close"):
            bad.close()


def test_unhashable_attribute_path():
    @dataclasses.dataclass
    class Cfg:
        lr: object

    with pytest.raises(TypeError, match=r"cfg\.lr"):
        key(cfg=Cfg(lr=Opaque()))
    with pytest.raises(TypeError, match=r"value\[0\]\['k'\]"):
        _core.encode_value([{"k": Opaque()}])


def test_no_pickle_fallback_for_unknown_subclasses():
    masked = np.ma.masked_array([1, 2], mask=[0, 1])
    with pytest.raises(TypeError, match="masked"):
        digest(masked)


def test_cycles_are_a_clear_error():
    a = []
    a.append(a)
    with pytest.raises(ValueError, match="cycle"):
        key(a=a)
    d = {}
    d["self"] = d
    with pytest.raises(ValueError, match=r"d\['self'\]\['self'\]"):
        key(d=d)


def test_errors_from_runcache_key_carry_the_path():
    class Broken:
        def __runcache_key__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom") as ei:
        key(x={"y": Broken()})
    assert any("x['y']" in n for n in getattr(ei.value, "__notes__", []))


# ------------------------------------------------------------------------------------------
# Stability: across processes, against Rust, golden keys

CROSS_PROCESS = textwrap.dedent(
    """
    import json, datetime, numpy as np, pandas as pd
    from runcache import _core
    args = {
        "names": {"alpha", "beta", "gamma", "delta", "epsilon"},
        "cfg": {"zeta": 1, "eta": [1.5, "x"], "theta": {"b": 2, "a": 1}},
        "t": ("1", "23"),
        "arr": np.arange(12, dtype=np.float32).reshape(3, 4),
        "df": pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}),
        "when": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
        "frozen": frozenset({("a", 1), ("b", 2)}),
    }
    print(json.dumps({"key": _core.compute_key("ns", "1", args),
                      "order": list(args["names"])}))
    """
)


def test_same_values_same_key_in_fresh_interpreters():
    results = []
    for seed in ["1", "2", "12345"]:
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run(
            [sys.executable, "-c", CROSS_PROCESS],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(out.stdout))
    assert len({r["key"] for r in results}) == 1, results
    # The set really was iterated in different orders (else this test proves nothing).
    assert len({tuple(r["order"]) for r in results}) > 1


def test_python_key_equals_rust_key():
    # The same hex is pinned by the Rust unit test
    # `key::canonical::tests::golden_key_shared_with_python`, which computes it with
    # `runcache::key::compute_key("ns", "1", &{"x": 5, "s": "a"})`.
    assert (
        _core.compute_key("ns", "1", {"x": 5, "s": "a"})
        == "a3083ff6460423768404219f4de9fbfc7ab1c849b9770e9a8c8cd8a752b2258d"
    )


def test_golden_keys():
    # IF THIS TEST FAILS YOU CHANGED THE KEY FORMAT: every existing cache entry would become
    # unreachable. If deliberate, bump KEY_FORMAT_VERSION, document the new layout in
    # docs/key-format.md and update these goldens in the same commit.
    assert _core.KEY_FORMAT_VERSION == 1
    GoldenConfig = dataclasses.make_dataclass(
        "GoldenConfig", [("lr", float), ("layers", tuple)], namespace={"__module__": "golden"}
    )
    GoldenColor = enum.Enum("GoldenColor", {"RED": "red"}, module="golden")

    class GoldenKeyed:
        __module__ = "golden"
        __qualname__ = "GoldenKeyed"

        def __runcache_key__(self):
            return ("k", 7)

    golden = {
        "scalars": (
            {"a": 1, "b": -2.5, "c": "s", "d": None, "e": True, "f": b"\x00"},
            "268f45c3ef31ba76978304e5427930519f67755f76021fcc252f7d9c6faab794",
        ),
        "containers": (
            {"t": (1, "a"), "l": [1, [2]], "s": {"y", "x"}, "big": 2**200, "z": 1 + 1j},
            "c401e93d2cc7b1cd0ac7e90ea4f89c4b05a0424aeb5e1e519229db965f623dc1",
        ),
        "numpy": (
            {"a": np.arange(6, dtype="<f8").reshape(2, 3), "s": np.float32(0.5)},
            "bf0b52690c930a34323806d133327aa606ebefe78c3121dfea3ec8228ba6da0b",
        ),
        "objects": (
            {
                "cfg": GoldenConfig(0.1, (1, 2)),
                "color": GoldenColor.RED,
                "p": pathlib.PurePosixPath("/x"),
                "when": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
                "day": datetime.date(2024, 1, 1),
                "k": GoldenKeyed(),
            },
            "b68ae3d0fc2c16f6f3165750ddea083f22d7a911b549eb1e9e8621bc75fad144",
        ),
        "pandas": (
            {"df": pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]}, index=[10, 20])},
            "89aa5b4f00514d19a1e00f9c21b866673e6fc4374ddf86d162800778f141a9c7",
        ),
    }
    got = {name: _core.compute_key("golden", "1", args) for name, (args, _) in golden.items()}
    assert got == {name: hexkey for name, (_, hexkey) in golden.items()}


# ------------------------------------------------------------------------------------------
# Key documents


def test_key_document():
    text = _core.key_document(
        "ns", "2", {"a": np.zeros((2, 3), dtype=np.float32), "t": (1, 2), "s": {3, 1}}
    )
    d = json.loads(text)
    assert d["key_format"] == 1 and d["namespace"] == "ns" and d["version"] == "2"
    arr = d["args"]["a"]["$array"]
    assert arr["dtype"] == "<f4" and arr["shape"] == [2, 3] and arr["len"] == 24
    assert len(arr["blake3"]) == 64
    assert d["args"]["t"] == [1, 2]
    assert d["args"]["s"] == {"$set": [1, 3]}


def test_key_document_fails_like_the_key():
    with pytest.raises(TypeError, match=r"X\['a'\]"):
        _core.key_document("ns", "1", {"X": {"a": Opaque()}})


# ------------------------------------------------------------------------------------------
# Results that carry their digest are not re-hashed


class Blob(bytearray):
    """Stands in for a loaded store blob: exports its bytes, knows their BLAKE3."""


def blob_with_digest(data, digest_bytes):
    b = Blob(data)
    b.__runcache_digest__ = digest_bytes
    return b


def blake3_of_array_bytes(a):
    return bytes.fromhex(doc(np.ascontiguousarray(a))["$array"]["blake3"])


def test_array_over_a_digest_carrying_blob_keys_like_its_bytes():
    data = np.arange(1000, dtype="<f8")
    blob = blob_with_digest(data.tobytes(), blake3_of_array_bytes(data))
    arr = np.frombuffer(blob, dtype="<f8")
    assert digest(arr) == digest(data)
    reshaped = arr.reshape(10, 100)
    assert digest(reshaped) == digest(data.reshape(10, 100))


def test_carried_digest_is_used_without_rereading_the_bytes():
    # A deliberately WRONG digest: if the key follows it, the bytes were not re-hashed.
    data = np.arange(1000, dtype="<f8")
    wrong = bytes(range(32))
    arr = np.frombuffer(blob_with_digest(data.tobytes(), wrong), dtype="<f8")
    assert doc(arr)["$array"]["blake3"] == wrong.hex()
    assert digest(arr) != digest(data)
    # A view that does not cover the whole blob is hashed from its bytes.
    part = arr[1:]
    assert doc(part)["$array"]["blake3"] != wrong.hex()
    assert digest(part) == digest(data[1:])


# ------------------------------------------------------------------------------------------
# File content


def test_file_is_keyed_by_content_not_path(tmp_path):
    a = tmp_path / "a.bin"
    b = tmp_path / "b.bin"
    a.write_bytes(b"same content")
    b.write_bytes(b"same content")
    assert key(f=_core.File(a)) == key(f=_core.File(str(b)))
    assert key(f=_core.File(a)) != key(f=str(a))
    b.write_bytes(b"other content")
    assert key(f=_core.File(a)) != key(f=_core.File(b))
    assert doc(_core.File(a))["$file"]["len"] == len(b"same content")
    with pytest.raises(FileNotFoundError):
        key(f=_core.File(tmp_path / "missing"))


def test_file_digest_is_blake3_of_content(tmp_path):
    data = os.urandom(3 << 20)
    p = tmp_path / "big.bin"
    p.write_bytes(data)
    assert _core.file_digest(p) == doc(data)["$buffer"]["blake3"]
    small = tmp_path / "small.bin"
    small.write_bytes(data[:1000])
    assert _core.file_digest(str(small)) == doc(data[:1000])["$bytes"]["blake3"]


def test_unchanged_file_is_not_reread(tmp_path):
    p = tmp_path / "data.bin"
    p.write_bytes(b"x" * 10000)
    time.sleep(1.1)  # fingerprints younger than 1 s are not remembered (racy timestamps)
    first = _core.file_digest(p)
    before = _core.file_digest_cache_info()
    assert _core.file_digest(p) == first
    after = _core.file_digest_cache_info()
    assert after["reads"] == before["reads"]
    assert after["hits"] == before["hits"] + 1
    # In a fresh process state (in-process cache cleared), the /dev/shm cache answers.
    _core.file_digest_cache_info(clear=True)
    assert _core.file_digest(p) == first
    last = _core.file_digest_cache_info()
    assert last["reads"] == after["reads"]
    # A modified file is re-read.
    p.write_bytes(b"y" * 10000)
    assert _core.file_digest(p) != first
    assert _core.file_digest_cache_info()["reads"] == last["reads"] + 1


# ------------------------------------------------------------------------------------------
# Speed (printed, never asserted)


def test_speed_report(capsys):
    args = {"a": 1, "b": "hello", "c": 0.5, "d": True}
    n = 100_000
    t0 = time.perf_counter()
    for _ in range(n):
        _core.compute_key("ns", "1", args)
    small = (time.perf_counter() - t0) / n
    a = np.ones(256 << 20, dtype=np.uint8)
    key(a=a)  # warm up
    t0 = time.perf_counter()
    key(a=a)
    dt = time.perf_counter() - t0
    with capsys.disabled():
        print(
            f"\n[runcache hashing] small args: {small * 1e6:.2f} us/key; "
            f"256 MiB array: {a.nbytes / dt / 1e9:.2f} GB/s"
        )


# ------------------------------------------------------------------------------------------
# The bytes follow docs/key-format.md ("Python values"), rebuilt by hand


def _u64(n):
    return n.to_bytes(8, "little")


def _int(v):
    return b"\x03" + (b"\x01" if v < 0 else b"\x00") + abs(v).to_bytes(16, "little")


def _str(s):
    b = s.encode()
    return b"\x06" + _u64(len(b)) + b


def _typed(name, payload):
    return b"\x0d" + _u64(len(name)) + name.encode() + payload


def _seq(*items):
    return b"\x09" + _u64(len(items)) + b"".join(items)


def _map(*pairs):
    pairs = sorted(pairs)
    return b"\x0a" + _u64(len(pairs)) + b"".join(k + v for k, v in pairs)


def test_bytes_follow_the_documented_layout():
    import struct

    assert _core.encode_value(None) == b"\x01"
    assert _core.encode_value(True) == b"\x02\x01"
    assert _core.encode_value(-5) == _int(-5)
    assert _core.encode_value(0.5) == b"\x05" + struct.pack("<d", 0.5)
    assert _core.encode_value(b"ab") == b"\x07" + _u64(2) + b"ab"
    assert _core.encode_value([1, "a"]) == _seq(_int(1), _str("a"))
    assert _core.encode_value((1, "a")) == _typed("tuple", _seq(_int(1), _str("a")))
    assert _core.encode_value({"b": 1, "a": 2}) == _map((_str("a"), _int(2)), (_str("b"), _int(1)))
    assert _core.encode_value({"bb", "a"}) == _typed("set", _seq(_str("a"), _str("bb")))
    assert _core.encode_value(1 + 2j) == _typed(
        "complex", _seq(b"\x05" + struct.pack("<d", 1.0), b"\x05" + struct.pack("<d", 2.0))
    )
    assert _core.encode_value(2**200) == _typed("int", _str(hex(2**200)))
    a = np.arange(3, dtype="<i4")
    blake3 = bytes.fromhex(doc(a)["$array"]["blake3"])
    assert _core.encode_value(a) == _typed(
        "numpy.ndarray",
        _map(
            (_str("dtype"), _str("<i4")),
            (_str("shape"), _seq(_int(3))),
            (_str("data"), b"\x0c" + _u64(12) + blake3),
        ),
    )
    assert _core.encode_value(np.float32(0.5)) == _typed(
        "numpy.scalar",
        _map((_str("dtype"), _str("<f4")), (_str("data"), b"\x07" + _u64(4) + struct.pack("<f", 0.5))),
    )
    assert _core.encode_value(Color.BLUE) == _typed(f"enum:{__name__}.Color", _int(2))
    assert _core.encode_value(pathlib.PurePosixPath("/x")) == _typed(
        "pathlib.PurePosixPath", _str("/x")
    )
    assert _core.encode_value(datetime.date(2024, 1, 2)) == _typed(
        "datetime.date", _str("2024-01-02")
    )
