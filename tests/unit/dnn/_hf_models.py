"""Tiny Hugging Face models built locally (no Hub access), for the tests of ``source: huggingface``.

Each builder writes a model folder (config, random weights, tokenizer / feature extractor / image
processor) with ``save_pretrained`` and returns its path; ``bids_dnn`` loads it like a hub name,
offline. Tokenizers are trained with the ``tokenizers`` library on :data:`CORPUS` with a small
vocabulary, so that words outside the corpus split into several sub-word tokens. Every random
step is seeded (``torch.manual_seed``), so a builder called twice writes the same weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

#: training text of the tokenizers: English with punctuation, accented words and CJK
CORPUS = [
    "The cat sat on the mat.",
    "A dog ran quickly across the park, and the cat watched.",
    "She said: it is raining again!",
    "Le café était très bon, déjà servi.",
    "我们喜欢猫和狗。",
    "Running, jumping and swimming are good exercises.",
    "Numbers like 42 and 7 appear here.",
    "the story so far: a fox met a crow in the forest",
] * 10

WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece_tokenizer(vocab_size: int = 160):
    """A BERT-style tokenizer (lower-cased WordPiece, ``[CLS] A [SEP] B [SEP]``), as a
    ``transformers`` tokenizer object."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizer

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=vocab_size, show_progress=False,
                                                               special_tokens=WORDPIECE_SPECIALS))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    return BertTokenizer(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                         cls_token="[CLS]", mask_token="[MASK]", do_lower_case=True, model_max_length=64)


def bpe_tokenizer(vocab_size: int = 300, specials: tuple[str, ...] = ("<|endoftext|>",)):
    """A GPT-2-style byte-level BPE tokenizer (no padding token), as a ``transformers``
    tokenizer object."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[0], eos_token=specials[0],
                                   unk_token=specials[0], model_max_length=64)


def _save(folder: Path, model: torch.nn.Module, *processors: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    for processor in processors:
        processor.save_pretrained(folder)
    return folder


def build_bert(folder: Path, *, seed: int = 0, n_layers: int = 3, hidden: int = 32) -> Path:
    """A tiny BERT encoder (``n_layers`` blocks of width ``hidden``) with a WordPiece tokenizer."""
    from transformers import BertConfig, BertModel

    tokenizer = wordpiece_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=n_layers,
                        num_attention_heads=4, intermediate_size=2 * hidden, max_position_embeddings=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    return _save(folder, BertModel(config).eval(), tokenizer)


def build_gpt2(folder: Path, *, seed: int = 0, n_layers: int = 2, hidden: int = 32) -> Path:
    """A tiny GPT-2 (causal decoder, no padding token) with a byte-level BPE tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = bpe_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=hidden, n_layer=n_layers, n_head=4, n_positions=64,
                        bos_token_id=eos, eos_token_id=eos, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(seed)
    return _save(folder, GPT2LMHeadModel(config).eval(), tokenizer)


def build_wav2vec2(folder: Path, *, seed: int = 0, feat_extract_norm: str = "layer",
                   sampling_rate: int = 16000) -> Path:
    """A tiny wav2vec2 (2 conv layers, total stride 10 samples; 2 blocks of width 32).

    ``feat_extract_norm="layer"`` (with ``return_attention_mask=True``, like wav2vec2-large-lv60
    and HuBERT-large) takes attention masks; ``"group"`` (wav2vec2-base) does not.
    """
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    layer_norm = feat_extract_norm == "layer"
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                            feat_extract_norm=feat_extract_norm, do_stable_layer_norm=layer_norm,
                            hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0,
                            feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=sampling_rate, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=layer_norm)
    torch.manual_seed(seed)
    return _save(folder, Wav2Vec2Model(config).eval(), extractor)


def build_vit(folder: Path, *, seed: int = 0) -> Path:
    """A tiny ViT (32 px images, 8 px patches: 1 class token + 16 patch tokens; 2 blocks)."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, do_resize=True, do_normalize=True)
    torch.manual_seed(seed)
    return _save(folder, ViTModel(config).eval(), processor)


def build_convnext(folder: Path, *, seed: int = 0) -> Path:
    """A tiny ConvNeXt (2 stages of width 8 and 16): hidden states are (batch, C, H, W) feature maps,
    without a class token."""
    from transformers import ConvNextConfig, ConvNextModel, ViTImageProcessor

    config = ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, patch_size=4,
                            image_size=32)
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, do_resize=True, do_normalize=True)
    torch.manual_seed(seed)
    return _save(folder, ConvNextModel(config).eval(), processor)


def build_clip(folder: Path, *, seed: int = 0) -> Path:
    """A tiny CLIP: causal text tower (BPE tokenizer, ``<|startoftext|> A <|endoftext|>``) and a
    ViT image tower (32 px, 8 px patches), projected to a 16-d joint space."""
    from tokenizers import processors
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = bpe_tokenizer(specials=("<|endoftext|>", "<|startoftext|>"))
    bos = tokenizer.convert_tokens_to_ids("<|startoftext|>")
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", pair="<|startoftext|> $A <|endoftext|> $B:1 <|endoftext|>:1",
        special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)])
    tokenizer.bos_token = "<|startoftext|>"
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64,
                     "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 3, "num_attention_heads": 4},
        projection_dim=16)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    torch.manual_seed(seed)
    return _save(folder, CLIPModel(config).eval(), tokenizer, processor)


def noise_image(seed: int, size: tuple[int, int] = (40, 48)):
    """A seeded RGB noise image (PIL)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def tone(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    """A seeded 1-D float32 sound: a random-frequency sine plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    return (np.sin(2 * np.pi * rng.uniform(100, 800) * t) + 0.3 * rng.normal(size=t.size)).astype(np.float32)
