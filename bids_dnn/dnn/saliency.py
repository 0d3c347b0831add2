"""Saliency maps of a linear readout of one layer: which pixels drive a region's predicted response.

The "what drives a region" analysis fits a linear (ridge) model from one layer's stored
activations to an ROI's mean response. The predicted response of an image ``x`` is

    r(x) = intercept + sum_k w_k * (s_k(x) - mu_k),     s(x) = P f(x)  (or s = f without reduction)

where ``f(x)`` is the layer's activation vector exactly as :func:`bids_dnn.dnn.extract.extract_features`
stores it (the first element of a tuple output, the token policy applied to 3-D outputs, flattened
in C, H, W order; :func:`bids_dnn.dnn.extract.layer_output_rows` is shared with it) and ``P`` the
stored features' reduction, if any. This module differentiates ``r`` with respect to the network
input (the normalised image tensor):

``vanilla``
    The gradient ``d r / d x`` (Simonyan, Vedaldi & Zisserman 2014).
``smoothgrad``
    The gradient averaged over ``n_samples`` noisy copies ``x + sigma * z`` (Smilkov et al. 2017),
    ``z`` standard normal, ``sigma = noise_level * (max(x) - min(x))`` per image (over all its
    channels and pixels). The noise is drawn on the CPU by one ``torch.Generator`` seeded with
    ``seed``: for sample ``s = 0 .. n_samples - 1`` one ``torch.randn`` of shape ``(n, C, H, W)``
    for all images at once, in the input's dtype, so the maps do not depend on ``batch_size`` or
    the device.

Each image's gradient (C, H, W) is reduced to one map (H, W): ``maps`` is the maximum over colour
channels of ``|gradient|`` (Simonyan et al.; non-negative, the magnitude of the most sensitive
channel), ``signed`` the sum over channels of the gradient (which direction of brightness change
raises the response). Both are in the geometry of the network input, i.e. of the image after resize
and centre crop (:func:`load_saliency_images` returns that picture for overlays).

The layer's output is captured by a forward hook with gradients on; the forward stops right after
the layer's last call (counted once by a probe pass without gradients), so the rest of the network
is neither run nor recorded, and an in-place operation after the layer (``ReLU(inplace=True)``
after a convolution) cannot change what was captured.

Reduced features (``models[i].reduction``): ``srp`` is linear and determined by (n_units,
n_components, seed) alone, so :func:`srp_projection` rebuilds its matrix and the readout is
exactly that of the stored reduced features (the projection is folded into the weights,
``w_eff = P.T @ w``, so the matrix is never made dense). ``pca`` components are fitted on all
stimuli and are not stored in the feature file: :func:`stored_projection` refuses them; a caller
holding the fitted PCA can pass ``projection=pca.components_`` and
``unit_offset=mu + pca.components_ @ pca.mean_`` (the stored scores are ``(f - mean_) @ components_.T``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence, Union

import numpy as np
import torch
from torch import nn

from bids_dnn.dnn.extract import TOKEN_POLICIES, layer_output_rows
from bids_dnn.errors import AnalysisError

__all__ = [
    "SALIENCY_METHODS",
    "STORED_PROJECTIONS",
    "SaliencyImages",
    "SaliencyResult",
    "layer_output",
    "linear_readout_saliency",
    "load_saliency_images",
    "srp_projection",
    "stored_projection",
]

#: A projection from the raw layer output to the stored features: a matrix (n_stored, n_units)
#: (NumPy, SciPy sparse or torch; stored = rows @ P.T) or a differentiable torch callable
#: rows (batch, n_units) -> stored (batch, n_stored).
Projection = Union[np.ndarray, torch.Tensor, Any, Callable[[torch.Tensor], torch.Tensor]]


class _StopForward(Exception):
    """Raised by the hook after the layer's last call, to skip the rest of the network."""


class _RowsCapture:
    """A forward hook keeping the layer's flattened output (with its autograd graph)."""

    def __init__(self, module: nn.Module, layer: str, token_policy: str, stop_after: int | None) -> None:
        if token_policy not in TOKEN_POLICIES:
            raise AnalysisError(f"unknown token policy {token_policy!r}; valid: {', '.join(TOKEN_POLICIES)}")
        modules = dict(module.named_modules())
        if not layer or layer not in modules:
            raise AnalysisError(f"not a layer of the model: {layer!r}",
                                hint="choose layers with bids_dnn.dnn.layers.resolve_layers")
        self.layer, self.token_policy, self.stop_after = layer, token_policy, stop_after
        self.rows: torch.Tensor | None = None
        self.n_calls = 0
        self.handle = modules[layer].register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        _, rows = layer_output_rows(output, self.token_policy, self.layer)
        # a forward that goes on may change the output in place (ReLU(inplace=True)): keep a copy
        # (differentiable); one that stops after the last call cannot
        self.rows = rows.clone() if self.stop_after is None else rows
        self.n_calls += 1
        if self.stop_after is not None and self.n_calls >= self.stop_after:
            raise _StopForward

    def run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        self.rows, self.n_calls = None, 0
        try:
            module(x)
        except _StopForward:
            pass
        if self.rows is None:
            raise AnalysisError(f"layer {self.layer!r} produced no output in the forward pass (defined but "
                                "not called in eval mode, e.g. an auxiliary head); choose another layer")
        rows, self.rows = self.rows, None
        return rows

    def remove(self) -> None:
        self.handle.remove()


def _probe(module: nn.Module, layer: str, x: torch.Tensor, token_policy: str) -> tuple[int, int]:
    """How often ``layer`` is called in one forward pass, and its number of units (no gradients)."""
    capture = _RowsCapture(module, layer, token_policy, None)
    try:
        with torch.no_grad():
            rows = capture.run(module, x.detach().clone())
        return capture.n_calls, int(rows.shape[1])
    finally:
        capture.remove()


def layer_output(module: nn.Module, layer: str, inputs: torch.Tensor, *, token_policy: str = "cls",
                 stop_early: bool = True) -> torch.Tensor:
    """A layer's output as :func:`~bids_dnn.dnn.extract.extract_features` stores it, differentiable.

    The module is run as it is (set eval mode and the device yourself); gradients are recorded
    wherever ``inputs`` requires them, whatever the surrounding grad mode.

    Parameters
    ----------
    module : torch.nn.Module
    layer : str
        A name from ``module.named_modules()``.
    inputs : torch.Tensor (batch, C, H, W)
        Network inputs (already transformed), on the module's device and dtype.
    token_policy : {"cls", "mean", "all"}
        For 3-D outputs; see :data:`bids_dnn.dnn.extract.TOKEN_POLICIES`.
    stop_early : bool
        Stop the forward after the layer's last call (found by one extra pass without gradients
        on the first input); the output is the same either way.

    Returns
    -------
    torch.Tensor (batch, n_units)
        In the module's dtype (the feature store casts to float32); the output of the layer's
        last call when it is called more than once, as in extraction.

    Raises
    ------
    AnalysisError
        Unknown layer or token policy; the layer is not called or returns no tensor.
    """
    stop_after = _probe(module, layer, inputs[:1], token_policy)[0] if stop_early else None
    capture = _RowsCapture(module, layer, token_policy, stop_after)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            return capture.run(module, inputs)
    finally:
        capture.remove()


# ---------------------------------------------------------------------------------------
# Projections of the stored (reduced) features
# ---------------------------------------------------------------------------------------


def srp_projection(n_units: int, n_components: int, seed: int) -> Any:
    """The matrix of the ``srp`` reduction of the feature store, rebuilt from its settings.

    :mod:`bids_dnn.features.reduction` stores ``SparseRandomProjection(n_components,
    random_state=seed, dense_output=True)`` applied to float32 rows; scikit-learn draws the
    matrix from (n_units, n_components, seed) alone, so fitting it on a float32 dummy row of
    width ``n_units`` gives the same matrix (the tests check it against the store's own reduction).

    Parameters
    ----------
    n_units : int
        Width of the raw layer output (the layer's ``reduction_n_units_in``).
    n_components, seed : int
        The reduction's settings.

    Returns
    -------
    scipy.sparse.csr_matrix (n_components, n_units) float32
        Stored features = ``rows @ matrix.T``.
    """
    from sklearn.random_projection import SparseRandomProjection

    projection = SparseRandomProjection(n_components=int(n_components), random_state=int(seed), dense_output=True)
    projection.fit(np.zeros((1, int(n_units)), dtype=np.float32))
    return projection.components_


def _srp_from_params(params: Mapping[str, Any]) -> Any:
    return srp_projection(int(params["n_units_in"]), int(params["n_components"]), int(params["seed"]))


def _pca_not_stored(params: Mapping[str, Any]) -> Any:
    raise ValueError("the pca reduction's components are fitted on all stimuli and not stored in the "
                     "feature file, so its projection cannot be rebuilt; pass projection=pca.components_ "
                     "and unit_offset=mu + pca.components_ @ pca.mean_ from a PCA fitted on the full-width "
                     "features, or store the layer without reduction")


#: reduction method -> function(per-layer reduction attributes) -> matrix (n_stored, n_units)
STORED_PROJECTIONS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "srp": _srp_from_params,
    "pca": _pca_not_stored,
}


def stored_projection(params: Mapping[str, Any] | None) -> Any:
    """The projection of a stored layer, from its reduction attributes.

    Parameters
    ----------
    params : mapping or None
        ``FeatureSet.reductions[layer]`` of :func:`bids_dnn.features.store.read_features`
        (method, n_components, seed, n_units_in, applied, ...); None or empty: no reduction.

    Returns
    -------
    scipy.sparse matrix (n_stored, n_units) or None
        None when the layer is stored at full width (no reduction, or ``applied`` false).

    Raises
    ------
    ValueError
        ``pca`` (components not stored) or an unknown method.
    """
    if not params or not params.get("applied", True):
        return None
    method = params.get("method")
    if method not in STORED_PROJECTIONS:
        raise ValueError(f"unknown reduction {method!r}; valid: {', '.join(STORED_PROJECTIONS)}")
    return STORED_PROJECTIONS[method](params)


def _projection_matrix(projection: Any) -> Any | None:
    """A matrix projection as NumPy / SciPy sparse (float64 values kept as given), else None."""
    if isinstance(projection, torch.Tensor):
        return projection.detach().cpu().numpy()
    if isinstance(projection, np.ndarray):
        return projection
    if hasattr(projection, "tocsr") and hasattr(projection, "shape"):  # scipy sparse
        return projection
    return None


# ---------------------------------------------------------------------------------------
# Saliency methods
# ---------------------------------------------------------------------------------------

#: gradient of the summed readout with respect to a (n, C, H, W) input
GradientFn = Callable[[torch.Tensor], torch.Tensor]


def _vanilla(gradient: GradientFn, x: torch.Tensor, *, n_samples: int, noise_level: float,
             generator: torch.Generator) -> torch.Tensor:
    """The plain gradient at ``x`` (Simonyan et al. 2014)."""
    return gradient(x)


def _smoothgrad(gradient: GradientFn, x: torch.Tensor, *, n_samples: int, noise_level: float,
                generator: torch.Generator) -> torch.Tensor:
    """The gradient averaged over ``n_samples`` copies of ``x`` with Gaussian noise (Smilkov et al. 2017)."""
    if n_samples < 1:
        raise ValueError(f"smoothgrad needs n_samples >= 1 (got {n_samples})")
    if not (noise_level >= 0 and np.isfinite(noise_level)):
        raise ValueError(f"noise_level must be finite and >= 0 (got {noise_level})")
    flat = x.reshape(x.shape[0], -1)
    sigma = (noise_level * (flat.amax(dim=1) - flat.amin(dim=1))).reshape(-1, *([1] * (x.ndim - 1)))
    total = torch.zeros_like(x)
    for _ in range(n_samples):
        noise = torch.randn(tuple(x.shape), generator=generator, dtype=x.dtype).to(x.device)
        total += gradient(x + sigma * noise)
    return total / n_samples


#: method name -> function(gradient_fn, inputs, *, n_samples, noise_level, generator) -> gradients
SALIENCY_METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "vanilla": _vanilla,
    "smoothgrad": _smoothgrad,
}


@dataclass(frozen=True)
class SaliencyResult:
    """Saliency of a linear readout for n images.

    Attributes
    ----------
    maps : ndarray (n, H, W) float32
        Max over colour channels of ``|gradient|`` (non-negative).
    signed : ndarray (n, H, W) float32
        Sum over colour channels of the gradient.
    gradients : ndarray (n, C, H, W)
        The (averaged) gradient of the predicted response with respect to the network input,
        in the input's dtype.
    predictions : ndarray (n,) float64
        The predicted responses at the clean inputs, ``intercept + (s(x) - unit_offset) @ weights``;
        compare with the same readout of the stored features.
    method : str
        A key of :data:`SALIENCY_METHODS`.
    params : dict
        The settings (layer, token_policy, n_samples, noise_level, seed for ``smoothgrad``).
    """

    maps: np.ndarray
    signed: np.ndarray
    gradients: np.ndarray
    predictions: np.ndarray
    method: str
    params: dict[str, Any] = field(default_factory=dict)


class _PreparedModule:
    """Eval mode, parameters without gradients and the requested device, restored on exit."""

    def __init__(self, module: nn.Module, device: str | torch.device) -> None:
        self.module, self.device = module, torch.device(device)

    def __enter__(self) -> nn.Module:
        module = self.module
        self.training = {m: m.training for m in module.modules()}
        self.requires_grad = {p: p.requires_grad for p in module.parameters()}
        first = next(module.parameters(), None)
        self.original_device = first.device if first is not None else None
        module.eval()
        module.requires_grad_(False)
        if self.original_device is not None and self.original_device != self.device:
            module.to(self.device)
        return module

    def __exit__(self, *exc: Any) -> None:
        if self.original_device is not None and self.original_device != self.device:
            self.module.to(self.original_device)
        for m, training in self.training.items():
            m.training = training
        for p, flag in self.requires_grad.items():
            p.requires_grad_(flag)


def _as_vector(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be a finite 1-D array (got shape {array.shape})")
    return array


def linear_readout_saliency(
    module: nn.Module,
    layer: str,
    inputs: torch.Tensor,
    weights: np.ndarray,
    *,
    intercept: float = 0.0,
    unit_offset: np.ndarray | None = None,
    method: str = "vanilla",
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    token_policy: str = "cls",
    projection: Projection | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> SaliencyResult:
    """Saliency maps of ``intercept + (s(x) - unit_offset) @ weights``, one layer's linear readout.

    ``s(x)`` is the layer's output as the feature store holds it (see the module docstring):
    :func:`layer_output`, then ``projection`` if given. The gradient with respect to the network
    input is taken per image (the readout of each image depends only on that image in eval mode).

    Parameters
    ----------
    module : torch.nn.Module
        The network (``LoadedModel.module``). Put in eval mode with parameters not requiring
        gradients and moved to ``device`` for the call; its modes, flags and device are restored
        afterwards.
    layer : str
        The layer whose features the readout was fitted on.
    inputs : torch.Tensor (n, C, H, W)
        Network inputs, transformed as for extraction (:func:`load_saliency_images`); float32 or
        float64 (matching the module's dtype).
    weights : ndarray (n_stored,)
        Readout weights, one per stored feature column (reduced columns with ``projection``).
    intercept : float
        Added to the prediction (no effect on the maps).
    unit_offset : ndarray (n_stored,), optional
        Subtracted from the stored features before weighting (the training means ``mu`` of a
        ridge fitted on centred features); default zeros. No effect on the maps.
    method : {"vanilla", "smoothgrad"}
        A key of :data:`SALIENCY_METHODS`.
    n_samples : int
        ``smoothgrad``: number of noisy copies.
    noise_level : float
        ``smoothgrad``: noise SD as a fraction of each image's ``max - min`` input value.
    seed : int
        ``smoothgrad``: seed of the CPU ``torch.Generator`` drawing the noise.
    token_policy : {"cls", "mean", "all"}
        As used for extraction (``models[i].token_policy``).
    projection : matrix (n_stored, n_units) or callable, optional
        Raw layer rows -> stored features: a NumPy / SciPy sparse / torch matrix ``P`` with stored
        = ``rows @ P.T`` (:func:`srp_projection`, :func:`stored_projection`), folded into the
        weights in float64; or a differentiable torch callable ``rows -> stored``. None: the
        features are stored at full width.
    batch_size : int
        Images per forward / backward pass.
    device : str or torch.device
        Where the network runs (the noise is drawn on the CPU either way).

    Returns
    -------
    SaliencyResult

    Raises
    ------
    ValueError
        ``inputs`` not 4-D, unknown ``method``, ``weights`` / ``unit_offset`` / ``projection``
        of the wrong size, non-finite values, ``batch_size`` < 1.
    AnalysisError
        Unknown layer or token policy; the layer is not called or returns no tensor.
    """
    if method not in SALIENCY_METHODS:
        raise ValueError(f"unknown saliency method {method!r}; valid: {', '.join(SALIENCY_METHODS)}")
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4 or not inputs.is_floating_point():
        raise ValueError("inputs must be a float tensor of shape (n, C, H, W) (images; video clips are not "
                         f"supported), got {getattr(inputs, 'shape', type(inputs).__name__)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
    w = _as_vector(weights, "weights")
    mu = np.zeros_like(w) if unit_offset is None else _as_vector(unit_offset, "unit_offset")
    if mu.shape != w.shape:
        raise ValueError(f"unit_offset has {mu.shape[0]} values but weights {w.shape[0]}")
    constant = float(intercept) - float(w @ mu)
    device = torch.device(device)
    dtype = inputs.dtype
    x_all = inputs.detach().to(device)

    with _PreparedModule(module, device):
        stop_after, n_units = _probe(module, layer, x_all[:1], token_policy)
        readout_w, transform = _effective_readout(w, projection, n_units)
        capture = _RowsCapture(module, layer, token_policy, stop_after)
        try:
            # the readout sums in float64 (MPS has no float64: float32 there)
            accumulate = torch.float32 if device.type == "mps" else torch.float64
            w_t = torch.as_tensor(readout_w, dtype=accumulate, device=device)

            def predict(x: torch.Tensor) -> torch.Tensor:
                rows = capture.run(module, x)
                stored = transform(rows) if transform is not None else rows
                if stored.ndim != 2 or stored.shape[1] != w_t.shape[0]:
                    raise ValueError(f"the stored features have {tuple(stored.shape[1:])} columns per image "
                                     f"but weights has {w_t.shape[0]} values")
                return stored.to(accumulate) @ w_t + constant

            def gradient(x: torch.Tensor) -> torch.Tensor:
                parts = []
                for start in range(0, x.shape[0], batch_size):
                    with torch.inference_mode(False), torch.enable_grad():
                        leaf = x[start:start + batch_size].detach().clone().requires_grad_(True)
                        response = predict(leaf.clone()).sum()
                        parts.append(torch.autograd.grad(response, leaf)[0].detach())
                return torch.cat(parts)

            generator = torch.Generator(device="cpu").manual_seed(int(seed))
            grads = SALIENCY_METHODS[method](gradient, x_all, n_samples=int(n_samples),
                                             noise_level=float(noise_level), generator=generator)
            with torch.no_grad():
                predictions = torch.cat([predict(x_all[s:s + batch_size])
                                         for s in range(0, x_all.shape[0], batch_size)])
        finally:
            capture.remove()

    grads = grads.to(dtype).cpu()
    params: dict[str, Any] = {"layer": layer, "token_policy": token_policy}
    if method == "smoothgrad":
        params.update(n_samples=int(n_samples), noise_level=float(noise_level), seed=int(seed))
    return SaliencyResult(
        maps=grads.abs().amax(dim=1).numpy().astype(np.float32),
        signed=grads.sum(dim=1).numpy().astype(np.float32),
        gradients=grads.numpy(),
        predictions=predictions.cpu().numpy().astype(np.float64),
        method=method,
        params=params,
    )


def _effective_readout(w: np.ndarray, projection: Any, n_units: int
                       ) -> tuple[np.ndarray, Callable[[torch.Tensor], torch.Tensor] | None]:
    """Weights on the raw rows (a matrix projection folded in) and the callable projection, if any."""
    if projection is None:
        return w, None
    matrix = _projection_matrix(projection)
    if matrix is None:
        if not callable(projection):
            raise ValueError("projection must be a matrix (n_stored, n_units) or a callable on torch rows")
        return w, projection
    if matrix.ndim != 2 or matrix.shape != (w.shape[0], n_units):
        raise ValueError(f"projection has shape {tuple(matrix.shape)}; expected (n_stored, n_units) = "
                         f"({w.shape[0]}, {n_units}) for this layer and weights")
    folded = matrix.T.astype(np.float64) @ w  # sparse or dense: (n_units,)
    return np.asarray(folded, dtype=np.float64).ravel(), None


# ---------------------------------------------------------------------------------------
# Stimulus images: network inputs and what the network saw
# ---------------------------------------------------------------------------------------


class SaliencyImages(NamedTuple):
    """Network inputs and the pictures they show, in the same geometry.

    Attributes
    ----------
    inputs : torch.Tensor (n, 3, H, W) float32
        The normalised network inputs, as extraction computes them.
    display : ndarray (n, H, W, 3) float32
        The same images after resize and centre crop, before normalisation, in [0, 1].
    """

    inputs: torch.Tensor
    display: np.ndarray


def load_saliency_images(paths: Sequence[Path | str], model: Any) -> SaliencyImages:
    """Open image stimuli as network inputs plus the picture the network saw (for overlays).

    Images are decoded as for extraction (:func:`bids_dnn.io.stimulus_loading.load_image` with
    the model's resize as ``fit`` and ``DECODE_HEADROOM`` times its resize target as the decode
    size), then transformed. For an :class:`~bids_dnn.dnn.transforms.ImageTransform` the display
    picture is its resize and centre crop scaled to [0, 1]; for another transform the input's
    normalisation is inverted with the ``mean`` / ``std`` of ``model.preprocessing`` and clipped
    to [0, 1].

    Parameters
    ----------
    paths : sequence of path
        Image files (videos are refused).
    model : LoadedModel or ImageTransform
        The loaded model (its ``transform`` and ``preprocessing``), or a transform.

    Returns
    -------
    SaliencyImages
        ``(inputs, display)``; unpacks as a tuple.

    Raises
    ------
    ValueError
        A path is a video, the model is a video model, or the display picture cannot be derived.
    """
    from bids_dnn.io.media import DECODE_HEADROOM
    from bids_dnn.io.stimulus_loading import is_video, load_image

    if getattr(model, "task", "image") != "image":
        raise ValueError(f"saliency maps need an image model; {getattr(model, 'name', 'this model')} takes video clips")
    videos = [Path(p).name for p in paths if is_video(p)]
    if videos:
        raise ValueError(f"saliency maps are computed for images only, not videos ({', '.join(videos)}); "
                         "skip video stimuli")
    if not paths:
        raise ValueError("no image paths given")
    transform = getattr(model, "transform", model)
    resize = getattr(transform, "resize", None)
    side = DECODE_HEADROOM * int(resize) if isinstance(resize, int) and resize > 0 else None
    fit = getattr(transform, "resized", None)
    exact = callable(fit) and isinstance(getattr(transform, "crop", None), int)
    preprocessing = getattr(model, "preprocessing", None) or {}
    if not exact and not ("mean" in preprocessing and "std" in preprocessing):
        raise ValueError("cannot derive the displayed picture: the transform is not an ImageTransform "
                         "and the model's preprocessing gives no mean / std")
    inputs, display = [], []
    for path in paths:
        image = load_image(Path(path), side, fit)
        tensor = transform(image)
        inputs.append(tensor)
        if exact:
            display.append(_cropped(transform, image))
        else:
            mean = torch.as_tensor(preprocessing["mean"], dtype=tensor.dtype).reshape(-1, 1, 1)
            std = torch.as_tensor(preprocessing["std"], dtype=tensor.dtype).reshape(-1, 1, 1)
            display.append((tensor * std + mean).clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float32))
    return SaliencyImages(torch.stack(inputs), np.stack(display))


def _cropped(transform: Any, image: Any) -> np.ndarray:
    """An ImageTransform's resize and centre crop, in [0, 1], (H, W, 3) float32."""
    from torchvision.transforms.v2 import functional as F

    picture = transform.resized(image.convert("RGB"))
    picture = F.center_crop(picture, [transform.crop, transform.crop])
    tensor = F.to_dtype(F.pil_to_tensor(picture), torch.float32, scale=True)
    return tensor.permute(1, 2, 0).numpy().astype(np.float32)
