"""Benchmark of learned quality-map inference (``predict_volume``) on 512 x 512 slices (prints figures).

Goals (issue 4): >= 20 slices/s on 2 CPU cores, >= 2,000 slices/s on a GPU. Times the whole volume path
(preprocessing, padding, BatchNorm-folded network, copies back), best of the repeats after one warm-up run, with
randomly initialised weights of the chosen variant (speed does not depend on the weights). Peak memory: the
process's peak resident set growth on the CPU, torch.cuda.max_memory_allocated on the GPU.

    python benchmarks/bench_inference.py [--variant N2Q] [--slices 64] [--batch-size 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
import torch

from ctqa.models.inference import predict_volume
from ctqa.models.networks import VARIANTS, build_network

SIZE = 512


def synthetic_ct(depth: int, seed: int = 0) -> np.ndarray:
    """(depth, 512, 512) float32 HU: air, a 40 HU body ellipse with a 200 HU insert, 15 HU white noise."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    body = ((yy - 256) / 215.0) ** 2 + ((xx - 256) / 240.0) ** 2 < 1
    insert = np.hypot(yy - 200, xx - 300) < 50
    clean = (np.where(body, 40.0, -1000.0) + np.where(insert, 160.0, 0.0)).astype(np.float32)
    rng = np.random.default_rng(seed)
    return clean + rng.normal(0.0, 15.0, (depth, SIZE, SIZE)).astype(np.float32)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB; ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def best_rate(model, hu: np.ndarray, batch_size: int, device: str, repeats: int) -> float:
    """Slices per second, best of repeats, after one warm-up run."""
    predict_volume(model, hu[:batch_size], batch_size=batch_size, device=device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        predict_volume(model, hu, batch_size=batch_size, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return hu.shape[0] / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=list(VARIANTS), default="N2Q")
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gpu-batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = VARIANTS[args.variant]
    model = build_network(config).eval()
    hu = synthetic_ct(args.slices)
    print(f"{args.variant}: {config.to_dict()}, {sum(p.numel() for p in model.parameters())} parameters")
    print(f"volume {SIZE}x{SIZE}x{args.slices} float32 = {hu.nbytes / 2**20:.0f} MiB, torch {torch.__version__}")

    rss_before = peak_rss_mib()
    rate = best_rate(model, hu, args.batch_size, "cpu", args.repeats)
    print(f"CPU ({args.threads} threads), batch {args.batch_size}: {rate:.1f} slices/s (goal >= 20); "
          f"peak resident memory +{peak_rss_mib() - rss_before:.0f} MiB")  # fmt: skip

    if not torch.cuda.is_available():
        print("GPU: CUDA not available, skipped")
        return
    torch.cuda.reset_peak_memory_stats()
    rate = best_rate(model, hu, args.gpu_batch_size, "cuda", args.repeats)
    prediction = predict_volume(model, hu[: args.gpu_batch_size], batch_size=args.gpu_batch_size, device="cuda")
    peak_mib = torch.cuda.max_memory_allocated() / 2**20
    print(f"GPU {torch.cuda.get_device_name()} ({prediction.precision}), batch {args.gpu_batch_size}: "
          f"{rate:.0f} slices/s (goal >= 2000); peak GPU memory {peak_mib:.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
