"""Every output path, sidecar and root file of the derivatives folder, and atomic writes.

Nothing else in the package builds an output path: orchestration asks :class:`OutputLayout`.
Every write goes through a temp file in the destination folder, fsync, then ``os.replace``,
so an interrupted run never leaves a half-written file and parallel jobs never tear one.

Names follow BIDS-Derivatives; ``model-`` (pybids' derivatives configuration), ``layer-`` and
``stat-`` (``bids_dnn/data/pybids_config.json``, see :func:`bids_dnn.pybids_config`) are the
entities BIDS does not define; labels are sanitised to alphanumerics and the original names are
kept in the sidecars. Files whose suffix BIDS does not define are listed, by exact pattern, in
``.bidsignore`` (:data:`BIDSIGNORE_LINES`): the BIDS validator checks everything else.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from bids_dnn import __version__
from bids_dnn.errors import UsageError
from bids_dnn.spec import sanitize_label

TOOL_NAME = "bids_dnn"
#: ``Authors`` of dataset_description.json: the software's authors (as in pyproject.toml)
AUTHORS = ("bids_dnn developers",)
#: root file recording the input dataset of the folder (:mod:`bids_dnn.io.input_dataset`)
INPUT_DATASET_FILE = "input_dataset.json"

#: ``.bidsignore``: the outputs the BIDS validator cannot know (suffixes and folders that BIDS
#: does not define), by exact pattern; everything else is validated. Folders are named without a
#: trailing slash: the validator (bids-validator-deno) tests a folder's path without one.
BIDSIGNORE_LINES = [
    "# outputs whose suffix BIDS does not define (written by bids_dnn)",
    "*_statmap.nii.gz",
    "*_statmap.json",
    "*_relmat.tsv",
    "*_relmat.json",
    "*_rsa.tsv",
    "*_rsa.json",
    "*_encoding.tsv",
    "*_encoding.json",
    "*_cka.tsv",
    "*_cka.json",
    "*_decoding.tsv",
    "*_decoding.json",
    "*_probing.tsv",
    "*_probing.json",
    "*_drivers.tsv",
    "*_drivers.json",
    "*_saliency.npz",
    "*_naturalistic.tsv",
    "*_naturalistic.json",
    "*_summary.tsv",
    "*_summary.json",
    "*_relmat.npz",
    "*_timecourse.tsv",
    "*_timecourse.json",
    "*_qc.tsv",
    "*_qc.json",
    "*_stats.npz",
    "*_stats.json",
    "/task-*_stimuli.tsv",
    "/task-*_stimuli.json",
    "# folders BIDS does not define: features and model RDMs, group level, logs, figures, reports",
    "/model-*",
    "/group",
    "/sub-*/log",
    "/sub-*/figures",
    "/sub-*/parts",
    "/sub-*.html",
    "/group.html",
    "# the input dataset of this folder (bids_dnn checks it before writing)",
    f"/{INPUT_DATASET_FILE}",
]

#: the labels of the ``desc-`` entity (``descriptions.tsv``)
DESCRIPTIONS = {
    "stimuli": "One volume per stimulus: GLM estimate of the response to each stimulus.",
    "rois": "Voxel counts of the participant's ROI masks.",
    "summary": "Group summary across participants.",
    "comparisons": "Pairwise comparisons between layers of a model.",
    "weighted": "Cross-validated weighted RSA: non-negative combination of a model's layer RDMs.",
    "weightedscores": "Held-out scores of the weighted RSA per subject.",
    "weights": "Layer weights of the weighted RSA per fold.",
    "variancepartition": "Unique and shared R2 of brain RDMs from groups of model RDMs, per subject.",
    "variancepartitionsummary": "Variance partitioning across subjects.",
    "searchlight": "Searchlight RSA: comparison of sphere RDMs with a model RDM at each centre.",
    "encoding": "Cross-validated ridge encoding from layer features to voxel responses.",
    "naturalistic": "Voxelwise encoding of the BOLD time series of a naturalistic design (leave-one-run-out ridge).",
    "topvoxel": "Measured and held-out predicted BOLD time series of the best-predicted voxel.",
    "timeresolved": "EEG / MEG: one brain RDM per time point (or window) of the epochs.",
    "generalization": "EEG / MEG: similarity of the brain RDMs of every pair of time points.",
    "epochs": "EEG / MEG: events, kept and rejected epochs per run.",
    "rsa": "EEG / MEG: RSA of every layer at every time point.",
    "rsasubjects": "EEG / MEG: the RSA time courses of all participants.",
    "encodingsubjects": "EEG / MEG: the encoding time courses of all participants.",
    "variancepartitionsubjects": "EEG / MEG: the variance-partitioning time courses of all participants.",
}

#: entity names of pybids' ``bids`` and ``derivatives`` configurations and of
#: ``bids_dnn/data/pybids_config.json``: a sidecar key named like one of them is read by pybids
#: as an entity value (tests/test_bids_outputs.py checks this list against pybids)
PYBIDS_ENTITY_NAMES = frozenset({
    "subject", "session", "sample", "task", "tracksys", "acquisition", "nucleus", "volume", "ceagent",
    "staining", "tracer", "reconstruction", "direction", "run", "proc", "modality", "echo", "flip", "inv",
    "mt", "part", "recording", "space", "chunk", "suffix", "scans", "fmap", "datatype", "extension",
    "atlas", "roi", "label", "desc", "from", "to", "mode", "hemi", "segmentation", "res", "den", "model",
    "subset", "layer", "stat",
})


# ---------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------


#: written into temp names so a later run can tell a dead writer's leftovers from a live one's
_WRITER = f"~{socket.gethostname()}~{os.getpid()}~."
_TEMP_NAME = re.compile(r"^\..*~(?P<host>[^~/]+)~(?P<pid>\d+)~\..*\.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path, *, own: bool = False) -> int:
    """Delete temp files under ``folder`` left by killed writers on this host; returns how many.

    A temp file of a live process, or of another host (shared file systems), is kept; with
    ``own``, this process's too (after SIGINT / SIGTERM stopped it: the signal may arrive between
    creating a temp file and the ``try`` that removes it).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    host, removed = socket.gethostname(), 0
    for path in folder.rglob(".*"):
        match = _TEMP_NAME.match(path.name)
        if match and match["host"] == host and ((own and int(match["pid"]) == os.getpid())
                                                or not _alive(int(match["pid"]))):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success fsync and rename it onto ``path``.

    On an exception the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{_WRITER}", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_text(path: Path, text: str, *, if_changed: bool = False) -> Path:
    """Write UTF-8 ``text`` atomically (``if_changed``: leave an identical file untouched)."""
    data = text.encode("utf-8")
    if if_changed and _same_bytes(Path(path), data):
        return path
    return write_bytes(path, data)


def write_text_if_absent(path: Path, text: str) -> bool:
    """Create ``path`` with UTF-8 ``text`` unless it exists; returns whether this call created it.

    The complete file is written to a temp name and hard-linked to ``path``: ``link`` fails when
    the name exists, so of two concurrent writers exactly one creates the file and neither ever
    sees a partial one. On a file system without hard links the temp file is renamed into place
    when ``path`` is still absent (then the last of two concurrent writers wins).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{_WRITER}", suffix=f".tmp{''.join(path.suffixes)}",
                                    dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def write_json(path: Path, data: Any, *, if_changed: bool = False) -> Path:
    """Write deterministic, indented JSON atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", if_changed=if_changed)


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object written by this tool (status files, sidecars); empty when the file is
    missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_tsv(path: Path, table: pd.DataFrame, sidecar: dict[str, Any] | None = None, *,
              if_changed: bool = False) -> Path:
    """Write a TSV (``n/a`` for missing values) and, if given, its JSON data dictionary
    (``if_changed``: files with identical content are left untouched).

    The data dictionary leaves out the columns named like an entity (``subject``, ``model``,
    ``layer``, ``roi``; see :func:`without_entity_keys`).
    """
    text = table.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.10g", lineterminator="\n")
    write_text(path, text, if_changed=if_changed)
    if sidecar is not None:
        write_json(sidecar_path(path), without_entity_keys(sidecar), if_changed=if_changed)
    return path


def without_entity_keys(sidecar: dict[str, Any]) -> dict[str, Any]:
    """``sidecar`` without the keys named like a pybids entity (:data:`PYBIDS_ENTITY_NAMES`).

    pybids reads every key of a sidecar as metadata of its file: a key named like an entity of
    the file's name (``subject`` in ``sub-01_..._rsa.json``, ``model`` in ``..._model-x_rsa.json``)
    stops ``BIDSLayout`` with ``BIDSConflictingValuesError``, and one named like another entity
    makes entity queries (``subject=None``, ``layer=...``) see a column description as a value.
    Columns that hold entity labels are therefore described in the README, not in data
    dictionaries; the metadata keys of bids_dnn are CamelCase and never collide.
    """
    return {key: value for key, value in sidecar.items() if key not in PYBIDS_ENTITY_NAMES}


#: columns holding names and labels, read as text: ``01`` stays ``01`` and ``NULL``, ``NA``,
#: ``None``, ``nan`` stay names (only ``n/a`` means missing, as BIDS says)
LABEL_COLUMNS = {name: str for name in (
    "subject", "participant", "participant_id", "session", "run", "roi", "label", "name", "model", "layer",
    "layer_a", "layer_b", "model_b", "best_single_layer", "component", "stim_id", "stim_file",
    "category", "trial_type", "desc_id")}


def read_tsv(path: Path) -> pd.DataFrame:
    """Read a TSV written by :func:`write_tsv` (``n/a`` as missing; :data:`LABEL_COLUMNS` as text)."""
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype=LABEL_COLUMNS)


def write_npz(path: Path, **arrays: Any) -> Path:
    """Save numpy arrays as an uncompressed ``.npz`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return path


def write_nifti(path: Path, image: Any, sidecar: dict[str, Any] | None = None) -> Path:
    """Save a nibabel image atomically (plus its JSON sidecar)."""
    import nibabel as nib

    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    if sidecar is not None:
        write_json(sidecar_path(path), sidecar)
    return path


def sidecar_path(path: Path) -> Path:
    """``x_stat-r_relmat.tsv`` -> ``x_stat-r_relmat.json`` (also for ``.nii.gz``)."""
    name = Path(path).name
    for ext in (".nii.gz", ".tsv", ".nii", ".h5", ".npz"):
        if name.endswith(ext):
            return Path(path).with_name(name[: -len(ext)] + ".json")
    return Path(path).with_suffix(".json")


# ---------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------


def _entities(**entities: str | None) -> str:
    return "_".join(f"{key}-{value}" for key, value in entities.items() if value)


@dataclass(frozen=True)
class OutputLayout:
    """Builds every output path of one derivatives folder.

    Parameters
    ----------
    root : Path
        The output folder (OUT_DIR).
    task : str
        Task label shared by all outputs of a run.
    space : str
        Space label of brain outputs ("" for EEG / MEG: no space entity).
    datatype : str
        Folder of a participant's outputs: ``func`` (fMRI), ``eeg`` or ``meg``.
    """

    root: Path
    task: str
    space: str
    datatype: str = "func"

    # root-level ----------------------------------------------------------------------
    @property
    def dataset_description(self) -> Path:
        return self.root / "dataset_description.json"

    def stimuli_table(self) -> Path:
        return self.root / f"task-{self.task}_stimuli.tsv"

    def model_dir(self, model: str) -> Path:
        return self.root / f"model-{sanitize_label(model)}"

    def features(self, model: str) -> Path:
        m = sanitize_label(model)
        return self.model_dir(model) / f"task-{self.task}_model-{m}_features.h5"

    def model_rdm(self, model: str, layer: str, measure: str) -> Path:
        m, lay = sanitize_label(model), sanitize_label(layer)
        return self.model_dir(model) / (
            f"task-{self.task}_model-{m}_layer-{lay}_stat-{sanitize_label(measure)}_relmat.tsv"
        )

    def model_probing(self, model: str) -> Path:
        """Probes of a model's layers for stimulus annotations (``analyses.probing.layers``)."""
        return self.model_dir(model) / f"task-{self.task}_model-{sanitize_label(model)}_probing.tsv"

    def timeline_features(self, model: str, key: str) -> Path:
        """Features of one film or story of a naturalistic design (``key``: their content key)."""
        m = sanitize_label(model)
        return self.model_dir(model) / f"task-{self.task}_model-{m}_timeline-{key[:12]}_features.h5"

    def model_cka(self, model: str) -> Path:
        """Layer x layer CKA of a model's layers with every model's layers (``analyses.cka.across_models``)."""
        return self.model_dir(model) / f"task-{self.task}_model-{sanitize_label(model)}_cka.tsv"

    # participant-level ---------------------------------------------------------------
    def subject_dir(self, subject: str) -> Path:
        return self.root / f"sub-{subject}"

    def _func(self, subject: str, session: str | None = None) -> Path:
        base = self.subject_dir(subject)
        return (base / f"ses-{session}" / self.datatype) if session else base / self.datatype

    def _prefix(self, subject: str, session: str | None = None) -> str:
        return _entities(sub=subject, ses=session, task=self.task, space=self.space)

    def betas(self, subject: str, session: str | None = None, run: str | None = None) -> Path:
        prefix = _entities(sub=subject, ses=session, task=self.task, run=run, space=self.space)
        return self._func(subject, session) / f"{prefix}_desc-stimuli_stat-effect_statmap.nii.gz"

    def roi_mask(self, subject: str, roi: str) -> Path:
        return self._func(subject) / f"{self._prefix(subject)}_label-{sanitize_label(roi)}_mask.nii.gz"

    def brain_rdm(self, subject: str, roi: str, measure: str) -> Path:
        return self._func(subject) / (
            f"{self._prefix(subject)}_label-{sanitize_label(roi)}_stat-{sanitize_label(measure)}_relmat.tsv"
        )

    def rsa_table(self, subject: str, model: str) -> Path:
        return self._func(subject) / f"{self._prefix(subject)}_model-{sanitize_label(model)}_rsa.tsv"

    def cka_table(self, subject: str, model: str) -> Path:
        """ROI x layer CKA of one model (``analyses.cka``)."""
        return self._func(subject) / f"{self._prefix(subject)}_model-{sanitize_label(model)}_cka.tsv"

    def decoding_table(self, subject: str, model: str) -> Path:
        """ROI x layer decoding and identification of one model (``analyses.decoding``)."""
        return self._func(subject) / f"{self._prefix(subject)}_model-{sanitize_label(model)}_decoding.tsv"

    def probing_table(self, subject: str) -> Path:
        """ROI x annotation probes (``analyses.probing.rois``)."""
        return self._func(subject) / f"{self._prefix(subject)}_probing.tsv"

    def drivers_table(self, subject: str, model: str) -> Path:
        """Measured and predicted ROI responses of every stimulus (``analyses.drivers``)."""
        return self._func(subject) / f"{self._prefix(subject)}_model-{sanitize_label(model)}_drivers.tsv"

    def saliency(self, subject: str, model: str, roi: str) -> Path:
        """Saliency maps of an ROI's predicted response for its top stimuli (``analyses.drivers.saliency``)."""
        name = _entities(model=sanitize_label(model), label=sanitize_label(roi))
        return self._func(subject) / f"{self._prefix(subject)}_{name}_saliency.npz"

    def searchlight_map(self, subject: str, model: str, layer: str, stat: str) -> Path:
        name = _entities(model=sanitize_label(model), layer=sanitize_label(layer), stat=sanitize_label(stat))
        return self._func(subject) / f"{self._prefix(subject)}_{name}_desc-searchlight_statmap.nii.gz"

    def searchlight_part(self, subject: str, part: int, n_parts: int, key: str) -> Path:
        """Scores of one centre range (``--searchlight-part``), merged into the maps later."""
        return self.subject_dir(subject) / "parts" / f"searchlight_{key[:12]}_part-{part}-of-{n_parts}.npz"

    def encoding_map(self, subject: str, model: str | None, layer: str | None, stat: str) -> Path:
        name = _entities(model=sanitize_label(model) if model else None,
                         layer=sanitize_label(layer) if layer else None, stat=sanitize_label(stat))
        return self._func(subject) / f"{self._prefix(subject)}_{name}_desc-encoding_statmap.nii.gz"

    def encoding_table(self, subject: str, model: str) -> Path:
        return self._func(subject) / f"{self._prefix(subject)}_model-{sanitize_label(model)}_encoding.tsv"

    def naturalistic_map(self, subject: str, model: str | None, layer: str | None, stat: str) -> Path:
        """A map of the time-series encoding of a naturalistic design (``design: naturalistic``)."""
        name = _entities(model=sanitize_label(model) if model else None,
                         layer=sanitize_label(layer) if layer else None, stat=sanitize_label(stat))
        return self._func(subject) / f"{self._prefix(subject)}_{name}_desc-naturalistic_statmap.nii.gz"

    def naturalistic_timeseries(self, subject: str, model: str) -> Path:
        """Measured and predicted BOLD of the best-predicted voxel (``design: naturalistic``)."""
        return self._func(subject) / (f"{self._prefix(subject)}_model-{sanitize_label(model)}_desc-topvoxel_"
                                      "timeseries.tsv")

    def naturalistic_table(self, subject: str, model: str) -> Path:
        """ROI x layer summary of the time-series encoding."""
        return self._func(subject) / f"{self._prefix(subject)}_model-{sanitize_label(model)}_naturalistic.tsv"

    def timeresolved_rdms(self, subject: str, measure: str) -> Path:
        """Brain RDMs of every time point (or window) of an EEG / MEG participant (``modality: eeg|meg``)."""
        return self._func(subject) / (f"{self._prefix(subject)}_stat-{sanitize_label(measure)}_desc-timeresolved_"
                                      "relmat.npz")

    def temporal_generalization(self, subject: str) -> Path:
        """Time x time similarity of a participant's brain RDMs (``meeg.temporal_generalization``)."""
        return self._func(subject) / f"{self._prefix(subject)}_desc-generalization_relmat.npz"

    def timecourse_table(self, subject: str, model: str | None, analysis: str) -> Path:
        """Per layer and time point scores of ``analysis`` (``rsa`` or ``encoding``) of one model, or across
        models (``variancepartition``) (EEG / MEG)."""
        name = _entities(model=sanitize_label(model) if model else None, desc=analysis)
        return self._func(subject) / f"{self._prefix(subject)}_{name}_timecourse.tsv"

    def encoding_channels(self, subject: str, model: str) -> Path:
        """Held-out r of every channel x time point and layer of the time-resolved encoding (EEG / MEG)."""
        return self._func(subject) / f"{self._prefix(subject)}_model-{sanitize_label(model)}_desc-encoding_stats.npz"

    def epochs_quality(self, subject: str) -> Path:
        """Events, kept and rejected epochs per run and the channels used (EEG / MEG)."""
        return self._func(subject) / f"{self._prefix(subject)}_desc-epochs_qc.tsv"

    def roi_summary(self, subject: str) -> Path:
        return self._func(subject) / f"{self._prefix(subject)}_desc-rois_summary.tsv"

    def log_dir(self, subject: str, run_id: str) -> Path:
        return self.subject_dir(subject) / "log" / run_id

    def status(self, subject: str) -> Path:
        """Completion record of a participant run (read by the group level)."""
        return self.subject_dir(subject) / "log" / f"task-{self.task}_status.json"

    def figures_dir(self, subject: str) -> Path:
        return self.subject_dir(subject) / "figures"

    def participant_report(self, subject: str) -> Path:
        return self.root / f"sub-{subject}.html"

    # group-level ---------------------------------------------------------------------
    @property
    def group_dir(self) -> Path:
        return self.root / "group"

    def group_table(self, model: str, desc: str | None = None, suffix: str = "rsa") -> Path:
        name = _entities(task=self.task, space=self.space, model=sanitize_label(model), desc=desc)
        return self.group_dir / f"{name}_{suffix}.tsv"

    def group_roi_table(self, desc: str | None, suffix: str = "rsa") -> Path:
        """A group table across models (e.g. variance partitioning, ROI probes)."""
        return self.group_dir / f"{_entities(task=self.task, space=self.space, desc=desc)}_{suffix}.tsv"

    def group_map(self, analysis: str, model: str, layer: str, stat: str) -> Path:
        """Group statistical map of ``analysis`` ('searchlight' or 'encoding')."""
        name = _entities(task=self.task, space=self.space, model=sanitize_label(model),
                         layer=sanitize_label(layer), stat=sanitize_label(stat), desc=analysis)
        return self.group_dir / f"{name}_statmap.nii.gz"

    def group_log_dir(self, run_id: str) -> Path:
        return self.group_dir / "log" / run_id

    def group_status(self) -> Path:
        """Completed group-map stages with their content keys (for reruns)."""
        return self.group_dir / "log" / f"task-{self.task}_status.json"

    def group_figures_dir(self) -> Path:
        return self.group_dir / "figures"

    @property
    def group_report(self) -> Path:
        return self.root / "group.html"


# ---------------------------------------------------------------------------------------
# Root files
# ---------------------------------------------------------------------------------------


def dataset_description(source_dir: Path, out_dir: Path, container: str | None = None) -> dict[str, Any]:
    """The derivative's ``dataset_description.json`` content (deterministic).

    ``container`` is the image's tag (set in the image); the container's type is the runtime
    that runs it (:func:`bids_dnn.io.container.container_runtime`). ``DatasetLinks.raw`` is the
    path from the output folder to the input dataset as it is on the host: inside a container
    it is worked out from the mount table (:func:`bids_dnn.io.container.host_relative_path`), and
    it is left out, with ``SourceDatasets``, when the two lie on different file systems there.
    """
    from bids_dnn.io.container import container_runtime, host_relative_path

    generated_by: dict[str, Any] = {"Name": TOOL_NAME, "Version": __version__,
                                    "CodeURL": "https://pypi.org/project/bids_dnn/"}
    runtime = container_runtime()
    if container:
        generated_by["Container"] = {"Type": runtime or "docker", "Tag": container}
    if runtime is None:
        relative: str | None = os.path.relpath(Path(source_dir).resolve(), Path(out_dir).resolve())
    else:
        relative = host_relative_path(Path(source_dir), Path(out_dir))
    description: dict[str, Any] = {
        "Name": f"{TOOL_NAME} derivatives",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "Authors": list(AUTHORS),
        "GeneratedBy": [generated_by],
    }
    if relative is not None:
        description["SourceDatasets"] = [{"URL": "bids:raw:"}]
        description["DatasetLinks"] = {"raw": relative}
    return description


def check_output_folder(out_dir: Path) -> None:
    """Refuse an output folder that cannot be written or belongs to another tool. Writes nothing
    that stays (a probe file in the nearest existing folder is removed at once).

    Raises
    ------
    OutputFolderError
        ``out_dir`` (or a parent) is a file, or the nearest existing folder is not writable
        (exit 73).
    UsageError
        When ``dataset_description.json`` exists and names another generator.
    """
    check_output_writable(Path(out_dir))
    path = Path(out_dir) / "dataset_description.json"
    if not path.is_file():
        return
    try:
        existing = json.loads(path.read_text())
        names = [g.get("Name") for g in existing.get("GeneratedBy", [])]
    except (json.JSONDecodeError, AttributeError, OSError):
        raise UsageError(
            f"{path} exists but is not valid JSON",
            "choose an empty output folder or delete the broken file",
        ) from None
    if TOOL_NAME not in names:
        raise UsageError(
            f"output folder {out_dir} holds derivatives of another tool ({', '.join(map(str, names)) or 'unknown'})",
            "choose another output folder",
        )


def check_output_writable(out_dir: Path) -> None:
    """Raise :class:`OutputFolderError` unless ``out_dir`` is, or can become, a writable folder."""
    from bids_dnn.errors import OutputFolderError

    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "exists and is not a folder" if existing == out_dir else f"cannot be created: {existing} is a file"
        raise OutputFolderError(f"the output folder {out_dir} {what}", "give a folder path for OUT_DIR")
    try:
        handle, probe = tempfile.mkstemp(prefix=".bids_dnn-write-check-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        created = "written" if existing == out_dir else f"created (in {existing})"
        raise OutputFolderError(f"the output folder {out_dir} cannot be {created}: {reason}",
                                "choose a folder you can write to, or fix its permissions") from None


def initialise_root(out_dir: Path, source_dir: Path, container: str | None = None) -> None:
    """Write the deterministic root files (idempotent, safe for parallel jobs)."""
    check_output_folder(out_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_if_changed(out_dir / "dataset_description.json",
                      json.dumps(dataset_description(source_dir, out_dir, container), indent=2, sort_keys=True) + "\n")
    _write_if_changed(out_dir / ".bidsignore", "\n".join(BIDSIGNORE_LINES) + "\n")
    _write_if_changed(out_dir / "README.md", readme_text())
    table = pd.DataFrame({"desc_id": [f"desc-{label}" for label in DESCRIPTIONS],
                          "description": list(DESCRIPTIONS.values())})
    _write_if_changed(out_dir / "descriptions.tsv", table.to_csv(sep="\t", index=False, lineterminator="\n"))
    _write_if_changed(out_dir / "descriptions.json", json.dumps(DESCRIPTIONS_SIDECAR, indent=2, sort_keys=True) + "\n")


DESCRIPTIONS_SIDECAR = {
    "Description": "The labels of the desc entity used in this folder.",
    "desc_id": {"Description": "A desc-<label> entity of this folder's file names."},
    "description": {"Description": "What the files with this label hold."},
}


def readme_text() -> str:
    """The derivatives folder's ``README.md``: what it holds and how it was made (deterministic:
    the same for every run of one bids_dnn version)."""
    return f"""# {TOOL_NAME} derivatives

Made by {TOOL_NAME} {__version__}, a BIDS App that compares deep neural networks with fMRI, EEG and
MEG, from the BIDS dataset named in `dataset_description.json` (`DatasetLinks.raw`) and its fMRIPrep
derivatives (or its EEG / MEG recordings): stimulus set, DNN features and model RDMs, GLM estimates per stimulus, ROI masks and
brain RDMs, ROI RSA, searchlight and encoding maps, group statistics and reports.

## How it was made

Each run records, in `sub-<label>/log/<run-id>/` (participant level) and `group/log/<run-id>/`
(group level), the command line (`command.txt`), the resolved analysis spec (`spec.json`) and
the provenance (`provenance.json`: software versions, platform and device, input runs, seeds,
stages computed); `sub-<label>/log/task-<task>_status.json` records the stages a participant run
completed, with their content keys and the files they wrote. Rerunning the same command
recomputes only what changed.

## What this folder holds

- `task-<task>_stimuli.tsv`: the ordered stimuli (the row and column order of every RDM) with
  the SHA-256 of each file.
- `input_dataset.json`: the input dataset this folder was made from (name, path, participants and,
  per task, a fingerprint of the stimulus set); a participant run of another dataset is refused.
- `model-<model>/`: `*_features.h5` (the activations of every stimulus in every requested layer,
  with provenance attributes), the model RDMs `*_layer-<layer>_stat-<measure>_relmat.tsv`,
  with `analyses.cka` the layer x layer CKA with every model's layers `*_cka.tsv`, and with
  `analyses.probing` the probes of every layer for the stimulus annotations `*_probing.tsv`.
- `sub-<label>/func/`: GLM estimates `*_desc-stimuli_stat-effect_statmap.nii.gz` (one volume per
  stimulus), ROI masks `*_label-<roi>_mask.nii.gz`, brain RDMs
  `*_label-<roi>_stat-<measure>_relmat.tsv`, ROI RSA `*_model-<model>_rsa.tsv`, searchlight maps
  `*_model-<model>_layer-<layer>_stat-<comparison>_desc-searchlight_statmap.nii.gz`, encoding maps
  `*_stat-<r|r2|alpha|normr2|noiseceiling>_desc-encoding_statmap.nii.gz`, encoding ROI means
  `*_model-<model>_encoding.tsv`, ROI x layer CKA `*_model-<model>_cka.tsv`, decoding and
  identification `*_model-<model>_decoding.tsv`, ROI probes `*_probing.tsv`, what drives each ROI
  `*_model-<model>_drivers.tsv` with saliency maps `*_model-<model>_label-<roi>_saliency.npz`
  (NumPy arrays: the stimuli, the images as the network saw them, one map per method) and voxel
  counts `*_desc-rois_summary.tsv`; `figures/` holds the report's pictures.
- `sub-<label>/eeg/` or `meg/` (`modality: eeg|meg`): brain RDMs of every time point
  `*_stat-<measure>_desc-timeresolved_relmat.npz` (NumPy arrays `rdms` (time x stimulus pair),
  `times` in s, `stim_ids`; the sidecar describes the time axis), temporal generalisation
  `*_desc-generalization_relmat.npz`, RSA and encoding time courses
  `*_model-<model>_desc-<rsa|encoding>_timecourse.tsv`, encoding r per channel and time
  `*_model-<model>_desc-encoding_stats.npz`, and epochs kept and rejected per run `*_desc-epochs_qc.tsv`.
- `group/`: tables across participants (`*_rsa.tsv`, `*_encoding.tsv`, `*_cka.tsv`, `*_decoding.tsv`,
  `*_probing.tsv`, `*_drivers.tsv`; `desc-` labels in
  `descriptions.tsv`) and group maps `*_stat-<t|p|pfwe|pfdr>_desc-<analysis>_statmap.nii.gz`; for EEG / MEG
  the group time courses, clusters and latencies `*_desc-<rsa|encoding>_<timecourse|clusters|latency|
  latencycomparisons>.tsv` and the group temporal generalisation `*_desc-generalization_relmat.npz`.
- `sub-<label>.html`, `group.html`: self-contained reports.

Every table and image has a JSON sidecar: the data dictionary of a table's columns (the
columns `subject`, `roi`, `model` and `layer` hold those labels and are not listed there: pybids
would read them as entities), and the settings and sources of an image or RDM.

## Names

`model-`, `layer-` and `stat-` are entities that BIDS does not define: labels are sanitised to
letters and digits (layer `features.2` is `layer-features2`) and the original names are in the
sidecars (`Model`, `Layer`). Files whose suffix or folder BIDS does not define are listed in
`.bidsignore`; the BIDS validator checks the rest. To index the folder with pybids:

```python
import bids, bids_dnn
layout = bids.BIDSLayout(OUT_DIR, validate=False, is_derivative=True,
                         config=["bids", "derivatives", bids_dnn.pybids_config()])
layout.get(suffix="statmap", model="alexnet", layer="features2", stat="t", extension=".nii.gz")
```
"""


def _write_if_changed(path: Path, text: str) -> None:
    write_text(path, text, if_changed=True)
