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
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

__all__ = ["no_hugepages"]

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
