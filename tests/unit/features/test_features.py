"""The HDF5 feature store: round trips, content keys, atomic writes, locking, reduction."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from bids_dnn.backend import as_dtype
from bids_dnn.features import reduction as R
from bids_dnn.features import store as F
from bids_dnn.errors import AnalysisError, InputMissingError

STIM_IDS = ["s01", "s02", "s03", "s04", "s05"]
IDENTITY = {"name": "alexnet", "source": "torchvision", "weights_name": "random",
            "weights_sha256": "ab" * 32, "init_seed": 0, "task": "image",
            "preprocessing": {"center_crop": 224, "mean": [0.485, 0.456, 0.406]}}


def _layers(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Layers in a non-alphabetical order, one with '/' and '%' in its name."""
    return {
        "z.last": rng.normal(size=(5, 7)).astype(np.float32),
        "blocks/0%x": (rng.normal(size=(5, 300)) * 40).astype(np.float32),
        "a": rng.normal(size=(5, 1)).astype(np.float32),
    }


def _compute(layers: dict[str, np.ndarray], log: Path | None = None, *, batch: int = 2,
             delay: float = 0.0):
    """A compute callback writing ``layers`` in batches (and logging its invocation)."""

    def compute(writer: F.FeatureWriter) -> None:
        if log is not None:
            with open(log, "a") as handle:
                handle.write(f"{os.getpid()}\n")
        time.sleep(delay)
        for start in range(0, writer.n_stimuli, batch):
            writer.write_batch(start, {k: v[start:start + batch] for k, v in layers.items()})
        writer.set_layer_shapes({"z.last": (7,), "blocks/0%x": (3, 10, 10), "a": (1,)})

    return compute


def _tmp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".tmp-" in p.name]


# --- content key -----------------------------------------------------------------------


def test_content_key_is_canonical_and_sensitive_to_every_input() -> None:
    args = (["h1", "h2"], IDENTITY, ["features.1", "fc"], "float32", None)
    key = F.feature_content_key(*args)
    assert len(key) == 64 and int(key, 16) >= 0
    shuffled = dict(reversed(list(IDENTITY.items())))
    assert F.feature_content_key(["h1", "h2"], shuffled, ["features.1", "fc"], "float32", None) == key
    variants = [
        (["h2", "h1"], IDENTITY, ["features.1", "fc"], "float32", None),
        (["h1", "h2"], {**IDENTITY, "init_seed": 1}, ["features.1", "fc"], "float32", None),
        (["h1", "h2"], IDENTITY, ["fc", "features.1"], "float32", None),
        (["h1", "h2"], IDENTITY, ["features.1", "fc"], "float16", None),
        (["h1", "h2"], IDENTITY, ["features.1", "fc"], "float32", {"method": "srp", "n_components": 64}),
    ]
    keys = {F.feature_content_key(*v) for v in variants}
    assert len(keys) == len(variants) and key not in keys


# --- round trip ------------------------------------------------------------------------


def test_round_trip_float32(tmp_path: Path, rng: np.random.Generator) -> None:
    layers = _layers(rng)
    path = tmp_path / "feat.h5"
    attrs = F.provenance_attrs(IDENTITY, token_policy="cls", library_versions={"torch": "2.x", "h5py": h5py.__version__},
                               stimulus_sha256s=["h"] * 5)
    assert F.ensure_features(path, "k1", _compute(layers), stim_ids=STIM_IDS, attrs=attrs) == path
    loaded = F.read_features(path)
    assert loaded.stim_ids == STIM_IDS
    assert list(loaded.layers) == ["z.last", "blocks/0%x", "a"]  # written order, names restored
    for name, array in layers.items():
        assert loaded.layers[name].dtype == np.float32
        np.testing.assert_array_equal(loaded.layers[name], array)
    assert loaded.layer_shapes == {"z.last": (7,), "blocks/0%x": (3, 10, 10), "a": (1,)}
    assert loaded.attrs["content_key"] == "k1" and loaded.attrs["dtype"] == "float32"
    assert loaded.attrs["preprocessing"] == IDENTITY["preprocessing"]
    assert loaded.attrs["library_versions"]["h5py"] == h5py.__version__
    assert loaded.attrs["model_name"] == "alexnet" and loaded.attrs["token_policy"] == "cls"
    assert loaded.attrs["init_seed"] == 0 and loaded.attrs["weights_sha256"] == "ab" * 32
    assert loaded.attrs["stimulus_set_sha256"] == F.stimulus_set_sha256(["h"] * 5)
    assert loaded.attrs["bids_dnn_version"] and loaded.attrs["n_stimuli"] == 5
    with h5py.File(path, "r") as h5:
        dataset = h5["layers"]["blocks%2F0%25x"]
        assert dataset.attrs["original_name"] == "blocks/0%x"
        assert dataset.chunks[1] == 300 and 1 <= dataset.chunks[0] <= 5
        assert dataset.compression is None
    subset = F.read_features(path, ["a", "z.last"])
    assert list(subset.layers) == ["a", "z.last"]
    with pytest.raises(AnalysisError, match="has no layer"):
        F.read_features(path, ["missing"])


def test_float16_storage_is_accurate_and_smaller(tmp_path: Path, rng: np.random.Generator) -> None:
    layers = {"x": (rng.normal(size=(5, 4000)) * 30).astype(np.float32)}
    f32 = F.write_feature_file(tmp_path / "f32.h5", "k", STIM_IDS, layers)
    f16 = F.write_feature_file(tmp_path / "f16.h5", "k", STIM_IDS, layers, dtype="float16", compression="lzf")
    back = F.read_features(f16).layers["x"]
    assert back.dtype == np.float32
    assert np.abs(back - layers["x"]).max() <= 1e-3 * np.abs(layers["x"]).max()
    assert f16.stat().st_size < 0.6 * f32.stat().st_size
    with pytest.raises(AnalysisError, match="float16 range"):
        F.write_feature_file(tmp_path / "big.h5", "k", STIM_IDS, {"x": np.full((5, 2), 1e6, np.float32)},
                             dtype="float16")
    assert not (tmp_path / "big.h5").exists() and not _tmp_files(tmp_path)


# --- reuse, recompute, failure ---------------------------------------------------------


def test_same_key_reuses_and_changed_key_recomputes(tmp_path: Path, rng: np.random.Generator) -> None:
    path, log = tmp_path / "feat.h5", tmp_path / "calls.log"
    layers = _layers(rng)
    F.ensure_features(path, "k1", _compute(layers, log), stim_ids=STIM_IDS)
    F.ensure_features(path, "k1", _compute(layers, log), stim_ids=STIM_IDS)
    assert len(log.read_text().splitlines()) == 1
    changed = {k: v + 1 for k, v in layers.items()}
    F.ensure_features(path, "k2", _compute(changed, log), stim_ids=STIM_IDS)
    assert len(log.read_text().splitlines()) == 2
    loaded = F.read_features(path)
    assert loaded.attrs["content_key"] == "k2"
    np.testing.assert_array_equal(loaded.layers["a"], changed["a"])
    assert F.stored_content_key(path) == "k2"


def test_failing_compute_leaves_no_file(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "feat.h5"

    def boom(writer: F.FeatureWriter) -> None:
        writer.write_batch(0, {"a": np.ones((2, 3), np.float32)})
        raise RuntimeError("extraction failed")

    with pytest.raises(RuntimeError, match="extraction failed"):
        F.ensure_features(path, "k1", boom, stim_ids=STIM_IDS)
    assert not path.exists() and not _tmp_files(tmp_path)

    def partial(writer: F.FeatureWriter) -> None:  # forgets the last rows
        writer.write_batch(0, {"a": np.ones((3, 3), np.float32)})

    with pytest.raises(AnalysisError, match="2 of 5 stimuli were never written"):
        F.ensure_features(path, "k1", partial, stim_ids=STIM_IDS)
    assert not path.exists() and not _tmp_files(tmp_path)

    F.ensure_features(path, "old", _compute(_layers(rng)), stim_ids=STIM_IDS)
    with pytest.raises(RuntimeError):
        F.ensure_features(path, "new", boom, stim_ids=STIM_IDS)
    assert F.stored_content_key(path) == "old" and not _tmp_files(tmp_path)  # old file intact


def test_corrupt_file_and_stale_temp_files_are_replaced(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "feat.h5"
    path.write_bytes(b"not hdf5 at all")
    stale = tmp_path / ".feat.h5.tmp-999999"
    stale.write_bytes(b"left by a killed run")
    assert F.stored_content_key(path) is None
    F.ensure_features(path, "k1", _compute(_layers(rng)), stim_ids=STIM_IDS)
    assert F.stored_content_key(path) == "k1" and not stale.exists()


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(InputMissingError) as info:
        F.read_features(tmp_path / "none.h5")
    assert info.value.exit_code == 66
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(InputMissingError, match="not a readable feature file"):
        F.read_features(tmp_path / "junk.h5")


def test_writer_rejects_bad_batches(tmp_path: Path) -> None:
    def compute(writer: F.FeatureWriter) -> None:
        writer.write_batch(0, {"a": np.ones((2, 3), np.float32)})
        writer.write_batch(2, {"a": np.ones((3, 4), np.float32)})

    with pytest.raises(AnalysisError, match="4 units, expected 3"):
        F.ensure_features(tmp_path / "f.h5", "k", compute, stim_ids=STIM_IDS)
    with pytest.raises(AnalysisError, match="do not fit 5 stimuli"):
        F.ensure_features(tmp_path / "f.h5", "k", lambda w: w.write_batch(4, {"a": np.ones((2, 3))}),
                          stim_ids=STIM_IDS)
    with pytest.raises(AnalysisError, match="unique"):
        F.ensure_features(tmp_path / "f.h5", "k", _compute({}), stim_ids=["a", "a"])


# --- concurrency -----------------------------------------------------------------------


def _worker(path: str, log: str, start: Any) -> None:
    """Runs in a spawned process: wait for the start signal, then ensure the file."""
    layers = _layers(np.random.default_rng(5))
    start.wait(30)
    F.ensure_features(Path(path), "shared-key", _compute(layers, Path(log), delay=0.5), stim_ids=STIM_IDS)


def test_two_processes_extract_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    path, log = tmp_path / "feat.h5", tmp_path / "calls.log"
    start = context.Event()
    workers = [context.Process(target=_worker, args=(str(path), str(log), start)) for _ in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(0.2)
    start.set()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert len(log.read_text().splitlines()) == 1  # exactly one extraction
    loaded = F.read_features(path)
    np.testing.assert_array_equal(loaded.layers["z.last"], _layers(np.random.default_rng(5))["z.last"])
    assert loaded.attrs["content_key"] == "shared-key" and not _tmp_files(tmp_path)


# --- reduction, imports ----------------------------------------------------------------


def test_sparse_random_projection_is_seeded_and_keeps_distances(rng: np.random.Generator) -> None:
    data = rng.normal(size=(30, 5000)).astype(np.float32)
    reduced, params = R.reduce_features(data, "srp", n_components=2000, seed=3)
    again, _ = R.reduce_features(data, "srp", n_components=2000, seed=3)
    other, _ = R.reduce_features(data, "srp", n_components=2000, seed=4)
    assert reduced.shape == (30, 2000) and reduced.dtype == np.float32
    np.testing.assert_array_equal(reduced, again)
    assert not np.allclose(reduced, other)
    assert params["applied"] and params["method"] == "srp" and params["n_units_in"] == 5000
    before = np.linalg.norm(data[:, None] - data[None], axis=-1)[np.triu_indices(30, 1)]
    after = np.linalg.norm(reduced[:, None] - reduced[None], axis=-1)[np.triu_indices(30, 1)]
    assert np.abs(after / before - 1).max() < 0.15  # Johnson-Lindenstrauss


def test_pca_caps_components_and_small_layers_pass_through(rng: np.random.Generator) -> None:
    data = rng.normal(size=(20, 100)).astype(np.float32)
    reduced, params = R.reduce_features(data, "pca", n_components=50, seed=0)
    assert reduced.shape == (20, 20) and params["n_components"] == 20
    assert params["explained_variance_ratio_sum"] == pytest.approx(1.0, abs=1e-4)
    same, params = R.reduce_features(data, "srp", n_components=100)
    np.testing.assert_array_equal(same, data)
    assert params["applied"] is False
    with pytest.raises(AnalysisError, match="unknown reduction"):
        R.reduce_features(data, "umap", n_components=2)


def test_features_module_does_not_import_torch() -> None:
    code = "import sys, bids_dnn.features.store; assert 'torch' not in sys.modules, 'torch imported'"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_float16_cast_matches_numpy(rng: np.random.Generator) -> None:
    """The torch cast used for speed rounds exactly like NumPy (round to nearest even)."""
    array = (rng.normal(size=(3, 70001)) * 3000).astype(np.float32)
    array[0, :6] = [np.nan, np.inf, -np.inf, 65519.0, 1e-8, -0.0]
    cast = as_dtype(array, "float16")
    assert cast.dtype == np.float16 and cast.shape == array.shape
    np.testing.assert_array_equal(cast, array.astype(np.float16))
    assert as_dtype(array, "float32") is array
    assert F._max_abs(np.array([1.0, np.nan, -7.0], dtype=np.float32)) == 7.0
    assert F._max_abs(np.array([[2.0, -3.0]], dtype=np.float32)) == 3.0


# --- reduction in the store ------------------------------------------------------------


def _reduced_file(path: Path, layers: dict[str, np.ndarray], reduction: Any, *, batch: int = 2,
                  dtype: str = "float32", log: Path | None = None, force: bool = False) -> F.FeatureSet:
    key = F.feature_content_key(["h"] * len(STIM_IDS), IDENTITY, list(layers), dtype, reduction)
    F.ensure_features(path, key, _compute(layers, log, batch=batch), stim_ids=STIM_IDS, dtype=dtype,
                      reduction=reduction, force=force)
    return F.read_features(path)


def test_streamed_srp_equals_reduce_features_on_the_whole_array(tmp_path: Path, rng: np.random.Generator,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    layers = _layers(rng)  # 7, 300 and 1 units
    layers["wide"] = rng.normal(size=(5, 2000)).astype(np.float32)
    built: list[int] = []
    stream = R.STREAMING_REDUCTIONS["srp"]
    monkeypatch.setitem(R.STREAMING_REDUCTIONS, "srp", lambda *a: built.append(a[0]) or stream(*a))
    loaded = _reduced_file(tmp_path / "f.h5", layers, {"method": "srp", "n_components": 50, "seed": 7})
    assert sorted(built) == [300, 2000]  # one projection per reduced layer, not one per batch (3 batches)
    for name in ("blocks/0%x", "wide"):  # streamed batches == sklearn fit_transform on all rows
        expected, params = R.reduce_features(layers[name], "srp", n_components=50, seed=7)
        assert loaded.layers[name].shape == (5, 50)
        np.testing.assert_allclose(loaded.layers[name], expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
        stored = loaded.reductions[name]
        assert stored == {"method": "srp", "n_components": 50, "seed": 7, "applied": True,
                          "n_units_in": layers[name].shape[1], "density": pytest.approx(params["density"])}
        assert stored["density"] == pytest.approx(1 / np.sqrt(layers[name].shape[1]))  # sklearn 'auto'
    for name in ("z.last", "a"):  # not wider than n_components: stored as they are
        np.testing.assert_array_equal(loaded.layers[name], layers[name])
        assert loaded.reductions[name]["applied"] is False
        assert loaded.reductions[name]["n_units_in"] == layers[name].shape[1]
    assert loaded.layer_shapes["blocks/0%x"] == (3, 10, 10)  # the original layer shape
    assert loaded.layer_shapes["wide"] == (2000,)
    assert loaded.attrs["reduction"] == {"method": "srp", "n_components": 50, "seed": 7, "min_units": None}
    assert not _tmp_files(tmp_path)


def test_min_units_and_float16_with_srp(tmp_path: Path, rng: np.random.Generator) -> None:
    layers = _layers(rng)
    layers["wide"] = rng.normal(size=(5, 2000)).astype(np.float32)
    reduction = R.Reduction("srp", n_components=50, seed=1, min_units=500)
    loaded = _reduced_file(tmp_path / "f.h5", layers, reduction, dtype="float16")
    np.testing.assert_allclose(loaded.layers["blocks/0%x"], layers["blocks/0%x"], rtol=1e-3, atol=0.05)
    assert loaded.layers["blocks/0%x"].shape == (5, 300)  # 300 <= min_units: kept
    expected, _ = R.reduce_features(layers["wide"], "srp", 50, seed=1)
    assert np.abs(loaded.layers["wide"] - expected).max() <= 1e-3 * np.abs(expected).max()
    with pytest.raises(AnalysisError, match="min_units"):
        R.Reduction("srp", n_components=50, min_units=10)


def test_pca_is_fitted_on_all_rows_after_extraction(tmp_path: Path, rng: np.random.Generator) -> None:
    from sklearn.decomposition import PCA

    layers = _layers(rng)
    loaded = _reduced_file(tmp_path / "f.h5", layers, {"method": "pca", "n_components": 3, "seed": 0}, batch=2)
    data = layers["blocks/0%x"]
    reference = PCA(n_components=3, random_state=0).fit(data)
    expected = reference.transform(data)
    np.testing.assert_allclose(loaded.layers["blocks/0%x"], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    params = loaded.reductions["blocks/0%x"]
    assert params["applied"] is True and params["n_units_in"] == 300 and params["n_components"] == 3
    assert params["explained_variance_ratio_sum"] == pytest.approx(reference.explained_variance_ratio_.sum(),
                                                                    rel=1e-5)
    assert loaded.layers["z.last"].shape == (5, 3) and loaded.reductions["z.last"]["applied"] is True
    np.testing.assert_array_equal(loaded.layers["a"], layers["a"])  # 1 unit: kept
    assert loaded.reductions["a"] == {"method": "pca", "n_components": 1, "seed": 0, "n_units_in": 1,
                                      "applied": False}
    assert list(loaded.layers) == ["z.last", "blocks/0%x", "a"]  # extraction order kept
    assert not _tmp_files(tmp_path)  # the full-width scratch file is gone
    capped = _reduced_file(tmp_path / "g.h5", layers, {"method": "pca", "n_components": 20})
    assert capped.layers["blocks/0%x"].shape == (5, 5)  # at most n_stimuli components
    assert capped.reductions["blocks/0%x"]["n_components"] == 5
    assert capped.reductions["blocks/0%x"]["explained_variance_ratio_sum"] == pytest.approx(1.0, abs=1e-5)

    def boom(writer: F.FeatureWriter) -> None:  # the scratch file exists when extraction fails
        writer.write_batch(0, {"x": np.ones((2, 300), np.float32)})
        assert any(p.name.endswith(".full") for p in _tmp_files(tmp_path))
        raise RuntimeError("extraction failed")

    with pytest.raises(RuntimeError, match="extraction failed"):
        F.ensure_features(tmp_path / "h.h5", "k", boom, stim_ids=STIM_IDS, reduction={"method": "pca",
                                                                                        "n_components": 3})
    assert not _tmp_files(tmp_path) and not (tmp_path / "h.h5").exists()


def test_changed_reduction_is_never_silently_reused(tmp_path: Path, rng: np.random.Generator) -> None:
    from bids_dnn.spec import ReductionSpec

    path, log = tmp_path / "f.h5", tmp_path / "calls.log"
    layers = {"x": rng.normal(size=(5, 400)).astype(np.float32)}
    first = _reduced_file(path, layers, ReductionSpec(method="srp", n_components=40), log=log)
    _reduced_file(path, layers, {"method": "srp", "n_components": 40, "seed": 0}, log=log)  # same settings
    assert len(log.read_text().splitlines()) == 1  # a spec section and the equal dict share a key
    for changed, width in (({"method": "srp", "n_components": 41}, 41), ({"method": "srp", "n_components": 40,
                                                                          "seed": 1}, 40),
                           ({"method": "pca", "n_components": 40}, 5), (None, 400)):
        calls = len(log.read_text().splitlines())
        loaded = _reduced_file(path, layers, changed, log=log)
        assert len(log.read_text().splitlines()) == calls + 1, changed  # recomputed
        assert loaded.layers["x"].shape == (5, width)
        assert loaded.attrs["content_key"] != first.attrs["content_key"]
    seed1 = R.reduce_features(layers["x"], "srp", 40, seed=1)[0]
    assert not np.allclose(seed1, first.layers["x"])  # the seed changes the stored values


def test_force_recomputes_and_the_default_reuses(tmp_path: Path, rng: np.random.Generator) -> None:
    path, log = tmp_path / "f.h5", tmp_path / "calls.log"
    layers = _layers(rng)
    reduction = {"method": "srp", "n_components": 50}
    first = _reduced_file(path, layers, reduction, log=log)
    inode = path.stat().st_ino
    _reduced_file(path, layers, reduction, log=log)
    assert len(log.read_text().splitlines()) == 1 and path.stat().st_ino == inode
    forced = _reduced_file(path, layers, reduction, log=log, force=True)
    assert len(log.read_text().splitlines()) == 2 and path.stat().st_ino != inode  # a new file
    np.testing.assert_array_equal(forced.layers["blocks/0%x"], first.layers["blocks/0%x"])  # seeded


def test_srp_rdm_approximates_the_full_rdm() -> None:
    """ReLU features of clustered stimuli (48 stimuli, 20000 units): at n_components = 512 the
    correlation-distance RDM of the projection keeps Spearman r > 0.9 with the full one
    (measured 0.975; 0.94 at 256, 0.86 at 64)."""
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 16))
    latent = centers[np.repeat(np.arange(6), 8)] + 0.7 * rng.normal(size=(48, 16))
    weights = rng.normal(size=(16, 20000)) / 4
    data = np.maximum(latent @ weights + 0.3 * rng.normal(size=(48, 20000)), 0).astype(np.float32)
    reduced, _ = R.reduce_features(data, "srp", n_components=512, seed=0)
    full_rdm = pdist(data.astype(np.float64), "correlation")
    reduced_rdm = pdist(reduced.astype(np.float64), "correlation")
    assert spearmanr(full_rdm, reduced_rdm)[0] > 0.9


def test_spec_reduction_section_is_validated() -> None:
    from bids_dnn.errors import SpecError
    from bids_dnn.spec import parse_spec

    spec = parse_spec({"models": [{"name": "alexnet", "reduction": {"method": "srp", "n_components": 256}}],
                       "analyses": {"rsa": {"enabled": False}}})
    assert R.Reduction.coerce(spec.models[0].reduction) == R.Reduction("srp", 256, 0, None)
    assert parse_spec({"models": [{"name": "alexnet"}], "analyses": {"rsa": {"enabled": False}}}).models[0].reduction is None
    for bad, message in (({"method": "umap", "n_components": 5}, r"models\[0\]\.reduction\.method"),
                         ({"method": "srp", "n_components": 0}, r"models\[0\]\.reduction\.n_components"),
                         ({"method": "srp", "n_components": 50, "min_units": 10}, "min_units"),
                         ({"method": "srp"}, "n_components")):
        with pytest.raises(SpecError, match=message):
            parse_spec({"models": [{"name": "alexnet", "reduction": bad}], "analyses": {"rsa": {"enabled": False}}})


@pytest.mark.slow
def test_pipeline_stores_reduced_features_and_force_reextracts(demo_dataset: Path, tmp_path: Path) -> None:
    """CLI: the reduced file equals ``reduce_features`` of the model's full features, its model
    RDM stays close to the full one on real (demo, random-weight AlexNet) activations (measured
    Spearman r 0.93 for features.2, 46656 units, and 0.995 for features.12, 9216 units, at
    n_components = 1024 and 24 stimuli), an unchanged rerun reuses the file and ``--force``
    rewrites it. ~45 s (four participant runs of one subject)."""
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    from bids_dnn.cli.main import main
    from tests._specs import SMALL_SPEC

    out = tmp_path / "out"
    feature_file = out / "model-alexnet" / "task-shapes_model-alexnet_features.h5"

    def run(spec_text: str, *extra: str) -> F.FeatureSet:
        spec = tmp_path / "spec.yaml"
        spec.write_text(spec_text)
        argv = [str(demo_dataset), str(out), "participant", "--spec", str(spec), "--participant-label", "01",
                "--no-progress", *extra]
        assert main(argv) == 0
        return F.read_features(feature_file)

    full = run(SMALL_SPEC)
    reduced_spec = SMALL_SPEC.replace("layers: [features.2, features.12]\n",
                                      "layers: [features.2, features.12]\n"
                                      "    reduction: {method: srp, n_components: 1024, seed: 3}\n")
    reduced = run(reduced_spec)
    assert reduced.attrs["content_key"] != full.attrs["content_key"]
    for layer, n_units in (("features.2", 64 * 27 * 27), ("features.12", 256 * 6 * 6)):
        expected, _ = R.reduce_features(full.layers[layer], "srp", n_components=1024, seed=3)
        np.testing.assert_allclose(reduced.layers[layer], expected, rtol=1e-5,
                                   atol=1e-5 * np.abs(expected).max())
        assert reduced.reductions[layer]["n_units_in"] == n_units and reduced.reductions[layer]["applied"]
        assert reduced.layer_shapes[layer] == full.layer_shapes[layer]
        rho = spearmanr(pdist(full.layers[layer].astype(np.float64), "correlation"),
                        pdist(reduced.layers[layer].astype(np.float64), "correlation"))[0]
        assert rho > 0.9, (layer, rho)
    inode = feature_file.stat().st_ino
    run(reduced_spec)
    assert feature_file.stat().st_ino == inode  # reused
    forced = run(reduced_spec, "--force")
    assert feature_file.stat().st_ino != inode  # re-extracted
    np.testing.assert_array_equal(forced.layers["features.12"], reduced.layers["features.12"])
