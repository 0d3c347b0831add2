"""Model loading (offline only), preprocessing and layer selection."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import get_model
from torchvision.transforms._presets import ImageClassification

from bids_dnn.dnn import models as M
from bids_dnn.dnn.layers import list_layer_names, resolve_layers
from bids_dnn.dnn.transforms import ImageTransform
from bids_dnn.dnn.weights import state_dict_sha256
from bids_dnn.errors import AnalysisError, InputMissingError, SpecError
from bids_dnn.spec import ModelSpec, TransformSpec

ALEXNET_TOP = ["features.1", "features.4", "features.7", "features.9", "features.11",
               "classifier.2", "classifier.5", "classifier.6"]


def _meta(name: str) -> torch.nn.Module:
    """Architecture only (no memory, instant): enough for layer names."""
    kwargs = {"init_weights": False} if name == "googlenet" else {}
    with torch.device("meta"):
        return get_model(name, weights=None, **kwargs)


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME, and any download attempt fails the test."""
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_model tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return home


# --- random initialisation -------------------------------------------------------------


def test_same_seed_gives_identical_weights_and_other_seed_differs() -> None:
    first = M.load_model(ModelSpec(name="resnet18", weights="random", init_seed=3))
    second = M.load_model(ModelSpec(name="resnet18", weights="random", init_seed=3))
    other = M.load_model(ModelSpec(name="resnet18", weights="random", init_seed=4))
    for (name, a), b in zip(first.module.state_dict().items(), second.module.state_dict().values()):
        assert torch.equal(a, b), name
    assert first.weights_sha256 == second.weights_sha256 == state_dict_sha256(second.module)
    assert other.weights_sha256 != first.weights_sha256
    assert not torch.equal(first.module.conv1.weight, other.module.conv1.weight)
    assert first.weights_name == "random" and first.init_seed == 3 and first.source == "torchvision"
    assert not first.module.training
    assert not any(p.requires_grad for p in first.module.parameters())
    assert first.identity()["weights_sha256"] == first.weights_sha256


def test_random_weights_use_the_default_weights_preprocessing() -> None:
    loaded = M.load_model(ModelSpec(name="resnet50", weights="random"))
    prep = loaded.preprocessing  # ResNet50_Weights.IMAGENET1K_V2: resize 232, crop 224
    assert (prep["resize_shorter_side"], prep["center_crop"]) == (232, 224)
    assert prep["origin"] == "weights:IMAGENET1K_V2" and prep["interpolation"] == "bilinear"


def test_random_vit_gets_preprocessing_that_fits_its_input_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.models as tvm

    stand_in = torch.nn.Linear(2, 2)  # vit_h_14 itself is 632 M parameters
    stand_in.image_size = 224  # what get_model("vit_h_14", weights=None) builds
    monkeypatch.setattr(tvm, "get_model", lambda name, weights=None: stand_in)
    loaded = M.load_model(ModelSpec(name="vit_h_14", weights="random"))
    assert loaded.preprocessing["center_crop"] == 224  # DEFAULT (SWAG E2E) would be 518
    assert loaded.preprocessing["origin"] == "weights:IMAGENET1K_SWAG_LINEAR_V1"


def test_video_models_are_flagged() -> None:
    loaded = M.load_model(ModelSpec(name="r3d_18", weights="random"))
    assert loaded.task == "video"
    assert (loaded.preprocessing["resize_shorter_side"], loaded.preprocessing["center_crop"]) == (128, 112)


# --- names and errors ------------------------------------------------------------------


def test_unknown_model_name_suggests_close_names() -> None:
    with pytest.raises(SpecError) as info:
        M.load_model(ModelSpec(name="resnet5O", weights="random"), field_path="models[2]")
    assert info.value.exit_code == 65
    (problem,) = info.value.problems
    assert problem.startswith("models[2].name: 'resnet5O' is not a torchvision model; did you mean")
    assert "resnet50" in problem


def test_detection_models_are_refused() -> None:
    with pytest.raises(SpecError, match="only classification and video models"):
        M.load_model(ModelSpec(name="fasterrcnn_resnet50_fpn", weights="random"))


def test_unknown_weights_name(empty_torch_home: Path) -> None:
    with pytest.raises(SpecError) as info:
        M.load_model(ModelSpec(name="alexnet", weights="IMAGENET1K_V9"))
    assert info.value.problems == ["models[0].weights: 'IMAGENET1K_V9' are not weights of alexnet; "
                                   "did you mean IMAGENET1K_V1?"]


def test_missing_optional_packages_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for module, extra, source in (("timm", "timm", "timm"), ("open_clip", "clip", "open_clip")):
        monkeypatch.setitem(sys.modules, module, None)  # import fails even if installed
        with pytest.raises(AnalysisError, match=rf"pip install bids_dnn\[{extra}\]"):
            M.load_model(ModelSpec(name="vit_base_patch16_224", source=source, weights="random"))


# --- offline weights -------------------------------------------------------------------


def test_missing_weights_never_download(empty_torch_home: Path) -> None:
    with pytest.raises(InputMissingError) as info:
        M.load_model(ModelSpec(name="alexnet"))
    error = info.value
    assert error.exit_code == 66
    assert "weights IMAGENET1K_V1 of alexnet are not in the local cache" in str(error)
    assert f"TORCH_HOME={empty_torch_home}" in str(error)
    assert "bids_dnn models fetch alexnet" in str(error) and "weights: random" in str(error)


def test_cached_checkpoint_loads_with_weights_only(empty_torch_home: Path) -> None:
    torch.manual_seed(11)
    reference = get_model("resnet18", weights=None)
    folder = empty_torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    path = folder / "resnet18-f37072fd.pth"  # basename of ResNet18_Weights.IMAGENET1K_V1.url
    torch.save(reference.state_dict(), path)
    expected_sha = hashlib.sha256(path.read_bytes()).hexdigest()

    for weights in ("DEFAULT", "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"):
        loaded = M.load_model(ModelSpec(name="resnet18", weights=weights))
        assert loaded.weights_name == "IMAGENET1K_V1"
        assert loaded.weights_sha256 == expected_sha and loaded.init_seed is None
        for (name, a), b in zip(reference.state_dict().items(), loaded.module.state_dict().values()):
            assert torch.equal(a, b), name
    assert loaded.preprocessing["origin"] == "weights:IMAGENET1K_V1"
    catalog = {row["name"]: row for row in M.model_catalog()}
    assert catalog["resnet18"]["cached"] and not catalog["alexnet"]["cached"]
    assert catalog["alexnet"]["default_weights"] == "IMAGENET1K_V1"
    assert catalog["r3d_18"]["task"] == "video" and "fasterrcnn_resnet50_fpn" not in catalog


class _NotATensor:
    """Pickled by reference: weights_only=True must refuse it."""


def test_checkpoint_with_arbitrary_objects_is_refused(empty_torch_home: Path) -> None:
    folder = empty_torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"payload": _NotATensor()}, folder / "resnet18-f37072fd.pth")
    with pytest.raises(InputMissingError, match="cannot be loaded safely"):
        M.load_model(ModelSpec(name="resnet18", weights="IMAGENET1K_V1"))


def test_checkpoint_of_another_architecture_is_an_analysis_error(empty_torch_home: Path) -> None:
    folder = empty_torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"weight": torch.zeros(3)}, folder / "resnet18-f37072fd.pth")
    with pytest.raises(AnalysisError, match="does not fit resnet18"):
        M.load_model(ModelSpec(name="resnet18", weights="IMAGENET1K_V1"))


def test_fetch_weights_uses_torch_hub_safely(empty_torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda url, **kwargs: calls.append((url, kwargs)) or {})
    paths = M.fetch_weights(["alexnet"])
    assert calls[0][0].endswith("alexnet-owt-7be5be79.pth")
    assert calls[0][1]["weights_only"] is True and calls[0][1]["check_hash"] is True
    assert paths == [empty_torch_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"]


# --- other sources ---------------------------------------------------------------------


def test_custom_entry_point_is_seeded(tmp_path: Path) -> None:
    (tmp_path / "tiny_net_mod.py").write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),\n"
        "                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))\n"
    )
    spec = ModelSpec(name="tiny", source="custom", entry_point=f"{tmp_path / 'tiny_net_mod.py'}:build",
                     weights="random", init_seed=5)
    first, second = M.load_model(spec), M.load_model(spec)
    assert first.weights_sha256 == second.weights_sha256 and first.source == "custom"
    assert resolve_layers(first.module, "top_level") == ["1", "4"]
    assert "tiny_net_mod" not in sys.modules  # executed from its file, not imported by name
    bad = ModelSpec(name="x", source="custom", entry_point=f"{tmp_path / 'no_such_file.py'}:build")
    with pytest.raises(InputMissingError, match=r"models\[0\].entry_point: file not found"):
        M.load_model(bad)


def test_custom_code_calling_sys_exit_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "quitter.py").write_text("import sys\ndef build():\n    sys.exit(0)\n")
    spec = ModelSpec(name="q", source="custom", entry_point=f"{tmp_path / 'quitter.py'}:build")
    with pytest.raises(AnalysisError, match=r"quitter.py called sys.exit\(0\)"):
        M.load_model(spec)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit deprecation
def test_torchscript_exposes_its_output(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten())
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 8, 8)), str(path))
    loaded = M.load_model(ModelSpec(name="net", source="torchscript", torchscript=str(path)))
    assert list_layer_names(loaded.module) == ["output"]
    assert resolve_layers(loaded.module, "top_level") == ["output"]
    assert loaded.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(InputMissingError, match="file not found"):
        M.load_model(ModelSpec(name="net", source="torchscript", torchscript=str(tmp_path / "no.pt")))


# --- preprocessing ---------------------------------------------------------------------


def test_transform_preserves_aspect_and_crops_the_centre() -> None:
    pixels = np.zeros((50, 150, 3), dtype=np.uint8)  # h=50, w=150: left / centre / right thirds
    pixels[:, :50] = (255, 0, 0)
    pixels[:, 50:100] = (0, 255, 0)
    pixels[:, 100:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    transform = ImageTransform(resize=64, crop=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    out = transform(image)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert torch.allclose(out[:, 10:54, 10:54].mean(dim=(1, 2)), torch.tensor([0.0, 1.0, 0.0]), atol=1e-3)
    reference = ImageClassification(crop_size=64, resize_size=64, mean=(0, 0, 0), std=(1, 1, 1))(image)
    assert torch.allclose(out, reference, atol=1e-6)  # same as torchvision's own preset
    grey = transform(Image.fromarray(pixels[:, :, 1]))  # mode "L" -> RGB
    assert grey.shape == (3, 64, 64) and torch.equal(grey[0], grey[1])


def test_spec_transform_overrides_weights_transform() -> None:
    spec = ModelSpec(name="alexnet", weights="random",
                     transform=TransformSpec(resize=80, crop=72, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    loaded = M.load_model(spec)
    assert loaded.preprocessing["origin"] == "spec" and loaded.preprocessing["center_crop"] == 72
    white = loaded.transform(Image.new("RGB", (100, 90), (255, 255, 255)))
    assert white.shape == (3, 72, 72) and torch.allclose(white, torch.ones_like(white))


# --- layers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("alexnet", ALEXNET_TOP),
        ("vgg16", ["features.3", "features.8", "features.15", "features.22", "features.29",
                   "classifier.1", "classifier.4", "classifier.6"]),
        ("resnet18", ["layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]),
        ("vit_b_16", [f"encoder.layers.encoder_layer_{i}" for i in range(12)] + ["heads.head"]),
        ("googlenet", ["conv1", "conv2", "conv3", "inception3a", "inception3b", "inception4a",
                       "inception4b", "inception4c", "inception4d", "inception4e", "inception5a",
                       "inception5b", "avgpool", "fc"]),
    ],
)
def test_top_level_preset(name: str, expected: list[str]) -> None:
    assert resolve_layers(_meta(name), "top_level") == expected


def test_type_presets_on_alexnet() -> None:
    net = _meta("alexnet")
    assert resolve_layers(net, "all_conv") == ["features.0", "features.3", "features.6", "features.8",
                                                 "features.10"]
    assert resolve_layers(net, "all_linear") == ["classifier.1", "classifier.4", "classifier.6"]
    assert resolve_layers(net, "all_relu") == ["features.1", "features.4", "features.7", "features.9",
                                                 "features.11", "classifier.2", "classifier.5"]
    leaves = resolve_layers(net, "leaves")
    assert len(leaves) == 21 and "features" not in leaves and leaves[0] == "features.0"


def test_layers_never_called_are_not_offered() -> None:
    vit = _meta("vit_b_16")
    linear = resolve_layers(vit, "all_linear")
    assert linear[-1] == "heads.head" and not any("out_proj" in n for n in linear)
    assert not any("aux" in n for n in list_layer_names(_meta("googlenet")))
    with pytest.raises(SpecError, match="preset 'all_relu' selects no layer of vit"):
        resolve_layers(vit, "all_relu", model_name="vit_b_16")


def test_globs_exact_names_order_and_duplicates() -> None:
    net = _meta("resnet18")
    assert resolve_layers(net, "layer*.relu") == [f"layer{i}.{j}.relu" for i in (1, 2, 3, 4) for j in (0, 1)]
    assert resolve_layers(net, ["fc", "layer2", "layer2", "layer?"]) == ["layer1", "layer2", "layer3",
                                                                          "layer4", "fc"]
    assert resolve_layers(net, "conv1") == ["conv1"]
    names = list_layer_names(net)
    assert "" not in names and names[:4] == ["conv1", "bn1", "relu", "maxpool"]


def test_unknown_layers_name_the_field_and_closest_layers() -> None:
    with pytest.raises(SpecError) as info:
        resolve_layers(_meta("resnet50"), ["layer9", "fc", "blocks.*"], model_name="resnet50")
    assert info.value.problems == [
        "models[0].layers: 'layer9' is not a layer of resnet50; closest: layer4, layer3, layer2",
        "models[0].layers: 'blocks.*' matches no layer of resnet50",
    ]
    assert info.value.exit_code == 65


def test_timm_loader_reads_the_hub_cache_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in for timm: pretrained weights are requested with HF_HUB_OFFLINE=1."""
    import types

    seen: list[tuple[str, bool, str | None]] = []

    def create_model(name: str, pretrained: bool = False) -> torch.nn.Module:
        seen.append((name, pretrained, __import__("os").environ.get("HF_HUB_OFFLINE")))
        if pretrained:
            raise OSError("not in the cache and offline")
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten())

    config = {"input_size": (3, 160, 160), "crop_pct": 0.8, "mean": (0.5,) * 3, "std": (0.25,) * 3,
              "interpolation": "bicubic"}
    fake = types.SimpleNamespace(list_models=lambda: ["tiny_vit"], create_model=create_model,
                                 data=types.SimpleNamespace(resolve_data_config=lambda *a, **k: config))
    monkeypatch.setitem(sys.modules, "timm", fake)
    loaded = M.load_model(ModelSpec(name="tiny_vit", source="timm", weights="random", init_seed=2))
    assert (loaded.preprocessing["resize_shorter_side"], loaded.preprocessing["center_crop"]) == (200, 160)
    assert loaded.preprocessing["interpolation"] == "bicubic" and loaded.init_seed == 2
    with pytest.raises(InputMissingError, match="not in the local cache") as info:
        M.load_model(ModelSpec(name="tiny_vit", source="timm", weights="augreg_in21k"))
    assert info.value.exit_code == 66 and "weights: random" in str(info.value)
    assert seen[-1] == ("tiny_vit.augreg_in21k", True, "1")
    with pytest.raises(SpecError, match="did you mean tiny_vit"):
        M.load_model(ModelSpec(name="tiny_vitt", source="timm", weights="random"))
