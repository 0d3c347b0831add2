"""Preprocessing of a network's input: PIL image -> normalised tensor, and where its values come from.

:class:`ImageTransform` resizes, centre-crops and normalises; :func:`transform_for` chooses the
values: the spec's ``transform``, else those of the weights (torchvision presets, timm data
configs, open_clip towers), else ImageNet's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from bids_dnn.spec import IMAGENET_MEAN, IMAGENET_STD, TransformSpec

__all__ = ["INTERPOLATIONS", "ImageTransform", "torchvision_weights_transform", "transform_for"]

#: resampling filters a transform may name (others fall back to bilinear)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> normalised tensor of shape (3, crop, crop).

    Converts to RGB, resizes the shorter side to ``resize`` pixels (aspect preserved,
    antialiased), crops the centre ``crop`` x ``crop`` square, scales to [0, 1] and normalises
    with ``mean`` / ``std``. Picklable, so it can travel to data-loading processes.
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __call__(self, image: Image.Image) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        image = self.resized(image.convert("RGB"))
        image = F.center_crop(image, [self.crop, self.crop])
        tensor = F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)
        return F.normalize(tensor, mean=list(self.mean), std=list(self.std))

    def resized(self, image: Image.Image) -> Image.Image:
        """The resize step alone: shorter side to ``resize`` pixels, antialiased (an image of
        that size is returned as it is). :func:`bids_dnn.io.media.load_image` applies it
        to large pictures while decoding (``fit``), so that they are never held at full size as
        floats; the network input is the same."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        return F.resize(image, [self.resize], interpolation=InterpolationMode(self.interpolation), antialias=True)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (recorded as the ``preprocessing`` provenance)."""
        return {
            "resize_shorter_side": self.resize,
            "center_crop": self.crop,
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "interpolation": self.interpolation,
            "antialias": True,
            "color": "RGB",
        }


def transform_for(spec_transform: TransformSpec | None, fallback: ImageTransform | None,
                   origin: str) -> tuple[ImageTransform, dict[str, Any]]:
    """The transform from the spec, else ``fallback`` (the weights' own), else ImageNet."""
    if spec_transform is not None:
        transform = ImageTransform(spec_transform.resize, spec_transform.crop,
                                   tuple(spec_transform.mean), tuple(spec_transform.std))
        origin = "spec"
    elif fallback is not None:
        transform = fallback
    else:
        transform, origin = ImageTransform(), "imagenet_default"
    return transform, {**transform.describe(), "origin": origin}


def torchvision_weights_transform(weights: Any) -> ImageTransform | None:
    """The resize / crop / mean / std of a torchvision weights entry, if it has them."""
    try:
        preset = weights.transforms()
        resize = min(int(v) for v in preset.resize_size)  # video presets give (h, w)
        crop = int(preset.crop_size[0])
        mode = getattr(preset.interpolation, "value", "bilinear")
        return ImageTransform(resize, crop, tuple(float(v) for v in preset.mean),
                              tuple(float(v) for v in preset.std),
                              mode if mode in INTERPOLATIONS else "bilinear")
    except (AttributeError, TypeError, ValueError):
        return None
