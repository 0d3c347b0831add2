"""First-level GLM: options, censoring, LSA/LSS estimates against hand-built truth."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, replace

import numpy as np
import pandas as pd
import pytest
from nilearn.glm.first_level import make_first_level_design_matrix, run_glm

from _fmriprep_tables import fmriprep_confounds
from bids_dnn.brain.glm import GLMOptions, chunk_size_for_budget, fit_run_glm
from bids_dnn.errors import AnalysisError, BidsValidationError

T_R = 2.0
N_TIME = 160
CONDS = [f"stim{i:02d}" for i in range(6)]


def _events(
    n_rep: int = 3, conds: list[str] = CONDS, rng: np.random.Generator | None = None, spacing: float = 16.0
) -> pd.DataFrame:
    """A trial every ``spacing`` s; each condition repeated ``n_rep`` times (shuffled with ``rng``)."""
    order = np.repeat(np.arange(len(conds)), n_rep)
    if rng is not None:
        order = rng.permutation(order)
    onsets = 8.0 + np.cumsum(np.r_[0, np.full(len(order) - 1, spacing)])
    return pd.DataFrame({"onset": onsets, "duration": 2.0, "condition": [conds[i] for i in order]})


def _nilearn_design(events: pd.DataFrame, n_time: int = N_TIME, **kw) -> pd.DataFrame:
    frame_times = np.arange(n_time) * T_R
    ev = events.rename(columns={"condition": "trial_type"})[["onset", "duration", "trial_type"]]
    return make_first_level_design_matrix(frame_times, ev, **kw)


# ---------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------


def test_glm_options_are_plain_frozen_and_checked():
    options = GLMOptions(confounds=["motion_6", "csf"], scrub_fd=0.5)
    assert options.confounds == ("motion_6", "csf") and hash(options) == hash(replace(options))
    with pytest.raises(FrozenInstanceError):
        options.method = "lss"  # type: ignore[misc]
    for bad in ({"method": "lsq"}, {"hrf": "canonical"}, {"drift_model": "linear"}, {"noise_model": "ar2"},
                {"output": "z"}, {"high_pass_hz": -0.01}, {"scrub_fd": 0.0}, {"confounds": "motion_6"}):
        with pytest.raises(AnalysisError, match=next(iter(bad))):
            GLMOptions(**bad)


def test_glm_options_mirror_the_spec_section():
    """Same fields, defaults and choices as the spec's ``brain.glm`` (the workflows convert one
    into the other field by field)."""
    import typing
    from dataclasses import asdict, fields

    from bids_dnn.brain.glm import GLM_CHOICES
    from bids_dnn.spec import GLMSpec

    spec_fields = GLMSpec.model_fields
    assert [f.name for f in fields(GLMOptions)] == list(spec_fields)
    defaults = GLMSpec().model_dump()
    assert asdict(GLMOptions()) == {**defaults, "confounds": tuple(defaults["confounds"])}
    for name, choices in GLM_CHOICES.items():
        assert typing.get_args(spec_fields[name].annotation) == choices, name


def test_options_from_a_spec_section_fit_like_the_section_itself(rng):
    """The workflows' converter gives options equal to hand-written ones, and a fit with them
    gives the numbers of the section read attribute by attribute (the behaviour before the
    options had their own type)."""
    from bids_dnn.spec import GLMSpec
    from bids_dnn.workflows.subject_patterns import glm_options

    section = GLMSpec(method="lss", hrf="glover", noise_model="ols", confounds=["csf"], scrub_fd=0.4, output="t")
    options = glm_options(section)
    assert options == GLMOptions(method="lss", hrf="glover", noise_model="ols", confounds=("csf",), scrub_fd=0.4,
                                 output="t")
    assert glm_options(GLMSpec()) == GLMOptions()
    events, confounds, _, bold = _planted(rng, n_vox=30, n_rep=2)
    confounds.loc[[20, 21], "framewise_displacement"] = 1.0
    ours = fit_run_glm(bold, events, T_R, options, confounds=confounds)
    as_before = fit_run_glm(bold, events, T_R, section, confounds=confounds)  # type: ignore[arg-type]
    np.testing.assert_array_equal(ours.betas, as_before.betas)
    np.testing.assert_array_equal(ours.sample_mask, as_before.sample_mask)
    assert ours.warnings == as_before.warnings and ours.dof == as_before.dof


# ---------------------------------------------------------------------------------------
# Estimates against hand-built truth
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise_model, tol", [("ols", 1e-8), ("ar1", 1e-6)])
def test_voxel_equal_to_one_regressor_gets_beta_one(noise_model, tol):
    events = _events(n_rep=2)
    design = _nilearn_design(events, hrf_model="spm", drift_model="cosine", high_pass=0.008)
    target = CONDS[2]
    bold = np.c_[design[target].to_numpy(), 3.0 * design[target].to_numpy() + 100.0]
    options = GLMOptions(noise_model=noise_model, confounds=())
    result = fit_run_glm(bold, events, T_R, options)
    assert result.conditions == CONDS
    expected = np.zeros((len(CONDS), 2))
    expected[2] = [1.0, 3.0]
    np.testing.assert_allclose(result.betas, expected, atol=tol)
    assert list(result.design.columns) == list(design.columns)  # condition ids restored
    np.testing.assert_allclose(result.design.to_numpy(), design.to_numpy())
    assert result.dof == N_TIME - np.linalg.matrix_rank(design.to_numpy())
    assert result.warnings == []


@pytest.mark.parametrize("engine", ["nilearn", "fast"])
def test_ar1_falls_back_to_ols_where_yule_walker_fails(monkeypatch, rng, engine):
    """nilearn's batched AR(1) solve fails on exactly-zero residuals; those voxels get OLS (the
    ``nilearn`` engine refits them; the ``fast`` engine never calls nilearn's solve)."""
    import nilearn.glm.first_level as first_level

    real = first_level.run_glm

    def strict_run_glm(Y, X, noise_model="ar1"):
        residual_ss = ((Y - X @ (np.linalg.pinv(X) @ Y)) ** 2).sum(0)
        if noise_model != "ols" and (residual_ss <= 1e-20 * (Y**2).sum(0)).any():
            raise np.linalg.LinAlgError("Singular matrix")
        return real(Y, X, noise_model=noise_model)

    monkeypatch.setattr(first_level, "run_glm", strict_run_glm)
    events = _events(n_rep=2)
    design = _nilearn_design(events, hrf_model="spm", drift_model="cosine", high_pass=0.008)
    noisy = design[CONDS[0]].to_numpy() + rng.normal(scale=0.2, size=N_TIME)
    result = fit_run_glm(np.c_[design[CONDS[1]].to_numpy(), noisy], events, T_R,
                         GLMOptions(confounds=(), engine=engine))
    np.testing.assert_allclose(result.betas[:, 0], np.eye(len(CONDS))[1], atol=1e-8)
    assert np.isfinite(result.betas[:, 1]).all() and abs(result.betas[0, 1] - 1) < 0.3
    assert np.isfinite(result.residuals).all()


def _planted(rng, n_vox=400, noise=0.3, n_rep=3, confound_effect=True):
    events = _events(n_rep=n_rep, rng=rng)
    design = _nilearn_design(events, hrf_model="spm", drift_model=None)
    betas = rng.normal(size=(len(CONDS), n_vox))
    confounds = fmriprep_confounds(N_TIME, rng)
    bold = design[CONDS].to_numpy() @ betas + noise * rng.normal(size=(N_TIME, n_vox)) + 50.0
    if confound_effect:  # motion-like nuisance signal, removed by the motion_6 regressors
        motion = confounds[["trans_x", "trans_y", "rot_z"]].to_numpy()
        bold += motion @ rng.normal(scale=5.0, size=(3, n_vox))
    return events, confounds, betas, bold


@pytest.mark.parametrize("method", ["lsa", "lss"])
def test_planted_betas_recovered(rng, method):
    events, confounds, truth, bold = _planted(rng)
    options = GLMOptions(method=method, confounds=("motion_6",), noise_model="ar1")
    result = fit_run_glm(bold, events, T_R, options, confounds=confounds, chunk_size=150)
    assert result.betas.shape == truth.shape and result.residuals.shape == (N_TIME, truth.shape[1])
    r = np.corrcoef(result.betas.ravel(), truth.ravel())[0, 1]
    assert r > 0.9, r
    # t output: same sign pattern, larger scale than effects for low noise
    t_result = fit_run_glm(bold, events, T_R, replace(options, output="t"), confounds=confounds)
    assert np.corrcoef(t_result.betas.ravel(), truth.ravel())[0, 1] > 0.85


def test_confound_regressors_matter(rng):
    events, confounds, truth, bold = _planted(rng, noise=0.3)
    with_motion = fit_run_glm(bold, events, T_R, GLMOptions(confounds=("motion_6",), noise_model="ols"),
                              confounds=confounds)
    without = fit_run_glm(bold, events, T_R, GLMOptions(confounds=(), noise_model="ols"), confounds=confounds)
    err = lambda res: np.mean((res.betas - truth) ** 2)  # noqa: E731
    assert err(with_motion) < 0.5 * err(without)
    assert {"trans_x", "rot_z"} <= set(with_motion.design.columns)


def test_t_values_match_nilearn_contrast(rng):
    events, _, _, bold = _planted(rng, n_vox=50, confound_effect=False)
    options = GLMOptions(confounds=(), noise_model="ols", output="t")
    result = fit_run_glm(bold, events, T_R, options)
    design = _nilearn_design(events, hrf_model="spm", drift_model="cosine", high_pass=0.008)
    labels, results = run_glm(bold, design.to_numpy(), noise_model="ols")
    for j, cond in enumerate(CONDS):
        con = (design.columns == cond).astype(float)
        np.testing.assert_allclose(result.betas[j], results[0.0].Tcontrast(con).t, rtol=1e-8)


def test_lss_equals_separate_trial_models(rng):
    """LSS estimate = mean over trials of a model with that trial alone + others by condition."""
    events, _, _, bold = _planted(rng, n_vox=30, n_rep=2, confound_effect=False)
    options = GLMOptions(method="lss", confounds=(), noise_model="ols", drift_model="none")
    result = fit_run_glm(bold, events, T_R, options)
    expected = np.zeros((len(CONDS), bold.shape[1]))
    for i, row in events.iterrows():
        ev = events.copy()
        ev.loc[i, "condition"] = "zz_this_trial"
        design = _nilearn_design(ev, hrf_model="spm", drift_model=None)
        theta = np.linalg.pinv(design.to_numpy()) @ bold
        expected[CONDS.index(row["condition"])] += theta[list(design.columns).index("zz_this_trial")] / 2
    np.testing.assert_allclose(result.betas, expected, rtol=1e-7, atol=1e-9)


def test_repeated_stimuli_give_one_regressor(rng):
    events = _events(n_rep=4, rng=rng, spacing=12.0)
    result = fit_run_glm(rng.normal(size=(N_TIME, 5)), events, T_R, GLMOptions(confounds=()))
    assert result.conditions == sorted(CONDS)
    assert [c for c in result.design.columns if c in CONDS] == CONDS
    assert result.betas.shape == (len(CONDS), 5)
    assert result.n_trials == {c: 4 for c in CONDS}


def test_zero_duration_events_are_impulses_without_warning(rng):
    events = _events(n_rep=1)
    events.loc[events["condition"] == "stim04", "duration"] = 0.0  # impulse events are allowed
    result = fit_run_glm(rng.normal(size=(N_TIME, 4)), events, T_R, GLMOptions(confounds=()))
    assert np.isfinite(result.betas).all()
    assert not any("null duration" in w for w in result.warnings), result.warnings
    assert not any("cond_" in w for w in result.warnings)


def test_chunking_does_not_change_results(rng):
    events, _, _, bold = _planted(rng, n_vox=100, confound_effect=False)
    ols = GLMOptions(confounds=(), noise_model="ols")
    a = fit_run_glm(bold, events, T_R, ols, chunk_size=7)
    b = fit_run_glm(bold, events, T_R, ols)
    np.testing.assert_allclose(a.betas, b.betas, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.residuals, b.residuals, rtol=1e-5, atol=1e-5)


def test_float32_series_gives_the_float64_results_exactly(rng):
    """A float32 series (as ``masked_timeseries`` returns) is converted chunk by chunk: the same
    numbers as its float64 copy, bit for bit, with censoring, AR(1), NaN and constant voxels."""
    events, confounds, _, bold = _planted(rng, n_vox=300)
    bold32 = bold.astype(np.float32)
    bold32[4, 10] = np.nan
    bold32[1:, 11] = 7.0  # constant over the kept volumes only (volume 0 is censored)
    confounds["non_steady_state_outlier00"] = np.eye(N_TIME)[0]
    options = GLMOptions(confounds=("motion_6", "csf"))
    a = fit_run_glm(bold32, events, T_R, options, confounds=confounds, chunk_size=64)
    b = fit_run_glm(bold32.astype(np.float64), events, T_R, options, confounds=confounds, chunk_size=64)
    np.testing.assert_array_equal(a.betas, b.betas)
    np.testing.assert_array_equal(a.residuals, b.residuals)
    np.testing.assert_array_equal(np.flatnonzero(~a.fitted_voxels), [10, 11])
    assert a.dof == b.dof and a.warnings == b.warnings


def test_chunk_size_for_budget():
    assert chunk_size_for_budget(1000) == 2**30 // (1000 * 64) == 16777  # voxels
    assert chunk_size_for_budget(1000, 2**29) == 8388
    assert chunk_size_for_budget(10) == 50_000 and chunk_size_for_budget(10**6) == 256


@pytest.mark.parametrize("noise_model", ["ols", "ar1"])
def test_fit_never_copies_the_whole_series(rng, noise_model):
    """Traced peak memory of a float32 fit stays near series + float32 residuals + one chunk
    (the former code held a float64 copy of the whole series and a masked copy besides)."""
    import tracemalloc

    events = _events(n_rep=2)
    n_vox = 20_000
    bold = (rng.standard_normal((N_TIME, n_vox), dtype=np.float32) + np.float32(100.0))
    options = GLMOptions(confounds=(), noise_model=noise_model)
    tracemalloc.start()
    try:
        fit_run_glm(bold, events, T_R, options, chunk_size=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    residuals = N_TIME * n_vox * 4
    chunk = N_TIME * 1000 * 8 * 8
    assert peak < residuals + chunk + 2 * 2**20, (peak / 2**20, (residuals + chunk) / 2**20)


# ---------------------------------------------------------------------------------------
# Censoring, bad events, bad voxels
# ---------------------------------------------------------------------------------------


def test_scrubbing_drops_volumes_like_a_nilearn_sample_mask(rng):
    events, confounds, _, bold = _planted(rng, n_vox=40, confound_effect=False)
    confounds["non_steady_state_outlier00"] = np.eye(N_TIME)[0]
    confounds.loc[[30, 31, 90], "framewise_displacement"] = 1.2
    options = GLMOptions(confounds=("csf",), scrub_fd=0.5, noise_model="ols")
    result = fit_run_glm(bold, events, T_R, options, confounds=confounds)
    keep = np.ones(N_TIME, bool)
    keep[[0, 30, 31, 90]] = False
    np.testing.assert_array_equal(result.sample_mask, keep)
    assert result.residuals.shape == (N_TIME - 4, 40) and len(result.design) == N_TIME - 4
    np.testing.assert_allclose(result.design.index.to_numpy(), np.arange(N_TIME)[keep] * T_R)
    assert any("4 of 160 volumes censored" in w for w in result.warnings)
    # reference: nilearn design on the full run, rows dropped, fitted with run_glm
    ev = events.rename(columns={"condition": "trial_type"})
    design = make_first_level_design_matrix(
        np.arange(N_TIME) * T_R, ev, hrf_model="spm", drift_model="cosine", high_pass=0.008,
        add_regs=confounds[["csf"]],
    )
    _, res = run_glm(bold[keep], design.to_numpy()[keep], noise_model="ols")
    expected = res[0.0].theta[[list(design.columns).index(c) for c in CONDS]]
    np.testing.assert_allclose(result.betas, expected, rtol=1e-8)
    assert result.dof == N_TIME - 4 - np.linalg.matrix_rank(design.to_numpy()[keep])


def test_constant_confound_columns_are_dropped_with_one_warning(rng):
    """All-zero / constant confound columns (and a spike regressor of a censored volume) give the
    betas of the model without them (nilearn reference) and no rank-deficiency warning."""
    events, confounds, _, bold = _planted(rng, n_vox=40)
    confounds["non_steady_state_outlier00"] = np.eye(N_TIME)[0]  # zero once volume 0 is censored
    for name in ("rot_y", "csf", "a_comp_cor_01"):
        confounds[name] = 0.0
    confounds["white_matter"] = 3.0
    flat = ["rot_y", "csf", "white_matter", "a_comp_cor_01", "non_steady_state_outlier00"]
    options = GLMOptions(confounds=("motion_6", "csf", "white_matter", "a_comp_cor_5", "non_steady_state"),
                      noise_model="ols")
    result = fit_run_glm(bold, events, T_R, options, confounds=confounds)
    keep = np.arange(N_TIME) > 0
    used = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_z", "a_comp_cor_00", "a_comp_cor_02", "a_comp_cor_03",
            "a_comp_cor_04"]
    design = _nilearn_design(events, hrf_model="spm", drift_model="cosine", high_pass=0.008,
                             add_regs=confounds[used])
    _, res = run_glm(bold[keep], design.to_numpy()[keep], noise_model="ols")
    expected = res[0.0].theta[[list(design.columns).index(c) for c in CONDS]]
    np.testing.assert_allclose(result.betas, expected, rtol=1e-8, atol=1e-10)
    assert not set(flat) & set(result.design.columns) and set(used) <= set(result.design.columns)
    assert result.dof == N_TIME - 1 - np.linalg.matrix_rank(design.to_numpy()[keep])
    dropped = [w for w in result.warnings if "constant" in w]
    assert len(dropped) == 1 and "dropped 5 confound column(s)" in dropped[0], result.warnings
    assert all(name in dropped[0] for name in flat)
    assert not [w for w in result.warnings if "rank deficient" in w or "singular" in w], result.warnings


def test_onsets_beyond_scan_are_dropped_with_warning(rng):
    events = _events(n_rep=2)
    late = pd.DataFrame({"onset": [N_TIME * T_R + 10.0], "duration": [2.0], "condition": ["late_stim"]})
    bold = rng.normal(size=(N_TIME, 10))
    result = fit_run_glm(bold, pd.concat([events, late], ignore_index=True), T_R, GLMOptions(confounds=()))
    assert result.conditions == CONDS
    assert any("after the end of the scan" in w and "late_stim" in w for w in result.warnings)
    with pytest.raises(AnalysisError, match="no events left"):
        fit_run_glm(bold, late, T_R, GLMOptions(confounds=()))


def test_unknown_duration_of_a_nuisance_event_is_an_impulse(rng):
    """BIDS allows duration n/a: a non-stimulus row (a pre-scan response, negative onset) is
    modelled as an impulse, exactly as with duration 0; a stimulus row with n/a is refused."""
    events = _events(n_rep=1)
    extra = pd.DataFrame({"onset": [-1.5, 30.0], "duration": [np.nan, np.nan],
                          "condition": ["nuisance_response", "nuisance_response"]})
    with_na = pd.concat([events, extra], ignore_index=True)
    with_zero = with_na.assign(duration=with_na["duration"].fillna(0.0))
    bold = rng.normal(size=(N_TIME, 5))
    a = fit_run_glm(bold, with_na, T_R, GLMOptions(confounds=()))
    b = fit_run_glm(bold, with_zero, T_R, GLMOptions(confounds=()))
    np.testing.assert_allclose(a.betas, b.betas, rtol=1e-12, atol=1e-12)
    assert any("2 non-stimulus event(s) with duration n/a modelled as impulses (nuisance_response)" in w
               for w in a.warnings), a.warnings
    stimulus_na = events.copy()
    stimulus_na.loc[3, "duration"] = np.nan
    stimulus_na.attrs["source_file"] = "sub-01_task-x_events.tsv"
    with pytest.raises(BidsValidationError, match=r"sub-01_task-x_events.tsv: row 5: duration 'n/a' on a "
                                                  r"stimulus event \(stim03\)"):
        fit_run_glm(bold, stimulus_na, T_R, GLMOptions(confounds=()))


def test_bad_events_raise_clear_errors(rng):
    events = _events(n_rep=1)
    events.loc[2, "duration"] = -1.0
    with pytest.raises(BidsValidationError, match="negative duration") as info:
        fit_run_glm(rng.normal(size=(N_TIME, 3)), events, T_R, GLMOptions(confounds=()), source="sub-01 run-1")
    assert info.value.exit_code == 16 and "sub-01 run-1" in str(info.value)
    with pytest.raises(BidsValidationError, match="condition"):
        fit_run_glm(rng.normal(size=(N_TIME, 3)), events.drop(columns="condition"), T_R, GLMOptions(confounds=()))


def test_nan_and_constant_voxels_are_excluded_and_counted(rng):
    events, _, truth, bold = _planted(rng, n_vox=20, confound_effect=False)
    bold[5, 3] = np.nan
    bold[:, 7] = np.nan
    bold[:, [10, 11, 12]] = 42.0
    result = fit_run_glm(bold, events, T_R, GLMOptions(confounds=()))
    bad = [3, 7, 10, 11, 12]
    assert np.isnan(result.betas[:, bad]).all() and np.isnan(result.residuals[:, bad]).all()
    good = np.setdiff1d(np.arange(20), bad)
    assert np.isfinite(result.betas[:, good]).all()
    np.testing.assert_array_equal(np.flatnonzero(~result.fitted_voxels), bad)
    assert any("5 of 20 voxels excluded" in w and "2 with NaN" in w and "3 constant" in w for w in result.warnings)


# ---------------------------------------------------------------------------------------
# Real data (Haxby 2001, subject 1)
# ---------------------------------------------------------------------------------------


@pytest.mark.shared
def test_haxby_lsa_betas_classify_categories(shared_data):
    """Real BOLD -> per-run LSA betas of ventral temporal cortex (530 voxels, 8 categories, 12
    runs) -> leave-one-run-out correlation classifier, well above chance (1/8)."""
    import nibabel as nib

    from bids_dnn.brain.patterns import noise_normalize

    root = shared_data / "haxby2001_sub1" / "mvpa2" / "data"
    mask = np.asarray(nib.load(root / "mask.nii.gz").dataobj) > 0
    options = GLMOptions(confounds=(), drift_model="polynomial")
    raw, whitened, conditions = [], [], None
    for run in range(1, 13):
        folder = root / "haxby2001" / "sub001" / "BOLD" / f"task001_run{run:03d}"
        bold = np.asarray(nib.load(folder / "bold_1slice.nii.gz").dataobj, dtype=np.float32)[mask].T
        events = pd.read_csv(folder / "bold_events.tsv", sep="\t").rename(columns={"trial_type": "condition"})
        result = fit_run_glm(bold, events, 2.5, options)
        conditions = conditions or result.conditions
        assert result.conditions == conditions and result.betas.shape == (8, int(mask.sum()))
        assert result.residuals.shape == (121, int(mask.sum())) and result.warnings == []
        raw.append(result.betas)
        whitened.append(noise_normalize(result.betas, result.residuals, "multivariate", dof=result.dof))

    def loro_accuracy(run_betas: np.ndarray) -> float:
        correct = 0
        for test in range(len(run_betas)):
            train = np.delete(run_betas, test, axis=0).mean(axis=0)
            corr = np.corrcoef(run_betas[test], train)[:8, 8:]
            correct += int((corr.argmax(axis=1) == np.arange(8)).sum())
        return correct / (len(run_betas) * 8)

    assert loro_accuracy(np.stack(raw)) > 0.25  # chance 0.125
    assert loro_accuracy(np.stack(whitened)) > 0.45  # multivariate noise normalisation helps


# ---------------------------------------------------------------------------------------
# Recovery of the planted demo responses (participant outputs of the demo dataset)
# ---------------------------------------------------------------------------------------

#: minimum Pearson r (stimuli x voxels of a signal ROI) between the run-averaged LSA betas of a
#: demo participant and its planted responses. The demo is noise-limited: the residual noise SD of
#: a run-averaged beta is ~1.5 planted units (control-ROI RMS), so r can be at most about
#: 1 / sqrt(1 + 1.5**2) ~ 0.55; observed 0.53-0.57 (seed 0, 4 subjects). A broken design (wrong
#: onsets or stimulus order) gives r ~ 0.
DEMO_RECOVERY_MIN_R = 0.45
#: the least-squares gain of the betas (in planted units) on the truth must be ~1 (observed
#: 0.97-1.05): the GLM is unbiased and the betas are in BOLD units.
DEMO_GAIN_RANGE = (0.85, 1.15)
#: the control ROI carries no planted response: its betas correlate with no planted pattern
#: (|r| with the planted responses of either signal ROI, on the first 80 voxels; observed < 0.03).
DEMO_CONTROL_MAX_ABS_R = 0.1


def test_demo_glm_recovers_planted_responses(demo_dataset, demo_outputs):
    """Estimated betas follow the planted responses in the signal ROIs; the control ROI has none.

    Betas are in BOLD units: a unit planted response is ``BASELINE * SIGNAL_PSC / 100`` (600 x 3 %
    = 18); the planted responses are regenerated with :func:`bids_dnn.workflows.demo.planted_responses`.
    """
    import json

    import nibabel as nib

    from bids_dnn.workflows.demo import (BASELINE, CATEGORIES, N_PER_CATEGORY, PLANTED, SIGNAL_PSC, SPACE, _brain_mask,
                               _roi_masks, planted_responses)

    subjects = sorted(p.name[4:] for p in demo_outputs.glob("sub-*") if p.is_dir())
    assert len(subjects) == 4
    truth = planted_responses(demo_dataset, subjects, seed=0)
    demo_ids = [f"{c}{i + 1:02d}" for c in CATEGORIES for i in range(N_PER_CATEGORY)]
    rois = _roi_masks(_brain_mask())
    scale = BASELINE * SIGNAL_PSC / 100
    for subject in subjects:
        path = demo_outputs / f"sub-{subject}" / "func" / (
            f"sub-{subject}_task-shapes_space-{SPACE}_desc-stimuli_stat-effect_statmap.nii.gz")
        order = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())["VolumeStimuli"]
        estimated = np.moveaxis(np.asarray(nib.load(path).dataobj, dtype=np.float64), -1, 0) / scale
        planted = truth[subject][[demo_ids.index(s) for s in order]]
        signal = [roi for roi, layer in PLANTED.items() if layer is not None]
        for roi, layer in PLANTED.items():
            est, true = estimated[:, rois[roi]], planted[:, rois[roi]]
            if layer is None:
                assert np.abs(true).max() == 0
                for other in signal:
                    pattern = planted[:, rois[other]][:, :est.shape[1]]
                    r = np.corrcoef(est[:, :pattern.shape[1]].ravel(), pattern.ravel())[0, 1]
                    assert abs(r) < DEMO_CONTROL_MAX_ABS_R, (subject, roi, other, r)
            else:
                r = np.corrcoef(est.ravel(), true.ravel())[0, 1]
                gain = float(est.ravel() @ true.ravel() / (true.ravel() @ true.ravel()))
                assert r > DEMO_RECOVERY_MIN_R, (subject, roi, r)
                assert DEMO_GAIN_RANGE[0] < gain < DEMO_GAIN_RANGE[1], (subject, roi, gain)
                # the other signal ROI's truth does not explain these betas
                other = next(o for o in signal if o != roi)
                wrong = np.corrcoef(est.ravel(), planted[:, rois[other]][:, :est.shape[1]].ravel())[0, 1]
                assert abs(wrong) < DEMO_CONTROL_MAX_ABS_R, (subject, roi, other, wrong)
