"""Shared fixtures: seeded RNGs, the shared real-data folder, the demo dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BIDS_DNN_SHARED", REPO_ROOT.parent / "shared")) / "data"


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator (same numbers on every run)."""
    return np.random.default_rng(20261125)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA
