"""no_hugepages: numpy's huge-page hint is off inside the block and restored after it, also when
blocks nest or overlap from several threads, and when the block raises."""

from __future__ import annotations

import threading

import pytest

from featurestore import numpy_memory
from featurestore.numpy_memory import no_hugepages

switch = numpy_memory._switch
pytestmark = pytest.mark.skipif(switch is None, reason="this numpy has no huge-page switch")


def _state() -> bool:
    assert switch is not None
    now = bool(switch(True))
    switch(now)
    return now


@pytest.mark.parametrize("initial", [True, False])
def test_restored_after_nested_and_failing_blocks(initial: bool) -> None:
    assert switch is not None
    before = switch(initial)
    try:
        with no_hugepages():
            assert _state() is False
            with no_hugepages():
                assert _state() is False
            assert _state() is False  # the inner block does not restore early
        assert _state() is initial
        with pytest.raises(RuntimeError), no_hugepages():
            raise RuntimeError("boom")
        assert _state() is initial
    finally:
        switch(before)


def test_overlapping_threads_restore_once_last_out() -> None:
    assert switch is not None
    before = switch(True)
    try:
        inside, release = threading.Barrier(3), threading.Event()

        def worker() -> None:
            with no_hugepages():
                inside.wait()
                release.wait()

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        inside.wait()
        assert _state() is False
        release.set()
        for t in threads:
            t.join()
        assert _state() is True
    finally:
        switch(before)


def _faults_of_fresh_array(words: int) -> int:
    """Minor page faults taken to allocate and fill an array of ``words`` float64."""
    import resource

    import numpy as np

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(words)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del a
    return faults


@pytest.mark.skipif(numpy_memory._libc is None, reason="not glibc's malloc")
def test_freed_memory_is_reused_inside_the_block_and_returned_after() -> None:
    from featurestore.numpy_memory import reuse_freed_memory

    words = 8 << 20  # 64 MiB: above glibc's largest mmap threshold, so mapped afresh outside
    pages = words * 8 // 4096
    with no_hugepages():  # 4 KiB pages, so one fault per page when the memory is fresh
        with reuse_freed_memory():
            _faults_of_fresh_array(words)
            with reuse_freed_memory():  # nested: the inner block's end changes nothing
                pass
            assert _faults_of_fresh_array(words) < pages // 10  # the freed pages, reused
        assert _faults_of_fresh_array(words) > pages // 2  # mapped afresh again
