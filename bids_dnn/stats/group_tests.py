"""One-sample and paired location tests across subjects, per column: t and Wilcoxon signed-rank.

Subjects are rows, tested quantities (ROI x layer scores, models, ...) are columns; NaNs are
omitted per column. Every column gets both tests at once (vectorised; equal to scipy's per-column
results). ``GROUP_TESTS`` is the registry of the group tests the analysis offers (the spec's
``statistics.group_test``): which p-value of :func:`one_sample_tests` each one reports.

scipy is imported inside the tests, so that the spec can read ``GROUP_TESTS`` cheaply.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = [
    "GroupTest",
    "GROUP_TESTS",
    "one_sample_tests",
    "paired_tests",
]


@dataclass(frozen=True)
class GroupTest:
    """A group-level test of the registry.

    Attributes
    ----------
    p_value : str
        Key of its p-value in the result of :func:`one_sample_tests` / :func:`paired_tests`.
    label : str
        Its name in running text (methods sections, reports).
    """

    p_value: str
    label: str


#: name -> group test; the names are the spec's ``statistics.group_test`` values, in its order
GROUP_TESTS: dict[str, GroupTest] = {
    "ttest": GroupTest("p_t", "one-sample t-test"),
    "wilcoxon": GroupTest("p_wilcoxon", "Wilcoxon signed-rank test"),
}


def _wilcoxon_columns(x: np.ndarray, alternative: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-column ``scipy.stats.wilcoxon`` (NaNs omitted), vectorised over columns that
    scipy treats alike (same n; with or without zeros / ties)."""
    import scipy.stats

    k = x.shape[1]
    w = np.full(k, np.nan)
    p = np.full(k, np.nan)
    valid = np.isfinite(x)
    n = valid.sum(axis=0)
    # move the finite values to the top of each column (the test ignores order)
    order = np.argsort(~valid, axis=0, kind="stable")
    xs = np.take_along_axis(x, order, axis=0)
    absx = np.sort(np.where(valid, np.abs(x), np.inf), axis=0)
    tied = np.any((absx[1:] == absx[:-1]) & np.isfinite(absx[1:]), axis=0)
    zero = np.any(valid & (x == 0), axis=0)
    usable = (n >= 2) & np.any(valid & (x != 0), axis=0)
    for n_i in np.unique(n[usable]):
        for flag in (False, True):
            cols = np.flatnonzero(usable & (n == n_i) & ((tied | zero) == flag))
            if cols.size:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = scipy.stats.wilcoxon(xs[:n_i, cols], axis=0, alternative=alternative)
                w[cols] = res.statistic
                p[cols] = res.pvalue
    return w, p


def one_sample_tests(values: np.ndarray, alternative: str = "greater",
                     popmean: float = 0.0) -> dict[str, np.ndarray]:
    """One-sample t and Wilcoxon signed-rank tests per column (subjects in rows).

    Parameters
    ----------
    values : np.ndarray, (n_subj, k) or (n_subj,)
        NaNs are omitted per column.
    alternative : {"greater", "less", "two-sided"}
    popmean : float
        Null value (subtracted before both tests).

    Returns
    -------
    dict of np.ndarray, each (k,)
        ``n``, ``mean``, ``sem``, ``t``, ``p_t`` (= ``scipy.stats.ttest_1samp``),
        ``wilcoxon_w``, ``p_wilcoxon`` (= ``scipy.stats.wilcoxon`` per column; NaN when
        n < 2 or all differences are zero). t statistics are NaN when n < 2.
    """
    import scipy.stats

    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"unknown alternative {alternative!r}")
    x = np.asarray(values, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    if x.ndim != 2:
        raise ValueError(f"values must be (n_subj, k), got {x.shape}")
    x = x - popmean
    valid = np.isfinite(x)
    n = valid.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(valid, x, 0).sum(axis=0) / n
        ss = np.where(valid, (x - mean) ** 2, 0).sum(axis=0)
        sem = np.sqrt(ss / (n - 1) / n)
        t = mean / sem
        df = np.where(n >= 2, n - 1, np.nan)
        p_t = {"greater": lambda: scipy.stats.t.sf(t, df),
               "less": lambda: scipy.stats.t.cdf(t, df),
               "two-sided": lambda: 2 * scipy.stats.t.sf(np.abs(t), df)}[alternative]()
    small = n < 2
    sem[small], t[small], p_t[small] = np.nan, np.nan, np.nan
    w, p_w = _wilcoxon_columns(x, alternative)
    return {"n": n, "mean": mean + popmean, "sem": sem, "t": t, "p_t": p_t,
            "wilcoxon_w": w, "p_wilcoxon": p_w}


def paired_tests(a: np.ndarray, b: np.ndarray,
                 alternative: str = "two-sided") -> dict[str, np.ndarray]:
    """Paired t and Wilcoxon tests of ``a - b`` per column (e.g. two layers or models).

    ``a, b``: (n_subj, k) or (n_subj,). Returns the dict of :func:`one_sample_tests` on the
    differences (``mean`` = mean difference): ``p_t`` = ``scipy.stats.ttest_rel(a, b)``,
    ``p_wilcoxon`` = ``scipy.stats.wilcoxon(a, b)``, per column.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a and b differ in shape: {a.shape} vs {b.shape}")
    return one_sample_tests(a - b, alternative=alternative)
