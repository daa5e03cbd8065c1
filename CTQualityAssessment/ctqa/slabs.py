"""Slab-wise processing of (z, y, x) volumes: bounded memory, threads (NumPy and scipy.ndimage release the GIL)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

ProgressCallback = Callable[[float, str], None]

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
