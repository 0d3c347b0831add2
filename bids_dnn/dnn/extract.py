"""Streaming activation extraction with forward hooks.

Every requested layer is captured in one forward pass per batch: a forward hook on each
layer copies its output (first element of a tuple output), applies the token policy to 3-D
outputs, flattens it to ``(batch, n_units)`` and keeps it until the batch is done, when the
float32 arrays are handed to ``on_batch`` and dropped. Memory therefore depends on the batch
size and the layer sizes, never on the number of stimuli.

Copies are made only where needed: the first forward pass runs outside inference mode (under
``no_grad``, same kernels, same values), copies every captured output and notes each one's
autograd version counter; a layer whose output is changed in place later in the pass (e.g. a
convolution followed by ``ReLU(inplace=True)``, or ``out += identity``) has its counter bumped
and keeps being copied, every other layer is then kept without a copy (on CPU this saves only
~1 % for AlexNet; most of the remaining hook overhead is page faults from holding the outputs). The structure of the pass is assumed not to depend on the
data, as for ``stop_early``.

Flattening follows the *logical* shape of the output (C, H, W order for convolutions),
whatever its memory format, so ``channels_last`` changes speed, not the stored layout.

Token layout of torchvision's ``VisionTransformer``: patches are embedded by ``conv_proj``,
reshaped to ``(batch, n_patches, dim)`` (batch first, patches in row-major order), and the
learned ``class_token`` is concatenated *in front*: every encoder block and ``encoder.ln``
output ``(batch, 1 + n_patches, dim)`` with the class token at index 0, and ``heads``
receives ``encoder_output[:, 0]``. Token policies, applied to any 3-D output
``(batch, tokens, dim)``:

``cls``
    ``output[:, 0]`` -> (batch, dim): the class token (first token).
``mean``
    ``output.mean(dim=1)`` -> (batch, dim): the average over all tokens, class token included.
``all``
    ``output.reshape(batch, -1)`` -> (batch, tokens * dim), token-major.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from bids_dnn.errors import AnalysisError
from bids_dnn.dnn.models import LoadedModel

__all__ = ["AGGREGATE_TASKS", "TOKEN_POLICIES", "check_aggregate", "extract_features", "layer_output_rows"]

#: A stimulus: an image, a list of video frames, or a callable loading either.
Stimulus = Union[Image.Image, Sequence[Image.Image], Callable[[], Any]]

#: token policy -> function (batch, tokens, dim) tensor -> (batch, n_units) tensor
TOKEN_POLICIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "cls": lambda x: x[:, 0],
    "mean": lambda x: x.mean(dim=1),
    "all": lambda x: x.reshape(x.shape[0], -1),
}


#: glibc ``mallopt`` parameters and the values bids_dnn sets (also the Dockerfile's
#: ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``)
_MALLOPT = {"MALLOC_MMAP_THRESHOLD_": (-3, 256 << 20), "MALLOC_TRIM_THRESHOLD_": (-1, 512 << 20)}
_ALLOCATOR_TUNED: list[bool] = []


def tune_allocator() -> bool:
    """Let glibc reuse freed activation buffers instead of returning them to the kernel.

    By default glibc serves every allocation above a (dynamic) threshold with a fresh ``mmap``
    and unmaps it on free, so the large, short-lived layer outputs and their copies are
    zero-filled page by page in every batch (about 8 % of an AlexNet CPU pass with all layers
    captured). Raising the mmap threshold to 256 MiB and the trim threshold to 512 MiB keeps
    them in the heap. Once per process, only on glibc, and not where the user set either
    environment variable. Returns whether the settings were applied now.
    """
    import ctypes
    import os
    import platform

    if _ALLOCATOR_TUNED or platform.system() != "Linux" or any(os.environ.get(k) for k in _MALLOPT):
        return False
    _ALLOCATOR_TUNED.append(True)
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(libc.mallopt(param, value) == 1 for param, value in _MALLOPT.values())
    except (OSError, AttributeError):  # musl or another libc: keep its defaults
        return False


def _output_rows(output: Any, policy: Callable[[torch.Tensor], torch.Tensor],
                 layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A hooked layer's output -> (the output tensor, its rows (batch, n_units)); see
    :func:`layer_output_rows`."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, torch.Tensor) or output.ndim < 1:
        raise AnalysisError(f"layer {layer!r} returns {type(output).__name__}, not a "
                            "batched tensor; choose another layer")
    rows = policy(output) if output.ndim == 3 else output
    return output, rows.reshape(rows.shape[0], -1)


def layer_output_rows(output: Any, token_policy: str = "cls", layer: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`extract_features` stores of one layer's output, before the float32 cast.

    The first element of a tuple or list output is taken; a 3-D output (batch, tokens, dim) is
    reduced by the token policy; the result is flattened to (batch, n_units) in its logical
    order (C, H, W for convolutions, token-major for ``all``). Differentiable: no copy, no cast,
    no detach, so it also serves gradients with respect to the input
    (:mod:`bids_dnn.dnn.saliency`).

    Parameters
    ----------
    output : tensor or tuple / list of tensors
        What the layer's forward returned, batch first.
    token_policy : {"cls", "mean", "all"}
        See :data:`TOKEN_POLICIES`.
    layer : str
        The layer's name, for error messages.

    Returns
    -------
    output : torch.Tensor (batch, ...)
        The tensor output (the first element of a tuple).
    rows : torch.Tensor (batch, n_units)
        In ``output``'s dtype; a view of it where the layout allows.

    Raises
    ------
    AnalysisError
        The output is not a batched tensor, or the token policy is unknown.
    """
    if token_policy not in TOKEN_POLICIES:
        raise AnalysisError(f"unknown token policy {token_policy!r}; valid: {', '.join(TOKEN_POLICIES)}")
    return _output_rows(output, TOKEN_POLICIES[token_policy], layer)


class _StopForward(Exception):
    """Raised by the last needed hook to skip the rest of the network."""


class _LayerCapture:
    """Forward hooks that keep each layer's flattened output for the current pass."""

    def __init__(self, module: nn.Module, layers: list[str], token_policy: str) -> None:
        modules = dict(module.named_modules())
        unknown = [name for name in layers if name not in modules or not name]
        if unknown:
            raise AnalysisError(f"not layers of the model: {', '.join(map(repr, unknown))}",
                                hint="choose layers with bids_dnn.dnn.layers.resolve_layers")
        self.layers = layers
        self.policy = TOKEN_POLICIES[token_policy]
        self.outputs: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.n_calls = 0
        self.stop_after: int | None = None
        #: layers whose output must be copied; None until the probing pass has run
        self.copy_layers: set[str] | None = None
        #: during the probing pass: layer -> (raw output, its version counter when captured)
        self.probe: dict[str, tuple[torch.Tensor, int]] | None = None
        self.handles = []
        try:
            for name in layers:
                self.handles.append(modules[name].register_forward_hook(self._hook(name)))
        except RuntimeError as exc:  # ScriptModule internals
            self.remove()
            raise AnalysisError(f"layer {name!r} cannot be hooked ({exc})",
                                hint="TorchScript models expose only the layer 'output'") from None

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            output, rows = _output_rows(output, self.policy, name)
            self.shapes[name] = tuple(int(s) for s in output.shape[1:])
            if self.probe is not None:
                self.probe[name] = (output, output._version)
            # copy unless known safe: later in-place operations (ReLU(inplace=True)) must not change it
            copy = self.copy_layers is None or name in self.copy_layers
            self.outputs[name] = rows.to(torch.float32, copy=copy)
            self.n_calls += 1
            if self.stop_after is not None and self.n_calls >= self.stop_after:
                raise _StopForward
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def _as_frames(item: Stimulus) -> list[Image.Image]:
    """Load a stimulus: one image -> [image]; frames -> list of frames."""
    loaded = item() if callable(item) and not isinstance(item, Image.Image) else item
    if isinstance(loaded, Image.Image):
        return [loaded]
    frames = list(loaded)
    if not frames or not all(isinstance(f, Image.Image) for f in frames):
        raise AnalysisError("a stimulus must be a PIL image or a non-empty list of PIL images "
                            f"(got {type(loaded).__name__})")
    return frames


def _network_inputs(items: list[list[Image.Image]], transform: Callable[[Image.Image], torch.Tensor],
                    task: str) -> tuple[list[torch.Tensor], list[int]]:
    """Per-stimulus frames -> network inputs and the number of inputs per stimulus.

    Image models get one input (3, H, W) per frame (frames are averaged after the forward
    pass); video models get one clip (3, T, H, W) per stimulus.
    """
    inputs: list[torch.Tensor] = []
    counts: list[int] = []
    for frames in items:
        tensors = [transform(frame) for frame in frames]
        if task == "video":
            inputs.append(torch.stack(tensors, dim=1))
            counts.append(1)
        else:
            inputs.extend(tensors)
            counts.append(len(tensors))
    return inputs, counts


#: stimuli.video.aggregate -> the model task it needs (None: any)
AGGREGATE_TASKS: dict[str, str | None] = {"auto": None, "mean": "image", "clip": "video"}


def check_aggregate(loaded: LoadedModel, aggregate: str | None) -> None:
    """Refuse a frame aggregation the model cannot do.

    Image models take single frames, so a video's activations are the mean over its sampled
    frames (``mean``); video models take the frames as one clip (``clip``).

    Raises
    ------
    AnalysisError
        ``clip`` with an image model, ``mean`` with a video model, or an unknown value.
    """
    if aggregate is None:
        return
    if aggregate not in AGGREGATE_TASKS:
        raise AnalysisError(f"unknown video aggregation {aggregate!r}; valid: {', '.join(AGGREGATE_TASKS)}")
    needed = AGGREGATE_TASKS[aggregate]
    if needed is not None and needed != loaded.task:
        fitting = next(a for a, t in AGGREGATE_TASKS.items() if t == loaded.task)
        raise AnalysisError(f"stimuli.video.aggregate is '{aggregate}' but {loaded.name} is "
                            f"{'an image' if loaded.task == 'image' else 'a video'} model, which takes "
                            f"{'single frames' if loaded.task == 'image' else 'clips'}",
                            f"set stimuli.video.aggregate: {fitting} (or auto)")


def _uses_conv2d(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


@torch.inference_mode()
def extract_features(
    loaded: LoadedModel,
    images: Sequence[Stimulus],
    layers: list[str],
    *,
    batch_size: int = 16,
    device: str = "cpu",
    token_policy: str = "cls",
    on_batch: Callable[[int, dict[str, np.ndarray]], None],
    progress: Callable[[int], None] | None = None,
    channels_last: bool | None = None,
    stop_early: bool = True,
    aggregate: str | None = None,
    memory_budget_bytes: int | None = None,
) -> dict[str, tuple[int, ...]]:
    """Run the network over all stimuli and stream each batch's activations to ``on_batch``.

    Parameters
    ----------
    loaded : LoadedModel
        From :func:`bids_dnn.dnn.models.load_model`; its module is moved to ``device``.
    images : sequence of stimuli, length n_stimuli
        PIL images, lists of PIL frames (a video), or zero-argument callables returning
        either (loaded only when their batch is processed). Image models average the
        activations of a stimulus' frames; video models get the frames as one clip.
    layers : list of str
        Layer names (see :func:`bids_dnn.dnn.layers.resolve_layers`).
    batch_size : int
        Stimuli per batch (per forward pass for single images and clips; a batch of
        multi-frame stimuli is forwarded in chunks of ``batch_size`` frames).
    device : str
        A torch device (see :func:`bids_dnn.backend.resolve_device`).
    token_policy : {"cls", "mean", "all"}
        Reduction of 3-D outputs (batch, tokens, dim); see :data:`TOKEN_POLICIES`.
    on_batch : callable(start_index, {layer: array (n_in_batch, n_units) float32})
        Receives each batch; rows are stimuli ``start_index ..``.
    progress : callable(n_new), optional
        Called after each batch with the number of stimuli it held (an increment, as
        ``bids_dnn.console.progress``'s ``advance`` expects).
    channels_last : bool, optional
        Use the channels-last memory format for 2-D conv nets; default: on CUDA only.
    stop_early : bool
        Skip the layers after the last requested one (the number of hook calls of the first
        pass tells where to stop). Outputs are the same either way.
    aggregate : {"auto", "mean", "clip"}, optional
        The spec's ``stimuli.video.aggregate``, checked against the model: ``mean`` needs an
        image model, ``clip`` a video model (``auto`` / None: whichever the model takes).
    memory_budget_bytes : int, optional
        Working memory of one batch (``--mem``): the first batch holds one stimulus, whose
        network input and captured activations give the size of the following batches
        (:func:`batch_size_for_budget`, at most ``batch_size``). Default: ``batch_size``.

    Returns
    -------
    dict of str to tuple of int
        Each layer's output shape without the batch dimension, before the token policy
        (e.g. ``(64, 55, 55)``, ``(197, 768)``), in the order of ``layers``.

    Raises
    ------
    AnalysisError
        A layer is not called in the forward pass, returns no tensor, or changes size; or
        ``aggregate`` does not fit the model.
    """
    check_aggregate(loaded, aggregate)
    if token_policy not in TOKEN_POLICIES:
        raise AnalysisError(f"unknown token policy {token_policy!r}; valid: {', '.join(TOKEN_POLICIES)}")
    if batch_size < 1:
        raise AnalysisError(f"batch_size must be at least 1 (got {batch_size})")
    layers = list(dict.fromkeys(layers))
    tune_allocator()
    module = loaded.module.to(device).eval()
    video = loaded.task == "video"
    if channels_last is None:
        channels_last = torch.device(device).type == "cuda" and not video and _uses_conv2d(module)
    memory_format = torch.channels_last_3d if video else torch.channels_last
    if channels_last:
        module.to(memory_format=memory_format)
    capture = _LayerCapture(module, layers, token_policy)
    n_units: dict[str, int] = {}
    step = 1 if memory_budget_bytes is not None else batch_size  # a budget: measure one stimulus first
    start = 0
    try:
        while start < len(images):
            items = [_as_frames(images[i]) for i in range(start, min(start + step, len(images)))]
            inputs, counts = _network_inputs(items, loaded.transform, loaded.task)
            rows = _forward_inputs(module, capture, inputs, step, device,
                                   memory_format if channels_last else None, stop_early)
            if any(c != 1 for c in counts):  # average the frames of each stimulus
                offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
                divisor = np.asarray(counts, dtype=np.float32)[:, None]
                rows = {k: np.add.reduceat(v, offsets, axis=0) / divisor for k, v in rows.items()}
            for name, array in rows.items():
                if n_units.setdefault(name, array.shape[1]) != array.shape[1]:
                    raise AnalysisError(f"layer {name!r} changed size between batches "
                                        f"({n_units[name]} -> {array.shape[1]} units)")
            on_batch(start, {name: rows[name] for name in layers})
            if memory_budget_bytes is not None and start == 0:
                per_stimulus = (sum(int(x.nelement()) * x.element_size() for x in inputs)
                                + sum(int(a.nbytes) for a in rows.values())) / len(items)
                step = batch_size_for_budget(memory_budget_bytes, per_stimulus, batch_size)
            del rows, inputs
            start += len(items)
            if progress is not None:
                progress(len(items))
    finally:
        capture.remove()
        if channels_last:
            module.to(memory_format=torch.contiguous_format)
    return {name: capture.shapes[name] for name in layers if name in capture.shapes}


#: copies of a batch's input and captured activations alive at once (network input, captured
#: outputs, their NumPy rows concatenated over chunks, the writer's cast or projection)
_BATCH_COPIES = 3


def batch_size_for_budget(memory_budget_bytes: int, bytes_per_stimulus: float, batch_size: int) -> int:
    """Stimuli per batch whose input and captured activations fit a working-memory budget.

    Parameters
    ----------
    memory_budget_bytes : int
    bytes_per_stimulus : float
        Network input plus captured activations of one stimulus.
    batch_size : int
        The most stimuli per batch (``models[i].batch_size``).

    Returns
    -------
    int
        ``memory_budget_bytes // (3 * bytes_per_stimulus)`` clipped to ``[1, batch_size]``.
    """
    fit = int(memory_budget_bytes // max(_BATCH_COPIES * bytes_per_stimulus, 1.0))
    return max(1, min(int(batch_size), fit))


def _probe_forward(module: nn.Module, capture: _LayerCapture, x: torch.Tensor) -> None:
    """First pass: outside inference mode, so that version counters show in-place changes.

    Every output is copied in this pass; afterwards ``capture.copy_layers`` holds the layers
    whose output was modified in place after its hook ran (or cannot be checked).
    """
    capture.probe = {}
    try:
        with torch.inference_mode(False), torch.no_grad():
            x = x.clone()  # a normal tensor: in-place ops on it must be allowed
            try:
                module(x)
            except _StopForward:
                pass
        copy_layers = set()
        for name, (tensor, version) in capture.probe.items():
            try:
                if tensor._version != version:
                    copy_layers.add(name)
            except RuntimeError:  # an inference tensor (created by the model itself)
                copy_layers.add(name)
        capture.copy_layers = copy_layers | (set(capture.layers) - set(capture.probe))
    finally:
        capture.probe = None


def _forward_inputs(module: nn.Module, capture: _LayerCapture, inputs: list[torch.Tensor],
                    chunk: int, device: str, memory_format: torch.memory_format | None,
                    stop_early: bool) -> dict[str, np.ndarray]:
    """Forward ``inputs`` in chunks of equally shaped tensors; rows per layer, in order."""
    parts: dict[str, list[np.ndarray]] = {}
    start = 0
    while start < len(inputs):
        stop = start + 1
        while stop < len(inputs) and stop - start < chunk and inputs[stop].shape == inputs[start].shape:
            stop += 1
        x = torch.stack(inputs[start:stop]).to(device)
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        capture.outputs.clear()
        capture.n_calls = 0
        if capture.copy_layers is None:
            _probe_forward(module, capture, x)
        else:
            try:
                module(x)
            except _StopForward:
                pass
        missing = [name for name in capture.layers if name not in capture.outputs]
        if missing:
            raise AnalysisError(
                f"layer(s) {', '.join(missing)} produced no output in the forward pass (defined "
                "but not called in eval mode, e.g. an auxiliary head); choose other layers")
        if stop_early and capture.stop_after is None:
            capture.stop_after = capture.n_calls
        for name, tensor in capture.outputs.items():
            parts.setdefault(name, []).append(tensor.cpu().numpy())
        capture.outputs.clear()
        start = stop
    for name, pieces in parts.items():
        if len({piece.shape[1] for piece in pieces}) > 1:
            raise AnalysisError(f"layer {name!r} has a different size for clips with different "
                                "numbers of frames; give all videos the same length or choose "
                                "layers after the temporal pooling")
    return {name: np.concatenate(p) if len(p) > 1 else p[0] for name, p in parts.items()}

