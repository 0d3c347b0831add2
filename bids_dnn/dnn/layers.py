"""Naming and choosing a network's layers.

Layers are named as in ``module.named_modules()`` (e.g. ``features.3``, ``layer4``,
``encoder.layers.encoder_layer_11``) and chosen with a preset from :data:`LAYER_PRESETS`,
exact names, or ``fnmatch`` globs (see :func:`resolve_layers`).
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Callable

import torch
from torch import nn

from bids_dnn.errors import SpecError

__all__ = ["LAYER_PRESETS", "list_layer_names", "resolve_layers"]

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
