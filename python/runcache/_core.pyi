"""Type stubs of ``runcache._core``, the Rust extension (crates/runcache-py)."""

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypedDict, final

__version__: Final[str]
KEY_FORMAT_VERSION: Final[int]

# -- exceptions (errors.rs) --------------------------------------------------------------------

class RuncacheError(RuntimeError):
    """Base class of runcache's errors."""

class StoreError(RuncacheError):
    """The store cannot be opened, read or written (the message says why and what to do)."""

class CorruptEntryError(StoreError):
    """A stored entry is damaged; it is treated as missing and recomputed."""

class RecordedFailure(RuncacheError):
    """A computation failed earlier and its failure is recorded; use mode='retry' to recompute.

    ``args`` is ``(message, namespace, key, error_type, error_message)``."""

# -- store (store.rs) --------------------------------------------------------------------------

@final
class Store:
    """A handle on one store."""

    def __new__(
        cls, location: str, sync: bool = False, lease_ttl: float | None = None
    ) -> Store: ...
    @property
    def location(self) -> str:
        """Where the store lives."""

    def scratch_dir(self) -> Path:
        """Scratch directory on the store's filesystem (artifacts are written there, then moved)."""

    def call(
        self,
        namespace: str,
        version: str,
        mode: str,
        key: str,
        doc: Callable[[], str],
        compute: Callable[[], tuple[Any, list[tuple[str, str]], str | None]],
        mmap: bool = True,
        wait_timeout: float | None = None,
        source_hash: str | None = None,
        interrupt_types: tuple[type[BaseException], ...] | None = None,
    ) -> tuple[Any, bool, bool]:
        """The compute-once call. Returns ``(value, computed, code_changed)``.

        ``doc()`` returns the key document as JSON text (called only on a miss); ``compute()``
        returns ``(value, artifacts, metadata_json)`` with artifacts as ``(name, path)`` pairs."""

    def manifest(self, key: str) -> str | None:
        """The manifest of ``key`` as JSON text, or None."""

    def load(self, key: str, mmap: bool = True) -> Any:
        """Loads the completed entry ``key``."""

    def delete(self, key: str) -> bool:
        """Deletes an entry; returns whether it existed."""

    def entries(self, namespace: str | None = None) -> list[str]:
        """Manifests (JSON text) of every entry, or of one namespace."""

    def artifact_file(self, key: str, name: str) -> Path:
        """A verified local file holding artifact ``name`` of entry ``key``."""

    def gc(
        self,
        max_size: int | None = None,
        older_than: float | None = None,
        dry_run: bool = False,
        min_idle: float = 60.0,
    ) -> str:
        """Evicts least-recently-used entries; returns a JSON report."""

    def claim(
        self,
        namespace: str,
        version: str,
        mode: str,
        key: str,
        sweep_id: str,
        since_unix_ms: int,
        doc: Callable[[], str],
        compute: Callable[[], tuple[Any, list[tuple[str, str]], str | None]],
        log_path: str | None = None,
        interrupt_types: tuple[type[BaseException], ...] | None = None,
    ) -> str:
        """A worker's claim of one sweep item: ``done:<status>``, ``busy``, ``cancelled`` or
        ``computed:<status>``."""

    def put_value(self, value: Any) -> str:
        """Stores an object outside any entry; returns its blobs as JSON ``[[digest, size], ...]``."""

    def get_value(self, blobs: str) -> Any:
        """Loads an object stored by ``put_value``."""

    def statuses(
        self, keys: list[str], mode: str, sweep_id: str, since_unix_ms: int
    ) -> list[bool]:
        """Whether each key's entry settles an item of sweep ``sweep_id`` (submitted at
        ``since_unix_ms``)."""

    def item_states(
        self, keys: list[str], mode: str, sweep_id: str, since_unix_ms: int
    ) -> list[str]:
        """Each item's state: pending, running, completed, cached, failed, interrupted or
        cancelled."""

    def cancel_items(
        self, keys: list[str], mode: str, sweep_id: str, since_unix_ms: int
    ) -> list[bool]:
        """Cancels the items that have not started; for each key, whether it was cancelled."""

    def cancelled_keys(self, sweep_id: str) -> list[str]:
        """The keys of the cancelled items of a sweep."""

    def save_sweep(self, record: str) -> None:
        """Creates or replaces a sweep record (JSON)."""

    def save_sweep_keys(self, keys: list[str]) -> str:
        """Stores a sweep's item keys; returns the digest of the list."""

    def sweep(self, id: str) -> str:
        """The record of sweep ``id`` (JSON); ValueError if there is none."""

    def sweeps(self) -> list[str]:
        """Every sweep record (JSON), oldest first."""

    def delete_sweep(self, id: str) -> bool:
        """Deletes a sweep record and its cancellations (its entries stay)."""

    def sweep_keys(self, id: str) -> list[str]:
        """The item keys of a sweep, in order."""

    def sweep_status(self, id: str, all_items: bool = False) -> str:
        """Item counts of a sweep by state (JSON)."""

def register_version(namespace: str, version: str) -> None:
    """Records the current version of a task namespace (called when a task is defined)."""

def registered_version(namespace: str) -> str | None:
    """The version registered for a task namespace in this process, if any."""

# -- blobs (blob.rs) ---------------------------------------------------------------------------

@final
class HitPath:
    """A task's hit path as one native call: the stored result of a call the store settles
    without computing, else the ``miss`` marker (the Python call path then does the rest)."""

    def __init__(
        self,
        namespace: str,
        plan: tuple[list[str], dict[str, Any]] | None,
        bind: Callable[[tuple[Any, ...], dict[str, Any]], dict[str, Any]],
        shared: dict[str, Any],
        options: dict[str, Any],
        sticky_failures: bool,
        config: Any,
        miss: object,
    ) -> None: ...
    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> Any: ...

def config_changed() -> None:
    """Tells the hit paths that the process-wide options changed (called by ``configure()``)."""

class Blob:
    """One stored blob's bytes, read-only, exported through the buffer protocol."""

    @property
    def __runcache_digest__(self) -> bytes:
        """BLAKE3 of the bytes (32 raw bytes)."""

    @property
    def mapped(self) -> bool:
        """True if the bytes are a read-only memory map of the store's file."""

    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...

# -- hashing (hash/) ---------------------------------------------------------------------------

@final
class File:
    """Marks a path whose file *content* enters the key, not the path."""

    def __new__(cls, path: str | os.PathLike[str]) -> File: ...
    @property
    def path(self) -> Path:
        """The path."""

    def __fspath__(self) -> Path: ...

class _FileDigestCacheInfo(TypedDict):
    hits: int
    disk_hits: int
    reads: int

def compute_key(namespace: str, version: str, args: dict[str, Any]) -> str:
    """Key of a task call, as 64 hex digits. ``args`` maps argument names to values."""

def key_document(namespace: str, version: str, args: dict[str, Any]) -> str:
    """JSON text of what went into a key (large values as digests)."""

def value_digest(value: object) -> str:
    """Hex BLAKE3 of one value's canonical encoding."""

def encode_value(value: object) -> bytes:
    """The canonical bytes of one value."""

def file_digest(path: str | os.PathLike[str]) -> str:
    """Hex BLAKE3 of a file's content, remembered by (device, inode, size, mtime, ctime)."""

def file_digest_cache_info(clear: bool = False) -> _FileDigestCacheInfo:
    """Counters of the file digest cache; ``clear=True`` also forgets in-process digests."""

# -- the command line (cli.rs) -----------------------------------------------------------------

def cli_main(argv: Sequence[str]) -> int:
    """Runs the ``runcache`` command with ``argv`` (the arguments after the program name, like
    ``sys.argv[1:]``) and returns its exit code; never exits the interpreter."""

def run_command(
    store: Store,
    argv: Sequence[str],
    cwd: str,
    inputs: Sequence[str],
    outputs: Sequence[str],
    env: Sequence[str],
    version: str,
    name: str | None,
    mode: str,
    ttl: float | None,
    ignore_cwd: bool,
    hash_executable: bool,
    cache_failures: bool,
    stdout: str | None = None,
    stderr: str | None = None,
) -> tuple[int | None, int | None, bool, str]:
    """Runs a command through the cache (see `runcache.run`): `(exit_code, signal, replayed,
    key)`; stdout/stderr to those files when given, else to file descriptors 1 and 2."""
