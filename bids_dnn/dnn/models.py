"""Loading networks and naming their layers, without ever downloading at run time.

A :class:`~bids_dnn.spec.ModelSpec` is turned into a :class:`LoadedModel` (a module in eval
mode plus its image transform and provenance) by the loader registered for its ``source`` in
:data:`MODEL_SOURCES`. Pretrained torchvision weights are read only from the torch hub cache
(``$TORCH_HOME/hub/checkpoints``), with ``torch.load(..., weights_only=True)``; a missing file
is an :class:`~bids_dnn.errors.InputMissingError` telling the user to run
``bids_dnn models fetch <name>`` on a machine with internet. Only :func:`fetch_weights`
downloads, and only the ``models fetch`` command calls it.

Layers are named as in ``module.named_modules()`` (e.g. ``features.3``, ``layer4``,
``encoder.layers.encoder_layer_11``) and chosen with a preset from :data:`LAYER_PRESETS`,
exact names, or ``fnmatch`` globs (see :func:`resolve_layers`).
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import hashlib
import importlib
import importlib.util
import inspect
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from PIL import Image
from torch import nn

from bids_dnn.errors import AnalysisError, InputMissingError, SpecError, UsageError
from bids_dnn.spec import ENTRY_POINT, IMAGENET_MEAN, IMAGENET_STD, ModelSpec, TransformSpec
from bids_dnn.io.stimuli import file_sha256

__all__ = [
    "ImageTransform",
    "LAYER_PRESETS",
    "LoadedModel",
    "MODEL_SOURCES",
    "cached_checkpoint_path",
    "fetch_weights",
    "list_layer_names",
    "load_model",
    "model_catalog",
    "resolve_layers",
    "state_dict_sha256",
]

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


# ---------------------------------------------------------------------------------------
# Preprocessing and the loaded model
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> normalised tensor of shape (3, crop, crop).

    Converts to RGB, resizes the shorter side to ``resize`` pixels (aspect preserved,
    antialiased), crops the centre ``crop`` x ``crop`` square, scales to [0, 1] and normalises
    with ``mean`` / ``std``. Picklable, so it can travel to data-loading processes.
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __call__(self, image: Image.Image) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        image = self.resized(image.convert("RGB"))
        image = F.center_crop(image, [self.crop, self.crop])
        tensor = F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)
        return F.normalize(tensor, mean=list(self.mean), std=list(self.std))

    def resized(self, image: Image.Image) -> Image.Image:
        """The resize step alone: shorter side to ``resize`` pixels, antialiased (an image of
        that size is returned as it is). :func:`bids_dnn.io.media.load_image` applies it
        to large pictures while decoding (``fit``), so that they are never held at full size as
        floats; the network input is the same."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        return F.resize(image, [self.resize], interpolation=InterpolationMode(self.interpolation), antialias=True)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (recorded as the ``preprocessing`` provenance)."""
        return {
            "resize_shorter_side": self.resize,
            "center_crop": self.crop,
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "interpolation": self.interpolation,
            "antialias": True,
            "color": "RGB",
        }


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
    task : {"image", "video"}
        "video": the network takes clips of shape (batch, 3, T, H, W).
    """

    module: nn.Module
    transform: Callable[[Image.Image], torch.Tensor]
    preprocessing: dict[str, Any]
    name: str
    source: str
    weights_name: str
    weights_sha256: str | None
    init_seed: int | None = None
    task: str = "image"

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


def _transform_for(spec_transform: TransformSpec | None, fallback: ImageTransform | None,
                   origin: str) -> tuple[ImageTransform, dict[str, Any]]:
    """The transform from the spec, else ``fallback`` (the weights' own), else ImageNet."""
    if spec_transform is not None:
        transform = ImageTransform(spec_transform.resize, spec_transform.crop,
                                   tuple(spec_transform.mean), tuple(spec_transform.std))
        origin = "spec"
    elif fallback is not None:
        transform = fallback
    else:
        transform, origin = ImageTransform(), "imagenet_default"
    return transform, {**transform.describe(), "origin": origin}


def _torchvision_weights_transform(weights: Any) -> ImageTransform | None:
    """The resize / crop / mean / std of a torchvision weights entry, if it has them."""
    try:
        preset = weights.transforms()
        resize = min(int(v) for v in preset.resize_size)  # video presets give (h, w)
        crop = int(preset.crop_size[0])
        mode = getattr(preset.interpolation, "value", "bilinear")
        return ImageTransform(resize, crop, tuple(float(v) for v in preset.mean),
                              tuple(float(v) for v in preset.std),
                              mode if mode in _INTERPOLATIONS else "bilinear")
    except (AttributeError, TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------
# Hashing and the weights cache
# ---------------------------------------------------------------------------------------


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every parameter and buffer."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        if not isinstance(tensor, torch.Tensor):
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cached_checkpoint_path(weights: Any) -> Path:
    """Where torch hub keeps a torchvision weights file (honours ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _torch_home() -> str:
    return os.environ.get("TORCH_HOME", str(Path(torch.hub.get_dir()).parent))


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: tensors only, never arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling / corrupt file
        raise InputMissingError(
            f"weights file {path} cannot be loaded safely (weights_only=True): "
            f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            hint="delete it and run `bids_dnn models fetch` again",
        ) from None


_INJECT_LOCK = threading.Lock()


@contextlib.contextmanager
def _injected_state_dict(enum_class: type, state_dict: dict[str, Any]) -> Iterator[None]:
    """Make ``enum_class.get_state_dict`` return ``state_dict`` (no network access).

    torchvision's builders adapt the architecture to the weights' metadata (number of
    classes, image size) and remap old checkpoint keys (DenseNet) before loading; calling
    the builder with the enum while its state dict comes from our safe local load keeps all
    of that exact.
    """
    with _INJECT_LOCK:
        setattr(enum_class, "get_state_dict", lambda self, *args, **kwargs: state_dict)
        try:
            yield
        finally:
            delattr(enum_class, "get_state_dict")


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
        candidates = [(w, _torchvision_weights_transform(w)) for w in (enum.DEFAULT, *enum)]
        default, fallback = next(((w, t) for w, t in candidates if t and size in (None, t.crop)),
                                 candidates[0])
        transform, prep = _transform_for(spec.transform, fallback, f"weights:{default.name}")
        return LoadedModel(module, transform, prep, spec.name, "torchvision", "random",
                           state_dict_sha256(module), spec.init_seed, task)
    weights = _resolve_torchvision_weights(spec.name, spec.weights, field_path)
    path = cached_checkpoint_path(weights)
    if not path.is_file():
        raise InputMissingError(
            f"weights {weights.name} of {spec.name} are not in the local cache "
            f"(TORCH_HOME={_torch_home()}; expected {path})",
            hint=f"run `bids_dnn models fetch {spec.name}` on a machine with internet and copy "
            "TORCH_HOME here, or use weights: random",
        )
    state_dict = _load_checkpoint(path)
    try:
        with _injected_state_dict(type(weights), state_dict):
            module = get_model(spec.name, weights=weights)
    except RuntimeError as exc:
        raise AnalysisError(f"{path.name} does not fit {spec.name}: {str(exc).splitlines()[0]}",
                            hint="delete the file and fetch it again") from None
    transform, prep = _transform_for(spec.transform, _torchvision_weights_transform(weights),
                                     f"weights:{weights.name}")
    return LoadedModel(module, transform, prep, spec.name, "torchvision", weights.name,
                       file_sha256(path), None, task)


def _optional_import(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise AnalysisError(f"models with source {extra!r} need the optional package {module!r}",
                            hint=f"pip install bids_dnn[{extra}]") from None


@contextlib.contextmanager
def _hf_offline() -> Iterator[None]:
    """Forbid Hugging Face Hub downloads (timm / open_clip read their cache only)."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = None
    with contextlib.suppress(ImportError):
        constants = importlib.import_module("huggingface_hub.constants")
    saved = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


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
            with _hf_offline():
                module = timm.create_model(tagged, pretrained=True)
        except Exception as exc:  # noqa: BLE001 - offline hub errors vary by version
            raise _missing_hub_weights(spec, exc) from None
    cfg = timm.data.resolve_data_config({}, model=module)
    crop = int(cfg["input_size"][-1])
    fallback = ImageTransform(int(round(crop / cfg.get("crop_pct", 0.875))), crop,
                              tuple(cfg["mean"]), tuple(cfg["std"]),
                              cfg.get("interpolation", "bilinear")
                              if cfg.get("interpolation") in _INTERPOLATIONS else "bilinear")
    transform, prep = _transform_for(spec.transform, fallback, "timm_data_config")
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
            with _hf_offline():
                model = open_clip.create_model(spec.name, pretrained=tag)
        except Exception as exc:  # noqa: BLE001
            raise _missing_hub_weights(spec, exc) from None
    visual = model.visual  # the image tower
    size = visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    transform, prep = _transform_for(spec.transform, ImageTransform(size, size, mean, std, "bicubic"),
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
    transform, prep = _transform_for(spec.transform, None, "imagenet_default")
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
    transform, prep = _transform_for(spec.transform, None, "imagenet_default")
    return LoadedModel(module, transform, prep, spec.name, "custom", spec.weights,
                       state_dict_sha256(module), spec.init_seed)


#: source name -> loader(spec, field_path) -> LoadedModel
MODEL_SOURCES: dict[str, Callable[[ModelSpec, str], LoadedModel]] = {
    "torchvision": _load_torchvision,
    "timm": _load_timm,
    "open_clip": _load_open_clip,
    "torchscript": _load_torchscript,
    "custom": _load_custom,
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
# Layer names, presets and selection
# ---------------------------------------------------------------------------------------

_CONV_LINEAR = (nn.modules.conv._ConvNd, nn.Linear)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU,
                nn.Tanh, nn.Sigmoid)
_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
          nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
_MAX_STACK_UNITS = 8


def _never_called(name: str, modules: dict[str, nn.Module]) -> bool:
    """Modules defined but not called in an eval-mode forward pass.

    Auxiliary classifiers (class name containing ``Aux``: Inception, GoogLeNet) run only in
    training; ``nn.MultiheadAttention`` uses its ``out_proj`` weights functionally; the
    insides of a TorchScript module cannot be hooked.
    """
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        module = modules[".".join(parts[:depth])]
        if "Aux" in type(module).__name__ or isinstance(module, torch.jit.ScriptModule):
            return True
        if depth < len(parts) and isinstance(module, nn.MultiheadAttention):
            return True
    return False


def list_layer_names(module: nn.Module) -> list[str]:
    """All hookable named submodules in definition order, without the root (``''``)."""
    modules = dict(module.named_modules())
    return [name for name in modules if name and not _never_called(name, modules)]


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _is_plain_stack(module: nn.Module) -> bool:
    """A Sequential of leaf layers containing a conv or linear (AlexNet's ``features``)."""
    children = list(module.children())
    return (isinstance(module, nn.Sequential) and bool(children)
            and all(_is_leaf(c) for c in children)
            and any(isinstance(c, _CONV_LINEAR) for c in children))


def _stack_units(prefix: str, stack: nn.Module) -> list[str]:
    """Output of each conv/linear unit of a plain stack: its last following activation.

    With more than 8 units (VGG) only the units that end a stage (followed by pooling or the
    end of the stack) are kept.
    """
    units: list[tuple[str, bool]] = []
    current: str | None = None
    for name, child in stack.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, _CONV_LINEAR):
            if current is not None:
                units.append((current, False))
            current = full
        elif isinstance(child, _ACTIVATIONS) and current is not None:
            current = full
        elif isinstance(child, _POOLS) and current is not None:
            units.append((current, True))
            current = None
    if current is not None:
        units.append((current, True))
    if len(units) > _MAX_STACK_UNITS:
        units = [u for u in units if u[1]]
    return [name for name, _ in units]


def _is_global_pool(module: nn.Module) -> bool:
    size = getattr(module, "output_size", None)
    sizes = size if isinstance(size, (tuple, list)) else (size,)
    return isinstance(module, _POOLS) and all(s == 1 for s in sizes)


def _repeated_blocks(prefix: str, module: nn.Module) -> list[str]:
    """Blocks of a direct child that is a sequence of >= 4 same-class containers (ViT)."""
    for name, child in module.named_children():
        blocks = list(child.named_children())
        if (isinstance(child, (nn.Sequential, nn.ModuleList)) and len(blocks) >= 4
                and len({type(b) for _, b in blocks}) == 1 and not _is_leaf(blocks[0][1])):
            return [f"{prefix}.{name}.{b}" for b, _ in blocks]
    return []


def _top_level(module: nn.Module) -> list[str]:
    """Roughly 5-15 interpretable stage outputs (see :data:`LAYER_PRESETS`)."""
    if _is_plain_stack(module):
        return _stack_units("", module)
    children = [(n, c) for n, c in module.named_children()
                if "Aux" not in type(c).__name__ and not isinstance(c, torch.jit.ScriptModule)]
    trunks = [n for n, c in children
              if isinstance(c, nn.Sequential) and not _is_leaf(c) and not _is_plain_stack(c)]
    names: list[str] = []
    in_body = False
    for name, child in children:
        if _is_leaf(child):
            if in_body and (isinstance(child, _CONV_LINEAR) or _is_global_pool(child)):
                names.append(name)
            continue
        in_body = True
        if _is_plain_stack(child):
            names += _stack_units(name, child)
        elif trunks == [name] or isinstance(child, nn.ModuleList):
            names += [f"{name}.{n}" for n, c in child.named_children() if not _is_leaf(c)]
        elif not isinstance(child, nn.Sequential) and _repeated_blocks(name, child):
            names += _repeated_blocks(name, child)
        else:
            names.append(name)
    return names or [n for n, _ in children]


def _of_type(*types: type) -> Callable[[nn.Module], list[str]]:
    def select(module: nn.Module) -> list[str]:
        modules = dict(module.named_modules())
        return [n for n in list_layer_names(module) if isinstance(modules[n], types)]
    return select


def _leaves(module: nn.Module) -> list[str]:
    modules = dict(module.named_modules())
    return [n for n in list_layer_names(module) if _is_leaf(modules[n])]


#: preset name -> function(module) -> layer names in definition order.
#:
#: ``top_level``: the stage outputs of the network. A root that is a plain Sequential is
#: expanded like AlexNet's ``features`` below. Otherwise the root's children are walked in
#: order; leaf children before the first container are the stem and are skipped (ResNet's
#: conv1/bn1/relu/maxpool, ViT's conv_proj), later leaf children are kept when they are a
#: conv/linear or a global pool (ResNet's avgpool, fc). A Sequential of plain layers is
#: expanded to the activation after each conv/linear (AlexNet: features.1, .4, .7, .9, .11,
#: classifier.2, .5, .6), keeping only stage ends when there are more than 8 (VGG16: 5 conv
#: stages + 3 fc). A single Sequential trunk of blocks is expanded to its blocks (MobileNet,
#: EfficientNet, DenseNet, ConvNeXt ``features.N``), as is a ModuleList (MaxViT, MViT
#: ``blocks.N``); several Sequentials of blocks are kept whole (ResNet layer1..layer4). A
#: container holding a list of >= 4 repeated blocks is expanded to them (ViT:
#: encoder.layers.encoder_layer_0..11, then heads.head). Auxiliary heads are skipped.
#: ``all_relu`` / ``all_conv`` / ``all_linear``: every ReLU / convolution / linear module;
#: ``leaves``: every module without children.
LAYER_PRESETS: dict[str, Callable[[nn.Module], list[str]]] = {
    "top_level": _top_level,
    "all_relu": _of_type(nn.ReLU, nn.ReLU6),
    "all_conv": _of_type(nn.modules.conv._ConvNd),
    "all_linear": _of_type(nn.Linear),
    "leaves": _leaves,
}


def resolve_layers(module: nn.Module, layers: str | list[str], field_path: str = "models[0].layers",
                   model_name: str = "the model") -> list[str]:
    """Turn a preset, exact names and ``fnmatch`` globs into layer names.

    Parameters
    ----------
    module : torch.nn.Module
    layers : str or list of str
        A key of :data:`LAYER_PRESETS`, a layer name, a glob (``layer*.relu``; ``*`` also
        matches dots), or a list mixing them.
    field_path : str
        Spec location named in error messages.
    model_name : str
        Model named in error messages.

    Returns
    -------
    list of str
        Unique names, in the model's definition order.

    Raises
    ------
    SpecError
        One line per name or glob that matches nothing, with the 3 closest valid names.
    """
    valid = list_layer_names(module)
    requested = [layers] if isinstance(layers, str) else list(layers)
    selected: set[str] = set()
    problems: list[str] = []
    for item in requested:
        if item in LAYER_PRESETS:
            found = LAYER_PRESETS[item](module)
            if not found:
                problems.append(f"{field_path}: preset {item!r} selects no layer of {model_name}; "
                                f"choose another preset or name layers")
            selected.update(found)
        elif item in valid:
            selected.add(item)
        elif any(ch in item for ch in "*?["):
            found = fnmatch.filter(valid, item)
            if not found:
                problems.append(f"{field_path}: {item!r} matches no layer of {model_name}")
            selected.update(found)
        else:
            close = difflib.get_close_matches(item, valid, n=3, cutoff=0.0)
            problems.append(f"{field_path}: {item!r} is not a layer of {model_name}; "
                            f"closest: {', '.join(close)}")
    if problems:
        raise SpecError(problems)
    return [name for name in valid if name in selected]


# ---------------------------------------------------------------------------------------
# Catalogue and fetching (the only code that downloads)
# ---------------------------------------------------------------------------------------


def fetch_weights(names: list[str], weights: str = "DEFAULT", *, progress: bool = False) -> list[Path]:
    """Download torchvision weights into the torch hub cache (``bids_dnn models fetch``).

    Parameters
    ----------
    names : list of str
        torchvision model names.
    weights : str
        ``DEFAULT`` or a weights enum member name.
    progress : bool
        Show torch hub's download bar.

    Returns
    -------
    list of Path
        The cached checkpoint files, one per name.
    """
    paths = []
    for i, name in enumerate(names):
        _check_torchvision_name(name, f"names[{i}]")
        entry = _resolve_torchvision_weights(name, weights, f"names[{i}]")
        if not cached_checkpoint_path(entry).is_file():
            _check_weights_folder_writable(cached_checkpoint_path(entry).parent)
        torch.hub.load_state_dict_from_url(entry.url, progress=progress, check_hash=True,
                                           map_location="cpu", weights_only=True)
        paths.append(cached_checkpoint_path(entry))
    return paths


def _check_weights_folder_writable(folder: Path) -> None:
    """Refuse, before any download, a weights folder that cannot be written (a read-only image).

    Raises
    ------
    UsageError
        ``folder`` cannot be created or is not writable (exit 64).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            reason: str | None = "read-only file system"
        else:
            reason = None if os.access(folder, os.W_OK | os.X_OK) else "not writable by this user"
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
    if reason is not None:
        raise UsageError(
            f"cannot write weights into TORCH_HOME ({_torch_home()}): {folder}: {reason}",
            "fetch them into a writable folder (TORCH_HOME=DIR bids_dnn models fetch NAME, or in the image: "
            "docker run -v DIR:/opt/torch -u $(id -u):$(id -g) IMAGE models fetch NAME) and mount it at run time "
            "(-v DIR:/opt/torch:ro), or build the image with --build-arg MODELS=\"NAME ...\"")


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
