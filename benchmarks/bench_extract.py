"""Benchmarks B9 (hook overhead) and B10 (feature writer vs extraction rate).

B9: AlexNet and ResNet50 with seeded random weights, 224 px input. Throughput of
``extract_features`` capturing every ``top_level`` layer (AlexNet 8, ResNet50 6) against a
plain ``model(x)`` under ``torch.inference_mode()`` on the same batches, both with the same
memory format (channels_last on CUDA; on CPU both contiguous unless ``--channels-last``).
Both sides include the PIL preprocessing; the model-only baseline is reported too. Median of
``--repeats`` runs. The captured final layer must equal ``model(x)``. Denormal floats are
flushed to zero (``torch.set_flush_denormal``) for both sides: random-weight networks can
produce them, and they make CPU timings erratic.

B10: ``FeatureWriter`` throughput (stimuli/s, float16, 7 AlexNet layers ~ 0.5 M units per
stimulus) writing synthetic batches through :func:`ensure_features`, against the AlexNet
extraction rate of B9, plus the file size.

Usage::

    python benchmarks/bench_extract.py --smoke          # seconds, CPU
    python benchmarks/bench_extract.py                  # 64 images x 3 repeats, 1000 x 7 layers
    python benchmarks/bench_extract.py --device cuda --n-images 512 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bids_dnn.backend import resolve_device  # noqa: E402
from bids_dnn.dnn.extract import extract_features, tune_allocator  # noqa: E402
from bids_dnn.features.store import ensure_features, read_features  # noqa: E402
from bids_dnn.dnn.layers import resolve_layers  # noqa: E402
from bids_dnn.dnn.models import LoadedModel, load_model  # noqa: E402
from bids_dnn.spec import ModelSpec  # noqa: E402


def _images(n: int, size: int = 224, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _plain(loaded: LoadedModel, images: list[Image.Image], batch: int, device: str,
           channels_last: bool, with_transform: bool, cache: dict[int, torch.Tensor]) -> float:
    """Seconds for transform + model(x) (or model only, on cached tensors) over all images."""
    module = loaded.module.to(device)
    if channels_last:
        module.to(memory_format=torch.channels_last)
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = (torch.stack([loaded.transform(im) for im in images[i:i + batch]])
                 if with_transform or i not in cache else cache[i])
            cache.setdefault(i, x)
            x = x.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            module(x).cpu()
    _sync(device)
    elapsed = time.perf_counter() - start
    if channels_last:
        module.to(memory_format=torch.contiguous_format)
    return elapsed


def _hooked(loaded: LoadedModel, images: list[Image.Image], layers: list[str], batch: int,
            device: str, channels_last: bool) -> tuple[float, dict[str, list[np.ndarray]]]:
    kept: dict[str, list[np.ndarray]] = {}

    def on_batch(start: int, arrays: dict[str, np.ndarray]) -> None:
        kept.setdefault(layers[-1], []).append(arrays[layers[-1]])

    _sync(device)
    start = time.perf_counter()
    extract_features(loaded, images, layers, batch_size=batch, device=device,
                     on_batch=on_batch, channels_last=channels_last)
    _sync(device)
    return time.perf_counter() - start, kept


def bench_b9(name: str, images: list[Image.Image], batch: int, device: str, repeats: int,
             channels_last: bool) -> dict[str, Any]:
    loaded = load_model(ModelSpec(name=name, weights="random", init_seed=0))
    layers = resolve_layers(loaded.module, "top_level", model_name=name)
    cache: dict[int, torch.Tensor] = {}
    _plain(loaded, images[:batch], batch, device, channels_last, True, {})  # warm-up
    _hooked(loaded, images[:batch], layers, batch, device, channels_last)
    plain, model_only, hooked = [], [], []
    kept: dict[str, list[np.ndarray]] = {}
    for _ in range(repeats):
        plain.append(_plain(loaded, images, batch, device, channels_last, True, cache))
        model_only.append(_plain(loaded, images, batch, device, channels_last, False, cache))
        seconds, kept = _hooked(loaded, images, layers, batch, device, channels_last)
        hooked.append(seconds)
    n = len(images)
    with torch.inference_mode():  # equality of the captured final layer with model(x)
        module = loaded.module.to(device)
        reference = np.concatenate([module(cache[i].to(device)).float().cpu().numpy()
                                    for i in sorted(cache)])
    max_diff = float(np.abs(np.concatenate(kept[layers[-1]]) - reference).max())
    result = {
        "benchmark": "B9", "model": name, "device": device, "n_images": n, "batch_size": batch,
        "channels_last": channels_last, "n_layers": len(layers), "layers": layers,
        "plain_img_per_s": n / statistics.median(plain),
        "model_only_img_per_s": n / statistics.median(model_only),
        "hooked_img_per_s": n / statistics.median(hooked),
        "final_layer_max_abs_diff": max_diff,
        "final_layer_equal": bool(np.allclose(np.concatenate(kept[layers[-1]]), reference, atol=1e-4)),
    }
    result["throughput_ratio_hooked_vs_plain"] = result["hooked_img_per_s"] / result["plain_img_per_s"]
    return result


def bench_b10(n_stimuli: int, extraction_rate: float, batch: int, folder: Path) -> dict[str, Any]:
    loaded = load_model(ModelSpec(name="alexnet", weights="random"))
    layers = resolve_layers(loaded.module, "top_level")[:7]
    shapes = extract_features(loaded, _images(1), layers, on_batch=lambda s, a: None)
    units = {name: int(np.prod(shape)) for name, shape in shapes.items()}
    rng = np.random.default_rng(0)
    pool = {name: rng.normal(size=(batch, u)).astype(np.float32) for name, u in units.items()}
    path = folder / "b10.h5"

    def compute(writer: Any) -> None:
        for start in range(0, n_stimuli, batch):
            rows = min(batch, n_stimuli - start)
            writer.write_batch(start, {name: array[:rows] for name, array in pool.items()})
        writer.set_layer_shapes(shapes)

    start = time.perf_counter()
    ensure_features(path, "bench", compute, stim_ids=[f"s{i}" for i in range(n_stimuli)], dtype="float16")
    seconds = time.perf_counter() - start
    size = path.stat().st_size
    check = read_features(path, [layers[-1]])
    assert check.layers[layers[-1]].shape == (n_stimuli, units[layers[-1]])
    rate = n_stimuli / seconds
    return {
        "benchmark": "B10", "n_stimuli": n_stimuli, "n_layers": len(layers),
        "units_per_stimulus": sum(units.values()), "dtype": "float16",
        "writer_stimuli_per_s": rate, "writer_MB_per_s": size / seconds / 1e6,
        "alexnet_extraction_stimuli_per_s": extraction_rate,
        "writer_vs_extraction": rate / extraction_rate if extraction_rate else None,
        "file_size_MB": size / 1e6, "MB_per_stimulus": size / n_stimuli / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--b10-stimuli", type=int, default=1000)
    parser.add_argument("--channels-last", action="store_true", help="also on CPU")
    parser.add_argument("--models", default="alexnet,resnet50")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n_images, args.batch_size, args.repeats, args.b10_stimuli = 8, 4, 1, 40
    device = resolve_device(args.device)
    channels_last = args.channels_last or device.startswith("cuda")
    torch.set_flush_denormal(True)
    # both passes run under the allocator settings bids_dnn uses (extract.tune_allocator)
    tuned = tune_allocator()
    images = _images(args.n_images)
    results = []
    for name in args.models.split(","):
        results.append({**bench_b9(name, images, args.batch_size, device, args.repeats, channels_last),
                        "allocator_tuned": tuned})
        print(json.dumps(results[-1]), flush=True)
    rate = next((r["hooked_img_per_s"] for r in results if r["model"] == "alexnet"), 0.0)
    with tempfile.TemporaryDirectory() as folder:
        results.append(bench_b10(args.b10_stimuli, rate, args.batch_size, Path(folder)))
    print(json.dumps(results[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0 if all(r.get("final_layer_equal", True) for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
