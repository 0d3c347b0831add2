"""Everything a report shows, read back from the output folder (derivatives + log JSON).

The report builders never need the pipeline's in-memory state: ``--reports-only`` rebuilds a
report from these files alone. Values handed in by the pipeline (the stimulus set, the
participant summary) are only used when they are fresher than the files (a report is written
before the participant's status file).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_dnn.io import derivatives as drv
from bids_dnn.console import logger
from bids_dnn.spec import AnalysisSpec, parse_spec, sanitize_label

ENTITY = re.compile(r"([a-zA-Z]+)-([a-zA-Z0-9]+)")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; {} when absent or unreadable (logged)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("report: cannot read %s (%s)", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def entities(name: str) -> dict[str, str]:
    """BIDS entities of a file name (``sub-01_task-x_..._stat-r_statmap.nii.gz``)."""
    stem = name.split(".")[0]
    out = {}
    for part in stem.split("_")[:-1]:
        match = ENTITY.fullmatch(part)
        if match:
            out[match[1]] = match[2]
    return out


def find_log_dir(parent: Path, run_id: str | None) -> Path | None:
    """``parent/run_id`` when it exists, else the latest run folder (run ids sort by time)."""
    parent = Path(parent)
    if run_id and (parent / run_id).is_dir():
        return parent / run_id
    if not parent.is_dir():
        return None
    runs = sorted(p for p in parent.iterdir() if p.is_dir() and (p / "provenance.json").is_file())
    return runs[-1] if runs else None


def spec_from_log(log_dir: Path | None, fallback: AnalysisSpec | None) -> tuple[AnalysisSpec, str]:
    """The spec that made the outputs (the log's ``spec.json``), else ``fallback``, else defaults."""
    if log_dir is not None and (log_dir / "spec.json").is_file():
        try:
            return parse_spec(read_json(log_dir / "spec.json"), source=str(log_dir / "spec.json")), "log"
        except Exception as exc:  # noqa: BLE001 - an old or edited spec.json falls back
            logger.warning("report: %s/spec.json is not a valid spec (%s); using the given spec", log_dir, exc)
    if fallback is not None:
        return fallback, "argument"
    return AnalysisSpec(), "defaults"


def raw_dataset_dir(layout: drv.OutputLayout) -> Path | None:
    """The input dataset, from ``dataset_description.json`` DatasetLinks.raw (relative to OUT_DIR)."""
    link = read_json(layout.dataset_description).get("DatasetLinks", {}).get("raw")
    if not link:
        return None
    path = Path(link)
    return (path if path.is_absolute() else (layout.root / path)).resolve()


def container_tag(layout: drv.OutputLayout, provenance: dict[str, Any]) -> str | None:
    if provenance.get("container"):
        return str(provenance["container"])
    for generator in read_json(layout.dataset_description).get("GeneratedBy", []):
        tag = (generator.get("Container") or {}).get("Tag") if isinstance(generator, dict) else None
        if tag:
            return str(tag)
    return None


# ---------------------------------------------------------------------------------------
# Stimuli
# ---------------------------------------------------------------------------------------


@dataclass
class StimulusInfo:
    """The task's stimuli as a report sees them (paths None where a file cannot be found).

    ``texts``: empty, or one entry per stimulus: the text of a text given in the input's
    ``stimuli.tsv`` (no file), None for the others.
    """

    stim_ids: list[str]
    categories: list[str]
    files: list[str]
    paths: list[Path | None]
    texts: list[str | None] = field(default_factory=list)

    @property
    def n_stimuli(self) -> int:
        return len(self.stim_ids)

    def text_of(self, i: int) -> str | None:
        """The text of stimulus ``i`` when it was given in ``stimuli.tsv`` (None for a file)."""
        return self.texts[i] if self.texts else None

    @property
    def kinds(self) -> list[str | None]:
        """The kind of each stimulus (``"text"`` for a text given in ``stimuli.tsv``, else by the
        file's extension: :func:`bids_dnn.io.stimulus_loading.stimulus_kind`)."""
        from bids_dnn.io.stimulus_loading import stimulus_kind

        return ["text" if self.text_of(i) is not None else stimulus_kind(file) if file else None
                for i, file in enumerate(self.files)]

    def category_order(self) -> np.ndarray:
        """Row order grouping stimuli by category (stable: keeps the table order inside)."""
        first = {c: i for i, c in reversed(list(enumerate(self.categories)))}
        return np.array(sorted(range(self.n_stimuli), key=lambda i: (first[self.categories[i]], i)))


def read_stimuli(layout: drv.OutputLayout, stimuli: Any = None) -> StimulusInfo:
    """The task's stimuli (``task-<task>_stimuli.tsv``); file paths from ``stimuli`` or the raw link."""
    path = layout.stimuli_table()
    if path.is_file():
        table = drv.read_tsv(path).astype({"stim_id": str, "category": str})
        ids, categories = list(table["stim_id"]), list(table["category"])
        files = [str(f) for f in table.get("stim_file", pd.Series(ids))]
        sources = [str(s) for s in table.get("source", pd.Series(["stimuli"] * len(ids)))]
    elif stimuli is not None:
        ids, categories, files = list(stimuli.stim_ids), list(stimuli.categories), list(stimuli.files)
        sources = ["stimuli"] * len(ids)
    else:
        raise FileNotFoundError(f"stimulus table not found: {path}")
    files = ["" if file in ("", "nan") else file for file in files]
    paths: list[Path | None] = [None] * len(ids)
    texts: list[str | None] = []
    if stimuli is not None and list(stimuli.stim_ids) == ids:
        paths = [Path(p) for p in stimuli.paths]
        texts = list(getattr(stimuli, "texts", None) or [])
    else:
        raw = raw_dataset_dir(layout)
        for i, (file, source) in enumerate(zip(files, sources)):
            base = Path(source) if Path(source).is_absolute() else (raw / source if raw else None)
            if base is not None and file and (base / file).is_file():
                paths[i] = base / file
        if not all(files):
            texts = _table_texts(ids, files, sources, raw)
    return StimulusInfo(ids, categories, files, paths, texts)


def _table_texts(ids: list[str], files: list[str], sources: list[str], raw: Path | None) -> list[str | None]:
    """The texts given in the input's ``stimuli.tsv`` (its folder is the ``source`` of a row without a
    file); None where a row has a file or the table cannot be read."""
    from bids_dnn.io.stimuli import STIMULI_TABLE, read_stimuli_table

    tables: dict[Path, dict[str, str]] = {}
    texts: list[str | None] = []
    for stim_id, file, source in zip(ids, files, sources):
        base = Path(source) if Path(source).is_absolute() else (raw / source if raw else None)
        if file or base is None:
            texts.append(None)
            continue
        if base not in tables:
            try:
                tables[base] = read_stimuli_table(base / STIMULI_TABLE).texts
            except Exception as exc:  # noqa: BLE001 - the montage shows a grey tile instead
                logger.debug("report: cannot read the texts of %s (%s)", base / STIMULI_TABLE, exc)
                tables[base] = {}
        texts.append(tables[base].get(stim_id))
    return texts if any(text is not None for text in texts) else []


# ---------------------------------------------------------------------------------------
# Tables, RDMs, maps
# ---------------------------------------------------------------------------------------


def read_relmat(path: Path) -> tuple[np.ndarray, list[str]]:
    """A square RDM TSV (header = stimulus ids)."""
    table = drv.read_tsv(path)
    return table.to_numpy(dtype=np.float64), [str(c) for c in table.columns]


def read_table(path: Path) -> pd.DataFrame | None:
    """An output table (labels as text, see :data:`bids_dnn.io.derivatives.LABEL_COLUMNS`), or None
    when it does not exist."""
    if not Path(path).is_file():
        return None
    return drv.read_tsv(path)


def ordered_layers(table: pd.DataFrame | None, model_dir: Path, measure: str) -> list[str]:
    """Layers of a model in network order: the RSA table's order, else the feature file's layer
    order, else the model RDM sidecars' (alphabetical)."""
    if table is not None and "layer" in table.columns and len(table):
        return list(dict.fromkeys(str(x) for x in table["layer"]))
    for path in sorted(Path(model_dir).glob("*_features.h5")):
        try:
            import h5py

            from bids_dnn.features.store import LAYER_ORDER

            with h5py.File(path, "r") as h5:
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in h5[LAYER_ORDER][()]]
            if names:
                return names
        except Exception as exc:  # noqa: BLE001 - fall back to the sidecars
            logger.debug("report: cannot read the layer order of %s (%s)", path, exc)
    layers = []
    for sidecar in sorted(Path(model_dir).glob(f"*_stat-{sanitize_label(measure)}_relmat.json")):
        layer = read_json(sidecar).get("Layer")
        if layer:
            layers.append(str(layer))
    return layers


@dataclass
class MapFile:
    """One statistical map written by a whole-brain analysis."""

    path: Path
    analysis: str
    model: str | None
    layer_label: str | None
    stat: str
    sidecar: dict[str, Any] = field(default_factory=dict)

    @property
    def layer(self) -> str | None:
        return str(self.sidecar.get("Layer") or self.layer_label) if (self.layer_label or self.sidecar.get("Layer")) else None


def find_maps(folder: Path, analysis: str, prefix: str = "") -> list[MapFile]:
    """``*_desc-<analysis>_statmap.nii.gz`` files in ``folder`` (with their sidecars)."""
    out = []
    for path in sorted(Path(folder).glob(f"{prefix}*_desc-{analysis}_statmap.nii.gz")):
        ents = entities(path.name)
        sidecar = read_json(drv.sidecar_path(path))
        out.append(MapFile(path, analysis, ents.get("model"), ents.get("layer"), ents.get("stat", "value"), sidecar))
    return out


def load_volume(path: Path) -> tuple[np.ndarray, Any]:
    import nibabel as nib

    image = nib.load(str(path))
    return np.asarray(image.dataobj, dtype=np.float64), image


def subject_background(layout: drv.OutputLayout, subject: str) -> tuple[Any, str]:
    """Background image of the subject's maps: a mean BOLD / boldref if written, else the betas' mean.

    Returns (image or None, description).
    """
    import nibabel as nib

    func = layout.betas(subject).parent
    for pattern in (f"sub-{subject}_*_desc-mean_bold.nii.gz", f"sub-{subject}_*_boldref.nii.gz"):
        found = sorted(func.glob(pattern))
        if found:
            return nib.load(str(found[0])), "mean BOLD"
    betas = layout.betas(subject)
    if betas.is_file():
        image = nib.load(str(betas))
        data = np.asarray(image.dataobj, dtype=np.float64)
        mean = np.nanmean(np.abs(data), axis=-1) if data.ndim == 4 else np.abs(data)
        return nib.Nifti1Image(np.nan_to_num(mean).astype(np.float32), image.affine), \
            "mean absolute stimulus estimate (betas)"
    return None, "none"


#: description of the template underlay (nilearn's bundled MNI152 template)
TEMPLATE_DESCRIPTION = "MNI152 template (ICBM 2009 T1, bundled with nilearn)"


def is_template_space(space: str | None) -> bool:
    """True for an MNI152 template space (``MNI152NLin2009cAsym``, ``MNI152NLin6Asym``, ...)."""
    return str(space or "").upper().startswith("MNI152")


def template_background() -> Any:
    """nilearn's MNI152 T1 template (shipped inside the nilearn package: no download) at 2 mm,
    or None when it cannot be loaded (logged).

    The 1 mm template is subsampled (every second voxel; no interpolation): an underlay of maps
    with voxels of 2 mm or more loses nothing, and every map figure draws 2.5 times faster.
    """
    import nibabel as nib

    try:
        from nilearn.datasets import load_mni152_template

        template = load_mni152_template()
    except Exception as exc:  # noqa: BLE001 - fall back to the data's own mean image
        logger.warning("report: cannot load nilearn's MNI152 template (%s); using the mean image", exc)
        return None
    affine = template.affine.copy()
    affine[:3, :3] *= 2
    return nib.Nifti1Image(np.asarray(template.dataobj)[::2, ::2, ::2].copy(), affine)


def map_background(layout: drv.OutputLayout, subjects: list[str]) -> tuple[Any, str]:
    """The underlay of a report's maps: the MNI152 template in a template space, else the mean
    of the subjects' background images (:func:`subject_background`, same grid only).

    Returns (image or None, description).
    """
    import nibabel as nib

    if is_template_space(layout.space):
        template = template_background()
        if template is not None:
            return template, TEMPLATE_DESCRIPTION
    found = [subject_background(layout, s) for s in subjects]
    images = [image for image, _ in found if image is not None]
    if not images:
        return None, "no background"
    if len(subjects) == 1:
        return found[0]
    first = images[0]
    same = [i for i in images if i.shape == first.shape and np.allclose(i.affine, first.affine, atol=1e-4)]
    mean = np.mean([np.asarray(i.dataobj, dtype=np.float32) for i in same], axis=0)
    return nib.Nifti1Image(mean, first.affine), f"mean over {len(same)} participants of the mean absolute betas"


def subject_ids(layout: drv.OutputLayout) -> list[str]:
    """Participant labels with a folder in the output."""
    return sorted(p.name[4:] for p in layout.root.glob("sub-*") if p.is_dir())
