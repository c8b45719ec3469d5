"""``@runcache.batch_task``: a function over a list of items, computed in batches and cached
per item (embed 10 000 texts 64 at a time; after a crash or when new texts arrive, only the
items without an entry are computed)."""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable

import types

from runcache import _config, _core, _executors, _progress, _sweep, _task
from runcache._entry import Entry, Explanation, explain_call


class BatchTask:
    """A function ``fn(items, *args, **kwargs) -> results`` (one result per item, in order)
    whose results are stored one entry per item. Created by :func:`batch_task`; call it like
    the function. The key of an item is the task's name and version, ``item_key(item)`` in
    place of the list, and the other arguments (which enter every item's key)."""

    def __init__(
        self,
        fn: Callable[..., Iterable[Any]],
        *,
        item_key: Callable[[Any], Any] | None = None,
        batch_size: int = 64,
        name: str | None = None,
        version: str = "0",
        ignore: Iterable[str] = (),
        progress: bool | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        _check_batch_size(batch_size)
        self.fn = fn
        module = "__main__" if fn.__module__ == "__mp_main__" else fn.__module__
        self.name = name or f"{module}.{fn.__qualname__}"
        self.version = str(version)
        self.batch_size = batch_size
        self.item_key = item_key
        self.progress = progress
        self._options = dict(options or {})
        self._sig = _task._Signature(fn, ignore, ())
        if not self._sig.names:
            raise TypeError(
                f"{fn.__qualname__} takes no parameters: a batch task's first parameter is the "
                "list of items"
            )
        self._items_param = self._sig.names[0]
        if self._items_param in self._sig.ignore:
            raise TypeError(f"the items parameter {self._items_param!r} cannot be ignored")
        _core.register_version(self.name, self.version)

    def __repr__(self) -> str:
        return f"<runcache.batch_task {self.name} v{self.version} batch_size={self.batch_size}>"

    def options(self, **options: Any) -> "BatchTask":
        """This task with per-call options, e.g. ``embed.options(mode="force")(texts)``;
        ``batch_size`` may be given here too."""
        view = BatchTask.__new__(BatchTask)
        view.__dict__.update(self.__dict__)
        if "batch_size" in options:
            view.batch_size = _check_batch_size(options.pop("batch_size"))
        if "progress" in options:
            view.progress = options.pop("progress")
        _config._check(options)
        view._options = {**self._options, **options}
        return view

    # -- keys ----------------------------------------------------------------------------

    def _shared_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The bound arguments other than the items (the items parameter bound to None)."""
        return self._sig.bind((None, *args), kwargs)

    def _item_args(self, shared: dict[str, Any], item: Any) -> dict[str, Any]:
        keyed = self.item_key(item) if self.item_key is not None else item
        return {**shared, self._items_param: keyed}

    def _item_keys(self, items: list[Any], shared: dict[str, Any]) -> list[str]:
        """The entry key of each item, with the other arguments ``shared``."""
        return [
            _core.compute_key(self.name, self.version, self._item_args(shared, item))
            for item in items
        ]

    def key(self, item: Any, *args: Any, **kwargs: Any) -> str:
        """The entry key (64 hex digits) of one item, with these other arguments."""
        bound = self._item_args(self._shared_args(args, kwargs), item)
        return _core.compute_key(self.name, self.version, bound)

    def entry(self, item: Any, *args: Any, **kwargs: Any) -> Entry:
        """A handle on the entry of one item (which may not exist yet)."""
        store = _config.open_store(_config.current(self._options))
        return Entry(store, self.key(item, *args, **kwargs), self.name)

    def explain(self, item: Any, *args: Any, **kwargs: Any) -> Explanation:
        """Why one item is (or is not) a hit: the nearest stored entries of this task."""
        store = _config.open_store(_config.current(self._options))
        bound = self._item_args(self._shared_args(args, kwargs), item)
        return explain_call(store, self.name, self.version, bound)

    def clear(self) -> int:
        """Deletes every entry of this task; returns how many were deleted."""
        return _task._clear(_config.open_store(_config.current(self._options)), self.name)

    # -- calling -------------------------------------------------------------------------

    def __call__(self, items: Iterable[Any], *args: Any, **kwargs: Any) -> list[Any]:
        """The results of every item, in input order (a list, for any iterable of items)."""
        return self._call(list(items), args, kwargs)

    def _call(
        self,
        items: list[Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        store: Any = None,
        mode: str | None = None,
    ) -> list[Any]:
        opts = _config.current(self._options)
        mode = mode or opts.get("mode", "cached")
        if mode == "off":
            out: list[Any] = []
            for start in range(0, len(items), self.batch_size):
                positions = list(range(start, min(start + self.batch_size, len(items))))
                out.extend(self._run_batch(items, positions, len(items), args, kwargs))
            return out
        shared = self._shared_args(args, kwargs)
        keys = self._item_keys(items, shared)
        # Equal items share an entry: each distinct key is resolved once.
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        distinct = list(first.values())
        if not distinct:
            return []

        def doc(d: int) -> str:
            bound = self._item_args(shared, items[distinct[d]])
            return _core.key_document(self.name, self.version, bound)

        bar = _ItemProgress(self.name, len(distinct), self.progress)

        def compute(positions: list[int]) -> tuple[list[Any], str]:
            at = [distinct[p] for p in positions]
            bar.start()
            try:
                values = self._run_batch(items, at, len(items), args, kwargs)
            except BaseException:
                bar.failed(len(at))
                raise
            bar.computed(len(at))
            metadata = {"function": f"{self.fn.__module__}.{self.fn.__qualname__}"}
            return values, json.dumps(metadata)

        store = store if store is not None else _config.open_store(opts)
        return self._resolve(store, mode, opts, items, keys, distinct, doc, compute, bar)

    def _resolve(
        self,
        store: Any,
        mode: str,
        opts: dict[str, Any],
        items: list[Any],
        keys: list[str],
        distinct: list[int],
        doc: Callable[[int], str],
        compute: Callable[[list[int]], tuple[list[Any], str]],
        bar: "_ItemProgress",
    ) -> list[Any]:
        """The engine's batched call on ``store``; results in the order of ``keys``."""
        try:
            values = _core.call_batch(
                store,
                self.name,
                self.version,
                mode,
                [keys[i] for i in distinct],
                doc,
                compute,
                self.batch_size,
                mmap=opts.get("mmap", True),
                wait_timeout=opts.get("wait_timeout"),
            )
        except _task.Terminated:
            _task._end_if_terminated_outside()
            raise
        finally:
            bar.close()
        by_key = {keys[i]: v for i, v in zip(distinct, values)}
        return [by_key[k] for k in keys]

    # -- sweeps ----------------------------------------------------------------------------

    def map(
        self,
        items: Iterable[Any],
        *args: Any,
        executor: Any = None,
        progress: bool | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        """The results of every item, in input order, with the batches computed by
        ``executor``'s workers (default ``runcache.Local()``; ``runcache.Inline()`` computes
        here, like a plain call). Each sweep item is one batch of ``batch_size`` items; a worker
        computes only the items of its batch without an entry, commits each as its own entry,
        and records the batch as done (a small entry of this task). A failed batch raises
        :class:`runcache.SweepError` once the sweep has settled; items of other batches stay."""
        items = list(items)
        if executor is None:
            executor = _executors.Local()
        if isinstance(executor, _executors.Inline):
            return self._call(items, args, kwargs)
        _executors.check(executor)
        opts = _config.current(self._options)
        chunks = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        calls = [((chunk, *args), dict(kwargs)) for chunk in chunks]
        handle, _ = _sweep.submit(self, calls, executor, opts)
        if handle is not None:
            handle.results(errors="raise", progress=progress, mmap=opts.get("mmap", True))
        # Every item has its entry now: one batched lookup loads them all.
        return self._call(items, args, kwargs)

    @property
    def _key_version(self) -> str:
        return self.version

    @property
    def resources(self) -> dict[str, float]:
        return {}

    def _runner(self) -> dict[str, Any]:
        return _task.Task._runner(self)  # type: ignore[arg-type]

    def _key_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The key of one sweep item (a batch): its items' keys, in order."""
        chunk, rest = args[0], args[1:]
        item_keys = self._item_keys(chunk, self._shared_args(rest, kwargs))
        return _core.compute_key(self.name, self.version, {"batch of items": item_keys})

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
        """A worker's claim of one batch of a sweep (see ``_core.Store.claim``)."""

        def doc() -> str:
            if self._key_of(args, kwargs) != key:
                raise RuntimeError(
                    f"batch key mismatch for {self.name}: the worker's code keys the items "
                    "differently from the submitter's"
                )
            return json.dumps(
                {"namespace": self.name, "version": self.version, "args": {"batch": len(args[0])}}
            )

        def compute() -> tuple[Any, list[tuple[str, str]], str]:
            with capture():
                values = self._call(list(args[0]), args[1:], kwargs, store, record["mode"])
            return len(values), [], json.dumps({"batch of items": len(values)})

        return _task._claim_item(
            store, self.name, self.version, record, key, doc, compute, log_path
        )

    def _run_batch(
        self,
        items: list[Any],
        at: list[int],
        total: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> list[Any]:
        """Calls the function on the items at positions ``at`` and checks it returned one
        result per item; an exception gets a note naming the batch."""
        batch = [items[i] for i in at]
        try:
            with _task._computation():
                values = list(self.fn(batch, *args, **kwargs))
            if len(values) != len(batch):
                raise ValueError(
                    f"batch task {self.name}: {self.fn.__qualname__} returned {len(values)} "
                    f"results for a batch of {len(batch)} items; it must return exactly one "
                    "result per item, in order. Nothing was stored for this batch"
                )
        except BaseException as e:
            e.add_note(
                f"runcache: raised by {self.name} on {_describe(at, total)}; nothing was "
                "stored for its items (results of earlier batches are kept)"
            )
            raise
        return values


class _ItemProgress:
    """The progress of one batch call, in items: shown once a first batch is computed (a call
    whose items are all stored shows nothing), with the summary line at the end."""

    def __init__(self, name: str, total: int, enabled: bool | None) -> None:
        self.name, self.total, self.enabled = name, total, enabled
        self.bar: _progress.Progress | None = None
        self.status = types.SimpleNamespace(
            done=0, completed=0, cached=0, running=0, failed=0, queued=total, cancelled=0
        )

    def start(self) -> None:
        if self.bar is None and self.enabled is not False:
            self.bar = _progress.Progress(self.name, self.total, self.enabled)

    def computed(self, n: int) -> None:
        self.status.completed += n
        self._show()

    def failed(self, n: int) -> None:
        self.status.failed += n
        self._show()

    def _show(self) -> None:
        st = self.status
        # Items neither computed nor failed yet are loaded from the store or still queued; the
        # engine tells which only at the end.
        st.done = st.completed + st.failed
        st.queued = self.total - st.done
        if self.bar is not None:
            self.bar.update(st)

    def close(self) -> None:
        if self.bar is None:
            return
        st = self.status
        if not st.failed:
            st.cached, st.queued = self.total - st.completed, 0
            st.done = self.total
        self.bar.update(st)
        self.bar.close()


def _check_batch_size(size: Any) -> int:
    """``size`` if it is a positive integer; else a ValueError saying what to give."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"batch_size={size!r}: give a positive integer, e.g. 64")
    return size


def _describe(at: list[int], total: int) -> str:
    """'the batch of 3 items at positions 0, 1, 2 of 10': names a batch in messages."""
    shown = ", ".join(str(i) for i in at[:8]) + (", ..." if len(at) > 8 else "")
    return f"the batch of {len(at)} item(s) at position(s) {shown} of {total}"


#: What a batch task's function carries of its API (a task's, less ``submit``).
_BATCH_TASK_API = tuple(a for a in _task._TASK_API if a != "submit")


def batch_task(
    fn: Callable[..., Iterable[Any]] | None = None,
    *,
    item_key: Callable[[Any], Any] | None = None,
    batch_size: int = 64,
    name: str | None = None,
    version: str | int = "0",
    ignore: Iterable[str] = (),
    progress: bool | None = None,
    **options: Any,
) -> Any:
    """Makes ``fn(items, *args, **kwargs)`` a batch task: results are cached per item and only
    the items without an entry are computed, ``batch_size`` at a time (one call of ``fn`` per
    batch, which must return one result per item, in order).

    ``item_key``: what of an item enters its key (default: the item itself), e.g.
    ``lambda doc: doc.id``; the other arguments enter every item's key. ``name``, ``version``,
    ``ignore`` and the keyword options (store, mode, mmap, wait_timeout) are as for
    :func:`runcache.task`; ``progress``: a bar counting items once a batch is computed (default:
    in terminals and notebooks). Among concurrent callers each item is computed once.
    """
    _config._check(options)

    def wrap(f: Callable[..., Iterable[Any]]) -> Callable[..., list[Any]]:
        t = BatchTask(
            f,
            item_key=item_key,
            batch_size=batch_size,
            name=name,
            version=str(version),
            ignore=ignore,
            progress=progress,
            options=options,
        )
        return _task._as_function(t, _BATCH_TASK_API)

    return wrap(fn) if fn is not None else wrap
