"""Tiny Hugging Face model folders built offline for the language and sound demos (and tests):
a BERT-style text encoder with a WordPiece tokenizer trained on the demo's sentences, and a
wav2vec 2.0-style audio encoder with its feature extractor. Only configurations and
preprocessor files are written; the weights are a seeded random initialisation made when the
model is loaded with ``weights: random`` (no download, nothing large on disk).

The configurations widen the weight initialisation (``initializer_range`` 0.3 for the text model,
0.5 for the audio model, instead of transformers' 0.02): with the default, every block of a
random-init transformer adds almost nothing to its residual stream and all hidden states share
one geometry (layer x layer RDM Spearman 1.00 on the demo sentences), so no layer could be told
from another. With the wider initialisation the text model's blocks differ (RDM Spearman 0.31
between ``hidden_states.0`` and ``.1``, 0.17 between ``.1`` and ``.4``); the audio model's
transformer blocks stay alike (0.88 to 0.98) but differ from its convolutional features
(``hidden_states.0``, 0.73 to 0.77).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["TEXT_MODEL_SIZE", "AUDIO_MODEL_SIZE", "AUDIO_SAMPLE_RATE", "write_text_model", "write_audio_model"]

#: the demo text encoder: hidden size, blocks, attention heads, feed-forward size, initialisation SD
TEXT_MODEL_SIZE = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128,
                   "initializer_range": 0.3}
#: the demo audio encoder (three convolutions with strides 5, 2, 2: one frame per 20 samples)
AUDIO_MODEL_SIZE = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128,
                    "initializer_range": 0.5}
AUDIO_SAMPLE_RATE = 16_000


def _optional_transformers():  # noqa: ANN202 - the module
    try:
        import transformers
    except ImportError:  # pragma: no cover - the hf extra is part of the test environment
        from bids_dnn.errors import AnalysisError

        raise AnalysisError("the language and sound demos need the Hugging Face libraries (transformers, "
                            "tokenizers), which are not installed", "pip install 'bids_dnn[hf]'") from None
    return transformers


def write_text_model(folder: Path, corpus: Sequence[str], vocab_size: int = 400) -> Path:
    """A BERT-style encoder configuration and a WordPiece tokenizer whose vocabulary is the corpus's.

    The vocabulary depends on the corpus only (a trained WordPiece vocabulary does not: the
    ``tokenizers`` trainer breaks ties between equally frequent merges in hash-map order, so two
    trainings on one corpus gave 285 or 286 entries and other token ids, hence other embeddings of
    a word under one ``init_seed``): the special tokens (ids 0-4), then the corpus's characters,
    their ``##`` continuations and its whole words (lower-cased, split on whitespace and
    punctuation), each sorted, so every word of the corpus is one token.

    Parameters
    ----------
    folder : Path
        Created; receives ``config.json`` and the tokenizer files (``save_pretrained``).
    corpus : sequence of str
        Texts the vocabulary is taken from.
    vocab_size : int
        Largest vocabulary.

    Returns
    -------
    Path
        ``folder``.

    Raises
    ------
    ValueError
        The corpus needs more than ``vocab_size`` entries.
    """
    import re

    transformers = _optional_transformers()
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for text in corpus for w in re.findall(r"\w+|[^\w\s]", text.lower())})
    chars = sorted({c for w in words for c in w})
    tokens = special + chars + ["##" + c for c in chars] + [w for w in words if len(w) > 1]
    if len(tokens) > vocab_size:
        raise ValueError(f"the corpus needs {len(tokens)} vocabulary entries, more than vocab_size {vocab_size}")
    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(tokens)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id),
                                                                                   ("[SEP]", sep_id)])
    fast = transformers.BertTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                          cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    config = transformers.BertConfig(vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=128,
                                     **TEXT_MODEL_SIZE)
    config.save_pretrained(folder)
    return folder


def write_audio_model(folder: Path) -> Path:
    """A wav2vec 2.0-style encoder configuration and its feature extractor (16 kHz, normalised
    input, attention masks)."""
    transformers = _optional_transformers()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = transformers.Wav2Vec2Config(
        conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), num_feat_extract_layers=3,
        feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, vocab_size=32, **AUDIO_MODEL_SIZE)
    config.save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=AUDIO_SAMPLE_RATE, padding_value=0.0,
                                          do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    return folder
