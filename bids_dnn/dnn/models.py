"""Loading networks without ever downloading at run time, and the catalogue of models.

A :class:`~bids_dnn.spec.ModelSpec` is turned into a :class:`LoadedModel` (a module in eval
mode plus its image transform and provenance) by the loader registered for its ``source`` in
:data:`MODEL_SOURCES`. Weights come from the local caches only (:mod:`bids_dnn.dnn.weights`); a
missing file is an :class:`~bids_dnn.errors.InputMissingError` telling the user to run
``bids_dnn models fetch <name>`` on a machine with internet. Only :func:`fetch_weights`
downloads, and only the ``models fetch`` command calls it.

The input transform is chosen by :mod:`bids_dnn.dnn.transforms`; layers are named and chosen by
:mod:`bids_dnn.dnn.layers`. ``source: huggingface`` models (text, audio, image and CLIP-like
text-image models) are loaded, and their hidden states named, by :mod:`bids_dnn.dnn.huggingface`
(imported only for that source), and extracted by :mod:`bids_dnn.dnn.hf_extract`.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import inspect
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image
from torch import nn

from bids_dnn.dnn.transforms import INTERPOLATIONS, ImageTransform, torchvision_weights_transform, transform_for
from bids_dnn.dnn.weights import (cached_checkpoint_path, check_weights_folder_writable, hf_offline,
                                  injected_state_dict, load_checkpoint, state_dict_sha256, torch_home)
from bids_dnn.errors import AnalysisError, InputMissingError, SpecError, UsageError
from bids_dnn.hashing import file_sha256
from bids_dnn.spec import ENTRY_POINT, ModelSpec

__all__ = [
    "LoadedModel",
    "MODEL_SOURCES",
    "WEIGHT_FETCHERS",
    "fetch_weights",
    "load_model",
    "model_catalog",
]


@dataclass
class LoadedModel:
    """A network ready for feature extraction.

    Attributes
    ----------
    module : torch.nn.Module
        The network, in eval mode, gradients off.
    transform : callable
        PIL image -> float32 tensor of shape (3, H, W).
    preprocessing : dict
        What ``transform`` does (resize, crop, mean, std, interpolation) and where those
        values came from (``origin``: ``spec``, ``weights`` or ``imagenet_default``).
    name, source : str
        As in the spec (``source`` is a key of :data:`MODEL_SOURCES`).
    weights_name : str
        The resolved weights (e.g. ``IMAGENET1K_V1``), ``random``, or the file name.
    weights_sha256 : str or None
        SHA-256 of the checkpoint file (named weights, TorchScript), or of the parameter
        and buffer tensors (random weights, custom entry points).
    init_seed : int or None
        Seed of the random initialisation (``weights: random``), else None.
    task : {"image", "video", "text", "audio", "text_image"}
        "video": the network takes clips of shape (batch, 3, T, H, W). ``source: huggingface``
        models: "text", "audio", "image", or "text_image" (CLIP-like dual encoders); see
        :mod:`bids_dnn.dnn.huggingface`.
    tokenizer : transformers tokenizer or None
        ``source: huggingface`` text and text-image models: the (fast) tokenizer.
    processor : transformers feature extractor / image processor or None
        ``source: huggingface`` audio models: the feature extractor; image and text-image
        models: the image processor.
    model_kind : {"encoder", "decoder"} or None
        ``source: huggingface``: "decoder" when the text model's self-attention is causal
        (GPT-2, CLIP's text tower), else "encoder"; None for other sources.
    sample_rate : int or None
        ``source: huggingface`` audio models: the sampling rate (Hz) the model takes.

    ``transform`` is None for ``source: huggingface`` text and audio models.
    """

    module: nn.Module
    transform: Callable[[Image.Image], torch.Tensor] | None
    preprocessing: dict[str, Any]
    name: str
    source: str
    weights_name: str
    weights_sha256: str | None
    init_seed: int | None = None
    task: str = "image"
    tokenizer: Any = None
    processor: Any = None
    model_kind: str | None = None
    sample_rate: int | None = None

    def identity(self) -> dict[str, Any]:
        """What determines the network's outputs (part of the feature content key)."""
        return {
            "name": self.name,
            "source": self.source,
            "weights_name": self.weights_name,
            "weights_sha256": self.weights_sha256,
            "init_seed": self.init_seed,
            "task": self.task,
            "preprocessing": self.preprocessing,
        }


# ---------------------------------------------------------------------------------------
# Loaders, one per source
# ---------------------------------------------------------------------------------------


def _torchvision_names() -> dict[str, str]:
    """Supported torchvision model names -> task ("image" or "video")."""
    import torchvision.models as tvm

    names = {name: "image" for name in tvm.list_models(module=tvm)}
    names.update({name: "video" for name in tvm.list_models(module=tvm.video)})
    return names


def _check_torchvision_name(name: str, field_path: str) -> str:
    import torchvision.models as tvm

    supported = _torchvision_names()
    if name in supported:
        return supported[name]
    if name in tvm.list_models():
        raise SpecError([f"{field_path}.name: {name!r} is a torchvision detection, segmentation, "
                         "optical-flow or quantized model; only classification and video models "
                         "are supported"])
    close = difflib.get_close_matches(name, list(supported), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else " (see `bids_dnn models list`)"
    raise SpecError([f"{field_path}.name: {name!r} is not a torchvision model{hint}"])


def _resolve_torchvision_weights(name: str, weights: str, field_path: str) -> Any:
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    member = weights.split(".")[-1]  # accept "AlexNet_Weights.IMAGENET1K_V1"
    try:
        return enum[member]
    except KeyError:
        options = ["DEFAULT", *(m.name for m in enum)]
        close = difflib.get_close_matches(member, options, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}?" if close else f"valid: {', '.join(options)}, random"
        raise SpecError([f"{field_path}.weights: {weights!r} are not weights of {name}; {hint}"]) from None


def _load_torchvision(spec: ModelSpec, field_path: str) -> LoadedModel:
    from torchvision.models import get_model, get_model_weights

    task = _check_torchvision_name(spec.name, field_path)
    if spec.weights == "random":
        torch.manual_seed(spec.init_seed)
        module = get_model(spec.name, weights=None)
        # preprocessing of the default weights, or of the first weights whose crop fits a
        # fixed input size (vit_h_14 defaults to 518 px weights, its random init takes 224)
        size = getattr(module, "image_size", None)
        enum = get_model_weights(spec.name)
        candidates = [(w, torchvision_weights_transform(w)) for w in (enum.DEFAULT, *enum)]
        default, fallback = next(((w, t) for w, t in candidates if t and size in (None, t.crop)),
                                 candidates[0])
        transform, prep = transform_for(spec.transform, fallback, f"weights:{default.name}")
        return LoadedModel(module, transform, prep, spec.name, "torchvision", "random",
                           state_dict_sha256(module), spec.init_seed, task)
    weights = _resolve_torchvision_weights(spec.name, spec.weights, field_path)
    path = cached_checkpoint_path(weights)
    if not path.is_file():
        raise InputMissingError(
            f"weights {weights.name} of {spec.name} are not in the local cache "
            f"(TORCH_HOME={torch_home()}; expected {path})",
            hint=f"run `bids_dnn models fetch {spec.name}` on a machine with internet and copy "
            "TORCH_HOME here, or use weights: random",
        )
    state_dict = load_checkpoint(path)
    try:
        with injected_state_dict(type(weights), state_dict):
            module = get_model(spec.name, weights=weights)
    except RuntimeError as exc:
        raise AnalysisError(f"{path.name} does not fit {spec.name}: {str(exc).splitlines()[0]}",
                            hint="delete the file and fetch it again") from None
    transform, prep = transform_for(spec.transform, torchvision_weights_transform(weights),
                                     f"weights:{weights.name}")
    return LoadedModel(module, transform, prep, spec.name, "torchvision", weights.name,
                       file_sha256(path), None, task)


def _optional_import(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise AnalysisError(f"models with source {extra!r} need the optional package {module!r}",
                            hint=f"pip install bids_dnn[{extra}]") from None


def _missing_hub_weights(spec: ModelSpec, exc: Exception) -> InputMissingError:
    return InputMissingError(
        f"weights {spec.weights} of {spec.source} model {spec.name} are not in the local cache "
        f"({exc.__class__.__name__})",
        hint="create the model once with these weights on a machine with internet and copy its "
        "Hugging Face cache (HF_HOME) here, or use weights: random",
    )


def _load_timm(spec: ModelSpec, field_path: str) -> LoadedModel:
    timm = _optional_import("timm", "timm")
    names = timm.list_models()
    if spec.name not in names:
        close = difflib.get_close_matches(spec.name, names, n=3, cutoff=0.5)
        raise SpecError([f"{field_path}.name: {spec.name!r} is not a timm model"
                         + (f"; did you mean {', '.join(close)}?" if close else "")])
    if spec.weights == "random":
        torch.manual_seed(spec.init_seed)
        module = timm.create_model(spec.name, pretrained=False)
    else:
        tagged = spec.name if spec.weights == "DEFAULT" else f"{spec.name}.{spec.weights}"
        try:
            with hf_offline():
                module = timm.create_model(tagged, pretrained=True)
        except Exception as exc:  # noqa: BLE001 - offline hub errors vary by version
            raise _missing_hub_weights(spec, exc) from None
    cfg = timm.data.resolve_data_config({}, model=module)
    crop = int(cfg["input_size"][-1])
    fallback = ImageTransform(int(round(crop / cfg.get("crop_pct", 0.875))), crop,
                              tuple(cfg["mean"]), tuple(cfg["std"]),
                              cfg.get("interpolation", "bilinear")
                              if cfg.get("interpolation") in INTERPOLATIONS else "bilinear")
    transform, prep = transform_for(spec.transform, fallback, "timm_data_config")
    return LoadedModel(module, transform, prep, spec.name, "timm", spec.weights,
                       state_dict_sha256(module), spec.init_seed if spec.weights == "random"
                       else None)


def _load_open_clip(spec: ModelSpec, field_path: str) -> LoadedModel:
    open_clip = _optional_import("open_clip", "clip")
    if spec.name not in open_clip.list_models():
        close = difflib.get_close_matches(spec.name, open_clip.list_models(), n=3, cutoff=0.5)
        raise SpecError([f"{field_path}.name: {spec.name!r} is not an open_clip model"
                         + (f"; did you mean {', '.join(close)}?" if close else "")])
    if spec.weights == "random":
        torch.manual_seed(spec.init_seed)
        model, tag = open_clip.create_model(spec.name, pretrained=None), "random"
    else:
        tags = open_clip.list_pretrained_tags_by_model(spec.name)
        tag = tags[0] if spec.weights == "DEFAULT" and tags else spec.weights
        try:
            with hf_offline():
                model = open_clip.create_model(spec.name, pretrained=tag)
        except Exception as exc:  # noqa: BLE001
            raise _missing_hub_weights(spec, exc) from None
    visual = model.visual  # the image tower
    size = visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    transform, prep = transform_for(spec.transform, ImageTransform(size, size, mean, std, "bicubic"),
                                     "open_clip")
    return LoadedModel(visual, transform, prep, spec.name, "open_clip", tag,
                       state_dict_sha256(visual), spec.init_seed if tag == "random" else None)


class _ScriptOutput(nn.Module):
    """Wraps a TorchScript module: only its final output (layer ``output``) can be hooked."""

    def __init__(self, scripted: nn.Module) -> None:
        super().__init__()
        self.scripted = scripted
        self.output = nn.Identity()

    def forward(self, x: torch.Tensor) -> Any:
        return self.output(self.scripted(x))


def _load_torchscript(spec: ModelSpec, field_path: str) -> LoadedModel:
    path = Path(str(spec.torchscript)).expanduser()
    if not path.is_file():
        raise InputMissingError(f"{field_path}.torchscript: file not found: {path}")
    try:
        with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; still supported
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise InputMissingError(f"{field_path}.torchscript: cannot load {path}: "
                                f"{exc.__class__.__name__}") from None
    transform, prep = transform_for(spec.transform, None, "imagenet_default")
    return LoadedModel(_ScriptOutput(scripted), transform, prep, spec.name, "torchscript",
                       path.name, file_sha256(path))


def _load_custom(spec: ModelSpec, field_path: str) -> LoadedModel:
    """Run ``file.py:callable`` (the file given in the spec; never an importable module name).

    The file is executed as a module of its own (not added to ``sys.path``). A ``SystemExit``
    from its code is an error, never the run's success."""
    match = ENTRY_POINT.fullmatch(str(spec.entry_point))
    file = Path(match["file"]) if match else Path("")
    if not match or not file.is_file():
        raise InputMissingError(f"{field_path}.entry_point: file not found: {file}",
                                "entry_point paths are relative to the spec file's folder")
    try:
        module_spec = importlib.util.spec_from_file_location(f"bids_dnn_custom_{spec.output_label}", file)
        code = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(code)
        target: Any = code
        for part in match["callable"].split("."):
            target = getattr(target, part)
        torch.manual_seed(spec.init_seed)
        takes_weights = "weights" in inspect.signature(target).parameters
        module = target(weights=spec.weights) if takes_weights else target()
    except SystemExit as exc:
        raise AnalysisError(f"{field_path}.entry_point: {file.name} called sys.exit({exc.code!r})",
                            "a custom model's code must not exit the process") from None
    except (ImportError, AttributeError, SyntaxError) as exc:
        raise InputMissingError(f"{field_path}.entry_point: cannot load {spec.entry_point!r} "
                                f"({exc.__class__.__name__}: {exc})") from None
    if not isinstance(module, nn.Module):
        raise AnalysisError(f"{field_path}.entry_point: {spec.entry_point} returned "
                            f"{type(module).__name__}, not a torch.nn.Module")
    transform, prep = transform_for(spec.transform, None, "imagenet_default")
    return LoadedModel(module, transform, prep, spec.name, "custom", spec.weights,
                       state_dict_sha256(module), spec.init_seed)


def _load_huggingface(spec: ModelSpec, field_path: str) -> LoadedModel:
    """``transformers`` models (imported only for this source): :mod:`bids_dnn.dnn.huggingface`."""
    from bids_dnn.dnn.huggingface import load_huggingface_fields

    return LoadedModel(**load_huggingface_fields(spec, field_path))


#: source name -> loader(spec, field_path) -> LoadedModel
MODEL_SOURCES: dict[str, Callable[[ModelSpec, str], LoadedModel]] = {
    "torchvision": _load_torchvision,
    "timm": _load_timm,
    "open_clip": _load_open_clip,
    "torchscript": _load_torchscript,
    "custom": _load_custom,
    "huggingface": _load_huggingface,
}


def load_model(spec: ModelSpec, *, field_path: str = "models[0]") -> LoadedModel:
    """Build the network a spec names, in eval mode, from local files only.

    Parameters
    ----------
    spec : ModelSpec
        The model section of the analysis spec.
    field_path : str
        Where ``spec`` sits in the analysis spec; prefixes error messages
        (``models[1].name: ...``).

    Returns
    -------
    LoadedModel

    Raises
    ------
    SpecError
        Unknown model or weights name (with "did you mean").
    InputMissingError
        Weights not in the local cache, unreadable checkpoint or TorchScript file.
    AnalysisError
        Optional package missing, checkpoint not matching the architecture.
    """
    loaded = MODEL_SOURCES[spec.source](spec, field_path)
    loaded.module.eval()
    loaded.module.requires_grad_(False)
    return loaded


# ---------------------------------------------------------------------------------------
# Catalogue and fetching (the only code that downloads)
# ---------------------------------------------------------------------------------------


def fetch_weights(names: list[str], weights: str = "DEFAULT", *, progress: bool = False,
                  source: str = "torchvision") -> list[Path]:
    """Download weights into the local cache (``bids_dnn models fetch``).

    Parameters
    ----------
    names : list of str
        Model names of ``source``: torchvision model names, or Hugging Face hub ids.
    weights : str
        torchvision: ``DEFAULT`` or a weights enum member name. huggingface: ``DEFAULT`` (the
        default branch) or a hub revision (branch, tag, commit).
    progress : bool
        Show the download bars.
    source : {"torchvision", "huggingface"}
        Where the names come from (a key of :data:`WEIGHT_FETCHERS`).

    Returns
    -------
    list of Path
        torchvision: the cached checkpoint files; huggingface: the snapshot folders in the
        Hugging Face hub cache (``HF_HUB_CACHE``); one per name.

    Raises
    ------
    UsageError
        An unknown source; a hub download that fails (no network, unknown repository).
    SpecError
        An unknown torchvision model or weights name.
    """
    if source not in WEIGHT_FETCHERS:
        raise UsageError(f"models fetch: unknown source {source!r}; valid: {', '.join(WEIGHT_FETCHERS)}")
    return WEIGHT_FETCHERS[source](names, weights, progress)


def _fetch_torchvision(names: list[str], weights: str, progress: bool) -> list[Path]:
    paths = []
    for i, name in enumerate(names):
        _check_torchvision_name(name, f"names[{i}]")
        entry = _resolve_torchvision_weights(name, weights, f"names[{i}]")
        if not cached_checkpoint_path(entry).is_file():
            check_weights_folder_writable(cached_checkpoint_path(entry).parent)
        torch.hub.load_state_dict_from_url(entry.url, progress=progress, check_hash=True,
                                           map_location="cpu", weights_only=True)
        paths.append(cached_checkpoint_path(entry))
    return paths


#: weight files ``models fetch --source huggingface`` leaves out: other frameworks' formats
_HF_IGNORE = ["*.h5", "*.msgpack", "*.onnx", "*.onnx_data", "*.ot", "*.tflite", "*.mlmodel", "*.gguf",
              "tf_model*", "flax_model*", "rust_model*", "onnx/*", "openvino/*", "coreml/*"]
#: PyTorch pickles, also left out when the repository has safetensors
_HF_PICKLES = ["*.bin", "*.pt", "*.pth", "*.ckpt"]


def _fetch_huggingface(names: list[str], weights: str, progress: bool) -> list[Path]:
    """``huggingface_hub.snapshot_download`` of each repository: config, preprocessor and PyTorch
    weights (safetensors when there are any, else ``*.bin``), into the hub cache."""
    try:
        hub = importlib.import_module("huggingface_hub")
    except ImportError:
        raise AnalysisError("fetching huggingface models needs the optional package 'huggingface_hub'",
                            hint="pip install 'bids_dnn[hf]'") from None
    revision = None if weights in ("DEFAULT", "random") else weights
    paths = []
    for name in names:
        try:
            files = hub.list_repo_files(name, revision=revision)
            ignore = _HF_IGNORE + (_HF_PICKLES if any(f.endswith(".safetensors") for f in files) else [])
            with _hub_progress(progress):
                folder = hub.snapshot_download(name, revision=revision, ignore_patterns=ignore)
        except Exception as exc:  # noqa: BLE001 - network, authentication, unknown repository
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise UsageError(f"cannot download {name}{f' (revision {revision})' if revision else ''} from the "
                             f"Hugging Face hub: {exc.__class__.__name__}: {first}",
                             "check the name and the network; gated models need `hf auth login` first") from None
        paths.append(Path(folder))
    return paths


@contextlib.contextmanager
def _hub_progress(show: bool) -> Iterator[None]:
    """huggingface_hub's download bars on or off for the duration (restored after)."""
    utils = importlib.import_module("huggingface_hub.utils")
    was_disabled = utils.are_progress_bars_disabled()
    if show:
        utils.enable_progress_bars()
    else:
        utils.disable_progress_bars()
    try:
        yield
    finally:
        if was_disabled:
            utils.disable_progress_bars()
        else:
            utils.enable_progress_bars()


#: source -> fetcher(names, weights, progress) -> cached paths (the only code that downloads)
WEIGHT_FETCHERS: dict[str, Callable[[list[str], str, bool], list[Path]]] = {
    "torchvision": _fetch_torchvision,
    "huggingface": _fetch_huggingface,
}


def model_catalog() -> list[dict[str, Any]]:
    """Supported torchvision models: name, task, default / available weights, cached?"""
    from torchvision.models import get_model_weights

    rows = []
    for name, task in sorted(_torchvision_names().items()):
        enum = get_model_weights(name)
        default = enum.DEFAULT
        rows.append({
            "name": name,
            "task": task,
            "default_weights": default.name,
            "weights": [member.name for member in enum],
            "file": os.path.basename(default.url),
            "cached": cached_checkpoint_path(default).is_file(),
        })
    return rows
