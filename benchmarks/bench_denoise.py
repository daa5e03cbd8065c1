"""Benchmark of low-dose CT denoising: slices/s at 512 x 512 through ``denoise_volume`` (clip, scale, pad, network,
crop, copy back), for the default ``DenoiseNetConfig()`` and with the non-local block (window 8), at each thread
count (and on CUDA when available); the classic peers in the same run: scikit-image non-local means and BM3D,
seconds per 512 x 512 slice. Peak memory: the growth of the process's resident set (sampled from /proc, Linux)
while a whole volume is denoised, minus the output array: it stays at one batch's working memory whatever the
number of slices (volumes are streamed batch by batch, as in the assessment); on CUDA also the peak GPU memory.
Each memory run is a fresh process.

    python benchmarks/bench_denoise.py [--slices 8] [--threads 1 2] [--batch 4] [--model X.json]
                                       [--memory-slices 16 64] [--memory-batches 1 4]

Speed does not depend on the weights, so untrained networks are timed; --model times a trained checkpoint too.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import threading
import time

import numpy as np
import torch

from ctqa.errors import InputError
from ctqa.models.denoise_network import DenoiseNetConfig, build_denoise_network, denoise_volume, load_denoise_model
from CTQualityTraining.denoise_eval import bm3d_denoise, nl_means

SIZE = 512
NOISE_HU = 15.0


def phantom_slices(count: int, seed: int = 0) -> np.ndarray:
    """(count, 512, 512) float32 HU: a water disc of 460 mm in air with NOISE_HU white noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:SIZE, :SIZE]
    body = (y - 256) ** 2 + (x - 256) ** 2 < 230**2
    hu = np.where(body, 40.0, -1000.0).astype(np.float32)
    return hu + rng.normal(0.0, NOISE_HU, (count, SIZE, SIZE)).astype(np.float32)


def rss_bytes() -> int:
    """Resident set size of this process now (bytes; Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Context manager: .growth = peak resident set (bytes) during the block minus the one before it (sampled
    every 2 ms in a thread)."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss_bytes()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.growth = self.peak - self.start


def seconds_per_slice(model, hu: np.ndarray, batch: int, device: str) -> float:
    """Wall time per slice of one denoise_volume run over hu, after a warm-up batch."""
    denoise_volume(model, hu[:batch], batch_size=batch, device=device)
    start = time.perf_counter()
    denoise_volume(model, hu, batch_size=batch, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / hu.shape[0]


def memory_run(depth: int, batch: int, device: str, threads: int) -> tuple[int, int, int]:
    """(peak resident set growth, output array bytes, peak GPU bytes or 0) of one denoise_volume run of a fresh
    default denoiser over depth phantom slices; meant for a fresh process, so nothing of earlier runs is cached."""
    torch.set_num_threads(threads)
    model = build_denoise_network(DenoiseNetConfig()).eval()
    hu = phantom_slices(depth)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as memory:
        out = denoise_volume(model, hu, batch_size=batch, device=device).hu
    return memory.growth, out.nbytes, torch.cuda.max_memory_allocated() if device == "cuda" else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=8, help="slices timed per run (default: 8)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--model", help="also time this trained denoise checkpoint (X.json)")
    parser.add_argument("--memory-slices", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--memory-batches", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    hu = phantom_slices(args.slices)
    models = {
        "RED-CNN w64 s2d2 (untrained)": build_denoise_network(DenoiseNetConfig()).eval(),
        "RED-CNN w64 s2d2 + non-local 8 (untrained)": build_denoise_network(DenoiseNetConfig(nonlocal_window=8)).eval(),
    }
    if args.model:
        models[f"{args.model} (trained)"] = load_denoise_model(args.model)[0]
    runs = [("cpu", threads) for threads in args.threads]
    if torch.cuda.is_available():
        runs.append(("cuda", torch.get_num_threads()))
    print(f"denoising {args.slices} slices of {SIZE} x {SIZE}, batch {args.batch}, torch {torch.__version__}")
    print(f"{'model':48s} {'device':>6s} {'threads':>7s} {'slices/s':>9s} {'s/slice':>8s}")
    for device, threads in runs:
        torch.set_num_threads(threads)
        for name, model in models.items():
            per_slice = seconds_per_slice(model, hu[: args.slices], args.batch, device)
            print(f"{name:48s} {device:>6s} {threads:>7d} {1 / per_slice:9.2f} {per_slice:8.3f}")

    slice_hu = hu[0]
    peers = {
        "non-local means (scikit-image, fast, patch 5, distance 6, h = 0.8 sigma)": lambda: nl_means(
            slice_hu, NOISE_HU, 0.8
        ),
        "BM3D (bm3d, profile np, sigma_psd = sigma)": lambda: bm3d_denoise(slice_hu, NOISE_HU, 1.0),
    }
    print(f"\npeers, one {SIZE} x {SIZE} slice (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}):")
    for name, run in peers.items():
        try:
            start = time.perf_counter()
            run()
            print(f"{name:74s} {time.perf_counter() - start:8.2f} s/slice")
        except InputError as error:  # bm3d not installed: the other figures still count
            print(f"{name:74s} not run: {error}")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = max(args.threads)
    gpu = device == "cuda"
    print(
        f"\nmemory, RED-CNN w64 s2d2 on {device} ({threads} threads), each run in a fresh process: growth of the "
        "peak resident set during denoise_volume (one-time set-up included); working = growth - output"
    )
    print(
        f"{'slices':>6s} {'batch':>5s} {'peak growth (MiB)':>18s} {'output (MiB)':>13s} {'working (MiB)':>14s}"
        + (f" {'GPU peak (MiB)':>15s}" if gpu else "")
    )
    spawn = multiprocessing.get_context("spawn")
    for depth in args.memory_slices:
        for batch in args.memory_batches:
            with spawn.Pool(1) as pool:
                growth, output, gpu_peak = pool.apply(memory_run, (depth, batch, device, threads))
            print(
                f"{depth:6d} {batch:5d} {growth / 2**20:18.0f} {output / 2**20:13.0f} {(growth - output) / 2**20:14.0f}"
                + (f" {gpu_peak / 2**20:15.0f}" if gpu else "")
            )


if __name__ == "__main__":
    main()
