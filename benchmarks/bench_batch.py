"""Benchmark of `ctqa batch`: series per hour over a folder of small series, by number of Ray workers, beside the peer
a user would otherwise run (a shell loop of `ctqa assess`, one process per series). Prints a table.

Each run is a fresh `ctqa batch` process into a fresh output folder (Ray started and stopped inside it), timed by the
wall clock of the whole command: discovery, Ray start, worker start-up (imports, models), the series, index and
reports. Per series: the median of index.csv's runtime_s (reading, assessment, writing), and the largest worker
peak RSS that summary.json's batch block records.

    python benchmarks/bench_batch.py [--root ../shared/data/chest_sbu] [--workers 1 2] [--loop] [--fast]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ctqa.batch import find_series
from ctqa.batch_index import INDEX_NAME, read_index

FAST_FLAGS = ["--model", "physics", "--series-model", "physics", "--score-model", "none"]


def run_batch(root: Path, out: Path, workers: int, flags: list[str]) -> tuple[float, list]:
    """(wall seconds, index rows) of one `ctqa batch` process."""
    command = [sys.executable, "-m", "ctqa.cli", "batch", str(root), "--out", str(out), "--quiet"]
    start = time.perf_counter()
    done = subprocess.run([*command, "--workers", str(workers), *flags], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"ctqa batch failed: {done.stderr.strip()}")
    return seconds, read_index(out / INDEX_NAME)


def run_loop(root: Path, out: Path, flags: list[str]) -> float:
    """Wall seconds of one `ctqa assess` process per series (the series found by the batch's discovery)."""
    start = time.perf_counter()
    for series in find_series(root).series:
        target = series.files[0] if len(series.files) == 1 else series.path
        command = [sys.executable, "-m", "ctqa.cli", "assess", target, "--out", str(out / series.id), "--quiet"]
        subprocess.run([*command, *flags], capture_output=True, check=True)
    return time.perf_counter() - start


def worker_peak_mib(out: Path, rows: list) -> float:
    peaks = []
    for row in rows:
        summary = out / row.id / "summary.json"
        if summary.is_file():
            peaks.append((json.loads(summary.read_text()).get("batch") or {}).get("worker_peak_rss_mib") or 0.0)
    return max(peaks, default=float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/chest_sbu")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--loop", action="store_true", help="also time the `ctqa assess` loop (the peer)")
    parser.add_argument("--fast", action="store_true", help="physics models, no score (else the defaults)")
    args = parser.parse_args()
    flags = FAST_FLAGS if args.fast else []
    count = len(find_series(args.root).series)
    print(f"{count} series under {args.root}; {os.cpu_count()} cores; options: {' '.join(flags) or 'defaults'}")
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as work:
        if args.loop:
            seconds = run_loop(args.root, Path(work) / "loop", flags)
            print(f"ctqa assess loop   : {seconds:6.1f} s, {3600 * count / seconds:6.0f} series/hour")
        for workers in args.workers:
            out = Path(work) / f"batch_{workers}"
            seconds, rows = run_batch(args.root, out, workers, flags)
            runtimes = [row.runtime_s for row in rows if row.status == "assessed"]
            failed = sum(row.status == "failed" for row in rows)
            print(
                f"ctqa batch, {workers} worker{'s' if workers > 1 else ' '}: {seconds:6.1f} s, "
                f"{3600 * len(rows) / seconds:6.0f} series/hour; per series median {statistics.median(runtimes):.2f} s"
                f" (worker time {sum(runtimes):.1f} s), worker peak RSS {worker_peak_mib(out, rows):.0f} MiB"
                + (f", {failed} failed" if failed else "")
            )


if __name__ == "__main__":
    main()
