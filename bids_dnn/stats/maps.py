"""Group-level statistical maps: one-sample tests across subjects on voxel maps, with
sign-flip permutation inference, max-T family-wise error control, FDR and optional TFCE.

Participant-level searchlight and encoding analyses give one map per subject, sampled on the
voxels of a common mask in template space. Here those maps arrive as a matrix ``values`` of
shape (n_subjects, n_voxels); column ``j`` is the ``j``-th True voxel of the 3D ``mask`` in C
order (what ``mask_img.get_fdata()[mask]`` or ``nilearn.masking.apply_mask`` produce). This
module is pure math: no BIDS, no files, no printing.

Statistic
    One-sample t per voxel, ``t = mean / (sd / sqrt(n))`` with ``sd`` the ddof=1 standard
    deviation (= ``scipy.stats.ttest_1samp`` =
    :func:`bids_dnn.stats.group_tests.one_sample_tests`), and the
    parametric p from the t distribution with ``n - 1`` degrees of freedom: one-sided
    ``alternative="greater"`` (``t.sf(t)``) or ``"two-sided"`` (``2 t.sf(|t|)``). For a
    ``"less"`` test pass ``-values``.
Voxels dropped from the family (NaN handling)
    A voxel is tested only when it is finite in every subject and its values are not all equal
    (zero sample variance: t undefined or infinite). Every output of a dropped voxel is NaN, and
    dropped voxels take no part in the FDR family, the max-T / max-TFCE null distributions or
    TFCE clusters (they are 0 in the 3D map, so they separate clusters). Subjects are never
    dropped: impute or exclude them before calling if a whole subject is missing a region.
Sign-flip permutations
    Under H0 each subject's map is symmetric about 0, so its sign is exchangeable. The flips are
    ``sign_flip_matrix(n_subjects, n_permutations, seed)``: row 0 is the identity (all +1), so
    the observed statistic is one member of its own null distribution; the other rows are drawn
    uniformly with replacement, or, when ``2 ** n_subjects <= n_permutations``, all
    ``2 ** n_subjects`` sign vectors are enumerated exactly once (then ``n_permutations`` of the
    result is ``2 ** n_subjects``). ``N`` below is the number of rows, identity included.
    The statistic compared is ``s = t`` (one-sided) or ``s = |t|`` (two-sided); for every flip it
    is computed for all voxels at once with one matrix product per chunk of flips (the sum of
    squares is invariant under sign flips).
p-values
    ``p_perm[v] = #{k : s_k[v] >= s_obs[v] - tol} / N`` and
    ``p_fwe[v] = #{k : max_u s_k[u] >= s_obs[v] - tol} / N`` (max over tested voxels), with
    ``tol = 1e-10 * max(1, |s_obs[v]|)`` so that flips reproducing the observed data (the
    identity, or its negation in a two-sided test) are not lost to rounding. Because row 0 is
    the identity, this is exactly nilearn's ``permuted_ols`` convention
    ``(1 + #{random flips >= observed}) / (1 + n_random)`` with ``n_random = N - 1``; the
    smallest attainable p is ``1 / N``. ``p_fdr`` is
    :func:`bids_dnn.stats.correction.fdr_bh` of the parametric ``p`` over the tested voxels.
FWE threshold
    ``threshold_fwe`` is the ``(c + 1)``-th largest value of the max-statistic null, where
    ``c`` is the largest integer with ``c / N <= alpha``: the (1 - alpha) quantile of the max-T
    null (on ``|t|`` when two-sided). ``s_obs[v] > threshold_fwe`` if and only if
    ``p_fwe[v] <= alpha`` (up to the tie tolerance). When ``1 / N > alpha`` nothing can be
    significant and the threshold equals the largest observed statistic.
TFCE
    Threshold-free cluster enhancement (Smith & Nichols 2009) exactly as nilearn's
    ``permuted_ols(..., tfce=True)``: nilearn's ``calculate_tfce`` (E = 0.5, H = 2, 100 height
    steps from 0 to the map's maximum, no ``dh`` factor, as fslmaths) on the 3D t map with
    face connectivity (``scipy.ndimage.generate_binary_structure(3, 1)``); two-sided tests
    enhance positive and negative clusters separately (negative TFCE for negative clusters).
    A one-sided map without positive values has TFCE 0 (nilearn would enhance its negative
    values; this only differs for such degenerate permutation maps). ``p_fwe_tfce`` uses the
    max-|TFCE| null with the same counting rule as ``p_fwe``. When nilearn's private helper is
    not importable an equivalent port is used.
Infinite flipped statistics
    A flip can make a voxel's values all equal (data whose absolute values coincide, e.g.
    quantised maps); its t is then +-inf, which counts as exceeding every observed statistic
    (in the max-TFCE null too). Continuous maps never hit this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.stats
from scipy import ndimage

from bids_dnn.stats.correction import fdr_bh

__all__ = [
    "GroupMapResult",
    "sign_flip_matrix",
    "group_one_sample_map",
    "tfce_map",
]

_MAX_CHUNK_ELEMENTS = 2 ** 22  # ~32 MB of float64 per (flips x voxels) block
_TIE_RTOL = 1e-10
_ALTERNATIVES = ("greater", "two-sided")


def sign_flip_matrix(n_subjects: int, n_permutations: int,
                     seed: int | np.random.Generator = 0) -> np.ndarray:
    """Sign flips for a one-sample permutation test, one flip vector per row.

    Parameters
    ----------
    n_subjects : int
        At least 1.
    n_permutations : int
        Number of rows wanted, identity included (at least 1).
    seed : int or np.random.Generator
        Seed of ``np.random.default_rng`` (or a Generator, which is advanced).

    Returns
    -------
    np.ndarray of float64, (N, n_subjects), entries +1 / -1
        Row 0 is the identity (all +1), so the observed statistic is part of the null
        distribution. When ``2 ** n_subjects <= n_permutations`` the matrix enumerates every
        sign vector exactly once (``N = 2 ** n_subjects``; row ``i`` has -1 at the set bits of
        ``i``; the generator is not used); otherwise ``N = n_permutations`` and rows 1..N-1 are
        independent uniform draws (with replacement, so repeats, including of the identity,
        are possible and legitimate).
    """
    n_subjects, n_permutations = int(n_subjects), int(n_permutations)
    if n_subjects < 1 or n_permutations < 1:
        raise ValueError("n_subjects and n_permutations must be >= 1")
    if n_subjects < 63 and 2 ** n_subjects <= n_permutations:
        rows = np.arange(2 ** n_subjects, dtype=np.int64)[:, None]
        bits = (rows >> np.arange(n_subjects, dtype=np.int64)) & 1
        return 1.0 - 2.0 * bits
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    flips = np.ones((n_permutations, n_subjects))
    flips[1:] -= 2.0 * rng.integers(0, 2, size=(n_permutations - 1, n_subjects))
    return flips


@dataclass(frozen=True)
class GroupMapResult:
    """Outcome of :func:`group_one_sample_map`; every array is (n_voxels,), NaN at voxels that
    were dropped (non-finite in a subject or zero variance).

    Attributes
    ----------
    t : one-sample t, ``mean / (sd / sqrt(n))`` (ddof=1).
    p : parametric p (t distribution, n - 1 df; one-sided greater or two-sided).
    p_fdr : Benjamini-Hochberg adjusted ``p`` over the tested voxels.
    p_perm : uncorrected sign-flip permutation p, ``#{k : s_k >= s_obs} / N``.
    p_fwe : max-T family-wise corrected p, ``#{k : max s_k >= s_obs} / N``.
    threshold_fwe : statistic (t, or |t| when two-sided) above which a voxel has
        ``p_fwe <= alpha``: the (1 - alpha) quantile of the max-T null (see module docstring).
    n_permutations : N, the number of sign flips used, identity included (0: parametric only,
        every permutation output NaN).
    tfce : TFCE scores (signed when two-sided), when requested; else None.
    p_fwe_tfce : max-|TFCE| family-wise corrected p, when requested; else None.
    null_max_t : (N,) max over tested voxels of the flipped statistic (row 0 = observed).
    null_max_tfce : (N,) max |TFCE| per flip, when requested; else None.
    alternative, alpha : the options used.
    """

    t: np.ndarray
    p: np.ndarray
    p_fdr: np.ndarray
    p_perm: np.ndarray
    p_fwe: np.ndarray
    threshold_fwe: float
    n_permutations: int
    tfce: np.ndarray | None = None
    p_fwe_tfce: np.ndarray | None = None
    null_max_t: np.ndarray | None = None
    null_max_tfce: np.ndarray | None = None
    alternative: str = "greater"
    alpha: float = 0.05


# --------------------------------------------------------------------------- TFCE
def _tfce_port(arr3d: np.ndarray, bin_struct: np.ndarray, two_sided: bool) -> np.ndarray:
    """Port of ``nilearn.mass_univariate._utils.calculate_tfce`` (E=0.5, H=2, 100 steps)
    for one 3D map; used when nilearn's private helper cannot be imported."""
    out = np.zeros(arr3d.shape)
    max_score = np.nanmax(np.abs(arr3d)) if two_sided else np.nanmax(arr3d)
    threshs = np.linspace(0, max_score, 101)[1:]
    for sign in ([-1, 1] if two_sided else [1]):
        temp = arr3d * sign
        for h in threshs:
            temp[temp < h] = 0
            labels, _ = ndimage.label(temp, bin_struct)
            counts = np.bincount(labels.ravel())
            values = sign * (counts ** 0.5) * (h ** 2)
            values[0] = 0.0
            out += values[labels]
    return out


def tfce_map(map3d: np.ndarray, two_sided: bool = False) -> np.ndarray:
    """TFCE scores of one 3D statistic map, as nilearn's ``permuted_ols`` computes them.

    Parameters
    ----------
    map3d : np.ndarray, (X, Y, Z)
        t map; voxels outside the mask (or dropped) must be 0.
    two_sided : bool
        Enhance positive and negative clusters separately (negative scores for negative
        clusters); otherwise positive clusters only.

    Returns
    -------
    np.ndarray of float64, (X, Y, Z)
        Zero everywhere when the map has nothing to enhance (all zero, or no positive value in a
        one-sided test).
    """
    arr = np.asarray(map3d, dtype=np.float64)
    if arr.ndim != 3:
        raise ValueError(f"map3d must be 3D, got shape {arr.shape}")
    top = np.max(np.abs(arr)) if two_sided else np.max(arr)
    if not top > 0:
        return np.zeros(arr.shape)
    bin_struct = ndimage.generate_binary_structure(3, 1)
    try:
        from nilearn.mass_univariate._utils import calculate_tfce
    except ImportError:  # pragma: no cover - private nilearn helper moved
        return _tfce_port(arr, bin_struct, two_sided)
    return calculate_tfce(arr[..., None], bin_struct=bin_struct,
                          two_sided_test=two_sided)[..., 0]


# --------------------------------------------------------------------------- group maps
def _count_ge(sorted_null: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """``#{null >= observed - tol}`` per observed value, for an ascending null."""
    tol = _TIE_RTOL * np.maximum(1.0, np.abs(observed))
    return sorted_null.size - np.searchsorted(sorted_null, observed - tol, side="left")


def _fwe_threshold(null_max: np.ndarray, alpha: float) -> float:
    """``(c + 1)``-th largest of ``null_max``, c = max integer with ``c / N <= alpha``."""
    n = null_max.size
    c = int(np.floor(alpha * n))
    while c + 1 <= n and (c + 1) / n <= alpha:
        c += 1
    while c > 0 and c / n > alpha:
        c -= 1
    if c >= n:  # alpha >= 1: everything tested is significant
        return -np.inf
    return float(np.sort(null_max)[::-1][c])


def group_one_sample_map(values: np.ndarray, *, n_permutations: int = 5000,
                         alternative: str = "greater", seed: int | np.random.Generator = 0,
                         alpha: float = 0.05, tfce: bool = False,
                         mask: np.ndarray | None = None,
                         flips: np.ndarray | None = None) -> GroupMapResult:
    """One-sample group test on subject maps with sign-flip permutation inference.

    Parameters
    ----------
    values : np.ndarray, (n_subjects, n_voxels)
        One map per subject (e.g. Fisher-z searchlight correlations, :func:`bids_dnn.stats.fisher.fisher_z`, or
        encoding r), tested against 0. A voxel that is non-finite in any subject, or constant
        across subjects, is dropped: all its outputs are NaN and it is not part of any family.
    n_permutations : int
        Number of sign flips N, identity included (see :func:`sign_flip_matrix`; fewer when
        all ``2 ** n_subjects`` flips are enumerated). 0: parametric only (``p_perm``,
        ``p_fwe``, ``p_fwe_tfce`` and ``threshold_fwe`` are NaN, ``null_max_t`` is empty).
    alternative : {"greater", "two-sided"}
        One-sided (mean > 0; statistic t) or two-sided (statistic |t|). Negate ``values`` for
        "less".
    seed : int or np.random.Generator
        Seed of the flips (``sign_flip_matrix(n_subjects, n_permutations, seed)``).
    alpha : float
        Level of ``threshold_fwe``.
    tfce : bool
        Also compute TFCE scores and their max-|TFCE| FWE p-values (needs ``mask``). Costs one
        TFCE pass (200 labelings of the 3D volume for two-sided) per flip.
    mask : np.ndarray of bool, (X, Y, Z), optional
        The voxels of the columns: ``mask.sum() == n_voxels``, columns in C order of the True
        voxels. Required for TFCE; otherwise only checked.
    flips : np.ndarray, (N, n_subjects) of +-1, optional
        Explicit sign flips instead of ``n_permutations`` and ``seed``; row 0 must be all +1
        (the observed data).

    Returns
    -------
    GroupMapResult
        See the module docstring for the exact p-value conventions.
    """
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES} (negate values for 'less'), "
                         f"got {alternative!r}")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    x_all = np.asarray(values, dtype=np.float64)
    if x_all.ndim != 2:
        raise ValueError(f"values must be (n_subjects, n_voxels), got shape {x_all.shape}")
    n_subj, n_vox = x_all.shape
    if n_subj < 2:
        raise ValueError("a group test needs at least 2 subjects")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 3 or int(mask.sum()) != n_vox:
            raise ValueError(f"mask must be 3D with {n_vox} True voxels, got shape {mask.shape} "
                             f"with {int(mask.sum())}")
    if tfce and mask is None:
        raise ValueError("tfce=True needs the 3D mask (cluster structure)")
    if flips is None:
        if int(n_permutations) < 0:
            raise ValueError(f"n_permutations must be >= 0, got {n_permutations}")
        flips = (sign_flip_matrix(n_subj, n_permutations, seed) if int(n_permutations) > 0
                 else np.ones((0, n_subj)))
    else:
        flips = np.asarray(flips, dtype=np.float64)
        if flips.ndim != 2 or flips.shape[1] != n_subj or not np.all(np.abs(flips) == 1):
            raise ValueError(f"flips must be (N, {n_subj}) of +1 / -1")
        if flips.shape[0] and not np.all(flips[0] == 1):
            raise ValueError("the first row of flips must be the identity (all +1)")
    n_perm = flips.shape[0]
    two_sided = alternative == "two-sided"

    # ----- observed t (two-pass), tested voxels
    finite = np.all(np.isfinite(x_all), axis=0)
    x = x_all[:, finite]
    mean = x.mean(axis=0)
    sd = np.sqrt(((x - mean) ** 2).sum(axis=0) / (n_subj - 1))
    nonconst = np.ptp(x, axis=0) > 0  # exact test: a rounded sd of a constant need not be 0
    valid = np.zeros(n_vox, dtype=bool)
    valid[np.flatnonzero(finite)[nonconst]] = True
    x, mean, sd = x[:, nonconst], mean[nonconst], sd[nonconst]
    t_obs = mean / (sd / np.sqrt(n_subj))
    df = n_subj - 1
    p_obs = 2 * scipy.stats.t.sf(np.abs(t_obs), df) if two_sided else scipy.stats.t.sf(t_obs, df)
    s_obs = np.abs(t_obs) if two_sided else t_obs
    n_valid = t_obs.size

    def full(v: np.ndarray) -> np.ndarray:
        out = np.full(n_vox, np.nan)
        out[valid] = v
        return out

    # ----- TFCE helpers
    if tfce:
        valid_3d = np.zeros(mask.shape, dtype=bool)
        valid_3d[mask] = valid

        def tfce_of(t_valid: np.ndarray) -> np.ndarray:
            vol = np.zeros(mask.shape)
            vol[valid_3d] = t_valid
            return tfce_map(vol, two_sided=two_sided)[valid_3d]

        tfce_obs = tfce_of(t_obs) if n_valid else np.zeros(0)
        null_max_tfce = np.empty(n_perm)

    # ----- permutations, chunked: flipped sums by one matrix product; sum of squares invariant
    count = np.zeros(n_valid, dtype=np.int64)
    null_max = np.full(n_perm, np.nan)
    if n_valid:
        ss = (x ** 2).sum(axis=0)
        thresh = s_obs - _TIE_RTOL * np.maximum(1.0, np.abs(s_obs))
        step = int(max(1, min(n_perm, _MAX_CHUNK_ELEMENTS // n_valid)))
        for p0 in range(0, n_perm, step):
            f = flips[p0:p0 + step]
            m = (f @ x) / n_subj
            var = ss - n_subj * m * m
            np.maximum(var, 0.0, out=var)
            with np.errstate(divide="ignore", invalid="ignore"):
                t = m / np.sqrt(var / (df * n_subj))
            if p0 == 0:
                t[0] = t_obs  # the identity: exactly the observed statistic
            s = np.abs(t) if two_sided else t
            count += np.sum(s >= thresh, axis=0)
            null_max[p0:p0 + f.shape[0]] = np.fmax.reduce(s, axis=1)
            if tfce:
                for i in range(f.shape[0]):
                    k = p0 + i
                    if k == 0:
                        null_max_tfce[k] = np.max(np.abs(tfce_obs))
                    elif np.all(np.isfinite(t[i])):
                        null_max_tfce[k] = np.max(np.abs(tfce_of(t[i])))
                    else:  # a flip with infinite t (all |values| equal): maximally extreme
                        null_max_tfce[k] = np.inf
    permuted = n_valid > 0 and n_perm > 0
    nan_valid = np.full(n_valid, np.nan)
    p_perm = count / n_perm if permuted else nan_valid
    p_fwe = _count_ge(np.sort(null_max), s_obs) / n_perm if permuted else nan_valid
    threshold = _fwe_threshold(null_max, alpha) if permuted else float("nan")

    tfce_full = p_fwe_tfce = None
    if tfce:
        tfce_full = full(tfce_obs)
        if permuted:
            p_fwe_tfce = full(_count_ge(np.sort(null_max_tfce), np.abs(tfce_obs)) / n_perm)
        else:
            p_fwe_tfce = full(nan_valid)
            null_max_tfce[:] = np.nan

    p_full = full(p_obs)
    return GroupMapResult(
        t=full(t_obs), p=p_full, p_fdr=fdr_bh(p_full), p_perm=full(p_perm), p_fwe=full(p_fwe),
        threshold_fwe=threshold, n_permutations=n_perm, tfce=tfce_full, p_fwe_tfce=p_fwe_tfce,
        null_max_t=null_max, null_max_tfce=null_max_tfce if tfce else None,
        alternative=alternative, alpha=float(alpha))
