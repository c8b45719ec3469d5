"""Keys and stored results of the columnar types: pyarrow, polars, xarray (and pandas frames
with Arrow dtypes). Each library is optional; under CI=true (scripts/test) they must be
installed (scripts/setup installs them)."""

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import runcache as rc
from runcache import _core


def need(name):
    """The module, or a skip naming it (a failure under CI, where setup installs it)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"{name} is not installed (scripts/setup installs it)")


def key(value):
    return _core.compute_key("t.types", "1", {"x": value})


#: Builds the same values in any interpreter and prints their keys (JSON).
VALUES = r"""
import json, sys
import numpy as np, pandas as pd, pyarrow as pa, polars as pl, xarray as xr
from runcache import _core

def values():
    ints = pa.array([1, None, 3], type=pa.int64())
    table = pa.table({"a": [1, 2, 3], "s": ["x", "y", None]}, metadata={"source": "t"})
    return {
        "array": ints,
        "dictionary": pa.array(["a", "b", "a"]).dictionary_encode(),
        "chunked": pa.chunked_array([[1, 2], [3]]),
        "batch": pa.record_batch({"a": [1.5, 2.5]}),
        "table": table,
        "schema": table.schema,
        "type": pa.list_(pa.int32()),
        "polars": pl.DataFrame({"a": [1, 2], "s": ["p", "q"]}),
        "series": pl.Series("n", [1.0, 2.0]),
        "xarray": xr.DataArray(np.arange(6.0).reshape(2, 3), dims=("x", "y"),
                               coords={"x": [10, 20]}, attrs={"units": "m"}, name="v"),
        "dataset": xr.Dataset({"t": (("x",), np.array([1.0, 2.0]))}, coords={"x": [0, 1]},
                              attrs={"run": 3}),
        "pandas_arrow": pd.DataFrame({"a": pd.array([1, 2], dtype="int64[pyarrow]")}),
    }

print(json.dumps({k: _core.compute_key("t.types", "1", {"x": v}) for k, v in values().items()}))
"""


def keys_in_new_interpreter():
    out = subprocess.run(
        [sys.executable, "-c", VALUES], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)


def test_keys_are_stable_across_interpreters():
    for name in ("pyarrow", "polars", "xarray", "pandas"):
        need(name)
    first, second = keys_in_new_interpreter(), keys_in_new_interpreter()
    assert first == second
    here = {}
    exec(VALUES.replace("print(json.dumps(", "here.update(("), {"here": here})
    assert here == first, "this interpreter agrees with fresh ones"
    assert len(set(first.values())) == len(first), "every value has its own key"


def test_arrow_keys_follow_type_values_nulls_and_schema():
    pa = need("pyarrow")
    base = key(pa.array([1, 2, 3], type=pa.int64()))
    assert key(pa.array([1, 2, 3], type=pa.int64())) == base
    assert key(pa.array([1, 2, 3], type=pa.int32())) != base, "type"
    assert key(pa.array([1, 2, 4], type=pa.int64())) != base, "values"
    assert key(pa.array([1, None, 3], type=pa.int64())) != base, "nulls"
    assert key(pa.array([1, 2], type=pa.int64())) != base, "length"
    big = pa.array(np.arange(1_000_000))
    assert key(big) != key(pa.array(np.arange(1_000_000) + 1)), "large buffers by digest"

    words = pa.array(["a", "b", "a"])
    assert key(words.dictionary_encode()) != key(pa.array(["a", "c", "a"]).dictionary_encode())
    t = pa.table({"a": [1, 2]})
    assert key(t) == key(pa.table({"a": [1, 2]}))
    assert key(t) != key(pa.table({"b": [1, 2]})), "column names"
    assert key(t) != key(t.replace_schema_metadata({"k": "v"})), "schema metadata"
    assert key(t) != key(pa.record_batch({"a": [1, 2]})), "a table is not a record batch"
    nested = pa.array([[1], [2]]).cast(pa.list_(pa.int64()))
    assert key(nested) != key(pa.array([[1], [3]])), "children buffers"

    nested_dict = pa.StructArray.from_arrays([words.dictionary_encode()], names=["w"])
    with pytest.raises(TypeError, match="dictionary arrays nested in other types"):
        key(nested_dict)


def test_polars_and_pandas_arrow_keys():
    pl = need("polars")
    pd = need("pandas")
    need("pyarrow")
    df = pl.DataFrame({"a": [1, 2], "s": ["p", "q"]})
    assert key(df) == key(pl.DataFrame({"a": [1, 2], "s": ["p", "q"]}))
    assert key(df) != key(df.with_columns(pl.col("a").cast(pl.Int32))), "dtype"
    assert key(df) != key(pl.DataFrame({"a": [1, 3], "s": ["p", "q"]})), "values"
    assert key(df) != key(df.rename({"a": "b"})), "names"
    s = pl.Series("n", [1, 2])
    assert key(s) != key(s.rename("m")), "series name"
    assert key(s) != key(df), "a series is not a frame"

    frame = pd.DataFrame({"a": pd.array([1, 2], dtype="int64[pyarrow]")})
    assert key(frame) != key(pd.DataFrame({"a": pd.array([1, 3], dtype="int64[pyarrow]")}))
    assert key(frame) != key(pd.DataFrame({"a": np.array([1, 2])})), "dtype enters the key"


def test_xarray_keys_follow_dims_coords_attrs_and_data():
    xr = need("xarray")

    def da(**change):
        parts = dict(
            data=np.arange(6.0).reshape(2, 3),
            dims=("x", "y"),
            coords={"x": [10, 20]},
            attrs={"units": "m"},
            name="v",
        )
        parts.update(change)
        return xr.DataArray(**parts)

    base = key(da())
    assert key(da()) == base
    assert key(da(dims=("x", "z"))) != base, "dims"
    assert key(da(coords={"x": [10, 21]})) != base, "coords"
    assert key(da(attrs={"units": "km"})) != base, "attrs"
    assert key(da(name="w")) != base, "name"
    assert key(da(data=np.arange(6.0).reshape(2, 3) + 1)) != base, "data"
    ds = xr.Dataset({"t": (("x",), np.array([1.0, 2.0]))}, coords={"x": [0, 1]})
    assert key(ds) != key(ds.assign_attrs(run=1)), "dataset attrs"
    assert key(ds) != key(ds.rename({"t": "u"})), "variable names"
    assert key(ds) != key(da()), "a dataset is not a data array"


def mapped_blobs(store, entry):
    """The entry's `buffer:<i>` blobs that this process has memory-mapped."""
    maps = open("/proc/self/maps").read()
    blobs = [b for b in entry.info()["blobs"] if b["role"].startswith("buffer:")]
    paths = [os.path.join(store, "blobs", b["digest"][:2], b["digest"]) for b in blobs]
    return blobs, [p for p in paths if p in maps]


@pytest.fixture
def store(tmp_path):
    rc.configure(store=str(tmp_path / "store"))
    yield str(tmp_path / "store")
    rc.configure(store=None)


def test_arrow_results_are_stored_as_buffers_and_load_memory_mapped(store):
    pa = need("pyarrow")

    @rc.task
    def make(n):
        return pa.table({"a": np.arange(n), "f": np.ones(n)})

    made = make(1 << 18)
    loaded = make(1 << 18)
    assert loaded.equals(made)
    blobs, mapped = mapped_blobs(store, make.entry(1 << 18))
    assert sum(b["size"] for b in blobs) >= 2 * 8 * (1 << 18), "columns are their own blobs"
    assert mapped, "the loaded columns are memory maps of the store's blobs"


def test_polars_results_are_stored_as_arrow_buffers_and_load_memory_mapped(store):
    pl = need("polars")
    need("pyarrow")

    @rc.task
    def frame(n):
        return {
            "df": pl.DataFrame({"a": np.arange(n), "c": ["x", "y"] * (n // 2)}).with_columns(
                pl.col("c").cast(pl.Categorical)
            ),
            "s": pl.Series("n", np.ones(n)),
        }

    made = frame(1 << 18)
    loaded = frame(1 << 18)
    assert loaded["df"].equals(made["df"]) and loaded["df"].schema == made["df"].schema
    assert loaded["s"].equals(made["s"]) and loaded["s"].name == "n"
    blobs, mapped = mapped_blobs(store, frame.entry(1 << 18))
    assert sum(b["size"] for b in blobs) >= 2 * 8 * (1 << 18), "not one in-band copy"
    assert mapped, "the loaded columns are memory maps of the store's blobs"

    @rc.task
    def objects():
        return pl.DataFrame({"o": pl.Series([object(), 1], dtype=pl.Object)}).shape

    assert objects() == objects() == (2, 1), "a frame Arrow cannot hold pickles as polars does"


def test_xarray_and_pandas_arrow_results_round_trip(store):
    xr = need("xarray")
    pd = need("pandas")
    need("pyarrow")

    @rc.task
    def make():
        return (
            xr.Dataset({"t": (("x",), np.arange(4.0))}, coords={"x": list("abcd")}, attrs={"k": 1}),
            pd.DataFrame({"a": pd.array([1, None], dtype="int64[pyarrow]")}),
        )

    ds, frame = make()
    ds2, frame2 = make()
    assert ds2.identical(ds)
    assert frame2.equals(frame) and str(frame2.dtypes["a"]) == "int64[pyarrow]"
