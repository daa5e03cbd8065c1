"""benchmarks/bench_gpu.py on a machine without CUDA: one clear line, exit 0, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no CUDA device, even on a GPU machine
    done = subprocess.run(
        [sys.executable, str(BENCH), "--out", str(tmp_path / "gpu.md"), "--workdir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "no CUDA device: bench_gpu measures nothing on this machine (torch.cuda.is_available() is False)"
    ]
    assert list(tmp_path.iterdir()) == []
