"""Real BOLD end to end: Haxby et al. (2001), subject 1, through the command line.

The shared data hold one axial slice (40 x 20 x 1) of 12 runs, 8 object categories in blocks
(one block per category and run). Its 270 voxels outside the brain are exactly 0 in every run,
and the 530-voxel ventral temporal (VT) mask holds all the others. A brain mask covering the
whole slice therefore puts 270 constant voxels inside the brain mask, as signal dropout or a
generous fMRIPrep mask do in real data: the participant level must leave them out, say how many,
and still find the category structure of VT cortex.

The dataset is built in a temporary folder (nothing is copied into the repository): 4 runs as
fMRIPrep-style derivatives (BOLD, whole-slice brain mask, the six motion estimates as confounds),
the 8 categories as stimuli (one placeholder PNG per category: their model features are
irrelevant here) and the VT mask as ROI.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_dnn.io import derivatives as drv
from bids_dnn.cli.main import main

HAXBY = Path("haxby2001_sub1") / "mvpa2" / "data"
RUNS = (1, 2, 3, 4)
SUBJECT = "01"
TASK = "objects"
SPACE = "T1w"
T_R = 2.5
#: voxels of the slice that are 0 in every run (all outside the VT mask)
N_CONSTANT = 270
N_VT = 530
#: the motion estimates (bold_moest.txt) under fMRIPrep's names; their order does not matter to the GLM
MOTION = ["rot_x", "rot_y", "rot_z", "trans_x", "trans_y", "trans_z"]
#: Pearson / Spearman r between the pipeline's VT crossnobis RDM and the nilearn + rsatoolbox
#: reference of :func:`_reference_rdm` (28 pairs); observed 0.96 / 0.90 with runs 1-4 (a
#: reference without noise normalisation gives 0.82 / 0.78).
MIN_REFERENCE_PEARSON = 0.9
MIN_REFERENCE_SPEARMAN = 0.8

SPEC = f"""\
schema_version: 1
models:
  - name: alexnet
    weights: random
    init_seed: 0
    layers: [features.2, features.12]
brain:
  space: {SPACE}
  glm: {{confounds: [motion_6]}}
rois:
  masks: derivatives/rois
rdm: {{brain: crossnobis}}
analyses:
  rsa: {{comparison: spearman, permutations: 20}}
  weighted_rsa: {{enabled: false}}
  searchlight: {{enabled: true, radius_mm: 8, min_voxels: 5}}
  encoding: {{enabled: true, cv: kfold, n_folds: 4, inner_folds: 3}}
statistics:
  bootstrap: 20
  map_permutations: 20
  seed: 42
"""


def _run_folder(root: Path, run: int) -> Path:
    return root / "haxby2001" / "sub001" / "BOLD" / f"task001_run{run:03d}"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _placeholder_image(index: int) -> np.ndarray:
    """A 64 x 64 RGB grating, a different orientation, frequency and colour per category."""
    y, x = np.mgrid[0:64, 0:64] / 64.0
    angle = np.pi * index / 8
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * (2 + index) * (x * np.cos(angle) + y * np.sin(angle)))
    colour = np.array([(index & 1), (index >> 1) & 1, (index >> 2) & 1], float) * 0.7 + 0.3
    return (255 * wave[..., None] * colour).astype(np.uint8)


@pytest.fixture(scope="module")
def haxby_bids(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BIDS dataset + fMRIPrep-style derivatives of 4 Haxby runs (whole-slice brain mask)."""
    import nibabel as nib
    from PIL import Image

    source = shared_data / HAXBY
    bids = tmp_path_factory.mktemp("haxby") / "bids"
    _write_json(bids / "dataset_description.json", {"Name": "Haxby 2001 sub-1, one slice", "BIDSVersion": "1.10.0"})
    (bids / "participants.tsv").write_text(f"participant_id\nsub-{SUBJECT}\n")
    _write_json(bids / f"task-{TASK}_bold.json", {"RepetitionTime": T_R, "TaskName": TASK})
    fmriprep = bids / "derivatives" / "fmriprep"
    _write_json(fmriprep / "dataset_description.json", {
        "Name": "fMRIPrep-style outputs (Haxby slice as delivered)", "BIDSVersion": "1.10.0",
        "DatasetType": "derivative", "GeneratedBy": [{"Name": "fMRIPrep", "Version": "test"}]})
    categories = sorted(pd.read_csv(_run_folder(source, 1) / "bold_events.tsv", sep="\t")["trial_type"].unique())
    assert len(categories) == 8
    (bids / "stimuli").mkdir()
    for index, category in enumerate(categories):
        Image.fromarray(_placeholder_image(index)).save(bids / "stimuli" / f"{category}.png")
    func, prep = bids / f"sub-{SUBJECT}" / "func", fmriprep / f"sub-{SUBJECT}" / "func"
    func.mkdir(parents=True)
    prep.mkdir(parents=True)
    for run in RUNS:
        folder = _run_folder(source, run)
        stem = f"sub-{SUBJECT}_task-{TASK}_run-{run}"
        events = pd.read_csv(folder / "bold_events.tsv", sep="\t")
        events["stim_file"] = events["trial_type"] + ".png"
        events.to_csv(func / f"{stem}_events.tsv", sep="\t", index=False)
        shutil.copyfile(folder / "bold_1slice.nii.gz", func / f"{stem}_bold.nii.gz")
        shutil.copyfile(folder / "bold_1slice.nii.gz", prep / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz")
        _write_json(prep / f"{stem}_space-{SPACE}_desc-preproc_bold.json", {"RepetitionTime": T_R})
        bold = nib.load(folder / "bold_1slice.nii.gz")
        whole_slice = nib.Nifti1Image(np.ones(bold.shape[:3], np.uint8), bold.affine)
        nib.save(whole_slice, prep / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz")
        motion = pd.DataFrame(np.loadtxt(folder / "bold_moest.txt"), columns=MOTION)
        assert len(motion) == bold.shape[3]
        motion.to_csv(prep / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")
    rois = bids / "derivatives" / "rois"
    _write_json(rois / "dataset_description.json", {"Name": "VT mask", "BIDSVersion": "1.10.0",
                                                    "DatasetType": "derivative"})
    shutil.copyfile(source / "mask.nii.gz", rois / f"space-{SPACE}_label-VT_mask.nii.gz")
    (bids / "code").mkdir()
    (bids / "code" / "spec.yaml").write_text(SPEC)
    return bids


def _reference_rdm(source: Path, categories: list[str]) -> np.ndarray:
    """VT crossnobis RDM computed without bids_dnn: per-run betas and residuals from nilearn's
    ``FirstLevelModel`` (same HRF, drift, AR(1) and motion confounds), the noise precision of
    rsatoolbox (``shrinkage_diag`` per run, covariances averaged over runs, the pipeline's
    convention) and rsatoolbox's crossnobis across runs. Returns the (n_pairs,) vector.

    Not identical to the pipeline: nilearn's residuals are not whitened by the AR(1) model."""
    import warnings

    import nibabel as nib
    from nilearn.glm.first_level import FirstLevelModel
    from rsatoolbox.data import Dataset
    from rsatoolbox.data.noise import prec_from_residuals
    from rsatoolbox.rdm import calc_rdm

    vt = nib.load(source / "mask.nii.gz")
    inside = np.asarray(vt.dataobj) > 0
    betas, residuals = [], []
    for run in RUNS:
        folder = _run_folder(source, run)
        model = FirstLevelModel(t_r=T_R, hrf_model="spm", drift_model="cosine", high_pass=0.008, noise_model="ar1",
                                mask_img=vt, minimize_memory=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nilearn notices about the mask and renamed attributes
            model.fit(str(folder / "bold_1slice.nii.gz"), events=pd.read_csv(folder / "bold_events.tsv", sep="\t"),
                      confounds=pd.DataFrame(np.loadtxt(folder / "bold_moest.txt"), columns=MOTION))
            maps = [model.compute_contrast(c, output_type="effect_size") for c in categories]
            run_residuals = getattr(model, "residuals_", None)
            run_residuals = model.residuals if run_residuals is None else run_residuals
        betas.append(np.stack([np.asarray(m.dataobj)[inside] for m in maps]))
        residuals.append(np.asarray(run_residuals[0].dataobj)[inside].T)
    covariances = [np.linalg.inv(p) for p in prec_from_residuals(residuals, method="shrinkage_diag")]
    precision = np.linalg.inv(np.mean(covariances, axis=0))
    n_runs, n_cond = len(RUNS), len(categories)
    data = Dataset(np.concatenate(betas), obs_descriptors={"conds": np.tile(np.arange(n_cond), n_runs),
                                                           "runs": np.repeat(np.arange(n_runs), n_cond)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rsatoolbox casts NaN descriptors internally
        return calc_rdm(data, method="crossnobis", descriptor="conds", cv_descriptor="runs",
                        noise=precision).get_vectors()[0]


def test_unusable_voxels_are_left_out_and_counted(rng: np.random.Generator) -> None:
    """Voxels constant or non-finite in any run are removed from betas, residuals and the mask;
    a stimulus missing from a run (NaN betas there) removes no voxel."""
    from bids_dnn.brain.assembly import drop_unusable_voxels

    n_runs, n_stimuli, n_voxels = 2, 3, 9
    mask = np.zeros((3, 4, 1), bool)
    mask[:, 1:, 0] = True  # 9 voxels
    run_betas = rng.normal(size=(n_runs, n_stimuli, n_voxels))
    residuals = [rng.normal(size=(20, n_voxels)) for _ in range(n_runs)]
    estimated = np.ones((n_runs, n_stimuli), bool)
    estimated[1, 2] = False  # stimulus 2 has no events in run 1
    run_betas[1, 2] = np.nan
    constant = np.zeros(n_voxels, bool)
    nonfinite = np.zeros(n_voxels, bool)
    constant[[1, 7]] = True  # constant in a run (no estimates there)
    run_betas[:, :, [1, 7]] = np.nan
    nonfinite[[4, 7]] = True  # NaN in the BOLD of a run (voxel 7: constant in one, NaN in another run)
    run_betas[:, :, 4] = np.nan
    run_betas[0, 1, 5] = np.inf  # a non-finite estimate of a fitted voxel
    kept_betas, kept_residuals, used_mask, counts = drop_unusable_voxels(
        run_betas.copy(), residuals, estimated, mask, constant, nonfinite)
    usable = np.setdiff1d(np.arange(n_voxels), [1, 4, 5, 7])
    assert counts == {"brain_mask": 9, "used": 5, "left_out": 4, "left_out_constant": 1, "left_out_nonfinite": 3}
    np.testing.assert_array_equal(kept_betas, run_betas[:, :, usable])
    for kept, full in zip(kept_residuals, residuals):
        np.testing.assert_array_equal(kept, full[:, usable])
    expected_mask = mask.copy()
    expected_mask[mask] = np.isin(np.arange(n_voxels), usable)
    np.testing.assert_array_equal(used_mask, expected_mask)
    assert np.isnan(kept_betas[1, 2]).all() and np.isfinite(np.delete(kept_betas.reshape(-1, 5), 5, axis=0)).all()


@pytest.mark.shared
@pytest.mark.slow  # ~20 s of CPU: participant and group levels and the nilearn reference
def test_haxby_slice_with_constant_voxels_runs_end_to_end(haxby_bids: Path, shared_data: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 0 with 270 constant voxels inside the brain mask; the VT crossnobis RDM is finite, shows
    category structure and agrees with a nilearn reference; the left-out voxels are counted."""
    import nibabel as nib
    from scipy.stats import pearsonr, spearmanr

    from bids_dnn.workflows.tables import read_relmat

    out = tmp_path / "out"
    spec = haxby_bids / "code" / "spec.yaml"
    base = [str(haxby_bids), str(out)]
    assert main([*base, "participant", "--spec", str(spec), "--no-progress"]) == 0, capsys.readouterr().err
    assert main([*base, "group", "--spec", str(spec), "--no-progress"]) == 0, capsys.readouterr().err

    layout = drv.OutputLayout(out, task=TASK, space=SPACE)
    square, ids = read_relmat(layout.brain_rdm(SUBJECT, "VT", "crossnobis"))
    stimuli = pd.read_csv(layout.stimuli_table(), sep="\t")
    categories = [dict(zip(stimuli["stim_id"], stimuli["category"]))[i] for i in ids]
    assert square.shape == (8, 8) and np.isfinite(square).all()
    np.testing.assert_allclose(square, square.T, atol=1e-10)
    pairs = np.triu_indices(8, k=1)
    off = square[pairs]
    # real category structure (crossnobis is unbiased: without it the distances scatter around 0):
    # most pairs clearly apart, and faces vs houses the most distinct pair, as in Haxby et al. (2001)
    assert off.mean() > 3 * off.std(ddof=1) / np.sqrt(off.size), off  # observed 4.2
    assert (off > 0).mean() > 0.85, off  # observed 25 of 28
    face_house = square[categories.index("face"), categories.index("house")]
    assert face_house == off.max(), (face_house, off)
    reference = _reference_rdm(shared_data / HAXBY, categories)
    assert pearsonr(off, reference).statistic > MIN_REFERENCE_PEARSON
    assert spearmanr(off, reference).statistic > MIN_REFERENCE_SPEARMAN

    status = json.loads(layout.status(SUBJECT).read_text())
    assert status["voxels"] == {"brain_mask": N_CONSTANT + N_VT, "used": N_VT, "left_out": N_CONSTANT,
                                "left_out_constant": N_CONSTANT, "left_out_nonfinite": 0}
    assert [run["n_voxels_constant"] for run in status["glm_runs"]] == [N_CONSTANT] * len(RUNS)
    assert status["rois"] == {"VT": N_VT}
    assert any(f"{N_CONSTANT} of {N_CONSTANT + N_VT} brain-mask voxels left out" in w for w in status["warnings"])
    report = layout.participant_report(SUBJECT).read_text()
    assert f"{N_VT} used of {N_CONSTANT + N_VT}; {N_CONSTANT} left out of every analysis" in report

    rsa = pd.read_csv(layout.rsa_table(SUBJECT, "alexnet"), sep="\t")
    assert len(rsa) == 2 and np.isfinite(rsa["score"]).all() and (rsa["n_voxels"] == N_VT).all()
    vt = np.asarray(nib.load(shared_data / HAXBY / "mask.nii.gz").dataobj) > 0
    searchlight = np.asarray(nib.load(layout.searchlight_map(SUBJECT, "alexnet", "features.2", "spearman")).dataobj)
    assert np.isfinite(searchlight[vt]).mean() > 0.9  # centres with enough finite neighbours
    assert not np.any(np.isfinite(searchlight[~vt]) & (searchlight[~vt] != 0))  # no map value at left-out voxels
    encoding = np.asarray(nib.load(layout.encoding_map(SUBJECT, "alexnet", "features.2", "r")).dataobj)
    assert np.isfinite(encoding[vt]).all() and not np.isfinite(encoding[~vt]).any()
