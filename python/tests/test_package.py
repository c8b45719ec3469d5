"""The package imports and its extension matches the engine."""

import runcache


def test_extension_loads_and_reports_versions():
    assert runcache.__version__ == "0.1.0"
    assert runcache._core.KEY_FORMAT_VERSION == 1
