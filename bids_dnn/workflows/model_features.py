"""Features of the spec's models (extracted once, cached per model) and their model RDMs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bids_dnn.console import logger, progress
from bids_dnn.errors import AnalysisError, SpecError
from bids_dnn.hashing import canonical_json, text_sha256
from bids_dnn.io import derivatives as drv
from bids_dnn.io.stimuli import StimulusSet, stimulus_input_identity
from bids_dnn.spec import ModelSpec
from bids_dnn.workflows.context import Context
from bids_dnn.workflows.provenance import library_versions
from bids_dnn.workflows.tables import write_relmat

__all__ = ["decode_side", "model_features", "model_rdms", "read_checked_features"]


#: the stimulus kinds a model of each task reads (image models read video frames too)
TASK_STIMULUS_KINDS: dict[str, frozenset[str]] = {
    "image": frozenset({"image", "video"}), "video": frozenset({"image", "video"}), "text": frozenset({"text"}),
    "audio": frozenset({"audio"}), "text_image": frozenset({"text", "image"}),
}


def check_stimulus_kinds(loaded: Any, stimuli: StimulusSet, field_path: str) -> None:
    """Refuse stimuli the model cannot read (e.g. sentences for an image network) before extraction.

    Raises
    ------
    SpecError
        Naming the kinds the model reads and an example stimulus of each other kind.
    """
    accepted = TASK_STIMULUS_KINDS.get(loaded.task, frozenset({loaded.task}))
    examples: dict[str, str] = {}
    for stim_id, file, kind in zip(stimuli.stim_ids, stimuli.files, stimuli.kinds):
        if kind not in accepted:
            examples.setdefault(str(kind), file or stim_id)
    if examples:
        found = ", ".join(f"{kind} ({example})" for kind, example in sorted(examples.items()))
        raise SpecError([f"{field_path}: {loaded.name} reads {' and '.join(sorted(accepted))} stimuli, but the "
                         f"stimuli include {found}; choose a model for these stimuli (e.g. source: huggingface for "
                         "text and sound)"])


def _torch_extraction(ctx: Context, model_spec: ModelSpec, loaded: Any, stimuli: StimulusSet, field_path: str,
                      device: str) -> tuple[list[str], dict[str, Any], Callable[[Any], None]]:
    """Layers, identity and extraction of torchvision / timm / open_clip / TorchScript / custom models."""
    from bids_dnn.dnn.extract import extract_features
    from bids_dnn.dnn.layers import resolve_layers

    layers = resolve_layers(loaded.module, model_spec.layers, field_path=f"{field_path}.layers",
                            model_name=model_spec.name)
    # video sampling settings (fps, n_frames, aggregate) are ingredients of video features only
    identity = {**loaded.identity(), "token_policy": model_spec.token_policy,
                **stimulus_input_identity(stimuli, ctx.spec.stimuli.video)}

    def compute(writer: Any) -> None:
        from bids_dnn.io.stimulus_loading import load_stimulus

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

    return layers, identity, compute


def _stimulus_contexts(ctx: Context, stimuli: StimulusSet) -> list[str | None] | None:
    """The preceding context of every text stimulus (``stimuli.context_column``), or None."""
    column = ctx.spec.stimuli.context_column
    if column is None:
        return None
    if column not in stimuli.annotations:
        raise SpecError([f"stimuli.context_column: the stimuli have no column '{column}' (available: "
                         f"{', '.join(sorted(stimuli.annotations)) or 'none'})"])
    return list(stimuli.annotations[column])


def _huggingface_extraction(ctx: Context, model_spec: ModelSpec, loaded: Any, stimuli: StimulusSet, field_path: str,
                            device: str) -> tuple[list[str], dict[str, Any], Callable[[Any], None]]:
    """Layers, identity and extraction of ``source: huggingface`` models (text, sound, images)."""
    from bids_dnn.dnn.hf_extract import extract_hf_features, resolve_pooling
    from bids_dnn.dnn.huggingface import resolve_hf_layers
    from bids_dnn.io.stimuli import stimulus_text
    from bids_dnn.io.stimulus_loading import load_audio, load_image

    kinds = sorted(set(stimuli.kinds))
    modality = kinds[0] if len(kinds) == 1 else None
    layers = resolve_hf_layers(loaded, model_spec.layers, f"{field_path}.layers", modality=modality)
    audio = ctx.spec.stimuli.audio
    contexts = _stimulus_contexts(ctx, stimuli) if model_spec.context_tokens else None
    pooling = {kind: resolve_pooling(loaded, model_spec.pooling, kind) for kind in kinds}
    identity = {**loaded.identity(), "pooling": pooling, "context_tokens": model_spec.context_tokens,
                "contexts": text_sha256(canonical_json(contexts)) if contexts is not None else None,
                **stimulus_input_identity(stimuli, ctx.spec.stimuli.video, audio)}
    loaders = {
        "text": lambda i: stimulus_text(stimuli, i),
        "audio": lambda i: load_audio(stimuli.paths[i], loaded.sample_rate, audio.max_seconds).samples,
        "image": lambda i: load_image(stimuli.paths[i]),
    }

    def compute(writer: Any) -> None:
        items = [(lambda i=i, kind=kind: loaders[kind](i)) for i, kind in enumerate(stimuli.kinds)]
        with progress(f"features {model_spec.output_label}", stimuli.n_stimuli) as advance:
            shapes = extract_hf_features(loaded, items, layers, pooling=model_spec.pooling,
                                         batch_size=model_spec.batch_size, device=device,
                                         on_batch=writer.write_batch, progress=advance, contexts=contexts,
                                         context_tokens=model_spec.context_tokens, max_seconds=audio.max_seconds,
                                         memory_budget_bytes=ctx.resources.memory_bytes)
        writer.set_layer_shapes(shapes)

    return layers, identity, compute


#: model source -> how its layers, feature identity and extraction are made (default: torch models)
EXTRACTIONS: dict[str, Callable[..., tuple[list[str], dict[str, Any], Callable[[Any], None]]]] = {
    "huggingface": _huggingface_extraction,
}


def model_features(ctx: Context, model_spec: ModelSpec, stimuli: StimulusSet) -> dict[str, np.ndarray]:
    """Extract (or reuse) the features of one model; returns layer -> (n_stimuli, n_units)."""
    from bids_dnn.features import store as feat
    from bids_dnn.backend import resolve_device
    from bids_dnn.dnn.models import load_model

    index = ctx.spec.models.index(model_spec)
    field_path = f"models[{index}]"
    loaded = load_model(model_spec, field_path=field_path)
    check_stimulus_kinds(loaded, stimuli, field_path)
    device = resolve_device(ctx.options.device)
    layers, identity, extract = EXTRACTIONS.get(model_spec.source, _torch_extraction)(
        ctx, model_spec, loaded, stimuli, field_path, device)
    key = feat.feature_content_key(stimuli.sha256, identity, layers, model_spec.dtype, model_spec.reduction)
    path = ctx.layout.features(model_spec.output_label)

    def compute(writer: Any) -> None:
        logger.info("extracting %d layers of %s for %d stimuli on %s", len(layers), model_spec.name,
                    stimuli.n_stimuli, device)
        extract(writer)

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
