"""searchsorted_runs equals numpy.searchsorted: sorted, nearly sorted and shuffled needles, ties,
needles outside the array, on inputs long enough for many runs (so the run bounds and the search
within them are both exercised) and on short ones (one plain search)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore import sortedsearch
from featurestore.sortedsearch import searchsorted_runs


@pytest.mark.parametrize("order", ["sorted", "nearly", "shuffled", "descending"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_many_runs_equal_numpy(order: str, side: str) -> None:
    rng = np.random.default_rng(len(order) + len(side))
    a = np.sort(rng.integers(0, 50_000, 200_000))  # many ties
    v = np.sort(rng.integers(-100, 50_100, 10 * sortedsearch._RUN + 17))
    if order == "nearly":  # increasing by blocks, shuffled inside each
        v = np.concatenate([rng.permutation(b) for b in np.array_split(v, 300)])
    elif order == "shuffled":
        v = rng.permutation(v)
    elif order == "descending":
        v = v[::-1].copy()
    got = searchsorted_runs(a, v, side)
    assert got.dtype == np.int64
    assert np.array_equal(got, np.searchsorted(a, v, side=side))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-5, 5), max_size=60), st.lists(st.integers(-7, 7), max_size=80),
       st.sampled_from(["left", "right"]), st.integers(1, 4))
def test_any_needles_equal_numpy(a, v, side, run) -> None:  # type: ignore[no-untyped-def]
    arr, needles = np.sort(np.array(a, dtype=np.int64)), np.array(v, dtype=np.int64)
    old = sortedsearch._RUN
    sortedsearch._RUN = run  # tiny runs: many of them even here
    try:
        got = searchsorted_runs(arr, needles, side)
    finally:
        sortedsearch._RUN = old
    assert np.array_equal(got, np.searchsorted(arr, needles, side=side))
