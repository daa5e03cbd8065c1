"""Benchmark of a whole `ctqa assess` run: peak RSS and seconds for 512 x 512 volumes of several depths (prints).

Goals (issue 23): with the default models, peak RSS <= 1.5 GB at 600 slices and <= 1.8 GB at 1,200 (memory flat in
depth beyond the int16 volume itself), and <= 17 s for 300 slices on 2 cores. Each run is a fresh `ctqa assess`
process on an int16 NRRD written here (the synthetic CT of bench_physics.py; kept in --workdir, a temporary folder by
default, never the repository); peak RSS is the child's ru_maxrss (exactly that process's high-water mark), "wall"
the wall clock of the whole command (read, maps, tables, atomic writing of every output) and "cpu" its user + system
time (steadier than the wall clock on a shared machine). The process baseline (Python + imports) is a 1-slice run.

    python benchmarks/bench_assess.py [--slices 300 600 1200] [--models default physics] [--workdir DIR] [--check]

--check exits 1 when a run of the default models exceeds the issue's bounds (RSS_BOUNDS_GB).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from bench_physics import synthetic_ct

#: Acceptance bounds of issue 23 on peak RSS (GB = 1e9 bytes) by depth, for the default models.
RSS_BOUNDS_GB = {600: 1.5, 1200: 1.8}
#: Acceptance bound of issue 23 on the wall time of 300 slices with the default models (2 cores, idle machine).
SECONDS_BOUND_300 = 17.0


def write_ct(depth: int, path: Path) -> None:
    """An int16 NRRD of the synthetic CT (HU, 0.7 x 0.7 x 1 mm), made 100 slices at a time."""
    volume = np.empty((depth, 512, 512), dtype=np.int16)
    for start in range(0, depth, 100):
        stop = min(start + 100, depth)
        volume[start:stop] = np.round(synthetic_ct(stop - start, seed=start))
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.7, 0.7, 1.0))
    sitk.WriteImage(image, str(path), useCompression=True)


def run(ct: Path, out: Path, model: str) -> tuple[float, float, float]:
    """(wall seconds, cpu seconds, peak RSS in bytes) of one `ctqa assess` in a fresh process."""
    command = [sys.executable, "-m", "ctqa.cli", "assess", str(ct), "--out", str(out), "--model", model, "--quiet"]
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: becomes the ctqa process, so its ru_maxrss is exactly that run's peak
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # the one-line result summary would interleave with the table
        os.execv(sys.executable, command)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"ctqa assess failed on {ct} (exit {os.waitstatus_to_exitcode(status)})")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024.0  # ru_maxrss is in KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[300, 600, 1200])
    parser.add_argument("--models", nargs="+", default=["default", "physics"], help="--model values to run")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ctqa_bench_assess")
    parser.add_argument("--check", action="store_true", help="exit 1 when the default models exceed RSS_BOUNDS_GB")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"ctqa assess, 512x512 int16 NRRD, {os.cpu_count()} cores, volumes in {args.workdir}")
    failures = []
    for model in args.models:
        print(f"--model {model}")
        rows = []
        for depth in [1, *args.slices]:
            ct = args.workdir / f"ct_{depth}.nrrd"
            if not ct.is_file():
                write_ct(depth, ct)
            wall, cpu, peak = run(ct, args.workdir / f"out_{model}_{depth}", model)
            int16_mib = depth * 512 * 512 * 2 / 2**20
            rows.append((depth, wall, peak))
            print(
                f"{depth:5d} slices: {wall:6.1f} s wall, {cpu:6.1f} s cpu ({depth / wall:5.1f} slices/s), "
                f"peak RSS {peak / 2**20:6.0f} MiB = {peak / 1e9:5.2f} GB (int16 volume {int16_mib:.0f} MiB)"
            )
            bound = RSS_BOUNDS_GB.get(depth)
            if model == "default" and bound is not None and peak > bound * 1e9:
                failures.append(f"{depth} slices: peak RSS {peak / 1e9:.2f} GB > {bound} GB")
            if model == "default" and depth == 300 and wall > SECONDS_BOUND_300:
                print(f"      (300 slices: {wall:.1f} s > {SECONDS_BOUND_300:g} s; timings are noisy on a busy host)")
        (_, base_s, base_rss), *measured = rows
        for (d1, s1, m1), (d2, s2, m2) in zip(measured, measured[1:]):
            print(
                f"  {d1} -> {d2} slices: {(s2 - s1) / (d2 - d1) * 1000:.0f} ms and {(m2 - m1) / (d2 - d1) / 2**20:.2f} "
                f"MiB per slice (the int16 volume alone: 0.50 MiB)"
            )
        print(f"  process baseline (1 slice): {base_s:.1f} s, {base_rss / 2**20:.0f} MiB")
    for failure in failures:
        print(f"FAIL {failure}")
    return 1 if args.check and failures else 0


if __name__ == "__main__":
    sys.exit(main())
