"""File checksums, and a cache of verified ones so repeat reads skip the rehash.

Every artifact is checked against its recorded sha256 before a value from it is served. Hashing
a large artifact costs about a second per GB, so a successful check is remembered: an empty
marker file in the *user's* cache folder (``$FEATURESTORE_CACHE_DIR``, else
``$XDG_CACHE_HOME/featurestore``, else ``~/.cache/featurestore``), named by a hash of

    device, inode, size, mtime (ns), ctime (ns), expected checksum

A marker therefore outlives the process that wrote it, and works on a store the user can only
read (nothing is written under the store root). Any write to the file changes its ctime, which
no user can set back, and a replaced or restored file has a new inode, so a marker can never
vouch for bytes that were not hashed. A deleted artifact (``featurestore gc``) simply leaves a
marker that matches nothing. ``FEATURESTORE_CACHE_DIR=`` (empty) keeps markers in memory only.

Within one ``hashing_once`` block (``doctor``, ``artifacts --verify``: they trust no marker) a
file is hashed once however many registry rows name it: a column view may share its source
snapshot's file as a hard link, the same inode under two names.

Racy files: file times have a coarse granularity (a clock tick, or a second or two on some
file systems), so a write landing in the same tick as the last one would not change ctime. A
check is remembered only when the file's last change is more than ``RACY_SECONDS`` older than
the moment hashing started, so a later write is always seen. (The same problem and fix as Git's
"racily clean" index entries.) Consequence: the first read soon after an artifact is written
hashes it; the markers start to help from the next read on.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

CACHE_ENV = "FEATURESTORE_CACHE_DIR"
RACY_SECONDS = 2.0
_CHUNK = 4 << 20
_memory: set[str] = set()
_disk_failed: set[Path] = set()
# Answers of this ``hashing_once`` block, by the cache key (inode, size, times, checksum).
_block: ContextVar[dict[str, str | None] | None] = ContextVar("featurestore_hashed", default=None)


@contextmanager
def hashing_once() -> Iterator[None]:
    """Within the block, ``checksum_mismatch`` hashes each file (inode, unchanged) at most once,
    even with ``trust_cache=False``: a check that distrusts old markers still need not read the
    same bytes twice because two registry rows name them."""
    token = _block.set({})
    try:
        yield
    finally:
        _block.reset(token)


def file_checksum(path: Path) -> str:
    """``sha256:<hex>`` of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def write_hashed(path: Path, write: Callable[[Path], None]) -> str:
    """Run ``write(path)`` and return the ``sha256:<hex>`` of the file it wrote, hashing the
    bytes as they land instead of reading the whole file again afterwards.

    A thread follows the file while the writer (which releases the GIL) appends to it; once
    the writer returns, the rest is read. Correct for writers that only append, as Parquet
    writers do (magic, row groups, footer; never a seek back). Were that ever not so, the
    recorded checksum would not match the file and its first read would refuse it: never a
    silently wrong artifact.
    """
    digest = hashlib.sha256()
    done = threading.Event()
    failed: list[BaseException] = []

    def follow() -> None:
        try:
            with open(path, "rb") as fh:
                while True:
                    finished = done.is_set()  # read before reading: then nothing is missed
                    chunk = fh.read(_CHUNK)
                    if chunk:
                        digest.update(chunk)
                    elif finished:
                        return
                    else:
                        time.sleep(0.005)
        except BaseException as exc:  # reported to the caller below
            failed.append(exc)

    path.touch()
    thread = threading.Thread(target=follow, name="featurestore-hash", daemon=True)
    thread.start()
    try:
        write(path)
    finally:
        done.set()
        thread.join()
    if failed:
        raise failed[0]
    return "sha256:" + digest.hexdigest()


def cache_dir() -> Path | None:
    """Where verified-checksum markers live, or None for memory only."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return Path(configured) if configured.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "featurestore"


def _key(st: os.stat_result, expected: str) -> str:
    ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{expected}"
    return hashlib.sha256(ident.encode()).hexdigest()


def _marker(key: str) -> Path | None:
    base = cache_dir()
    return None if base is None else base / "verified" / key[:2] / key


def _is_known(key: str) -> bool:
    if key in _memory:
        return True
    marker = _marker(key)
    try:
        return marker is not None and marker.exists()
    except OSError:  # a cache folder this user may not read (HOME of another user, ...)
        return False


def _remember(key: str) -> None:
    _memory.add(key)
    marker = _marker(key)
    if marker is None or marker.parents[2] in _disk_failed:
        return
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:
        # An unwritable cache (read-only home, a service user) only costs speed.
        _disk_failed.add(marker.parents[2])


def checksum_remembered(path: Path) -> str:
    """``file_checksum(path)``, remembered as verified (as ``checksum_mismatch`` does) when the
    file did not change while it was hashed and is not racy: a file hashed on the way in is not
    hashed again by the first check after it."""
    before = os.stat(path)
    started = time.time()
    actual = file_checksum(path)
    after = os.stat(path)
    if (_key(after, actual) == _key(before, actual)
            and started - max(after.st_mtime, after.st_ctime) > RACY_SECONDS):
        _remember(_key(after, actual))
    return actual


def checksum_mismatch(path: Path, expected: str, *, trust_cache: bool = True) -> str | None:
    """None when ``path`` hashes to ``expected``, else the checksum it does have.

    With ``trust_cache`` a remembered verification of this very file (same inode, size, times)
    answers without reading it. ``FileNotFoundError`` propagates.
    """
    before = os.stat(path)
    key = _key(before, expected)
    if trust_cache and _is_known(key):
        return None
    block = _block.get()
    if block is not None and key in block:
        return block[key]
    started = time.time()
    actual = file_checksum(path)
    after = os.stat(path)
    unchanged = _key(after, expected) == key
    if block is not None and unchanged:
        block[key] = None if actual == expected else actual
    if actual != expected:
        return actual
    last_change = max(after.st_mtime, after.st_ctime)
    if unchanged and started - last_change > RACY_SECONDS:
        _remember(key)
    return None
