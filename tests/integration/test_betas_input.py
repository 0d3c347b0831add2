"""``brain.input: betas``: ready-made per-run stimulus maps instead of a GLM on fMRIPrep outputs.

The test dataset is the demo with its fMRIPrep derivatives replaced by per-run betas from a
quick LSA GLM (``bids_dnn.brain.glm.fit_run_glm``) written as ``derivatives/betas``:

- sub-01: JSON sidecars (``VolumeStimuli`` = stim_file), volumes in a shuffled order, a
  ``desc-brain`` mask per run;
- sub-02: TSV sidecars (``stim_id`` column), no mask (union of non-zero finite voxels); in
  run 1 one stimulus has two volumes (averaged) and one extra volume names no stimulus;
- sub-03: TSV sidecars, one stimulus left out of run 1 (NaN there: crossnobis on runs 2-3);
- sub-04: TSV sidecars, nothing special.

Without noise normalisation (betas come without residuals) ``features.2`` and ``features.5``
are close in ROI ``early`` for a single subject (sub-02: 0.29 vs 0.35), so the planted layer is
checked on the mean over the four subjects there, and per subject in ROI ``late``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_dnn.cli.main import main
from bids_dnn.workflows.demo import PLANTED, SPACE, TASK

SUBJECTS = ["01", "02", "03", "04"]

SPEC = """\
schema_version: 1
models:
  - name: alexnet
    weights: random
    init_seed: 0
    layers: [features.2, features.5, features.12, classifier.1, classifier.4]
brain: {{input: betas, noise_normalization: none{extra}}}
rois:
  atlas: derivatives/rois/space-{space}_atlas-planted_dseg.nii.gz
analyses:
  rsa: {{comparison: spearman, permutations: 200}}
outputs: {{report: false}}
statistics: {{seed: 42}}
"""


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


def _write_betas(demo: Path, target: Path) -> None:
    """Per-run LSA betas of the demo's fMRIPrep-style runs, in the betas-input layout."""
    import nibabel as nib

    from bids_dnn.brain.glm import GLMOptions, fit_run_glm

    fmriprep = demo / "derivatives" / "fmriprep"
    rng = np.random.default_rng(5)
    (target).mkdir(parents=True)
    (target / "dataset_description.json").write_text(json.dumps({
        "Name": "ready-made betas", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "test"}]}))
    for subject in SUBJECTS:
        func = target / f"sub-{subject}" / "func"
        func.mkdir(parents=True)
        for events_path in sorted((demo / f"sub-{subject}" / "func").glob("*_events.tsv")):
            stem = events_path.name.replace("_events.tsv", "")
            bold_img = nib.load(fmriprep / f"sub-{subject}" / "func" / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz")
            mask_img = nib.load(fmriprep / f"sub-{subject}" / "func" / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz")
            mask = np.asarray(mask_img.dataobj) > 0
            data = np.asarray(bold_img.dataobj, dtype=np.float64)[mask].T
            events = read(events_path)
            events["condition"] = [f"{f.rsplit('.', 1)[0]}" if isinstance(f, str) and f else f"nuisance_{t}"
                                   for f, t in zip(events["stim_file"], events["trial_type"])]
            confounds = read(fmriprep / f"sub-{subject}" / "func" / f"{stem}_desc-confounds_timeseries.tsv")
            result = fit_run_glm(data, events, 2.0, GLMOptions(), confounds=confounds)
            conds = [c for c in result.conditions if not c.startswith("nuisance_")]
            betas = {c: result.betas[result.conditions.index(c)] for c in conds}
            files = {f.rsplit(".", 1)[0]: f for f in events["stim_file"] if isinstance(f, str) and f}
            order = list(rng.permutation(conds)) if subject == "01" else list(conds)
            if subject == "02" and stem.endswith("run-1"):
                # per-presentation style: the first stimulus in two volumes (averaged back to its
                # beta), plus a volume naming no stimulus of the task
                noise = rng.standard_normal(data.shape[1])
                first = order[0]
                betas["plus"], betas["minus"], betas["junk"] = betas[first] + noise, betas[first] - noise, noise
                order = ["plus"] + order[1:] + ["junk", "minus"]
            if subject == "03" and stem.endswith("run-1"):
                order = order[1:]  # one stimulus missing from run 1
            labels = {"plus": first, "minus": first, "junk": "junk"} if subject == "02" and stem.endswith("run-1") \
                else {}
            volume = np.zeros(mask.shape + (len(order),), dtype=np.float32)
            volume[mask] = np.stack([betas[c] for c in order], axis=1)
            name = f"{stem}_space-{SPACE}_desc-stimuli_stat-effect_statmap"
            nib.save(nib.Nifti1Image(volume, bold_img.affine), func / f"{name}.nii.gz")
            if subject == "01":
                (func / f"{name}.json").write_text(json.dumps({"VolumeStimuli": [files[c] for c in order]}))
                nib.save(mask_img, func / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz")
            else:
                pd.DataFrame({"stim_id": [labels.get(c, c) for c in order]}).to_csv(
                    func / f"{stem}_space-{SPACE}_desc-stimuli_statmap.tsv", sep="\t", index=False)


@pytest.fixture(scope="module")
def betas_dataset(demo_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("betas") / "bids"
    shutil.copytree(demo_dataset, root, ignore=shutil.ignore_patterns("fmriprep"))
    _write_betas(demo_dataset, root / "derivatives" / "betas")
    (root / "code" / "spec_betas.yaml").write_text(SPEC.format(extra="", space=SPACE))
    return root


@pytest.fixture(scope="module")
def betas_outputs(betas_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("betas_out") / "out"
    spec = betas_dataset / "code" / "spec_betas.yaml"
    assert main([str(betas_dataset), str(out), "participant", "--participant-label", *SUBJECTS, "--spec", str(spec),
                 "--no-progress"]) == 0
    return out


def test_betas_input_rsa_recovers_planted_layers(betas_outputs: Path) -> None:
    tables = []
    for subject in SUBJECTS:
        func = betas_outputs / f"sub-{subject}" / "func"
        table = read(func / f"sub-{subject}_task-{TASK}_space-{SPACE}_model-alexnet_rsa.tsv")
        assert len(table) == 3 * 5 and table["score"].notna().all()
        assert set(table["brain_rdm"]) == {"crossnobis"}  # 3 runs (sub-03: 2 complete)
        late = table[table["roi"] == "late"].set_index("layer")
        assert late["score"].idxmax() == PLANTED["late"], late
        assert late.loc[PLANTED["late"], "p_permutation"] < 0.01
        rdm = read(func / f"sub-{subject}_task-{TASK}_space-{SPACE}_label-early_stat-crossnobis_relmat.tsv")
        assert rdm.shape == (24, 24)
        tables.append(table)
    means = pd.concat(tables).groupby(["roi", "layer"])["score"].mean()
    for roi, layer in PLANTED.items():
        if layer is not None:
            assert means[roi].idxmax() == layer, means[roi]
            assert means[roi][layer] > 0.4
        else:
            assert means[roi].abs().max() < 0.2, means[roi]


def test_betas_input_status_and_warnings(betas_outputs: Path) -> None:
    status = json.loads((betas_outputs / "sub-02" / "log" / f"task-{TASK}_status.json").read_text())
    assert status["n_runs"] == 3
    assert [r["input"] for r in status["glm_runs"]] == ["betas"] * 3
    assert [r["n_volumes"] for r in status["glm_runs"]] == [26, 24, 24]
    assert all(r["n_stimuli"] == 24 for r in status["glm_runs"])
    assert any("junk" in w for w in status["warnings"])
    # the run-averaged betas written by the participant level come back in the events' order
    import nibabel as nib

    name = f"sub-01_task-{TASK}_space-{SPACE}_desc-stimuli_stat-effect_statmap.nii.gz"
    image = nib.load(betas_outputs / "sub-01" / "func" / name)
    assert image.shape[-1] == 24


def test_betas_patterns_match_the_maps(betas_dataset: Path) -> None:
    """SubjectPatterns from betas: stimuli in StimulusSet order, volumes of one stimulus averaged,
    NaN for a stimulus missing from a run."""
    import nibabel as nib

    from bids_dnn.cli.main import build_parser, options_from_args
    from bids_dnn.workflows.demo import _brain_mask
    from bids_dnn.workflows.context import prepare
    from bids_dnn.workflows.inputs import resolve_stimuli
    from bids_dnn.workflows.subject_patterns import fit_subject_glms

    spec = betas_dataset / "code" / "spec_betas.yaml"
    argv = [str(betas_dataset), str(betas_dataset.parent / "out_unused"), "participant", "--spec", str(spec)]
    ctx = prepare(options_from_args(build_parser().parse_args(argv), argv))
    stimuli = resolve_stimuli(ctx)
    for subject in SUBJECTS:
        patterns = fit_subject_glms(ctx, subject, stimuli)
        assert patterns.residuals == [] and patterns.dofs == []
        assert patterns.run_betas.shape[:2] == (3, 24)
        # sub-01: the desc-brain masks; others: union of non-zero finite voxels (= the demo brain)
        np.testing.assert_array_equal(patterns.brain_mask, _brain_mask())
        func = betas_dataset / "derivatives" / "betas" / f"sub-{subject}" / "func"
        stem = f"sub-{subject}_task-{TASK}_run-1_space-{SPACE}_desc-stimuli"
        maps = np.asarray(nib.load(func / f"{stem}_stat-effect_statmap.nii.gz").dataobj)[patterns.brain_mask]
        if subject == "01":
            labels = json.loads((func / f"{stem}_stat-effect_statmap.json").read_text())["VolumeStimuli"]
            ids = [stimuli.file_to_id()[f] for f in labels]
        else:
            ids = list(read(func / f"{stem}_statmap.tsv")["stim_id"])
        for i, sid in enumerate(stimuli.stim_ids):
            volumes = [v for v, name in enumerate(ids) if name == sid]
            if volumes:
                np.testing.assert_allclose(patterns.run_betas[0, i], maps[:, volumes].mean(axis=1), rtol=1e-5,
                                           atol=1e-6)
            else:
                assert subject == "03" and np.isnan(patterns.run_betas[0, i]).all()
        assert np.isfinite(patterns.run_betas[1:]).all()
        if subject == "02":
            assert len(ids) == 26 and "junk" in ids
        if subject == "03":
            assert np.isnan(patterns.run_betas[0]).all(axis=1).sum() == 1
            assert "1 stimuli are missing from some runs" in patterns.warnings


def test_betas_input_needs_noise_normalization_none(betas_dataset: Path, tmp_path: Path, capsys) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(extra="", space=SPACE).replace(", noise_normalization: none", ""))
    code = main([str(betas_dataset), str(tmp_path / "out"), "participant", "--spec", str(spec), "--no-progress"])
    assert code != 0
    assert "noise_normalization" in capsys.readouterr().err


def test_betas_input_missing_sidecar_and_folder(betas_dataset: Path, tmp_path: Path) -> None:
    from bids_dnn.io.betas import read_volume_stimuli
    from bids_dnn.io.bids import DatasetIndex
    from bids_dnn.errors import InputMissingError

    index = DatasetIndex(betas_dataset)
    runs = index.betas_runs(TASK, "01", SPACE, None)
    assert [r.run for r in runs] == ["01", "02", "03"] and all(r.mask is not None for r in runs)
    assert all(r.events is not None and r.events.name.endswith("_events.tsv") for r in runs)
    with pytest.raises(InputMissingError, match="sidecar"):
        read_volume_stimuli(runs[0].bold, None)
    with pytest.raises(InputMissingError, match="-d betas=PATH"):
        DatasetIndex(betas_dataset, derivatives={"betas": tmp_path / "nowhere"}).betas_runs(TASK, "01", SPACE, None)
    with pytest.raises(InputMissingError, match="space-T1w"):
        index.betas_runs(TASK, "01", "T1w", None)


# ---------------------------------------------------------------------------------------
# File lookups (bids_io): res- present or absent, sessions, run-less names
# ---------------------------------------------------------------------------------------


def _touch(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def lookup_dataset(tmp_path: Path) -> Path:
    """Names only (empty files): two sessions x two runs of sub-01; fMRIPrep and betas at res-1 and res-2."""
    root = tmp_path / "bids"
    _touch(root / "dataset_description.json", json.dumps({"Name": "x", "BIDSVersion": "1.10.0"}))
    for deriv in ("fmriprep", "betas"):
        _touch(root / "derivatives" / deriv / "dataset_description.json",
               json.dumps({"Name": deriv, "BIDSVersion": "1.10.0", "DatasetType": "derivative"}))
    for ses in ("a", "b"):
        for run in (1, 2):
            stem = f"sub-01_ses-{ses}_task-t_run-{run}"
            _touch(root / "sub-01" / f"ses-{ses}" / "func" / f"{stem}_events.tsv", "onset\tduration\tstim_file\n")
            func = root / "derivatives" / "fmriprep" / "sub-01" / f"ses-{ses}" / "func"
            bfunc = root / "derivatives" / "betas" / "sub-01" / f"ses-{ses}" / "func"
            for res in ("1", "2"):
                spaced = f"{stem}_space-MNI_res-{res}"
                _touch(func / f"{spaced}_desc-preproc_bold.nii.gz")
                _touch(func / f"{spaced}_desc-preproc_bold.json", json.dumps({"RepetitionTime": 2.0}))
                _touch(func / f"{spaced}_desc-brain_mask.nii.gz")
                _touch(bfunc / f"{spaced}_desc-stimuli_stat-effect_statmap.nii.gz")
                _touch(bfunc / f"{spaced}_desc-stimuli_stat-effect_statmap.json", json.dumps({"VolumeStimuli": []}))
            _touch(func / f"{stem}_desc-confounds_timeseries.tsv", "a\n1\n")
    # a T1w-space run without res-, with a session-level mask (no task / run in its name)
    bfunc = root / "derivatives" / "betas" / "sub-01" / "ses-a" / "func"
    _touch(bfunc / "sub-01_ses-a_task-t_run-1_space-T1w_desc-stimuli_stat-effect_statmap.nii.gz")
    _touch(bfunc / "sub-01_ses-a_task-t_run-1_space-T1w_desc-stimuli_statmap.tsv", "stim_id\n")
    _touch(bfunc / "sub-01_ses-a_space-T1w_desc-brain_mask.nii.gz")
    _touch(root / "derivatives" / "fmriprep" / "sub-01" / "ses-a" / "func"
           / "sub-01_ses-a_task-t_run-1_space-T1w_desc-preproc_bold.nii.gz")
    _touch(root / "derivatives" / "fmriprep" / "sub-01" / "ses-a" / "func"
           / "sub-01_ses-a_task-t_run-1_space-T1w_desc-preproc_bold.json", json.dumps({"RepetitionTime": 1.5}))
    _touch(root / "derivatives" / "fmriprep" / "sub-01" / "ses-a" / "func"
           / "sub-01_ses-a_task-t_run-1_space-T1w_desc-brain_mask.nii.gz")
    return root


def test_fmriprep_lookup_with_and_without_res_and_sessions(lookup_dataset: Path) -> None:
    from bids_dnn.io.bids import DatasetIndex
    from bids_dnn.errors import UsageError

    index = DatasetIndex(lookup_dataset)
    runs = index.events("t", ["01"])
    assert [(r.session, r.run) for r in runs] == [("a", "01"), ("a", "02"), ("b", "01"), ("b", "02")]
    assert [r.session for r in index.events("t", ["01"], ["b"])] == ["b", "b"]
    attached = index.fmriprep_run(runs[3], "MNI", "2")
    assert attached.bold.name == "sub-01_ses-b_task-t_run-2_space-MNI_res-2_desc-preproc_bold.nii.gz"
    assert attached.mask.name == "sub-01_ses-b_task-t_run-2_space-MNI_res-2_desc-brain_mask.nii.gz"
    assert attached.confounds.name == "sub-01_ses-b_task-t_run-2_desc-confounds_timeseries.tsv"
    assert attached.t_r == 2.0
    with pytest.raises(UsageError, match="brain.resolution"):
        index.fmriprep_run(runs[0], "MNI", None)  # res-1 and res-2 both match
    plain = index.fmriprep_run(runs[0], "T1w", None)  # no res- entity at all
    assert "res-" not in plain.bold.name and plain.t_r == 1.5


def test_betas_lookup_with_and_without_res_and_sessions(lookup_dataset: Path) -> None:
    from bids_dnn.io.bids import DatasetIndex
    from bids_dnn.errors import InputMissingError, UsageError

    index = DatasetIndex(lookup_dataset)
    runs = index.betas_runs("t", "01", "MNI", "1")
    assert [(r.session, r.run) for r in runs] == [("a", "01"), ("a", "02"), ("b", "01"), ("b", "02")]
    assert all("_res-1_" in r.bold.name and r.mask is None for r in runs)  # betas have no masks here
    assert all(r.volume_stimuli.suffix == ".json" and r.events.name.endswith("_events.tsv") for r in runs)
    assert runs[2].events.name == "sub-01_ses-b_task-t_run-1_events.tsv"
    assert [r.session for r in index.betas_runs("t", "01", "MNI", "2", sessions=["b"])] == ["b", "b"]
    with pytest.raises(UsageError, match="several betas maps"):
        index.betas_runs("t", "01", "MNI", None)
    with pytest.raises(InputMissingError, match="res-3"):
        index.betas_runs("t", "01", "MNI", "3")
    (t1w,) = index.betas_runs("t", "01", "T1w", None)
    assert t1w.mask.name == "sub-01_ses-a_space-T1w_desc-brain_mask.nii.gz"
    assert t1w.volume_stimuli.name == "sub-01_ses-a_task-t_run-1_space-T1w_desc-stimuli_statmap.tsv"
    filtered = DatasetIndex(lookup_dataset, filters={"betas": {"session": "a"}})
    # --bids-filter-file key 'betas': pybids entity names ('session') or file-name keys ('ses')
    assert [r.session for r in filtered.betas_runs("t", "01", "MNI", "1")] == ["a", "a"]
    filtered = DatasetIndex(lookup_dataset, filters={"betas": {"ses": "b", "run": 2}})
    assert [(r.session, r.run) for r in filtered.betas_runs("t", "01", "MNI", "1")] == [("b", "02")]


# ---------------------------------------------------------------------------------------
# Datasets without events: the stimulus set from the betas sidecars
# ---------------------------------------------------------------------------------------


def _without_events(betas_dataset: Path, root: Path) -> Path:
    """The betas dataset with every events file removed; sub-02's volume naming no stimulus
    ('junk', ignored with a warning when events exist) labelled n/a instead."""
    shutil.copytree(betas_dataset, root)
    for path in list(root.rglob("*_events.tsv")) + list(root.glob("*_events.json")):
        path.unlink()
    tsv = root / "derivatives" / "betas" / "sub-02" / "func" / f"sub-02_task-{TASK}_run-1_space-{SPACE}_desc-stimuli_statmap.tsv"
    table = read(tsv)
    table.loc[table["stim_id"] == "junk", "stim_id"] = "n/a"
    table.to_csv(tsv, sep="\t", index=False)
    return root


@pytest.mark.slow
def test_betas_without_events_give_the_same_rsa_table(betas_dataset: Path, betas_outputs: Path,
                                                      tmp_path: Path) -> None:
    """No events at all: the task comes from the betas maps, the stimulus set from their sidecars
    (sub-01: stim_file in VolumeStimuli, sub-02: stim_id in a TSV, resolved to stimuli/<id>.png);
    same stimulus order, RDMs and RSA table (scores and permutation p-values) as with events."""
    root = _without_events(betas_dataset, tmp_path / "bids")
    assert not list(root.rglob("*_events.tsv"))
    out = tmp_path / "out"
    spec = root / "code" / "spec_betas.yaml"
    assert main([str(root), str(out), "participant", "--participant-label", "01", "02", "--spec", str(spec),
                 "--no-progress"]) == 0
    with_events = read(betas_outputs / f"task-{TASK}_stimuli.tsv")
    without = read(out / f"task-{TASK}_stimuli.tsv")
    assert list(without["stim_id"]) == list(with_events["stim_id"])
    assert list(without["sha256"]) == list(with_events["sha256"])
    assert set(without["category"]) == {"stimulus"}  # no events, no stimuli.tsv: no categories
    for subject in ("01", "02"):
        name = f"sub-{subject}/func/sub-{subject}_task-{TASK}_space-{SPACE}_model-alexnet_rsa.tsv"
        pd.testing.assert_frame_equal(read(out / name), read(betas_outputs / name), check_exact=False, rtol=1e-12)
        rdm = f"sub-{subject}/func/sub-{subject}_task-{TASK}_space-{SPACE}_label-early_stat-crossnobis_relmat.tsv"
        np.testing.assert_allclose(read(out / rdm).to_numpy(dtype=float), read(betas_outputs / rdm).to_numpy(dtype=float),
                                   rtol=1e-12, atol=1e-12)


def _sidecar_run(folder: Path, name: str, labels: list[str]):
    """A RunInputs whose statmap (name only) has a JSON sidecar naming ``labels``."""
    from bids_dnn.io.bids import RunInputs

    statmap = folder / f"{name}_desc-stimuli_stat-effect_statmap.nii.gz"
    _touch(statmap)
    _touch(statmap.with_name(statmap.name.replace(".nii.gz", ".json")), json.dumps({"VolumeStimuli": labels}))
    return RunInputs(subject="01", session=None, task="t", run="1", events=None, bold=statmap,
                     volume_stimuli=statmap.with_name(statmap.name.replace(".nii.gz", ".json")))


def test_betas_stimulus_tables_resolve_files_ids_and_tables(tmp_path: Path) -> None:
    from PIL import Image

    from bids_dnn.io.betas import betas_stimulus_tables
    from bids_dnn.errors import BidsValidationError, InputMissingError
    from bids_dnn.io.stimuli import build_stimulus_set

    root = tmp_path / "bids"
    stimuli = root / "stimuli"
    for name in ("a1.png", "a2.png", "sub/b1.jpg", "twin.png", "twin.jpg"):
        (stimuli / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (len(name) * 20, 0, 0)).save(stimuli / name)
    run1 = _sidecar_run(root / "betas", "sub-01_task-t_run-1", ["a1.png", "a2", "", None, "sub/b1"])
    run2 = _sidecar_run(root / "betas", "sub-01_task-t_run-2", ["a2.png", "a1"])
    tables, source = betas_stimulus_tables([run1, run2], [stimuli], root)
    # files as named; ids resolved to their one file; empty / null labels name no stimulus
    assert source == "stim_file"
    assert list(tables[0]["stim_file"]) == ["a1.png", "a2.png", "sub/b1.jpg"]
    assert list(tables[1]["stim_file"]) == ["a2.png", "a1.png"]
    # ids that match no file or several files: one error listing all of them (exit 66)
    bad = _sidecar_run(root / "betas", "sub-01_task-t_run-3", ["a1", "nothing", "twin"])
    with pytest.raises(InputMissingError) as info:
        betas_stimulus_tables([bad], [stimuli], root)
    text = str(info.value)
    assert info.value.exit_code == 66 and "2 stimulus label(s)" in text
    assert "nothing: no file" in text and "twin: several files (twin.jpg, twin.png)" in text
    # a missing stim_file (with extension) or an unsafe path is reported as for events
    tables, _ = betas_stimulus_tables([_sidecar_run(root / "betas", "sub-01_task-t_run-4", ["gone.png", "a1", "a2"])],
                                      [stimuli], root)
    with pytest.raises(InputMissingError, match="gone.png: not found"):
        build_stimulus_set(tables, root)
    tables, _ = betas_stimulus_tables([_sidecar_run(root / "betas", "sub-01_task-t_run-5", ["../x.png", "a1", "a2"])],
                                      [stimuli], root)
    with pytest.raises(BidsValidationError, match="unsafe stimulus path"):
        build_stimulus_set(tables, root)
    # a stimuli.tsv knowing every label: its stim_ids (and its categories)
    _touch(stimuli / "stimuli.tsv", "stim_id\tstim_file\tcategory\nfirst\ta1.png\tx\nsecond\ta2.png\ty\n"
                                    "third\tsub/b1.jpg\tx\n")
    tables, source = betas_stimulus_tables([_sidecar_run(root / "betas", "sub-01_task-t_run-6",
                                                         ["third", "first", "second"])], [stimuli], root)
    assert source == "stimuli_tsv" and list(tables[0]["stim_id"]) == ["third", "first", "second"]
    stim_set = build_stimulus_set(tables, root, source=source)
    assert stim_set.stim_ids == ["first", "third", "second"] and stim_set.categories == ["x", "x", "y"]


@pytest.mark.parametrize("source, expected", [("sidecar", 0.5), ("header", 2.0)])
def test_repetition_time_source_the_user_trusts(tmp_path: Path, source: str, expected: float) -> None:
    """Sidecar 0.5 s vs header 2 s: 'check' stops (tests/test_hostile_inputs.py), 'sidecar' or
    'header' take that one; a header in milliseconds is converted."""
    import json

    import nibabel as nib

    from bids_dnn.io.run_files import repetition_time

    bold = tmp_path / "sub-01_task-x_bold.nii.gz"
    image = nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4))
    image.header.set_zooms((1.0, 1.0, 1.0, 2.0))
    nib.save(image, bold)
    (tmp_path / "sub-01_task-x_bold.json").write_text(json.dumps({"RepetitionTime": 0.5}))

    class Layout:
        def get_metadata(self, path: str) -> dict:
            return json.loads(Path(path.replace(".nii.gz", ".json")).read_text())

    assert repetition_time(Layout(), bold, source) == pytest.approx(expected)
    image.header.set_xyzt_units("mm", "msec")
    image.header.set_zooms((1.0, 1.0, 1.0, 500.0))
    nib.save(image, bold)
    assert repetition_time(Layout(), bold, "check") == pytest.approx(0.5)  # 500 ms agrees with 0.5 s
