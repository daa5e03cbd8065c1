"""Benchmark of the projection-domain dose simulation at 512^2 (prints slices/s per dose).

Goal (issue 3): >= 1 slice/s per dose on 2 CPU cores (>= 50 on a GPU). "single" simulates one dose per call (it
pays the projection and the I0 calibration each time); "set" simulates the whole dose set in one call and divides
by the number of reduced doses (the way ``ctqa-train simulate`` runs).

    python benchmarks/bench_simulation.py [--slices 2] [--views 720] [--kernel native] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from CTQualityTraining.projection import DEFAULT_DOSES, DEFAULT_VIEWS, KERNEL_NAMES, simulate

MAYO = Path(__file__).resolve().parents[2] / "shared" / "data" / "mayo_pairs"


def test_slices(count: int) -> tuple[np.ndarray, float, str]:
    """(count, 512, 512) HU and pixel mm: the Mayo full-dose slices when ../shared/data is there, else a phantom."""
    files = sorted(MAYO.glob("*_target.npy"))
    if files:
        hu = np.stack([np.load(files[k % len(files)]) * 4096.0 - 1024.0 for k in range(count)])
        return hu.astype(np.float32), 0.74, "Mayo L506 full-dose slices"
    yy, xx = np.mgrid[:512, :512]
    body = ((yy - 256) / 170.0) ** 2 + ((xx - 256) / 220.0) ** 2 < 1
    rng = np.random.default_rng(0)
    hu = np.where(body, 40.0, -1000.0) + 12.0 * rng.standard_normal((count, 512, 512))
    return hu.astype(np.float32), 0.74, "synthetic water ellipse with white noise"


def timed(**kwargs) -> float:
    start = time.perf_counter()
    simulate(**kwargs)
    if kwargs["device"] == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=2)
    parser.add_argument("--views", type=int, default=DEFAULT_VIEWS)
    parser.add_argument("--kernel", default="native", choices=KERNEL_NAMES)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    hu, pixel, what = test_slices(args.slices)
    common = dict(hu=hu, pixel_mm=pixel, kernels=(args.kernel,), views=args.views, device=args.device)
    print(
        f"{what}: {args.slices} x 512^2, {args.views} views, kernel {args.kernel}, {args.device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    timed(doses=(0.5,), **common)  # warm-up
    print(f"{'dose':>6} {'single: slices/s':>18}")
    for dose in DEFAULT_DOSES[1:]:
        print(f"{dose:>6.2f} {args.slices / timed(doses=(dose,), **common):>18.2f}")
    seconds = timed(doses=DEFAULT_DOSES, **common)
    reduced = len(DEFAULT_DOSES) - 1
    print(f"set {DEFAULT_DOSES}: {seconds:.1f} s, {args.slices * reduced / seconds:.2f} slices/s per dose")


if __name__ == "__main__":
    main()
