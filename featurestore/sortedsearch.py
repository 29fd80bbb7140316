"""Binary searches of many nearly sorted needles into one large sorted array.

``numpy.searchsorted`` searches every needle over the whole array: ``log2(n)`` dependent probes
(26 at 50M rows), the first ones far apart. When the needles come in increasing order (the
window engine's do: query rows in (segment, cutoff) order), each run of ``_RUN`` consecutive
needles lands in a short stretch of the array, found by two searches for the run's smallest and
largest needle; the run is then searched within that stretch only, which is short (about 15
probes at 50M rows and 5M needles) and stays in cache. Measured at 50M rows / 5M needles: 0.29
-> 0.20 s CPU per search.
"""

from __future__ import annotations

import numpy as np

__all__ = ["searchsorted_runs"]

_RUN = 4096  # needles per run: the Python step per run costs ~4 us, far below its searches


def searchsorted_runs(a: np.ndarray, v: np.ndarray, side: str = "left") -> np.ndarray:
    """Exactly ``numpy.searchsorted(a, v, side)`` (int64) for a sorted ``a`` and any ``v``;
    fast when ``v`` is nearly increasing (otherwise about as fast as ``numpy.searchsorted``).

    Every needle ``x`` of a run lies between the run's smallest and largest needle, so its
    answer lies between theirs, ``[l, h]``: every element before ``l`` counts for ``x`` and
    none from ``h`` on, hence the answer is ``l`` plus the answer within ``a[l:h]``."""
    m = len(v)
    if m <= 2 * _RUN:
        return np.searchsorted(a, v, side=side).astype(np.int64, copy=False)  # type: ignore[call-overload]
    starts = np.arange(0, m, _RUN)
    lows = np.searchsorted(a, np.minimum.reduceat(v, starts), side=side).tolist()  # type: ignore[call-overload]
    highs = np.searchsorted(a, np.maximum.reduceat(v, starts), side=side).tolist()  # type: ignore[call-overload]
    out = np.empty(m, dtype=np.int64)
    for s, lo, hi in zip(starts.tolist(), lows, highs, strict=True):
        part = out[s:s + _RUN]
        part[:] = a[lo:hi].searchsorted(v[s:s + _RUN], side=side)  # type: ignore[call-overload]
        part += lo
    return out
