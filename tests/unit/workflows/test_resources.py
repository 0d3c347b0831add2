"""-w/--work-dir, --nprocs / --omp-nthreads and --mem do what fMRIPrep users expect.

- the work folder holds the run's scratch (TMPDIR of the libraries, the pybids database, the
  PCA scratch file) and nothing is left in the system's temporary folder;
- --nprocs processes participants at once in worker processes, with the numbers of a serial run;
- --mem sizes the GLM chunks, encoding target batches and extraction batches (results unchanged)
  and keeps the peak memory of a run below a bound that a run without it exceeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from _specs import SMALL_SPEC
from bids_dnn.cli.main import build_parser, main, options_from_args
from bids_dnn.errors import UsageError
from bids_dnn.workflows.resources import Resources, activate, current_resources, map_participants, plan_workers

REPO_ROOT = Path(__file__).resolve().parents[3]


def _spec(tmp_path: Path, **changes: Any) -> Path:
    """SMALL_SPEC without the report (faster), with ``changes`` merged into its sections."""
    spec = yaml.safe_load(SMALL_SPEC)
    spec["outputs"] = {"report": False}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _options(argv: list[str]):
    return options_from_args(build_parser().parse_args(argv), argv)


def _tables(out: Path) -> dict[str, pd.DataFrame]:
    """Every TSV under the participants' folders, by path relative to ``out``."""
    return {str(p.relative_to(out)): pd.read_csv(p, sep="\t") for p in sorted(out.glob("sub-*/**/*.tsv"))}


def _assert_same_numbers(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        left, right = a[name], b[name]
        assert list(left.columns) == list(right.columns), name
        numeric = left.select_dtypes("number").columns
        pd.testing.assert_frame_equal(left.drop(columns=numeric), right.drop(columns=numeric), obj=name)
        np.testing.assert_allclose(left[numeric].to_numpy(float), right[numeric].to_numpy(float),
                                   rtol=1e-6, atol=1e-9, err_msg=name)


# ---------------------------------------------------------------------------------------
# Planning and options
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("nprocs", "omp", "participants", "expected"), [
    (None, None, 5, (1, None)),      # no --nprocs: one participant at a time
    (None, 3, 5, (1, 3)),
    (4, None, 2, (2, 2)),            # 2 participants on 4 CPUs: 2 threads each
    (4, None, 10, (4, 1)),
    (3, None, 2, (2, 1)),
    (8, 2, 10, (4, 2)),              # fMRIPrep: nprocs total, omp per process
    (8, 4, 1, (1, 4)),
    (4, 4, 3, (1, 4)),
])
def test_plan_workers(nprocs: int | None, omp: int | None, participants: int, expected: tuple) -> None:
    assert plan_workers(nprocs, omp, participants) == expected


def test_omp_nthreads_above_nprocs_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    code = main([str(tmp_path / "bids"), str(out), "participant", "--nprocs", "2", "--omp-nthreads", "4"])
    assert code == 64 and not out.exists()
    err = capsys.readouterr().err
    assert "--omp-nthreads 4 exceeds --nprocs 2" in err and "Traceback" not in err
    with pytest.raises(UsageError):
        plan_workers(2, 4, 3)


def test_help_explains_the_resource_options() -> None:
    text = " ".join(build_parser().format_help().split())
    assert "--nprocs is the CPUs of the whole run, --omp-nthreads the threads of one process" in text
    assert "scratch folder" in text and "working-memory budget" in text and "GLM voxel chunks" in text


def test_participants_share_cpus_and_memory(tmp_path: Path) -> None:
    options = _options([str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "--nprocs", "8",
                        "--mem", "8GB"])
    main_process = Resources.from_options(options)
    assert main_process.omp_nthreads == 8 and main_process.memory_bytes == 8 * 2**30
    workers = main_process.for_participants(3)
    assert (workers.n_workers, workers.omp_nthreads, workers.memory_bytes) == (3, 2, 8 * 2**30 // 3)
    assert workers.total_memory_bytes == 8 * 2**30
    assert main_process.for_participants(1).omp_nthreads == 8  # a single participant gets every CPU


# ---------------------------------------------------------------------------------------
# The run folder
# ---------------------------------------------------------------------------------------


@pytest.fixture
def system_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder as the system's temporary folder (TMPDIR, tempfile's cache reset)."""
    folder = tmp_path / "systemp"
    folder.mkdir()
    for name in ("TMPDIR", "TMP", "TEMP"):
        monkeypatch.setenv(name, str(folder))
    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert tempfile.gettempdir() == str(folder)
    return folder


def test_default_run_folder_is_a_removed_temporary_folder(tmp_path: Path, system_temp: Path) -> None:
    options = _options([str(tmp_path / "bids"), str(tmp_path / "out"), "participant"])
    with activate(options) as resources:
        run_dir = resources.run_dir
        assert run_dir is not None and run_dir.parent == system_temp and run_dir.name.startswith("bids_dnn~")
        assert tempfile.gettempdir() == os.environ["TMPDIR"] == str(run_dir / "tmp")
        assert resources.database_dir == run_dir / "bids_db" and resources.work_dir is None
        with tempfile.NamedTemporaryFile() as handle:  # what a library would do
            assert Path(handle.name).parent == run_dir / "tmp"
        assert current_resources() is resources
        assert "MPLCONFIGDIR" not in os.environ  # without -w matplotlib keeps its own cache
    assert list(system_temp.iterdir()) == []
    assert os.environ["TMPDIR"] == str(system_temp) and tempfile.gettempdir() == str(system_temp)
    assert current_resources() == Resources()


def test_work_dir_run_folders_are_private_and_stale_ones_removed(tmp_path: Path, system_temp: Path) -> None:
    import socket

    work = tmp_path / "work"
    stale = work / f"bids_dnn~{socket.gethostname()}~999999999~abc"  # a pid that cannot be alive
    (stale / "tmp").mkdir(parents=True)
    alive = work / f"bids_dnn~{socket.gethostname()}~{os.getpid()}~abc"  # another run of a live process
    alive.mkdir()
    options = _options([str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "-w", str(work)])
    with activate(options) as first, activate(options) as second:  # e.g. two array tasks on one -w
        assert first.run_dir != second.run_dir and first.run_dir.parent == second.run_dir.parent == work
        assert os.environ["MPLCONFIGDIR"] == str(work / "matplotlib")
        assert not stale.exists() and alive.exists()
    assert sorted(p.name for p in work.iterdir()) == [alive.name]
    assert list(system_temp.iterdir()) == [] and "MPLCONFIGDIR" not in os.environ


def test_work_dir_inside_the_input_is_refused(tmp_path: Path) -> None:
    bids = tmp_path / "bids"
    bids.mkdir()
    code = main([str(bids), str(tmp_path / "out"), "participant", "-w", str(bids / "work")])
    assert code == 64 and not (bids / "work").exists()


def test_work_dir_holds_the_scratch_of_a_run(demo_dataset: Path, tmp_path: Path, system_temp: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A participant run with -w: PCA scratch file, TMPDIR and pybids database are in the run
    folder under -w while it runs; afterwards the run folder and the system temp are empty."""
    from bids_dnn.features import store as features

    seen: list[dict[str, Any]] = []
    original = features.FeatureWriter._scratch_dataset

    def spy(self: Any, name: str, n_units: int) -> Any:
        run_dirs = [p for p in work.iterdir() if p.name.startswith("bids_dnn~")]
        seen.append({"scratch": Path(self._scratch_path), "tempdir": tempfile.gettempdir(),
                     "TMPDIR": os.environ.get("TMPDIR"), "run_dirs": run_dirs,
                     "bids_db": [p.name for p in (run_dirs[0] / "bids_db").iterdir()] if run_dirs else []})
        return original(self, name, n_units)

    monkeypatch.setattr(features.FeatureWriter, "_scratch_dataset", spy)
    work, out = tmp_path / "work", tmp_path / "out"
    spec = _spec(tmp_path, models=[{"name": "alexnet", "weights": "random", "init_seed": 0,
                                    "layers": ["features.2", "features.12"],
                                    "reduction": {"method": "pca", "n_components": 8}}])
    assert main([str(demo_dataset), str(out), "participant", "--participant-label", "01", "--spec", str(spec),
                 "--no-progress", "-w", str(work)]) == 0
    assert seen, "the PCA reduction wrote no scratch file"
    run_dir = seen[0]["run_dirs"][0]
    assert len(seen[0]["run_dirs"]) == 1 and run_dir.name.startswith("bids_dnn~")
    assert all(s["scratch"].parent == run_dir for s in seen)  # not next to the output file
    assert seen[0]["tempdir"] == seen[0]["TMPDIR"] == str(run_dir / "tmp")
    assert "raw" in seen[0]["bids_db"]  # pybids database of the run
    assert not run_dir.exists() and [p.name for p in work.iterdir() if p.name != "matplotlib"] == []
    assert list(system_temp.iterdir()) == []
    assert not list(out.rglob("*.full"))
    provenance = json.loads(next((out / "sub-01" / "log").glob("*/provenance.json")).read_text())
    assert provenance["resources"]["work_dir"] == str(work.absolute())
    assert provenance["resources"]["run_dir"] == str(run_dir)
    assert provenance["resources"]["tmpdir"] == str(run_dir / "tmp")


# ---------------------------------------------------------------------------------------
# --nprocs: participants in worker processes
# ---------------------------------------------------------------------------------------


def test_dataset_index_reaches_workers_through_its_database(demo_dataset: Path, tmp_path: Path) -> None:
    import pickle

    from bids_dnn.io.bids import DatasetIndex

    index = DatasetIndex(demo_dataset, database_dir=tmp_path / "db")
    index.derivative("fmriprep")
    copy = pickle.loads(pickle.dumps(index))  # what a worker process receives
    assert copy.subjects() == index.subjects() == ["01", "02", "03", "04"]
    assert list(copy._derivative_layouts) == ["fmriprep"] and copy.database_dir is None
    assert sorted(f.path for f in copy.raw.get(suffix="events", extension=".tsv")) == sorted(
        f.path for f in index.raw.get(suffix="events", extension=".tsv"))
    assert sorted(p.name for p in (tmp_path / "db").iterdir()) == ["fmriprep", "raw"]  # written once, read back


def _work_or_fail(participant: str, seconds: float) -> int:
    """A participant's work in a worker: sleeps, or fails as a user error or a bug."""
    if participant == "user-error":
        raise UsageError(f"{participant}: bad input")
    if participant == "bug":
        raise ValueError("a bug")
    time.sleep(seconds)
    return os.getpid()


def test_map_participants_in_workers() -> None:
    workers = Resources(nprocs=2, omp_nthreads=1, n_workers=2)
    results = dict(map_participants(_work_or_fail, ["a", "user-error", "b"], (0.0,), workers))
    assert isinstance(results["user-error"], UsageError)  # reported, the others go on
    assert {results["a"], results["b"]}.isdisjoint({os.getpid()}) and results["a"] != results["b"]
    serial = dict(map_participants(_work_or_fail, ["a", "user-error"], (0.0,), Resources()))
    assert serial["a"] == os.getpid() and isinstance(serial["user-error"], UsageError)
    started = time.monotonic()
    with pytest.raises(ValueError, match="a bug"):
        list(map_participants(_work_or_fail, ["slow", "bug"], (600.0,), workers))
    assert time.monotonic() - started < 300  # the slow worker was stopped, not waited for


@pytest.mark.slow
def test_nprocs_runs_participants_at_once_with_serial_numbers(demo_dataset: Path, tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    common = [str(demo_dataset), "participant", "--participant-label", "01", "02", "--spec", str(spec),
              "--no-progress"]
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert main([common[0], str(serial), *common[1:]]) == 0
    assert main([common[0], str(parallel), *common[1:], "--nprocs", "2"]) == 0
    _assert_same_numbers(_tables(serial), _tables(parallel))
    runs = []
    for subject in ("01", "02"):
        provenance = json.loads(next((parallel / f"sub-{subject}" / "log").glob("*/provenance.json")).read_text())
        assert provenance["resources"]["nprocs"] == 2 and provenance["resources"]["n_workers"] == 2
        assert provenance["resources"]["omp_nthreads"] == 1  # 2 CPUs shared by 2 workers
        execution = provenance["execution"]
        assert execution["worker"] and execution["process_id"] == provenance["process_id"] != os.getpid()
        runs.append((execution["process_id"], datetime.fromisoformat(execution["started"]),
                     datetime.fromisoformat(execution["finished"])))
    assert runs[0][0] != runs[1][0]  # two processes ...
    assert max(r[1] for r in runs) < min(r[2] for r in runs)  # ... whose time spans overlap
    serial_execution = json.loads(next((serial / "sub-01" / "log").glob("*/provenance.json")).read_text())["execution"]
    assert serial_execution["process_id"] == os.getpid() and not serial_execution["worker"]


# ---------------------------------------------------------------------------------------
# --mem: one budget for the GLM, encoding and extraction
# ---------------------------------------------------------------------------------------


def test_glm_budget_sets_the_chunks_not_the_betas(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    from bids_dnn.brain import glm

    n_time, n_voxels = 120, 1500
    bold = (rng.standard_normal((n_time, n_voxels)) + 50).astype(np.float32)
    events = pd.DataFrame({"onset": np.arange(12) * 8.0 + 4, "duration": 1.0,
                           "condition": [f"s{i % 6}" for i in range(12)]})
    options = glm.GLMOptions(confounds=(), scrub_fd=None, engine="nilearn")
    calls: list[int] = []
    original = glm._fit_columns
    monkeypatch.setattr(glm, "_fit_columns", lambda Y, *a, **k: calls.append(Y.shape[1]) or original(Y, *a, **k))
    default = glm.fit_run_glm(bold, events, 2.0, options)
    assert calls == [n_voxels]
    calls.clear()
    budget = glm.fit_run_glm(bold, events, 2.0, options, memory_budget_bytes=256 * n_time * 8 * 8)
    assert calls == [256] * 5 + [n_voxels - 5 * 256]  # chunks of the budget (at least 256 voxels)
    np.testing.assert_allclose(budget.betas, default.betas, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(budget.residuals, default.residuals, rtol=1e-6, atol=1e-6)


def test_encoding_budget_sets_the_target_batches_not_the_scores(rng: np.random.Generator,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from bids_dnn.encoding import make_folds, ridge as encoding

    features = rng.standard_normal((24, 40))
    responses = features[:, :5] @ rng.standard_normal((5, 300)) + rng.standard_normal((24, 300))
    folds = make_folds(24, n_folds=4, seed=0)
    batches: list[int] = []
    original = encoding._batch_responses
    monkeypatch.setattr(encoding, "_batch_responses",
                        lambda y, cols, dtype: batches.append(cols.stop - cols.start) or original(y, cols, dtype))
    default = encoding.cross_validated_ridge(features, responses, folds, [0.1, 10, 1000])
    assert batches == [300] * 4
    batches.clear()
    small = encoding.cross_validated_ridge(features, responses, folds, [0.1, 10, 1000], memory_budget_bytes=1)
    assert batches == [64, 64, 64, 64, 44] * 4  # the smallest batch: 64 targets
    for name in ("r", "r2", "alphas", "predictions"):
        np.testing.assert_allclose(getattr(small, name), getattr(default, name), rtol=1e-10, atol=1e-12)


def test_extraction_budget_sets_the_batches_not_the_features() -> None:
    from PIL import Image

    from bids_dnn.dnn.extract import batch_size_for_budget, extract_features
    from bids_dnn.dnn.models import load_model
    from bids_dnn.spec import ModelSpec

    loaded = load_model(ModelSpec(name="squeezenet1_1", weights="random", init_seed=0))
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8))
              for i in range(7)]
    layers = ["features.3", "features.12"]

    def run(**kwargs: Any) -> tuple[list[int], dict[str, np.ndarray]]:
        sizes, parts = [], []
        extract_features(loaded, images, layers, batch_size=4, on_batch=lambda s, a: (sizes.append(len(a[layers[0]])),
                                                                                    parts.append(a)), **kwargs)
        return sizes, {n: np.concatenate([p[n] for p in parts]) for n in layers}

    sizes, reference = run()
    assert sizes == [4, 3]
    per_stimulus = 3 * 224 * 224 * 4 + 4 * (128 * 55 * 55 + 512 * 13 * 13)  # input + captured activations
    budget = 2 * 3 * per_stimulus  # room for 2 stimuli (3 copies each)
    assert batch_size_for_budget(budget, per_stimulus, 4) == 2
    sizes, budgeted = run(memory_budget_bytes=budget)
    assert sizes == [1, 2, 2, 2]  # one stimulus to measure, then what fits
    for name in layers:
        np.testing.assert_allclose(budgeted[name], reference[name], rtol=1e-4, atol=1e-5)


_BUILD_LARGE_BOLD = """
import sys
from pathlib import Path
import nibabel as nib, numpy as np, pandas as pd
root, n_vols = Path(sys.argv[1]), int(sys.argv[2])
func = root / "derivatives/fmriprep/sub-01/func"
bold_path = next(func.glob("*desc-preproc_bold.nii.gz"))
mask_path = next(func.glob("*desc-brain_mask.nii.gz"))
conf_path = next(func.glob("*desc-confounds_timeseries.tsv"))
bold = nib.load(bold_path)
data = np.asarray(bold.dataobj, dtype=np.float32)
data = data.repeat(2, 0).repeat(2, 1).repeat(2, 2)  # 2 mm voxels on the same field of view
rng = np.random.default_rng(0)
extra = n_vols - data.shape[3]
data = np.concatenate([data, np.repeat(data[..., -1:], extra, axis=3)], axis=3)
data += rng.standard_normal(data.shape, dtype=np.float32) + 100
affine = bold.affine.copy()
affine[:3, :3] /= 2
affine[:3, 3] -= np.diag(affine)[:3] / 2
bold_path.unlink()
mask_path.unlink()
image = nib.Nifti1Image(data, affine)
image.header.set_zooms((2.0, 2.0, 2.0, float(bold.header.get_zooms()[3])))
nib.save(image, bold_path.with_name(bold_path.name[:-3]))  # .nii: quick to write
nib.save(nib.Nifti1Image(np.ones(data.shape[:3], np.uint8), affine), mask_path)
confounds = pd.read_csv(conf_path, sep="\\t", na_values="n/a")
confounds = pd.concat([confounds, confounds.iloc[[-1] * extra]], ignore_index=True)
confounds.to_csv(conf_path, sep="\\t", index=False, na_rep="n/a")
print(int(np.prod(data.shape[:3])))
"""

_PEAK_RSS = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print("PEAK_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "CODE", code)
"""

_IMPORTS = ("import bids_dnn.workflows.participant, bids_dnn.workflows.participant_maps, bids_dnn.brain.glm, bids_dnn.encoding.ridge, "
            "bids_dnn.dnn.extract, bids_dnn.features.store, bids_dnn.brain.patterns, bids_dnn.rsa.rdm, torch, torchvision, "
            "nilearn.glm.first_level, bids, h5py, himalaya.ridge, sklearn")


def _peak_rss_bytes(command: list[str], env: dict[str, str]) -> int:
    """Peak RSS of ``command`` (RUSAGE_CHILDREN of a fresh parent, so earlier children do not count)."""
    result = subprocess.run([sys.executable, "-c", _PEAK_RSS, *command], capture_output=True, text=True,
                            env=env, timeout=1200, check=False)
    line = next((x for x in result.stdout.splitlines() if x.startswith("PEAK_KB")), None)
    assert line is not None and line.endswith("CODE 0"), result.stdout[-2000:] + result.stderr[-3000:]
    return int(line.split()[1]) * 1024


@pytest.mark.slow
def test_mem_bounds_the_peak_memory_of_a_run(tmp_path: Path) -> None:
    """One participant, one run of 57 024 voxels x 300 volumes (68 MB as float32). Without --mem
    the AR(1) GLM fits 50 000 voxels at once (its 1 GiB default; ~0.9 GB measured); with --mem 64MB
    chunks of 3 495 voxels (~0.05 GB). The bound: the libraries (a child that imports them), three
    times the series (series, residuals, the mapped file), the budget and 200 MiB headroom.
    Measured on the 2-core box (MiB): libraries 1064, with --mem 1404, bound 1532, without 1963.
    Both runs give the same numbers (GLM, RSA and encoding over all voxels)."""
    from bids_dnn.workflows.demo import make_demo_dataset

    bids = make_demo_dataset(tmp_path / "bids", n_subjects=2, n_runs=1, seed=0)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1"}
    built = subprocess.run([sys.executable, "-c", _BUILD_LARGE_BOLD, str(bids), "300"], capture_output=True,
                           text=True, env=env, timeout=600, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    n_voxels = int(built.stdout.split()[-1])
    series_bytes = n_voxels * 300 * 4
    spec = _spec(tmp_path, models=[{"name": "squeezenet1_1", "weights": "random", "init_seed": 0,
                                    "layers": ["features.12", "classifier.3"]}],
                 analyses={"rsa": {"comparison": "spearman", "permutations": 20},
                           "weighted_rsa": {"enabled": False}, "searchlight": {"enabled": False},
                           "encoding": {"enabled": True, "region": "brain", "n_folds": 4}}, brain={"glm": {"engine": "nilearn"}})
    budget = 64 * 2**20

    def run(out: Path, *extra: str) -> int:
        return _peak_rss_bytes([sys.executable, "-m", "bids_dnn", str(bids), str(out), "participant",
                                "--participant-label", "01", "--spec", str(spec), "--no-progress", *extra], env)

    libraries = _peak_rss_bytes([sys.executable, "-c", _IMPORTS], env)
    bound = libraries + 3 * series_bytes + budget + 200 * 2**20
    with_budget = run(tmp_path / "budget", "--mem", "64MB")
    without = run(tmp_path / "default")
    mib = {k: round(v / 2**20) for k, v in
           dict(libraries=libraries, bound=bound, with_budget=with_budget, without=without).items()}
    print("peak RSS (MiB):", mib)  # shown with pytest -s
    assert with_budget < bound < without, mib
    _assert_same_numbers(_tables(tmp_path / "budget"), _tables(tmp_path / "default"))
    import nibabel as nib

    maps = sorted((tmp_path / "default").glob("sub-01/func/*_statmap.nii.gz"))
    assert len(maps) >= 9
    for path in maps:
        other = tmp_path / "budget" / path.relative_to(tmp_path / "default")
        np.testing.assert_allclose(np.asarray(nib.load(other).dataobj), np.asarray(nib.load(path).dataobj),
                                   rtol=1e-4, atol=1e-5, equal_nan=True, err_msg=path.name)
    provenance = json.loads(next((tmp_path / "budget" / "sub-01" / "log").glob("*/provenance.json")).read_text())
    assert provenance["resources"]["memory_budget_bytes"] == budget
    assert provenance["resources"]["total_memory_budget_bytes"] == budget
