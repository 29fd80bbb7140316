"""Large short-lived numpy temporaries without transparent huge pages.

numpy asks the kernel for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on every array of
4 MiB or more. Where the kernel's THP ``defrag`` setting is ``madvise`` (a common default) that
request makes the first touch of each 2 MiB of a new array wait for memory compaction when no
huge page is free, which on a busy machine with a full page cache is most of the time. The
window engine builds a dozen arrays of ``n`` rows that it reads once or twice, front to back:
huge pages buy them little, and the compaction stalls cost more than the whole Parquet read
(measured at 10M rows: 0.3-0.4 s CPU of 1.3 s per call in a fresh process).

``no_hugepages()`` turns the hint off for the duration of a block and restores numpy's setting
afterwards; nested and concurrent blocks are counted, so the last one out restores it. Where
numpy has no such switch it does nothing.

Without huge pages every 4 KiB of a fresh array is one page fault (2-3 us each on a busy
machine), and glibc's malloc serves every array above its mmap threshold (at most 32 MiB) with a
fresh ``mmap`` and gives it back with ``munmap`` when it is freed: at 50M rows the engine's
5M-row temporaries (40 MB each) are each faulted in anew, 1.2M faults, 3-4 s of system time of
8 s. ``reuse_freed_memory()`` has glibc serve large blocks from its heap and keep what is freed
there for the duration of a block, so a temporary reuses the pages of the one freed before it;
at the end the freed pages go back to the system (``malloc_trim``). Elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

__all__ = ["no_hugepages", "reuse_freed_memory"]

_lock = threading.Lock()
_depth = 0
_saved = True
_switch = getattr(getattr(getattr(np, "_core", None), "multiarray", None),
                  "_set_madvise_hugepage", None)


@contextmanager
def no_hugepages() -> Iterator[None]:
    """numpy's huge-page hint off inside the block (for every thread), restored after it."""
    global _depth, _saved
    if _switch is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _saved = bool(_switch(False))
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _switch(_saved)


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_libc = _glibc()
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
# What glibc starts with for the mmap count; the trim threshold after the block is twice the
# largest mmap threshold glibc would adjust itself to (32 MiB), where a numpy-heavy process ends
# up anyway. (Any mallopt freezes glibc's own adjustment of both thresholds.)
_MMAP_MAX_DEFAULT, _TRIM_AFTER = 65536, 64 << 20
_heap_depth = 0


@contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Inside the block glibc's malloc takes large blocks from its heap and does not return
    freed memory to the system (for every thread using malloc); after the last concurrent
    block ends the freed memory is returned (``malloc_trim``) and large blocks are mapped
    again. Without glibc it does nothing."""
    global _heap_depth
    if _libc is None:
        yield
        return
    with _lock:
        if _heap_depth == 0:
            _libc.mallopt(_M_MMAP_MAX, 0)
            _libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
        _heap_depth += 1
    try:
        yield
    finally:
        with _lock:
            _heap_depth -= 1
            if _heap_depth == 0:
                _libc.mallopt(_M_MMAP_MAX, _MMAP_MAX_DEFAULT)
                _libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_AFTER)
                _libc.malloc_trim(0)
