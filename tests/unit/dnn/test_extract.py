"""Hook-based extraction equals plain forward passes of the same seeded networks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from bids_dnn.errors import AnalysisError
from bids_dnn.backend import resolve_device
from bids_dnn.dnn.extract import extract_features
from bids_dnn.dnn.layers import resolve_layers
from bids_dnn.dnn.models import LoadedModel, load_model
from bids_dnn.spec import ModelSpec, TransformSpec

ATOL = 1e-4


def _images(rng: np.random.Generator, sizes: list[tuple[int, int]]) -> list[Image.Image]:
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Four seeded noise images of different sizes and aspect ratios (64-224 px)."""
    return _images(np.random.default_rng(7), [(64, 80), (224, 150), (120, 96), (90, 90)])


class _Collector:
    """on_batch / progress callbacks that keep everything they receive."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.batches: list[dict[str, np.ndarray]] = []
        self.done: list[int] = []

    def on_batch(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        self.starts.append(start)
        self.batches.append(arrays)

    def progress(self, n_new: int) -> None:
        self.done.append(n_new)

    def features(self) -> dict[str, np.ndarray]:
        return {name: np.concatenate([b[name] for b in self.batches]) for name in self.batches[0]}


def _extract(loaded: LoadedModel, images: list[Any], layers: list[str], **kwargs: Any) -> tuple[dict, dict]:
    collector = _Collector()
    shapes = extract_features(loaded, images, layers, on_batch=collector.on_batch, **kwargs)
    return collector.features(), shapes


def _batch(loaded: LoadedModel, images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([loaded.transform(image) for image in images])


def _rows(tensor: torch.Tensor) -> np.ndarray:
    return tensor.reshape(tensor.shape[0], -1).numpy()


@pytest.fixture(scope="module")
def alexnet() -> LoadedModel:
    return load_model(ModelSpec(name="alexnet", weights="random", init_seed=0))


@pytest.fixture(scope="module")
def resnet18() -> LoadedModel:
    return load_model(ModelSpec(name="resnet18", weights="random", init_seed=0))


def test_alexnet_layers_equal_plain_forward(alexnet: LoadedModel, images: list[Image.Image]) -> None:
    layers = ["features.0"] + resolve_layers(alexnet.module, "top_level")  # conv before in-place ReLU
    collector = _Collector()
    shapes = extract_features(alexnet, images, layers, batch_size=3, on_batch=collector.on_batch,
                              progress=collector.progress)
    assert collector.starts == [0, 3] and collector.done == [3, 1]  # increments
    assert [len(b["features.1"]) for b in collector.batches] == [3, 1]
    got = collector.features()
    net, x = alexnet.module, _batch(alexnet, images)
    with torch.inference_mode():
        expected = {
            "features.0": net.features[:1](x),  # pre-ReLU: negatives survive the in-place ReLU
            "features.1": net.features[:2](x),
            "features.4": net.features[:5](x),
            "features.11": net.features[:12](x),
            "classifier.2": net.classifier[:3](torch.flatten(net.avgpool(net.features(x)), 1)),
            "classifier.6": net(x),
        }
    for name, tensor in expected.items():
        assert got[name].dtype == np.float32 and got[name].shape == (4, tensor[0].numel())
        np.testing.assert_allclose(got[name], _rows(tensor), atol=ATOL, err_msg=name)
    assert got["features.0"].min() < 0 <= got["features.1"].min()
    assert shapes["features.1"] == (64, 55, 55) and shapes["classifier.6"] == (1000,)
    assert list(shapes) == layers


def test_resnet18_layers_equal_plain_forward(resnet18: LoadedModel, images: list[Image.Image]) -> None:
    layers = ["layer1", "layer1.0.relu", "layer4", "avgpool", "fc"]
    got, shapes = _extract(resnet18, images, layers, batch_size=2)
    net, x = resnet18.module, _batch(resnet18, images)
    with torch.inference_mode():
        stem = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        layer1 = net.layer1(stem)
        block = net.layer1[0]  # its ReLU runs twice; the last call is the block output
        layer4 = net.layer4(net.layer3(net.layer2(layer1)))
        expected = {"layer1": layer1, "layer1.0.relu": block(stem), "layer4": layer4,
                    "avgpool": net.avgpool(layer4), "fc": net(x)}
    for name, tensor in expected.items():
        np.testing.assert_allclose(got[name], _rows(tensor), atol=ATOL, err_msg=name)
    assert shapes == {"layer1": (64, 56, 56), "layer1.0.relu": (64, 56, 56), "layer4": (512, 7, 7),
                      "avgpool": (512, 1, 1), "fc": (1000,)}


def test_channels_last_and_early_stop_do_not_change_outputs(resnet18: LoadedModel,
                                                            images: list[Image.Image]) -> None:
    calls = []
    handle = resnet18.module.fc.register_forward_hook(lambda *args: calls.append(1))
    try:
        plain, _ = _extract(resnet18, images, ["layer2"], batch_size=2, stop_early=False)
        n_plain = len(calls)
        fast, _ = _extract(resnet18, images, ["layer2"], batch_size=2, channels_last=True)
    finally:
        handle.remove()
    assert n_plain == 2 and len(calls) - n_plain == 1  # the 2nd batch stopped after layer2
    np.testing.assert_allclose(fast["layer2"], plain["layer2"], atol=ATOL)
    assert resnet18.module.conv1.weight.is_contiguous()  # memory format restored


def test_stimuli_load_lazily_batch_by_batch(resnet18: LoadedModel, images: list[Image.Image]) -> None:
    events: list[str] = []

    def loader(i: int) -> Any:
        return lambda: events.append(f"load {i}") or images[i]

    extract_features(resnet18, [loader(i) for i in range(4)], ["avgpool"], batch_size=2,
                     on_batch=lambda start, arrays: events.append(f"batch {start}"))
    assert events == ["load 0", "load 1", "batch 0", "load 2", "load 3", "batch 2"]


def test_frames_of_a_stimulus_are_averaged(resnet18: LoadedModel, images: list[Image.Image]) -> None:
    single, _ = _extract(resnet18, images[:3], ["avgpool"], batch_size=3)
    clips, _ = _extract(resnet18, [[images[0], images[1]], images[2]], ["avgpool"], batch_size=2)
    np.testing.assert_allclose(clips["avgpool"][0], single["avgpool"][:2].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(clips["avgpool"][1], single["avgpool"][2], atol=1e-5)


def test_video_model_gets_clips(rng: np.random.Generator) -> None:
    loaded = load_model(ModelSpec(name="r3d_18", weights="random", transform=TransformSpec(resize=64, crop=56)))
    frames = _images(rng, [(80, 60)] * 3)
    got, shapes = _extract(loaded, [frames, frames], ["layer1", "fc"], batch_size=2)
    clip = torch.stack([loaded.transform(f) for f in frames], dim=1)[None]  # (1, 3, T, H, W)
    with torch.inference_mode():
        expected = {"fc": loaded.module(clip), "layer1": loaded.module.layer1(loaded.module.stem(clip))}
    for name, tensor in expected.items():
        np.testing.assert_allclose(got[name], np.repeat(_rows(tensor), 2, axis=0), atol=ATOL)
    assert shapes["layer1"] == (64, 3, 28, 28) and got["fc"].shape == (2, 400)
    mixed, _ = _extract(loaded, [frames, frames[:2]], ["fc"], batch_size=2)  # pooled over time
    np.testing.assert_allclose(mixed["fc"][0], got["fc"][0], atol=ATOL)
    with pytest.raises(AnalysisError, match="different numbers of frames"):
        _extract(loaded, [frames, frames[:2]], ["layer1"], batch_size=2)


class _Odd(torch.nn.Module):
    """A tuple-returning block and a submodule that forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = torch.nn.GRU(4, 5, batch_first=True)
        self.unused = torch.nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.mean(dim=1).reshape(x.shape[0], -1, 4)  # (batch, tokens, 4)
        return self.gru(tokens)[0]


def test_tuple_outputs_unused_and_unknown_layers(images: list[Image.Image]) -> None:
    module = _Odd().eval()
    loaded = LoadedModel(module, lambda im: torch.ones(3, 8, 8), {}, "odd", "custom", "random", None)
    got, shapes = _extract(loaded, images[:2], ["gru"], token_policy="all")
    with torch.inference_mode():
        expected = module(torch.ones(2, 3, 8, 8))
    np.testing.assert_allclose(got["gru"], _rows(expected), atol=1e-6)
    assert shapes["gru"] == (16, 5)
    with pytest.raises(AnalysisError, match="unused produced no output"):
        _extract(loaded, images[:2], ["gru", "unused"])
    with pytest.raises(AnalysisError, match="not layers of the model: 'nope'"):
        _extract(loaded, images[:2], ["nope"])
    with pytest.raises(AnalysisError, match="token policy"):
        _extract(loaded, images[:2], ["gru"], token_policy="first")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit deprecation
def test_torchscript_output_layer(tmp_path: Path, images: list[Image.Image]) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, stride=4), torch.nn.Flatten()).eval()
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 224, 224)), str(path))
    loaded = load_model(ModelSpec(name="net", source="torchscript", torchscript=str(path)))
    got, _ = _extract(loaded, images[:2], ["output"])
    with torch.inference_mode():
        expected = net(_batch(loaded, images[:2]))
    np.testing.assert_allclose(got["output"], expected.numpy(), atol=1e-5)
    with pytest.raises(AnalysisError, match="cannot be hooked"):
        _extract(loaded, images[:2], ["scripted.0"])


def test_vit_token_layout_and_policies(images: list[Image.Image]) -> None:
    """torchvision ViT: batch first, class token at index 0, heads take encoder.ln[:, 0]."""
    loaded = load_model(ModelSpec(name="vit_b_16", weights="random", init_seed=0))
    net, pair = loaded.module, images[:2]
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        net.encoder.register_forward_pre_hook(lambda m, args: seen.__setitem__("encoder_in", args[0].clone())),
        net.heads.register_forward_pre_hook(lambda m, args: seen.__setitem__("heads_in", args[0].clone())),
    ]
    try:
        every, shapes = _extract(loaded, pair, ["encoder.layers.encoder_layer_0", "encoder.ln", "heads.head"],
                                 batch_size=2, token_policy="all")
    finally:
        for hook in hooks:
            hook.remove()
    n_tokens, dim = 1 + (224 // 16) ** 2, net.hidden_dim
    assert shapes["encoder.ln"] == shapes["encoder.layers.encoder_layer_0"] == (n_tokens, dim) == (197, 768)
    assert every["encoder.ln"].shape == (2, n_tokens * dim)
    tokens = every["encoder.ln"].reshape(2, n_tokens, dim)  # token-major flattening
    # the class token is prepended (index 0) before the position embedding is added
    assert torch.equal(seen["encoder_in"][:, 0], net.class_token[0, 0].expand(2, dim))
    np.testing.assert_allclose(tokens[:, 0], seen["heads_in"].numpy(), atol=1e-5)
    with torch.inference_mode():
        np.testing.assert_allclose(every["heads.head"], net(_batch(loaded, pair)).numpy(), atol=ATOL)

    cls, _ = _extract(loaded, pair, ["encoder.ln"], batch_size=2, token_policy="cls")
    mean, _ = _extract(loaded, pair, ["encoder.ln"], batch_size=1, token_policy="mean")
    np.testing.assert_allclose(cls["encoder.ln"], tokens[:, 0], atol=1e-5)
    np.testing.assert_allclose(mean["encoder.ln"], tokens.mean(axis=1), atol=1e-5)
    assert cls["encoder.ln"].shape == mean["encoder.ln"].shape == (2, dim)


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") in ("cpu", "mps")
    with pytest.raises(AnalysisError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(AnalysisError, match="unknown device"):
        resolve_device("gpu0")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_channels_last_matches_cpu(resnet18: LoadedModel, images: list[Image.Image]) -> None:
    cpu, _ = _extract(resnet18, images, ["layer3", "fc"], batch_size=2, device="cpu")
    gpu, _ = _extract(resnet18, images, ["layer3", "fc"], batch_size=2, device="cuda")
    resnet18.module.to("cpu")
    for name in cpu:
        np.testing.assert_allclose(gpu[name], cpu[name], atol=1e-2, rtol=1e-2)


class _InPlace(torch.nn.Module):
    """Outputs changed in place later in the pass: by a module, a functional op and ``+=``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.relu = torch.nn.ReLU(inplace=True)
        self.lin = torch.nn.Linear(4 * 6 * 6, 5)
        self.lin2 = torch.nn.Linear(5, 5)
        self.keep = torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv(x))            # conv output is clipped in place
        h = self.lin(y.flatten(1))
        k = self.keep(h)                       # Identity returns h itself ...
        torch.nn.functional.relu(h, inplace=True)  # ... which is then changed in place
        out = self.lin2(k)
        out += 1.0                             # lin2 output changed by +=
        return out


def test_outputs_changed_in_place_later_are_copied(rng: np.random.Generator) -> None:
    """Only layers whose output is untouched afterwards skip the copy; values stay exact."""
    torch.manual_seed(0)
    module = _InPlace().eval()
    inputs = [torch.from_numpy(rng.normal(size=(3, 8, 8)).astype(np.float32)) for _ in range(7)]
    loaded = LoadedModel(module, lambda t: t, {}, "inplace", "custom", "random", None)
    layers = ["conv", "relu", "lin", "keep", "lin2"]
    collector = _Collector()
    stimuli = [(lambda t=t: t) for t in inputs]
    import bids_dnn.dnn.extract as E

    original = E._as_frames
    try:  # tensors as stimuli: bypass the PIL loader
        E._as_frames = lambda item: [item()]
        extract_features(loaded, stimuli, layers, batch_size=2, on_batch=collector.on_batch)
    finally:
        E._as_frames = original
    got = collector.features()
    # batches of 2 vs 7 at once: float rounding only; in-place damage would be >= 1e-2
    _close = lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)  # noqa: E731
    with torch.no_grad():
        x = torch.stack(inputs)
        conv = module.conv(x)
        lin = module.lin(torch.relu(conv).flatten(1))
        lin2 = module.lin2(torch.relu(lin))
    _close(got["conv"], _rows(conv))          # negatives survive
    assert (got["conv"] < 0).any()
    _close(got["relu"], _rows(torch.relu(conv)))
    _close(got["lin"], _rows(lin))
    _close(got["keep"], _rows(lin))
    assert (got["lin"] < 0).any()
    _close(got["lin2"], _rows(lin2))          # before the += 1


def test_tune_allocator_runs_once_and_respects_user_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """glibc's thresholds are set once per process, never over the user's MALLOC_* variables."""
    import platform

    from bids_dnn.dnn import extract

    monkeypatch.setattr(extract, "_ALLOCATOR_TUNED", [])
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1000000")
    assert extract.tune_allocator() is False and extract._ALLOCATOR_TUNED == []
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    applied = extract.tune_allocator()
    assert applied is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert extract.tune_allocator() is False  # once per process
