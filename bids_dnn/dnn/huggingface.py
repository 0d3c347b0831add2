"""Hugging Face ``transformers`` models (``source: huggingface``): offline loading and layer names.

Loading
-------
``spec.name`` is a hub id (``bert-base-uncased``, ``facebook/wav2vec2-base``) read from the
Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``), or a local model folder (an existing
directory; a name starting with ``/``, ``./``, ``../`` or ``~`` always means a folder). Nothing is
ever downloaded here: every call runs under :func:`~bids_dnn.dnn.weights.hf_offline` with
``local_files_only=True``, a model missing from the cache is an
:class:`~bids_dnn.errors.InputMissingError` naming ``bids_dnn models fetch --source huggingface
NAME``, and custom code on the hub (``trust_remote_code``) is never run.

``weights: DEFAULT`` loads the stored weights (``AutoModel.from_pretrained``, float32; a
``GPT2LMHeadModel`` checkpoint gives the bare ``GPT2Model``); any other value except ``random``
is a hub revision (branch, tag or commit) of a hub id. ``weights: random`` builds the
architecture from its config (``AutoModel.from_config``) after ``torch.manual_seed(init_seed)``:
the same seed gives the same weights (the config and the preprocessor files must still be cached or
in the folder; the weights file need not be). Weights missing from a checkpoint (other than an unused
``pooler``) are an error, not a silent random initialisation. ``weights_sha256`` is
:func:`~bids_dnn.dnn.weights.state_dict_sha256` of the loaded module.

Task (what the model reads), decided from the config and the model class:

1. a config with both a ``text_config`` and a ``vision_config`` whose model has
   ``get_text_features`` and ``get_image_features`` (CLIP-like dual encoders): ``text_image``,
   with the text tower for text stimuli and the vision tower for images;
2. otherwise the model class's ``main_input_name``: ``input_ids`` -> ``text``,
   ``input_values`` / ``input_features`` -> ``audio``, ``pixel_values`` -> ``image``
   (:data:`INPUT_TASKS`);

encoder-decoder models (T5, BART, Whisper) and anything else are refused. The preprocessor
follows the task: ``AutoTokenizer`` (text; a fast tokenizer, ``tokenizer.json``, is required:
word pooling and the token bookkeeping use its encodings), ``AutoFeatureExtractor`` (audio; its
``sampling_rate`` is :attr:`LoadedModel.sample_rate`), ``AutoImageProcessor`` (image); a
text-image model gets a tokenizer and an image processor.

``model_kind``: ``decoder`` when the text model's self-attention is causal (each token sees only
the tokens before it): ``config.is_decoder``, an architecture named ``*ForCausalLM`` /
``*LMHeadModel``, a model type with a causal-LM head but no masked-LM head in ``transformers``'
auto mappings (GPT-2, GPT-Neo, Llama, ...), or a CLIP-like text tower; else ``encoder``.

Layers
------
Every hidden state the model returns with ``output_hidden_states=True`` is a layer:
``hidden_states.0`` (the embeddings) ... ``hidden_states.<n>`` (the output of block n, n =
``config.num_hidden_layers``), exactly as the model returns them: whether the last one is before
or after a final layer norm follows ``transformers`` (with transformers 5.25 it equals
``last_hidden_state`` for BERT, GPT-2 and wav2vec2-base, and is the input of the final layer norm
for ViT and wav2vec2 with stable layer norm). A text-image model names its towers:
``text.hidden_states.<k>``, ``vision.hidden_states.<k>``, plus ``embeds``, the projection into the joint space
(``get_text_features`` / ``get_image_features``: one vector, the same for every pooling). Layers
are chosen with :data:`HF_LAYER_PRESETS`, ``every_<k>``, exact names or ``fnmatch`` globs
(:func:`resolve_hf_layers`).
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import importlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from bids_dnn.dnn.weights import hf_offline, state_dict_sha256
from bids_dnn.errors import AnalysisError, InputMissingError, SpecError
from bids_dnn.hashing import canonical_json, text_sha256
from bids_dnn.spec import ModelSpec

if TYPE_CHECKING:  # models.py imports this module (for its loader registry), not the other way round
    from bids_dnn.dnn.models import LoadedModel

__all__ = [
    "EMBEDS_LAYER",
    "HF_LAYER_PRESETS",
    "INPUT_TASKS",
    "TASK_MODALITIES",
    "hf_layer_names",
    "hf_layer_tower",
    "hf_towers",
    "load_huggingface_fields",
    "resolve_hf_layers",
    "vision_prefix_tokens",
]

#: the model class's ``main_input_name`` -> task
INPUT_TASKS: dict[str, str] = {
    "input_ids": "text",
    "input_values": "audio",
    "input_features": "audio",
    "pixel_values": "image",
}

#: LoadedModel.task -> the stimulus modalities the model reads
TASK_MODALITIES: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "audio": ("audio",),
    "image": ("image",),
    "text_image": ("text", "image"),
}

#: text-image models: modality -> layer name prefix of its tower
_TOWER_PREFIX = {"text": "text.", "image": "vision."}

#: the joint-space projection of a text-image model (``get_text_features`` / ``get_image_features``)
EMBEDS_LAYER = "embeds"

_EXTRA_HINT = "pip install 'bids_dnn[hf]'"
#: config keys that say where or how a config was stored, not what the network computes
_VOLATILE_CONFIG_KEYS = frozenset({"_name_or_path", "transformers_version", "_commit_hash", "dtype",
                                   "torch_dtype", "_attn_implementation_autoset", "output_hidden_states",
                                   "output_attentions", "return_dict"})
#: missing checkpoint weights that no layer depends on
_UNUSED_PREFIXES = ("pooler.",)


def _transformers() -> Any:
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise AnalysisError("models with source 'huggingface' need the optional package 'transformers'",
                            hint=_EXTRA_HINT) from None


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """No progress bars or load reports from ``transformers`` while loading (restored after)."""
    logging = transformers.utils.logging
    bar = logging.is_progress_bar_enabled()
    level = logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bar:
            logging.enable_progress_bar()


def _fetch_command(name: str, weights: str = "DEFAULT") -> str:
    revision = "" if weights in ("DEFAULT", "random") else f" --weights {weights}"
    return f"bids_dnn models fetch --source huggingface{revision} {name}"


def _location(spec: ModelSpec, field_path: str) -> tuple[str, str | None, bool]:
    """(what to pass to ``from_pretrained``, revision, is a local folder)."""
    name = spec.name
    path = Path(name).expanduser()
    local = path.is_dir() or name.startswith(("/", "./", "../", "~"))
    if local:
        if not path.is_dir():
            raise InputMissingError(f"{field_path}.name: model folder not found: {path}")
        if spec.weights not in ("DEFAULT", "random"):
            raise SpecError([f"{field_path}.weights: {spec.weights!r}: a local model folder has no revisions; "
                             "use DEFAULT or random"])
        return str(path), None, True
    revision = None if spec.weights in ("DEFAULT", "random") else spec.weights
    return name, revision, False


def _not_cached(spec: ModelSpec, field_path: str, what: str, exc: Exception) -> InputMissingError:
    revision = "" if spec.weights in ("DEFAULT", "random") else f" (revision {spec.weights})"
    return InputMissingError(
        f"{field_path}.name: {what} of {spec.name}{revision} is not in the Hugging Face cache; fetch it with "
        f"`{_fetch_command(spec.name, spec.weights)}`",
        hint="on a machine with internet, then copy the Hugging Face cache (HF_HOME) here; or use weights: random",
        details=[f"{exc.__class__.__name__}: {exc}"],
    )


def _load_config(transformers: Any, spec: ModelSpec, field_path: str, where: str, revision: str | None,
                 local: bool) -> Any:
    if local and not (Path(where) / "config.json").is_file():
        raise InputMissingError(f"{field_path}.name: {where} is not a Hugging Face model folder (no config.json)",
                                hint="save the model there with save_pretrained")
    try:
        return transformers.AutoConfig.from_pretrained(where, revision=revision, local_files_only=True,
                                                       trust_remote_code=False)
    except ValueError as exc:  # unknown model type, or custom code on the hub
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise AnalysisError(f"{field_path}.name: {spec.name} cannot be built by transformers "
                            f"{transformers.__version__}: {first}",
                            hint="models that need trust_remote_code are not supported; a newer transformers "
                            "may know this model type") from None
    except OSError as exc:
        if local:
            raise InputMissingError(f"{field_path}.name: {where} is not a Hugging Face model folder "
                                    "(no readable config.json)") from None
        raise _not_cached(spec, field_path, "the model", exc) from None


def _config_sha256(config: Any) -> str:
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in _VOLATILE_CONFIG_KEYS}
        return value

    return text_sha256(canonical_json(clean(config.to_dict()), default=str))


def _is_text_image(module: Any, config: Any) -> bool:
    return (getattr(config, "text_config", None) is not None and getattr(config, "vision_config", None) is not None
            and hasattr(module, "get_text_features") and hasattr(module, "get_image_features")
            and hasattr(module, "text_model") and hasattr(module, "vision_model"))


def _task(module: Any, config: Any, spec: ModelSpec, field_path: str) -> str:
    if _is_text_image(module, config):
        return "text_image"
    task = INPUT_TASKS.get(getattr(type(module), "main_input_name", ""))
    if task is None:
        raise AnalysisError(f"{field_path}.name: {spec.name} ({type(module).__name__}) takes "
                            f"{getattr(type(module), 'main_input_name', '?')!r}; only text (input_ids), audio "
                            "(input_values / input_features) and image (pixel_values) models are supported")
    return task


def _causal_lm_only(transformers: Any, model_type: str) -> bool:
    auto = importlib.import_module("transformers.models.auto.modeling_auto")
    return (model_type in getattr(auto, "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", {})
            and model_type not in getattr(auto, "MODEL_FOR_MASKED_LM_MAPPING_NAMES", {}))


def _model_kind(transformers: Any, config: Any, task: str) -> str:
    if task == "text_image":
        return "decoder"  # CLIP's text tower: causal self-attention
    if task != "text":
        return "encoder"
    architectures = getattr(config, "architectures", None) or []
    if (getattr(config, "is_decoder", False)
            or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
            or _causal_lm_only(transformers, getattr(config, "model_type", ""))):
        return "decoder"
    return "encoder"


def _preprocessor_digest(obj: Any) -> dict[str, Any]:
    backend = getattr(obj, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        settings = {k: v for k, v in obj.to_dict().items() if not k.startswith("_")}
        text = canonical_json(settings, default=str)
    return {"class": type(obj).__name__, "sha256": text_sha256(text)}


def _load_preprocessor(kind: Callable[..., Any], what: str, spec: ModelSpec, field_path: str, where: str,
                       revision: str | None, local: bool) -> Any:
    try:
        return kind.from_pretrained(where, revision=revision, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        if local:
            raise InputMissingError(f"{field_path}.name: the model folder {where} has no {what} "
                                    f"({exc.__class__.__name__})",
                                    hint="save it there with save_pretrained") from None
        raise _not_cached(spec, field_path, f"the {what}", exc) from None


def _check_vocabulary(tokenizer: Any, spec: ModelSpec, field_path: str, where: str, local: bool) -> None:
    """transformers 5 builds an empty tokenizer (special tokens only) when the files are missing."""
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    if len(tokenizer) <= max(len(special), 1):
        exc = OSError("no tokenizer files")
        if local:
            raise InputMissingError(f"{field_path}.name: the model folder {where} has no tokenizer (no vocabulary "
                                    "files)", hint="save it there with save_pretrained") from None
        raise _not_cached(spec, field_path, "the tokenizer", exc)


def _image_transform(processor: Any) -> Callable[[Any], torch.Tensor]:
    def transform(image: Any) -> torch.Tensor:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return processor(images=[rgb], return_tensors="pt")["pixel_values"][0].float()
    return transform


def _check_loading_info(info: dict[str, Any], spec: ModelSpec, field_path: str) -> None:
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(_UNUSED_PREFIXES))
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ()))
    if missing or mismatched:
        names = ", ".join((missing + mismatched)[:5])
        raise AnalysisError(f"{field_path}.name: the checkpoint of {spec.name} lacks weights of its architecture "
                            f"({len(missing) + len(mismatched)} tensors, e.g. {names}); they would be random",
                            hint="fetch the model again, or use weights: random on purpose")


def load_huggingface_fields(spec: ModelSpec, field_path: str = "models[0]") -> dict[str, Any]:
    """Build a ``source: huggingface`` model from local files only (see the module docstring).

    :func:`bids_dnn.dnn.models.load_model` turns the result into a
    :class:`~bids_dnn.dnn.models.LoadedModel` (``LoadedModel(**fields)``).

    Parameters
    ----------
    spec : ModelSpec
        ``name``: hub id or local folder; ``weights``: ``DEFAULT``, ``random`` (with
        ``init_seed``) or a hub revision.
    field_path : str
        Where ``spec`` sits in the analysis spec; prefixes error messages.

    Returns
    -------
    dict of str to any
        The fields of a ``LoadedModel``: ``task`` in :data:`TASK_MODALITIES`; ``tokenizer``
        (text, text_image), ``processor`` (feature extractor or image processor),
        ``model_kind``, ``sample_rate`` (audio) set;
        ``transform`` is the image processor as PIL -> (3, H, W) tensor for image models, else
        None. ``preprocessing`` records the config and preprocessor digests.

    Raises
    ------
    InputMissingError
        Hub model (or its preprocessor) not in the Hugging Face cache; local folder missing or
        without config / preprocessor files.
    AnalysisError
        ``transformers`` not installed; unsupported architecture (encoder-decoder, custom code,
        unknown input); a slow (Python) tokenizer; checkpoint lacking weights.
    SpecError
        A revision with a local folder.
    """
    transformers = _transformers()
    where, revision, local = _location(spec, field_path)
    with hf_offline(), _quiet(transformers):
        config = _load_config(transformers, spec, field_path, where, revision, local)
        if getattr(config, "is_encoder_decoder", False):
            raise AnalysisError(f"{field_path}.name: {spec.name} is an encoder-decoder model "
                                f"({config.model_type}); only encoders, decoders and CLIP-like dual encoders "
                                "are supported")
        if spec.weights == "random":
            torch.manual_seed(spec.init_seed)
            module = transformers.AutoModel.from_config(config, dtype=torch.float32)
        else:
            try:
                module, info = transformers.AutoModel.from_pretrained(
                    where, config=config, revision=revision, local_files_only=True, trust_remote_code=False,
                    dtype=torch.float32, output_loading_info=True)
            except OSError as exc:
                if local:
                    raise InputMissingError(f"{field_path}.name: the model folder {where} has no readable "
                                            f"weights ({exc.__class__.__name__})") from None
                raise _not_cached(spec, field_path, "the weights", exc) from None
            _check_loading_info(info, spec, field_path)
        module = module.float().eval()
        task = _task(module, config, spec, field_path)
        tokenizer = processor = None
        if task in ("text", "text_image"):
            tokenizer = _load_preprocessor(transformers.AutoTokenizer, "tokenizer", spec, field_path, where,
                                           revision, local)
            _check_vocabulary(tokenizer, spec, field_path, where, local)
            if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "backend_tokenizer", None) is None:
                raise AnalysisError(f"{field_path}.name: {spec.name} has a slow (Python) tokenizer; "
                                    "bids_dnn needs a fast one (tokenizer.json)",
                                    hint="convert it once with transformers (AutoTokenizer.from_pretrained(..., "
                                    "use_fast=True).save_pretrained(folder)) and name that folder")
        if task == "audio":
            processor = _load_preprocessor(transformers.AutoFeatureExtractor, "feature extractor", spec,
                                           field_path, where, revision, local)
        if task in ("image", "text_image"):
            processor = _load_preprocessor(transformers.AutoImageProcessor, "image processor", spec, field_path,
                                           where, revision, local)
    sample_rate = int(processor.sampling_rate) if task == "audio" else None
    preprocessing: dict[str, Any] = {"origin": "huggingface", "config_sha256": _config_sha256(config)}
    if tokenizer is not None:
        preprocessing["tokenizer"] = _preprocessor_digest(tokenizer)
    if processor is not None:
        preprocessing["processor"] = _preprocessor_digest(processor)
    if sample_rate is not None:
        preprocessing["sample_rate"] = sample_rate
    random = spec.weights == "random"
    return dict(
        module=module,
        transform=_image_transform(processor) if task in ("image", "text_image") else None,
        preprocessing=preprocessing,
        name=spec.name,
        source="huggingface",
        weights_name="random" if random else spec.weights,
        weights_sha256=state_dict_sha256(module),
        init_seed=spec.init_seed if random else None,
        task=task,
        tokenizer=tokenizer,
        processor=processor,
        model_kind=_model_kind(transformers, config, task),
        sample_rate=sample_rate,
    )


# ---------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------


def _check_loaded(loaded: LoadedModel) -> None:
    if loaded.source != "huggingface" or loaded.task not in TASK_MODALITIES:
        raise AnalysisError(f"{loaded.name} is not a source: huggingface model")


def _n_blocks(config: Any) -> int:
    n = getattr(config, "num_hidden_layers", None)
    if not isinstance(n, int):
        raise AnalysisError(f"the config of {type(config).__name__} has no num_hidden_layers; its hidden "
                            "states cannot be named")
    return n


def hf_towers(loaded: LoadedModel) -> dict[str, tuple[str, int]]:
    """The towers of a ``source: huggingface`` model and their depth.

    Returns
    -------
    dict of str to (str, int)
        modality (``text``, ``audio``, ``image``) -> (layer name prefix, number of blocks
        ``num_hidden_layers``): one entry with prefix ``""`` for single-modality models;
        ``text.`` and ``vision.`` towers for text-image models.
    """
    config = loaded.module.config
    if loaded.task == "text_image":
        return {"text": (_TOWER_PREFIX["text"], _n_blocks(config.text_config)),
                "image": (_TOWER_PREFIX["image"], _n_blocks(config.vision_config))}
    return {loaded.task: ("", _n_blocks(config))}


def _selected_towers(loaded: LoadedModel, modality: str | None, field_path: str) -> dict[str, tuple[str, int]]:
    towers = hf_towers(loaded)
    if modality is None:
        return towers
    if modality not in towers:
        reads = " and ".join(TASK_MODALITIES[loaded.task])
        raise SpecError([f"{field_path}: {loaded.name} reads {reads}, but the stimuli are {modality}"])
    return {modality: towers[modality]}


def hf_layer_names(loaded: LoadedModel, modality: str | None = None) -> list[str]:
    """Every layer of a ``source: huggingface`` model, in order.

    Parameters
    ----------
    loaded : LoadedModel
    modality : {"text", "audio", "image"}, optional
        Text-image models: only the layers computed for stimuli of this modality (its tower and
        ``embeds``); None: all.

    Returns
    -------
    list of str
        ``hidden_states.0`` .. ``hidden_states.<n>``; text-image models:
        ``text.hidden_states.*``, then ``vision.hidden_states.*``, then ``embeds``.
    """
    _check_loaded(loaded)
    names = [f"{prefix}hidden_states.{k}"
             for prefix, n in _selected_towers(loaded, modality, "layers").values() for k in range(n + 1)]
    return names + [EMBEDS_LAYER] if loaded.task == "text_image" else names


def hf_layer_tower(loaded: LoadedModel, layer: str) -> tuple[str | None, int | None]:
    """Which tower and hidden state a layer name denotes.

    Returns
    -------
    modality : str or None
        ``text`` / ``audio`` / ``image``; None for ``embeds`` (any modality).
    index : int or None
        The hidden-state index; None for ``embeds``.

    Raises
    ------
    AnalysisError
        Not a layer of the model.
    """
    _check_loaded(loaded)
    if loaded.task == "text_image" and layer == EMBEDS_LAYER:
        return None, None
    for modality, (prefix, n) in hf_towers(loaded).items():
        match = re.fullmatch(re.escape(prefix) + r"hidden_states\.(0|[1-9][0-9]*)", layer)
        if match and int(match[1]) <= n:
            return modality, int(match[1])
    raise AnalysisError(f"{layer!r} is not a layer of {loaded.name}",
                        hint="choose layers with bids_dnn.dnn.huggingface.resolve_hf_layers")


def _all_blocks(n: int) -> list[int]:
    return list(range(n + 1))


#: preset -> function(number of blocks n) -> hidden-state indices (0 = embeddings, k = block k).
#: ``top_level`` and ``all``: every hidden state 0..n; ``last``: n. ``every_<k>`` (any k >= 1,
#: not listed here): blocks k, 2k, 3k, ... and always the last block n (embeddings excluded).
#: Text-image models apply a preset to each tower of the stimulus modality; ``top_level`` and
#: ``all`` add ``embeds``.
HF_LAYER_PRESETS: dict[str, Callable[[int], list[int]]] = {
    "top_level": _all_blocks,
    "all": _all_blocks,
    "last": lambda n: [n],
}

_EVERY = re.compile(r"every_([1-9][0-9]*)")


def _preset_indices(item: str, n: int) -> list[int] | None:
    if item in HF_LAYER_PRESETS:
        return HF_LAYER_PRESETS[item](n)
    match = _EVERY.fullmatch(item)
    if match:
        k = int(match[1])
        return sorted(set(range(k, n + 1, k)) | {n})
    return None


def resolve_hf_layers(loaded: LoadedModel, layers: str | list[str], field_path: str = "models[0].layers", *,
                      modality: str | None = None) -> list[str]:
    """Turn presets, exact names and ``fnmatch`` globs into hidden-state layer names.

    Parameters
    ----------
    loaded : LoadedModel
        A ``source: huggingface`` model.
    layers : str or list of str
        A key of :data:`HF_LAYER_PRESETS`, ``every_<k>``, a layer name (``hidden_states.3``), a
        glob (``hidden_states.1*``), or a list mixing them.
    field_path : str
        Spec location named in error messages.
    modality : {"text", "audio", "image"}, optional
        The stimuli's modality: checked against the model; for text-image models presets take the
        tower of this modality, and naming the other tower's layers is an error. None: presets
        take every tower.

    Returns
    -------
    list of str
        Unique names in the model's order (:func:`hf_layer_names`).

    Raises
    ------
    SpecError
        One line per problem: an unknown name or preset (with the closest names), a glob that
        matches nothing, a layer of the other tower, a modality the model does not read.
    """
    _check_loaded(loaded)
    towers = _selected_towers(loaded, modality, field_path)
    valid = hf_layer_names(loaded)
    usable = set(hf_layer_names(loaded, modality))
    requested = [layers] if isinstance(layers, str) else list(layers)
    selected: set[str] = set()
    problems: list[str] = []
    for item in requested:
        indices = {m: _preset_indices(item, n) for m, (_, n) in towers.items()}
        if all(v is not None for v in indices.values()):
            selected.update(f"{towers[m][0]}hidden_states.{k}" for m, ks in indices.items() for k in ks)
            if loaded.task == "text_image" and item in ("top_level", "all"):
                selected.add(EMBEDS_LAYER)
        elif item in valid:
            if item not in usable:
                problems.append(f"{field_path}: {item!r} is a layer of the other tower of {loaded.name}; "
                                f"{modality} stimuli run through its {modality} tower only")
            selected.add(item)
        elif any(ch in item for ch in "*?["):
            found = [name for name in fnmatch.filter(valid, item) if name in usable]
            if not found:
                problems.append(f"{field_path}: {item!r} matches no layer of {loaded.name}")
            selected.update(found)
        else:
            close = difflib.get_close_matches(item, valid + list(HF_LAYER_PRESETS), n=3, cutoff=0.0)
            problems.append(f"{field_path}: {item!r} is not a layer of {loaded.name} (presets: "
                            f"{', '.join(HF_LAYER_PRESETS)}, every_<k>); closest: {', '.join(close)}")
    if problems:
        raise SpecError(problems)
    return [name for name in valid if name in selected]


def vision_prefix_tokens(module: Any) -> int:
    """Tokens before the patch tokens in an image model's hidden states.

    The class token (``cls_token`` of ViT / DINOv2 / DeiT / BEiT embeddings, ``class_embedding``
    of CLIP's), DeiT's ``distillation_token``, and ``config.num_register_tokens`` registers
    (DINOv2 with registers). 0 for models without a class token (hidden states of conv nets).

    Parameters
    ----------
    module : torch.nn.Module
        The image model (for a text-image model, its ``vision_model``).

    Returns
    -------
    int
    """
    embeddings = getattr(module, "embeddings", None)
    count = sum(hasattr(embeddings, name) for name in ("cls_token", "class_embedding", "distillation_token"))
    registers = getattr(getattr(module, "config", None), "num_register_tokens", 0)
    return int(count) + (int(registers) if isinstance(registers, int) else 0)
