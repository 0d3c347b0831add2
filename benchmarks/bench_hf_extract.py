"""Benchmark B17 (issue 20): Hugging Face extraction, every hidden state pooled, vs a plain forward.

Two random-init models built here (nothing downloaded): a BERT-like text encoder (hidden 256,
4 blocks, 4 heads, WordPiece vocabulary of ~2000 trained with ``tokenizers`` on a seeded synthetic
corpus) over sentences of 6-60 words, and a wav2vec2-like audio encoder (the full 7-layer
convolutional feature encoder with 256 channels, hidden 256, 4 blocks, layer-norm variant that
takes attention masks) over sounds of 1-3 s at 16 kHz. Throughput of ``extract_hf_features``
(every hidden state ``hidden_states.0 .. .4`` captured from one ``output_hidden_states=True``
forward per batch and mean-pooled over each stimulus's own tokens / valid frames) against a plain
``model(**inputs)`` under ``torch.inference_mode()`` on the same batches, run interleaved in the
same process. Both sides include the preprocessing and the batch padding (the tokenizer's
``padding=True`` call, the feature extractor's ``padding=True, return_attention_mask=True``).
Median of ``--repeats`` runs; target: extraction >= 0.95x the plain forward's throughput.

Agreement gate: the pooled last hidden state equals the masked mean (special tokens and padding /
invalid frames left out) of ``hidden_states[-1]`` of a forward with ``output_hidden_states=True`` on
the plain side's batches (outside the timing), max |diff| <= 1e-4.

Usage::

    python benchmarks/bench_hf_extract.py --smoke      # seconds, agreement only
    python benchmarks/bench_hf_extract.py              # 256 texts, 48 sounds, 3 repeats (~45 s on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET = 0.95
TOL = 1e-4


def _build_text(folder: Path, rng: np.random.Generator, n_layers: int, hidden: int) -> list[str]:
    """A BERT-like model and its WordPiece tokenizer in ``folder``; returns the corpus."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizer

    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lexicon = ["".join(rng.choice(letters, size=rng.integers(2, 11))) for _ in range(3000)]
    corpus = [" ".join(rng.choice(lexicon, size=rng.integers(6, 61))) + "." for _ in range(2000)]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(
        vocab_size=2000, show_progress=False, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer = BertTokenizer(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                              cls_token="[CLS]", mask_token="[MASK]", model_max_length=512)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=n_layers,
                        num_attention_heads=4, intermediate_size=4 * hidden, max_position_embeddings=512)
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return corpus


def _build_audio(folder: Path, n_layers: int, hidden: int, conv: int) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(hidden_size=hidden, num_hidden_layers=n_layers, num_attention_heads=4,
                            intermediate_size=4 * hidden, conv_dim=(conv,) * 7, feat_extract_norm="layer",
                            do_stable_layer_norm=True, num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=8)
    torch.manual_seed(0)
    Wav2Vec2Model(config).eval().save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=True).save_pretrained(folder)


def _timed(fns: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Median seconds of each callable, run interleaved; and each one's last result."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    outs: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}, outs


def _run(kind: str, folder: Path, items: list[Any], batch: int, repeats: int) -> dict[str, Any]:
    from bids_dnn.dnn.hf_extract import extract_hf_features
    from bids_dnn.dnn.huggingface import resolve_hf_layers
    from bids_dnn.dnn.models import load_model
    from bids_dnn.spec import ModelSpec

    loaded = load_model(ModelSpec(name=str(folder), source="huggingface"))
    module = loaded.module
    layers = resolve_hf_layers(loaded, "all")

    def inputs(chunk: list[Any]) -> dict[str, torch.Tensor]:
        if kind == "text":
            return dict(loaded.tokenizer(chunk, padding=True, return_tensors="pt", return_special_tokens_mask=True))
        return dict(loaded.processor(chunk, sampling_rate=loaded.sample_rate, padding=True,
                                     return_attention_mask=True, return_tensors="pt"))

    def plain() -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        outs = []
        with torch.inference_mode():
            for i in range(0, len(items), batch):
                x = inputs(items[i:i + batch])
                special = x.pop("special_tokens_mask", None)
                outs.append((x | ({} if special is None else {"special": special}),
                             module(**x).last_hidden_state))
        return outs

    def ours() -> np.ndarray:
        kept: list[np.ndarray] = []
        extract_hf_features(loaded, items, layers, pooling="mean", batch_size=batch,
                            on_batch=lambda start, arrays: kept.append(arrays[layers[-1]]))
        return np.concatenate(kept)

    ours(), plain()  # warm-up
    seconds, outs = _timed({"ours": ours, "plain": plain}, repeats)
    reference = []
    for x, _ in outs["plain"]:
        with torch.inference_mode():  # the hidden state the layer names (wav2vec2 with stable layer norm:
            # before the final layer norm, so not last_hidden_state)
            last = module(**{k: v for k, v in x.items() if k != "special"},
                          output_hidden_states=True).hidden_states[-1]
        if kind == "text":
            own = x["attention_mask"].bool() & ~x["special"].bool()
        else:
            frames = module._get_feat_extract_output_lengths(x["attention_mask"].sum(dim=1))
            own = torch.arange(last.shape[1])[None] < frames[:, None]
        reference.append(((last * own[..., None]).sum(dim=1) / own.sum(dim=1, keepdim=True)).numpy())
    diff = float(np.abs(outs["ours"] - np.concatenate(reference)).max())
    n = len(items)
    return {"benchmark": "B17", "model": kind, "n_stimuli": n, "batch_size": batch, "n_layers": len(layers),
            "n_parameters": sum(p.numel() for p in module.parameters()), "threads": torch.get_num_threads(),
            "plain_per_s": n / seconds["plain"], "ours_per_s": n / seconds["ours"],
            "throughput_ratio": seconds["plain"] / seconds["ours"], "last_layer_max_abs_diff": diff}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat, agreement only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-texts", type=int, default=256)
    parser.add_argument("--n-sounds", type=int, default=48)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("B17 skipped: transformers is not installed (pip install 'bids_dnn[hf]')")
        return 0
    from bids_dnn.dnn.extract import tune_allocator

    tune_allocator()  # both sides run under the allocator settings bids_dnn uses
    torch.set_flush_denormal(True)
    rng = np.random.default_rng(20261125)
    hidden, n_layers, conv = (32, 2, 32) if args.smoke else (256, 4, 256)
    if args.smoke:
        args.repeats, args.n_texts, args.n_sounds = 1, 12, 6
    failures, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = _build_text(Path(tmp) / "text", rng, n_layers, hidden)
        _build_audio(Path(tmp) / "audio", n_layers, hidden, conv)
        texts = list(rng.choice(corpus, size=args.n_texts))
        seconds = rng.uniform(1.0, 3.0, size=args.n_sounds) * (0.25 if args.smoke else 1.0)
        sounds = [rng.normal(size=int(s * 16000)).astype(np.float32) for s in seconds]
        for kind, items, batch in (("text", texts, 16), ("audio", sounds, 8)):
            result = _run(kind, Path(tmp) / kind, items, batch, args.repeats)
            results.append(result)
            print(json.dumps(result), flush=True)
            if result["last_layer_max_abs_diff"] > TOL:
                failures.append(f"{kind}: max |diff| {result['last_layer_max_abs_diff']:.1e}")
            if not args.smoke and result["throughput_ratio"] < TARGET:
                failures.append(f"{kind}: {result['throughput_ratio']:.3f}x < {TARGET}x")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print("FAILED:\n  " + "\n  ".join(failures) if failures else
          "agreement passed" + ("" if args.smoke else f" and throughput >= {TARGET}x"))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
