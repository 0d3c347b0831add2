"""``source: huggingface``: offline loading, task detection, seeded random weights, layer names, fetching.

Every model is a tiny random network built locally (:mod:`tests.unit.dnn._hf_models`) and saved
into a temporary folder; nothing is downloaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from bids_dnn.dnn import models as M  # noqa: E402
from bids_dnn.dnn.hf_extract import extract_hf_features  # noqa: E402
from bids_dnn.dnn.huggingface import (EMBEDS_LAYER, hf_layer_names, hf_layer_tower, hf_towers,  # noqa: E402
                                      resolve_hf_layers, vision_prefix_tokens)
from bids_dnn.dnn.weights import state_dict_sha256  # noqa: E402
from bids_dnn.errors import EXIT_INPUT_MISSING, AnalysisError, InputMissingError, SpecError, UsageError  # noqa: E402
from bids_dnn.spec import ModelSpec  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import _hf_models as H  # noqa: E402


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_models")
    return {"bert": H.build_bert(root / "bert"), "gpt2": H.build_gpt2(root / "gpt2"),
            "wav2vec2": H.build_wav2vec2(root / "wav2vec2"), "vit": H.build_vit(root / "vit"),
            "clip": H.build_clip(root / "clip")}


def _load(folder: Path, **kwargs: object) -> M.LoadedModel:
    return M.load_model(ModelSpec(name=str(folder), source="huggingface", **kwargs))


def _features(loaded: M.LoadedModel, items: list, layers: list[str], **kwargs: object) -> dict[str, np.ndarray]:
    got: dict[str, list[np.ndarray]] = {}
    extract_hf_features(loaded, items, layers, on_batch=lambda s, a: [got.setdefault(k, []).append(v)
                                                                        for k, v in a.items()], **kwargs)
    return {k: np.concatenate(v) for k, v in got.items()}


# --- loading and task detection ---------------------------------------------------------


@pytest.mark.parametrize("kind, task, model_kind, prep", [
    ("bert", "text", "encoder", "tokenizer"),
    ("gpt2", "text", "decoder", "tokenizer"),
    ("wav2vec2", "audio", "encoder", "processor"),
    ("vit", "image", "encoder", "processor"),
    ("clip", "text_image", "decoder", "tokenizer"),
])
def test_loading_detects_task_kind_and_preprocessor(folders: dict[str, Path], kind: str, task: str,
                                                    model_kind: str, prep: str) -> None:
    loaded = _load(folders[kind])
    assert (loaded.task, loaded.model_kind, loaded.source) == (task, model_kind, "huggingface")
    assert getattr(loaded, prep) is not None
    assert loaded.weights_name == "DEFAULT" and loaded.init_seed is None
    assert loaded.weights_sha256 == state_dict_sha256(loaded.module)
    assert not loaded.module.training and not any(p.requires_grad for p in loaded.module.parameters())
    assert loaded.sample_rate == (16000 if task == "audio" else None)
    assert loaded.preprocessing["origin"] == "huggingface" and len(loaded.preprocessing["config_sha256"]) == 64
    # identity() keeps the keys of the other sources (feature keys of existing models unchanged)
    assert set(loaded.identity()) == {"name", "source", "weights_name", "weights_sha256", "init_seed", "task",
                                      "preprocessing"}
    if task == "text_image":
        assert loaded.tokenizer is not None and loaded.processor is not None


def test_stored_weights_are_the_saved_ones(folders: dict[str, Path]) -> None:
    from transformers import BertModel

    loaded = _load(folders["bert"])
    reference = BertModel.from_pretrained(folders["bert"])
    for (name, a), b in zip(loaded.module.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_image_models_expose_the_processor_as_transform(folders: dict[str, Path]) -> None:
    loaded = _load(folders["vit"])
    image = H.noise_image(3).convert("L")  # converted to RGB first
    expected = loaded.processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"][0]
    assert torch.equal(loaded.transform(image), expected) and loaded.transform(image).shape == (3, 32, 32)
    assert _load(folders["bert"]).transform is None and _load(folders["wav2vec2"]).transform is None


def test_decoder_detection_rules(tmp_path: Path) -> None:
    from transformers import BertConfig

    # a BERT config flagged is_decoder is causal; built from its config only (weights: random)
    folder = tmp_path / "bert_decoder"
    BertConfig(vocab_size=160, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
               is_decoder=True).save_pretrained(folder)
    H.wordpiece_tokenizer().save_pretrained(folder)
    assert _load(folder, weights="random").model_kind == "decoder"


def test_encoder_decoder_models_are_refused(tmp_path: Path) -> None:
    from transformers import T5Config

    T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2).save_pretrained(tmp_path)
    with pytest.raises(AnalysisError, match="encoder-decoder"):
        _load(tmp_path, weights="random")


def test_checkpoint_lacking_weights_is_an_error(folders: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "bert_deeper"
    shutil.copytree(folders["bert"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] += 1  # block 3 has no stored weights
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(AnalysisError, match="lacks weights.*encoder.layer.3"):
        _load(folder)


# --- offline -----------------------------------------------------------------------------


def test_uncached_hub_name_names_the_fetch_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_model tried to download")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    name = "bids-dnn-tests/no-such-model-7f3a"
    with pytest.raises(InputMissingError) as info:
        M.load_model(ModelSpec(name=name, source="huggingface"), field_path="models[2]")
    assert info.value.exit_code == EXIT_INPUT_MISSING == 66
    message = info.value.message
    assert message.startswith("models[2].name:") and "is not in the Hugging Face cache" in message
    assert f"`bids_dnn models fetch --source huggingface {name}`" in message


def test_hub_names_load_from_the_cache_only(folders: dict[str, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id and a revision (a ref of the cache) load from a Hugging Face cache laid out by hand; an
    uncached revision names the fetch command with --weights."""
    import shutil

    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--bids-test--tiny-bert"
    shutil.copytree(folders["bert"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    for ref in ("main", "v1"):
        (repo / "refs" / ref).write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    sha = _load(folders["bert"]).weights_sha256
    for weights in ("DEFAULT", "v1"):
        loaded = M.load_model(ModelSpec(name="bids-test/tiny-bert", source="huggingface", weights=weights))
        assert (loaded.task, loaded.weights_name, loaded.weights_sha256) == ("text", weights, sha)
    with pytest.raises(InputMissingError) as info:
        M.load_model(ModelSpec(name="bids-test/tiny-bert", source="huggingface", weights="v2"))
    assert "(revision v2) is not in the Hugging Face cache" in info.value.message
    assert "`bids_dnn models fetch --source huggingface --weights v2 bids-test/tiny-bert`" in info.value.message


def test_missing_local_folder_and_folder_without_model(tmp_path: Path) -> None:
    with pytest.raises(InputMissingError, match="model folder not found"):
        _load(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputMissingError, match="not a Hugging Face model folder"):
        _load(tmp_path / "empty")
    with pytest.raises(SpecError, match="no revisions"):
        _load(tmp_path / "empty", weights="v1.0")


@pytest.mark.parametrize("kind, what", [("bert", "tokenizer"), ("wav2vec2", "feature extractor"),
                                        ("vit", "image processor")])
def test_folder_without_preprocessor(folders: dict[str, Path], tmp_path: Path, kind: str, what: str) -> None:
    import shutil

    for name in ("config.json", "model.safetensors"):  # weights and config, no preprocessor files
        shutil.copy(folders[kind] / name, tmp_path / name)
    with pytest.raises(InputMissingError, match=f"has no {what}"):
        _load(tmp_path)


def test_transformers_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch, folders: dict[str, Path]) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import raises ImportError
    with pytest.raises(AnalysisError) as info:
        _load(folders["bert"])
    assert "transformers" in info.value.message and info.value.hint == "pip install 'bids_dnn[hf]'"


# --- random weights --------------------------------------------------------------------


def test_random_weights_are_seeded_and_reproducible(folders: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "config_only"  # weights: random needs no weights file
    shutil.copytree(folders["bert"], folder)
    (folder / "model.safetensors").unlink()
    first, second = _load(folder, weights="random", init_seed=3), _load(folder, weights="random", init_seed=3)
    other = _load(folder, weights="random", init_seed=4)
    assert first.weights_name == "random" and first.init_seed == 3
    assert first.weights_sha256 == second.weights_sha256 != other.weights_sha256
    for (name, a), b in zip(first.module.state_dict().items(), second.module.state_dict().values()):
        assert torch.equal(a, b), name
    texts = ["The cat sat.", "a dog ran quickly"]
    layers = resolve_hf_layers(first, "all")
    a, b, c = (_features(m, texts, layers, pooling="mean") for m in (first, second, other))
    for layer in layers:
        np.testing.assert_array_equal(a[layer], b[layer])
        assert not np.allclose(a[layer], c[layer])
    stored = _load(folders["bert"])
    assert stored.weights_sha256 != first.weights_sha256


# --- layers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deep_bert(tmp_path_factory: pytest.TempPathFactory) -> M.LoadedModel:
    """12 blocks (13 hidden states), random weights from the config only."""
    from transformers import BertConfig

    folder = tmp_path_factory.mktemp("deep_bert")
    BertConfig(vocab_size=160, hidden_size=8, num_hidden_layers=12, num_attention_heads=2,
               intermediate_size=8).save_pretrained(folder)
    H.wordpiece_tokenizer().save_pretrained(folder)
    return _load(folder, weights="random")


def test_layer_names_presets_and_globs(deep_bert: M.LoadedModel) -> None:
    every = [f"hidden_states.{k}" for k in range(13)]
    assert hf_layer_names(deep_bert) == every
    assert hf_towers(deep_bert) == {"text": ("", 12)}
    assert resolve_hf_layers(deep_bert, "top_level") == every == resolve_hf_layers(deep_bert, "all")
    assert resolve_hf_layers(deep_bert, "last") == ["hidden_states.12"]
    assert resolve_hf_layers(deep_bert, "every_4") == ["hidden_states.4", "hidden_states.8", "hidden_states.12"]
    assert resolve_hf_layers(deep_bert, "every_5") == ["hidden_states.5", "hidden_states.10", "hidden_states.12"]
    assert resolve_hf_layers(deep_bert, "every_1") == every[1:]
    assert resolve_hf_layers(deep_bert, "hidden_states.1*") == ["hidden_states.1", "hidden_states.10",
                                                                "hidden_states.11", "hidden_states.12"]
    # a list: model order, no duplicates
    assert resolve_hf_layers(deep_bert, ["hidden_states.3", "last", "hidden_states.0", "hidden_states.3"]) == [
        "hidden_states.0", "hidden_states.3", "hidden_states.12"]
    assert hf_layer_tower(deep_bert, "hidden_states.7") == ("text", 7)
    with pytest.raises(AnalysisError):
        hf_layer_tower(deep_bert, "hidden_states.13")


def test_unknown_layers_give_one_line_per_problem(deep_bert: M.LoadedModel) -> None:
    with pytest.raises(SpecError) as info:
        resolve_hf_layers(deep_bert, ["hidden_states.13", "all_relu", "encoder.*", "every_0", "hidden_states.2"],
                          field_path="models[1].layers")
    problems = info.value.problems
    assert len(problems) == 4 and all(p.startswith("models[1].layers: ") for p in problems)
    assert "'hidden_states.13' is not a layer" in problems[0] and "closest:" in problems[0]
    assert "'all_relu' is not a layer" in problems[1] and "every_<k>" in problems[1]
    assert "'encoder.*' matches no layer" in problems[2]
    assert "'every_0' is not a layer" in problems[3]


def test_modality_is_checked_against_the_model(folders: dict[str, Path]) -> None:
    loaded = _load(folders["wav2vec2"])
    assert resolve_hf_layers(loaded, "last", modality="audio") == ["hidden_states.2"]
    with pytest.raises(SpecError, match="reads audio, but the stimuli are text"):
        resolve_hf_layers(loaded, "last", modality="text")


def test_text_image_towers_and_presets(folders: dict[str, Path]) -> None:
    loaded = _load(folders["clip"])
    text = [f"text.hidden_states.{k}" for k in range(3)]
    vision = [f"vision.hidden_states.{k}" for k in range(4)]
    assert hf_layer_names(loaded) == text + vision + [EMBEDS_LAYER]
    assert hf_layer_names(loaded, "image") == vision + [EMBEDS_LAYER]
    assert resolve_hf_layers(loaded, "all", modality="text") == text + [EMBEDS_LAYER]
    assert resolve_hf_layers(loaded, "last", modality="image") == ["vision.hidden_states.3"]
    assert resolve_hf_layers(loaded, "every_2", modality="image") == ["vision.hidden_states.2",
                                                                      "vision.hidden_states.3"]
    assert resolve_hf_layers(loaded, "last") == ["text.hidden_states.2", "vision.hidden_states.3"]
    assert resolve_hf_layers(loaded, "*.hidden_states.0", modality="image") == ["vision.hidden_states.0"]
    assert hf_layer_tower(loaded, EMBEDS_LAYER) == (None, None)
    assert hf_layer_tower(loaded, "vision.hidden_states.3") == ("image", 3)
    with pytest.raises(SpecError, match="other tower"):
        resolve_hf_layers(loaded, ["vision.hidden_states.1"], modality="text")
    assert vision_prefix_tokens(loaded.module.vision_model) == 1


# --- fetching (the only code that downloads; the hub is replaced here) --------------------


def test_fetch_downloads_a_snapshot_without_other_frameworks(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    import huggingface_hub

    calls: list[tuple[str, dict]] = []

    def list_repo_files(name: str, revision: str | None = None) -> list[str]:
        return ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5", "tokenizer.json"]

    def snapshot_download(name: str, **kwargs: object) -> str:
        calls.append((name, kwargs))
        return str(tmp_path / name.replace("/", "--"))

    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    paths = M.fetch_weights(["org/model-a", "model-b"], weights="v2", source="huggingface")
    assert paths == [tmp_path / "org--model-a", tmp_path / "model-b"]
    name, kwargs = calls[0]
    assert name == "org/model-a" and kwargs["revision"] == "v2"
    ignored = kwargs["ignore_patterns"]
    assert "*.bin" in ignored and "*.h5" in ignored and "*.json" not in ignored
    M.fetch_weights(["model-c"], source="huggingface")
    assert calls[-1][1]["revision"] is None


def test_fetch_keeps_pickles_without_safetensors_and_reports_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    seen: dict = {}
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda name, revision=None: ["pytorch_model.bin"])
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda name, **kw: seen.update(kw) or "/x")
    M.fetch_weights(["old-model"], source="huggingface")
    assert "*.bin" not in seen["ignore_patterns"]

    def offline(name: str, revision: str | None = None) -> list[str]:
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", offline)
    with pytest.raises(UsageError, match="cannot download old-model"):
        M.fetch_weights(["old-model"], source="huggingface")
    with pytest.raises(UsageError, match="unknown source"):
        M.fetch_weights(["x"], source="nowhere")
