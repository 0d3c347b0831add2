"""``extract_hf_features``: hidden states of one forward pass per batch, pooled over each stimulus's own
positions, against NumPy pooling of the models' own outputs.

References run the ``transformers`` model directly (its own tokenizer call, feature extractor and
image processor, batched with their padding or one stimulus at a time) and pool with NumPy using
masks built here: special tokens from the tokenizer's ``special_tokens_mask``, words from its
``word_ids``, valid audio frames from the convolution arithmetic of the tiny wav2vec2 (kernel 10,
stride 5, then kernel 3, stride 2). Padding invariance is checked at rtol 1e-5 with atol 1e-6 (the
features are O(1); batched matrix products of a different shape round differently).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from bids_dnn.dnn import models as M  # noqa: E402
from bids_dnn.dnn.hf_extract import (AUTO_POOLING, MODALITY_POOLINGS, POOLINGS, extract_hf_features,  # noqa: E402
                                     resolve_pooling, stimulus_modality)
from bids_dnn.dnn.huggingface import resolve_hf_layers  # noqa: E402
from bids_dnn.errors import AnalysisError  # noqa: E402
from bids_dnn.spec import ModelSpec  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import _hf_models as H  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6
TEXTS = ["The cat sat on the mat.", "a", "Unbelievably, the café served 我们 coffee!",
         "Running quickly, she said: it is raining again and again.", "dogs"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, M.LoadedModel]:
    root = tmp_path_factory.mktemp("hf_extract")
    folders = {"bert": H.build_bert(root / "bert"), "gpt2": H.build_gpt2(root / "gpt2"),
               "wav2vec2": H.build_wav2vec2(root / "wav2vec2"),
               "wav2vec2_group": H.build_wav2vec2(root / "wav2vec2_group", feat_extract_norm="group"),
               "vit": H.build_vit(root / "vit"), "clip": H.build_clip(root / "clip")}
    return {k: M.load_model(ModelSpec(name=str(v), source="huggingface")) for k, v in folders.items()}


class _Collector:
    def __init__(self) -> None:
        self.starts: list[int] = []
        self.parts: dict[str, list[np.ndarray]] = {}
        self.done: list[int] = []

    def on_batch(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        self.starts.append(start)
        for k, v in arrays.items():
            assert v.dtype == np.float32 and v.ndim == 2
            self.parts.setdefault(k, []).append(v)

    def result(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.parts.items()}


def _extract(loaded: M.LoadedModel, items: list, layers: list[str], **kwargs: Any) -> dict[str, np.ndarray]:
    collector = _Collector()
    shapes = extract_hf_features(loaded, items, layers, on_batch=collector.on_batch, **kwargs)
    out = collector.result()
    assert list(shapes) == layers and list(out) == layers
    assert all(shapes[k] == (out[k].shape[1],) for k in layers)
    return out


def _np_pool(hidden: np.ndarray, own: np.ndarray, pooling: str, last: int,
             groups: list[list[int]] | None = None) -> np.ndarray:
    """NumPy reference: hidden (positions, dim), own (positions,) bool."""
    if pooling == "mean":
        return hidden[own].mean(axis=0)
    if pooling == "max":
        return hidden[own].max(axis=0)
    if pooling == "first":
        return hidden[0]
    if pooling == "last":
        return hidden[last]
    return np.mean([hidden[g].mean(axis=0) for g in groups], axis=0)


def _word_groups(word_ids: list[int | None], own: np.ndarray) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for position, word in enumerate(word_ids):
        if word is not None and own[position]:
            groups.setdefault(word, []).append(position)
    return list(groups.values())


def _assert_close(ours: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    for layer, expected in reference.items():
        np.testing.assert_allclose(ours[layer], expected, rtol=RTOL, atol=ATOL, err_msg=layer)


# --- text: BERT-like encoder -------------------------------------------------------------


def _bert_reference(loaded: M.LoadedModel, texts: list[str], pooling: str) -> dict[str, np.ndarray]:
    """One padded batch through transformers' own tokenizer call, pooled with NumPy."""
    enc = loaded.tokenizer(texts, padding=True, return_tensors="pt", return_special_tokens_mask=True)
    hidden = loaded.module(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                           token_type_ids=enc["token_type_ids"], output_hidden_states=True).hidden_states
    mask = enc["attention_mask"].numpy().astype(bool)
    own = mask & ~enc["special_tokens_mask"].numpy().astype(bool)
    out = {}
    for k, h in enumerate(hidden):
        rows = [_np_pool(h[b].numpy(), own[b], pooling, int(mask[b].sum()) - 1,
                         _word_groups(enc.word_ids(b), own[b])) for b in range(len(texts))]
        out[f"hidden_states.{k}"] = np.stack(rows)
    return out


@pytest.mark.parametrize("pooling", ["mean", "max", "first", "last", "word"])
def test_bert_every_layer_equals_numpy_pooling_of_the_model_outputs(models: dict, pooling: str) -> None:
    loaded = models["bert"]
    layers = resolve_hf_layers(loaded, "all")
    assert len(layers) == 4
    with torch.inference_mode():
        reference = _bert_reference(loaded, TEXTS, pooling)
    _assert_close(_extract(loaded, TEXTS, layers, pooling=pooling, batch_size=2), reference)


def test_auto_pooling_rules(models: dict) -> None:
    assert resolve_pooling(models["bert"], "auto", "text") == "mean"
    assert resolve_pooling(models["gpt2"], "auto", "text") == "last"
    assert resolve_pooling(models["wav2vec2"], "auto", "audio") == "mean"
    assert resolve_pooling(models["vit"], "auto", "image") == "first"
    assert resolve_pooling(models["clip"], "auto", "text") == "last"  # CLIP's causal text tower: <|endoftext|>
    assert resolve_pooling(models["clip"], "auto", "image") == "first"
    assert set(AUTO_POOLING) == set(MODALITY_POOLINGS) and set(MODALITY_POOLINGS["text"]) == set(POOLINGS)
    layers = ["hidden_states.3"]
    np.testing.assert_array_equal(_extract(models["bert"], TEXTS[:2], layers)["hidden_states.3"],
                                  _extract(models["bert"], TEXTS[:2], layers, pooling="mean")["hidden_states.3"])
    with pytest.raises(AnalysisError, match="does not apply to image"):
        resolve_pooling(models["vit"], "word", "image")
    with pytest.raises(AnalysisError, match="does not apply to audio"):
        resolve_pooling(models["wav2vec2"], "word", "audio")
    with pytest.raises(AnalysisError, match="not audio"):
        resolve_pooling(models["bert"], "mean", "audio")
    with pytest.raises(AnalysisError, match="unknown pooling"):
        resolve_pooling(models["bert"], "median", "text")


# --- text: GPT-2 decoder -------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "max", "first", "last", "word"])
def test_gpt2_batched_equals_unpadded_forward_of_each_text(models: dict, pooling: str) -> None:
    loaded = models["gpt2"]
    assert loaded.tokenizer.pad_token is None  # GPT-2 has none: batching must not need one
    layers = resolve_hf_layers(loaded, "all")
    texts = [" " + t for t in TEXTS]
    reference: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    with torch.inference_mode():
        for text in texts:
            enc = loaded.tokenizer(text)
            hidden = loaded.module(input_ids=torch.tensor([enc.input_ids]), output_hidden_states=True).hidden_states
            own = np.ones(len(enc.input_ids), dtype=bool)
            for k, h in enumerate(hidden):
                reference[layers[k]].append(_np_pool(h[0].numpy(), own, pooling, len(own) - 1,
                                                     _word_groups(enc.word_ids(), own)))
    ours = _extract(loaded, texts, layers, pooling=pooling, batch_size=3)
    _assert_close(ours, {k: np.stack(v) for k, v in reference.items()})


# --- word alignment ----------------------------------------------------------------------


@pytest.mark.parametrize("kind, text, words", [
    # uncased BERT strips accents; punctuation and each CJK character are words of their own
    ("bert", "Unbelievably, the café 我们!", ["unbelievably", ",", "the", "cafe", "我", "们", "!"]),
    ("bert", "Swimming... 42 dogs!", ["swimming", ".", ".", ".", "42", "dogs", "!"]),
    ("gpt2", " Unbelievably, the café 我们!", [" Unbelievably", ",", " the", " café", " 我们", "!"]),
    ("gpt2", "déjà vu, again", ["déjà", " vu", ",", " again"]),
])
def test_word_pooling_groups_subword_tokens_by_word(models: dict, kind: str, text: str, words: list[str]) -> None:
    loaded = models[kind]
    tokenizer = loaded.tokenizer
    enc = tokenizer(text, return_special_tokens_mask=True)
    own = ~np.asarray(enc["special_tokens_mask"], dtype=bool)
    groups = _word_groups(enc.word_ids(), own)
    tokens = tokenizer.convert_ids_to_tokens(enc.input_ids)
    # the planted words: each group's tokens spell one word
    spelled = ["".join(tokens[p].removeprefix("##") for p in g) if kind == "bert"
               else tokenizer.convert_tokens_to_string([tokens[p] for p in g]) for g in groups]
    assert spelled == words
    assert max(len(g) for g in groups) > 1  # some word has several sub-word tokens
    with torch.inference_mode():
        hidden = loaded.module(input_ids=torch.tensor([enc.input_ids]), output_hidden_states=True).hidden_states
    layers = resolve_hf_layers(loaded, "all")
    ours = _extract(loaded, [text, "the cat"], layers, pooling="word", batch_size=2)
    mean = _extract(loaded, [text], layers, pooling="mean")
    for k, h in enumerate(hidden):
        expected = np.mean([h[0, g].numpy().mean(axis=0) for g in groups], axis=0)
        np.testing.assert_allclose(ours[layers[k]][0], expected, rtol=RTOL, atol=ATOL)
    assert not np.allclose(ours[layers[-1]][0], mean[layers[-1]][0], atol=1e-4)  # words weigh equally


# --- context -------------------------------------------------------------------------------

CONTEXT = "the story so far: a fox met a crow in the forest, and the crow sang."


def _ids(loaded: M.LoadedModel, text: str) -> list[int]:
    return loaded.tokenizer(text, add_special_tokens=False).input_ids


def _context_reference(loaded: M.LoadedModel, context_ids: list[int], stimulus: str,
                       pooling: str) -> dict[str, np.ndarray]:
    """Forward of context + stimulus built by hand; NumPy pooling of the stimulus positions."""
    stim = _ids(loaded, stimulus)
    tok = loaded.tokenizer
    if loaded.model_kind == "decoder":
        ids, types, offset = context_ids + stim, None, len(context_ids)
    else:  # [CLS] context [SEP] stimulus [SEP], token type 1 for the stimulus
        ids = [tok.cls_token_id, *context_ids, tok.sep_token_id, *stim, tok.sep_token_id]
        types = [0] * (len(context_ids) + 2) + [1] * (len(stim) + 1)
        offset = len(context_ids) + 2
    own = np.zeros(len(ids), dtype=bool)
    own[offset:offset + len(stim)] = True
    kwargs = {} if types is None else {"token_type_ids": torch.tensor([types])}
    with torch.inference_mode():
        hidden = loaded.module(input_ids=torch.tensor([ids]), output_hidden_states=True, **kwargs).hidden_states
    return {f"hidden_states.{k}": _np_pool(h[0].numpy(), own, pooling, len(ids) - 1)[None]
            for k, h in enumerate(hidden)}


@pytest.mark.parametrize("kind, stimulus, pooling", [
    ("bert", "the cat sat.", "mean"), ("bert", "the cat sat.", "first"),
    ("gpt2", " the cat sat.", "last"), ("gpt2", " the cat sat.", "max"),
])
def test_context_keeps_the_most_recent_tokens_and_pools_the_stimulus_only(models: dict, kind: str, stimulus: str,
                                                                          pooling: str) -> None:
    loaded = models[kind]
    layers = resolve_hf_layers(loaded, "all")
    context_ids = _ids(loaded, CONTEXT)
    assert len(context_ids) > 8
    got = _extract(loaded, [stimulus], layers, pooling=pooling, contexts=[CONTEXT], context_tokens=5)
    _assert_close(got, _context_reference(loaded, context_ids[-5:], stimulus, pooling))
    oldest = _context_reference(loaded, context_ids[:5], stimulus, pooling)
    assert not np.allclose(got[layers[-1]], oldest[layers[-1]], atol=1e-4)
    # more tokens allowed than the context has: all of it; no context: the stimulus alone
    _assert_close(_extract(loaded, [stimulus], layers, pooling=pooling, contexts=[CONTEXT], context_tokens=10_000),
                  _context_reference(loaded, context_ids, stimulus, pooling))
    alone = _extract(loaded, [stimulus], layers, pooling=pooling)
    np.testing.assert_array_equal(alone[layers[-1]], _extract(loaded, [stimulus], layers, pooling=pooling,
                                                             contexts=[CONTEXT], context_tokens=0)[layers[-1]])
    if pooling != "first":  # BERT's [CLS] sees the context too; GPT-2's stimulus tokens see it
        assert not np.allclose(alone[layers[-1]], got[layers[-1]], atol=1e-4)


def test_context_is_cut_to_fit_the_model_length(models: dict) -> None:
    loaded = models["bert"]  # at most 64 tokens with [CLS] / [SEP]
    long_context = " ".join([CONTEXT] * 6)
    context_ids = _ids(loaded, long_context)
    stim = "the cat sat."
    room = 64 - len(_ids(loaded, stim)) - 3
    assert len(context_ids) > room
    got = _extract(loaded, [stim], ["hidden_states.3"], pooling="mean", contexts=[long_context], context_tokens=500)
    expected = _context_reference(loaded, context_ids[-room:], stim, "mean")["hidden_states.3"]
    _assert_close(got, {"hidden_states.3": expected})


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_batches_with_contexts_equal_each_stimulus_alone(models: dict, kind: str) -> None:
    loaded = models[kind]
    layers = resolve_hf_layers(loaded, "all")
    texts = ["the cat sat.", " a dog ran quickly across the park", "it", " Unbelievably, déjà vu!"]
    contexts = [CONTEXT, None, "so far", CONTEXT[:30]]
    for pooling in ("mean", "last", "word"):
        together = _extract(loaded, texts, layers, pooling=pooling, contexts=contexts, context_tokens=7,
                            batch_size=4)
        for i, (text, context) in enumerate(zip(texts, contexts)):
            alone = _extract(loaded, [text], layers, pooling=pooling, contexts=[context], context_tokens=7)
            _assert_close({k: v[i:i + 1] for k, v in together.items()}, alone)


# --- padding invariance and batching -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_text_features_do_not_depend_on_the_batch(models: dict, kind: str) -> None:
    loaded = models[kind]
    layers = resolve_hf_layers(loaded, "all")
    for pooling in MODALITY_POOLINGS["text"]:
        together = _extract(loaded, TEXTS, layers, pooling=pooling, batch_size=len(TEXTS))
        for i, text in enumerate(TEXTS):
            alone = _extract(loaded, [text], layers, pooling=pooling, batch_size=1)
            _assert_close({k: v[i:i + 1] for k, v in together.items()}, alone)


def test_batches_callbacks_progress_and_memory_budget(models: dict) -> None:
    loaded = models["bert"]
    items = [(lambda t=t: t) for t in TEXTS]  # callables, loaded per batch
    collector, done = _Collector(), []
    extract_hf_features(loaded, items, ["hidden_states.1"], batch_size=2, on_batch=collector.on_batch,
                        progress=done.append)
    assert collector.starts == [0, 2, 4] and done == [2, 2, 1]
    budget = _Collector()
    extract_hf_features(loaded, items, ["hidden_states.1"], batch_size=2, on_batch=budget.on_batch,
                        memory_budget_bytes=10**9)
    assert budget.starts == [0, 1, 3]  # one stimulus measured first
    np.testing.assert_allclose(budget.result()["hidden_states.1"], collector.result()["hidden_states.1"],
                               rtol=RTOL, atol=ATOL)
    tight = _Collector()
    extract_hf_features(loaded, items, ["hidden_states.1"], batch_size=2, on_batch=tight.on_batch,
                        memory_budget_bytes=1)
    assert tight.starts == [0, 1, 2, 3, 4]


def test_text_errors(models: dict) -> None:
    loaded = models["bert"]
    with pytest.raises(AnalysisError, match="has no tokens"):
        _extract(loaded, ["the cat", ""], ["hidden_states.1"])
    with pytest.raises(AnalysisError, match="takes at most 64"):
        _extract(loaded, [" ".join(["cat"] * 70)], ["hidden_states.1"])
    with pytest.raises(AnalysisError, match="contexts has 1 entries for 2 stimuli"):
        _extract(loaded, ["a", "b"], ["hidden_states.1"], contexts=["x"], context_tokens=3)
    with pytest.raises(AnalysisError, match="PIL image"):
        _extract(loaded, [3.5], ["hidden_states.1"])
    with pytest.raises(AnalysisError, match="not image stimuli"):
        _extract(loaded, [H.noise_image(0)], ["hidden_states.1"])
    with pytest.raises(AnalysisError, match="not a layer"):
        _extract(loaded, ["a"], ["hidden_states.9"])
    assert stimulus_modality("x") == "text" and stimulus_modality(np.zeros(3)) == "audio"


# --- audio -----------------------------------------------------------------------------------

SOUNDS_S = [0.3, 0.05, 0.12, 0.2]


def _frames(n_samples: int) -> int:
    """Valid frames of the tiny wav2vec2: conv kernel 10 stride 5, then kernel 3 stride 2."""
    return ((n_samples - 10) // 5 + 1 - 3) // 2 + 1


@pytest.mark.parametrize("pooling", ["mean", "max", "first", "last"])
def test_audio_equals_numpy_pooling_of_a_masked_batch_and_of_each_sound_alone(models: dict, pooling: str) -> None:
    loaded = models["wav2vec2"]
    sounds = [H.tone(s, seed) for seed, s in enumerate(SOUNDS_S)]
    layers = resolve_hf_layers(loaded, "all")
    ours = _extract(loaded, sounds, layers, pooling=pooling, batch_size=4)
    with torch.inference_mode():
        inputs = loaded.processor(sounds, sampling_rate=16000, padding=True, return_attention_mask=True,
                                  return_tensors="pt")
        hidden = loaded.module(**inputs, output_hidden_states=True).hidden_states
    frames = [_frames(s.size) for s in sounds]
    batched = {}
    for k, h in enumerate(hidden):
        own = np.arange(h.shape[1])[None] < np.asarray(frames)[:, None]
        batched[layers[k]] = np.stack([_np_pool(h[b].numpy(), own[b], pooling, frames[b] - 1)
                                       for b in range(len(sounds))])
    _assert_close(ours, batched)
    for b, sound in enumerate(sounds):  # and each sound alone, without padding or mask
        with torch.inference_mode():
            single = loaded.module(**loaded.processor(sound, sampling_rate=16000, return_tensors="pt"),
                                   output_hidden_states=True).hidden_states
        assert single[0].shape[1] == frames[b]
        for k, h in enumerate(single):
            np.testing.assert_allclose(ours[layers[k]][b], _np_pool(h[0].numpy(), np.ones(frames[b], bool),
                                                                    pooling, frames[b] - 1), rtol=RTOL, atol=ATOL)


def test_audio_models_without_attention_masks_batch_equal_lengths_only(models: dict) -> None:
    loaded = models["wav2vec2_group"]
    assert not loaded.processor.return_attention_mask
    sounds = [H.tone(0.1, 0), H.tone(0.2, 1), H.tone(0.1, 2), H.tone(0.05, 3)]
    layers = resolve_hf_layers(loaded, "all")
    together = _extract(loaded, sounds, layers, pooling="mean", batch_size=4)
    for b, sound in enumerate(sounds):
        with torch.inference_mode():
            single = loaded.module(**loaded.processor(sound, sampling_rate=16000, return_tensors="pt"),
                                   output_hidden_states=True).hidden_states
        for k, h in enumerate(single):
            np.testing.assert_allclose(together[layers[k]][b], h[0].numpy().mean(axis=0), rtol=RTOL, atol=ATOL)


def test_audio_is_cropped_to_max_seconds(models: dict) -> None:
    loaded = models["wav2vec2"]
    sound = H.tone(0.3, 5)
    layers = ["hidden_states.2"]
    cropped = _extract(loaded, [sound, H.tone(0.05, 6)], layers, max_seconds=0.1, batch_size=2)
    first_tenth = _extract(loaded, [sound[:1600]], layers)["hidden_states.2"][0]
    np.testing.assert_allclose(cropped["hidden_states.2"][0], first_tenth, rtol=RTOL, atol=ATOL)
    assert not np.allclose(cropped["hidden_states.2"][0], _extract(loaded, [sound], layers)["hidden_states.2"][0],
                           atol=1e-4)


def test_audio_errors(models: dict) -> None:
    loaded = models["wav2vec2"]
    with pytest.raises(AnalysisError, match="shorter than one frame"):
        _extract(loaded, [np.ones(12, np.float32)], ["hidden_states.1"])
    with pytest.raises(AnalysisError, match="1-D array"):
        _extract(loaded, [np.ones((2, 400), np.float32)], ["hidden_states.1"])
    with pytest.raises(AnalysisError, match="non-finite"):
        _extract(loaded, [np.full(400, np.nan, np.float32)], ["hidden_states.1"])
    with pytest.raises(AnalysisError, match="contexts apply to text stimuli only"):
        _extract(loaded, [H.tone(0.1, 0)], ["hidden_states.1"], contexts=["x"], context_tokens=3)


# --- image -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["first", "mean", "max"])
def test_vision_class_token_and_patch_tokens(models: dict, pooling: str) -> None:
    loaded = models["vit"]
    images = [H.noise_image(k, size) for k, size in enumerate([(40, 48), (32, 32), (64, 20)])]
    layers = resolve_hf_layers(loaded, "all")
    ours = _extract(loaded, images, layers, pooling=pooling, batch_size=2)
    with torch.inference_mode():
        pixels = loaded.processor(images=images, return_tensors="pt")["pixel_values"]
        hidden = loaded.module(pixel_values=pixels, output_hidden_states=True).hidden_states
    for k, h in enumerate(hidden):
        h = h.numpy()
        assert h.shape[1] == 17  # class token + 4 x 4 patches
        expected = {"first": h[:, 0], "mean": h[:, 1:].mean(axis=1), "max": h[:, 1:].max(axis=1)}[pooling]
        np.testing.assert_allclose(ours[layers[k]], expected, rtol=RTOL, atol=ATOL)
    with pytest.raises(AnalysisError, match="does not apply to image"):
        _extract(loaded, images, layers, pooling="last")


def test_conv_feature_maps_are_tokens_without_a_class_token(tmp_path: Path) -> None:
    loaded = M.load_model(ModelSpec(name=str(H.build_convnext(tmp_path / "convnext")), source="huggingface"))
    images = [H.noise_image(k) for k in range(3)]
    layers = resolve_hf_layers(loaded, "all")
    assert resolve_pooling(loaded, "auto", "image") == "mean"
    ours = _extract(loaded, images, layers, batch_size=2)
    with torch.inference_mode():
        pixels = loaded.processor(images=images, return_tensors="pt")["pixel_values"]
        hidden = loaded.module(pixel_values=pixels, output_hidden_states=True).hidden_states
    for k, h in enumerate(hidden):
        assert h.ndim == 4  # (batch, C, H, W): mean over the H x W positions
        np.testing.assert_allclose(ours[layers[k]], h.numpy().mean(axis=(2, 3)), rtol=RTOL, atol=ATOL)
    with pytest.raises(AnalysisError, match="no class token"):
        _extract(loaded, images, layers, pooling="first")


# --- text-image (CLIP) -----------------------------------------------------------------------


def test_clip_towers_and_joint_embeddings(models: dict) -> None:
    loaded = models["clip"]
    module, tok = loaded.module, loaded.tokenizer
    texts, images = ["a cat", "the dog ran quickly across the park"], [H.noise_image(1), H.noise_image(2)]
    mixed = [texts[0], images[0], images[1], texts[1]]
    ours = _extract(loaded, mixed, ["embeds"], batch_size=4)
    with torch.inference_mode():
        expected = [module.get_text_features(input_ids=torch.tensor([tok(texts[0]).input_ids])).pooler_output[0],
                    *module.get_image_features(pixel_values=loaded.processor(images=images, return_tensors="pt")
                                               ["pixel_values"]).pooler_output,
                    module.get_text_features(input_ids=torch.tensor([tok(texts[1]).input_ids])).pooler_output[0]]
    np.testing.assert_allclose(ours["embeds"], torch.stack(expected).numpy(), rtol=RTOL, atol=ATOL)
    # text tower: hidden states of each text alone; auto pooling = last = <|endoftext|>
    layers = resolve_hf_layers(loaded, "all", modality="text")
    text_out = _extract(loaded, texts, layers, batch_size=2)
    for b, text in enumerate(texts):
        ids = tok(text).input_ids
        assert ids[-1] == tok.convert_tokens_to_ids("<|endoftext|>")
        with torch.inference_mode():
            hidden = module.text_model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        for k, h in enumerate(hidden):
            np.testing.assert_allclose(text_out[f"text.hidden_states.{k}"][b], h[0, -1].numpy(),
                                       rtol=RTOL, atol=ATOL)
    vision = _extract(loaded, images, ["vision.hidden_states.3"], pooling="mean")
    with torch.inference_mode():
        h = module.vision_model(pixel_values=loaded.processor(images=images, return_tensors="pt")["pixel_values"],
                                output_hidden_states=True).hidden_states[3]
    np.testing.assert_allclose(vision["vision.hidden_states.3"], h[:, 1:].mean(dim=1).numpy(), rtol=RTOL, atol=ATOL)
    with pytest.raises(AnalysisError, match="is in the text tower"):
        _extract(loaded, mixed, ["text.hidden_states.1", "embeds"])
