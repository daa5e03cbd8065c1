"""Benchmark of the per-series physics on a 512 x 512 x 300 real CT (prints figures).

Goal (issue "Chest series panel"): all per-series physics <= 10 s for 512 x 512 x 300 on 2 cores. Timed separately:
the noise analysis they start from (analyse_noise, its own goal in bench_physics.py), series_physics (water-equivalent
diameter, NPS kernel index, normalised noise), series_brisque, the last two together, and the whole series panel
with the default series model (its chosen classifier: physics for the bundled model, so the network does not run;
the network alone reads 48 crops of this volume in 0.4 s). The volume is the 20-slice
TotalSegmentator DICOM series (../shared/data) tiled to the requested depth. BRISQUE has no reference package to time
beside it: its model is bundled (see ctqa/physics/brisque.py).

    python benchmarks/bench_series.py [--slices 300] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from ctqa.io import read_volume
from ctqa.models import registry
from ctqa.physics.brisque import series_brisque
from ctqa.physics.noise import analyse_noise
from ctqa.physics.series import series_physics
from ctqa.tasks import series_panel
from ctqa.volume import CTVolume

DICOM_SERIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg" / "example_ct_dicom"
SPACING_MM = (0.977, 0.977, 2.0)  # x, y, z as the DICOM series has them


def tiled_volume(depth: int) -> CTVolume:
    """The real DICOM slices repeated along z to `depth` slices."""
    hu = read_volume(DICOM_SERIES).hu
    return CTVolume(np.ascontiguousarray(np.resize(hu, (depth,) + hu.shape[1:])), spacing=SPACING_MM)


def best_time(repeats: int, function, *args):
    """(best wall time in s over repeats, last result)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    volume = tiled_volume(args.slices)
    depth, height, width = volume.shape
    print(f"volume {width}x{height}x{depth} float32 = {volume.hu.nbytes / 2**20:.0f} MiB, {os.cpu_count()} cores")

    seconds, noise = best_time(args.repeats, analyse_noise, volume)
    print(f"noise analysis (analyse_noise, not part of the goal): {seconds:.2f} s")
    body = noise.body_mask

    physics_s, physics = best_time(args.repeats, series_physics, volume, noise)
    print(
        f"series_physics: {physics_s:.2f} s (WED {physics.wed_mm:.0f} mm, kernel index "
        f"{physics.kernel_index_per_mm:.3f} /mm from {physics.nps_patches} patches)"
    )
    brisque_s, score = best_time(args.repeats, series_brisque, volume.hu, body)
    print(f"series_brisque: {brisque_s:.2f} s (score {score:.2f})")

    def both():
        series_physics(volume, noise)
        series_brisque(volume.hu, body)

    together_s, _ = best_time(args.repeats, both)
    print(f"series_physics + series_brisque: {together_s:.2f} s (goal <= 10 s)")

    spec = registry.resolve("series_class", "default")
    panel_s, panel = best_time(args.repeats, series_panel.run, volume, noise, spec, "cpu")
    calls = f"window {panel.window}, dose {panel.dose}" if panel.window else "no classes"
    print(f"whole series panel with {spec.name} (classifier and model load included): {panel_s:.2f} s; {calls}")


if __name__ == "__main__":
    main()
