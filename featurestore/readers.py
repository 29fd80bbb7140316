"""Readers versus garbage collection: a file is never removed while someone may still read it.

``featurestore gc`` removes artifact files no current or pinned version references. A reader
(a retrieval, an online lookup, a materialize) that resolved an artifact row a moment before gc
deleted that row may still be opening or reading the file. The protocol that keeps it safe is a
grace period, as in read-copy-update, built on ``fcntl.flock`` and two lock files under
``data/``:

- ``data/.fs-gc-epoch`` holds the current epoch, 0 or 1 (a missing file means 0);
- a reader takes a *shared* lock on ``data/.fs-readers-<epoch>.lock`` before it reads any
  artifact row, checks that the epoch did not change meanwhile (else it moves to the new one),
  and keeps the lock until it is done reading files;
- gc first deletes the rows (one registry transaction), then switches the epoch and takes an
  *exclusive* lock on the old epoch's file. That waits exactly for the readers that started
  before the switch, the only ones that can hold a deleted row. Readers arriving meanwhile lock
  the new epoch's file, so a stream of readers cannot starve gc and a waiting gc holds up no
  reader (one that read the old epoch just before the switch waits only while gc unlinks).
  Only then does gc unlink the files.

flock needs no write access: a reader on a read-only store opens the existing lock file read-only.
Both lock files are made before the store's first artifact is written (``ensure_lock_files``), so
a reader of a store that has artifacts always finds them (a reader that finds none creates it). The
kernel drops a lock when its process dies, so a crashed reader never blocks gc. On systems
without ``fcntl`` (Windows) the locks are no-ops.

``gc`` keeps the writers' lock (``artifacts.writers_lock``) shared from deleting rows to
unlinking files, as any writer with a file in flight does, so ``doctor`` (which takes it
exclusively) never sees a file whose row is gone as an orphan. Hence the one rule that rules
out deadlocks: never wait for the writers' lock *exclusively* while holding a reader's lock
(a reader may take it shared: ``materialize`` does, to record its artifacts).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

EPOCH_FILE = ".fs-gc-epoch"
GC_LOCK_FILE = ".fs-gc.lock"
_MAX_EPOCH_RETRIES = 100

P = ParamSpec("P")
R = TypeVar("R")


def readers_lock_path(root: Path, epoch: int) -> Path:
    return root / "data" / f".fs-readers-{epoch}.lock"


def current_epoch(root: Path) -> int:
    """The epoch readers lock now (0 when gc never ran)."""
    try:
        return int((root / "data" / EPOCH_FILE).read_text().strip() or 0) & 1
    except (OSError, ValueError):
        return 0


def _open_lock(path: Path) -> int | None:
    """A descriptor to flock ``path``: created when possible, else opened read-only, else None."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        pass
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def ensure_lock_files(root: Path) -> None:
    """Create both readers' lock files (before the store's first artifact is written), so a
    reader never has to create one, and a reader of a read-only store finds them."""
    for epoch in (0, 1):
        path = readers_lock_path(root, epoch)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))


@contextmanager
def reading(root: Path) -> Iterator[None]:
    """Hold a reader's lock: no artifact file this process resolves meanwhile is removed.

    Enter it before reading artifact rows from the registry and leave it when the files are
    read. Cheap (two opens and a flock) and never waits for another reader; it waits only while
    gc is unlinking files, which is quick.
    """
    if fcntl is None or not (root / "data").is_dir():
        yield  # no data directory yet: no artifact to protect
        return
    fd = None
    for _ in range(_MAX_EPOCH_RETRIES):
        epoch = current_epoch(root)
        fd = _open_lock(readers_lock_path(root, epoch))
        if fd is None:
            break
        fcntl.flock(fd, fcntl.LOCK_SH)
        if current_epoch(root) == epoch:
            break
        os.close(fd)  # gc switched epochs while we locked: follow it
        fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock


def reads_artifacts(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a function whose first argument is a store (or has ``.root``, or is ``self``
    of a ``FeatureStore``) so that it runs inside ``reading(store.root)``."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        store: Any = args[0]
        with reading(store.root):
            return fn(*args, **kwargs)

    return wrapper


@contextmanager
def gc_mutex(root: Path) -> Iterator[None]:
    """One gc at a time per store (two would switch epochs under each other)."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(data / GC_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_epoch(root: Path, epoch: int) -> None:
    path = root / "data" / EPOCH_FILE
    tmp = path.with_name(EPOCH_FILE + ".new")
    with open(tmp, "w") as fh:
        fh.write(f"{epoch}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)  # readers see the old epoch or the new one, never a torn file


@contextmanager
def grace_period(root: Path, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Wait until every reader that started before now has finished; hold that until exit.

    Call it (under ``gc_mutex``) after the rows of the files to remove were deleted and
    committed; unlink the files inside it. ``on_wait`` is called once if a reader makes gc wait.
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    ensure_lock_files(root)  # the new epoch's file exists before readers are sent to it
    old = current_epoch(root)
    _write_epoch(root, 1 - old)
    fd = os.open(readers_lock_path(root, old), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
