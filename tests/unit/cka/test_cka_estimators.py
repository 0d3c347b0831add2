"""CKA against a direct loop-based NumPy implementation of Kornblith et al. (2019), HSIC against
Song et al. (2012) and Gretton et al. (2005), invariances, and THINGSvision's CKA where installed."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from bids_dnn.cka import cka, gram_matrix, hsic, rbf_bandwidth, u_center_gram

from _cka_reference import HSIC, cka_reference, gram_linear, gram_rbf

KERNELS = ("linear", "rbf")
ESTIMATORS = ("unbiased", "plain")


def related_sets(rng: np.random.Generator, n: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """Two feature sets of ``n`` stimuli sharing a low-dimensional signal."""
    shared = rng.standard_normal((n, 3))
    x = shared @ rng.standard_normal((3, 20)) + 0.5 * rng.standard_normal((n, 20))
    y = shared @ rng.standard_normal((3, 7)) + 0.8 * rng.standard_normal((n, 7))
    return x, y


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_cka_equals_the_loop_reference(rng, kernel, estimator, sigma):
    for _ in range(3):
        x, y = related_sets(rng)
        expected = cka_reference(x, y, kernel, estimator, sigma)
        assert abs(cka(x, y, kernel, estimator, sigma) - expected) <= 1e-10


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_hsic_equals_the_loop_reference(rng, estimator):
    x, y = related_sets(rng, n=11)
    k, l = gram_linear(x), gram_linear(y)
    expected = HSIC[estimator](k, l)
    assert hsic(k, l, estimator) == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_gram_matrices_equal_the_loop_reference(rng):
    x = rng.standard_normal((9, 5))
    np.testing.assert_allclose(gram_matrix(x, "linear").numpy(), gram_linear(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gram_matrix(x, "rbf", 0.8).numpy(), gram_rbf(x, 0.8), rtol=1e-12, atol=1e-12)
    distances = ((x[:, None] - x[None]) ** 2).sum(-1)
    assert rbf_bandwidth(x, 0.8) == pytest.approx(0.8 * np.sqrt(np.median(distances)), rel=1e-12)


def test_median_of_an_even_count_is_numpys(rng):
    x = rng.standard_normal((6, 2))  # 36 entries: the mean of the two middle values
    distances = ((x[:, None] - x[None]) ** 2).sum(-1)
    expected = np.exp(-distances / (2 * np.median(distances)))
    np.testing.assert_allclose(gram_matrix(x, "rbf").numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_invariant_to_orthogonal_transforms_and_isotropic_scaling(rng, kernel, estimator):
    x, y = related_sets(rng)
    base = cka(x, y, kernel, estimator)
    rotation, _ = np.linalg.qr(rng.standard_normal((x.shape[1], x.shape[1])))
    assert cka(x @ rotation, y, kernel, estimator) == pytest.approx(base, abs=1e-10)
    assert cka(3.7 * x, 0.01 * y, kernel, estimator) == pytest.approx(base, abs=1e-10)
    assert cka(x + 5.0, y - 2.0, kernel, estimator) == pytest.approx(base, abs=1e-10)  # translation


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_not_invariant_to_anisotropic_scaling(rng, estimator):
    """CKA is not invariant to invertible linear maps (Kornblith et al. 2019, section 3)."""
    x, y = related_sets(rng)
    stretched = x * np.geomspace(0.01, 100.0, x.shape[1])
    assert abs(cka(stretched, y, "linear", estimator) - cka(x, y, "linear", estimator)) > 1e-3


def test_identical_sets_give_one_and_symmetry(rng):
    x, y = related_sets(rng)
    for estimator in ESTIMATORS:
        assert cka(x, x, "linear", estimator) == pytest.approx(1.0, abs=1e-12)
        assert cka(x, y, "rbf", estimator) == pytest.approx(cka(y, x, "rbf", estimator), abs=1e-14)


def test_unbiased_is_centred_on_zero_for_unrelated_sets_plain_is_not():
    """Many features, few stimuli: the plain estimator is biased upwards, the unbiased one is not."""
    values = {"plain": [], "unbiased": []}
    for seed in range(40):
        gen = np.random.default_rng(seed)
        x, y = gen.standard_normal((12, 200)), gen.standard_normal((12, 200))
        for estimator in values:
            values[estimator].append(cka(x, y, "linear", estimator))
    assert abs(np.mean(values["unbiased"])) < 0.03
    assert np.mean(values["plain"]) > 0.3


def test_u_centring_zeroes_the_excluded_pairs_and_ignores_row_constants(rng):
    x = rng.standard_normal((8, 3))
    gram = torch.as_tensor(x @ x.T)
    exclude = torch.zeros(8, 8, dtype=torch.bool)
    exclude[1, 4] = exclude[4, 1] = True
    centred = u_center_gram(gram, exclude)
    assert float(centred[1, 4]) == 0.0 and float(torch.diagonal(centred).abs().max()) == 0.0
    shifted = gram + torch.as_tensor(rng.standard_normal(8))[:, None] + torch.as_tensor(rng.standard_normal(8))[None]
    shifted = (shifted + shifted.T) / 2
    np.testing.assert_allclose(u_center_gram(shifted).numpy(), u_center_gram(gram).numpy(), atol=1e-12)


def test_refuses_bad_input(rng):
    x = rng.standard_normal((6, 3))
    with pytest.raises(ValueError, match="at least 4 stimuli"):
        cka(x[:3], x[:3], "linear", "unbiased")
    for kernel in ("linear", "rbf"):
        with pytest.raises(ValueError, match="NaN"):
            cka(np.where(x > 1, np.nan, x), x, kernel)
    with pytest.raises(ValueError, match="different numbers of stimuli"):
        cka(x, x[:5])
    with pytest.raises(ValueError, match="unknown CKA kernel"):
        cka(x, x, "cosine")
    with pytest.raises(ValueError, match="sigma"):
        cka(x, x, "rbf", sigma=0.0)
    assert np.isnan(cka(x, np.ones((6, 2)), "linear", "plain"))  # constant features: no variance


# ---------------------------------------------------------------------------------------
# THINGSvision (thingsvision.core.cka), where it is installed or on the path
# ---------------------------------------------------------------------------------------


def thingsvision_cka_module():
    """``thingsvision/core/cka/cka_numpy.py`` loaded on its own (the package's ``__init__`` pulls
    in the whole feature extractor); skips the test when thingsvision is not found."""
    found = importlib.util.find_spec("thingsvision")
    if found is None or not found.submodule_search_locations:
        pytest.skip("thingsvision is not installed")
    folder = Path(list(found.submodule_search_locations)[0]) / "core" / "cka"
    if not (folder / "cka_numpy.py").is_file():
        pytest.skip("this thingsvision has no core/cka/cka_numpy.py")
    package = types.ModuleType("_thingsvision_cka")
    package.__path__ = [str(folder)]
    sys.modules.setdefault("_thingsvision_cka", package)
    return importlib.import_module("_thingsvision_cka.cka_numpy")


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_equals_thingsvision_linear(rng, estimator):
    module = thingsvision_cka_module()
    x, y = related_sets(rng, n=20)
    theirs = module.CKANumPy(m=20, kernel="linear", unbiased=estimator == "unbiased").compare(x, y)
    assert abs(cka(x, y, "linear", estimator) - float(theirs)) <= 1e-10


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_equals_thingsvision_rbf_with_our_bandwidths(rng, estimator):
    """thingsvision takes one absolute sigma for both sets; each set gets its own median bandwidth here."""
    module = thingsvision_cka_module()
    x, y = related_sets(rng, n=20)
    unbiased = estimator == "unbiased"
    grams = []
    for features in (x, y):
        tv = module.CKANumPy(m=20, kernel="rbf", unbiased=unbiased, sigma=rbf_bandwidth(features, 0.9))
        grams.append(tv.centering(tv.apply_kernel(features)))
    theirs = np.sum(grams[0] * grams[1]) / np.sqrt(np.sum(grams[0] ** 2) * np.sum(grams[1] ** 2))
    assert abs(cka(x, y, "rbf", estimator, 0.9) - float(theirs)) <= 1e-10
