"""The 92 real images of Kriegeskorte et al. (2008) through stimuli -> features -> model RDM.

Uses ``shared/data/kriegeskorte92`` (skipped when absent). The images are COPIED into a tiny
BIDS dataset under ``tmp_path`` (the package refuses stimulus symlinks that leave the dataset),
never into the repository.

The network is AlexNet with RANDOM weights (``init_seed`` 0): nothing here says anything about
how a trained network represents these images. The checks are about the plumbing (order,
decoding, shapes, finiteness, storage round trip) plus a weak sanity check that even a random
network's RDM reflects the low-level image statistics that differ between categories. The
shared folder has no network activations for these images, only the human / monkey IT RDMs,
which are checked for consistency with our comparison code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

N_IMAGES = 92
LAYERS = ["features.1", "features.12", "classifier.2", "classifier.6"]
UNITS = {"features.1": 64 * 55 * 55, "features.12": 256 * 6 * 6, "classifier.2": 4096, "classifier.6": 1000}


@pytest.fixture(scope="module")
def k92() -> Path:
    from tests.conftest import SHARED_DATA

    folder = SHARED_DATA / "kriegeskorte92"
    if not (folder / "stimuli.tsv").is_file():
        pytest.skip(f"kriegeskorte92 not found under {SHARED_DATA}")
    return folder


@pytest.fixture(scope="module")
def table(k92: Path) -> pd.DataFrame:
    return pd.read_csv(k92 / "stimuli.tsv", sep="\t")


@pytest.fixture(scope="module")
def bids_dataset(k92: Path, table: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dataset_description.json, stimuli/ (copies) and one subject's events naming all 92 images."""
    root = tmp_path_factory.mktemp("k92") / "bids"
    (root / "stimuli").mkdir(parents=True)
    for file in table["stim_file"]:
        shutil.copyfile(k92 / file, root / file)  # a copy: symlinks leaving the dataset are refused
    (root / "dataset_description.json").write_text(json.dumps({"Name": "k92", "BIDSVersion": "1.8.0"}))
    func = root / "sub-01" / "func"
    func.mkdir(parents=True)
    # one trial type for all, so that stimuli keep the file (= README / RDM row) order;
    # the categories stay in a column the package does not read as category
    events = pd.DataFrame({"onset": np.arange(N_IMAGES) * 4.0, "duration": 1.0, "trial_type": "image",
                           "stim_file": [f.removeprefix("stimuli/") for f in table["stim_file"]],
                           "k92_category": table["category"]})
    events.to_csv(func / "sub-01_task-k92_events.tsv", sep="\t", index=False)
    return root


@pytest.fixture(scope="module")
def stimuli(bids_dataset: Path):
    from bids_dnn.io.stimuli import build_stimulus_set, read_events

    events = read_events(bids_dataset / "sub-01" / "func" / "sub-01_task-k92_events.tsv")
    return build_stimulus_set([events], bids_dataset)


@pytest.fixture(scope="module")
def features(stimuli, tmp_path_factory: pytest.TempPathFactory):
    """AlexNet (random weights, seed 0) features of the 92 images, through the feature store."""
    import torch

    from bids_dnn.features import store as feat
    from bids_dnn.dnn.extract import extract_features
    from bids_dnn.dnn.layers import resolve_layers
    from bids_dnn.dnn.models import load_model
    from bids_dnn.spec import ModelSpec
    from bids_dnn.io.stimulus_loading import load_image

    torch.manual_seed(0)
    loaded = load_model(ModelSpec(name="alexnet", weights="random", init_seed=0))
    layers = resolve_layers(loaded.module, LAYERS, model_name="alexnet")
    assert layers == LAYERS
    key = feat.feature_content_key(stimuli.sha256, loaded.identity(), layers, "float32", None)
    path = tmp_path_factory.mktemp("k92feat") / "alexnet.h5"
    decoded: list[tuple[str, tuple[int, int]]] = []

    def load(p: Path):
        image = load_image(p)
        decoded.append((image.mode, image.size))
        return image

    def compute(writer) -> None:
        images = [(lambda p=p: load(p)) for p in stimuli.paths]
        shapes = extract_features(loaded, images, layers, batch_size=16, device="cpu",
                                  on_batch=writer.write_batch)
        writer.set_layer_shapes(shapes)

    feat.ensure_features(path, key, compute, stim_ids=stimuli.stim_ids, dtype="float32",
                         attrs=feat.provenance_attrs(loaded.identity(), token_policy="cls",
                                                     library_versions={}, stimulus_sha256s=stimuli.sha256))
    return feat.read_features(path, layers), decoded


def test_stimulus_set_keeps_the_92_images_in_order(stimuli, table: pd.DataFrame, k92: Path) -> None:
    from bids_dnn.hashing import file_sha256

    assert stimuli.n_stimuli == N_IMAGES
    assert stimuli.files == [f.removeprefix("stimuli/") for f in table["stim_file"]]
    assert stimuli.stim_ids == [f"stim{i:03d}" for i in range(1, N_IMAGES + 1)]
    assert len(set(stimuli.sha256)) == N_IMAGES  # 92 distinct images
    assert stimuli.sha256[0] == file_sha256(k92 / table["stim_file"][0])  # the copy is byte-identical


def test_every_image_decodes_to_rgb(stimuli) -> None:
    from PIL import Image

    from bids_dnn.io.stimulus_loading import load_image

    modes = set()
    for path in stimuli.paths:
        with Image.open(path) as raw:
            modes.add(raw.mode)
        image = load_image(path)
        assert image.mode == "RGB" and image.size == (175, 175)
        assert np.asarray(image).std() > 0  # not blank
    assert modes <= {"RGB", "RGBA", "L", "LA", "P"}, modes


def test_features_are_finite_with_expected_shapes(features, stimuli) -> None:
    stored, decoded = features
    assert len(decoded) == N_IMAGES and all(mode == "RGB" for mode, _ in decoded)
    assert list(stored.stim_ids) == stimuli.stim_ids
    assert list(stored.layers) == LAYERS
    for layer, array in stored.layers.items():
        assert array.shape == (N_IMAGES, UNITS[layer]) and array.dtype == np.float32
        assert np.isfinite(array).all(), layer
        assert array.std(axis=0).max() > 0, f"{layer}: identical rows for all images"
    assert tuple(stored.layer_shapes["features.1"]) == (64, 55, 55)
    assert tuple(stored.layer_shapes["classifier.6"]) == (1000,)
    assert (stored.layers["features.1"] >= 0).all()  # a ReLU output


def test_model_rdm_is_a_finite_vector_with_category_structure(features, table: pd.DataFrame) -> None:
    """Random weights: only low-level structure can show, so the check is deliberately weak."""
    from bids_dnn.rsa.rdm import calc_rdm, pair_indices, vector_to_square

    stored, _ = features
    n_pairs = N_IMAGES * (N_IMAGES - 1) // 2
    i, j = pair_indices(N_IMAGES)
    animate = table["animal"].to_numpy().astype(bool)
    for layer in LAYERS:
        vector = calc_rdm(stored.layers[layer].astype(np.float64), "correlation")
        assert vector.shape == (n_pairs,) and np.isfinite(vector).all(), layer
        assert (vector >= -1e-9).all() and (vector <= 2 + 1e-9).all()
        square = vector_to_square(vector, N_IMAGES)
        np.testing.assert_allclose(square, square.T)
        assert np.allclose(np.diag(square), 0)
        assert vector.std() > 0, f"{layer}: constant RDM"
        if layer == "features.1":
            # same-animacy pairs are closer than cross-animacy pairs, even with random weights
            # (colour / texture statistics differ between animate and inanimate images)
            same = animate[i] == animate[j]
            assert vector[same].mean() < vector[~same].mean()
            # faces are a tight cluster on a grey background
            face = table["face"].to_numpy().astype(bool)
            within_faces = vector[face[i] & face[j]].mean()
            assert within_faces < vector[~(face[i] & face[j])].mean()


def test_shared_it_rdms_agree_with_our_comparison(k92: Path) -> None:
    """No activations for these images are shared; the IT RDMs check our RDM/comparison code."""
    from bids_dnn.rsa.compare import compare_rdms
    from bids_dnn.rsa.rdm import square_to_vector

    h_it = np.load(k92 / "hIT_rdm_fig1.npy").astype(np.float64)
    m_it = np.load(k92 / "mIT_rdm.npy").astype(np.float64)
    per_subject = np.load(k92 / "hIT_rdms_4subj_2sess.npy").astype(np.float64)
    np.testing.assert_allclose(per_subject.mean(axis=(0, 1)), h_it, atol=1e-5)
    h_vec, m_vec = square_to_vector(h_it), square_to_vector(m_it)
    r = compare_rdms(h_vec[None], m_vec[None], "pearson")
    assert float(np.ravel(r)[0]) == pytest.approx(0.4912, abs=5e-4)
