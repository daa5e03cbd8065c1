"""Benchmark of the physics maps and the reference SSIM map on a 512 x 512 x 300 volume (prints figures).

Goals (issue 2): physics maps + GNL <= 2 s on 2 cores; reference SSIM >= 3x faster than scikit-image's
structural_similarity(full=True) run slice by slice, same values within 1e-4; peak memory <= 3x the volume's
float32 size. "cold" is the first call in the process, which also pays the kernel's first touch of the output
memory; "warm" is the best of the repeats.

    python benchmarks/bench_physics.py [--slices 300] [--repeats 3] [--skip-skimage]
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np

from ctqa.physics.noise import analyse_noise
from ctqa.physics.ssim import scale_to_unit, ssim_map
from ctqa.sample import correlated_noise
from ctqa.volume import CTVolume

SIZE = 512
NOISE_SD_HU = 15.0


def synthetic_ct(depth: int, seed: int) -> np.ndarray:
    """(depth, 512, 512) float32 HU: air, a body ellipse of 40 HU with a 200 HU insert, CT-like correlated noise."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    body = ((yy - 256) / 215.0) ** 2 + ((xx - 256) / 240.0) ** 2 < 1
    insert = np.hypot(yy - 200, xx - 300) < 50
    clean = (np.where(body, 40.0, -1000.0) + np.where(insert, 160.0, 0.0)).astype(np.float32)
    rng = np.random.default_rng(seed)
    hu = np.empty((depth, SIZE, SIZE), dtype=np.float32)
    for start in range(0, depth, 32):
        stop = min(start + 32, depth)
        hu[start:stop] = clean + NOISE_SD_HU * correlated_noise(rng, (stop - start, SIZE, SIZE))
    return hu


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-skimage", action="store_true", help="do not time the scikit-image baseline")
    args = parser.parse_args()

    hu = synthetic_ct(args.slices, seed=0)
    volume = CTVolume(hu, (0.7, 0.7, 1.0))
    volume_mb = hu.nbytes / 2**20
    print(f"volume {hu.shape[2]}x{hu.shape[1]}x{hu.shape[0]} float32 = {volume_mb:.0f} MiB, {os.cpu_count()} cores")

    cold, _ = timed(analyse_noise, volume)
    warm = min(timed(analyse_noise, volume)[0] for _ in range(args.repeats))
    print(f"physics maps + GNL: cold {cold:.2f} s, warm {warm:.2f} s (goal <= 2 s)")
    tracemalloc.start()
    analyse_noise(volume)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"  peak memory allocated by it: {peak / 2**20:.0f} MiB = {peak / hu.nbytes:.2f}x the volume (goal <= 3x)")

    reference = synthetic_ct(args.slices, seed=1)
    cold, ours = timed(ssim_map, hu, reference)
    warm = min(timed(ssim_map, hu, reference)[0] for _ in range(args.repeats))
    print(f"reference SSIM map: cold {cold:.2f} s, warm {warm:.2f} s")
    if args.skip_skimage:
        return
    from skimage.metrics import structural_similarity

    def skimage_volume():
        maps = np.empty(hu.shape, dtype=np.float64)
        for index in range(hu.shape[0]):
            maps[index] = structural_similarity(
                scale_to_unit(hu[index]).astype(np.float64),
                scale_to_unit(reference[index]).astype(np.float64),
                full=True, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
            )[1]  # fmt: skip
        return maps

    skimage_s, expected = timed(skimage_volume)
    difference = float(np.abs(ours - expected).max())
    print(
        f"  scikit-image slice by slice: {skimage_s:.2f} s -> {skimage_s / cold:.1f}x (cold) / "
        f"{skimage_s / warm:.1f}x (warm) faster (goal >= 3x)"
    )
    print(f"  max |difference| {difference:.2e} (goal <= 1e-4)")


if __name__ == "__main__":
    main()
