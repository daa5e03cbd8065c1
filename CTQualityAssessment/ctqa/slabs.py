"""Slab-wise processing of (z, y, x) volumes: bounded memory, threads (NumPy and scipy.ndimage release the GIL)."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

ProgressCallback = Callable[[float, str], None]
Result = TypeVar("Result")

SLAB_SLICES = 8
#: Threads of the slab pools: CTQA_THREADS when set (a batch worker's share of the CPUs), else up to 4 of the cores.
WORKER_THREADS = max(1, int(os.environ.get("CTQA_THREADS") or min(4, os.cpu_count() or 1)))


def run_over_slabs(
    work: Callable[[int, int], None],
    depth: int,
    progress: ProgressCallback | None = None,
    span: tuple[float, float] = (0.0, 1.0),
    message: str = "",
) -> None:
    """Call work(start, stop) for consecutive slabs of SLAB_SLICES slices in a thread pool.

    progress(fraction, message) is called as slabs finish, fraction running over span.
    """
    slabs = [(start, min(start + SLAB_SLICES, depth)) for start in range(0, depth, SLAB_SLICES)]
    with ThreadPoolExecutor(max_workers=WORKER_THREADS) as pool:
        pending = [pool.submit(work, start, stop) for start, stop in slabs]
        for done, future in enumerate(pending, 1):
            future.result()
            if progress is not None:
                progress(span[0] + (span[1] - span[0]) * done / len(slabs), message)


def map_slabs_in_order(
    work: Callable[[int, int], Result], depth: int, slices: int = SLAB_SLICES
) -> Iterator[tuple[int, Result]]:
    """(start, work(start, stop)) for consecutive slabs of `slices` slices, computed in a thread pool and yielded in
    slab order; at most 2 slabs per thread are computed ahead of the caller, so memory stays that of a few slabs."""
    with ThreadPoolExecutor(max_workers=WORKER_THREADS) as pool:
        pending: deque = deque()
        for start in range(0, depth, slices):
            pending.append((start, pool.submit(work, start, min(start + slices, depth))))
            if len(pending) >= 2 * WORKER_THREADS:
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()
