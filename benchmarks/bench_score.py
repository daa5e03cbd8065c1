"""Benchmark of the global 0-4 score: slices/s at 512 x 512 (0.7 mm pixels) for each backbone (MD-IQA, TFKT, CNN),
through ``score_network.predict_scores`` (windowing, HPF, network, decoding), for the bundled physics-feature score
(``tasks.global_score.run``: grid resampling, noise pass, NPS, model), beside BRISQUE per slice (the classic
no-reference peer, ``ctqa.physics.brisque``) in the same run.

    python benchmarks/bench_score.py [--slices 48] [--threads 1 2] [--device cpu]

Speed does not depend on the weights, so untrained networks of the default sizes are timed; the bundled MD-IQA
score_mdiqa (if installed; its canvas placement included) is timed as well. Prints one line per (model, threads).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ctqa.models import registry
from ctqa.models.score_network import (
    BACKBONES,
    ScoreNetConfig,
    build_score_network,
    load_score_model,
    predict_scores,
)
from ctqa.physics.brisque import brisque_score, render_soft_tissue
from ctqa.tasks import global_score
from ctqa.volume import CTVolume


def phantom_slices(count: int, seed: int = 0) -> np.ndarray:
    """(count, 512, 512) float32 HU: a water disc of 400 mm in air with 15 HU noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:512, :512]
    body = (y - 256) ** 2 + (x - 256) ** 2 < 230**2
    hu = np.where(body, 40.0, -1000.0).astype(np.float32)
    return hu + rng.normal(0.0, 15.0, (count, 512, 512)).astype(np.float32)


def seconds(function, repeats: int = 2) -> float:
    """Best wall time of repeats calls (the first call warms up)."""
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    hu = phantom_slices(args.slices)
    models = {
        f"{name} (untrained)": (build_score_network(ScoreNetConfig(backbone=name)).eval(), {}) for name in BACKBONES
    }
    bundled = registry.bundled_models("global_score")
    if "score_mdiqa" in bundled:
        models["score_mdiqa (bundled)"] = load_score_model(bundled["score_mdiqa"])
    volume = CTVolume(hu, (0.7, 0.7, 3.0))
    print(f"{args.slices} slices of 512 x 512, batch {args.batch}, device {args.device}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, (model, card) in models.items():
            elapsed = seconds(
                lambda m=model, c=card: predict_scores(m, c, hu, args.device, args.batch, pixel_yx_mm=(0.7, 0.7))
            )
            print(f"{name:32s} threads {threads}: {args.slices / elapsed:7.1f} slices/s")
        if "score_features" in bundled:
            spec = registry.resolve("global_score", "score_features")
            elapsed = seconds(lambda: global_score.run(volume, spec, np.ones(args.slices)))
            print(f"{'score_features (bundled)':32s} threads {threads}: {args.slices / elapsed:7.1f} slices/s")
        elapsed = seconds(lambda: [brisque_score(render_soft_tissue(s)) for s in hu[:8]])
        print(f"{'BRISQUE (numpy, peer)':32s} threads {threads}: {8 / elapsed:7.1f} slices/s")


if __name__ == "__main__":
    main()
