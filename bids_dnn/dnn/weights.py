"""The local weights cache and the digests of weights: nothing here downloads.

Pretrained torchvision weights are read only from the torch hub cache
(``$TORCH_HOME/hub/checkpoints``), with ``torch.load(..., weights_only=True)``; timm and
open_clip weights only from the Hugging Face cache (:func:`hf_offline`). A network's weights
are identified by :func:`bids_dnn.hashing.file_sha256` of its checkpoint file, or by
:func:`state_dict_sha256` of its tensors (part of the feature content key).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bids_dnn.errors import InputMissingError, UsageError
from bids_dnn.hashing import parts_sha256

__all__ = ["cached_checkpoint_path", "check_weights_folder_writable", "hf_offline", "injected_state_dict",
           "load_checkpoint", "state_dict_sha256", "torch_home"]


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every parameter and buffer (one
    tensor copied to the CPU at a time)."""
    def parts() -> Iterator[Any]:
        for name, tensor in module.state_dict().items():
            if not isinstance(tensor, torch.Tensor):
                continue
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            yield f"{name}|{flat.dtype}|{tuple(tensor.shape)}|"
            yield flat.view(torch.uint8).numpy()

    return parts_sha256(parts())


def cached_checkpoint_path(weights: Any) -> Path:
    """Where torch hub keeps a torchvision weights file (honours ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def torch_home() -> str:
    """The torch hub's home folder (``TORCH_HOME``), named in messages about missing weights."""
    return os.environ.get("TORCH_HOME", str(Path(torch.hub.get_dir()).parent))


def load_checkpoint(path: Path) -> dict[str, Any]:
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
def injected_state_dict(enum_class: type, state_dict: dict[str, Any]) -> Iterator[None]:
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


@contextlib.contextmanager
def hf_offline() -> Iterator[None]:
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


def check_weights_folder_writable(folder: Path) -> None:
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
            f"cannot write weights into TORCH_HOME ({torch_home()}): {folder}: {reason}",
            "fetch them into a writable folder (TORCH_HOME=DIR bids_dnn models fetch NAME, or in the image: "
            "docker run -v DIR:/opt/torch -u $(id -u):$(id -g) IMAGE models fetch NAME) and mount it at run time "
            "(-v DIR:/opt/torch:ro), or build the image with --build-arg MODELS=\"NAME ...\"")
