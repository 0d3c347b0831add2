"""The fast GLM engine against nilearn: batched OLS / AR(1) fits (betas, whitened residuals, t
contrasts, AR(1) bins) and closed-form LSS (one nilearn model per trial), on the same designs."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from nilearn.glm.contrasts import compute_contrast
from nilearn.glm.first_level import make_first_level_design_matrix, run_glm

from _fmriprep_tables import fmriprep_confounds
from bids_dnn.brain.fast_glm import ar1_bin_indices, fit_glm, whiten_ar1, whiten_ar1_transposed
from bids_dnn.brain.fast_lss import fit_lss
from bids_dnn.brain.glm import GLM_ENGINES, GLMOptions, fit_run_glm
from bids_dnn.brain.lss import LSSDesign

T_R = 2.0
N_TIME = 180
RTOL = 1e-8


def _ar1_noise(rng: np.random.Generator, n_time: int, n_vox: int) -> np.ndarray:
    """AR(1) noise with a different coefficient per voxel (-0.3 to 0.8: many nilearn bins)."""
    rho = rng.uniform(-0.3, 0.8, n_vox)
    innovations = rng.standard_normal((n_time, n_vox))
    noise = np.empty_like(innovations)
    noise[0] = innovations[0]
    for t in range(1, n_time):
        noise[t] = rho * noise[t - 1] + innovations[t]
    return noise


def _nilearn_fit(Y: np.ndarray, X: np.ndarray, noise_model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """nilearn's ``run_glm`` on all voxels at once: theta (n_reg, n_vox), whitened residuals,
    labels and results."""
    labels, results = run_glm(Y, X, noise_model=noise_model)
    theta = np.empty((X.shape[1], Y.shape[1]))
    residuals = np.empty_like(Y)
    for key, result in results.items():
        theta[:, labels == key] = result.theta
        residuals[:, labels == key] = result.whitened_residuals
    return theta, residuals, labels, results


def _close(ours: np.ndarray, reference: np.ndarray, rtol: float = RTOL) -> None:
    """Equal to ``rtol`` relative to the largest reference value (entries near zero included)."""
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=0, atol=rtol * np.abs(reference).max())


# ---------------------------------------------------------------------------------------
# Batched fit of one design
# ---------------------------------------------------------------------------------------


def test_whitening_and_its_transpose_are_adjoint(rng):
    x, a = rng.standard_normal((50, 3)), rng.standard_normal((50, 2))
    rho = 0.37
    W = np.eye(50) - rho * np.eye(50, k=-1)
    np.testing.assert_allclose(whiten_ar1(x, rho), W @ x, rtol=1e-14)
    np.testing.assert_allclose(whiten_ar1_transposed(a, rho), W.T @ a, rtol=1e-14)


@pytest.mark.parametrize("noise_model", ["ols", "ar1"])
def test_fit_glm_equals_run_glm(rng, noise_model):
    """Betas, whitened residuals and t contrasts of every regressor equal nilearn's ``run_glm``
    on all voxels at once; the AR(1) bins are nilearn's labels."""
    n_reg, n_vox = 12, 900
    X = np.c_[rng.standard_normal((N_TIME, n_reg - 1)), np.ones(N_TIME)]
    Y = X @ rng.standard_normal((n_reg, n_vox)) + _ar1_noise(rng, N_TIME, n_vox) + 100.0
    theta, residuals, labels, results = _nilearn_fit(Y, X, noise_model)
    ours_residuals = np.full((N_TIME, n_vox + 5), np.nan)
    voxels = np.arange(n_vox) + 5  # the data's columns 5.. hold the voxels
    data = np.c_[np.zeros((N_TIME, 5)), Y]
    estimates = fit_glm(data, X, noise_model, voxels=voxels, chunk_size=128, residuals_out=ours_residuals)
    _close(estimates, theta)
    _close(ours_residuals[:, 5:], residuals)
    assert np.isnan(ours_residuals[:, :5]).all()
    for column in (0, 4):
        t_ours = fit_glm(Y, X, noise_model, columns=[column], t_values=True, chunk_size=300)[0]
        t_reference = compute_contrast(labels, results, np.eye(n_reg)[column], stat_type="t").stat()
        _close(t_ours, t_reference)
    if noise_model == "ar1":
        bins = ar1_bin_indices(Y, X, chunk_size=77)
        np.testing.assert_array_equal(bins / 100.0, labels.astype(float))
        assert len(np.unique(bins)) > 20


def test_fit_glm_with_kept_rows_and_float32_data(rng):
    """Censored time points (``rows``) and float32 data: as nilearn on the kept rows of the
    float64 copy; the chunk size does not change the numbers."""
    n_vox = 300
    X_full = np.c_[rng.standard_normal((N_TIME, 5)), np.ones(N_TIME)]
    data = (X_full @ rng.standard_normal((6, n_vox)) + _ar1_noise(rng, N_TIME, n_vox) + 50).astype(np.float32)
    rows = np.setdiff1d(np.arange(N_TIME), [0, 40, 41, 99])
    theta, _, _, _ = _nilearn_fit(data[rows].astype(np.float64), X_full[rows], "ar1")
    small = fit_glm(data, X_full[rows], "ar1", rows=rows, chunk_size=7)
    large = fit_glm(data, X_full[rows], "ar1", rows=rows, chunk_size=10_000)
    _close(small, theta)
    np.testing.assert_allclose(small, large, rtol=0, atol=1e-10 * np.abs(large).max())


def test_exactly_fitted_voxels_get_ols(rng):
    """A voxel equal to a regressor has no AR(1) coefficient (nilearn's solve fails on it): it
    gets OLS, beta exactly the regressor's, next to noisy voxels fitted with AR(1)."""
    X = np.c_[rng.standard_normal((N_TIME, 3)), np.ones(N_TIME)]
    noisy = X @ [0.5, 1.0, -1.0, 10.0] + _ar1_noise(rng, N_TIME, 1)[:, 0]
    Y = np.c_[X[:, 1], noisy]
    estimates = fit_glm(Y, X, "ar1")
    np.testing.assert_allclose(estimates[:, 0], np.eye(4)[1], atol=1e-10)
    _close(estimates[:, 1], _nilearn_fit(noisy[:, None], X, "ar1")[0][:, 0])


# ---------------------------------------------------------------------------------------
# fit_run_glm: the fast engine against nilearn on the same design
# ---------------------------------------------------------------------------------------


def _run(rng, n_vox=250, n_rep=3, conds=6, spacing=9.0):
    """Events (shuffled repeats), fMRIPrep confounds with censored volumes, AR(1) BOLD."""
    order = rng.permutation(np.repeat(np.arange(conds), n_rep))
    events = pd.DataFrame({"onset": 6.0 + np.arange(len(order)) * spacing, "duration": 1.5,
                           "condition": [f"stim{c:02d}" for c in order]})
    confounds = fmriprep_confounds(N_TIME, rng)
    confounds["non_steady_state_outlier00"] = np.eye(N_TIME)[0]
    confounds.loc[[50, 51, 120], "framewise_displacement"] = 1.5
    ev = events.rename(columns={"condition": "trial_type"})
    design = make_first_level_design_matrix(np.arange(N_TIME) * T_R, ev, hrf_model="spm", drift_model=None)
    signal = design[sorted(set(ev["trial_type"]))].to_numpy() @ rng.normal(scale=2.0, size=(conds, n_vox))
    motion = confounds[["trans_x", "rot_y"]].to_numpy() @ rng.normal(scale=3.0, size=(2, n_vox))
    bold = signal + motion + _ar1_noise(rng, N_TIME, n_vox) + 100.0
    return events, confounds, bold


OPTIONS = GLMOptions(confounds=("motion_6", "csf"), scrub_fd=0.5)


@pytest.mark.parametrize("change", [
    {}, {"noise_model": "ols"}, {"drift_model": "polynomial"}, {"output": "t"},
    {"hrf": "glover + derivative", "output": "t"}, {"noise_model": "ols", "output": "t", "drift_model": "none"},
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_fast_lsa_equals_nilearn_on_the_same_design(rng, change):
    """Betas (or t values), whitened residuals and dof of the default engine equal nilearn's
    ``run_glm`` on the result's design and kept volumes (confounds, drift, scrubbing), and the
    ``nilearn`` engine."""
    events, confounds, bold = _run(rng)
    options = replace(OPTIONS, **change)
    fast = fit_run_glm(bold, events, T_R, options, confounds=confounds, chunk_size=64)
    assert fast.engine == "fast" and (~fast.sample_mask).sum() == 4
    X = fast.design.to_numpy()
    Y = bold[fast.sample_mask]
    theta, residuals, labels, results = _nilearn_fit(Y, X, options.noise_model)
    columns = [list(fast.design.columns).index(c) for c in fast.conditions]
    if options.output == "t":
        expected = np.stack([compute_contrast(labels, results, np.eye(X.shape[1])[j], stat_type="t").stat()
                             for j in columns])
    else:
        expected = theta[columns]
    _close(fast.betas, expected)
    _close(fast.residuals.astype(float), residuals, rtol=1e-6)  # float32 residuals
    assert fast.dof == results[next(iter(results))].df_residuals == len(Y) - np.linalg.matrix_rank(X)
    reference = fit_run_glm(bold, events, T_R, replace(options, engine="nilearn"), confounds=confounds)
    assert reference.engine == "nilearn" and reference.warnings == fast.warnings
    _close(fast.betas, reference.betas)


def test_fast_lsa_equals_first_level_model(rng, tmp_path):
    """Effect sizes and t values equal nilearn's ``FirstLevelModel`` (AR(1), confounds, sample
    mask, no signal scaling) on a NIfTI image of the same run."""
    import nibabel as nib
    from nilearn.glm.first_level import FirstLevelModel

    events, confounds, bold = _run(rng, n_vox=120)
    options = replace(OPTIONS, confounds=("csf",), scrub_fd=None)
    fast = fit_run_glm(bold, events, T_R, options, confounds=confounds)
    t_fast = fit_run_glm(bold, events, T_R, replace(options, output="t"), confounds=confounds)
    image = nib.Nifti1Image(bold.T.reshape(4, 5, 6, N_TIME).astype(np.float64), np.eye(4))
    mask = nib.Nifti1Image(np.ones((4, 5, 6), dtype=np.uint8), np.eye(4))
    model = FirstLevelModel(t_r=T_R, hrf_model="spm", drift_model="cosine", high_pass=0.008, noise_model="ar1",
                            signal_scaling=False, mask_img=mask, minimize_memory=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "a mask was given at masker creation"
        model.fit(image, events.rename(columns={"condition": "trial_type"}), confounds=confounds[["csf"]],
                  sample_masks=[np.flatnonzero(fast.sample_mask)])
    masker = model.masker_
    for j, condition in enumerate(fast.conditions):
        effect = masker.transform(model.compute_contrast(condition, output_type="effect_size")).ravel()
        stat = masker.transform(model.compute_contrast(condition, output_type="stat")).ravel()
        _close(fast.betas[j], effect)
        _close(t_fast.betas[j], stat)


# ---------------------------------------------------------------------------------------
# LSS: closed form against one nilearn model per trial
# ---------------------------------------------------------------------------------------


def _per_trial_reference(Y: np.ndarray, design: LSSDesign, noise_model: str, t_values: bool) -> np.ndarray:
    """One nilearn ``run_glm`` per trial model, on all voxels at once."""
    out = np.full((design.n_trials, Y.shape[1]), np.nan)
    for i in np.flatnonzero(design.has_signal):
        X = design.trial_design(i)
        theta, _, labels, results = _nilearn_fit(Y, X, noise_model)
        out[i] = (compute_contrast(labels, results, np.eye(X.shape[1])[0], stat_type="t").stat() if t_values
                  else theta[0])
    return out


def _trial_frame(rng, order: np.ndarray, hrf: str, n_confounds: int = 3) -> pd.DataFrame:
    events = pd.DataFrame({"onset": 6.0 + np.arange(len(order)) * 11.0, "duration": 1.0,
                           "trial_type": [f"trial_{i:05d}" for i in range(len(order))]})
    regs = pd.DataFrame(rng.standard_normal((N_TIME, n_confounds)), columns=[f"c{k}" for k in range(n_confounds)])
    return make_first_level_design_matrix(np.arange(N_TIME) * T_R, events, hrf_model=hrf, drift_model="cosine",
                                          high_pass=0.01, add_regs=regs)


@pytest.mark.parametrize("noise_model", ["ols", "ar1"])
@pytest.mark.parametrize("t_values", [False, True])
@pytest.mark.parametrize("hrf", ["spm", "spm + derivative"])
def test_fit_lss_equals_one_nilearn_model_per_trial(rng, noise_model, t_values, hrf):
    """Conditions with 3 trials, one with 2 and one with a single trial (its model is the
    condition-level model): every trial's estimate or t value equals its own nilearn model."""
    order = rng.permutation(np.r_[np.repeat(np.arange(4), 3), [4, 4, 5]])
    design = LSSDesign.from_frame(_trial_frame(rng, order, hrf), order, 6)
    common = design.common_design()
    Y = common @ rng.normal(size=(common.shape[1], 250)) + _ar1_noise(rng, N_TIME, 250) + 80.0
    ours = fit_lss(Y, design, noise_model, t_values=t_values, chunk_size=90)
    _close(ours, _per_trial_reference(Y, design, noise_model, t_values))


def test_fit_lss_fits_irregular_and_silent_trials_like_nilearn(rng):
    """A trial without signal gets no estimate (NaN); a trial whose condition's other trial has
    a regressor below the signal threshold (left out of its model, but not zero) is fitted as
    its own model; the others in closed form. All equal nilearn's models."""
    order = np.array([0, 1, 0, 1, 2, 2, 3, 3])
    frame = _trial_frame(rng, order, "spm")
    frame["trial_00006"] *= 1e-10  # condition 3: the other trial of trial 7 is below the threshold
    frame["trial_00005"] = 0.0  # no signal: no estimate
    design = LSSDesign.from_frame(frame, order, 4)
    assert not design.has_signal[[5, 6]].any() and not design.extends_common(7) and design.extends_common(0)
    Y = design.common_design() @ rng.normal(size=(design.common_design().shape[1], 150))
    Y += _ar1_noise(rng, N_TIME, 150)
    ours = fit_lss(Y, design, "ar1", chunk_size=50)
    assert np.isnan(ours[5]).all() and np.isfinite(np.delete(ours, [5, 6], axis=0)).all()
    reference = _per_trial_reference(Y, design, "ar1", False)
    rows = [i for i in range(8) if i not in (5, 6)]  # trial 6 (tiny regressor) has no signal either
    _close(ours[rows], reference[rows])


@pytest.mark.parametrize("change", [{}, {"noise_model": "ols", "output": "t"}, {"hrf": "spm + derivative"}],
                         ids=["ar1", "ols-t", "derivative"])
def test_fast_lss_run_equals_the_nilearn_engine(rng, change):
    """fit_run_glm with LSS: the fast engine's condition patterns (mean of the trials'
    estimates) equal the nilearn engine's (one ``run_glm`` per trial model), with confounds,
    drift and scrubbed volumes; residuals, design and dof (condition-level model) too."""
    events, confounds, bold = _run(rng, n_vox=150, n_rep=2, conds=5, spacing=14.0)
    options = replace(OPTIONS, method="lss", **change)
    fast = fit_run_glm(bold, events, T_R, options, confounds=confounds, chunk_size=40)
    reference = fit_run_glm(bold, events, T_R, replace(options, engine="nilearn"), confounds=confounds)
    _close(fast.betas, reference.betas)
    _close(fast.residuals.astype(float), reference.residuals.astype(float), rtol=1e-6)
    assert fast.dof == reference.dof and fast.warnings == reference.warnings
    pd.testing.assert_frame_equal(fast.design, reference.design)


def test_engines_are_a_registry_named_by_the_options():
    assert set(GLM_ENGINES) == {"fast", "nilearn"} and GLMOptions().engine == "fast"
    with pytest.raises(Exception, match="engine"):
        GLMOptions(engine="torch")
