"""``@runcache.task``: a function whose calls are computed once and then loaded."""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib
import inspect
import json
import os
import signal
import sys
import textwrap
import threading
import traceback
import warnings
from types import FrameType
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

from runcache import _config, _core, _executors, _scope, _sweep
from runcache._entry import Entry, Explanation, explain_call

R = TypeVar("R")


class Terminated(BaseException):
    """Raised inside a running task when the process receives SIGTERM: the entry is recorded as
    interrupted and the lease released, then the process terminates as SIGTERM would."""


_computing = threading.local()
_sigterm_installed = False


def _install_sigterm() -> None:
    """Turns SIGTERM into `Terminated` while a task computes (main thread, default handler only)."""
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    _sigterm_installed = True
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if getattr(_computing, "depth", 0) > 0:
            raise Terminated("SIGTERM received while computing")
        _die_of_sigterm()

    signal.signal(signal.SIGTERM, on_sigterm)


def _die_of_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def _computation() -> Iterator[None]:
    """Marks the user's function running on this thread: a SIGTERM meanwhile raises
    `Terminated` in it (the entry is recorded interrupted) instead of ending the process."""
    _install_sigterm()
    _computing.depth = getattr(_computing, "depth", 0) + 1
    try:
        yield
    finally:
        _computing.depth -= 1


def _end_if_terminated_outside() -> None:
    """Called when `Terminated` reached a call: unless that call was itself made inside a
    computation (which then records its own interruption), the process ends as SIGTERM would."""
    if getattr(_computing, "depth", 0) == 0:
        _die_of_sigterm()


def _source_hash(fn: Callable[..., Any]) -> str | None:
    """Hash of the function's source without comments, formatting or its docstring."""
    try:
        src = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(src)
    except (OSError, TypeError, SyntaxError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            node.decorator_list = []
            body = node.body
            first = body[0] if body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return hashlib.blake2b(ast.dump(tree).encode(), digest_size=32).hexdigest()


def _reraise_recorded(
    exc: BaseException, raised: dict[str, type], fn: Callable[..., Any]
) -> BaseException:
    """Rebuilds a recorded failure as an exception of its original class: the class this
    process saw the task raise (``raised``, by recorded name), else a class the function ``fn``
    refers to from its closure (how a class defined in the enclosing function is reached),
    else the class found by import. Only when none exists is it the `RecordedFailure`."""
    try:
        _, namespace, key, error_type, message = exc.args
    except ValueError:
        return exc
    cls: Any = raised.get(error_type) or _closure_class(fn, error_type)
    if cls is None:
        module, _, qualname = error_type.rpartition(".")
        try:
            cls = importlib.import_module(module or "builtins")
            for part in qualname.split("."):
                cls = getattr(cls, part)
        except Exception:
            cls = None
    note = (
        f"runcache: this is the recorded failure of {namespace} (key {key[:12]}); "
        "it was not recomputed. Use mode='retry' to recompute it."
    )
    if isinstance(cls, type) and issubclass(cls, BaseException):
        rebuilt = _instance_of(cls, message)
        if rebuilt is not None:
            rebuilt.add_note(note)
            return rebuilt
    exc.add_note(note)
    return exc


def _closure_class(fn: Callable[..., Any], error_type: str) -> type | None:
    """The class recorded as ``error_type`` if ``fn`` holds it in its closure."""
    for cell in getattr(inspect.unwrap(fn), "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(value, type) and _type_name(value) == error_type:
            return value
    return None


def _instance_of(cls: type[BaseException], message: str) -> BaseException | None:
    """An instance of ``cls`` carrying ``message``: built with ``cls(message)`` if its
    constructor takes that, else without running its ``__init__`` (None if neither works)."""
    try:
        return cls(message)
    except Exception:
        pass
    try:
        made = cls.__new__(cls, message)
        BaseException.__init__(made, message)
        return made
    except Exception:
        return None


def _type_name(cls: type) -> str:
    """How the engine records an exception class: ``module.qualname``."""
    return f"{cls.__module__}.{cls.__qualname__}"


#: What a task's native hit path returns when it does not settle the call.
_MISS = object()


class _Signature:
    """Binds call arguments to parameter names quickly (no inspect.Signature.bind on the common
    path), fills defaults, and drops ignored parameters."""

    __slots__ = ("sig", "names", "defaults", "simple", "ignore", "files", "var_names", "var_kw")

    def __init__(
        self, fn: Callable[..., Any], ignore: Iterable[str], files: Iterable[str]
    ) -> None:
        self.sig = inspect.signature(fn)
        params = list(self.sig.parameters.values())
        self.names = [p.name for p in params]
        self.defaults = {
            p.name: p.default for p in params if p.default is not inspect.Parameter.empty
        }
        self.simple = all(
            p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params
        ) and not any(p.kind == p.KEYWORD_ONLY for p in params)
        self.ignore = frozenset(ignore)
        self.files = frozenset(files)
        # The name of the **kwargs parameter: ignored names may also arrive through it.
        self.var_kw = next((p.name for p in params if p.kind == p.VAR_KEYWORD), None)
        unknown = self.files - set(self.names)
        if self.var_kw is None:
            unknown |= self.ignore - set(self.names)
        if unknown:
            raise TypeError(
                f"{fn.__qualname__} has no parameter(s) {sorted(unknown)} "
                f"(it has: {', '.join(self.names)})"
            )
        self.var_names = {
            p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    def plan(self) -> tuple[list[str], dict[str, Any]] | None:
        """``(names, defaults)`` when binding needs nothing but names and defaults (what
        `_core.HitPath` binds natively), else None."""
        if self.simple and not self.ignore and not self.files:
            return list(self.names), dict(self.defaults)
        return None

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.simple and len(args) <= len(self.names) and (
            not kwargs or all(k in self.names[len(args):] for k in kwargs)
        ):
            bound = dict(self.defaults)
            bound.update(zip(self.names, args))
            bound.update(kwargs)
            if len(bound) != len(self.names):
                self.sig.bind(*args, **kwargs)  # raises the usual TypeError
        else:
            ba = self.sig.bind(*args, **kwargs)
            ba.apply_defaults()
            bound = dict(ba.arguments)
        if self.ignore:
            for name in self.ignore:
                bound.pop(name, None)
            extra = bound.get(self.var_kw) if self.var_kw else None
            if extra and not self.ignore.isdisjoint(extra):
                bound[self.var_kw] = {k: v for k, v in extra.items() if k not in self.ignore}
        if self.files:
            for name in self.files:
                if name in bound and bound[name] is not None:
                    bound[name] = _core.File(bound[name])
        return bound


class Task(Generic[R]):
    """A function whose results are stored under a content key. Call it like the function.

    Created by :func:`task`. Options (store, mode, ...) are resolved at call time from
    ``.options(...)``, then ``runcache.config(...)``, then ``runcache.configure(...)``.
    ``sticky_failures=False``: in the default mode, a call whose entry records a failure
    computes again instead of re-raising it (as ``runcache.Memory`` does).
    """

    def __init__(
        self,
        fn: Callable[..., R],
        *,
        name: str | None = None,
        version: str = "0",
        ignore: Iterable[str] = (),
        files: Iterable[str] = (),
        track_code: bool = False,
        resources: dict[str, float] | None = None,
        options: dict[str, Any] | None = None,
        sticky_failures: bool = True,
        _shared: dict[str, Any] | None = None,
    ) -> None:
        self.fn = fn
        # A script run by a worker is imported as `__mp_main__` (as multiprocessing does); its
        # tasks keep the names they have when the script runs as `__main__`.
        module = "__main__" if fn.__module__ == "__mp_main__" else fn.__module__
        self.name = name or f"{module}.{fn.__qualname__}"
        self.resources = _check_resources(resources)
        self.version = str(version)
        self.track_code = track_code
        self._options = dict(options or {})
        # A recorded failure is re-raised by later calls; with sticky_failures=False (what
        # runcache.Memory uses: joblib never caches exceptions) the next call recomputes it.
        self._sticky_failures = sticky_failures
        # State shared by all option views of the same task (signature, code, raised classes).
        if _shared is None:
            code_owner = inspect.unwrap(fn)
            _shared = {
                "sig": _Signature(fn, ignore, files),
                "warned_code": False,
                # The function whose __code__ the source hash describes (None: no __code__).
                "code_owner": code_owner if hasattr(code_owner, "__code__") else None,
                "raised": {},  # exception classes this task raised here, by recorded name
            }
        self._shared = _shared
        if "code" not in _shared:
            self._refresh_code()
        self._hit = self._hit_path()

    def __getstate__(self) -> dict[str, Any]:
        # The native hit path is rebuilt on arrival (it holds this process's store handles).
        state = dict(self.__dict__)
        state.pop("_hit", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._hit = self._hit_path()

    def _hit_path(self) -> Any:
        """The native hit path of calls with this task's options (see `_core.HitPath`)."""
        sig: _Signature = self._shared["sig"]
        return _core.HitPath(
            self.name,
            sig.plan(),
            sig.bind,
            self._shared,
            self._options,
            self._sticky_failures,
            _config,
            _MISS,
        )

    def _refresh_code(self) -> None:
        """(Re)computes the source hash and the key version from the function's code as it is
        now; called at definition and whenever ``__code__`` was replaced in place."""
        shared = self._shared
        owner = shared["code_owner"]
        shared["code"] = owner.__code__ if owner is not None else None
        shared["source_hash"] = _source_hash(self.fn)
        version = self.version
        if self.track_code and shared["source_hash"]:
            version = f"{self.version}+code.{shared['source_hash']}"
        shared["key_version"] = version
        _core.register_version(self.name, version)

    @property
    def _key_version(self) -> str:
        """The version that enters keys: ``version``, plus the code hash with ``track_code``."""
        return self._shared["key_version"]

    def _check_code(self) -> None:
        """Notices a ``__code__`` replaced in place (reloaders, notebooks): one identity check."""
        owner = self._shared["code_owner"]
        if owner is not None and owner.__code__ is not self._shared["code"]:
            self._refresh_code()

    def __repr__(self) -> str:
        return f"<runcache.task {self.name} v{self.version}>"

    # -- options -------------------------------------------------------------------------

    def options(self, **options: Any) -> "Task[R]":
        """This task with per-call options, e.g. ``fit.options(mode="force")(X, 0)``."""
        _config._check(options)
        view = Task.__new__(Task)
        view.__dict__.update(self.__dict__)
        view._options = {**self._options, **options}
        view._hit = view._hit_path()
        return view

    def _effective(self) -> dict[str, Any]:
        return _config.current(self._options)

    # -- keys ----------------------------------------------------------------------------

    def _bound(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        sig: _Signature = self._shared["sig"]
        return sig.bind(args, kwargs)

    def key(self, *args: Any, **kwargs: Any) -> str:
        """The entry key (64 hex digits) of this call."""
        return self._key_of(args, kwargs)

    def entry(self, *args: Any, **kwargs: Any) -> Entry:
        """A handle on the entry of this call (which may not exist yet)."""
        opts = self._effective()
        return Entry(_config.open_store(opts), self.key(*args, **kwargs), self.name)

    def explain(self, *args: Any, **kwargs: Any) -> Explanation:
        """Why this call is (or is not) a hit: the nearest stored entries of this task and which
        arguments, version or dependencies differ."""
        opts = self._effective()
        bound = self._bound(args, kwargs)
        self._check_code()
        return explain_call(
            _config.open_store(opts), self.name, self._key_version, bound
        )

    def clear(self) -> int:
        """Deletes every entry of this task; returns how many were deleted."""
        return _clear(_config.open_store(self._effective()), self.name)

    def _compute(
        self,
        store: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        capture: Callable[[], Any] | None = None,
    ) -> Callable[[], tuple[Any, list[tuple[str, str]], str]]:
        """The computation the engine runs on a miss: the function inside an artifact scope,
        returning (value, artifacts, metadata JSON). With ``capture``, the function's output
        (and the traceback of its exception) goes where ``capture()`` sends it."""
        fn = self.fn
        source_hash = self._shared["source_hash"]
        raised = self._shared["raised"]

        def compute() -> tuple[Any, list[tuple[str, str]], str]:
            scope = _scope.Scope(store.scratch_dir())
            token = _scope.enter(scope)
            try:
                with _computation():
                    if capture is None:
                        value = fn(*args, **kwargs)
                    else:
                        value = _run_captured(capture, fn, args, kwargs)
            except BaseException as e:
                raised[_type_name(type(e))] = type(e)
                raise
            finally:
                _scope.leave(token)
            metadata = dict(scope.metadata)
            if source_hash:
                metadata["source_hash"] = source_hash
            metadata["function"] = f"{fn.__module__}.{fn.__qualname__}"
            return value, scope.artifacts, json.dumps(metadata, default=str)

        return compute

    # -- sweeps --------------------------------------------------------------------------

    def _key_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        self._check_code()
        return _core.compute_key(self.name, self._key_version, self._bound(args, kwargs))

    def _runner(self) -> dict[str, Any]:
        """How a worker finds this task: module, qualified name, and the caller's Python."""
        fn = self.fn
        module = fn.__module__
        main_file = None
        if module in ("__main__", "__mp_main__"):
            module = "__main__"
            main_file = getattr(sys.modules.get("__main__"), "__file__", None)
            if not main_file:
                raise TypeError(
                    f"{fn.__qualname__} is defined in an interactive session (a notebook or "
                    "`python -c`), which worker processes cannot import: move the task into a "
                    "module (a .py file) and import it, or use executor=runcache.Inline()"
                )
            main_file = os.path.abspath(main_file)
        if "<locals>" in fn.__qualname__:
            raise TypeError(
                f"{fn.__qualname__} is defined inside a function, so worker processes cannot "
                "import it: define the task at module level, or use executor=runcache.Inline()"
            )
        return {
            "kind": "python",
            "module": module,
            "qualname": fn.__qualname__,
            "main_file": main_file,
            "executable": sys.executable,
            "sys_path": [os.path.abspath(p) if p else os.getcwd() for p in sys.path],
            "cwd": os.getcwd(),
        }

    def _claim(
        self,
        store: Any,
        record: dict[str, Any],
        key: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        log_path: str,
        capture: Callable[[], Any],
    ) -> str:
        """A worker's claim of one sweep item (see ``_core.Store.claim``). Only an item the
        worker is about to compute is bound and checked: ``doc`` runs after the lease is won."""

        def doc() -> str:
            bound = self._bound(args, kwargs)
            mine = _core.compute_key(self.name, self._key_version, bound)
            if mine != key:
                raise RuntimeError(
                    f"item key mismatch for {self.name}: the sweep has {key[:12]}, this worker "
                    f"computes {mine[:12]} from the same arguments; the worker's code differs "
                    "from the submitter's"
                )
            return _core.key_document(self.name, self._key_version, bound)

        compute = self._compute(store, args, kwargs, capture=capture)
        return _claim_item(store, self.name, self._key_version, record, key, doc, compute, log_path)

    def map(
        self,
        items: Iterable[Any],
        executor: Any = None,
        progress: bool | None = None,
        wait: bool = True,
        errors: str = "raise",
    ) -> Any:
        """Computes (or loads) the task for every item and returns the results in order.

        Items: a dict is keyword arguments, a tuple positional arguments, anything else one
        positional argument. Only items without an entry (or with a failed one, in ``retry``
        mode) are computed, by ``executor`` (default ``runcache.Local()``: one worker process
        per core; ``runcache.Inline()`` computes here). ``progress``: live bar (default: in
        terminals and notebooks). ``errors="raise"`` raises :class:`runcache.SweepError` after
        the sweep if items failed; ``errors="return"`` puts :class:`runcache.Failure` objects in
        their place. ``wait=False`` returns one :class:`runcache.Job` per item at once.
        """
        if errors not in ("raise", "return"):
            raise ValueError(f"errors={errors!r}: use 'raise' or 'return'")
        calls = [_sweep.as_call(item) for item in items]
        opts = self._effective()
        if executor is None:
            executor = _executors.Local()
        if isinstance(executor, _executors.Inline):
            return executor.run(self, calls, opts, progress=progress, wait=wait, errors=errors)
        _executors.check(executor)
        handle, keys = _sweep.submit(self, calls, executor, opts)
        if handle is None:
            # Everything is settled already: no sweep is written, nothing starts.
            store = _config.open_store(opts)
            if not wait:
                return _sweep.jobs_of(store, keys, None, opts.get("mmap", True))
            return _sweep.collect(store, keys, errors, opts.get("mmap", True))
        if not wait:
            return handle.jobs(opts.get("mmap", True))
        return handle.results(errors=errors, progress=progress, mmap=opts.get("mmap", True))

    def submit(self, *args: Any, executor: Any = None, **kwargs: Any) -> Any:
        """Starts one call on ``executor`` and returns its :class:`runcache.Job` at once."""
        opts = self._effective()
        if executor is None:
            executor = _executors.Local(workers=1)
        calls = [(args, kwargs)]
        if isinstance(executor, _executors.Inline):
            return executor.run(self, calls, opts, progress=False, wait=False, errors="return")[0]
        _executors.check(executor)
        handle, keys = _sweep.submit(self, calls, executor, opts)
        if handle is None:
            return _sweep.jobs_of(_config.open_store(opts), keys, None, opts.get("mmap", True))[0]
        return handle.jobs(opts.get("mmap", True))[0]

    # -- calling -------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        value = self._hit(args, kwargs)
        if value is not _MISS:
            return value  # type: ignore[no-any-return]
        return self._call(args, kwargs)

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        """A call the native hit path did not settle: the whole protocol (compute on a miss,
        re-raise a recorded failure, modes ``force`` and ``off``, the code-change warning)."""
        opts = _config.current(self._options)
        mode = opts.get("mode", "cached")
        if mode == "off":
            return self.fn(*args, **kwargs)
        if mode == "cached" and not self._sticky_failures:
            mode = "retry"
        self._check_code()
        bound = self._shared["sig"].bind(args, kwargs)
        key = _core.compute_key(self.name, self._key_version, bound)
        store = _config.open_store(opts)
        shared = self._shared
        source_hash = shared["source_hash"]

        def doc() -> str:
            return _core.key_document(self.name, self._key_version, bound)

        compute = self._compute(store, args, kwargs)

        try:
            value, computed, code_changed = store.call(
                self.name,
                self._key_version,
                mode,
                key,
                doc,
                compute,
                mmap=opts.get("mmap", True),
                wait_timeout=opts.get("wait_timeout"),
                source_hash=source_hash,
                interrupt_types=(Terminated,),
            )
            result: R = value
        except _core.RecordedFailure as e:
            raise _reraise_recorded(e, shared["raised"], self.fn) from None
        except Terminated:
            _end_if_terminated_outside()
            raise
        if code_changed and not shared["warned_code"]:
            shared["warned_code"] = True
            warnings.warn(
                f"runcache: {self.name} returned a result computed by a different version of "
                f"the source of {self.fn.__qualname__}. If the change matters, bump its version "
                "(@runcache.task(version=...)) or use track_code=True.",
                RuntimeWarning,
                stacklevel=2,
            )
        return result


def _claim_item(
    store: Any,
    name: str,
    version: str,
    record: dict[str, Any],
    key: str,
    doc: Callable[[], str],
    compute: Callable[[], Any],
    log_path: str,
) -> str:
    """A worker's claim of item ``key`` of the sweep ``record`` (see ``_core.Store.claim``),
    for tasks and batch tasks alike: a SIGTERM (`Terminated`) records an interruption."""
    return store.claim(
        name,
        version,
        record["mode"],
        key,
        record["id"],
        record["created_unix_ms"],
        doc,
        compute,
        log_path=log_path,
        interrupt_types=(Terminated,),
    )


def _clear(store: Any, name: str) -> int:
    """Deletes every entry of namespace ``name``; returns how many were deleted."""
    return sum(1 for text in store.entries(name) if store.delete(json.loads(text)["key"]))


def _run_captured(
    capture: Callable[[], Any], fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Runs ``fn`` with its output (and its exception's traceback) sent where ``capture`` says."""
    with capture():
        try:
            return fn(*args, **kwargs)
        except BaseException:
            traceback.print_exc()
            raise


def _check_resources(resources: dict[str, float] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, amount in (resources or {}).items():
        if not isinstance(amount, (int, float)) or amount < 0:
            raise ValueError(
                f"resources[{name!r}] = {amount!r}: give a non-negative number, e.g. {{'ram': 1.5}}"
            )
        out[str(name)] = float(amount)
    return out


def task(
    fn: Callable[..., R] | None = None,
    *,
    name: str | None = None,
    version: str | int = "0",
    ignore: Iterable[str] = (),
    files: Iterable[str] = (),
    track_code: bool = False,
    resources: dict[str, float] | None = None,
    **options: Any,
) -> Any:
    """Makes ``fn`` a task: each call is computed once and then loaded from the store.

    ``name``: namespace of its entries (default ``module.qualname``); ``version``: bump it when
    the function's behaviour changes; ``ignore``: parameters left out of the key (verbosity,
    device); ``files``: parameters naming files whose CONTENT enters the key instead of the path;
    ``track_code``: make the function's normalized source part of the key; ``resources``: what
    one call needs when run by an executor, e.g. ``{"ram": 1.5, "gpu": 1}`` (an executor never
    runs more than its declared capacity at once). Other keyword
    options (store, mode, mmap, wait_timeout) become the task's defaults.
    """
    _config._check(options)

    def wrap(f: Callable[..., R]) -> Callable[..., R]:
        return _as_function(
            Task(
                f,
                name=name,
                version=str(version),
                ignore=ignore,
                files=files,
                track_code=track_code,
                resources=resources,
                options=options,
            )
        )

    return wrap(fn) if fn is not None else wrap


_TASK_API = ("entry", "options", "explain", "clear", "key", "name", "version", "map", "submit")


def _as_function(t: Any, api: Iterable[str] = _TASK_API) -> Callable[..., Any]:
    """Presents a task (or a batch task) as a plain function (so it works as a method, and as
    an attribute of pydantic models and dataclasses), carrying the task's ``api`` as
    attributes."""

    if not hasattr(t, "_hit"):

        @functools.wraps(t.fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            return t(*args, **kwargs)

    else:
        # Task.__call__ inlined: the native hit path first.
        @functools.wraps(t.fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            value = t._hit(args, kwargs)
            if value is not _MISS:
                return value
            return t._call(args, kwargs)

    call.task = t  # type: ignore[attr-defined]
    for attr in api:
        setattr(call, attr, getattr(t, attr))
    return call
