"""The naturalistic demos (``bids_dnn demo --kind movie|story``): files, sidecars, repeated runs,
seeding and the planted signal, on short runs (2 subjects x 2 runs)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("av")
pytest.importorskip("transformers")

from bids_dnn.spec import load_spec  # noqa: E402
from bids_dnn.timeseries.delays import delay_features  # noqa: E402
from bids_dnn.timeseries.resample import lanczos_resample  # noqa: E402
from bids_dnn.timeseries.scaling import zscore_by_run  # noqa: E402
from bids_dnn.workflows import demo_naturalistic as nat  # noqa: E402
from bids_dnn.workflows.demo import BASELINE, SHAPE, SPACE, T_R, _brain_mask, _roi_masks  # noqa: E402
from bids_dnn.workflows.demo_kinds import DEMO_KINDS  # noqa: E402

SECONDS = 40.0                      # movie: 20 volumes per run
N_VOLS = int(SECONDS / T_R)
STORY_SECONDS = 200.0               # story (cheaper to extract): 100 volumes per run
STORY_VOLS = int(STORY_SECONDS / T_R)
SUBJECTS = ["01", "02"]


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nat.make_movie_dataset(tmp_path_factory.mktemp("movie") / "ds", n_subjects=2, n_runs=2, seed=3,
                                  seconds_per_run=SECONDS)


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nat.make_story_dataset(tmp_path_factory.mktemp("story") / "ds", n_subjects=2, n_runs=2, seed=3,
                                  seconds_per_run=STORY_SECONDS)


@pytest.fixture(scope="module")
def planted(movie: Path, story: Path) -> dict[str, tuple]:
    """kind -> (timeline features, planted TR features): each extracted once."""
    out = {}
    for kind, dataset in (("movie", movie), ("story", story)):
        timelines = nat.timeline_features(dataset, kind)
        out[kind] = (timelines, nat.planted_tr_features(dataset, kind, timelines))
    return out


def _bold(dataset: Path, task: str, subject: str, run: int) -> np.ndarray:
    path = (dataset / "derivatives" / "fmriprep" / f"sub-{subject}" / "func"
            / f"sub-{subject}_task-{task}_run-{run}_space-{SPACE}_desc-preproc_bold.nii.gz")
    return np.asarray(nib.load(path).dataobj, dtype=np.float64)


def _events(dataset: Path, task: str, subject: str, run: int) -> pd.DataFrame:
    return pd.read_csv(dataset / f"sub-{subject}" / "func" / f"sub-{subject}_task-{task}_run-{run}_events.tsv",
                       sep="\t", keep_default_na=False)


def test_registry_names_the_naturalistic_kinds() -> None:
    assert DEMO_KINDS["movie"] is nat.make_movie_dataset
    assert DEMO_KINDS["story"] is nat.make_story_dataset


def test_run_stimuli_repeat_the_first_in_the_last_run() -> None:
    assert nat.run_stimuli(4) == [0, 1, 2, 0]
    assert nat.run_stimuli(3) == [0, 1, 0]
    assert nat.run_stimuli(2) == [0, 0]
    assert nat.run_stimuli(1) == [0]


def test_story_events_pace_and_pauses() -> None:
    events = nat.story_events(240.0, np.random.default_rng(0))
    assert list(events.columns) == ["onset", "duration", "trial_type", "word"]
    assert (events["trial_type"] == "word").all() and np.allclose(events["duration"], 0.3)
    onsets = events["onset"].to_numpy()
    gaps = np.diff(onsets)
    assert (gaps >= 0.3 - 1e-9).all()  # a word ends before the next begins
    assert onsets[0] == pytest.approx(2.0) and onsets[-1] + 0.3 <= 239.0
    rate = len(onsets) / (onsets[-1] - onsets[0])
    assert 2.0 <= rate <= 3.0
    # each sentence of the grammar ends with "stays", then a pause of 0.6 s or more
    ends = np.flatnonzero(events["word"].to_numpy()[:-1] == "stays")
    assert ends.size > 10 and (gaps[ends] >= 0.31 + 0.6 - 0.01).all()
    assert events["word"].str.fullmatch(r"[a-z]+").all()


def test_movie_files_and_sidecars(movie: Path) -> None:
    import av

    assert json.loads((movie / "task-movie_bold.json").read_text())["RepetitionTime"] == T_R
    assert (movie / ".bidsignore").read_text() == "code/\n"
    assert list(pd.read_csv(movie / "participants.tsv", sep="\t")["participant_id"]) == ["sub-01", "sub-02"]
    for subject in SUBJECTS:
        for run in (1, 2):
            events = _events(movie, "movie", subject, run)
            assert list(events.columns) == ["onset", "duration", "trial_type", "stim_file"]
            assert events.to_dict("records") == [{"onset": 0, "duration": SECONDS, "trial_type": "movie",
                                                  "stim_file": "movie01.mp4"}]  # run 2 repeats run 1's film
            img = nib.load(movie / "derivatives" / "fmriprep" / f"sub-{subject}" / "func"
                           / f"sub-{subject}_task-movie_run-{run}_space-{SPACE}_desc-preproc_bold.nii.gz")
            assert img.shape == SHAPE + (N_VOLS,)
            assert img.header.get_zooms()[3] == pytest.approx(T_R)
            assert nib.load(movie / f"sub-{subject}" / "func"
                            / f"sub-{subject}_task-movie_run-{run}_bold.nii.gz").shape == SHAPE + (N_VOLS,)
            confounds = pd.read_csv(movie / "derivatives" / "fmriprep" / f"sub-{subject}" / "func"
                                    / f"sub-{subject}_task-movie_run-{run}_desc-confounds_timeseries.tsv", sep="\t")
            assert len(confounds) == N_VOLS and {"trans_x", "rot_z", "framewise_displacement"} <= set(confounds)
    assert sorted(p.name for p in (movie / "stimuli").iterdir()) == ["movie01.mp4"]
    with av.open(str(movie / "stimuli" / "movie01.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (nat.MOVIE_SIZE, nat.MOVIE_SIZE)
        n_frames = sum(1 for _ in container.decode(video=0))
    assert n_frames == SECONDS * nat.MOVIE_FRAME_RATE
    spec = load_spec(movie / "code" / "spec.yaml")
    assert spec.design == "naturalistic" and spec.analyses.naturalistic.delays == list(nat.PLANTED_DELAYS)
    assert spec.models[0].layers == nat.MOVIE_LAYERS and spec.models[0].weights == "random"
    assert spec.stimuli.video.fps == nat.MOVIE_SAMPLE_FPS
    assert (spec.models[0].transform.resize, spec.models[0].transform.crop) == (nat.MOVIE_SIZE, nat.MOVIE_SIZE)
    readme = (movie / "README.md").read_text()
    assert "features.2" in readme and "classifier.4" in readme


def test_story_files_and_spec(story: Path) -> None:
    assert json.loads((story / "task-story_bold.json").read_text())["RepetitionTime"] == T_R
    first, last = _events(story, "story", "01", 1), _events(story, "story", "01", 2)
    assert list(first.columns) == ["onset", "duration", "trial_type", "word"]
    pd.testing.assert_frame_equal(first, last)  # the last run repeats the first's story
    pd.testing.assert_frame_equal(first, _events(story, "story", "02", 1))  # everyone hears the same
    assert first["onset"].max() < STORY_SECONDS - 1
    assert _bold(story, "story", "02", 2).shape == SHAPE + (STORY_VOLS,)
    from transformers import AutoTokenizer

    folder = story / "code" / "models" / "textnet"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    words = sorted(set(first["word"]))
    assert all(len(tokenizer.tokenize(word)) == 1 for word in words)  # every word of the grammar is one token
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == len(tokenizer)
    spec = load_spec(story / "code" / "spec.yaml")
    assert spec.design == "naturalistic" and spec.analyses.naturalistic.word_column == "word"
    model = spec.models[0]
    assert (model.source, model.label, model.context_tokens, model.pooling) == ("huggingface", "textnet", 32, "mean")
    assert model.layers == nat.STORY_LAYERS
    assert not (story / "stimuli").exists()


def test_story_is_seeded(tmp_path: Path) -> None:
    """Same seed, same dataset (BOLD, events, model folder); another seed, another one."""
    made = {name: nat.make_story_dataset(tmp_path / name, n_subjects=2, n_runs=1, seed=seed, seconds_per_run=20.0)
            for name, seed in (("a", 5), ("b", 5), ("c", 6))}
    for subject in SUBJECTS:
        assert np.array_equal(_bold(made["a"], "story", subject, 1), _bold(made["b"], "story", subject, 1))
        pd.testing.assert_frame_equal(_events(made["a"], "story", subject, 1), _events(made["b"], "story", subject, 1))
    for name in ("tokenizer.json", "config.json"):
        assert ((made["a"] / "code" / "models" / "textnet" / name).read_bytes()
                == (made["b"] / "code" / "models" / "textnet" / name).read_bytes())
    assert not np.array_equal(_bold(made["a"], "story", "01", 1), _bold(made["c"], "story", "01", 1))
    assert not _events(made["a"], "story", "01", 1).equals(_events(made["c"], "story", "01", 1))


def test_movies_are_seeded(tmp_path: Path) -> None:
    films = [nat.render_movie(6.0, np.random.default_rng(seed))[0] for seed in (1, 1, 2)]
    assert films[0].shape == (60, nat.MOVIE_SIZE, nat.MOVIE_SIZE, 3) and films[0].dtype == np.uint8
    assert np.array_equal(films[0], films[1]) and not np.array_equal(films[0], films[2])
    a = nat.write_movie(tmp_path / "a.mp4", films[0]).read_bytes()
    assert a == nat.write_movie(tmp_path / "b.mp4", films[1]).read_bytes()


def test_planted_components_follow_an_independent_pca(planted: dict[str, tuple]) -> None:
    """planted_tr_features == scikit-learn's PCA of the row-standardised frame features, resampled,
    z-scored per run (up to each component's sign)."""
    from sklearn.decomposition import PCA

    timelines, components = planted["movie"]
    assert len(timelines) == 1  # two runs, one film
    times, features = timelines[0]
    assert np.allclose(times, np.arange(int(SECONDS * nat.MOVIE_SAMPLE_FPS)) / nat.MOVIE_SAMPLE_FPS)
    for layer in ("features.2", "classifier.4"):
        x = features[layer]
        x = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)
        scores = PCA(n_components=nat.MOVIE_COMPONENTS, svd_solver="full").fit_transform(x)
        expected = zscore_by_run(lanczos_resample(scores, times, np.arange(N_VOLS) * T_R, normalize=True), None)
        got = components[layer]
        assert len(got) == 2 and np.array_equal(got[0], got[1])
        signs = np.sign((got[0] * expected).sum(axis=0))
        np.testing.assert_allclose(got[0], expected * signs, atol=1e-6)


def _percent(dataset: Path, task: str, subject: str, run: int, brain: np.ndarray) -> np.ndarray:
    """(n_vols, n_brain) BOLD in percent signal change around the simulation's baseline."""
    bold = _bold(dataset, task, subject, run)
    return (bold.reshape(-1, bold.shape[-1])[brain.ravel()].T / BASELINE - 1) * 100


def _cleaned(dataset: Path, task: str, subject: str, run: int, brain: np.ndarray) -> np.ndarray:
    """Percent signal change with the motion confounds, a constant and the slow cosines regressed out."""
    percent = _percent(dataset, task, subject, run, brain)
    confounds = pd.read_csv(dataset / "derivatives" / "fmriprep" / f"sub-{subject}" / "func"
                            / f"sub-{subject}_task-{task}_run-{run}_desc-confounds_timeseries.tsv", sep="\t")
    n_vols = percent.shape[0]
    t = np.arange(n_vols) * T_R
    nuisance = np.column_stack([np.ones(n_vols), confounds[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y",
                                                              "rot_z"]].to_numpy(),
                                np.cos(np.pi * np.outer(t, [1, 2]) / t[-1])])
    return percent - nuisance @ np.linalg.lstsq(nuisance, percent, rcond=None)[0]


def _columnwise_r(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = (a - a.mean(axis=0)) / a.std(axis=0)
    b = (b - b.mean(axis=0)) / b.std(axis=0)
    return (a * b).mean(axis=0)


@pytest.mark.parametrize("kind", ["movie", "story"])
def test_planted_signal_is_in_the_signal_rois(kind: str, movie: Path, story: Path,
                                              planted: dict[str, tuple]) -> None:
    dataset, task = (movie, nat.MOVIE_TASK) if kind == "movie" else (story, nat.STORY_TASK)
    psc = nat.MOVIE_SIGNAL_PSC if kind == "movie" else nat.STORY_SIGNAL_PSC
    n_vols = N_VOLS if kind == "movie" else STORY_VOLS
    brain = _brain_mask()
    rois = {name: mask.ravel()[brain.ravel()] for name, mask in _roi_masks(brain).items()}
    signal = nat.planted_timeseries(dataset, kind, SUBJECTS, seed=3, components=planted[kind][1])
    for subject in SUBJECTS:
        runs = signal[subject]
        assert len(runs) == 2 and runs[0].shape == (n_vols,) + SHAPE
        assert np.array_equal(runs[0], runs[1])  # the repeated run has the same planted signal
        planted_signal = runs[0].reshape(n_vols, -1)[:, brain.ravel()]
        assert not planted_signal[:, ~(rois["early"] | rois["late"])].any()
        for roi in ("early", "late"):  # SD psc over the ROI and both runs
            assert np.concatenate([planted_signal[:, rois[roi]]] * 2).std() == pytest.approx(psc, rel=1e-9)
        cleaned = [_cleaned(dataset, task, subject, run, brain) for run in (1, 2)]
        for run in (1, 2):
            # the written BOLD carries the planted signal with slope 1 (the noise is independent of it)
            cols = rois["early"] | rois["late"]
            p = planted_signal[:, cols] - planted_signal[:, cols].mean(axis=0)
            percent = _percent(dataset, task, subject, run, brain)[:, cols]
            slopes = (p * (percent - percent.mean(axis=0))).sum(axis=0) / (p * p).sum(axis=0)
            assert 0.8 < np.median(slopes) < 1.2
            # each signal voxel correlates with its planted time series; control voxels do not correlate
            # with the same number of early voxels' planted series (a null of the same smoothness)
            r_signal = _columnwise_r(cleaned[run - 1][:, rois["early"]], planted_signal[:, rois["early"]])
            n_control = int(rois["control"].sum())
            r_null = _columnwise_r(cleaned[run - 1][:, rois["control"]],
                                   planted_signal[:, rois["early"]][:, :n_control])
            assert r_signal.mean() > 0.3 and abs(r_null.mean()) < 0.1, (kind, r_signal.mean(), r_null.mean())
        # the repeated presentation: the two runs agree in the signal ROIs only (a noise ceiling exists)
        repeat = _columnwise_r(cleaned[0], cleaned[1])
        assert repeat[rois["early"]].mean() > 0.15 and repeat[rois["late"]].mean() > 0.15
        assert abs(repeat[rois["control"]].mean()) < 0.1


def test_story_signal_lies_in_its_layers_components(story: Path, planted: dict[str, tuple]) -> None:
    """Each signal voxel's planted series is a combination of its own layer's delayed components
    (least-squares residual 0), not of the other planted layer's."""
    brain = _brain_mask()
    rois = {name: mask.ravel()[brain.ravel()] for name, mask in _roi_masks(brain).items()}
    components = planted["story"][1]
    signal = nat.planted_timeseries(story, "story", ["01"], seed=3, components=components)["01"][0]
    signal = signal.reshape(STORY_VOLS, -1)[:, brain.ravel()]
    assert all(c[0].shape == (STORY_VOLS, nat.STORY_COMPONENTS) for c in components.values())
    own_other = {"early": ("hidden_states.1", "hidden_states.4"), "late": ("hidden_states.4", "hidden_states.1")}
    for roi, (own, other) in own_other.items():
        y = signal[:, rois[roi]]
        for layer, low, high in ((own, 0.0, 1e-10), (other, 0.2, 1.0)):
            x = delay_features(components[layer][0], nat.PLANTED_DELAYS)
            assert x.shape[1] < STORY_VOLS
            residual = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
            fraction = (residual**2).sum() / (y**2).sum()
            assert low <= fraction <= high, (roi, layer, fraction)


def test_refuses_a_non_empty_folder_and_odd_run_lengths(tmp_path: Path) -> None:
    from bids_dnn.errors import UsageError

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "data.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not empty"):
        nat.make_movie_dataset(tmp_path / "full")
    with pytest.raises(UsageError, match="not a bids_dnn demo"):
        nat.make_story_dataset(tmp_path / "full", overwrite=True)
    assert (tmp_path / "full" / "data.txt").read_text() == "keep me"
    for seconds in (41.0, 10.0):  # not a multiple of the TR; fewer than 8 volumes
        with pytest.raises(UsageError, match="multiple of the TR"):
            nat.make_movie_dataset(tmp_path / "new", seconds_per_run=seconds)
