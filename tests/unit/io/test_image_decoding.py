"""Every Pillow mode becomes the right 8-bit RGB picture (issue: 16-bit PNGs were white, float
TIFFs black, transparency dropped). Each case is compared with a reference rendering computed
independently with NumPy from the same picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bids_dnn.io.media import UnsupportedImageError, load_image

SIZE = (24, 32)  # rows, columns


@pytest.fixture
def gray8() -> np.ndarray:
    """A seeded 8-bit grayscale picture covering the whole range."""
    values = np.random.default_rng(7).integers(0, 256, SIZE, dtype=np.uint8)
    values[0, 0], values[0, 1] = 0, 255
    return values


@pytest.fixture
def rgb8() -> np.ndarray:
    return np.random.default_rng(8).integers(0, 256, SIZE + (3,), dtype=np.uint8)


@pytest.fixture
def alpha8() -> np.ndarray:
    alpha = np.random.default_rng(9).integers(0, 256, SIZE, dtype=np.uint8)
    alpha[:4] = 0  # fully transparent band
    alpha[4:8] = 255  # opaque band
    return alpha


def over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Reference compositing: alpha * colour + (1 - alpha) * white, rounded."""
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.rint(rgb.astype(np.float64) * a + 255.0 * (1 - a)).astype(np.uint8)


def decoded(path: Path) -> np.ndarray:
    image = load_image(path)
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def gray_as_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2).astype(int)


def test_16bit_grayscale_png_is_the_8bit_picture(tmp_path: Path, gray8: np.ndarray) -> None:
    path = tmp_path / "g16.png"
    Image.fromarray(gray8.astype(np.uint16) * 257).save(path)  # 255 -> 65535
    with Image.open(path) as image:
        assert image.mode.startswith("I")  # Pillow opens it as 16-bit
    np.testing.assert_array_equal(decoded(path), gray_as_rgb(gray8))


def test_32bit_integer_image_in_16bit_range(tmp_path: Path, gray8: np.ndarray) -> None:
    path = tmp_path / "i32.tif"
    Image.fromarray(gray8.astype(np.int32) * 257, mode="I").save(path)
    np.testing.assert_array_equal(decoded(path), gray_as_rgb(gray8))


def test_float_tiff_in_unit_range_is_not_black(tmp_path: Path, gray8: np.ndarray) -> None:
    path = tmp_path / "f.tif"
    Image.fromarray(gray8.astype(np.float32) / 255.0).save(path)
    with Image.open(path) as image:
        assert image.mode == "F"
    np.testing.assert_allclose(decoded(path), gray_as_rgb(gray8), atol=1)


def test_float_tiff_in_byte_range(tmp_path: Path, gray8: np.ndarray) -> None:
    path = tmp_path / "f255.tif"
    Image.fromarray(gray8.astype(np.float32)).save(path)
    np.testing.assert_array_equal(decoded(path), gray_as_rgb(gray8))


@pytest.mark.parametrize("values", [np.array([[-1.0, 2.0]]), np.array([[0.0, 300.0]]), np.array([[np.nan, 0.5]])],
                         ids=["negative", "above-255", "nan"])
def test_float_values_without_a_convention_are_refused(tmp_path: Path, values: np.ndarray) -> None:
    path = tmp_path / "odd.tif"
    Image.fromarray(values.astype(np.float32)).save(path)
    with pytest.raises(UnsupportedImageError, match="float image"):
        load_image(path)


def test_grayscale_alpha_composited_over_white(tmp_path: Path, gray8: np.ndarray, alpha8: np.ndarray) -> None:
    path = tmp_path / "la.png"
    Image.fromarray(np.stack([gray8, alpha8], axis=2), mode="LA").save(path)
    np.testing.assert_array_equal(decoded(path), over_white(gray_as_rgb(gray8), alpha8))


def test_rgba_composited_over_white(tmp_path: Path, rgb8: np.ndarray, alpha8: np.ndarray) -> None:
    path = tmp_path / "rgba.png"
    Image.fromarray(np.concatenate([rgb8, alpha8[..., None]], axis=2), mode="RGBA").save(path)
    np.testing.assert_array_equal(decoded(path), over_white(rgb8, alpha8))


def test_palette_with_transparent_index(tmp_path: Path) -> None:
    indices = np.random.default_rng(3).integers(0, 4, SIZE, dtype=np.uint8)
    palette = np.array([[200, 10, 10], [10, 200, 10], [10, 10, 200], [0, 0, 0]], dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.ravel().tolist())
    path = tmp_path / "p.png"
    image.save(path, transparency=3)  # index 3 (black) is transparent
    expected = palette[indices].astype(int)
    expected[indices == 3] = 255
    np.testing.assert_array_equal(decoded(path), expected)


def test_rgb_colour_key(tmp_path: Path, rgb8: np.ndarray) -> None:
    key = (12, 34, 56)
    rgb = rgb8.copy()
    rgb[:5, :5] = key
    path = tmp_path / "key.png"
    Image.fromarray(rgb).save(path, transparency=key)
    expected = rgb.astype(int)
    expected[(rgb == key).all(axis=2)] = 255
    np.testing.assert_array_equal(decoded(path), expected)


def test_grayscale_colour_key_8_and_16_bit(tmp_path: Path, gray8: np.ndarray) -> None:
    gray = gray8.copy()
    gray[:3] = 17
    expected = gray_as_rgb(gray)
    expected[:3] = 255
    expected[gray == 17] = 255
    path8 = tmp_path / "key8.png"
    Image.fromarray(gray).save(path8, transparency=17)
    np.testing.assert_array_equal(decoded(path8), expected)
    path16 = tmp_path / "key16.png"
    Image.fromarray(gray.astype(np.uint16) * 257).save(path16, transparency=17 * 257)
    np.testing.assert_array_equal(decoded(path16), expected)


@pytest.mark.parametrize("mode", ["1", "L", "CMYK", "YCbCr"])
def test_other_colour_spaces_use_pillows_conversion(tmp_path: Path, rgb8: np.ndarray, mode: str) -> None:
    source = Image.fromarray(rgb8).convert(mode)
    path = tmp_path / f"x-{mode}.{'jpg' if mode in ('CMYK', 'YCbCr') else 'png'}"
    source.save(path, quality=100) if path.suffix == ".jpg" else source.save(path)
    with Image.open(path) as reference:
        expected = np.asarray(reference.convert("RGB")).astype(int)
    np.testing.assert_array_equal(decoded(path), expected)


def test_unreadable_mode_is_listed_with_the_stimulus_problems(tmp_path: Path) -> None:
    """A picture the decoder refuses is reported by the stimulus check (exit 66), before extraction."""
    from bids_dnn.io.stimulus_loading import check_stimulus_file

    path = tmp_path / "wide.tif"
    Image.fromarray(np.array([[0.0, 1000.0]], dtype=np.float32)).save(path)
    problem = check_stimulus_file(path)
    assert problem is not None and "wide.tif" in problem and "float image values span [0, 1000]" in problem
