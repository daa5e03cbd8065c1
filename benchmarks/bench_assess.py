"""Benchmark of a whole `ctqa assess` run: peak RSS and seconds for 512 x 512 volumes of several depths (prints).

Goal (issue 8): peak RSS <= 3 GB for 512 x 512 x 600 int16 with the default (learned) model, time linear in the
number of slices. Each run is a fresh `ctqa assess` process on an int16 NRRD written here (the synthetic CT of
bench_physics.py); peak RSS is the child's ru_maxrss, time the wall clock of the whole command (read, maps,
tables, atomic writing of every output). The process baseline (Python + imports) is measured on a 1-slice run.

    python benchmarks/bench_assess.py [--slices 300 600] [--model default] [--workdir .work/bench_assess]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from bench_physics import synthetic_ct


def write_ct(depth: int, path: Path) -> None:
    """An int16 NRRD of the synthetic CT, written slab by slab into one array (HU, 0.7 x 0.7 x 1 mm)."""
    volume = np.empty((depth, 512, 512), dtype=np.int16)
    for start in range(0, depth, 100):
        stop = min(start + 100, depth)
        volume[start:stop] = np.round(synthetic_ct(stop - start, seed=start))
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.7, 0.7, 1.0))
    sitk.WriteImage(image, str(path), useCompression=True)


def run(ct: Path, out: Path, model: str) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one `ctqa assess` in a fresh process."""
    command = [sys.executable, "-m", "ctqa.cli", "assess", str(ct), "--out", str(out), "--model", model, "--quiet"]
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: becomes the ctqa process, so its ru_maxrss is exactly that run's peak
        os.execv(sys.executable, command)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"ctqa assess failed on {ct} (exit {os.waitstatus_to_exitcode(status)})")
    return seconds, usage.ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[300, 600])
    parser.add_argument("--model", default="default")
    parser.add_argument("--workdir", type=Path, default=Path(".work/bench_assess"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"ctqa assess --model {args.model}, 512x512 int16, {os.cpu_count()} cores")
    rows = []
    for depth in [1, *args.slices]:
        ct = args.workdir / f"ct_{depth}.nrrd"
        if not ct.is_file():
            write_ct(depth, ct)
        seconds, peak_mib = run(ct, args.workdir / f"out_{depth}", args.model)
        int16_mib = depth * 512 * 512 * 2 / 2**20
        rows.append((depth, seconds, peak_mib))
        print(
            f"{depth:5d} slices: {seconds:6.1f} s ({depth / seconds:5.1f} slices/s), peak RSS {peak_mib:6.0f} MiB "
            f"= {peak_mib / max(int16_mib, 1e-9):5.1f}x the int16 volume ({int16_mib:.0f} MiB)"
        )
    (_, base_s, base_mib), *measured = rows
    if len(measured) >= 2:
        (d1, s1, m1), (d2, s2, m2) = measured[0], measured[-1]
        print(
            f"per slice: {(s2 - s1) / (d2 - d1) * 1000:.0f} ms and {(m2 - m1) / (d2 - d1):.2f} MiB "
            f"(process baseline {base_s:.1f} s, {base_mib:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
