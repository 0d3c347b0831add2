"""Features of the spec's models (extracted once, cached per model) and their model RDMs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bids_dnn.console import logger, progress
from bids_dnn.errors import AnalysisError
from bids_dnn.io import derivatives as drv
from bids_dnn.io.stimuli import StimulusSet, stimulus_input_identity
from bids_dnn.spec import ModelSpec
from bids_dnn.workflows.context import Context
from bids_dnn.workflows.provenance import library_versions
from bids_dnn.workflows.tables import write_relmat

__all__ = ["decode_side", "model_features", "model_rdms", "read_checked_features"]


def model_features(ctx: Context, model_spec: ModelSpec, stimuli: StimulusSet) -> dict[str, np.ndarray]:
    """Extract (or reuse) the features of one model; returns layer -> (n_stimuli, n_units)."""
    from bids_dnn.features import store as feat
    from bids_dnn.backend import resolve_device
    from bids_dnn.dnn.extract import extract_features
    from bids_dnn.dnn.layers import resolve_layers
    from bids_dnn.dnn.models import load_model

    index = ctx.spec.models.index(model_spec)
    loaded = load_model(model_spec, field_path=f"models[{index}]")
    layers = resolve_layers(loaded.module, model_spec.layers, field_path=f"models[{index}].layers",
                            model_name=model_spec.name)
    # video sampling settings (fps, n_frames, aggregate) are ingredients of video features only
    identity = {**loaded.identity(), "token_policy": model_spec.token_policy,
                **stimulus_input_identity(stimuli, ctx.spec.stimuli.video)}
    key = feat.feature_content_key(stimuli.sha256, identity, layers, model_spec.dtype, model_spec.reduction)
    path = ctx.layout.features(model_spec.output_label)
    device = resolve_device(ctx.options.device)

    def compute(writer: Any) -> None:
        from bids_dnn.io.stimulus_loading import load_stimulus

        logger.info("extracting %d layers of %s for %d stimuli on %s", len(layers), model_spec.name,
                    stimuli.n_stimuli, device)
        video = ctx.spec.stimuli.video
        side, fit = decode_side(loaded.transform), getattr(loaded.transform, "resized", None)
        images = [(lambda p=p: load_stimulus(p, video, side, fit)) for p in stimuli.paths]
        with progress(f"features {model_spec.output_label}", stimuli.n_stimuli) as advance:
            shapes = extract_features(loaded, images, layers, batch_size=model_spec.batch_size, device=device,
                                      token_policy=model_spec.token_policy,
                                      on_batch=writer.write_batch, progress=advance,
                                      aggregate=video.aggregate if stimuli.has_video else None,
                                      memory_budget_bytes=ctx.resources.memory_bytes)
        writer.set_layer_shapes(shapes)

    attrs = feat.provenance_attrs(loaded.identity(), token_policy=model_spec.token_policy,
                                  library_versions=library_versions(), stimulus_sha256s=stimuli.sha256)
    feat.ensure_features(path, key, compute, stim_ids=stimuli.stim_ids, dtype=model_spec.dtype,
                         attrs={**attrs, "model_label": model_spec.output_label},
                         reduction=model_spec.reduction, force=ctx.options.force,
                         scratch_dir=ctx.resources.scratch_dir)
    ctx.feature_keys[model_spec.output_label] = key
    try:
        stored = read_checked_features(ctx, model_spec.output_label, layers)
    except feat.FeatureDigestError as exc:  # edited or reordered since it was written: extract again
        logger.warning("%s; extracting the features again", exc.message)
        feat.ensure_features(path, key, compute, stim_ids=stimuli.stim_ids, dtype=model_spec.dtype,
                             attrs={**attrs, "model_label": model_spec.output_label},
                             reduction=model_spec.reduction, force=True, scratch_dir=ctx.resources.scratch_dir)
        stored = read_checked_features(ctx, model_spec.output_label, layers)
    if list(stored.stim_ids) != list(stimuli.stim_ids):
        raise AnalysisError(f"feature file {path} does not match the stimulus order", "rerun with --force")
    return stored.layers


def decode_side(transform: Any) -> int | None:
    """The shorter side at which stimulus images are decoded for a model: ``DECODE_HEADROOM``
    times its transform's resize target (None, full size, for a transform without one)."""
    from bids_dnn.io.media import DECODE_HEADROOM

    resize = getattr(transform, "resize", None)
    return DECODE_HEADROOM * int(resize) if isinstance(resize, int) and resize > 0 else None


def read_checked_features(ctx: Context, model: str, layers: list[str]) -> Any:
    """Read a model's features, refusing a file rewritten by a run with other inputs meanwhile."""
    from bids_dnn.features import store as feat

    path = ctx.layout.features(model)
    stored = feat.read_features(path, layers)
    if stored.attrs.get("content_key") != ctx.feature_keys[model]:
        raise AnalysisError(f"{path.name} was replaced by a run with other stimuli, model or layers",
                            "do not share one output folder between runs with different specs")
    return stored


def model_rdms(ctx: Context, stimuli: StimulusSet) -> dict[str, dict[str, np.ndarray]]:
    """Model RDM vectors: model label -> layer -> (n_pairs,). Written once at the root; a file
    whose sidecar holds the same content key (features + measure) is left as it is."""
    from bids_dnn.rsa.rdm import calc_rdm, vector_to_square
    from bids_dnn.workflows.stages import content_key

    measure = ctx.spec.rdm.model
    out: dict[str, dict[str, np.ndarray]] = {}
    for model_spec in ctx.spec.models:
        features = model_features(ctx, model_spec, stimuli)
        label = model_spec.output_label
        out[label] = {}
        for layer, values in features.items():
            vector = calc_rdm(values.astype(np.float64), measure)
            out[label][layer] = vector
            path = ctx.layout.model_rdm(label, layer, measure)
            key = content_key("model_rdm", ctx.feature_keys[label], layer, measure)
            if not ctx.options.force and path.is_file() and _sidecar_value(path, "ContentKey") == key:
                continue
            write_relmat(path, vector_to_square(vector, stimuli.n_stimuli), stimuli.stim_ids, {
                "Measure": measure, "Model": model_spec.name, "ModelLabel": label,
                "Layer": layer, "NumberOfUnits": int(values.shape[1]), "ContentKey": key,
                "Sources": [str(ctx.layout.features(label).relative_to(ctx.layout.root))]})
    return out


def _sidecar_value(path: Path, name: str) -> Any:
    """A field of ``path``'s JSON sidecar (None when missing or unreadable)."""
    return drv.read_json_object(drv.sidecar_path(path)).get(name)
