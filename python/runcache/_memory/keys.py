"""Keys for the arguments of cached functions that runcache does not hash by value
(estimators, random generators, callables): a structure describing what defines each."""

from __future__ import annotations

import functools
import types
from typing import Any

# Argument types runcache hashes natively with nothing to adapt (the hit path's fast check).
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})


_CALLABLE_TYPES = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.BuiltinMethodType,
    type,
)


def _is_estimator(v: Any) -> bool:
    return not isinstance(v, type) and callable(getattr(v, "get_params", None))


def _is_numpy_random(v: Any) -> bool:
    return type(v).__module__.startswith("numpy.random") and (
        hasattr(v, "get_state") or hasattr(v, "bit_generator")
    )


def _needs_key(v: Any) -> bool:
    """Whether ``v`` contains something that must be keyed by `_key_of` (cheap; no hashing)."""
    t = type(v)
    if t in _PLAIN:
        return False
    if t is tuple or t is list:
        return any(_needs_key(x) for x in v)
    if isinstance(v, dict):
        return any(_needs_key(x) for x in v.values())
    if hasattr(t, "__runcache_key__"):
        return False
    if _is_named_callable(v) or isinstance(v, functools.partial):
        return True
    mod = t.__module__
    if mod.startswith(("numpy", "pandas")):
        return mod.startswith("numpy.random")
    return _is_estimator(v)


def _is_named_callable(v: Any) -> bool:
    """Functions, methods, classes, builtins, numpy ufuncs: callables that carry a name (plain
    instances with ``__call__`` do not)."""
    return isinstance(v, _CALLABLE_TYPES) or (callable(v) and hasattr(v, "__name__"))


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "builtins"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return f"{module}.{name}"


def _key_of(v: Any) -> Any:
    """A hashable stand-in for ``v``: ``v`` itself when runcache can hash it, else a structure
    describing what defines it (never a pickle)."""
    t = type(v)
    if t in _PLAIN:
        return v
    if t is tuple or t is list:
        items = [_key_of(x) for x in v]
        return v if all(a is b for a, b in zip(items, v)) else t(items)
    if isinstance(v, dict):
        out = {k: _key_of(x) for k, x in v.items()}
        return v if all(out[k] is x for k, x in v.items()) else out
    if hasattr(t, "__runcache_key__"):
        return v
    if isinstance(v, functools.partial):
        return ("$partial", _key_of(v.func), _key_of(list(v.args)), _key_of(dict(v.keywords)))
    if isinstance(v, types.MethodType):
        return ("$method", _key_of(v.__self__), v.__func__.__qualname__)
    if _is_named_callable(v):
        return ("$callable", _qualname(v))
    if _is_numpy_random(v):
        if hasattr(v, "get_state"):  # RandomState
            return ("$numpy.random.RandomState", v.get_state(legacy=False))
        return ("$numpy.random.Generator", v.bit_generator.state)
    if _is_estimator(v):
        return _estimator_key(v)
    return v


def _estimator_key(est: Any) -> Any:
    """An estimator is defined by its class, its parameters and, once fitted, by its fitted
    attributes (scikit-learn's convention: public names ending in ``_``). Nested estimators
    (in parameters or fitted state) are keyed the same way, recursively."""
    params = est.get_params(deep=False)
    fitted = {
        k: v
        for k, v in vars(est).items()
        if k.endswith("_") and not k.startswith("__")
    } if hasattr(est, "__dict__") else {}
    return (
        "$estimator",
        _qualname(type(est)),
        {k: _key_of(p) for k, p in params.items()},
        {k: _key_of(a) for k, a in fitted.items()},
    )


class _Keyed:
    """An argument passed to the task for its key only: the task receives ``obj``."""

    __slots__ = ("obj", "_key")

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self._key: Any = _Keyed  # sentinel: not computed yet

    def __runcache_key__(self) -> Any:
        # Computed lazily (ignored arguments never are) and once (key + key document).
        if self._key is _Keyed:
            self._key = _key_of(self.obj)
        return self._key


def _adapt(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Wraps the arguments that need a derived key; returns the inputs unchanged if none do."""
    for a in args:
        if type(a) not in _PLAIN:
            break
    else:
        if not kwargs:
            return args, kwargs
        for v in kwargs.values():
            if type(v) not in _PLAIN:
                break
        else:
            return args, kwargs
    if any(_needs_key(a) for a in args):
        args = tuple(_Keyed(a) if _needs_key(a) else a for a in args)
    if any(_needs_key(v) for v in kwargs.values()):
        kwargs = {k: _Keyed(v) if _needs_key(v) else v for k, v in kwargs.items()}
    return args, kwargs


def _unwrap(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    args = tuple(a.obj if type(a) is _Keyed else a for a in args)
    kwargs = {k: v.obj if type(v) is _Keyed else v for k, v in kwargs.items()}
    return args, kwargs


def _describe(args: tuple, kwargs: dict, limit: int = 40) -> str:
    """A short readable rendering of a call's arguments (for ``verbose``)."""

    def one(v: Any) -> str:
        if type(v) in _PLAIN:
            text = repr(v)
        elif hasattr(v, "shape") and hasattr(v, "dtype"):
            text = f"<{type(v).__name__} {tuple(v.shape)} {v.dtype}>"
        else:
            text = repr(v) if _is_estimator(v) else f"<{type(v).__name__}>"
        return text if len(text) <= limit else text[: limit - 3] + "..."

    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]
    return ", ".join(parts)
