"""Every output path, sidecar and root file of the derivatives folder, and atomic writes.

Nothing else in the package builds an output path: orchestration asks :class:`OutputLayout`.
Every write goes through a temp file in the destination folder, fsync, then ``os.replace``,
so an interrupted run never leaves a half-written file and parallel jobs never tear one.

Names follow BIDS-Derivatives with three documented custom entities (``model-``, ``layer-``,
``stat-`` on relmat files); labels are sanitised to alphanumerics and the original names are
kept in the sidecars.
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

BIDSIGNORE_LINES = [
    "*_features.h5",
    "*_relmat.tsv",
    "*_relmat.json",
    "*_rsa.tsv",
    "*_rsa.json",
    "*_encoding.tsv",
    "*_encoding.json",
    "*_stimuli.tsv",
    "*_stimuli.json",
    "*_statmap.nii.gz",
    "*_statmap.json",
    "*_mask.nii.gz",
    "*_mask.json",
    "*_summary.tsv",
    "*_summary.json",
    "*.lock",
    "*/log/",
    "*/parts/",
    "*/figures/",
    "group/",
    "*.html",
]

DESCRIPTIONS = {
    "stimuli": "One volume per stimulus: GLM estimate of the response to each stimulus.",
    "summary": "Group summary across participants.",
    "noiseceiling": "Lower and upper noise ceilings of the RSA scores.",
    "bestlayer": "Cross-validated best layer per ROI and model.",
    "comparisons": "Pairwise comparisons between layers of a model.",
    "weighted": "Cross-validated weighted RSA: non-negative combination of a model's layer RDMs.",
    "weightedscores": "Held-out scores of the weighted RSA per subject.",
    "weights": "Layer weights of the weighted RSA per fold.",
    "variancepartition": "Unique and shared R2 of brain RDMs from groups of model RDMs, per subject.",
    "variancepartitionsummary": "Variance partitioning across subjects.",
    "searchlight": "Searchlight RSA: comparison of sphere RDMs with a model RDM at each centre.",
    "encoding": "Cross-validated ridge encoding from layer features to voxel responses.",
}


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


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temp files under ``folder`` left by killed writers on this host; returns how many.

    A temp file of a live process, or of another host (shared file systems), is kept.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    host, removed = socket.gethostname(), 0
    for path in folder.rglob(".*"):
        match = _TEMP_NAME.match(path.name)
        if match and match["host"] == host and not _alive(int(match["pid"])):
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


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def write_json(path: Path, data: Any, *, if_changed: bool = False) -> Path:
    """Write deterministic, indented JSON atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", if_changed=if_changed)


def write_tsv(path: Path, table: pd.DataFrame, sidecar: dict[str, Any] | None = None, *,
              if_changed: bool = False) -> Path:
    """Write a TSV (``n/a`` for missing values) and, if given, its JSON data dictionary
    (``if_changed``: files with identical content are left untouched)."""
    text = table.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.10g", lineterminator="\n")
    write_text(path, text, if_changed=if_changed)
    if sidecar is not None:
        write_json(sidecar_path(path), sidecar, if_changed=if_changed)
    return path


#: columns holding labels, read as text (``01`` stays ``01``)
LABEL_COLUMNS = {name: str for name in ("subject", "session", "run", "roi", "model", "layer", "stim_id")}


def read_tsv(path: Path) -> pd.DataFrame:
    """Read a TSV written by :func:`write_tsv` (``n/a`` as missing)."""
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
    for ext in (".nii.gz", ".tsv", ".nii", ".h5"):
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
        Space label of brain outputs.
    """

    root: Path
    task: str
    space: str

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

    # participant-level ---------------------------------------------------------------
    def subject_dir(self, subject: str) -> Path:
        return self.root / f"sub-{subject}"

    def _func(self, subject: str, session: str | None = None) -> Path:
        base = self.subject_dir(subject)
        return (base / f"ses-{session}" / "func") if session else base / "func"

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

    def group_roi_table(self, desc: str, suffix: str = "rsa") -> Path:
        """A group table across models (e.g. variance partitioning)."""
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
    """The derivative's ``dataset_description.json`` content (deterministic)."""
    generated_by: dict[str, Any] = {"Name": TOOL_NAME, "Version": __version__,
                                    "CodeURL": "https://pypi.org/project/bids_dnn/"}
    if container:
        generated_by["Container"] = {"Type": "docker", "Tag": container}
    relative = os.path.relpath(Path(source_dir).resolve(), Path(out_dir).resolve())
    return {
        "Name": f"{TOOL_NAME} derivatives",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "SourceDatasets": [{"URL": "bids:raw:"}],
        "DatasetLinks": {"raw": relative},
    }


def check_output_folder(out_dir: Path) -> None:
    """Refuse an output folder that belongs to another tool.

    Raises
    ------
    UsageError
        When ``dataset_description.json`` exists and names another generator.
    """
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


def initialise_root(out_dir: Path, source_dir: Path, container: str | None = None) -> None:
    """Write the deterministic root files (idempotent, safe for parallel jobs)."""
    check_output_folder(out_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_if_changed(out_dir / "dataset_description.json",
                      json.dumps(dataset_description(source_dir, out_dir, container), indent=2, sort_keys=True) + "\n")
    _write_if_changed(out_dir / ".bidsignore", "\n".join(BIDSIGNORE_LINES) + "\n")
    table = pd.DataFrame({"desc_id": list(DESCRIPTIONS), "description": list(DESCRIPTIONS.values())})
    _write_if_changed(out_dir / "descriptions.tsv", table.to_csv(sep="\t", index=False, lineterminator="\n"))


def _write_if_changed(path: Path, text: str) -> None:
    write_text(path, text, if_changed=True)
