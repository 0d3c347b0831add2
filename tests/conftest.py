"""Shared fixtures: seeded RNGs, the shared real-data folder, the demo dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BIDS_DNN_SHARED", REPO_ROOT.parent / "shared")) / "data"


def pytest_configure(config: pytest.Config) -> None:
    # registered here, not in pyproject.toml, so that a new marker does not rebuild the venv
    config.addinivalue_line("markers", "slurm: needs root; installs slurm-wlm and munge with apt-get and runs a "
                                       "local SLURM cluster (~2 min)")
    config.addinivalue_line("markers", "system: builds and runs the container image with podman "
                                       "(scripts/container-test.sh, 15-40 min); only with -m system")


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


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo BIDS dataset (seed 0), written once per session. Do not modify it."""
    from bids_dnn.workflows.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "bids", n_subjects=4, n_runs=3, seed=0)


@pytest.fixture(scope="session")
def demo_outputs(demo_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Participant + group outputs of the demo dataset, run through ``main(argv)``."""
    from bids_dnn.cli.main import main

    out = tmp_path_factory.mktemp("demo_out") / "out"
    spec = demo_dataset / "code" / "spec.yaml"
    assert main([str(demo_dataset), str(out), "participant", "--spec", str(spec), "--no-progress"]) == 0
    assert main([str(demo_dataset), str(out), "group", "--spec", str(spec), "--no-progress"]) == 0
    return out


@pytest.fixture
def demo_copy(demo_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the demo dataset that a test may break."""
    import shutil

    target = tmp_path / "bids"
    shutil.copytree(demo_dataset, target)
    return target
