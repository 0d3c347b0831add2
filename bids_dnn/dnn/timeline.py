"""Features on a stimulus timeline (naturalistic designs): one feature vector per sampled video
frame, or per word of a story read with the words before it as context. The times of the
samples and their resampling to the BOLD acquisition times are the caller's business
(:mod:`bids_dnn.timeseries`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["MAX_CONTEXT_WORDS", "frame_features", "word_contexts", "word_features"]

#: words before a word that are handed to the tokenizer as its context (the model keeps the last
#: ``context_tokens`` tokens of them)
MAX_CONTEXT_WORDS = 512


def _collect(layers: list[str]) -> tuple[dict[str, list[np.ndarray]], Any]:
    chunks: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}

    def keep(start: int, batch: dict[str, np.ndarray]) -> None:
        for layer, values in batch.items():
            chunks[layer].append(np.asarray(values, dtype=np.float32))

    return chunks, keep


def _stack(chunks: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    return {layer: np.concatenate(parts, axis=0) for layer, parts in chunks.items()}


def frame_features(loaded: Any, frames: Sequence[Any], layers: list[str], *, batch_size: int = 16,
                   device: str = "cpu", token_policy: str = "cls",
                   memory_budget_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Activations of every frame (an image network; each frame on its own, not averaged).

    Parameters
    ----------
    loaded : LoadedModel
        An image model (torchvision, timm, ...), or a ``source: huggingface`` vision model.
    frames : sequence of PIL.Image.Image, length n_frames
    layers : list of str

    Returns
    -------
    dict of str to numpy.ndarray, each (n_frames, n_units) float32
    """
    chunks, keep = _collect(layers)
    if loaded.source == "huggingface":
        from bids_dnn.dnn.hf_extract import extract_hf_features

        extract_hf_features(loaded, list(frames), layers, batch_size=batch_size, device=device, on_batch=keep,
                            memory_budget_bytes=memory_budget_bytes)
    else:
        from bids_dnn.dnn.extract import extract_features

        extract_features(loaded, list(frames), layers, batch_size=batch_size, device=device,
                         token_policy=token_policy, on_batch=keep, memory_budget_bytes=memory_budget_bytes)
    return _stack(chunks)


def word_contexts(words: Sequence[str], max_words: int = MAX_CONTEXT_WORDS) -> list[str | None]:
    """Each word's context: the (at most ``max_words``) words before it, joined by spaces; None for the first."""
    return [" ".join(words[max(0, i - max_words):i]) or None for i in range(len(words))]


def word_features(loaded: Any, words: Sequence[str], layers: list[str], *, pooling: str = "auto",
                  context_tokens: int = 0, batch_size: int = 16, device: str = "cpu",
                  memory_budget_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Hidden states of every word of a story, each read after the words before it.

    Parameters
    ----------
    loaded : LoadedModel
        A ``source: huggingface`` text model.
    words : sequence of str, length n_words
        The story's words in order (one run).
    context_tokens : int
        The most recent tokens of the preceding words fed before each word (0: the word alone).
    pooling : str
        Over the word's own tokens (:mod:`bids_dnn.dnn.hf_extract`).

    Returns
    -------
    dict of str to numpy.ndarray, each (n_words, n_units) float32
    """
    from bids_dnn.dnn.hf_extract import extract_hf_features

    chunks, keep = _collect(layers)
    contexts = word_contexts(words) if context_tokens else None
    extract_hf_features(loaded, [str(w) for w in words], layers, pooling=pooling, batch_size=batch_size,
                        device=device, on_batch=keep, contexts=contexts, context_tokens=context_tokens,
                        memory_budget_bytes=memory_budget_bytes)
    return _stack(chunks)
