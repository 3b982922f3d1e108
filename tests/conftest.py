"""Shared fixtures: the real data sets beside the checkout and a tiny synthetic data set."""

from __future__ import annotations

from pathlib import Path

import pytest

# The repository is checked out at <somewhere>/main with shared/ beside it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data folder; tests that need it are skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic data set in the Cityscapes layout: 6 train and 3 val scenes at 128x64."""
    from unetseg.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("synthetic")
    synthesize(root, n_train=6, n_val=3, size=(128, 64), seed=0, progress=False)
    return root
