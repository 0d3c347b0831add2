"""A direct, loop-based NumPy implementation of the formulas of Kornblith et al. (2019), the
independent reference of the CKA tests (it shares no code with bids_dnn.cka).

Gram matrices pair by pair; the plain HSIC ``tr(K H L H) / (n-1)^2`` with explicit centring; the
unbiased HSIC in the form of Song et al. (2012) (sums over pairs of distinct stimuli), not the
U-centring that bids_dnn uses; RBF bandwidth ``threshold`` times the median distance, the median
taken over all n^2 entries of the squared-distance matrix as in Kornblith et al.'s ``gram_rbf``.
"""

from __future__ import annotations

import numpy as np


def gram_linear(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    gram = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            gram[i, j] = float(np.dot(x[i], x[j]))
    return gram


def gram_rbf(x: np.ndarray, threshold: float = 1.0) -> np.ndarray:
    n = x.shape[0]
    distances = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            distances[i, j] = float(np.sum((x[i] - x[j]) ** 2))
    median = float(np.median(distances))
    gram = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            gram[i, j] = np.exp(-distances[i, j] / (2 * threshold**2 * median))
    return gram


def hsic_plain(k: np.ndarray, l: np.ndarray) -> float:
    """``tr(K H L H) / (n - 1)^2`` with explicitly centred matrices."""
    n = k.shape[0]
    kc, lc = np.empty_like(k), np.empty_like(l)
    for i in range(n):
        for j in range(n):
            kc[i, j] = k[i, j] - k[i].mean() - k[:, j].mean() + k.mean()
            lc[i, j] = l[i, j] - l[i].mean() - l[:, j].mean() + l.mean()
    total = 0.0
    for i in range(n):
        for j in range(n):
            total += kc[i, j] * lc[j, i]
    return total / (n - 1) ** 2


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012), eq. 5: sums over distinct stimuli (zero diagonals)."""
    n = k.shape[0]
    trace = sum(k[i, j] * l[j, i] for i in range(n) for j in range(n) if i != j)
    sum_k = sum(k[i, j] for i in range(n) for j in range(n) if i != j)
    sum_l = sum(l[i, j] for i in range(n) for j in range(n) if i != j)
    triple = 0.0
    for j in range(n):
        row_k = sum(k[i, j] for i in range(n) if i != j)
        row_l = sum(l[j, q] for q in range(n) if q != j)
        triple += row_k * row_l
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * triple) / (n * (n - 3))


HSIC = {"plain": hsic_plain, "unbiased": hsic_unbiased}
GRAMS = {"linear": lambda x, sigma: gram_linear(x), "rbf": gram_rbf}


def cka_reference(x: np.ndarray, y: np.ndarray, kernel: str = "linear", estimator: str = "unbiased",
                  sigma: float = 1.0) -> float:
    """``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``."""
    k, l = GRAMS[kernel](x, sigma), GRAMS[kernel](y, sigma)
    hsic = HSIC[estimator]
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def cka_of_grams_reference(k: np.ndarray, l: np.ndarray, estimator: str) -> float:
    hsic = HSIC[estimator]
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))
