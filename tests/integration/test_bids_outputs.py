"""The derivatives folder as BIDS: the BIDS validator accepts it, and pybids indexes every output.

The validator tests run ``bids-validator-deno`` (PyPI) and skip when it is not installed.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest

import bids_dnn
from bids_dnn.io import derivatives as drv
from bids_dnn.spec import sanitize_label

if TYPE_CHECKING:
    import bids

TASK, SPACE, MODEL = "shapes", "MNI152NLin2009cAsym", "alexnet"
SUBJECTS = ["01", "02", "03", "04"]
ROIS = ["early", "late", "control"]
#: the layers of the demo spec (code/spec.yaml)
LAYERS = ["features.2", "features.5", "features.12", "classifier.1", "classifier.4"]
ENCODING_STATS = ["r", "r2", "alpha", "normr2"]
GROUP_STATS = ["t", "p", "pfwe", "pfdr"]


# ---------------------------------------------------------------------------------------
# BIDS validator
# ---------------------------------------------------------------------------------------


def _validator() -> str | None:
    """The ``bids-validator-deno`` executable (on PATH or beside this Python), else None."""
    found = shutil.which("bids-validator-deno")
    if found:
        return found
    beside = Path(sys.executable).parent / "bids-validator-deno"
    return str(beside) if beside.is_file() else None


def _validate(folder: Path) -> list[dict]:
    """The issues the BIDS validator reports on ``folder``."""
    validator = _validator()
    if validator is None:
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno)")
    result = subprocess.run([validator, str(folder), "--format", "json"], capture_output=True, text=True,
                            timeout=600)
    assert result.stdout.strip(), f"no output from the validator (exit {result.returncode}): {result.stderr[-2000:]}"
    return json.loads(result.stdout)["issues"]["issues"]


def _errors(issues: list[dict]) -> list[dict]:
    return [issue for issue in issues if issue["severity"] == "error"]


def _bidsignore_hides(relative: str, patterns: list[str]) -> bool:
    """Whether one of the ``.bidsignore`` patterns hides ``relative`` (a file path under the root).

    Only the two gitignore forms that bids_dnn writes are understood: ``/a/b*`` (anchored at the
    root, hiding a file or a folder with everything below it) and a slash-free name glob
    (``*_relmat.tsv``, any folder).
    """
    parts = relative.split("/")
    for pattern in patterns:
        if pattern.startswith("/"):
            anchored = pattern[1:].split("/")
            if len(parts) >= len(anchored) and all(fnmatch.fnmatchcase(p, a) for p, a in zip(parts, anchored)):
                return True
        elif fnmatch.fnmatchcase(parts[-1], pattern):
            return True
    return False


def _patterns(folder: Path) -> list[str]:
    lines = (folder / ".bidsignore").read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def test_demo_outputs_pass_the_bids_validator(demo_outputs: Path) -> None:
    errors = _errors(_validate(demo_outputs))
    assert errors == [], json.dumps(errors, indent=1)[:4000]


def test_bidsignore_hides_only_what_the_validator_cannot_know(demo_outputs: Path, tmp_path: Path) -> None:
    """Without ``.bidsignore`` the validator flags exactly the files that ``.bidsignore`` hides."""
    patterns = _patterns(demo_outputs)
    for pattern in patterns:  # the forms _bidsignore_hides understands
        assert ("/" not in pattern) or (pattern.startswith("/") and not pattern.endswith("/")), pattern
    bare = tmp_path / "out"
    shutil.copytree(demo_outputs, bare)
    (bare / ".bidsignore").write_text("")
    flagged = {issue["location"].lstrip("/") for issue in _errors(_validate(bare)) if issue.get("location")}
    files = {path.relative_to(bare).as_posix() for path in bare.rglob("*")
             if path.is_file() and not path.name.startswith(".")}
    hidden = {path for path in files if _bidsignore_hides(path, patterns)}
    assert hidden, "the demo output has files BIDS does not define"
    assert hidden == flagged & files, (sorted(hidden - flagged)[:10], sorted((flagged & files) - hidden)[:10])
    visible = files - hidden
    # what stays visible: the root files, the ROI masks and their sidecars
    assert {"dataset_description.json", "README.md", "descriptions.tsv", "descriptions.json"} <= visible
    assert {Path(path).name.split("_")[-1] for path in visible if path.startswith("sub-")} == {"mask.nii.gz",
                                                                                            "mask.json"}


def test_descriptions_tsv_lists_every_desc_label(demo_outputs: Path) -> None:
    """descriptions.tsv has one row per ``desc-`` label bids_dnn writes (those of other analyses or
    designs than the demo's too), so every label of the BIDS files is described (the report's
    figures, hidden by ``.bidsignore``, are not BIDS files)."""
    table = pd.read_csv(demo_outputs / "descriptions.tsv", sep="\t")
    used = {match for path in demo_outputs.rglob("*_*") if "figures" not in path.relative_to(demo_outputs).parts
            for match in re.findall(r"_(desc-[A-Za-z0-9]+)", path.name)}
    assert used <= set(table["desc_id"])
    assert set(table["desc_id"]) == {f"desc-{label}" for label in drv.DESCRIPTIONS}
    assert table["description"].str.len().min() > 10


def test_root_readme_and_authors(demo_outputs: Path) -> None:
    description = json.loads((demo_outputs / "dataset_description.json").read_text())
    assert description["Authors"] and all(isinstance(name, str) and name for name in description["Authors"])
    readme = (demo_outputs / "README.md").read_text()
    assert f"bids_dnn {bids_dnn.__version__}" in readme
    for folder in ("model-<model>/", "sub-<label>/func/", "group/", "log/<run-id>/", "pybids_config()"):
        assert folder in readme, folder


# ---------------------------------------------------------------------------------------
# pybids
# ---------------------------------------------------------------------------------------


def test_write_tsv_leaves_entity_columns_out_of_the_data_dictionary(tmp_path: Path) -> None:
    path = tmp_path / "sub-01_task-x_model-m_rsa.tsv"
    table = pd.DataFrame({"subject": ["01"], "model": ["m"], "layer": ["features.2"], "score": [0.5]})
    drv.write_tsv(path, table, {"subject": {"Description": "s"}, "model": {"Description": "m"},
                                "layer": {"Description": "l"}, "score": {"Description": "r"}, "Seed": 3})
    assert json.loads(drv.sidecar_path(path).read_text()) == {"score": {"Description": "r"}, "Seed": 3}
    assert list(drv.read_tsv(path).columns) == ["subject", "model", "layer", "score"]


def test_entity_names_cover_pybids_configs() -> None:
    """:data:`PYBIDS_ENTITY_NAMES` holds every entity of pybids' configurations and of ours."""
    import bids.layout

    folder = Path(bids.layout.__file__).parent / "config"
    names = {entity["name"] for config in ("bids.json", "derivatives.json")
             for entity in json.loads((folder / config).read_text())["entities"]}
    ours = {entity["name"] for entity in json.loads(Path(bids_dnn.pybids_config()).read_text())["entities"]}
    assert ours == {"layer", "stat"} and not ours & names  # pybids refuses an entity defined twice
    assert names | ours <= drv.PYBIDS_ENTITY_NAMES


def test_no_sidecar_key_is_named_like_an_entity(demo_outputs: Path) -> None:
    for path in demo_outputs.rglob("*.json"):
        if "log" in path.relative_to(demo_outputs).parts:
            continue
        keys = set(json.loads(path.read_text()))
        assert not keys & drv.PYBIDS_ENTITY_NAMES, (path.name, keys & drv.PYBIDS_ENTITY_NAMES)


@pytest.fixture(scope="module")
def pybids_layout(demo_outputs: Path) -> bids.BIDSLayout:
    import bids

    return bids.BIDSLayout(demo_outputs, validate=False, is_derivative=True,
                           config=["bids", "derivatives", bids_dnn.pybids_config()])


def _query(layout: bids.BIDSLayout, **filters: object) -> set[str]:
    return {str(Path(name).resolve()) for name in layout.get(return_type="filename", **filters)}


def _paths(*paths: Path) -> set[str]:
    return {str(Path(path).resolve()) for path in paths}


def test_pybids_round_trip(demo_outputs: Path, pybids_layout: bids.BIDSLayout) -> None:
    """Every output kind comes back from a pybids query, and exactly the files the tool wrote."""
    out = drv.OutputLayout(demo_outputs, TASK, SPACE)
    layout = pybids_layout
    layers = [sanitize_label(layer) for layer in LAYERS]

    # stimuli table and features
    assert _query(layout, task=TASK, suffix="stimuli", extension=".tsv") == _paths(out.stimuli_table())
    assert _query(layout, model=MODEL, suffix="features", extension=".h5") == _paths(out.features(MODEL))

    # RDMs: per participant and ROI, per layer of the model
    brain_rdms = {(s, roi): out.brain_rdm(s, roi, "crossnobis") for s in SUBJECTS for roi in ROIS}
    model_rdms = {layer: out.model_rdm(MODEL, layer, "correlation") for layer in LAYERS}
    for (subject, roi), path in brain_rdms.items():
        assert _query(layout, subject=subject, label=roi, suffix="relmat", extension=".tsv") == _paths(path)
        assert _query(layout, subject=subject, label=roi, suffix="mask", extension=".nii.gz") == _paths(
            out.roi_mask(subject, roi))
    for layer, path in model_rdms.items():
        found = _query(layout, model=MODEL, layer=sanitize_label(layer), suffix="relmat", extension=".tsv")
        assert found == _paths(path)
        assert layout.get_metadata(str(path))["Layer"] == layer
    assert _query(layout, suffix="relmat", extension=".tsv") == _paths(*brain_rdms.values(), *model_rdms.values())

    # tables: participants' and the group's
    for subject in SUBJECTS:
        assert _query(layout, subject=subject, model=MODEL, suffix="rsa", extension=".tsv") == _paths(
            out.rsa_table(subject, MODEL))
        assert _query(layout, subject=subject, suffix="encoding", extension=".tsv") == _paths(
            out.encoding_table(subject, MODEL))
        assert _query(layout, subject=subject, desc="rois", suffix="summary", extension=".tsv") == _paths(
            out.roi_summary(subject))
    group_rsa = [out.group_table(MODEL, desc) for desc in (None, "summary", "comparisons", "weighted",
                                                            "weightedscores", "weights")]
    group_rsa += [out.group_roi_table("variancepartition"), out.group_roi_table("variancepartitionsummary")]
    assert _query(layout, subject=None, suffix="rsa", extension=".tsv") == _paths(*group_rsa)
    assert _query(layout, model=MODEL, desc="summary", suffix="rsa", extension=".tsv") == _paths(
        out.group_table(MODEL, "summary"))
    assert _query(layout, subject=None, suffix="encoding", extension=".tsv") == _paths(
        out.group_table(MODEL, suffix="encoding"), out.group_table(MODEL, "summary", suffix="encoding"))

    # statistical maps by model, layer and statistic
    statmaps = [out.betas(subject) for subject in SUBJECTS]
    statmaps += [out.encoding_map(subject, None, None, "noiseceiling") for subject in SUBJECTS]
    for subject in SUBJECTS:
        for layer in LAYERS:
            path = out.searchlight_map(subject, MODEL, layer, "spearman")
            assert _query(layout, subject=subject, model=MODEL, layer=sanitize_label(layer), stat="spearman",
                          desc="searchlight", suffix="statmap", extension=".nii.gz") == _paths(path)
            statmaps.append(path)
            for stat in ENCODING_STATS:
                path = out.encoding_map(subject, MODEL, layer, stat)
                assert _query(layout, subject=subject, model=MODEL, layer=sanitize_label(layer), stat=stat,
                              suffix="statmap", extension=".nii.gz") == _paths(path)
                statmaps.append(path)
    for analysis in ("searchlight", "encoding"):
        for layer in LAYERS:
            for stat in GROUP_STATS:
                path = out.group_map(analysis, MODEL, layer, stat)
                assert _query(layout, subject=None, model=MODEL, layer=sanitize_label(layer), stat=stat,
                              desc=analysis, suffix="statmap", extension=".nii.gz") == _paths(path)
                statmaps.append(path)
    assert _query(layout, suffix="statmap", extension=".nii.gz") == _paths(*statmaps)
    assert set(layout.get_layers()) == set(layers)
    assert {"spearman", "t", "pfwe", "noiseceiling", "effect", "crossnobis"} <= set(layout.get_stats())

    # nothing on disk is missed: every data file outside logs and figures was expected above
    expected = _paths(out.stimuli_table(), out.features(MODEL), *brain_rdms.values(), *model_rdms.values(),
                      *statmaps, *group_rsa, out.group_table(MODEL, suffix="encoding"),
                      out.group_table(MODEL, "summary", suffix="encoding"),
                      *[out.roi_mask(s, roi) for s in SUBJECTS for roi in ROIS],
                      *[p for s in SUBJECTS for p in (out.rsa_table(s, MODEL), out.encoding_table(s, MODEL),
                                                       out.roi_summary(s))])
    on_disk = {str(path.resolve()) for path in demo_outputs.rglob("*_*.*")
               if path.suffix != ".json" and not path.name.endswith((".html", ".lock"))
               and not {"log", "figures"} & set(path.relative_to(demo_outputs).parts)}
    assert on_disk == expected
    assert expected <= _query(layout)

