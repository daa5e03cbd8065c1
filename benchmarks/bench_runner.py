"""Benchmark of the Slicer module's process runner against the plain CLI on the same volume (prints figures).

Goal (issue 9): a physics run of a 512 x 512 x 100 volume through the runner (write the node's volume, run
`ctqa assess` in a process, stream progress, load every output into MRML nodes) takes no more than 1.3x the plain
`ctqa assess` run of the same volume from a file. Both are timed here, best of --repeats, in one process; the
runner uses a headless MRML scene from the slicer-core wheel (as Testing/ does).

    python benchmarks/bench_runner.py [--slices 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_physics import synthetic_ct

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "CTQualityAssessment"), str(ROOT / "Testing")]

from slicer_scene import make_headless_scene  # noqa: E402

from ctqa.io import write_map  # noqa: E402
from ctqa.volume import CTVolume  # noqa: E402
from CTQualityAssessmentLib import mrml, process  # noqa: E402


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_runner_"))
    volume = CTVolume(np.round(synthetic_ct(args.slices, seed=0)), (0.7, 0.7, 1.0), source="bench")
    ct_file = work / "ct.nrrd"
    write_map(volume.hu, volume, ct_file)
    command = [sys.executable, "-m", "ctqa.cli", "assess", str(ct_file), "--model", "physics", "--quiet"]

    def plain_cli(*extra: str):
        return lambda: subprocess.run(
            [*command, *extra, "--out", str(work / "cli")], check=True, stdout=subprocess.DEVNULL
        )

    scene = make_headless_scene(str(work / "cache")).scene
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    mrml.update_volume_node(node, volume.hu, volume)

    def through_runner() -> None:
        process.run(node, model="physics", show=False)

    cli_s = best_of(args.repeats, plain_cli())
    bare_s = best_of(args.repeats, plain_cli("--no-preview"))  # compressed maps, as a user keeps them
    runner_s = best_of(args.repeats, through_runner)
    print(f"512x512x{args.slices} physics, best of {args.repeats}:")
    print(f"  plain CLI (file in, files out)                  {cli_s:6.2f} s")
    print(f"  plain CLI --no-preview (compressed maps)       {bare_s:6.2f} s")
    print(
        f"  runner (node in, process, nodes out)            {runner_s:6.2f} s  = {runner_s / cli_s:.2f}x the CLI, "
        f"{runner_s / bare_s:.2f}x the CLI without preview"
    )


if __name__ == "__main__":
    main()
