"""GPU benchmark: each bundled model's speed in float32 and bfloat16, their output differences, and where the time of a
whole `ctqa assess` goes (prints markdown tables; --out also writes them and the figures as JSON).

Issue 23, "the GPU path". On a CUDA machine:

1. Model only: units/s of each bundled network through its product function (``predict_volume``,
   ``predict_scores``, ``denoise_volume``, ``predict_series``: preprocessing, copies to and from the GPU, the
   network; no reading, physics or writing) on --slices in-memory 512 x 512 float32 slices of the synthetic CT of
   bench_physics, at precision "float32" (torch's defaults: TF32 convolutions on CUDA) and "bfloat16"
   (``inference.autocast``), one batch size after another (the series network reads one batch of crops per series:
   its batch is the crops). Best of two runs. "network alone" is the GPU time span of the network's forward calls
   (CUDA events around each, launch gaps included), the rest is host work and copies. The default 0-4 score,
   score_features, is numpy: its CPU figure is shown beside them.
2. Output differences on one slice (a real Mayo quarter-dose slice when ../shared/data is beside the repository,
   else a synthetic one): bfloat16 against float32 on CUDA, and CUDA float32 against the CPU; max and mean |diff|.
3. `ctqa assess` with the default models (device auto) on synthetic int16 512 x 512 volumes of --depths slices
   (bench_assess.write_ct, kept in --workdir): in this process, after a 4-slice warm-up, read_volume, assess split
   into its progress stages (pipeline.assess's messages), write_outputs, as the CLI runs them, with the network
   forward time on the GPU; then fresh `ctqa assess` processes for --process-depths (bench_assess.run: wall, CPU
   time, peak RSS, interpreter start and imports included). The learned map's stage cannot be split further into
   host and GPU work without timers in pipeline.py: its network time is the GPU part, the rest is reading slabs,
   placing them on the model grid, copies and storing the maps.

Without CUDA it prints one line and exits 0. Sized to run in under about 6 minutes on an H200 (not yet run on one).

    python benchmarks/bench_gpu.py [--out gpu.md] [--slices 64] [--batches 1 4 8 16 32] [--depths 300 1000]
        [--process-depths 300] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from bench_assess import run as run_process
from bench_assess import write_ct
from bench_physics import synthetic_ct

from ctqa.io import read_volume
from ctqa.models import registry, series_network
from ctqa.models.checkpoints import load
from ctqa.models.denoise_network import DenoiseNet, denoise_volume, load_denoise_model
from ctqa.models.feature_score import load_feature_model, slice_features
from ctqa.models.inference import predict_volume
from ctqa.models.networks import QualityNet
from ctqa.models.score_network import ScoreNet, load_score_model, predict_scores
from ctqa.pipeline import assess, write_outputs
from ctqa.staging import tune_allocator
from ctqa.volume import CTVolume

NO_CUDA = "no CUDA device: bench_gpu measures nothing on this machine (torch.cuda.is_available() is False)"
PRECISIONS = ("float32", "bfloat16")
#: Crops per series swept for the series network (``predict_series`` reads 48 by default, in one batch).
SERIES_CROPS = (8, 16, 32, 48, 96)
PRODUCT_CROPS = 48
#: Geometry of the synthetic CT (bench_assess.write_ct): pixel and slice spacing, mm; its water-equivalent diameter.
PIXEL_MM, SLICE_MM, WED_MM = 0.7, 1.0, 300.0
#: A real quarter-dose slice (patient L506, 3 mm, about 0.74 mm pixels; stored as (HU + 1024) / 4096).
REAL_SLICE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mayo_pairs" / "L506_86_input.npy"
#: The networks whose forward calls NetworkClock times.
NETWORKS = (QualityNet, ScoreNet, DenoiseNet, series_network.SeriesNet)
#: Messages of pipeline.assess that announce work about to start (the others report work done).
STARTS = ("quality score", "series panel", "tables")


@dataclass(frozen=True)
class Slices:
    """hu: float32 (z, y, x) HU with square pixels of pixel_mm, slices thickness_mm apart; source: what they are."""

    hu: np.ndarray
    pixel_mm: float
    thickness_mm: float
    source: str


@dataclass(frozen=True)
class Model:
    """A bundled model as the product runs it: run(slices, batch, device, precision) -> ({output name: values},
    units read); unit: what its speed counts; batches: the batch sizes swept."""

    name: str
    unit: str
    batches: tuple[int, ...]
    run: Callable[[Slices, int, str, str], tuple[dict[str, np.ndarray], int]]


class NetworkClock:
    """GPU seconds inside the forward of NETWORKS on CUDA inputs (a CUDA event pair around each call), for the models
    it is attached to (the copies the predict functions make keep the hooks) or any model while ``everywhere``."""

    def __init__(self) -> None:
        self.events: list[list[torch.cuda.Event]] = []

        def before(module: torch.nn.Module, args: tuple) -> None:
            if isinstance(module, NETWORKS) and args[0].is_cuda:
                self.events.append([torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)])
                self.events[-1][0].record()

        def after(module: torch.nn.Module, args: tuple, output: object) -> None:
            if isinstance(module, NETWORKS) and args[0].is_cuda:
                self.events[-1][1].record()

        self.hooks = (before, after)  # plain functions: deepcopy keeps them as they are

    def attach(self, model: torch.nn.Module) -> None:
        model.register_forward_pre_hook(self.hooks[0])
        model.register_forward_hook(self.hooks[1])

    @contextmanager
    def everywhere(self) -> Iterator[None]:
        handles = (
            torch.nn.modules.module.register_module_forward_pre_hook(self.hooks[0]),
            torch.nn.modules.module.register_module_forward_hook(self.hooks[1]),
        )
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def take(self) -> float:
        """Seconds timed since the last take (waits for the GPU)."""
        torch.cuda.synchronize()
        seconds = sum(start.elapsed_time(end) for start, end in self.events) / 1000.0
        self.events.clear()
        return seconds


class StageClock:
    """A progress callback that adds up wall seconds per stage (a message's text before ':'): a report of work done
    ends that stage's time; a message in STARTS starts its stage, the time before it belongs to the previous one."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.stage = "set-up"
        self.last = time.perf_counter()

    def _add(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self.last
        self.last = now

    def __call__(self, fraction: float, message: str) -> None:
        stage = message.split(":")[0]
        self._add(self.stage if stage in STARTS else stage)
        self.stage = stage

    def finish(self) -> dict[str, float]:
        self._add(self.stage)
        return self.seconds


class Report:
    """Prints markdown and keeps it, and the figures, for --out."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.figures: dict[str, object] = {}

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def table(self, header: tuple[str, ...], rows: list[tuple]) -> None:
        self.line("| " + " | ".join(header) + " |")
        self.line("|" + "---|" * len(header))
        for row in rows:
            self.line("| " + " | ".join(str(cell) for cell in row) + " |")
        self.line()

    def write(self, out: Path) -> None:
        out.with_suffix(".md").write_text("\n".join(self.lines) + "\n", encoding="utf-8")
        out.with_suffix(".json").write_text(json.dumps(self.figures, indent=2) + "\n", encoding="utf-8")


def bundled(task: str, name: str) -> Path:
    return registry.resolve(task, name).card_path


def learned_models(batches: tuple[int, ...], clock: NetworkClock) -> list[Model]:
    """The four bundled networks, their models timed by clock."""
    quality, _ = load(bundled("quality_map", "n2q_default"))
    score, score_card = load_score_model(bundled("global_score", "score_mdiqa"))
    denoiser, _ = load_denoise_model(bundled("denoise", "denoise_default"))
    series, series_card = series_network.load(bundled("series_class", "series_default"))
    for model in (quality, score, denoiser, series):
        clock.attach(model)

    def quality_map(slices: Slices, batch: int, device: str, precision: str) -> tuple[dict[str, np.ndarray], int]:
        prediction = predict_volume(quality, slices.hu, batch, device, precision=precision)
        maps = {f"SSIM, {window} window": values for window, values in prediction.maps.items()}
        return {**maps, "ln dose": prediction.log_dose}, len(slices.hu)

    def score_0_4(slices: Slices, batch: int, device: str, precision: str) -> tuple[dict[str, np.ndarray], int]:
        pixel = (slices.pixel_mm, slices.pixel_mm)
        values, sd = predict_scores(score, score_card, slices.hu, device, batch, pixel_yx_mm=pixel, precision=precision)
        return {"score 0-4": values, "score SD": sd}, len(slices.hu)

    def denoise(slices: Slices, batch: int, device: str, precision: str) -> tuple[dict[str, np.ndarray], int]:
        return {"HU": denoise_volume(denoiser, slices.hu, batch, device, precision=precision).hu}, len(slices.hu)

    def series_class(slices: Slices, crops: int, device: str, precision: str) -> tuple[dict[str, np.ndarray], int]:
        reading = series_network.predict_series(
            series.to(device), series_card, slices.hu, slices.pixel_mm, slices.thickness_mm, WED_MM, crops, 0, precision
        )
        values = {
            "P(lung window)": reading.lung_probability,
            "P(low dose)": reading.low_dose_probability,
            "SNR": reading.snr,
            "BRISQUE": reading.brisque,
        }
        return {name: np.array([value]) for name, value in values.items()}, reading.crops

    return [
        Model("n2q_default", "slices", batches, quality_map),
        Model("score_mdiqa", "slices", batches, score_0_4),
        Model("denoise_default", "slices", batches, denoise),
        Model("series_default", "crops", SERIES_CROPS, series_class),
    ]


def model_only(models: list[Model], slices: Slices, clock: NetworkClock, report: Report) -> None:
    """Section 1: units/s of each model, precision and batch (best of two runs), and its network share."""
    report.line(f"## Model only: {len(slices.hu)} in-memory 512 x 512 slices ({slices.source}), best of two runs")
    report.line()
    rows, figures = [], []
    for model in models:
        for precision in PRECISIONS:
            for batch in model.batches:
                best = (np.inf, 0.0, 0)
                for _ in range(2):
                    clock.take()
                    start = time.perf_counter()
                    _, units = model.run(slices, batch, "cuda", precision)
                    best = min(best, (time.perf_counter() - start, clock.take(), units))
                seconds, network, units = best
                figure = {"model": model.name, "precision": precision, "batch": batch, "unit": model.unit}
                figures.append({**figure, "units": units, "seconds": seconds, "network_seconds": network})
                rate, network_rate = f"{units / seconds:.0f} {model.unit}/s", f"{units / network:.0f} {model.unit}/s"
                rows.append((model.name, precision, batch, rate, network_rate, f"{100 * network / seconds:.0f} %"))
    features = feature_score_rate(Slices(slices.hu[:32], slices.pixel_mm, slices.thickness_mm, slices.source))
    rows.append(("score_features (numpy, CPU)", "float64", "-", f"{features:.0f} slices/s", "-", "-"))
    report.table(("model", "precision", "batch", "product path", "network alone", "network share"), rows)
    report.figures["model_only"] = figures
    report.figures["score_features_cpu_slices_per_s"] = features


def feature_score_rate(slices: Slices) -> float:
    """Slices/s of the physics-feature score (features on the 0.7 mm grid, then its model) on the CPU."""
    model, _ = load_feature_model(bundled("global_score", "score_features"))
    volume = CTVolume(slices.hu, (slices.pixel_mm, slices.pixel_mm, slices.thickness_mm), source=slices.source)
    start = time.perf_counter()
    model.predict(slice_features(volume))
    return len(slices.hu) / (time.perf_counter() - start)


def one_slice() -> Slices:
    """The real Mayo slice when ../shared/data is present, else a synthetic one."""
    if REAL_SLICE.is_file():
        hu = (np.load(REAL_SLICE) * 4096.0 - 1024.0).astype(np.float32)[None]
        return Slices(hu, 0.74, 3.0, "real Mayo quarter-dose slice L506_86")
    return Slices(synthetic_ct(1, seed=1), PIXEL_MM, SLICE_MM, "synthetic CT slice (bench_physics)")


def differences(models: list[Model], slices: Slices, report: Report) -> None:
    """Section 2: max and mean |difference| of each output, bfloat16 - float32 on CUDA, CUDA - CPU in float32."""
    report.line(f"## Output differences on one 512 x 512 slice ({slices.source})")
    report.line()
    rows, figures = [], []
    for model in models:
        batch = PRODUCT_CROPS if model.unit == "crops" else 1
        cuda, _ = model.run(slices, batch, "cuda", "float32")
        half, _ = model.run(slices, batch, "cuda", "bfloat16")
        cpu, _ = model.run(slices, batch, "cpu", "float32")
        for name, values in cuda.items():
            amp, device = np.abs(half[name] - values), np.abs(values - cpu[name])
            figure = {"bf16_max": amp.max(), "bf16_mean": amp.mean(), "cuda_cpu_max": device.max()}
            figure = {name: float(value) for name, value in {**figure, "cuda_cpu_mean": device.mean()}.items()}
            figures.append({"model": model.name, "output": name, **figure})
            rows.append(
                (model.name, name, f"{amp.max():.3g} / {amp.mean():.3g}", f"{device.max():.3g} / {device.mean():.3g}")
            )
    header = ("model", "output", "bfloat16 - float32 on CUDA: max / mean", "CUDA - CPU in float32: max / mean")
    report.table(header, rows)
    report.figures["differences"] = {"slice": slices.source, "rows": figures}


def assess_in_process(ct: Path, workdir: Path, clock: NetworkClock) -> dict[str, float]:
    """Seconds of read_volume, each assess stage and write_outputs of ct (as the CLI runs them; outputs removed),
    and the networks' GPU seconds inside assess."""
    start = time.perf_counter()
    volume = read_volume(ct, compact=True)
    seconds = {"read_volume": time.perf_counter() - start}
    clock.take()
    stages = StageClock()
    with clock.everywhere():
        assessment = assess(volume, progress=stages)
    seconds.update(stages.finish())
    network = clock.take()
    out = Path(tempfile.mkdtemp(prefix="bench_gpu_", dir=workdir))
    start = time.perf_counter()
    write_outputs(assessment, out)
    seconds["write_outputs"] = time.perf_counter() - start
    shutil.rmtree(out)
    return {**seconds, "total": sum(seconds.values()), "network forward on the GPU (in the stages above)": network}


def end_to_end(
    depths: list[int], process_depths: list[int], workdir: Path, clock: NetworkClock, report: Report
) -> None:
    """Section 3: `ctqa assess`, default models, in this process by stage, then in fresh processes."""
    report.line("## `ctqa assess`, default models, synthetic int16 512 x 512 volumes (bench_assess.write_ct)")
    report.line()
    for depth in sorted({4, *depths, *process_depths}):
        if not (workdir / f"ct_{depth}.nrrd").is_file():
            write_ct(depth, workdir / f"ct_{depth}.nrrd")
    tune_allocator()  # as the CLI does before an assessment
    assess_in_process(workdir / "ct_4.nrrd", workdir, clock)  # warm-up: imports, CUDA kernels
    runs = {depth: assess_in_process(workdir / f"ct_{depth}.nrrd", workdir, clock) for depth in depths}
    stages = list(dict.fromkeys(stage for seconds in runs.values() for stage in seconds))

    def cell(depth: int, stage: str) -> str:
        seconds = runs[depth].get(stage, 0.0)
        return f"{seconds:.2f} s ({100 * seconds / runs[depth]['total']:.0f} %)"

    rows = [(stage, *(cell(depth, stage) for depth in depths)) for stage in stages]
    rows.append(("slices/s", *(f"{depth / runs[depth]['total']:.1f}" for depth in depths)))
    report.line(
        "In this process (after a warm-up run), seconds and share of the total. Stages are assess's progress "
        "messages; the network forward time on the GPU (learned map and series network) lies inside them."
    )
    report.line()
    report.table(("stage", *(f"{depth} slices" for depth in depths)), rows)
    processes = {}
    for depth in process_depths:
        out = workdir / f"gpu_process_{depth}"
        wall, cpu, peak = run_process(workdir / f"ct_{depth}.nrrd", out, "default")
        shutil.rmtree(out, ignore_errors=True)
        processes[depth] = {"wall_s": wall, "cpu_s": cpu, "peak_rss_bytes": peak}
    if processes:
        report.line("Fresh `ctqa assess` processes (interpreter start and imports included):")
        report.line()
        rows = [
            (depth, f"{p['wall_s']:.1f} s", f"{p['cpu_s']:.1f} s", f"{depth / p['wall_s']:.1f}",
             f"{p['peak_rss_bytes'] / 2**20:.0f} MiB")
            for depth, p in processes.items()
        ]  # fmt: skip
        report.table(("slices", "wall", "CPU time", "slices/s", "peak RSS"), rows)
    report.figures["assess"] = {"in_process_seconds": runs, "fresh_process": processes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write FILE.md (the tables) and FILE.json (the figures)")
    parser.add_argument("--slices", type=int, default=64, help="slices per model-only run")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--depths", type=int, nargs="*", default=[300, 1000], help="assess in this process")
    parser.add_argument("--process-depths", type=int, nargs="*", default=[300], help="assess in a fresh process")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ctqa_bench_gpu")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    began = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = Report()
    properties = torch.cuda.get_device_properties(0)
    report.line(
        f"# bench_gpu: {torch.cuda.get_device_name(0)} ({properties.total_memory / 2**30:.0f} GiB), torch "
        f"{torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, {os.cpu_count()} "
        f"CPU cores; bfloat16 supported: {torch.cuda.is_bf16_supported()}; TF32 convolutions: "
        f"{torch.backends.cudnn.allow_tf32}, TF32 matmul: {torch.backends.cuda.matmul.allow_tf32}"
    )
    report.line()
    clock = NetworkClock()
    models = learned_models(tuple(args.batches), clock)
    synthetic = Slices(synthetic_ct(args.slices, seed=0), PIXEL_MM, SLICE_MM, "synthetic CT, bench_physics")
    model_only(models, synthetic, clock, report)
    differences(models, one_slice(), report)
    end_to_end(args.depths, args.process_depths, args.workdir, clock, report)
    report.line(f"bench_gpu took {time.perf_counter() - began:.0f} s")
    if args.out is not None:
        report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
