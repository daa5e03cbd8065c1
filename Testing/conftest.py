"""Shared fixtures: the real CT data in ../shared/data (tests skip with a reason when it is absent)."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data beside the repository, or skip when this clone has none."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real CT data not found at {SHARED_DATA} (only present beside the project's own checkout)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def torch_single_thread():
    """Tiny tensors run faster on one thread, and spinning OpenMP threads stall badly on a busy shared CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
