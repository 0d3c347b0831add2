"""bids_dnn.hashing against hashlib / json, and the recorded keys pinned to their known digests.

The pinned hex strings were computed with the code before the keys were routed through
:mod:`bids_dnn.hashing` (issue 18): stage keys, feature keys and layer digests, stimulus and
dataset fingerprints, weights digests, the spec hash, searchlight and group map keys are stored
in status files, HDF5 attributes and sidecars, so they must not change for the same inputs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h5py
import numpy as np
import pytest

from bids_dnn import hashing

VERSION = "9.9.9"  # stands in for bids_dnn.__version__, which enters the stage and searchlight keys
HASHES = ["a" * 64, "b" * 64, "c" * 64]
IDENTITY = {"name": "alexnet", "source": "torchvision", "weights_name": "random", "weights_sha256": "ab" * 32,
            "init_seed": 0, "task": "image", "preprocessing": {"center_crop": 224, "mean": [0.485, 0.456, 0.406]}}
STIM_IDS = ["s1", "s2", "s3", "s4", "s5"]


def _blob() -> bytes:
    """3 MiB + 5 bytes: more than one block of :func:`bids_dnn.hashing.file_sha256`."""
    return bytes((i * 7 + 3) % 256 for i in range(3 * 2**20 + 5))


def _stimulus_set() -> Any:
    from bids_dnn.io.stimuli import StimulusSet

    return StimulusSet(stim_ids=["b/x", "a"], files=["b/x.png", "a.png"], paths=[Path("/p/b/x.png"), Path("/p/a.png")],
                       categories=["c", "c"], sha256=HASHES[:2], source_dirs=["stimuli", "stimuli"])


# ---------------------------------------------------------------------------------------
# The helpers against independent references
# ---------------------------------------------------------------------------------------


def test_canonical_json_sorts_keys_compactly_in_ascii() -> None:
    value = {"z": [1, 2.0], "a": {"y": "\u00fc", "b": None}, "m": True}
    text = hashing.canonical_json(value)
    assert text == '{"a":{"b":null,"y":"\\u00fc"},"m":true,"z":[1,2.0]}'
    assert json.loads(text) == value
    assert hashing.canonical_json(value, compact=False) == json.dumps(value, sort_keys=True)


def test_canonical_json_nan_and_unknown_objects_only_when_asked() -> None:
    assert hashing.canonical_json([float("nan")]) == "[NaN]"
    with pytest.raises(ValueError):
        hashing.canonical_json([float("nan")], allow_nan=False)
    with pytest.raises(TypeError):
        hashing.canonical_json([Path("/x")])
    assert hashing.canonical_json([Path("/x")], default=str) == '["/x"]'


def test_content_key_is_the_sha256_of_the_canonical_ingredient_list() -> None:
    ingredients = ("stage", {"b": 1, "a": [Path("/x"), None]}, 3)
    expected = hashlib.sha256(b'["stage",{"a":["/x",null],"b":1},3]').hexdigest()
    assert hashing.content_key(*ingredients) == expected
    assert hashing.content_key("stage", {"a": [Path("/x"), None], "b": 1}, 3) == expected  # key order is irrelevant
    assert hashing.content_key("stage", {"b": 1, "a": [Path("/x"), None]}, 4) != expected


def test_parts_sha256_feeds_texts_and_buffers_in_order() -> None:
    rng = np.random.default_rng(0)
    array = rng.normal(size=(4, 3)).astype(np.float32)
    flags = rng.random((2, 5)) > 0.5
    reference = hashlib.sha256()
    for chunk in ("h\u00e9ader".encode(), array.tobytes(), flags.tobytes(), b"\x00\xff"):
        reference.update(chunk)
    parts = iter(["h\u00e9ader", array, flags, b"\x00\xff"])
    assert hashing.parts_sha256(parts) == reference.hexdigest()
    assert hashing.parts_sha256([]) == hashlib.sha256().hexdigest()
    assert hashing.text_sha256("h\u00e9ader") == hashlib.sha256("h\u00e9ader".encode()).hexdigest()
    with pytest.raises(ValueError):  # a strided view is not hashed as if it were contiguous
        hashing.parts_sha256([np.arange(12.0).reshape(3, 4)[:, ::2]])


@pytest.mark.parametrize("block_bytes", [1, 1000, hashing.FILE_BLOCK_BYTES])
def test_file_sha256_streams_the_whole_file(tmp_path: Path, block_bytes: int) -> None:
    data = _blob()[: 5000 if block_bytes < 1000 else None]
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert hashing.file_sha256(path, block_bytes) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert hashing.file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_hashing_imports_nothing_of_bids_dnn_nor_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, bids_dnn.hashing; loaded = [m for m in sys.modules if m.startswith('bids_dnn.') or m == 'torch'];"
            "assert loaded == ['bids_dnn.hashing'], loaded")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------
# Recorded keys: pinned digests of the code before issue 18
# ---------------------------------------------------------------------------------------


def test_stage_key_and_output_checksum_are_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bids_dnn.workflows import stages

    monkeypatch.setattr(stages, "__version__", VERSION)
    ingredients = ["participant_rsa", {"b": [1, 2.5, None], "a": "\u00e9t\u00e9"}, Path("/data/x.nii.gz"), ("t", 3),
                   float("nan")]
    assert stages.content_key(*ingredients) == "9837c2cf69481737c4e71e46f316ed034693734f2c97c5f46a0a0197f7213234"
    (tmp_path / "blob.bin").write_bytes(_blob())
    assert stages.output_checksum(tmp_path / "blob.bin") == \
        "3145733:8e412f5c2133ab91c007c92ac99185bd7aeb01a1b4fc67f38cb9d9052f614a3f"


def test_stimulus_file_digest_is_unchanged(tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(_blob())
    assert hashing.file_sha256(tmp_path / "blob.bin") == \
        "8e412f5c2133ab91c007c92ac99185bd7aeb01a1b4fc67f38cb9d9052f614a3f"


def test_feature_keys_and_layer_digests_are_unchanged(tmp_path: Path) -> None:
    from bids_dnn.features import store

    assert store.stimulus_set_sha256(HASHES) == "3a9126ada7449a9ae43078e666cc5105bcd9700245277275a7a95ab954d338df"
    reduction = {"method": "srp", "n_components": 64, "seed": 3, "min_units": None}
    assert store.feature_content_key(HASHES, IDENTITY, ["features.2", "classifier.6"], "float16", reduction) == \
        "4000a7e2c2b796b92c443d053e76e49cf09dabe37d597f39f6d264c73ad23741"
    assert store.feature_content_key(HASHES, IDENTITY, ["fc"], "float32") == \
        "b573f83d55b8c694d1d32367590d8a92f12eb7f943fe5b70704094a242b83e7a"
    values = (np.arange(5 * 7, dtype=np.float32).reshape(5, 7) - 11) / 3
    expected = {"float32": "21b593e9c82d29e7f750dde81449e92d343d40782bdb3e2d1133c70b35c8c841",
                "float16": "217ef2aa8f2e43eb025375bf2b445325803868ffcc3798c0897515d2f3bb0c03"}
    with h5py.File(tmp_path / "d.h5", "w") as h5:
        h5.create_dataset("stim_ids", data=np.array(STIM_IDS, dtype=object), dtype=h5py.string_dtype("utf-8"))
        for dtype, digest in expected.items():
            dataset = h5.create_dataset(dtype, data=values.astype(dtype))
            assert store.dataset_digest(dataset, rows_per_block=2) == digest
            assert store.dataset_digest(dataset) == digest
            assert store._array_digest(dataset[()], STIM_IDS) == digest


def test_stimulus_and_dataset_fingerprints_are_unchanged() -> None:
    from bids_dnn.io.input_dataset import DatasetIdentity, stimulus_fingerprint

    assert _stimulus_set().set_hash() == "f15ea4024a40d23d9f4e825f4391ff5e2276a15e721e8f4e6ea85bd81505ca6b"
    fingerprint = stimulus_fingerprint(["b/x", "a"], HASHES[:2])
    assert fingerprint == "dbd395a4b319911bd5830e849a4743e4f9758c00d43acfa901b9cde1da8beeab"
    identity = DatasetIdentity(path="/d", name="n", participants=("01", "02"), task="faces", stimuli=fingerprint,
                               n_stimuli=2)
    assert identity.dataset_id() == "4c2eeeca751bf04e"


def test_weights_digest_is_unchanged() -> None:
    import torch

    from bids_dnn.dnn.weights import state_dict_sha256

    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))  # float and int64 tensors
    with torch.no_grad():
        net[0].weight.copy_(torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7)
        net[0].bias.copy_(torch.tensor([0.5, -1.0]))
    assert state_dict_sha256(net) == "e765c76c72baa75ef026a5d3c7b39a7f30928405e802762472ccf6367e8116f2"


def test_spec_hash_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    import bids_dnn.spec as spec_module

    resolved = {"models": [{"name": "alexnet", "seed": 1}], "a": 0.1, "t": "\u00e9"}
    monkeypatch.setattr(spec_module, "spec_to_dict", lambda spec: resolved)
    assert spec_module.spec_hash(None) == "9fa0614f0315"


def test_searchlight_and_group_map_keys_are_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    from bids_dnn.workflows import group_maps, participant_maps, stages

    monkeypatch.setattr(participant_maps, "__version__", VERSION)
    monkeypatch.setattr(stages, "__version__", VERSION)
    searchlight = SimpleNamespace(model_dump=lambda mode: {"radius_mm": 6.0, "comparison": "spearman", "x": ["b", "a"]})
    brain = SimpleNamespace(model_dump=lambda mode: {"space": "MNI152NLin2009cAsym", "resolution": None})
    ctx = SimpleNamespace(spec=SimpleNamespace(analyses=SimpleNamespace(searchlight=searchlight), brain=brain))
    inputs = SimpleNamespace(measure="correlation", patterns=np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2],
                             mask=np.array([[True, False], [True, True]]))
    model_rows = np.linspace(0, 1, 3, dtype=np.float32)
    assert participant_maps.searchlight_key(ctx, "01", _stimulus_set(), inputs, model_rows) == \
        "083fc98215d0cd681b057f45386bee55a1007e42e4b28aa2a4b29d597f6bcbe4"
    stats = SimpleNamespace(map_permutations=100, map_tfce=True, alternative="greater", alpha=0.05, seed=7)
    group_ctx = SimpleNamespace(spec=SimpleNamespace(statistics=stats), layout=SimpleNamespace(root=Path("/out")))
    paths = [Path("/out/sub-01/a.nii.gz"), Path("/out/sub-02/b.nii.gz")]  # missing files: fingerprints without mtime
    assert group_maps.group_map_key(group_ctx, paths, "t", True, 2) == \
        "6987648eeafc718bc230ac9c0ab36a93cf64c5bf6fe44f4b44d339feb92df4a2"
