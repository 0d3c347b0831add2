"""A small synthetic output folder of a naturalistic design (``design: naturalistic``).

Maps on a tiny grid, the ROI tables, the top-voxel time series and the group summary and maps are
written with the pipeline's writers (:mod:`bids_dnn.io.derivatives`) under the names of
:class:`~bids_dnn.io.derivatives.OutputLayout`, so the reports read them as they read a real run's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_dnn.io import derivatives as drv
from bids_dnn.spec import AnalysisSpec, parse_spec

TASK = "movie"
MODEL = "alexnet"
LAYERS = ["features.2", "features.5", "classifier.1"]
ROIS = ["early", "late"]
SHAPE = (6, 7, 5)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = (-6.0, -8.0, -4.0)
T_R = 2.0
N_RUNS = 3
N_VOLUMES = 40
ALPHA = 0.05
#: group p-values of the summary rows (in turn)
GROUP_P = (0.001, 0.2, 0.01, 0.4, 0.003, 0.03)
UNAVAILABLE = "No run repeats a stimulus: the noise ceiling is unavailable (all n/a)"


def naturalistic_spec(banded: bool = False, word_column: str | None = None) -> AnalysisSpec:
    return parse_spec({"design": "naturalistic", "models": [{"name": "alexnet", "weights": "random",
                                                             "layers": LAYERS}],
                       "rois": {"atlas": "atlas.nii.gz"}, "stimuli": {"video": {"fps": 4}},
                       "analyses": {"naturalistic": {"banded": banded, "word_column": word_column,
                                                     "delays": [1, 2, 3]}},
                       "statistics": {"alpha": ALPHA, "bootstrap": 100, "map_permutations": 100}})


def brain_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[1:5, 1:6, 1:4] = True
    return mask


def roi_masks() -> dict[str, np.ndarray]:
    mask = brain_mask()
    early = mask.copy()
    early[:, 3:, :] = False
    return {"early": early, "late": mask & ~early}


def _write_map(path: Path, values: np.ndarray, sidecar: dict[str, Any]) -> Path:
    import nibabel as nib

    volume = np.full(SHAPE, np.nan, dtype=np.float32)
    volume[brain_mask()] = values
    return drv.write_nifti(path, nib.Nifti1Image(volume, AFFINE), {"RepetitionTime": T_R, **sidecar})


def write_participant(layout: drv.OutputLayout, rng: np.random.Generator, subject: str = "01", *,
                      ceiling: bool = True, banded: bool = False) -> dict[str, Any]:
    """Every participant output of the time-series encoding and the run's log folder (spec and
    provenance); returns what was planted (maps as in-mask vectors, the ROI table, the top-voxel
    table)."""
    from bids_dnn.spec import spec_to_dict

    log_dir = layout.log_dir(subject, "run1")
    drv.write_json(log_dir / "spec.json", spec_to_dict(naturalistic_spec(banded=banded)))
    drv.write_json(log_dir / "provenance.json", {"run_id": "run1", "subject": subject})
    mask = brain_mask()
    n = int(mask.sum())
    r = {layer: np.clip(rng.normal(0.1 + 0.1 * k, 0.1, n), -0.9, 0.9) for k, layer in enumerate(LAYERS)}
    r2 = {layer: r[layer] ** 2 * np.sign(r[layer]) for layer in LAYERS}
    stack = np.stack([r[layer] for layer in LAYERS])
    best = np.argmax(stack, axis=0) + 1.0
    best[:3] = np.nan  # voxels without an r
    ceiling_values = rng.uniform(-0.1, 0.6, n) if ceiling else np.full(n, np.nan)
    _write_map(layout.naturalistic_map(subject, None, None, "noiseceiling"), ceiling_values, {
        "Statistic": "noiseceiling", "Description": "Explainable variance of the repeated runs" if ceiling
        else UNAVAILABLE})
    for layer in LAYERS:
        for stat, values in (("r", r[layer]), ("r2", r2[layer])):
            _write_map(layout.naturalistic_map(subject, MODEL, layer, stat), values,
                       {"Model": MODEL, "Layer": layer, "Statistic": stat})
        if banded:
            _write_map(layout.naturalistic_map(subject, MODEL, layer, "bandedr2"), r2[layer] / len(LAYERS),
                       {"Model": MODEL, "Layer": layer, "Statistic": "bandedr2"})
    _write_map(layout.naturalistic_map(subject, MODEL, None, "bestlayer"), best,
               {"Model": MODEL, "Statistic": "bestlayer", "Layers": LAYERS})
    rows = []
    in_mask = {roi: m[mask] for roi, m in roi_masks().items()}
    for j, layer in enumerate(LAYERS):
        for roi, cols in in_mask.items():
            rows.append({"subject": subject, "roi": roi, "model": MODEL, "layer": layer,
                         "mean_r": float(np.mean(r[layer][cols])), "mean_r2": float(np.mean(r2[layer][cols])),
                         "best_layer_share": float(np.mean(best[cols] == j + 1)),
                         "mean_noise_ceiling": float(np.nanmean(ceiling_values[cols])) if ceiling else np.nan,
                         "n_voxels": int(cols.sum())})
    table = pd.DataFrame(rows)
    drv.write_tsv(layout.naturalistic_table(subject, MODEL), table, {"ModelLabel": MODEL})
    measured = rng.normal(size=N_RUNS * N_VOLUMES)
    predicted = 0.6 * measured + rng.normal(scale=0.8, size=measured.size)
    top = pd.DataFrame({"run": np.repeat(np.arange(1, N_RUNS + 1), N_VOLUMES),
                        "volume": np.tile(np.arange(N_VOLUMES), N_RUNS), "measured": measured,
                        "predicted": predicted})
    drv.write_tsv(layout.naturalistic_timeseries(subject, MODEL), top, {
        "Voxel": [2, 2, 1], "Layer": LAYERS[2], "ModelLabel": MODEL, "HeldOutR": 0.4321})
    drv.write_json(layout.status(subject), {"subject": subject, "n_runs": N_RUNS, "n_voxels": n,
                                            "noise_ceiling": ceiling, "complete": True, "run_id": "run1",
                                            "seconds": 12.5, "models": {MODEL: {}}})
    return {"r": r, "best": best, "ceiling": ceiling_values, "table": table, "top": top}


def group_summary() -> pd.DataFrame:
    rows = []
    for roi in ROIS:
        for k, layer in enumerate(LAYERS):
            p = GROUP_P[len(rows) % len(GROUP_P)]
            mean = 0.05 + 0.1 * k + (0.05 if roi == "late" else 0.0)
            rows.append({"roi": roi, "model": MODEL, "layer": layer, "n_subjects": 3, "mean": mean, "chance": 0.0,
                         "sem": 0.02, "t": 3.0 + k, "p_ttest": p, "wilcoxon_w": 6.0, "p_wilcoxon": 0.125,
                         "ci_low": mean - 0.03, "ci_high": mean + 0.04, "p_group": p, "p_fdr": min(1.0, 2 * p),
                         "p_bonferroni": min(1.0, 6 * p), "significant": 2 * p < ALPHA,
                         "best_layer_cv": k == 2})
    return pd.DataFrame(rows)


def write_group(layout: drv.OutputLayout, rng: np.random.Generator) -> dict[str, Any]:
    """The group summary and the group maps (t, p, pfdr, pfwe per layer); returns the pfwe maps."""
    summary = group_summary()
    drv.write_tsv(layout.group_table(MODEL, "summary", suffix="naturalistic"), summary)
    n = int(brain_mask().sum())
    pfwe = {}
    for layer in LAYERS:
        t = rng.normal(2.0, 2.0, n)
        p = rng.uniform(0, 0.2, n)
        pfwe[layer] = np.minimum(1.0, 3 * p)
        for stat, values in (("t", t), ("p", p), ("pfdr", np.minimum(1.0, 2 * p)), ("pfwe", pfwe[layer])):
            _write_map(layout.group_map("naturalistic", MODEL, layer, stat), values, {
                "Analysis": "naturalistic", "Model": MODEL, "Layer": layer, "Statistic": stat,
                "NumberOfSubjects": 3, "Permutations": 8, "ThresholdFWE_t": 3.1})
    return {"summary": summary, "pfwe": pfwe}
