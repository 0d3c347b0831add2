"""What every participant of one run shares: options, spec, dataset index, task, subjects, output layout.

:func:`prepare` validates the paths, the spec and the dataset and selects the task and the
participants (writing nothing); :func:`subject_seed` gives each participant its own random
stream, independent of which others are selected.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bids_dnn.backend import set_torch_threads
from bids_dnn.errors import InputMissingError
from bids_dnn.io import derivatives as drv
from bids_dnn.io.bids import DatasetIndex, check_dataset, check_paths, load_filter_file
from bids_dnn.spec import AnalysisSpec, check_code_permission, load_spec, spec_hash
from bids_dnn.workflows.options import RunOptions
from bids_dnn.workflows.resources import Resources, current_resources

#: spec ``modality`` -> the BIDS datatype folder it reads
MODALITY_DATATYPES = {"fmri": "func", "eeg": "eeg", "meg": "meg"}

__all__ = ["MODALITY_DATATYPES", "Context", "betas_derivatives_name", "prepare", "stream_seed_entropy", "subject_seed"]


@dataclass
class Context:
    """Everything shared by the participants of one invocation."""

    options: RunOptions
    spec: AnalysisSpec
    index: DatasetIndex
    task: str
    subjects: list[str]
    layout: drv.OutputLayout
    run_id: str
    started: float = field(default_factory=time.time)
    #: model label -> content key of its feature file (checked on every read)
    feature_keys: dict[str, str] = field(default_factory=dict)
    #: work folder, threads and memory budget of this process (see :mod:`bids_dnn.workflows.resources`)
    resources: Resources = field(default_factory=Resources)
    #: the run's log lines before the participants (top of each participant's log file)
    log_preamble: tuple[str, ...] = ()
    #: the input dataset as the output folder records it (``{"id", "stimuli"}``, see
    #: :func:`bids_dnn.io.input_dataset.record_output_dataset`); copied into every status file
    dataset: dict[str, str] = field(default_factory=dict)


def subject_seed(seed: int, subject: str) -> np.random.SeedSequence:
    """The seed of a participant's random steps: independent of which others are selected."""
    return np.random.SeedSequence([seed, zlib.crc32(subject.encode())])


def stream_seed_entropy(seed: int, subject: str, stream: int, index: int) -> list[int]:
    """The entropy of one participant's generator of one analysis (``stream``, e.g. CKA) for the
    ``index``-th model of the spec: independent of which other participants and models run."""
    return [int(seed), zlib.crc32(subject.encode()), int(stream), int(index)]


def prepare(options: RunOptions) -> Context:
    """Validate paths, spec and dataset; select task and subjects. Writes nothing."""
    check_paths(options.bids_dir, options.output_dir, options.work_dir, database_dir=options.database_dir)
    spec = load_spec(options.spec_path).with_seed(options.random_seed)
    check_code_permission(spec, options.allow_custom_code)
    if not options.skip_bids_validation:
        check_dataset(options.bids_dir)
    elif not Path(options.bids_dir).is_dir():
        raise InputMissingError(f"BIDS folder not found: {options.bids_dir}")
    drv.check_output_folder(options.output_dir)
    resources = current_resources(options)
    _limit_threads(resources)
    index = DatasetIndex(Path(options.bids_dir), derivatives=options.derivatives,
                         filters=load_filter_file(options.bids_filter_file), database_dir=resources.database_dir,
                         datatype=MODALITY_DATATYPES[spec.modality])
    task = index.choose_task(options.task)
    betas = betas_derivatives_name(spec.brain) if spec.brain.input == "betas" else None
    subjects = index.select_subjects(options.participant_labels, task, options.session_labels, betas)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + f"-{spec_hash(spec)[:6]}"
    fmri = spec.modality == "fmri"
    layout = drv.OutputLayout(Path(options.output_dir), task=task, space=spec.brain.space if fmri else "",
                              datatype=MODALITY_DATATYPES[spec.modality])
    return Context(options, spec, index, task, subjects, layout, run_id, resources=resources)


def _limit_threads(resources: Resources) -> None:
    """torch's threads: ``--omp-nthreads`` (else ``--nprocs``); the BLAS / OpenMP pools are
    limited (and restored after the run) by :func:`bids_dnn.workflows.resources.activate`."""
    if resources.omp_nthreads:
        set_torch_threads(resources.omp_nthreads)


def betas_derivatives_name(brain: Any) -> str:
    """The derivatives name of ready-made betas: ``brain.derivatives``, where its default
    ``fmriprep`` means ``betas`` (``-d betas=PATH``, else ``BIDS_DIR/derivatives/betas``)."""
    return "betas" if brain.derivatives == "fmriprep" else brain.derivatives
