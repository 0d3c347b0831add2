"""Batched extraction of ``source: huggingface`` hidden states, pooled to one vector per stimulus.

Each batch of stimuli is preprocessed together (right padding with an attention mask) and run
through the model once with ``output_hidden_states=True`` (no hooks); every requested hidden
state (batch, positions, dim) is pooled over the stimulus's own positions to (batch, dim), and
the float32 rows go to ``on_batch``. Memory depends on the batch size and the model, never on the
number of stimuli. Padding never changes a stimulus's features: padded positions are masked out of
the attention and of the pooling (up to float rounding of the different tensor shapes).

Stimuli
-------
``items`` are zero-argument callables (or the values themselves) giving a ``str`` (text), a 1-D
float array at :attr:`LoadedModel.sample_rate` (audio; the caller decodes, mixes down and
resamples), or a PIL image (image; converted to RGB). Text-image models (CLIP) take text and
images, in any mix: each batch runs its texts through the text tower and its images through the
vision tower.

Text
----
The stimulus is tokenized on its own (``add_special_tokens=False``) with the model's fast
tokenizer (its stored truncation and padding settings switched off), so its tokens never depend
on its context. With ``context_tokens > 0`` and a context string, the context is tokenized on its
own and its last ``context_tokens`` tokens (the most recent ones; fewer when the model's length
limit needs the room) are put before the stimulus: for encoders (bidirectional models such as
BERT) as the first segment of a pair (BERT: ``[CLS] context [SEP] stimulus [SEP]``, token type 1
for the stimulus), for decoders (causal models such as GPT-2, and CLIP's text tower) as one running
sequence (``context stimulus``); special tokens are those the tokenizer's own post-processor adds
(BERT's ``[CLS]``/``[SEP]``, none for GPT-2). Context and stimulus are joined as token sequences
and nothing is inserted between them: with a byte-level BPE tokenizer give a stimulus that
continues its context its leading space (``" sat"``). The stimulus's *own tokens* are its
tokens in that sequence, special tokens, context and padding left out. Sequences are padded on
the right (any token id: padded positions are masked, and with right padding the positions of the
real tokens start at 0 as without padding, also for GPT-2, which has no padding token; the
tokenizer is not modified). A stimulus longer than the model's limit (the smaller of the
tokenizer's ``model_max_length`` and the config's ``max_position_embeddings`` / ``n_positions``)
is an error; a stimulus without tokens too.

Audio
-----
Sounds are cropped to their first ``max_seconds`` and go through the model's feature extractor
(``sampling_rate`` passed, per-sound normalisation as the extractor does it). A position is a
frame of the hidden states; a sound's *valid frames* are the first
``model._get_feat_extract_output_lengths(n_samples)`` frames (wav2vec2, HuBERT, WavLM, data2vec
audio: the frames whose receptive field lies inside the sound). Models whose feature extractor
returns attention masks (``return_attention_mask``: wav2vec2-large-lv60, HuBERT-large) are run in
padded batches with the mask; models trained without masks (wav2vec2-base: group normalisation
over the whole input, where padding would change the result) get only equally long sounds in one
forward pass; models without ``_get_feat_extract_output_lengths`` get one sound per forward pass,
all of its frames valid.

Image
-----
The model's image processor (resize, crop, normalise) makes the pixels; positions are tokens:
the class token first, then (DeiT) a distillation token, (DINOv2 with registers) register tokens,
then the patch tokens (:func:`~bids_dnn.dnn.huggingface.vision_prefix_tokens`). Hidden states of
shape (batch, channels, height, width) are read as (batch, height * width, channels) tokens.

Pooling (:data:`POOLINGS`; which apply to which modality: :data:`MODALITY_POOLINGS`)
---------------------------------------------------------------------------------------
``mean``
    The average over the stimulus's own positions: its own tokens (text), its valid frames
    (audio), its patch tokens (image).
``max``
    The element-wise maximum over the same positions.
``first``
    Position 0: ``[CLS]`` (BERT-like text), the first token of the input (GPT-2: the first
    context token when there is a context), the first frame (audio), the class token (image).
``last``
    Text: the last non-padding position (``[SEP]`` for BERT-like models; the stimulus's last
    token for GPT-2; ``<|endoftext|>``, CLIP's own pooled token, for CLIP); audio: the last valid
    frame.
``word``
    Text only: the stimulus's own tokens grouped by word (the fast tokenizer's ``word_ids``: the
    pre-tokenizer's words, e.g. punctuation is a word of its own for BERT, and a byte-level BPE
    word starts with its leading space), each word's tokens averaged, then the words averaged
    (every word counts once, however many sub-word tokens it has).
``auto`` (:data:`AUTO_POOLING`)
    Text: ``last`` for decoders (``model_kind == "decoder"``), else ``mean``; audio: ``mean``;
    image: ``first`` when the model has a class token, else ``mean``.

The ``embeds`` layer of a text-image model (the joint-space projection) is one vector already and
is stored as it is, whatever the pooling.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from bids_dnn.dnn.extract import batch_size_for_budget
from bids_dnn.dnn.huggingface import (TASK_MODALITIES, hf_towers, hf_layer_tower, vision_prefix_tokens)
from bids_dnn.dnn.models import LoadedModel
from bids_dnn.errors import AnalysisError

__all__ = ["AUTO_POOLING", "MODALITY_POOLINGS", "POOLINGS", "extract_hf_features", "resolve_pooling",
           "stimulus_modality"]

_UNBOUNDED_LENGTH = 1_000_000


class _Positions:
    """Which positions of a padded batch belong to each stimulus.

    Attributes
    ----------
    own : torch.Tensor of bool, shape (batch, positions)
        The stimulus's own tokens / valid frames / patch tokens.
    first, last : torch.Tensor of int64, shape (batch,)
        The positions ``first`` and ``last`` pool.
    word_weights : torch.Tensor of float32, shape (batch, positions), or None
        Text: 1 / (n_words * n_tokens of the token's word) on own tokens, 0 elsewhere.
    """

    def __init__(self, own: torch.Tensor, first: torch.Tensor, last: torch.Tensor,
                 word_weights: torch.Tensor | None = None) -> None:
        self.own, self.first, self.last, self.word_weights = own, first, last, word_weights

    @functools.cached_property
    def mean_weights(self) -> torch.Tensor:
        own = self.own.to(torch.float32)
        return own / own.sum(dim=1, keepdim=True)


def _weighted_sum(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_t weights[b, t] * hidden[b, t] -> (batch, dim); positions of weight 0 never contribute
    (also when they hold inf / NaN)."""
    out = torch.bmm(weights.to(hidden.dtype).unsqueeze(1), hidden).squeeze(1)
    if not bool(torch.isfinite(out).all()):
        keep = (weights != 0).unsqueeze(-1)
        out = (torch.where(keep, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device))
               * weights.to(hidden.dtype).unsqueeze(-1)).sum(dim=1)
    return out


def _pool_mean(hidden: torch.Tensor, positions: _Positions) -> torch.Tensor:
    return _weighted_sum(hidden, positions.mean_weights)


def _pool_max(hidden: torch.Tensor, positions: _Positions) -> torch.Tensor:
    return hidden.masked_fill(~positions.own.unsqueeze(-1), float("-inf")).amax(dim=1)


def _pool_first(hidden: torch.Tensor, positions: _Positions) -> torch.Tensor:
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), positions.first]


def _pool_last(hidden: torch.Tensor, positions: _Positions) -> torch.Tensor:
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), positions.last]


def _pool_word(hidden: torch.Tensor, positions: _Positions) -> torch.Tensor:
    if positions.word_weights is None:
        raise AnalysisError("pooling 'word' needs text stimuli")
    return _weighted_sum(hidden, positions.word_weights)


#: pooling -> function(hidden (batch, positions, dim), positions) -> (batch, dim); see the module
#: docstring for each rule
POOLINGS: dict[str, Callable[[torch.Tensor, _Positions], torch.Tensor]] = {
    "mean": _pool_mean,
    "max": _pool_max,
    "first": _pool_first,
    "last": _pool_last,
    "word": _pool_word,
}

#: stimulus modality -> the poolings that apply to it
MODALITY_POOLINGS: dict[str, tuple[str, ...]] = {
    "text": ("mean", "max", "first", "last", "word"),
    "audio": ("mean", "max", "first", "last"),
    "image": ("first", "mean", "max"),
}


def _vision_module(loaded: LoadedModel) -> Any:
    return loaded.module.vision_model if loaded.task == "text_image" else loaded.module


#: modality -> function(loaded) -> the pooling ``auto`` means
AUTO_POOLING: dict[str, Callable[[LoadedModel], str]] = {
    "text": lambda loaded: "last" if loaded.model_kind == "decoder" else "mean",
    "audio": lambda loaded: "mean",
    "image": lambda loaded: "first" if vision_prefix_tokens(_vision_module(loaded)) > 0 else "mean",
}


def resolve_pooling(loaded: LoadedModel, pooling: str, modality: str) -> str:
    """The pooling applied to a model's stimuli of one modality (``auto`` resolved).

    Parameters
    ----------
    loaded : LoadedModel
        A ``source: huggingface`` model.
    pooling : {"auto", "mean", "first", "last", "max", "word"}
    modality : {"text", "audio", "image"}

    Returns
    -------
    str
        A key of :data:`POOLINGS`.

    Raises
    ------
    AnalysisError
        The model does not read this modality, the pooling is unknown or does not apply to it
        (``word`` for sounds or images, ``last`` for images, ``first`` for an image model
        without a class token).
    """
    if modality not in TASK_MODALITIES.get(loaded.task, ()):
        raise AnalysisError(f"{loaded.name} reads {' and '.join(TASK_MODALITIES.get(loaded.task, ('?',)))}, "
                            f"not {modality} stimuli")
    name = AUTO_POOLING[modality](loaded) if pooling == "auto" else pooling
    if name not in POOLINGS:
        raise AnalysisError(f"unknown pooling {pooling!r}; valid: auto, {', '.join(POOLINGS)}")
    if name not in MODALITY_POOLINGS[modality]:
        raise AnalysisError(f"pooling {name!r} does not apply to {modality} stimuli; valid: auto, "
                            f"{', '.join(MODALITY_POOLINGS[modality])}")
    if modality == "image" and name == "first" and vision_prefix_tokens(_vision_module(loaded)) == 0:
        raise AnalysisError(f"{loaded.name} has no class token, so pooling 'first' does not apply; use mean")
    return name


def stimulus_modality(value: Any) -> str:
    """``text`` for a ``str``, ``audio`` for a NumPy array, ``image`` for a PIL image.

    Raises
    ------
    AnalysisError
        Any other type.
    """
    from PIL import Image

    if isinstance(value, str):
        return "text"
    if isinstance(value, np.ndarray):
        return "audio"
    if isinstance(value, Image.Image):
        return "image"
    raise AnalysisError(f"a stimulus must be a str (text), a 1-D NumPy array (audio) or a PIL image "
                        f"(got {type(value).__name__})")


@dataclass
class _Chunk:
    """One forward pass: the model inputs, the rows (within the batch) they fill, and the
    positions given the number of positions of the hidden states."""

    inputs: dict[str, torch.Tensor]
    rows: list[int]
    positions: Callable[[int], _Positions]


# ---------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------


class _TextEncoder:
    """Token ids of stimuli (with their context) and the positions of their own tokens."""

    def __init__(self, loaded: LoadedModel, context_tokens: int) -> None:
        tokenizer = loaded.tokenizer
        backend = tokenizer.backend_tokenizer
        self.backend = type(backend).from_str(backend.to_str())  # a copy: settings changed below
        self.backend.no_truncation()
        self.backend.no_padding()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.type_ids = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
        self.causal = loaded.model_kind == "decoder"
        self.context_tokens = context_tokens
        self.name = loaded.name
        config = loaded.module.config
        config = config.text_config if loaded.task == "text_image" else config
        limits = [getattr(tokenizer, "model_max_length", None)]
        limits += [getattr(config, key, None) for key in ("max_position_embeddings", "n_positions")]
        limits = [v for v in limits if isinstance(v, int) and 0 < v < _UNBOUNDED_LENGTH]
        self.limit = min(limits) if limits else None

    def encode(self, text: str, context: str | None, index: int) -> tuple[list[int], list[int], list[int],
                                                                           list[int | None]]:
        """(ids, type ids, positions of own tokens, word id of each own token)."""
        from tokenizers import Encoding

        stim = self.backend.encode(text, add_special_tokens=False)
        n = len(stim.ids)
        ctx = None
        if self.context_tokens > 0 and context:
            ctx = self.backend.encode(context, add_special_tokens=False)
            room = len(ctx.ids)
            if self.limit is not None:
                room = self.limit - n - self.backend.num_special_tokens_to_add(not self.causal)
            keep = min(self.context_tokens, len(ctx.ids), room)
            if keep <= 0:
                ctx = None
            elif keep < len(ctx.ids):
                ctx.truncate(keep, direction="left")
        if ctx is None:
            enc, sequence, skip = self.backend.post_process(stim, None, add_special_tokens=True), 0, 0
        elif self.causal:
            merged = Encoding.merge([ctx, stim], growing_offsets=True)
            enc, sequence, skip = self.backend.post_process(merged, None, add_special_tokens=True), 0, len(ctx.ids)
        else:
            enc, sequence, skip = self.backend.post_process(ctx, stim, add_special_tokens=True), 1, 0
        if self.limit is not None and len(enc.ids) > self.limit:
            raise AnalysisError(f"text stimulus {index} has {n} tokens; {self.name} takes at most {self.limit} "
                                "with its special tokens", hint="split the text into shorter stimuli")
        positions = [p for p, s in enumerate(enc.sequence_ids) if s == sequence][skip:]
        if len(positions) != n:
            raise AnalysisError(f"cannot locate the tokens of text stimulus {index} in the input of {self.name} "
                                f"({len(positions)} positions for {n} tokens)")
        keep_token = [not special for special in stim.special_tokens_mask]
        own = [p for p, k in zip(positions, keep_token) if k]
        words = [w for w, k in zip(stim.word_ids, keep_token) if k]
        if not own:
            raise AnalysisError(f"text stimulus {index} ({text[:40]!r}) has no tokens")
        return list(enc.ids), list(enc.type_ids), own, words

    def chunks(self, texts: list[str], contexts: list[str | None], indices: list[int], rows: list[int],
               device: str) -> list[_Chunk]:
        encoded = [self.encode(t, c, i) for t, c, i in zip(texts, contexts, indices)]
        width = max(len(ids) for ids, *_ in encoded)
        batch = len(encoded)
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        types = torch.zeros((batch, width), dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        own = torch.zeros((batch, width), dtype=torch.bool)
        word_weights = torch.zeros((batch, width), dtype=torch.float32)
        last = torch.zeros(batch, dtype=torch.long)
        for b, (seq, type_ids, positions, words) in enumerate(encoded):
            ids[b, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            types[b, :len(seq)] = torch.tensor(type_ids, dtype=torch.long)
            mask[b, :len(seq)] = 1
            last[b] = len(seq) - 1
            own[b, positions] = True
            groups: dict[Any, list[int]] = {}
            for k, (position, word) in enumerate(zip(positions, words)):
                groups.setdefault(("word", word) if word is not None else ("token", k), []).append(position)
            for members in groups.values():
                word_weights[b, members] = 1.0 / (len(groups) * len(members))
        inputs = {"input_ids": ids, "attention_mask": mask}
        if self.type_ids:
            inputs["token_type_ids"] = types
        positions = _Positions(own.to(device), torch.zeros(batch, dtype=torch.long, device=device),
                               last.to(device), word_weights.to(device))
        return [_Chunk({k: v.to(device) for k, v in inputs.items()}, rows,
                       functools.partial(_same_width, positions=positions, expected=width, name=self.name))]


def _same_width(width: int, *, positions: _Positions, expected: int, name: str) -> _Positions:
    if width != expected:
        raise AnalysisError(f"hidden states of {name} have {width} positions for {expected} input tokens; "
                            "models that shorten the sequence (e.g. Funnel) are not supported")
    return positions


# ---------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------


class _AudioEncoder:
    """Feature-extractor inputs of sounds and their valid frames."""

    def __init__(self, loaded: LoadedModel, max_seconds: float | None) -> None:
        self.extractor = loaded.processor
        self.rate = int(loaded.sample_rate)
        self.frames = getattr(loaded.module, "_get_feat_extract_output_lengths", None)
        self.masked = self.frames is not None and bool(getattr(self.extractor, "return_attention_mask", False))
        self.max_samples = None if max_seconds is None else max(1, int(round(max_seconds * self.rate)))
        self.input_name = type(loaded.module).main_input_name

    def _samples(self, value: np.ndarray, index: int) -> np.ndarray:
        if value.ndim != 1 or value.size == 0 or not np.issubdtype(value.dtype, np.number):
            raise AnalysisError(f"audio stimulus {index} must be a non-empty 1-D array of samples "
                                f"(got shape {value.shape}, dtype {value.dtype})")
        samples = np.ascontiguousarray(value[: self.max_samples], dtype=np.float32)
        if not np.isfinite(samples).all():
            raise AnalysisError(f"audio stimulus {index} has non-finite samples")
        return samples

    def _groups(self, lengths: list[int]) -> list[list[int]]:
        if self.masked:
            return [list(range(len(lengths)))]
        if self.frames is not None:  # trained without masks: only equally long sounds together
            groups: dict[int, list[int]] = {}
            for k, n in enumerate(lengths):
                groups.setdefault(n, []).append(k)
            return list(groups.values())
        return [[k] for k in range(len(lengths))]

    def chunks(self, values: list[np.ndarray], indices: list[int], rows: list[int], device: str) -> list[_Chunk]:
        samples = [self._samples(v, i) for v, i in zip(values, indices)]
        lengths = [s.size for s in samples]
        chunks = []
        for group in self._groups(lengths):
            arrays = [samples[k] for k in group]
            if self.masked:
                features = self.extractor(arrays, sampling_rate=self.rate, padding=True, return_attention_mask=True,
                                          return_tensors="pt")
                inputs = {self.input_name: features[self.input_name], "attention_mask": features["attention_mask"]}
            else:
                features = self.extractor(arrays, sampling_rate=self.rate, return_tensors="pt")
                inputs = {self.input_name: features[self.input_name]}
            valid = (self.frames(torch.tensor([lengths[k] for k in group])).to(torch.long)
                     if self.frames is not None else None)
            for k, n in zip(group, valid.tolist() if valid is not None else [1] * len(group)):
                if n < 1:
                    raise AnalysisError(f"audio stimulus {indices[k]} ({lengths[k] / self.rate:.4f} s) is shorter "
                                        "than one frame of the model")
            chunks.append(_Chunk({k: v.to(device) for k, v in inputs.items()}, [rows[k] for k in group],
                                 functools.partial(_frame_positions, valid=valid, batch=len(group), device=device)))
        return chunks


def _frame_positions(width: int, *, valid: torch.Tensor | None, batch: int, device: str) -> _Positions:
    counts = (torch.full((batch,), width, dtype=torch.long) if valid is None
              else valid.clamp(max=width)).to(device)
    own = torch.arange(width, device=device).unsqueeze(0) < counts.unsqueeze(1)
    return _Positions(own, torch.zeros(batch, dtype=torch.long, device=device), counts - 1)


# ---------------------------------------------------------------------------------------
# Image
# ---------------------------------------------------------------------------------------


class _ImageEncoder:
    """Image-processor inputs and the patch tokens."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.processor = loaded.processor
        self.prefix = vision_prefix_tokens(_vision_module(loaded))

    def chunks(self, values: list[Any], indices: list[int], rows: list[int], device: str) -> list[_Chunk]:
        images = [v if v.mode == "RGB" else v.convert("RGB") for v in values]
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(torch.float32)
        batch = len(images)

        def positions(width: int) -> _Positions:
            own = (torch.arange(width, device=device) >= self.prefix).unsqueeze(0).expand(batch, width)
            return _Positions(own, torch.zeros(batch, dtype=torch.long, device=device),
                              torch.full((batch,), width - 1, dtype=torch.long, device=device))

        return [_Chunk({"pixel_values": pixels.to(device)}, rows, positions)]


# ---------------------------------------------------------------------------------------
# Forward passes
# ---------------------------------------------------------------------------------------


def _plain_forward(module: Any, inputs: dict[str, torch.Tensor]) -> tuple[tuple[torch.Tensor, ...], None]:
    out = module(**inputs, output_hidden_states=True, return_dict=True)
    return tuple(out.hidden_states), None


def _tower_forward(features: str, tower: str) -> Callable[[Any, dict[str, torch.Tensor]], tuple[Any, Any]]:
    """A CLIP-like tower: hidden states and the joint-space projection of one forward pass
    (``get_text_features`` / ``get_image_features``; a second pass of the tower where they return a
    bare tensor, as in transformers 4)."""
    def forward(module: Any, inputs: dict[str, torch.Tensor]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        out = getattr(module, features)(**inputs, output_hidden_states=True)
        if isinstance(out, torch.Tensor):
            hidden = getattr(module, tower)(**inputs, output_hidden_states=True, return_dict=True).hidden_states
            return tuple(hidden), out
        return tuple(out.hidden_states), out.pooler_output
    return forward


#: (is a text-image model, modality) -> forward(module, inputs) -> (hidden states, embeds or None)
_FORWARDS: dict[tuple[bool, str], Callable[[Any, dict[str, torch.Tensor]], tuple[Any, Any]]] = {
    (False, "text"): _plain_forward,
    (False, "audio"): _plain_forward,
    (False, "image"): _plain_forward,
    (True, "text"): _tower_forward("get_text_features", "text_model"),
    (True, "image"): _tower_forward("get_image_features", "vision_model"),
}


def _as_tokens(hidden: torch.Tensor) -> torch.Tensor:
    """(batch, positions, dim); conv feature maps (batch, C, H, W) -> (batch, H * W, C)."""
    if hidden.ndim == 4:
        return hidden.flatten(2).transpose(1, 2)
    if hidden.ndim != 3:
        raise AnalysisError(f"hidden states of shape {tuple(hidden.shape)} cannot be pooled")
    return hidden


def _load(item: Any) -> Any:
    return item() if callable(item) else item


@torch.inference_mode()
def extract_hf_features(
    loaded: LoadedModel,
    items: Sequence[Any],
    layers: list[str],
    *,
    pooling: str = "auto",
    batch_size: int = 16,
    device: str = "cpu",
    on_batch: Callable[[int, dict[str, np.ndarray]], None],
    progress: Callable[[int], None] | None = None,
    contexts: Sequence[str | None] | None = None,
    context_tokens: int = 0,
    max_seconds: float | None = None,
    memory_budget_bytes: int | None = None,
) -> dict[str, tuple[int, ...]]:
    """Run a ``source: huggingface`` model over all stimuli; stream pooled hidden states to ``on_batch``.

    Parameters
    ----------
    loaded : LoadedModel
        From :func:`bids_dnn.dnn.models.load_model` with ``source: huggingface``; its module is
        moved to ``device``.
    items : sequence, length n_stimuli
        Zero-argument callables (loaded when their batch is processed) or values: ``str``
        (text), 1-D float array at ``loaded.sample_rate`` (audio), PIL image (image).
    layers : list of str
        From :func:`bids_dnn.dnn.huggingface.resolve_hf_layers`.
    pooling : {"auto", "mean", "first", "last", "max", "word"}
        See the module docstring and :func:`resolve_pooling`.
    batch_size : int
        Stimuli per batch.
    device : str
        A torch device.
    on_batch : callable(start_index, {layer: array (n_in_batch, dim) float32})
        Receives each batch, in the order of ``layers``; rows are stimuli ``start_index ..``.
    progress : callable(n_new), optional
        Called after each batch with the number of stimuli it held.
    contexts : sequence of str or None, length n_stimuli, optional
        Text stimuli: the text before each stimulus (None or "": none).
    context_tokens : int
        At most this many of the context's last tokens are fed before the stimulus (0: no
        context).
    max_seconds : float, optional
        Audio: sounds are cropped to their first ``max_seconds``.
    memory_budget_bytes : int, optional
        Working memory of one batch: the first batch holds one stimulus, whose inputs and hidden
        states give the size of the following batches (at most ``batch_size``;
        :func:`~bids_dnn.dnn.extract.batch_size_for_budget`). Text and sound lengths vary, so
        this is an estimate from the first stimulus.

    Returns
    -------
    dict of str to tuple of int
        Each layer's pooled shape ``(dim,)``, in the order of ``layers``.

    Raises
    ------
    AnalysisError
        A stimulus of the wrong type or modality, an empty or too long text, a sound shorter
        than one frame, a pooling that does not apply, a layer of the other tower, a layer
        that changes size, ``contexts`` of the wrong length.
    """
    if batch_size < 1:
        raise AnalysisError(f"batch_size must be at least 1 (got {batch_size})")
    if contexts is not None and len(contexts) != len(items):
        raise AnalysisError(f"contexts has {len(contexts)} entries for {len(items)} stimuli")
    if context_tokens < 0:
        raise AnalysisError(f"context_tokens must be >= 0 (got {context_tokens})")
    layers = list(dict.fromkeys(layers))
    towers = {layer: hf_layer_tower(loaded, layer) for layer in layers}
    n_blocks = {modality: n for modality, (_, n) in hf_towers(loaded).items()}
    text_image = loaded.task == "text_image"
    module = loaded.module.to(device).eval()
    encoders: dict[str, Any] = {}
    builders: dict[str, Callable[[], Any]] = {
        "text": lambda: _TextEncoder(loaded, context_tokens),
        "audio": lambda: _AudioEncoder(loaded, max_seconds),
        "image": lambda: _ImageEncoder(loaded),
    }
    dims: dict[str, int] = {}
    step = 1 if memory_budget_bytes is not None else batch_size
    start = 0
    while start < len(items):
        stop = min(start + step, len(items))
        values = [_load(items[i]) for i in range(start, stop)]
        by_modality: dict[str, list[int]] = {}
        for row, value in enumerate(values):
            by_modality.setdefault(stimulus_modality(value), []).append(row)
        out: dict[str, np.ndarray] = {}
        batch_bytes = 0
        for modality, rows in by_modality.items():
            pool = POOLINGS[resolve_pooling(loaded, pooling, modality)]
            for layer, (tower, _) in towers.items():
                if tower is not None and tower != modality:
                    raise AnalysisError(f"layer {layer!r} is in the {tower} tower of {loaded.name}, but stimulus "
                                        f"{start + rows[0]} is {modality}", hint="choose layers of both towers' "
                                        "shared space (embeds) for a mix of texts and images")
            encoder = encoders.get(modality) or encoders.setdefault(modality, builders[modality]())
            indices = [start + r for r in rows]
            if modality == "text":
                ctx = [None if contexts is None else contexts[i] for i in indices]
                chunks = encoder.chunks([values[r] for r in rows], ctx, indices, rows, device)
            else:
                if contexts is not None and context_tokens > 0 and any(contexts[i] for i in indices):
                    raise AnalysisError(f"stimulus {indices[0]} is {modality}: contexts apply to text stimuli only")
                chunks = encoder.chunks([values[r] for r in rows], indices, rows, device)
            for chunk in chunks:
                hidden, embeds = _FORWARDS[(text_image, modality)](module, chunk.inputs)
                if len(hidden) != n_blocks[modality] + 1:
                    raise AnalysisError(f"{loaded.name} returned {len(hidden)} hidden states, not "
                                        f"num_hidden_layers + 1 = {n_blocks[modality] + 1}; its layers cannot be named")
                by_width: dict[int, _Positions] = {}  # stages of conv nets / Swin differ in size
                batch_bytes += sum(int(x.nelement()) * x.element_size() for x in chunk.inputs.values())
                batch_bytes += sum(int(h.nelement()) * h.element_size() for h in hidden)
                for layer, (_, index) in towers.items():
                    if index is None:
                        rows_out = embeds
                    else:
                        tokens = _as_tokens(hidden[index])
                        width = tokens.shape[1]
                        positions = by_width.get(width) or by_width.setdefault(width, chunk.positions(width))
                        rows_out = pool(tokens, positions)
                    array = rows_out.to(torch.float32).cpu().numpy()
                    if dims.setdefault(layer, array.shape[1]) != array.shape[1]:
                        raise AnalysisError(f"layer {layer!r} changed size between batches "
                                            f"({dims[layer]} -> {array.shape[1]} units)")
                    if layer not in out:
                        out[layer] = np.empty((len(values), array.shape[1]), dtype=np.float32)
                    out[layer][chunk.rows] = array
                del hidden, embeds
        on_batch(start, {layer: out[layer] for layer in layers})
        if memory_budget_bytes is not None and start == 0:
            per_stimulus = (batch_bytes + sum(a.nbytes for a in out.values())) / len(values)
            step = batch_size_for_budget(memory_budget_bytes, per_stimulus, batch_size)
        del out
        if progress is not None:
            progress(len(values))
        start = stop
    return {layer: (dims[layer],) for layer in layers if layer in dims}
