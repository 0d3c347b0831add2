"""Voxelwise encoding models: cross-validated ridge regression from features to responses.

Pure functions on arrays (numpy in, numpy out); no BIDS, no files, no printing. Warnings are
raised through :mod:`warnings` only.

Conventions
-----------
Training-only fitting (no leakage)
    For each outer fold every statistic is fitted on that fold's *training* samples only and
    then applied unchanged to its test samples: the feature mean and standard deviation
    (z-scoring, ``standardize=True``; a constant feature gets SD 1, as
    ``sklearn.preprocessing.StandardScaler``), the PCA projection (``pca=k``: the top ``k``
    right singular vectors of the standardised training features), the response mean (the
    intercept) and the per-target ridge penalty (inner cross-validation on the training
    samples). Inner folds reuse the outer fold's scaling / PCA (fitted on the outer training
    set, which never contains test samples) but refit the centring, i.e. the intercept, within
    each inner training fold (as ``himalaya``'s ``fit_intercept=True`` and ``sklearn``'s
    ``Ridge(fit_intercept=True)``).
Ridge and alpha choice
    ``b = argmin ||y_c - X_c b||^2 + alpha ||b||^2`` on centred training data, prediction
    ``mean_train(y) + (x - mean_train(x)) b``. Each target's alpha maximises the inner-CV
    score of ``himalaya`` (``himalaya.scoring.l2_neg_loss``: minus the mean squared error of
    each inner validation fold, averaged over the inner folds); ties go to the larger alpha
    (``himalaya``'s rule: ``1e-10 * log(alpha)`` is added to the score). Solved through the
    eigendecomposition of the centred training Gram matrix (dual / kernel form, when
    ``n_train < n_features``) or the SVD of the centred training features (primal form,
    otherwise), exactly as ``himalaya.kernel_ridge.KernelRidgeCV`` and
    ``himalaya.ridge.RidgeCV`` do (same folds give the same alphas and predictions; see the
    tests). The batched solver here differs only in cost: per inner fold one matrix product
    gives every alpha's validation predictions, and the refit applies each target's chosen
    alpha only (himalaya refits every chosen alpha for every target), which makes it 4-7x
    faster than ``KernelRidgeCV`` at 20k targets (benchmark B8). ``solver="himalaya"``
    calls those estimators directly. ``inner_folds="loo"`` selects alphas by exact
    closed-form leave-one-out instead (``sklearn.linear_model.RidgeCV``'s scheme).
Scores
    ``r``: the Pearson correlation between predictions and responses *within each test fold*
    (``fold_r``), averaged over the folds (NaN-ignoring): the convention of
    ``sklearn.model_selection.cross_val_score`` with a correlation scorer, and of himalaya's
    ``correlation_score`` on a test set. The correlation of the predictions pooled over folds
    is not used: each fold is predicted from a training mean that is shifted *away* from its
    test samples (the training set lacks them), so with strong regularisation (predictions
    near the training mean) the pooled r is strongly negative for responses that carry no
    signal at all (about -0.3 with 6 folds of 4 stimuli). Within a fold the predictions do
    not depend on the test responses, so the per-fold r has mean 0 under the null.
    ``r2 = 1 - sum_s (y_s - yhat_s)^2 / sum_s (y_s - mean(y))^2`` over the pooled out-of-fold
    predictions, ``mean(y)`` being the mean of all tested responses (``sklearn.metrics.
    r2_score`` of ``cross_val_predict``'s output; the "predictive R2" or PRESS statistic). It
    is negative when the model predicts worse than that mean, and slightly negative on
    average for responses without signal (the training means miss the test means: about
    ``-n_test / n_train`` per fold). ``fold_r2``: the same within each test fold (SST around
    the test fold's mean), as ``cross_val_score(scoring="r2")``; it is kept as a diagnostic
    but not averaged into ``r2``, because with small test folds (a few stimuli) it is
    dominated by the offset between training and test means and by the tiny SST.
Bad targets
    A target (response column) with any non-finite value, or constant over all samples, gets
    NaN ``r``, ``r2``, ``fold_r2`` and ``alphas``; its predictions are NaN (non-finite) or the
    training means (constant). A target constant within one test fold only gets NaN
    ``fold_r2`` there. Nothing raises for bad targets; non-finite *features* raise.
Precision and memory
    Decompositions (Gram, eigendecomposition / SVD, PCA) run in float64 on the CPU; the
    products with the responses (the bulk of the work) run in ``dtype`` (default: the
    responses' dtype, float32 or float64) on the chosen backend (``"numpy"``, ``"torch"``,
    ``"torch_cuda"``). Targets are processed in batches of ``target_batch`` (default: about
    256 MB of working memory), so memory is the inputs, the output predictions and a fixed
    working set, whatever the number of targets.
Folds and scores
    Outer and inner folds: :mod:`bids_dnn.encoding.folds` (inner folds are seeded with
    ``SeedSequence([seed, outer_fold])``: equal inputs and seeds give equal results,
    independent of the target batch size). Noise ceilings: :mod:`bids_dnn.encoding.scores`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bids_dnn.backend import float_dtype
from bids_dnn.encoding._solver import (_as_2d, _batch_responses, _check_alphas, _check_features, _default_batch,
                                       _himalaya_backend, _prepare)
from bids_dnn.encoding.folds import Folds, check_folds, inner_folds_for
from bids_dnn.encoding.scores import _fold_mean, _pooled_r2, pearson_columns, r2_columns

__all__ = ["EncodingResult", "cross_validated_ridge", "SOLVERS"]

SOLVERS = ("auto", "kernel", "primal", "himalaya")
_STACK_BYTES = 1024 * 2**20        # cap on precomputed per-alpha resolution matrices
_TIE_SLOPE = 1e-10                 # himalaya's tie-break: + 1e-10 * log(alpha)


# --------------------------------------------------------------------------- results
@dataclass
class EncodingResult:
    """Outcome of :func:`cross_validated_ridge` (n_targets = columns of the responses).

    Attributes
    ----------
    r : numpy.ndarray, shape (n_targets,)
        Mean over outer folds of the Pearson r within each test fold (``fold_r``; folds where
        r is undefined are skipped).
    r2 : numpy.ndarray, shape (n_targets,)
        ``1 - SSE / SST`` of the pooled out-of-fold predictions, SST around the mean of the
        pooled responses.
    fold_r2 : numpy.ndarray, shape (n_folds, n_targets)
        R2 within each test fold (SST around that fold's mean).
    alphas : numpy.ndarray, shape (n_folds, n_targets)
        Ridge penalty chosen by inner cross-validation in each outer fold.
    predictions : numpy.ndarray, shape (n_samples, n_targets)
        Out-of-fold predictions (NaN for samples in no test fold).
    fold_r : numpy.ndarray, shape (n_folds, n_targets)
        Pearson r within each test fold (NaN where the fold has fewer than 2 samples or the
        predictions / responses are constant in it).
    solver : str
        ``"kernel"``, ``"primal"``, ``"himalaya-kernel"`` or ``"himalaya-primal"`` (the last
        outer fold's; shapes are equal across folds unless the folds differ a lot in size).
    """

    r: np.ndarray
    r2: np.ndarray
    fold_r2: np.ndarray
    alphas: np.ndarray
    predictions: np.ndarray
    fold_r: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    solver: str = ""



def _centre_kernels(k_train: np.ndarray, k_eval: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre a training Gram matrix and an evaluation cross-kernel with training statistics
    (``himalaya.kernel_ridge.KernelCenterer``): equal to the linear kernels of features centred
    with the training mean."""
    col = k_train.mean(axis=0)
    allm = col.mean()
    ktr = k_train - col[None, :] - col[:, None] + allm
    kev = k_eval - col[None, :] - k_eval.mean(axis=1)[:, None] + allm
    return ktr, kev


@dataclass
class _Spectral:
    """Ridge predictions of evaluation samples from training responses, for any alpha:
    ``P_a = proj @ diag(f_a) @ basis.T @ y_c`` with ``f_a = 1 / (lam + a)`` (kernel form,
    ``lam`` eigenvalues of the centred Gram) or ``s / (s^2 + a)`` (primal form)."""

    kind: str
    basis: np.ndarray   # (n_train, r)
    proj: np.ndarray    # (n_eval, r)
    spec: np.ndarray    # (r,) eigenvalues (kernel) or singular values (primal)

    @property
    def rank(self) -> int:
        return int(self.spec.size)

    def invalid(self, alphas: np.ndarray) -> np.ndarray:
        """Alphas that do not compensate negative eigenvalues (himalaya's ``"nan"`` rule)."""
        if self.kind == "kernel" and self.spec.size and self.spec[0] < 0:
            return alphas < -2.0 * self.spec[0]
        return np.zeros(alphas.shape, dtype=bool)

    def filters(self, alphas: np.ndarray, clip: bool = False) -> np.ndarray:
        """(n_alphas, r) spectral filters."""
        a = np.asarray(alphas, dtype=np.float64)[:, None]
        if self.kind == "kernel":
            lam = np.maximum(self.spec, 0.0) if clip else self.spec
            with np.errstate(divide="ignore", invalid="ignore"):
                return 1.0 / (lam[None, :] + a)
        s = self.spec[None, :]
        return s / (s * s + a)


def _spectral_kernel(k_train: np.ndarray, k_eval: np.ndarray) -> _Spectral:
    ktr, kev = _centre_kernels(k_train, k_eval)
    lam, v = np.linalg.eigh(ktr)
    return _Spectral("kernel", v, kev @ v, lam)


def _spectral_primal(x_train: np.ndarray, x_eval: np.ndarray) -> _Spectral:
    mean = x_train.mean(axis=0)
    u, s, vt = np.linalg.svd(x_train - mean, full_matrices=False)
    return _Spectral("primal", u, (x_eval - mean) @ vt.T, s)


class _CVOperator:
    """Predictions of one inner validation fold for every alpha, as one matrix product with
    the centred training responses: stacked ``(n_alphas * n_val, n_train)`` resolution matrix,
    or factorised ``(n_alphas * n_val, r) @ (r, n_train)`` when that is cheaper."""

    def __init__(self, spectral: _Spectral, alphas: np.ndarray, B: Any, dtype: np.dtype,
                 stacked: bool) -> None:
        f = spectral.filters(alphas)
        f[~np.isfinite(f)] = 0.0
        left = (spectral.proj[None, :, :] * f[:, None, :]).reshape(-1, spectral.rank)
        self.n_alphas = len(alphas)
        self.n_val = spectral.proj.shape[0]
        self.invalid = spectral.invalid(alphas)
        if stacked:
            self.left = B.asarray(left @ spectral.basis.T, dtype=dtype.name)
            self.right = None
        else:
            self.left = B.asarray(left, dtype=dtype.name)
            self.right = B.asarray(np.ascontiguousarray(spectral.basis.T), dtype=dtype.name)

    def squared_errors(self, B: Any, y_train_c: Any, y_val_c: Any) -> np.ndarray:
        """(n_alphas, n_targets) mean squared validation error (float64 numpy)."""
        rhs = y_train_c if self.right is None else B.matmul(self.right, y_train_c)
        pred = B.matmul(self.left, rhs)
        pred = pred.reshape(self.n_alphas, self.n_val, pred.shape[1])
        pred -= y_val_c[None]
        pred *= pred
        err = pred.sum(1)
        return np.asarray(B.to_numpy(err), dtype=np.float64) / self.n_val


def _stacked_is_cheaper(n_alphas: int, n_val: int, n_train: int, rank: int) -> bool:
    return n_alphas * n_val * n_train <= rank * (n_train + n_alphas * n_val)


def _select_alphas(mse: np.ndarray, alphas: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """Per-target index of the best alpha: max of ``-mean MSE + 1e-10 log(alpha)``."""
    score = -mse + _TIE_SLOPE * np.log(alphas)[:, None]
    score[invalid] = -np.inf
    best = np.argmax(score, axis=0)
    if invalid.all():
        best[:] = int(np.argmax(alphas))
    return best


# --------------------------------------------------------------------------- single space
def cross_validated_ridge(features: np.ndarray, responses: np.ndarray, folds: Folds, alphas: Sequence[float],
                          *, inner_folds: int | str = 5, inner_groups: np.ndarray | None = None,
                          standardize: bool = True, pca: int | None = None, backend: str = "numpy",
                          target_batch: int | None = None, seed: int = 0, solver: str = "auto",
                          dtype: str | None = None, memory_budget_bytes: int | None = None) -> EncodingResult:
    """Cross-validated ridge encoding with a per-target alpha chosen by inner CV.

    For each outer fold: features are centred / z-scored (and PCA-projected) with training
    statistics; each target's alpha is chosen by ``inner_folds``-fold CV on the training
    samples (``himalaya``'s score: minus the validation MSE averaged over inner folds; ties to
    the larger alpha); the model is refitted on all training samples with that alpha and
    predicts the test samples. See the module docstring for every convention.

    Parameters
    ----------
    features : numpy.ndarray, shape (n_samples, n_features)
        Stimulus features (finite).
    responses : numpy.ndarray, shape (n_samples, n_targets) or (n_samples,)
        Responses (voxels); bad targets (non-finite / constant) give NaN scores.
    folds : sequence of (train, test)
        Outer folds (e.g. :func:`make_folds`); test folds must be disjoint.
    alphas : sequence of float
        Candidate ridge penalties (positive).
    inner_folds : int or "loo"
        Number of inner folds (see :func:`inner_folds_for`), or ``"loo"``: exact
        leave-one-out over the training samples in closed form (the scheme of
        ``sklearn.linear_model.RidgeCV``): residuals of the fit on all training samples
        divided by ``1 - H_ss``, ``H = 11'/n + X_c (X_c' X_c + alpha I)^-1 X_c'`` (intercept
        refitted for each left-out sample); score minus the mean squared LOO error. Not with
        ``inner_groups`` (samples of a run are not independent) nor ``solver="himalaya"``.
    inner_groups : numpy.ndarray, shape (n_samples,), optional
        Groups (runs) for grouped inner folds; pass the run labels when the outer folds are
        grouped by run.
    standardize : bool
        z-score features with the training mean / SD (centring happens in any case, as the
        intercept).
    pca : int, optional
        Keep this many principal components of the standardised training features.
    backend : {"numpy", "torch", "torch_cuda"}
        himalaya backend for the products with the responses (restored afterwards).
    target_batch : int, optional
        Targets per batch (default: about 256 MB of working memory).
    seed : int
        Seed of the inner folds.
    solver : {"auto", "kernel", "primal", "himalaya"}
        ``"auto"``: kernel (dual) form when ``n_train < n_features`` (after PCA), else primal.
        ``"himalaya"``: fit ``himalaya.kernel_ridge.KernelRidgeCV`` / ``himalaya.ridge.RidgeCV``
        (same choice of form) on the same folds instead of the batched solver here (same
        results, slower: it refits every alpha for every target).
    dtype : {"float32", "float64"}, optional
        Precision of the products with the responses (default: the responses' dtype).
    memory_budget_bytes : int, optional
        Working memory of one target batch when ``target_batch`` is not given (``--mem``;
        default 256 MiB). Does not change the results.

    Returns
    -------
    EncodingResult
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    y_all = _as_2d(responses)
    n_samples, n_targets = y_all.shape
    x_all = _check_features(features, n_samples)
    alphas = _check_alphas(alphas)
    folds = check_folds(folds, n_samples)
    cdtype = float_dtype(dtype, like=y_all)
    n_alphas = alphas.size
    loo = isinstance(inner_folds, str)
    if loo and inner_folds != "loo":
        raise ValueError(f"inner_folds must be an int or 'loo', got {inner_folds!r}")
    if loo and (inner_groups is not None or solver == "himalaya"):
        raise ValueError("inner_folds='loo' works neither with inner_groups nor with solver='himalaya'")

    predictions = np.full((n_samples, n_targets), np.nan, dtype=cdtype)
    fold_r2 = np.full((len(folds), n_targets), np.nan)
    fold_r = np.full((len(folds), n_targets), np.nan)
    chosen = np.full((len(folds), n_targets), np.nan)
    bad_all = np.zeros(n_targets, dtype=bool)
    const_all = np.ones(n_targets, dtype=bool)
    used = ""

    with _himalaya_backend(backend) as B:
        for k, (train, test) in enumerate(folds):
            xtr, xte = _prepare(x_all[train], x_all[test], standardize, pca)
            n_tr, n_feat = xtr.shape
            inner = None if loo else inner_folds_for(train, inner_folds=int(inner_folds),
                                                     inner_groups=inner_groups, seed=seed, outer_fold=k)
            kernel = solver == "kernel" or (solver in ("auto", "himalaya") and n_tr < n_feat)
            used = ("himalaya-" if solver == "himalaya" else "") + ("kernel" if kernel else "primal")
            max_val = n_tr // 3 if loo else max(len(v) for _, v in inner)
            rows = n_samples + n_tr + n_alphas * max_val + 2 * len(test)
            batch = _default_batch(n_targets, rows, cdtype.itemsize, target_batch, memory_budget_bytes)
            if solver == "himalaya":
                fitter = _HimalayaFit(xtr, xte, inner, alphas, kernel, cdtype, batch)
            else:
                fitter = _BatchedFit(xtr, xte, inner, alphas, kernel, cdtype, B)
            for start in range(0, n_targets, batch):
                cols = slice(start, min(start + batch, n_targets))
                yb, bad, const = _batch_responses(y_all, cols, cdtype)
                pred, best = fitter(B, yb[train], yb)
                pred[:, bad] = np.nan
                predictions[test, cols] = pred
                a = alphas[best]
                a[bad | const] = np.nan
                chosen[k, cols] = a
                y_te = yb[test]
                fold_r2[k, cols] = r2_columns(y_te, pred)
                fold_r[k, cols] = pearson_columns(y_te, pred)
                bad_all[cols] = bad
                const_all[cols] = const  # over all samples: equal in every fold
            del fitter

    constant = const_all & ~bad_all
    tested = np.zeros(n_samples, dtype=bool)
    for _, test in folds:
        tested[test] = True
    r2 = _pooled_r2(y_all, predictions, tested, bad_all | constant)
    r = _fold_mean(fold_r, bad_all | constant)
    chosen[:, constant | bad_all] = np.nan
    return EncodingResult(r=r, r2=r2, fold_r2=fold_r2, alphas=chosen, predictions=predictions,
                          fold_r=fold_r, solver=used)


class _BatchedFit:
    """Inner-CV alpha choice and refit for one outer fold, over batches of targets."""

    def __init__(self, xtr: np.ndarray, xte: np.ndarray, inner: Folds | None, alphas: np.ndarray, kernel: bool,
                 dtype: np.dtype, B: Any) -> None:
        self.alphas = alphas
        self.dtype = dtype
        self.loo = inner is None
        self.inner = [] if inner is None else [(np.asarray(t), np.asarray(v)) for t, v in inner]
        n_alphas = alphas.size
        gram = xtr @ xtr.T if kernel else None
        specs = []
        for t, v in self.inner:
            if kernel:
                specs.append(_spectral_kernel(gram[np.ix_(t, t)], gram[np.ix_(v, t)]))
            else:
                specs.append(_spectral_primal(xtr[t], xtr[v]))
        stacked_bytes = sum(n_alphas * len(v) * len(t) for t, v in self.inner) * dtype.itemsize
        self.ops = [_CVOperator(s, alphas, B, dtype,
                                stacked=_stacked_is_cheaper(n_alphas, len(v), len(t), s.rank)
                                and stacked_bytes <= _STACK_BYTES)
                    for s, (t, v) in zip(specs, self.inner)]
        self.idx = [(B.asarray(t), B.asarray(v)) for t, v in self.inner]
        # refit on the whole training set
        if kernel:
            self.full = _spectral_kernel(gram, xte @ xtr.T)
        else:
            self.full = _spectral_primal(xtr, xte)
        n_te, n_tr, rank = xte.shape[0], xtr.shape[0], self.full.rank
        if self.loo:
            self.invalid = self.full.invalid(alphas)
            self._init_loo(B)
        else:
            self.invalid = np.any([op.invalid for op in self.ops], axis=0)
        self.grouped = (n_te * n_tr <= rank * (n_tr + n_te)
                        and n_alphas * n_te * n_tr * dtype.itemsize <= _STACK_BYTES)
        self.filters = self.full.filters(alphas, clip=True)
        self.cache: dict[int, Any] = {}
        if not self.grouped:
            self.basis_t = B.asarray(np.ascontiguousarray(self.full.basis.T), dtype=dtype.name)
            self.proj = B.asarray(self.full.proj, dtype=dtype.name)

    def _init_loo(self, B: Any) -> None:
        """Leave-one-out residuals ``e_a = (I - H_a) y_c / (1 - diag H_a)`` from the training
        decomposition ``basis`` (orthonormal columns): ``(I - H_a) y_c = basis diag(c_a)
        basis' y_c + (I - basis basis') y_c`` with ``c_a = a / (lam + a)`` (``lam = s^2`` in
        primal form), computed in this form to avoid cancellation in float32; the second
        term is zero when the basis is square."""
        full = self.full
        lam = np.maximum(full.spec, 0.0) if full.kind == "kernel" else full.spec ** 2
        comp = self.alphas[:, None] / (lam[None, :] + self.alphas[:, None])   # (A, r): 1 - shrinkage
        n_tr, rank = full.basis.shape
        sq = full.basis ** 2
        one_minus_h = sq @ comp.T + (1.0 - sq.sum(axis=1))[:, None] - 1.0 / n_tr   # (n_train, A)
        ok = (one_minus_h > 1e-12).all(axis=0)
        self.invalid = self.invalid | ~ok
        inv = np.where(ok[None, :], 1.0 / np.where(one_minus_h > 1e-12, one_minus_h, 1.0), 0.0)
        # LOO residuals of alpha a: diag(inv_a) basis diag(comp_a) z (+ inv_a * perp)
        self.loo_resid = [B.asarray(inv[:, a, None] * full.basis * comp[a][None, :], dtype=self.dtype.name)
                          for a in range(self.alphas.size)]
        self.loo_inv = B.asarray(np.ascontiguousarray(inv.T), dtype=self.dtype.name)   # (A, n_train)
        self.loo_basis_t = B.asarray(np.ascontiguousarray(full.basis.T), dtype=self.dtype.name)
        self.loo_square = rank >= n_tr
        if not self.loo_square:
            self.loo_basis = B.asarray(full.basis, dtype=self.dtype.name)

    def _loo_mse(self, B: Any, yc: Any) -> np.ndarray:
        """(n_alphas, n_targets) mean squared leave-one-out error."""
        z = B.matmul(self.loo_basis_t, yc)
        perp = None if self.loo_square else yc - B.matmul(self.loo_basis, z)
        mse = np.zeros((self.alphas.size, yc.shape[1]))
        for a, resid in enumerate(self.loo_resid):
            res = B.matmul(resid, z)
            if perp is not None:
                res += self.loo_inv[a][:, None] * perp
            res *= res
            mse[a] = np.asarray(B.to_numpy(res.sum(0)), dtype=np.float64) / yc.shape[0]
        return mse

    def _resolution(self, B: Any, a: int) -> Any:
        if a not in self.cache:
            m = (self.full.proj * self.filters[a][None, :]) @ self.full.basis.T
            self.cache[a] = B.asarray(m, dtype=self.dtype.name)
        return self.cache[a]

    def __call__(self, B: Any, y_train: np.ndarray, y_all: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Test predictions (n_test, n_batch) and chosen alpha indices (n_batch,)."""
        ytr = B.asarray(y_train, dtype=self.dtype.name)
        mean = ytr.mean(0)
        yc = ytr - mean
        if self.loo:
            mse = self._loo_mse(B, yc)
        else:
            mse = np.zeros((self.alphas.size, ytr.shape[1]))
            for op, (t, v) in zip(self.ops, self.idx):
                y_fit = ytr[t]
                mean_fit = y_fit.mean(0)
                mse += op.squared_errors(B, y_fit - mean_fit, ytr[v] - mean_fit)
            mse /= len(self.ops)
        best = _select_alphas(mse, self.alphas, self.invalid)

        if self.grouped:
            out = B.zeros_like(ytr, shape=(self.full.proj.shape[0], ytr.shape[1]))
            for a in np.unique(best):
                cols = np.flatnonzero(best == a)
                cols_b = B.asarray(cols)
                out[:, cols_b] = B.matmul(self._resolution(B, int(a)), yc[:, cols_b])
        else:
            z = B.matmul(self.basis_t, yc)
            z *= B.asarray(np.ascontiguousarray(self.filters[best].T), dtype=self.dtype.name)
            out = B.matmul(self.proj, z)
        out += mean[None]
        return np.asarray(B.to_numpy(out)), best


class _HimalayaFit:
    """One outer fold fitted with himalaya's own estimators (``solver="himalaya"``)."""

    def __init__(self, xtr: np.ndarray, xte: np.ndarray, inner: Folds, alphas: np.ndarray, kernel: bool,
                 dtype: np.dtype, batch: int) -> None:
        self.xtr = xtr.astype(dtype)
        self.xte = xte.astype(dtype)
        self.inner = [(np.asarray(t), np.asarray(v)) for t, v in inner]
        self.alphas = alphas
        self.kernel = kernel
        self.batch = batch

    def __call__(self, B: Any, y_train: np.ndarray, y_all: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from himalaya.kernel_ridge import KernelRidgeCV
        from himalaya.ridge import RidgeCV

        params = {"n_targets_batch": self.batch, "n_targets_batch_refit": self.batch}
        if self.kernel:
            model = KernelRidgeCV(alphas=self.alphas, kernel="linear", fit_intercept=True, cv=self.inner,
                                  solver_params=params, warn=False)
        else:
            model = RidgeCV(alphas=self.alphas, fit_intercept=True, cv=self.inner,
                            solver_params={**params, "warn": False})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model.fit(self.xtr, y_train)
            pred = np.asarray(B.to_numpy(model.predict(self.xte)))
        best_alpha = np.asarray(B.to_numpy(model.best_alphas_), dtype=np.float64)
        best = np.abs(np.log(best_alpha)[None, :] - np.log(self.alphas)[:, None]).argmin(axis=0)
        if pred.ndim == 1:
            pred = pred[:, None]
        return pred, best

