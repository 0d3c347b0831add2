"""fMRIPrep confounds: selection by group, name and glob; constant columns; censoring masks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from _fmriprep_tables import fmriprep_confounds
from bids_dnn.brain.confounds import (
    CONFOUND_GROUPS,
    ConfoundGroup,
    drop_constant_confounds,
    sample_mask_from_confounds,
    select_confounds,
)
from bids_dnn.errors import AnalysisError, InputMissingError


def test_select_confounds_groups_and_names(rng):
    table = fmriprep_confounds(50, rng)
    sel, _ = select_confounds(table, ["motion_6", "csf", "white_matter"])
    assert list(sel.columns) == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "csf", "white_matter"]
    np.testing.assert_array_equal(sel.to_numpy(), table[list(sel.columns)].to_numpy())

    sel, _ = select_confounds(table, ["motion_24"])
    assert sel.shape == (50, 24) and "rot_z_derivative1_power2" in sel.columns
    assert not sel.isna().any().any()  # first-row n/a of derivatives -> 0
    assert sel["trans_x_derivative1"].iloc[0] == 0.0
    np.testing.assert_allclose(sel["trans_x_derivative1"].iloc[1:], table["trans_x_derivative1"].iloc[1:])

    sel, _ = select_confounds(table, ["a_comp_cor_5", "cosine", "global_signal", "motion_6", "trans_x"])
    assert [c for c in sel.columns if c.startswith("a_comp")] == [f"a_comp_cor_{i:02d}" for i in range(5)]
    assert [c for c in sel.columns if c.startswith("cosine")] == ["cosine00", "cosine01", "cosine02"]
    assert list(sel.columns).count("trans_x") == 1  # no duplicates
    assert set(CONFOUND_GROUPS) >= {"motion_6", "motion_24", "white_matter", "csf", "global_signal", "a_comp_cor_5", "cosine"}


def test_select_confounds_missing_columns_error(rng):
    table = fmriprep_confounds(20, rng).drop(columns=["rot_z", "csf"])
    with pytest.raises(InputMissingError) as info:
        select_confounds(table, ["motion_6", "csf"], source="sub-01_task-x_desc-confounds_timeseries.tsv")
    message = str(info.value)
    assert "rot_z" in message and "csf" in message and "sub-01_task-x_desc-confounds_timeseries.tsv" in message
    assert "Available columns" in message and "trans_x" in message
    assert info.value.exit_code == 66
    with pytest.raises(InputMissingError, match="no_such_column"):
        select_confounds(table, ["no_such_column"])


def test_sample_mask_non_steady_state_and_fd(rng):
    table = fmriprep_confounds(30, rng)
    table["non_steady_state_outlier00"] = np.eye(30)[0]
    table["non_steady_state_outlier01"] = np.eye(30)[1]
    table.loc[[7, 19], "framewise_displacement"] = [0.9, 0.6]
    expected = np.ones(30, bool)
    expected[[0, 1, 7, 19]] = False
    np.testing.assert_array_equal(sample_mask_from_confounds(table, True, 0.5), expected)
    expected[[0, 1]] = True
    np.testing.assert_array_equal(sample_mask_from_confounds(table, False, 0.5), expected)
    assert sample_mask_from_confounds(table, False, None).all()
    with pytest.raises(InputMissingError, match="framewise_displacement"):
        sample_mask_from_confounds(table.drop(columns="framewise_displacement"), True, 0.5)


def test_select_confounds_refuses_text_and_late_missing_values(rng):
    table = fmriprep_confounds(12, rng)
    table["label"] = "x"
    with pytest.raises(AnalysisError, match="not numeric: label"):
        select_confounds(table, ["label", "csf"])
    table.loc[5, "csf"] = np.nan  # n/a beyond the first row is not fMRIPrep's convention
    with pytest.raises(AnalysisError, match="n/a values: csf"):
        select_confounds(table, ["csf"])
    table.loc[0, "white_matter"] = np.nan  # first row, not a derivative-type column: kept as n/a
    with pytest.raises(AnalysisError, match="n/a values: white_matter"):
        select_confounds(table, ["white_matter"])


def test_optional_group_without_match_is_a_note_not_an_error(rng):
    table = fmriprep_confounds(10, rng)
    selected, notes = select_confounds(table, ["non_steady_state", "csf"], source="conf.tsv")
    assert list(selected.columns) == ["csf"]
    assert notes == ["confound group 'non_steady_state' matched no column in conf.tsv"]
    table["non_steady_state_outlier01"] = np.eye(10)[1]
    table["non_steady_state_outlier00"] = np.eye(10)[0]
    selected, notes = select_confounds(table, ["non_steady_state"])
    assert list(selected.columns) == ["non_steady_state_outlier00", "non_steady_state_outlier01"] and notes == []


def test_confound_group_resolve_exact_and_pattern():
    available = ["csf", "cosine01", "cosine00", "trans_x"]
    assert ConfoundGroup(("trans_x", "trans_y")).resolve(available) == (["trans_x"], ["trans_y"])
    assert ConfoundGroup(pattern="cosine*").resolve(available) == (["cosine00", "cosine01"], [])
    assert ConfoundGroup(pattern="spike*").resolve(available) == ([], ["spike*"])
    assert ConfoundGroup(pattern="spike*", required=False).resolve(available) == ([], [])
    assert all(group.description for group in CONFOUND_GROUPS.values())


def test_drop_constant_confounds_over_the_kept_volumes(rng):
    n_time = 20
    keep = np.ones(n_time, bool)
    keep[[0, 7]] = False
    regs = pd.DataFrame({
        "varies": rng.normal(size=n_time),
        "zeros": np.zeros(n_time),
        "spike_of_censored": np.eye(n_time)[7],  # non-zero only on a censored volume
        "offset": np.full(n_time, 2.5),
        "spike_kept": np.eye(n_time)[3],
    })
    kept, dropped = drop_constant_confounds(regs, keep)
    # reference: peak-to-peak of each column over the kept rows, by numpy
    flat = [c for c in regs.columns if np.ptp(regs[c].to_numpy()[keep]) == 0]
    assert dropped == flat == ["zeros", "spike_of_censored", "offset"]
    assert list(kept.columns) == ["varies", "spike_kept"]
    pd.testing.assert_frame_equal(kept, regs[["varies", "spike_kept"]])
    none_kept, all_dropped = drop_constant_confounds(regs, np.zeros(n_time, bool))
    assert none_kept.shape == (n_time, 0) and all_dropped == list(regs.columns)
