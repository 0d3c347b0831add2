"""The demo datasets by kind (``bids_dnn demo DIR --kind ...``): name -> the function writing it,
called as ``make(directory, n_subjects=..., n_runs=..., seed=..., overwrite=...)``."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from bids_dnn.workflows.demo import IMAGE_DEMO, make_demo_dataset
from bids_dnn.workflows.demo_meeg import make_eeg_dataset
from bids_dnn.workflows.demo_naturalistic import make_movie_dataset, make_story_dataset
from bids_dnn.workflows.demo_text_audio import AUDIO_DEMO, TEXT_DEMO

__all__ = ["DEMO_KINDS"]

#: kind name -> the function that writes such a dataset
DEMO_KINDS: dict[str, Callable[..., Path]] = {
    **{kind.name: partial(make_demo_dataset, kind=kind) for kind in (IMAGE_DEMO, TEXT_DEMO, AUDIO_DEMO)},
    "movie": make_movie_dataset,
    "story": make_story_dataset,
    "eeg": make_eeg_dataset,
}
