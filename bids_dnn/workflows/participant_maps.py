"""Participant level, whole-brain analyses: searchlight RSA and voxelwise encoding maps.

Orchestration only (the math is in :mod:`bids_dnn.searchlight` and :mod:`bids_dnn.encoding`):
choose the voxels and their patterns, call the engines, write the maps and tables.
Called by :func:`bids_dnn.workflows.participant.process_subject` after the ROI RSA.

Searchlight patterns
    The subject's brain mask, less voxels without finite estimates in every used run, is the
    searchlight mask. Patterns are noise-normalised per voxel (``betas / residual SD``, pooled
    over runs) unless ``brain.noise_normalization: none``: multivariate whitening per sphere
    would cost one covariance per centre. ``analyses.searchlight.rdm: auto`` follows
    ``rdm.brain`` (crossnobis with >= 2 complete runs, else correlation; ``mahalanobis`` becomes
    ``sqeuclidean`` of the normalised patterns, which is the same distance with a diagonal
    precision).

Searchlight parts
    ``--searchlight-part K/N`` computes the K-th of N contiguous centre ranges of each subject
    and stores its scores under ``sub-XX/parts/`` (keyed by the inputs); a later run without
    the option merges a complete set of parts instead of recomputing (bit-identical to a
    single run, because every centre's score depends on that centre's sphere only).

Encoding samples and folds
    One sample per stimulus: the response is the mean of its run estimates. A stimulus is never
    in the training and the test fold of the same split: ``leave_one_run_out`` needs runs with
    disjoint stimulus sets (each stimulus shown in one run), else folds split the stimuli
    (seeded K-fold).

Encoding scores
    Per voxel (see :mod:`bids_dnn.encoding.ridge`): ``r`` is the mean over outer folds of the
    Pearson r within each test fold; ``r2`` is the R2 of the out-of-fold predictions pooled
    over the folds (``1 - SSE / SST``). The noise ceiling of a voxel is the split-half
    reliability of its stimulus profile (odd vs even runs, Spearman-Brown corrected); the
    ceiling of an ROI is :func:`bids_dnn.encoding.scores.pooled_reliability` of its voxels
    (Spearman-Brown of the mean split-half r). Ceiling-normalised scores are
    ``R2 / reliability`` (voxel maps) and ``mean_r2 / ROI ceiling`` (tables), reported only
    where the ceiling is at least :data:`bids_dnn.encoding.scores.MIN_CEILING` (0.1), else NaN
    (``n/a``): a ceiling near zero means no reproducible signal, and dividing by it gives
    values of arbitrary size and sign.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bids_dnn import __version__
from bids_dnn.io import derivatives as drv
from bids_dnn.console import logger, progress
from bids_dnn.errors import AnalysisError
from bids_dnn.hashing import canonical_json, parts_sha256
from bids_dnn.rsa.measures import CORRELATION_MEASURES
from bids_dnn.stats.fisher import fisher_z

if TYPE_CHECKING:
    from bids_dnn.workflows.context import Context
    from bids_dnn.workflows.subject_patterns import SubjectPatterns
    from bids_dnn.io.stimuli import StimulusSet

#: default memory budget of the searchlight engine when --mem is not given
DEFAULT_SEARCHLIGHT_MEMORY = 2 * 1024**3

ENCODING_COLUMNS = {
    "subject": "Participant label.",
    "roi": "Region of interest.",
    "model": "Model label.",
    "layer": "Layer (node) name as in the model.",
    "n_voxels": "Voxels of the ROI with an encoding score.",
    "mean_r": "Mean over voxels of the held-out Pearson r (per voxel: mean over outer folds of r within each "
              "test fold).",
    "mean_r2": "Mean over voxels of the held-out R2 = 1 - SSE / SST of the out-of-fold predictions pooled over "
               "folds (SST around the mean response).",
    "median_alpha": "Median over voxels and outer folds of the ridge penalty chosen by inner CV.",
    "noise_ceiling": "ROI reliability: Spearman-Brown correction 2r / (1 + r) of the mean over voxels of the "
                     "split-half (odd vs even runs) correlation r of the stimulus profile.",
    "normalized_r2": "mean_r2 / noise_ceiling; NaN (n/a) when noise_ceiling < 0.1 (no reproducible signal).",
    "normalized_r2_out_of_range": "True when normalized_r2 is outside [0, 1]: not a fraction of the explainable "
                                  "variance (noisy ceiling, or a model worse than the mean response).",
    "alpha_at_grid_edge": "Share of the ROI's (voxel, outer fold) ridge penalties that are the smallest or the "
                          "largest value of analyses.encoding.alphas (extend the grid; at the top: no learnable "
                          "signal).",
    "cv": "Outer cross-validation scheme.",
    "n_folds": "Number of outer folds.",
}


def _volume(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(n_maps, n_mask_voxels) -> (*mask.shape, n_maps) float32, NaN outside the mask."""
    out = np.full(mask.shape + (values.shape[0],), np.nan, dtype=np.float32)
    out[mask] = values.T
    return out


def _write_maps(paths: list[Path], values: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                sidecars: list[dict[str, Any]]) -> list[Path]:
    import nibabel as nib

    volume = _volume(values, mask)
    for i, (path, sidecar) in enumerate(zip(paths, sidecars)):
        drv.write_nifti(path, nib.Nifti1Image(volume[..., i], affine), sidecar)
    return paths


def _model_rows(models: dict[str, dict[str, np.ndarray]]) -> tuple[list[tuple[str, str]], np.ndarray]:
    pairs = [(model, layer) for model, layers in models.items() for layer in layers]
    return pairs, np.stack([models[m][lay] for m, lay in pairs])


# ---------------------------------------------------------------------------------------
# Searchlight
# ---------------------------------------------------------------------------------------


@dataclass
class SearchlightInputs:
    """Patterns of the searchlight mask of one subject.

    Attributes
    ----------
    patterns : ndarray, (n_cond, n_voxels) or (n_runs, n_cond, n_voxels) for crossnobis
    mask : ndarray of bool, (X, Y, Z)
        Searchlight mask (its True voxels, C order, are the pattern columns).
    """

    measure: str
    patterns: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    n_runs: int


def searchlight_measure(ctx: "Context", n_complete_runs: int) -> str:
    from bids_dnn.workflows.subject_patterns import brain_rdm_measure

    requested = ctx.spec.analyses.searchlight.rdm
    if requested == "auto":
        requested = brain_rdm_measure(ctx, n_complete_runs)
        return "sqeuclidean" if requested == "mahalanobis" else requested
    if requested == "crossnobis" and n_complete_runs < 2:
        raise AnalysisError("analyses.searchlight.rdm: 'crossnobis' needs at least 2 runs that contain every "
                            "stimulus", "use 'correlation'")
    return requested


def searchlight_inputs(ctx: "Context", patterns: "SubjectPatterns") -> SearchlightInputs:
    """Noise-normalised whole-brain patterns and the searchlight mask."""
    from bids_dnn.brain.patterns import divide_by_sd, residual_sd
    from bids_dnn.searchlight import complete_runs, drop_nonfinite_voxels, usable_patterns, voxel_mask

    complete = complete_runs(patterns.run_betas)
    measure = searchlight_measure(ctx, int(complete.sum()))
    per_run = measure == "crossnobis"
    used = patterns.run_betas[complete] if per_run else patterns.run_betas
    betas, voxels = usable_patterns(used, patterns.residuals, per_run=per_run)
    if ctx.spec.brain.noise_normalization == "none" or not patterns.residuals:  # ready-made betas: no residuals
        data = betas.astype(np.float64, copy=True)
    else:  # univariate: per-voxel residual SD pooled over runs, without concatenating the runs
        data = divide_by_sd(betas, residual_sd(patterns.residuals, sum(patterns.dofs), voxels))
    data, voxels = drop_nonfinite_voxels(data, voxels)
    return SearchlightInputs(measure, data, voxel_mask(patterns.brain_mask, voxels), patterns.reference.affine,
                             int(used.shape[0]))


def searchlight_key(ctx: "Context", subject: str, stimuli: "StimulusSet", inputs: SearchlightInputs,
                    model_rows: np.ndarray) -> str:
    """Content key of one subject's searchlight scores (inputs, options, version)."""
    spec = ctx.spec.analyses.searchlight.model_dump(mode="json")
    options = canonical_json({"spec": spec, "brain": ctx.spec.brain.model_dump(mode="json"), "subject": subject,
                              "measure": inputs.measure, "version": __version__, "stimuli": stimuli.set_hash()},
                             compact=False)
    return parts_sha256([options, *(np.ascontiguousarray(a) for a in (inputs.patterns, inputs.mask, model_rows))])


def _engine_kwargs(ctx: "Context", inputs: SearchlightInputs) -> dict[str, Any]:
    from bids_dnn.backend import resolve_device

    device = resolve_device(ctx.options.device)
    return {"rdm_measure": inputs.measure, "comparison": ctx.spec.analyses.searchlight.comparison,
            "device": device, "dtype": np.float32 if device.startswith("cuda") else np.float64,
            "memory_budget_bytes": ctx.resources.memory_bytes or DEFAULT_SEARCHLIGHT_MEMORY}


def searchlight_scores(ctx: "Context", subject: str, inputs: SearchlightInputs, neighbourhoods: Any,
                       model_rows: np.ndarray, key: str) -> np.ndarray | None:
    """Scores (n_model_rows, n_centres); None when only one part was asked for."""
    from bids_dnn.searchlight import partition_centres, searchlight_rsa

    kwargs = _engine_kwargs(ctx, inputs)
    n_centres = neighbourhoods.n_centres
    part = ctx.options.searchlight_part
    if part is not None:
        k, n_parts = part
        start, stop = partition_centres(n_centres, n_parts)[k - 1]
        path = ctx.layout.searchlight_part(subject, k, n_parts, key)
        logger.info("sub-%s: searchlight part %d of %d (centres %d-%d of %d)", subject, k, n_parts, start, stop,
                    n_centres)
        scores = searchlight_rsa(inputs.patterns, neighbourhoods, model_rows, centre_range=(start, stop), **kwargs)
        drv.write_npz(path, scores=scores, start=start, stop=stop, n_centres=n_centres)
        return None
    merged = merge_parts(ctx, subject, key, n_centres, model_rows.shape[0])
    if merged is not None:
        logger.info("sub-%s: searchlight merged from %s", subject, ctx.layout.searchlight_part(subject, 1, 1, key).parent)
        return merged
    with progress(f"searchlight sub-{subject}", n_centres) as advance:
        return searchlight_rsa(inputs.patterns, neighbourhoods, model_rows, on_chunk=advance, **kwargs)


def merge_parts(ctx: "Context", subject: str, key: str, n_centres: int, n_rows: int) -> np.ndarray | None:
    """Scores assembled from a complete set of part files with this key, if there is one."""
    folder = ctx.layout.searchlight_part(subject, 1, 1, key).parent
    if not folder.is_dir():
        return None
    prefix = f"searchlight_{key[:12]}_part-"
    by_total: dict[int, dict[int, Path]] = {}
    for path in folder.glob(prefix + "*.npz"):
        k, _, n = path.name[len(prefix):-len(".npz")].partition("-of-")
        if k.isdigit() and n.isdigit():
            by_total.setdefault(int(n), {})[int(k)] = path
    for n_parts, parts in sorted(by_total.items()):
        if sorted(parts) != list(range(1, n_parts + 1)):
            continue
        scores = np.full((n_rows, n_centres), np.nan)
        for path in parts.values():
            with np.load(path) as data:
                if int(data["n_centres"]) != n_centres or data["scores"].shape[0] != n_rows:
                    raise AnalysisError(f"searchlight part {path.name} does not match this run",
                                        f"delete {folder} and rerun")
                scores[:, int(data["start"]):int(data["stop"])] = data["scores"]
        return scores
    return None


def run_searchlight(ctx: "Context", subject: str, stimuli: "StimulusSet", patterns: "SubjectPatterns",
                    models: dict[str, dict[str, np.ndarray]]) -> list[Path] | None:
    """Searchlight maps of one subject (one per model layer); None after a single part."""
    from bids_dnn.searchlight import scores_to_mask_voxels, sphere_neighbourhoods, voxel_size_from_affine

    spec = ctx.spec.analyses.searchlight
    inputs = searchlight_inputs(ctx, patterns)
    neighbourhoods = sphere_neighbourhoods(inputs.mask, spec.radius_mm, voxel_size_from_affine(inputs.affine),
                                           min_voxels=spec.min_voxels, min_fraction=spec.min_fraction)
    if neighbourhoods.n_centres == 0:
        raise AnalysisError(f"sub-{subject}: no searchlight centre has {spec.min_voxels} voxels within "
                            f"{spec.radius_mm} mm", "lower analyses.searchlight.min_voxels or raise radius_mm")
    rows, model_rows = _model_rows(models)
    key = searchlight_key(ctx, subject, stimuli, inputs, model_rows)
    scores = searchlight_scores(ctx, subject, inputs, neighbourhoods, model_rows, key)
    if scores is None:
        return None
    centre_values = scores_to_mask_voxels(scores, neighbourhoods)  # (n_rows, n_mask_voxels)
    sizes = neighbourhoods.sizes()
    stats = [spec.comparison]
    if spec.fisher_z and spec.comparison in CORRELATION_MEASURES:
        stats.append("z")
    paths, values, sidecars = [], [], []
    for i, (model, layer) in enumerate(rows):
        for stat in stats:
            values.append(fisher_z(centre_values[i], eps=1e-12) if stat == "z"
                          else centre_values[i])
            paths.append(ctx.layout.searchlight_map(subject, model, layer, stat))
            sidecars.append({
                "Model": model, "Layer": layer, "Statistic": stat, "Comparison": spec.comparison,
                "FisherZ": stat == "z", "BrainRDM": inputs.measure, "ModelRDM": ctx.spec.rdm.model,
                "RadiusMM": spec.radius_mm, "MinVoxels": spec.min_voxels, "MinFraction": spec.min_fraction,
                "NumberOfCentres": int(neighbourhoods.n_centres), "NumberOfRuns": inputs.n_runs,
                "MedianSphereVoxels": float(np.median(sizes)),
                "NoiseNormalization": "none" if ctx.spec.brain.noise_normalization == "none" else "univariate",
                "Description": "Comparison of each sphere's RDM with the model RDM, at the sphere's centre; "
                               "NaN where a voxel is not a centre.",
                "Sources": [str(ctx.layout.model_rdm(model, layer, ctx.spec.rdm.model).relative_to(ctx.layout.root)),
                            *[str(r.bold) for r in patterns.runs]]})
    return _write_maps(paths, np.stack(values), inputs.mask, inputs.affine, sidecars)


# ---------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------


def encoding_folds(ctx: "Context", run_betas: np.ndarray) -> tuple[str, list[tuple[np.ndarray, np.ndarray]],
                                                                   np.ndarray | None]:
    """Outer folds over stimuli of ``analyses.encoding``, and the inner grouping (run of each stimulus) if any."""
    from bids_dnn.workflows.cv import stimulus_folds

    return stimulus_folds(ctx.spec.analyses.encoding, "analyses.encoding", run_betas, ctx.spec.statistics.seed)


def encoding_voxels(ctx: "Context", patterns: "SubjectPatterns", masks: dict[str, np.ndarray]) -> np.ndarray:
    """Columns of ``run_betas`` (brain-mask voxels) to model."""
    from bids_dnn.encoding import modelled_voxels

    regions = None
    if ctx.spec.analyses.encoding.region == "rois":
        if not masks:
            raise AnalysisError("analyses.encoding.region: 'rois' needs rois in the spec", "use region: brain")
        regions = [m[patterns.brain_mask] for m in masks.values()]
    return modelled_voxels(patterns.run_betas, regions)


def run_encoding(ctx: "Context", subject: str, stimuli: "StimulusSet", patterns: "SubjectPatterns",
                 masks: dict[str, np.ndarray], layer_features: Any) -> tuple[list[Path], dict[str, pd.DataFrame]]:
    """Encoding maps and ROI tables of one subject.

    ``layer_features(model_label)`` returns that model's ``{layer: (n_stimuli, n_units)}``.
    """
    from bids_dnn.brain.patterns import split_half_reliability
    from bids_dnn.encoding import (banded_ridge, ceiling_normalised, cross_validated_ridge, himalaya_backend_for_device,
                                   stimulus_responses)
    from bids_dnn.searchlight import voxel_mask

    spec = ctx.spec.analyses.encoding
    columns = encoding_voxels(ctx, patterns, masks)
    if columns.size == 0:
        raise AnalysisError(f"sub-{subject}: no voxel with finite responses to model")
    run_betas = patterns.run_betas[:, :, columns]
    responses = stimulus_responses(run_betas)
    scheme, folds, groups = encoding_folds(ctx, patterns.run_betas)
    ceiling = (split_half_reliability(run_betas) if run_betas.shape[0] >= 2 and scheme == "kfold"
               else np.full(columns.size, np.nan))
    backend = himalaya_backend_for_device(ctx.options.device)
    fit_options = {"inner_folds": spec.inner_folds, "inner_groups": groups, "pca": spec.pca, "backend": backend,
                   "standardize": spec.standardize, "seed": ctx.spec.statistics.seed,
                   "memory_budget_bytes": ctx.resources.memory_bytes}  # --mem: target batches
    mask = voxel_mask(patterns.brain_mask, columns)
    affine = patterns.reference.affine
    roi_columns = {roi: np.flatnonzero(m[patterns.brain_mask][columns]) for roi, m in masks.items()}
    base = {"CrossValidation": scheme, "NumberOfFolds": len(folds), "Alphas": spec.alphas,
            "InnerFolds": spec.inner_folds, "PCA": spec.pca, "Standardize": spec.standardize,
            "Seed": ctx.spec.statistics.seed,
            "Sources": [str(r.bold) for r in patterns.runs]}
    paths = _write_maps([ctx.layout.encoding_map(subject, None, None, "noiseceiling")], ceiling[None], mask, affine,
                        [{**base, "Statistic": "noiseceiling",
                          "Description": "Split-half reliability of each voxel's stimulus profile (odd vs even runs, "
                                         "Spearman-Brown corrected); NaN when runs do not repeat stimuli."}])
    tables: dict[str, pd.DataFrame] = {}
    model_labels = [m.output_label for m in ctx.spec.models]
    with progress(f"encoding sub-{subject}", len(model_labels)) as advance:
        for model in model_labels:
            features = layer_features(model)
            rows = []
            for layer, values in features.items():
                result = cross_validated_ridge(values.astype(np.float64), responses, folds, spec.alphas, **fit_options)
                alpha = np.median(result.alphas, axis=0)
                normalized = ceiling_normalised(result.r2, ceiling)
                maps = {"r": result.r, "r2": result.r2, "alpha": alpha, "normr2": normalized}
                descriptions = {"r": "held-out Pearson r", "r2": "held-out R2 (1 - SSE/SST)",
                                "alpha": "median over outer folds of the per-voxel ridge penalty",
                                "normr2": "R2 / noise ceiling (split-half reliability); NaN where the "
                                          "reliability is below 0.1"}
                paths += _write_maps([ctx.layout.encoding_map(subject, model, layer, s) for s in maps],
                                     np.stack(list(maps.values())), mask, affine,
                                     [{**base, "Model": model, "Layer": layer, "Statistic": s,
                                       "Description": descriptions[s]} for s in maps])
                for roi, cols in roi_columns.items():
                    rows.append(_encoding_row(subject, roi, model, layer, cols, result, ceiling, scheme, len(folds),
                                              spec.alphas))
            if spec.banded and len(features) > 1:
                banded = banded_ridge([v.astype(np.float64) for v in features.values()], responses, folds,
                                      spec.alphas, **fit_options)
                split = np.asarray(banded.r2_split)
                paths += _write_maps([ctx.layout.encoding_map(subject, model, layer, "bandedr2") for layer in features],
                                     split, mask, affine,
                                     [{**base, "Model": model, "Layer": layer, "Statistic": "bandedr2",
                                       "Description": "share of the held-out R2 of a banded ridge over all layers "
                                                      "of the model attributed to this layer"} for layer in features])
            tables[model] = pd.DataFrame(rows, columns=list(ENCODING_COLUMNS))
            advance()
    return paths, tables


def _encoding_row(subject: str, roi: str, model: str, layer: str, cols: np.ndarray, result: Any, ceiling: np.ndarray,
                  scheme: str, n_folds: int, alpha_grid: list[float]) -> dict[str, Any]:
    """One row of the encoding table (:data:`ENCODING_COLUMNS`): the ROI summary of ``result``."""
    from bids_dnn.encoding import roi_scores

    return {"subject": subject, "roi": roi, "model": model, "layer": layer,
            **roi_scores(result.r, result.r2, result.alphas, ceiling, cols, alpha_grid),
            "cv": scheme, "n_folds": n_folds}
