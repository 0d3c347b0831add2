"""Saliency of a linear readout: the gradient is that of the pipeline's own features.

References: ``torch.autograd.grad`` of forwards written here (the network's layers called in
order), central finite differences in float64, ``extract_features`` (the stored features), the
feature store's own ``srp`` reduction, and planted readouts whose receptive fields are known.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bids_dnn.dnn.extract import extract_features, layer_output_rows
from bids_dnn.dnn.models import LoadedModel, load_model
from bids_dnn.dnn.saliency import (SALIENCY_METHODS, SaliencyImages, layer_output, linear_readout_saliency,
                                   load_saliency_images, srp_projection, stored_projection)
from bids_dnn.dnn.transforms import ImageTransform
from bids_dnn.errors import AnalysisError
from bids_dnn.spec import ModelSpec

torch.set_num_threads(min(2, torch.get_num_threads()))


def _tiny_net(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """conv -> ReLU -> strided conv -> in-place ReLU -> linear, seeded; inputs (n, 3, 16, 16)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1, stride=2),
                        nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    return net.to(dtype).eval().requires_grad_(False)


def _loaded(module: nn.Module, transform: Any) -> LoadedModel:
    return LoadedModel(module, transform, {}, "tiny", "custom", "random", None)


def _extract(loaded: LoadedModel, images: list[Any], layer: str, **kwargs: Any) -> np.ndarray:
    batches: list[np.ndarray] = []
    extract_features(loaded, images, [layer], batch_size=3,
                     on_batch=lambda start, arrays: batches.append(arrays[layer]), **kwargs)
    return np.concatenate(batches)


def _noise_images(seed: int, sizes: list[tuple[int, int]]) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.fixture(scope="module")
def alexnet() -> LoadedModel:
    return load_model(ModelSpec(name="alexnet", weights="random", init_seed=0))


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three seeded noise PNGs of different sizes and aspect ratios."""
    folder = tmp_path_factory.mktemp("stimuli")
    paths = []
    for i, image in enumerate(_noise_images(5, [(300, 260), (256, 400), (180, 180)])):
        paths.append(folder / f"stim{i}.png")
        image.save(paths[-1])
    return paths


# ---------------------------------------------------------------------------------------
# 1. The gradient is that of the readout
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", ["2", "3"])  # a conv followed by an in-place ReLU, and that ReLU
def test_vanilla_gradient_equals_autograd_and_finite_differences(layer: str) -> None:
    net = _tiny_net(torch.float64)
    net.train().requires_grad_(True)  # the call must switch to eval / no grad and restore this
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 16, 16, generator=generator, dtype=torch.float64)
    w = np.random.default_rng(2).normal(size=8 * 8 * 8)
    mu = np.random.default_rng(3).normal(size=8 * 8 * 8)

    result = linear_readout_saliency(net, layer, x, w, intercept=0.7, unit_offset=mu)

    assert net.training and all(p.requires_grad for p in net.parameters())
    net.eval().requires_grad_(False)
    depth = int(layer) + 1

    def readout(images: torch.Tensor) -> torch.Tensor:  # written independently: the layers in order
        rows = net[:depth](images.clone()).reshape(images.shape[0], -1)
        return 0.7 + (rows - torch.from_numpy(mu)) @ torch.from_numpy(w)

    leaf = x.clone().requires_grad_(True)
    response = readout(leaf)
    (expected,) = torch.autograd.grad(response.sum(), leaf)
    assert result.gradients.dtype == np.float64 and result.gradients.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(result.gradients, expected.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.predictions, response.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(result.maps, np.abs(expected.numpy()).max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(result.signed, expected.numpy().sum(axis=1), rtol=1e-6, atol=1e-9)
    assert result.maps.dtype == np.float32 and result.maps.shape == (2, 16, 16) and (result.maps >= 0).all()
    assert np.abs(expected.numpy()).max() > 0

    eps = 1e-6
    for image, channel, row, col in [(0, 0, 3, 4), (0, 2, 8, 8), (1, 1, 15, 0), (1, 0, 7, 12)]:
        plus, minus = x.clone(), x.clone()
        plus[image, channel, row, col] += eps
        minus[image, channel, row, col] -= eps
        with torch.no_grad():
            numeric = float(readout(plus)[image] - readout(minus)[image]) / (2 * eps)
        np.testing.assert_allclose(result.gradients[image, channel, row, col], numeric, rtol=1e-6, atol=1e-8)


def test_layer_output_is_differentiable_and_stops_early() -> None:
    net = _tiny_net()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    calls: list[bool] = []  # whether gradients were recorded when the last layer ran
    handle = net[5].register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    try:
        rows = layer_output(net, "2", x)
        assert calls == [False]  # only the probe (no gradients) ran past the layer
        full = layer_output(net, "2", x, stop_early=False)
        assert calls == [False, True]
    finally:
        handle.remove()
    np.testing.assert_allclose(rows.detach().numpy(), net[:3](x).reshape(3, -1).detach().numpy(), rtol=1e-6)
    assert rows.requires_grad and rows.shape == (3, 8 * 8 * 8)
    np.testing.assert_allclose(full.detach().numpy(), rows.detach().numpy(), rtol=1e-6)
    with pytest.raises(AnalysisError, match="not a layer"):
        layer_output(net, "nope", x)


def test_layer_output_rows() -> None:
    conv = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    output, rows = layer_output_rows((conv, "aux"), "cls", "x")
    assert output is conv
    np.testing.assert_array_equal(rows.numpy(), np.arange(120, dtype=np.float32).reshape(2, 60))  # C, H, W
    tokens = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(20))
    torch.testing.assert_close(layer_output_rows(tokens, "cls")[1], tokens[:, 0])
    torch.testing.assert_close(layer_output_rows(tokens, "mean")[1], tokens.mean(dim=1))
    torch.testing.assert_close(layer_output_rows(tokens, "all")[1], tokens.reshape(2, 15))
    with pytest.raises(AnalysisError, match="not a batched tensor"):
        layer_output_rows({"a": conv}, "cls", "x")
    with pytest.raises(AnalysisError, match="unknown token policy"):
        layer_output_rows(tokens, "first")


# ---------------------------------------------------------------------------------------
# 2. The predictions are those of the pipeline's stored features
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", ["features.0", "features.12", "classifier.4"])
def test_predictions_equal_readout_of_extracted_features(alexnet: LoadedModel, image_files: list[Path],
                                                          layer: str) -> None:
    inputs, display = load_saliency_images(image_files, alexnet)
    from bids_dnn.io.stimulus_loading import load_image

    features = _extract(alexnet, [load_image(p) for p in image_files], layer).astype(np.float64)
    rng = np.random.default_rng(6)
    w = rng.normal(size=features.shape[1]) / np.sqrt(features.shape[1])
    mu = features.mean(axis=0) + rng.normal(scale=0.01, size=features.shape[1])
    result = linear_readout_saliency(alexnet.module, layer, inputs, w, intercept=-1.5, unit_offset=mu)
    expected = -1.5 + (features - mu) @ w
    scale = np.abs(features - mu) @ np.abs(w)  # the size of the terms summed (float32 features)
    np.testing.assert_allclose(result.predictions, expected, rtol=1e-4, atol=1e-6 * scale.max())
    assert result.maps.shape == (3, 224, 224) and np.isfinite(result.maps).all()
    assert not alexnet.module.training and not any(p.requires_grad for p in alexnet.module.parameters())


class _Tokens(nn.Module):
    """Patch embedding + a class token in front + one linear block: (n, 1 + 16, 8) tokens."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.block = nn.Sequential(nn.Linear(8, 8), nn.GELU())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        return self.head(self.block(tokens)[:, 0])


@pytest.mark.parametrize("policy", ["cls", "mean", "all"])
def test_token_policies_match_extraction(policy: str) -> None:
    module = _Tokens().eval().requires_grad_(False)
    transform = ImageTransform(resize=20, crop=16)
    loaded = _loaded(module, transform)
    images = _noise_images(8, [(24, 20), (20, 30), (20, 20), (40, 22)])
    features = _extract(loaded, images, "block", token_policy=policy).astype(np.float64)
    inputs = torch.stack([transform(image) for image in images])
    w = np.random.default_rng(9).normal(size=features.shape[1])
    result = linear_readout_saliency(module, "block", inputs, w, token_policy=policy, batch_size=3)
    np.testing.assert_allclose(result.predictions, features @ w, rtol=1e-4, atol=1e-6)
    assert features.shape[1] == (17 * 8 if policy == "all" else 8)

    leaf = inputs.clone().requires_grad_(True)
    tokens = module.block(torch.cat([module.cls.expand(4, -1, -1), module.embed(leaf).flatten(2).transpose(1, 2)], 1))
    rows = {"cls": tokens[:, 0], "mean": tokens.mean(dim=1), "all": tokens.reshape(4, -1)}[policy]
    (expected,) = torch.autograd.grad((rows.double() @ torch.from_numpy(w)).sum(), leaf)
    np.testing.assert_allclose(result.gradients, expected.numpy(), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------
# 3. A planted region
# ---------------------------------------------------------------------------------------


#: alexnet layer -> (units (C, H, W), stride and centre offset of a unit's receptive field in
#: input pixels, its half-width). conv1 unit a sees input rows 4a-2 .. 4a+8 (11 px, centre 4a+3);
#: conv2 unit i sees pool1 units i-2 .. i+2, each conv1 units 2p .. 2p+2: rows 8i-18 .. 8i+32
#: (51 px, centre 8i+7).
FIELDS = {"features.0": ((64, 55, 55), 4, 3, 5), "features.3": ((192, 27, 27), 8, 7, 25)}


def _quadrant_weights(layer: str, corner: str, seed: int) -> tuple[np.ndarray, int]:
    """Readout weights on the units whose receptive-field centre lies in one quadrant of the
    224 px input (C-H-W order), and the last input row / column any of their fields reaches."""
    (channels, size, _), stride, offset, half = FIELDS[layer]
    centres = stride * np.arange(size) + offset
    inside = centres < 112 if corner == "top_left" else centres >= 112
    mask = np.zeros((channels, size, size), dtype=bool)
    mask[:, inside[:, None] & inside[None, :]] = True
    weights = np.where(mask, np.random.default_rng(seed).normal(size=mask.shape), 0.0)
    return weights.reshape(-1), int(centres[inside].max() + half)


def _mass(maps: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    return maps[:, rows, cols].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))


TOP_LEFT, BOTTOM_RIGHT = (slice(0, 112), slice(0, 112)), (slice(112, None), slice(112, None))


@pytest.mark.parametrize("method", ["vanilla", "smoothgrad"])
@pytest.mark.parametrize("layer, threshold", [("features.0", 0.9), ("features.3", 0.7)])
def test_planted_region_holds_the_saliency_mass(alexnet: LoadedModel, method: str, layer: str,
                                                threshold: float) -> None:
    """Thresholds from the geometry: the selected fields reach ``half`` px past the quadrant's
    edge, so their union covers 117 x 117 px (conv1) or 137 x 137 px (conv2) of which the 112 x 112
    quadrant is 92 % or 67 % of the area (observed mass: 0.94 and 0.80, higher because the
    fields overlap most inside); a readout of all units puts about 25 % in each quadrant."""
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(10))
    options = dict(method=method, n_samples=3, seed=3)
    weights, last = _quadrant_weights(layer, "top_left", 11)
    result = linear_readout_saliency(alexnet.module, layer, images, weights, **options)
    assert (_mass(result.maps, *TOP_LEFT) > threshold).all(), _mass(result.maps, *TOP_LEFT)
    # ground truth: nothing outside the union of the selected fields has any effect
    assert np.all(result.gradients[:, :, last + 1:, :] == 0) and np.all(result.gradients[:, :, :, last + 1:] == 0)
    assert np.abs(result.gradients[:, :, :last + 1, :last + 1]).min(axis=1).mean() > 0
    if layer == "features.3" and method == "vanilla":  # controls: the opposite quadrant, no quadrant
        weights, _ = _quadrant_weights(layer, "bottom_right", 12)
        opposite = linear_readout_saliency(alexnet.module, layer, images, weights, **options)
        assert (_mass(opposite.maps, *BOTTOM_RIGHT) > threshold).all(), _mass(opposite.maps, *BOTTOM_RIGHT)
        everywhere = np.random.default_rng(13).normal(size=192 * 27 * 27)
        null = linear_readout_saliency(alexnet.module, layer, images, everywhere, **options)
        for quadrant in (TOP_LEFT, BOTTOM_RIGHT):
            assert (np.abs(_mass(null.maps, *quadrant) - 0.25) < 0.05).all(), _mass(null.maps, *quadrant)


# ---------------------------------------------------------------------------------------
# 4. SmoothGrad
# ---------------------------------------------------------------------------------------


def test_smoothgrad_equals_brute_force_noise_average_and_reduces_to_vanilla() -> None:
    net = _tiny_net(torch.float64)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    x[1] *= 3.0  # different input ranges: sigma is per image
    w = np.random.default_rng(13).normal(size=8 * 8 * 8)
    vanilla = linear_readout_saliency(net, "2", x, w)
    single = linear_readout_saliency(net, "2", x, w, method="smoothgrad", n_samples=1, noise_level=0.0)
    np.testing.assert_allclose(single.gradients, vanilla.gradients, rtol=1e-12, atol=0)
    np.testing.assert_allclose(single.maps, vanilla.maps, rtol=1e-6, atol=0)

    smooth = linear_readout_saliency(net, "2", x, w, method="smoothgrad", n_samples=5, noise_level=0.2,
                                     seed=7, batch_size=2)
    # brute force: the documented draw (one CPU generator, one randn (n, C, H, W) per sample),
    # sigma = 0.2 * (max - min) of each image, the gradient of each noisy copy by autograd
    generator = torch.Generator().manual_seed(7)
    sigma = torch.tensor([0.2 * float(x[i].max() - x[i].min()) for i in range(3)], dtype=torch.float64)
    total = torch.zeros_like(x)
    for _ in range(5):
        noisy = (x + sigma[:, None, None, None] * torch.randn(x.shape, generator=generator,
                                                              dtype=torch.float64)).requires_grad_(True)
        rows = net[:3](noisy.clone()).reshape(3, -1)
        total += torch.autograd.grad((rows @ torch.from_numpy(w)).sum(), noisy)[0]
    np.testing.assert_allclose(smooth.gradients, (total / 5).numpy(), rtol=1e-10, atol=1e-12)
    # predictions are at the clean inputs, whatever the method
    np.testing.assert_allclose(smooth.predictions, vanilla.predictions, rtol=1e-12)
    assert smooth.params == {"layer": "2", "token_policy": "cls", "n_samples": 5, "noise_level": 0.2, "seed": 7}
    assert not np.allclose(smooth.gradients, vanilla.gradients)


def test_smoothgrad_is_seeded() -> None:
    net = _tiny_net()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(14))
    w = np.random.default_rng(15).normal(size=8 * 8 * 8)
    kwargs = dict(method="smoothgrad", n_samples=4, noise_level=0.15)
    first = linear_readout_saliency(net, "3", x, w, seed=1, **kwargs)
    again = linear_readout_saliency(net, "3", x, w, seed=1, batch_size=1, **kwargs)
    other = linear_readout_saliency(net, "3", x, w, seed=2, **kwargs)
    np.testing.assert_allclose(again.maps, first.maps, rtol=1e-5, atol=1e-7)
    assert not np.allclose(other.maps, first.maps, rtol=1e-3)
    assert set(SALIENCY_METHODS) == {"vanilla", "smoothgrad"}
    with pytest.raises(ValueError, match="unknown saliency method"):
        linear_readout_saliency(net, "3", x, w, method="gradcam")
    with pytest.raises(ValueError, match="weights has 5 values"):
        linear_readout_saliency(net, "3", x, np.ones(5))
    with pytest.raises(ValueError, match="video clips"):
        linear_readout_saliency(net, "3", x[:, :, None], w)


# ---------------------------------------------------------------------------------------
# 5. Reduced (srp) features
# ---------------------------------------------------------------------------------------


def test_srp_readout_equals_readout_of_stored_reduced_features(tmp_path: Path) -> None:
    from bids_dnn.features.reduction import STREAMING_REDUCTIONS, reduce_features
    from bids_dnn.features.store import read_features, write_feature_file

    net = _tiny_net()
    transform = ImageTransform(resize=18, crop=16)
    images = _noise_images(16, [(20, 18), (18, 30), (16, 16), (25, 19)])
    raw = _extract(_loaded(net, transform), images, "2")
    assert raw.shape == (4, 512)
    settings = {"method": "srp", "n_components": 64, "seed": 3}
    write_feature_file(tmp_path / "f.h5", "key", [f"s{i}" for i in range(4)], {"2": raw}, reduction=settings)
    stored = read_features(tmp_path / "f.h5")
    reduced = stored.layers["2"].astype(np.float64)
    assert reduced.shape == (4, 64)
    np.testing.assert_allclose(reduced, reduce_features(raw, "srp", 64, 3)[0], rtol=1e-6, atol=1e-6)

    matrix = stored_projection(stored.reductions["2"])
    assert matrix.shape == (64, 512)
    np.testing.assert_array_equal(matrix.toarray(), srp_projection(512, 64, 3).toarray())
    # the store's own reduction of the identity is the matrix, transposed
    dense = reduce_features(np.eye(512, dtype=np.float32), "srp", 64, 3)[0].T.astype(np.float64)
    np.testing.assert_allclose(matrix.toarray(), dense, rtol=1e-7)
    streamed = STREAMING_REDUCTIONS["srp"](512, 64, 3)[0](raw)
    np.testing.assert_allclose(streamed, raw @ dense.T, rtol=1e-4, atol=1e-5)

    inputs = torch.stack([transform(image) for image in images])
    rng = np.random.default_rng(17)
    w, mu = rng.normal(size=64), reduced.mean(axis=0)
    result = linear_readout_saliency(net, "2", inputs, w, intercept=0.3, unit_offset=mu, projection=matrix)
    expected = 0.3 + (reduced - mu) @ w
    scale = (np.abs(reduced - mu) @ np.abs(w)).max()  # the size of the terms summed (float32 features)
    np.testing.assert_allclose(result.predictions, expected, rtol=1e-4, atol=1e-5 * scale)

    leaf = inputs.double().clone().requires_grad_(True)
    net64 = _tiny_net(torch.float64)
    rows = net64[:3](leaf.clone()).reshape(4, -1)
    (expected_grad,) = torch.autograd.grad(((rows @ torch.from_numpy(dense).T) @ torch.from_numpy(w)).sum(), leaf)
    np.testing.assert_allclose(result.gradients, expected_grad.numpy(), rtol=1e-4, atol=1e-6)

    as_callable = linear_readout_saliency(net, "2", inputs, w, intercept=0.3, unit_offset=mu,
                                          projection=lambda r: r @ torch.from_numpy(dense.T).float())
    np.testing.assert_allclose(as_callable.gradients, result.gradients, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(as_callable.predictions, result.predictions, rtol=1e-5)
    as_tensor = linear_readout_saliency(net, "2", inputs, w, projection=torch.from_numpy(dense))
    np.testing.assert_allclose(as_tensor.gradients, result.gradients, rtol=1e-5, atol=1e-7)

    assert stored_projection(None) is None
    assert stored_projection({**stored.reductions["2"], "applied": False}) is None
    with pytest.raises(ValueError, match="pca"):
        stored_projection({"method": "pca", "n_components": 3, "seed": 0, "n_units_in": 512, "applied": True})
    with pytest.raises(ValueError, match="expected"):
        linear_readout_saliency(net, "2", inputs, w, projection=dense[:, :100])


# ---------------------------------------------------------------------------------------
# Images: network inputs and what the network saw
# ---------------------------------------------------------------------------------------


def test_saliency_images_are_the_extraction_inputs_and_their_picture(alexnet: LoadedModel,
                                                                     image_files: list[Path]) -> None:
    from bids_dnn.io.stimulus_loading import load_image

    loaded = load_saliency_images(image_files, alexnet)
    assert isinstance(loaded, SaliencyImages)
    inputs, display = loaded
    expected = torch.stack([alexnet.transform(load_image(p)) for p in image_files])
    torch.testing.assert_close(inputs, expected, rtol=0, atol=0)
    assert display.shape == (3, 224, 224, 3) and display.dtype == np.float32
    assert display.min() >= 0 and display.max() <= 1
    mean = np.asarray(alexnet.transform.mean, dtype=np.float32)
    std = np.asarray(alexnet.transform.std, dtype=np.float32)
    np.testing.assert_allclose((display - mean) / std, inputs.permute(0, 2, 3, 1).numpy(), atol=1e-5)
    # the picture holds the resized image's 8-bit values, scaled to [0, 1]
    np.testing.assert_allclose(display * 255, np.round(display * 255), atol=1e-3)

    # another transform: the normalisation of model.preprocessing is inverted
    other = LoadedModel(alexnet.module, lambda im: alexnet.transform(im), alexnet.preprocessing, "x", "custom",
                        "random", None)
    _, inverted = load_saliency_images(image_files, other)
    np.testing.assert_allclose(inverted, display, atol=1e-5)

    with pytest.raises(ValueError, match="not videos"):
        load_saliency_images([image_files[0], Path("clip.mp4")], alexnet)
    bare = LoadedModel(alexnet.module, lambda im: alexnet.transform(im), {}, "x", "custom", "random", None)
    with pytest.raises(ValueError, match="mean / std"):
        load_saliency_images(image_files, bare)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_the_module_returns(alexnet: LoadedModel) -> None:
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(18))
    weights, _ = _quadrant_weights("features.3", "top_left", 19)
    options = dict(method="smoothgrad", n_samples=2, seed=5)
    cpu = linear_readout_saliency(alexnet.module, "features.3", images, weights, **options)
    cuda = linear_readout_saliency(alexnet.module, "features.3", images, weights, device="cuda", **options)
    assert next(alexnet.module.parameters()).device.type == "cpu"
    # the same noise (drawn on the CPU); cuDNN convolutions may run in TF32
    np.testing.assert_allclose(cuda.maps, cpu.maps, rtol=0, atol=2e-2 * cpu.maps.max())
    np.testing.assert_allclose(cuda.predictions, cpu.predictions, rtol=2e-2,
                               atol=2e-2 * np.abs(cpu.predictions).max())
