"""runcache: make every expensive computation run once and be reused everywhere after."""

from runcache import _core

__version__ = _core.__version__

__all__ = ["__version__"]
