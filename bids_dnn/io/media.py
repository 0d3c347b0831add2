"""Any still image Pillow opens -> the 8-bit RGB picture a network sees.

``Image.convert("RGB")`` alone gives the wrong picture for several modes: it clips 16-bit
grayscale (``I;16``, ``I``) to 255 (a white image), truncates float images (``F``, values in
[0, 1]) to black, and drops every kind of transparency. :func:`to_rgb` instead

- scales high-bit-depth data to the 8-bit range: 16-bit integers by 255 / 65535, 32-bit integers
  (``I``) the same when they lie in [0, 65535], floats by 255 when they lie in [0, 1] and as they
  are when they lie in [0, 255];
- composites every kind of transparency over white: alpha channels (``RGBA``, ``LA``, ``PA``,
  premultiplied ``RGBa``), palette transparency (``P`` + ``transparency``) and colour keys of
  grayscale and RGB images (``transparency`` in ``info``), 16-bit keys included;
- converts the other colour spaces (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``) with
  Pillow's conversion;

and refuses what it cannot convert faithfully (:class:`UnsupportedImageError`: float data outside
[0, 255] or not finite, integers outside [0, 65535], modes Pillow cannot convert), rather than
guessing.

**Decoded size.** A network sees a stimulus resized to a few hundred pixels (the model's
transform: shorter side to ``resize``, e.g. 256, then a centre crop), so a 144-megapixel photo
need not be held at full size: decoded naively it takes about 10 GB (the 8-bit picture, then the
float64 arrays of the conversion). :func:`load_image` with ``shorter_side`` handles an image with at
least twice that many pixels on its shorter side at a smaller size. JPEG files are decoded at a
reduced scale by libjpeg itself (``Image.draft``: 1/2, 1/4 or 1/8, DCT scaling), keeping at least
``shorter_side`` pixels. Other formats are decoded, then given the model's own resize (``fit``)
before the float conversion, so the network input is that of the full-size picture up to the
rounding of 8-bit values; without ``fit`` (checks, thumbnails) they are averaged over ``k x k``
blocks (``Image.reduce``). Feature extraction asks for ``DECODE_HEADROOM`` (4) times the model's
resize target: a DCT-scaled JPEG keeps 4 to 8 times that target on its shorter side, and
the network input is that of a full-size decode for opaque non-JPEG images (0 difference), and
differs by at most 2 of 255 levels for JPEG files (DCT scaling; mean 0.1 to 0.4) and with
transparency (8-bit rounding of the premultiplied values): measured on pixel noise in every mode, a
photo enlarged 24 times and a fine grating (``tests/test_hostile_inputs.py``).
Transparency is averaged premultiplied, so compositing over white commutes with the reduction;
16-bit grayscale is scaled to 8 bits first (as :func:`to_rgb` scales it). Float (``F``) images are
decoded at full size: their value range, which decides the scaling, is a property of the whole
picture.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

#: :func:`load_image` callers keep this multiple of the model's resize target on the shorter side
DECODE_HEADROOM = 4
#: Pillow modes holding more than 8 bits per sample, with the full-scale value of their integers
_HIGH_BIT_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": None}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class UnsupportedImageError(ValueError):
    """An image whose pixel values cannot be mapped to an 8-bit picture without guessing."""


def load_image(path: Path, shorter_side: int | None = None,
               fit: Callable[[Any], Any] | None = None) -> Any:
    """Open an image file as the 8-bit RGB picture of :func:`to_rgb`.

    Pillow's decompression-bomb warning (images above about 89 megapixels) is not shown: such
    images load (reduced, with ``shorter_side``), and :func:`image_size` lets the caller log their
    size once. Pillow still refuses images above twice its limit (``DecompressionBombError``).

    Parameters
    ----------
    path : Path
    shorter_side : int, optional
        An image with at least twice this many pixels on its shorter side is not held at full
        size: JPEG files are decoded at a reduced DCT scale that keeps at least this many, others
        are reduced after decoding (by ``fit``, else by whole-block averaging, :func:`reduced`).
        None: full size.
    fit : callable, optional
        The model's own resize (e.g. :meth:`bids_dnn.dnn.transforms.ImageTransform.resized`), applied to
        such a large picture instead of the block averaging, so that the network input is the
        same as from the full-size picture.

    Returns
    -------
    PIL.Image.Image, mode ``RGB``
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            large = shorter_side is not None and reduction_factor(image.size, shorter_side) >= 2
            if large and image.format == "JPEG":
                image.draft(image.mode, _draft_request(image.size, shorter_side))
            image.load()
            if large:
                return to_rgb(reduced(image, shorter_side, fit))
            return to_rgb(image)


def image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the file's header (nothing is decoded); None when unreadable."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return (int(image.size[0]), int(image.size[1]))
    except Exception:  # noqa: BLE001 - the caller's decoding reports the problem
        return None


def reduction_factor(size: tuple[int, int], shorter_side: int) -> int:
    """The largest whole ``k`` that keeps at least ``shorter_side`` pixels on the shorter side."""
    return max(1, min(size) // max(1, shorter_side))


def _draft_request(size: tuple[int, int], shorter_side: int) -> tuple[int, int]:
    """The size to ask ``Image.draft`` for: libjpeg picks the largest DCT scale (1/2, 1/4, 1/8)
    whose result is at least this large, so the shorter side stays >= ``shorter_side``."""
    factor = min(size) / max(1, shorter_side)
    if factor <= 1:
        return size
    return (int(np.ceil(size[0] / factor)), int(np.ceil(size[1] / factor)))


def reduced(image: Any, shorter_side: int, fit: Callable[[Any], Any] | None = None) -> Any:
    """A smaller ``image`` whose :func:`to_rgb` rendering is that of ``image`` made smaller.

    With ``fit`` (the model's resize), ``fit`` is applied; else ``image`` is averaged over
    ``k x k`` blocks (:func:`reduction_factor`). Either way on an 8-bit picture with the same
    rendering (:func:`_eight_bit`), where averaging pixels averages the picture; transparency is
    averaged premultiplied (Pillow's resize does so itself for RGBA and LA), so that compositing
    over white commutes with it. ``image`` itself is returned when it is small enough, or for
    float images (their value range, which decides the scaling, is a property of the whole
    picture).
    """
    factor = reduction_factor(image.size, shorter_side)
    prepared = _eight_bit(image) if factor >= 2 else None
    if prepared is None:
        return image
    if fit is not None:
        return fit(prepared)
    premultiplied = {"RGBA": "RGBa", "LA": "La"}.get(prepared.mode)
    if premultiplied is None:
        return prepared.reduce(factor)
    return prepared.convert(premultiplied).reduce(factor).convert(prepared.mode)


#: rows of a high-bit-depth image scaled to 8 bits at a time (bounds the float64 temporary)
_SCALE_ROWS = 256


def _eight_bit(image: Any) -> Any | None:
    """``image`` as an ``L``, ``LA``, ``RGB`` or ``RGBA`` picture with the same :func:`to_rgb`
    rendering; None for float images and integers outside [0, 65535] (left to :func:`to_rgb`)."""
    mode, keyed = image.mode, "transparency" in image.info
    if mode == "F":
        return None
    if mode in _HIGH_BIT_MODES:
        low, high = image.getextrema()
        if low < 0 or high > 65535:
            return None
        return _high_bit_as_8bit(image)
    if mode in ("L", "RGB", "RGBA", "LA") and not keyed:
        return image
    if mode in _ALPHA_MODES or keyed:
        return _converted_image(image, "RGBA")
    return _converted_image(image, "L" if mode == "1" else "RGB")


def _high_bit_as_8bit(image: Any) -> Any:
    """16-bit (or ``I`` within [0, 65535]) grayscale scaled to ``L`` as :func:`to_rgb` scales it,
    a few rows at a time; a colour key becomes an alpha channel (``LA``)."""
    from PIL import Image

    values = np.asarray(image)
    gray = np.empty(values.shape, dtype=np.uint8)
    for start in range(0, values.shape[0], _SCALE_ROWS):
        rows = values[start:start + _SCALE_ROWS].astype(np.float64)
        gray[start:start + _SCALE_ROWS] = np.clip(np.rint(rows * (255.0 / 65535)), 0, 255)
    picture = Image.fromarray(gray, "L")
    key = image.info.get("transparency")
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        alpha = Image.fromarray(np.where(values != key, 255, 0).astype(np.uint8), "L")
        return Image.merge("LA", (picture, alpha))
    return picture


def _converted_image(image: Any, mode: str) -> Any:
    try:
        return image.convert(mode)
    except (ValueError, OSError) as exc:
        raise UnsupportedImageError(f"Pillow mode {image.mode} cannot be converted to {mode} ({exc})") from exc


def to_rgb(image: Any) -> Any:
    """The 8-bit RGB rendering of ``image``, transparency composited over white.

    Parameters
    ----------
    image : PIL.Image.Image
        Any mode.

    Returns
    -------
    PIL.Image.Image, mode ``RGB``

    Raises
    ------
    UnsupportedImageError
        Values outside the ranges above, non-finite floats, or a mode Pillow cannot convert.
    """
    from PIL import Image

    rgb, alpha = _rgb_and_alpha(image)
    if alpha is not None:
        rgb = rgb * alpha[..., None] + 255.0 * (1.0 - alpha[..., None])
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")


def _rgb_and_alpha(image: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(h, w, 3) float RGB values in [0, 255] and (h, w) opacity in [0, 1] (None: opaque)."""
    mode = image.mode
    if mode in _HIGH_BIT_MODES:
        values = np.asarray(image)
        alpha = None
        key = image.info.get("transparency")
        if isinstance(key, (int, float)) and not isinstance(key, bool):
            alpha = (values != key).astype(np.float64)
        gray = _scaled_to_8bit(values, mode)
        return np.repeat(gray[..., None], 3, axis=2), alpha
    has_key = "transparency" in image.info
    if mode not in _ALPHA_MODES and not has_key:
        return _converted(image, "RGB").astype(np.float64), None
    rgba = _converted(image, "RGBA").astype(np.float64)
    return rgba[..., :3], rgba[..., 3] / 255.0


def _converted(image: Any, mode: str) -> np.ndarray:
    try:
        return np.asarray(image.convert(mode))
    except (ValueError, OSError) as exc:
        raise UnsupportedImageError(f"Pillow mode {image.mode} cannot be converted to {mode} ({exc})") from exc


def _scaled_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """High-bit-depth samples mapped to [0, 255] (see the module docstring)."""
    values = values.astype(np.float64)
    full_scale = _HIGH_BIT_MODES[mode]
    if full_scale is not None:
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if low < 0 or high > full_scale:
            raise UnsupportedImageError(
                f"{mode} image values span [{low:g}, {high:g}], outside the 16-bit range [0, {full_scale}]; "
                "save it as an 8- or 16-bit image")
        return values * (255.0 / full_scale)
    if not np.isfinite(values).all():
        raise UnsupportedImageError("float image holds NaN or infinite values; save it as an 8-bit image")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low >= 0 and high <= 1:
        return values * 255.0
    if low >= 0 and high <= 255:
        return values
    raise UnsupportedImageError(
        f"float image values span [{low:g}, {high:g}]: only [0, 1] or [0, 255] map to a picture "
        "without guessing; rescale it or save it as an 8-bit image")
