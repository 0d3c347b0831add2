"""HTML reports: content built from the demo outputs, numbers equal to the TSVs, offline rendering
in a real headless browser, maps sections from synthetic maps, and failure isolation."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_dnn.io import derivatives as drv
from bids_dnn.report import build_group_report, build_participant_report

TASK = "shapes"
SPACE = "MNI152NLin2009cAsym"
PARTICIPANT_SECTIONS = ["summary", "stimuli", "quality", "rdms", "rsa", "methods", "provenance"]
GROUP_SECTIONS = ["summary", "participants", "rsa", "comparisons", "combined", "methods", "provenance"]
MAP_GLOBS = ("*_desc-searchlight_statmap.*", "*_desc-encoding_statmap.*", "*_encoding.tsv", "*_encoding.json")


def has_maps(root: Path, folder: str) -> bool:
    return any(any((root / folder).glob(pattern)) for pattern in MAP_GLOBS)


def expected_sections(root: Path, level: str) -> list[str]:
    """The report's sections: the maps section only when searchlight / encoding outputs exist."""
    base = PARTICIPANT_SECTIONS if level == "participant" else GROUP_SECTIONS
    folder = "sub-01/func" if level == "participant" else "group"
    return base[:-2] + ["maps"] + base[-2:] if has_maps(root, folder) else list(base)


def remove_maps(root: Path, folders: tuple[str, ...] = ("sub-01/func", "group")) -> None:
    """Delete searchlight / encoding outputs (tests that do not need them run faster)."""
    for folder in folders:
        for pattern in MAP_GLOBS:
            for path in (root / folder).glob(pattern):
                path.unlink()


# ---------------------------------------------------------------------------------------
# HTML parsing helpers
# ---------------------------------------------------------------------------------------


class Page(HTMLParser):
    """Sections, tables (id -> rows of {data-col: text}), images and notes of a report."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, dict] = {}
        self.tables: dict[str, list[dict[str, str]]] = {}
        self.images: list[dict[str, str]] = []
        self.ids: list[str] = []
        self._section: str | None = None
        self._table: str | None = None
        self._row: dict[str, str] | None = None
        self._cell: str | None = None
        self._text: list[str] = []
        self._capture: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if a.get("id"):
            self.ids.append(a["id"])
        if tag == "section" and "data-section" in a:
            self._section = a["data-section"]
            self.sections[self._section] = {"errors": [], "warnings": [], "images": [], "tables": [], "text": []}
        elif tag == "table" and a.get("id") and "data" in a.get("class", ""):
            self._table = a["id"]
            self.tables[self._table] = []
            if self._section:
                self.sections[self._section]["tables"].append(self._table)
        elif tag == "tr" and self._table:
            self._row = {}
        elif tag == "td" and self._row is not None:
            self._cell, self._text = a.get("data-col", ""), []
        elif tag == "img":
            self.images.append(a)
            if self._section:
                self.sections[self._section]["images"].append(a)
        elif tag == "p" and a.get("class") in ("err", "warn"):
            self._capture, self._text = a["class"], []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._row is not None:
            self._row[self._cell] = "".join(self._text).strip()
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            if self._row:
                self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "p" and self._capture and self._section:
            key = "errors" if self._capture == "err" else "warnings"
            self.sections[self._section][key].append("".join(self._text).strip())
            self._capture = None
        elif tag == "section":
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None or self._capture:
            self._text.append(data)
        if self._section:
            self.sections[self._section]["text"].append(data)

    def section_text(self, name: str) -> str:
        return " ".join(self.sections[name]["text"])


def parse(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def assert_printed(text: str, value: float) -> None:
    """``text`` is ``value`` at the precision it was printed with."""
    if text == "n/a":
        assert not np.isfinite(value), (text, value)
        return
    printed = float(text)
    if "e" in text.lower():
        mantissa = text.lower().split("e")[0]
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        exponent = int(text.lower().split("e")[1])
        tolerance = 0.5 * 10 ** (exponent - decimals)
    else:
        decimals = len(text.split(".")[1]) if "." in text else 0
        tolerance = 0.5 * 10 ** (-decimals)
    assert abs(printed - value) <= tolerance * (1 + 1e-9), (text, value)


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype={"subject": str})


def check_images(page: Page, root: Path) -> int:
    """Every image is an embedded PNG that decodes, has its declared size, and equals its saved file
    (and, while here: every element id of the page is unique, so the navigation links work)."""
    from PIL import Image

    assert len(page.ids) == len(set(page.ids)), sorted(i for i in page.ids if page.ids.count(i) > 1)
    assert page.images
    for img in page.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,"), src[:40]
        data = base64.b64decode(src.split(",", 1)[1])
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            assert image.size == (int(img["width"]), int(img["height"]))
            assert min(image.size) > 20
        saved = root / img["data-file"]
        assert saved.is_file() and saved.read_bytes() == data, saved
    return len(page.images)


def layout_of(root: Path) -> drv.OutputLayout:
    return drv.OutputLayout(root, TASK, SPACE)


@pytest.fixture
def out_copy(demo_outputs: Path, tmp_path: Path) -> Path:
    """A private copy of the demo outputs (reports may be rebuilt or broken there)."""
    target = tmp_path / "out"
    shutil.copytree(demo_outputs, target)
    return target


# ---------------------------------------------------------------------------------------
# Participant report
# ---------------------------------------------------------------------------------------


def test_participant_report_sections_and_images(demo_outputs: Path) -> None:
    page = parse(demo_outputs / "sub-01.html")
    assert list(page.sections) == expected_sections(demo_outputs, "participant")
    for name, section in page.sections.items():
        assert not section["errors"], (name, section["errors"])
    assert check_images(page, demo_outputs) >= 5
    for name in ("stimuli", "quality", "rdms", "rsa"):
        assert page.sections[name]["images"], name
    alts = [img["alt"] for img in page.images]
    assert {"stimulus montage", "ROI overlay", "brain RDMs", "model RDMs alexnet", "RSA layer profile alexnet"} <= set(alts)
    summary = page.section_text("summary")
    status = json.loads((demo_outputs / "sub-01" / "log" / f"task-{TASK}_status.json").read_text())
    for expected in ("sub-01", "24 in 4 categories", "features.2", "classifier.4", "crossnobis",
                     status["spec_hash"], status["run_id"], "early (81 voxels)", "numpy"):
        assert expected in summary, expected


def test_participant_numbers_equal_tsvs(demo_outputs: Path) -> None:
    page = parse(demo_outputs / "sub-01.html")
    func = demo_outputs / "sub-01" / "func"
    table = read(func / f"sub-01_task-{TASK}_space-{SPACE}_model-alexnet_rsa.tsv").set_index(["roi", "layer"])
    rows = page.tables["rsa-alexnet"]
    assert len(rows) == len(table) == 15
    for row in rows:
        record = table.loc[(row["roi"], row["layer"])]
        assert_printed(row["score"], record["score"])
        assert_printed(row["p_permutation"], record["p_permutation"])
        assert int(row["n_voxels"]) == record["n_voxels"]
    if has_maps(demo_outputs, "sub-01/func"):  # the demo spec may enable searchlight / encoding
        import nibabel as nib

        for row in page.tables.get("searchlight-alexnet", []):
            layer = row["layer"].replace(".", "")
            data = np.asarray(nib.load(func / f"sub-01_task-{TASK}_space-{SPACE}_model-alexnet_layer-{layer}_stat-"
                                              f"{row['stat']}_desc-searchlight_statmap.nii.gz").dataobj)
            assert_printed(row["max"], float(np.nanmax(data)))
            assert int(row["n_voxels"]) == int(np.isfinite(data).sum())
    rois = read(func / f"sub-01_task-{TASK}_space-{SPACE}_desc-rois_summary.tsv").set_index("roi")
    assert {r["roi"]: int(r["n_voxels"]) for r in page.tables["rois"]} == rois["n_voxels"].to_dict()
    best = {r["roi"]: r for r in page.tables["summary-best"]}
    for roi, sub in table.reset_index().groupby("roi"):
        significant = sub[sub["p_permutation"] < 0.05]
        if not len(significant):  # no best-layer claim without a layer with permutation p < alpha
            assert best[roi]["layer"].startswith("none") and best[roi]["score"] == "n/a"
            continue
        top = significant.loc[significant["score"].idxmax()]
        assert best[roi]["layer"] == top["layer"]
        assert_printed(best[roi]["score"], top["score"])


# ---------------------------------------------------------------------------------------
# Group report
# ---------------------------------------------------------------------------------------


def test_group_report_sections_and_numbers(demo_outputs: Path) -> None:
    page = parse(demo_outputs / "group.html")
    assert list(page.sections) == expected_sections(demo_outputs, "group")
    for name, section in page.sections.items():
        assert not section["errors"], (name, section["errors"])
    assert check_images(page, demo_outputs) >= 2
    group = demo_outputs / "group"
    summary = read(group / f"task-{TASK}_space-{SPACE}_model-alexnet_desc-summary_rsa.tsv").set_index(["roi", "layer"])
    weighted = read(group / f"task-{TASK}_space-{SPACE}_model-alexnet_desc-weighted_rsa.tsv").set_index("roi")
    assert len(page.tables["weighted-alexnet"]) == len(weighted)
    for row in page.tables["weighted-alexnet"]:
        assert_printed(row["mean"], weighted.loc[row["roi"], "mean"])
    partition = read(group / f"task-{TASK}_space-{SPACE}_desc-variancepartitionsummary_rsa.tsv")
    partition = partition.set_index(["roi", "component"])
    assert len(page.tables["variance-partitioning"]) == len(partition)
    for row in page.tables["variance-partitioning"]:
        assert_printed(row["mean_r2"], partition.loc[(row["roi"], row["component"]), "mean_r2"])
    rows = page.tables["group-summary-alexnet"]
    assert len(rows) == len(summary)
    for row in rows:
        record = summary.loc[(row["roi"], row["layer"])]
        for column in ("mean", "sem", "ci_low", "ci_high", "t", "p_group", "noise_ceiling_lower",
                       "noise_ceiling_upper"):
            assert_printed(row[column], record[column])
        assert_printed(row["p_corrected"], record["p_fdr"])  # the demo spec corrects with fdr_bh
        assert row["significant"] == ("yes" if record["significant"] else "no")
        assert row["best_layer_cv"] == ("yes" if record["best_layer_cv"] else "no")
    comparisons = read(group / f"task-{TASK}_space-{SPACE}_model-alexnet_desc-comparisons_rsa.tsv")
    comparisons = comparisons.set_index(["roi", "layer_a", "layer_b"])
    rows = page.tables["comparisons-alexnet"]
    assert len(rows) == len(comparisons)
    for row in rows:
        record = comparisons.loc[(row["roi"], row["layer_a"], row["layer_b"])]
        assert_printed(row["mean_difference"], record["mean_difference"])
        assert_printed(row["p_t"], record["p_t"])
    if "group-searchlight-alexnet" in page.tables:  # the demo spec may enable searchlight: numbers of its maps
        import nibabel as nib

        for row in page.tables["group-searchlight-alexnet"]:
            stem = f"task-{TASK}_space-{SPACE}_model-alexnet_layer-{row['layer'].replace('.', '')}"
            t = np.asarray(nib.load(group / f"{stem}_stat-t_desc-searchlight_statmap.nii.gz").dataobj)
            pfwe = np.asarray(nib.load(group / f"{stem}_stat-pfwe_desc-searchlight_statmap.nii.gz").dataobj)
            assert_printed(row["max_t"], float(np.nanmax(t)))
            assert int(row["n_pfwe"]) == int((pfwe <= 0.05).sum())
            assert_printed(row["min_pfwe"], float(np.nanmin(pfwe)))
    participants = page.tables["participants-table"]
    assert [r["participant"] for r in participants] == ["sub-01", "sub-02", "sub-03", "sub-04"]
    assert all(r["included"] == "yes" for r in participants)
    best = {r["roi"]: r["best_layer"] for r in page.tables["summary-best"]}
    assert best == {"early": "features.2", "late": "classifier.4", "control": "none (no significant layer)"}


def test_methods_and_provenance(demo_outputs: Path) -> None:
    participant, group = parse(demo_outputs / "sub-01.html"), parse(demo_outputs / "group.html")
    methods = participant.section_text("methods")
    for expected in ("Kriegeskorte", "Walther", "Nili", "1000 permutations", "Spearman", "crossnobis", "nilearn",
                     "SPM canonical", "seed 0"):
        assert expected in methods, expected
    assert "Benjamini" not in methods  # only what is cited is listed; FDR is a group-level step
    group_methods = group.section_text("methods")
    for expected in ("Benjamini", "Hochberg", "1000 participant-bootstrap", "one-sample t-test", "Noise ceilings"):
        assert expected in group_methods, expected
    for page in (participant, group):
        text = page.section_text("provenance")
        for expected in ("--spec", "run id", "statistics.seed", "42", "numpy", "container", "schema_version"):
            assert expected in text, expected
    numpy_version = json.loads(next((demo_outputs / "sub-01" / "log").glob("*/provenance.json")).read_text())[
        "library_versions"]["numpy"]
    assert {"library": "numpy", "version": numpy_version} in participant.tables["provenance-versions"]


def test_reports_make_no_network_reference(demo_outputs: Path) -> None:
    for name in ("sub-01.html", "group.html"):
        text = (demo_outputs / name).read_text(encoding="utf-8")
        assert not re.search(r"https?://", text, re.IGNORECASE), name
        assert not re.search(r"<link\b|@import|url\(|<iframe|<object|<embed", text, re.IGNORECASE), name
        assert all(m.startswith("data:") for m in re.findall(r'\bsrc="([^"]*)"', text)), name
        assert "@media print" in text


# ---------------------------------------------------------------------------------------
# Rebuild from the output folder alone, and --reports-only
# ---------------------------------------------------------------------------------------


def _result_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".tsv", ".gz", ".h5")}


def test_reports_only_rebuilds_from_outputs(demo_dataset: Path, out_copy: Path) -> None:
    from bids_dnn.cli.main import main

    original = parse(out_copy / "sub-01.html")
    remove_maps(out_copy)  # (maps are covered by their own test; this keeps the rebuild quick)
    before = _result_digests(out_copy)
    for path in [out_copy / "sub-01.html", out_copy / "group.html", *out_copy.glob("sub-01/figures/*"),
                 *out_copy.glob("group/figures/*")]:
        path.unlink()
    spec = demo_dataset / "code" / "spec.yaml"
    common = ["--spec", str(spec), "--reports-only", "--no-progress"]
    assert main([str(demo_dataset), str(out_copy), "participant", "--participant-label", "01", *common]) == 0
    assert main([str(demo_dataset), str(out_copy), "group", *common]) == 0
    assert _result_digests(out_copy) == before  # nothing was recomputed
    rebuilt = parse(out_copy / "sub-01.html")
    assert list(rebuilt.sections) == expected_sections(out_copy, "participant")
    assert rebuilt.tables["rsa-alexnet"] == original.tables["rsa-alexnet"]
    assert not any(s["errors"] for s in rebuilt.sections.values())
    check_images(rebuilt, out_copy)
    group = parse(out_copy / "group.html")
    assert list(group.sections) == expected_sections(out_copy, "group")
    assert not any(s["errors"] for s in group.sections.values())
    # the provenance shown is the participant run's, not the rebuild's
    status = json.loads((out_copy / "sub-01" / "log" / f"task-{TASK}_status.json").read_text())
    assert status["run_id"] in rebuilt.section_text("provenance")


def test_builders_need_only_the_output_folder(out_copy: Path) -> None:
    """No stimulus set, spec or summary handed in: everything comes from the files. Stimulus
    files are found through dataset_description's DatasetLinks.raw; when the input dataset is
    not reachable, the montage of the earlier run is reused."""
    layout = layout_of(out_copy)
    remove_maps(out_copy, ("sub-02/func",))
    build_participant_report(layout, "02")  # (the group report from the folder alone: see the maps test)
    page = parse(out_copy / "sub-02.html")
    assert list(page.sections)[:5] == PARTICIPANT_SECTIONS[:5]
    assert not any(s["errors"] for s in page.sections.values())
    assert "not reachable" not in page.section_text("stimuli")
    table = read(out_copy / "sub-02" / "func" / f"sub-02_task-{TASK}_space-{SPACE}_model-alexnet_rsa.tsv")
    assert [r["score"] for r in page.tables["rsa-alexnet"]] == [f"{v:.3f}" for v in table["score"]]
    description = json.loads(layout.dataset_description.read_text())
    description["DatasetLinks"]["raw"] = "../no-such-dataset"
    layout.dataset_description.write_text(json.dumps(description))
    build_participant_report(layout, "02")
    page = parse(out_copy / "sub-02.html")
    assert "not reachable" in page.section_text("stimuli") and page.sections["stimuli"]["images"]
    check_images(page, out_copy)


# ---------------------------------------------------------------------------------------
# Searchlight / encoding maps (synthetic, written into a copy of the demo outputs)
# ---------------------------------------------------------------------------------------


def _write_synthetic_maps(root: Path) -> dict[str, float]:
    import nibabel as nib

    layout = layout_of(root)
    early = nib.load(str(layout.roi_mask("01", "early")))
    affine, shape = early.affine, early.shape
    early_mask = np.asarray(early.dataobj) > 0
    control_mask = np.asarray(nib.load(str(layout.roi_mask("01", "control"))).dataobj) > 0
    brain = np.asarray(nib.load(str(layout.betas("01"))).dataobj).any(axis=-1)
    rng = np.random.default_rng(3)
    expected: dict[str, float] = {}

    def volume(values: np.ndarray | float, where: np.ndarray = brain) -> np.ndarray:
        out = np.full(shape, np.nan, dtype=np.float32)
        out[where] = values if np.isscalar(values) else values[where]
        return out

    def save(path: Path, data: np.ndarray, **sidecar: object) -> None:
        drv.write_nifti(path, nib.Nifti1Image(data, affine), {"Description": "synthetic", **sidecar})

    for k, layer in enumerate(["features.2", "classifier.4"]):
        score = rng.normal(0.0, 0.05, shape) + 0.4 * early_mask * (k == 0)
        data = volume(score)
        save(layout.searchlight_map("01", "alexnet", layer, "spearman"), data, Model="alexnet", Layer=layer,
             Statistic="spearman")
        expected[f"searchlight max {layer}"] = float(np.nanmax(data))
        save(layout.encoding_map("01", "alexnet", layer, "r"), volume(score * 0.8), Model="alexnet", Layer=layer,
             Statistic="r")
        t = volume(rng.normal(0.0, 1.0, shape) + 6.0 * early_mask)
        pfwe = volume(np.where(early_mask, 0.01, 0.6))
        for stat, values in {"t": t, "p": volume(np.where(early_mask, 0.001, 0.4)), "pfdr": pfwe, "pfwe": pfwe}.items():
            save(layout.group_map("searchlight", "alexnet", layer, stat), values, Model="alexnet", Layer=layer,
                 Statistic=stat, NumberOfSubjects=4, Permutations=100, ThresholdFWE_t=4.25)
        expected[f"group max t {layer}"] = float(np.nanmax(t))
    ceiling = np.where(control_mask, 0.05, 0.6)
    save(layout.encoding_map("01", None, None, "noiseceiling"), volume(ceiling), Statistic="noiseceiling")
    expected["n_fwe"] = float(early_mask.sum())
    rows = [{"subject": "01", "roi": roi, "model": "alexnet", "layer": layer, "n_voxels": 80, "mean_r": 0.2,
             "mean_r2": 0.04 + 0.01 * i, "median_alpha": 100.0, "noise_ceiling": 0.5, "normalized_r2": 0.1,
             "cv": "kfold", "n_folds": 5}
            for roi in ("early", "late", "control") for i, layer in enumerate(["features.2", "classifier.4"])]
    drv.write_tsv(layout.encoding_table("01", "alexnet"), pd.DataFrame(rows))
    return expected


def test_maps_sections_appear_only_with_maps(out_copy: Path) -> None:
    layout = layout_of(out_copy)
    remove_maps(out_copy)
    build_participant_report(layout, "01")
    build_group_report(layout)
    assert list(parse(out_copy / "sub-01.html").sections) == PARTICIPANT_SECTIONS
    assert list(parse(out_copy / "group.html").sections) == GROUP_SECTIONS
    expected = _write_synthetic_maps(out_copy)
    # without a recorded ROI reliability the report derives it from the noise-ceiling map
    status_path = layout.status("01")
    status = json.loads(status_path.read_text())
    status.pop("reliability", None)
    status_path.write_text(json.dumps(status))
    build_participant_report(layout, "01")
    build_group_report(layout)
    page = parse(out_copy / "sub-01.html")
    assert list(page.sections) == PARTICIPANT_SECTIONS[:5] + ["maps"] + PARTICIPANT_SECTIONS[5:]
    maps = page.sections["maps"]
    assert not maps["errors"], maps["errors"]
    assert {i["alt"] for i in maps["images"]} == {"searchlight maps alexnet", "encoding maps alexnet",
                                                  "encoding noise ceiling", "encoding ROI profile alexnet"}
    check_images(page, out_copy)
    rows = {(r["layer"], r["stat"]): r for r in page.tables["searchlight-alexnet"]}
    for layer in ("features.2", "classifier.4"):
        assert_printed(rows[(layer, "spearman")]["max"], expected[f"searchlight max {layer}"])
    assert len(page.tables["encoding-table-alexnet"]) == 6
    # reliability is derived from the noise-ceiling map and the low one is flagged
    reliability = {r["roi"]: r["reliability"] for r in page.tables["rois"]}
    assert reliability["early"] == "0.600" and reliability["control"] == "0.050"
    assert any("control: low split-half reliability" in w for w in page.sections["quality"]["warnings"])
    group = parse(out_copy / "group.html")
    assert "maps" in group.sections and not group.sections["maps"]["errors"]
    assert "group searchlight maps alexnet" in {i["alt"] for i in group.sections["maps"]["images"]}
    check_images(group, out_copy)
    rows = {r["layer"]: r for r in group.tables["group-searchlight-alexnet"]}
    for layer in ("features.2", "classifier.4"):
        assert int(rows[layer]["n_pfwe"]) == expected["n_fwe"]
        assert_printed(rows[layer]["max_t"], expected[f"group max t {layer}"])
        assert rows[layer]["t_fwe"] == "4.25" and rows[layer]["n_subjects"] == "4"
    # the methods describe (and cite) the analyses whose outputs exist
    assert "Naselaris" in page.section_text("methods") and "radius" in page.section_text("methods")
    assert "Nichols" in group.section_text("methods") and "max-T" in group.section_text("methods")


# ---------------------------------------------------------------------------------------
# Failure isolation
# ---------------------------------------------------------------------------------------


def test_failing_figure_is_a_visible_note(out_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bids_dnn.report import figures, participant_report

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated drawing failure")

    monkeypatch.setattr(figures, "draw_rdm_grid", broken)
    monkeypatch.setattr(participant_report, "_stimuli", broken)  # a whole section failing
    remove_maps(out_copy)
    before = _result_digests(out_copy)
    build_participant_report(layout_of(out_copy), "01")
    page = parse(out_copy / "sub-01.html")
    assert list(page.sections) == expected_sections(out_copy, "participant")
    rdms = page.sections["rdms"]["errors"]
    assert len(rdms) == 2 and all("simulated drawing failure" in e for e in rdms)  # brain + model RDM figures
    assert "simulated drawing failure" in page.sections["stimuli"]["errors"][0]
    for name in set(page.sections) - {"rdms", "stimuli"}:
        assert not page.sections[name]["errors"], name
    assert page.sections["quality"]["images"] and page.sections["rsa"]["images"]
    assert len(page.tables["rsa-alexnet"]) == 15
    assert "could not be drawn" in (out_copy / "sub-01.html").read_text()
    assert _result_digests(out_copy) == before


# ---------------------------------------------------------------------------------------
# A real headless browser
# ---------------------------------------------------------------------------------------


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing (skip with the reason if that fails)."""
    found = _find_chromium()
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("chromium is not installed and cannot be installed here (needs apt-get as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    started = time.time()
    for command in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]):
        try:
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"chromium could not be installed ({' '.join(command)}: {exc})")
        if result.returncode != 0:
            pytest.skip(f"chromium could not be installed ({' '.join(command)} exited {result.returncode}: "
                        f"{result.stderr.strip()[-300:]})")
    found = _find_chromium()
    if not found:
        pytest.skip("apt-get install chromium succeeded but no chromium binary was found")
    print(f"installed chromium in {time.time() - started:.1f} s")
    return found


# injected first in <head>: records uncaught errors and console.error calls
ERROR_TRAP = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message || e.type)); }, true);
(function () { var original = console.error;
  console.error = function () { window.__errors.push(Array.prototype.join.call(arguments, " "));
                                return original.apply(console, arguments); }; })();
</script>"""

PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var loaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; });
  var remote = performance.getEntriesByType("resource").map(function (e) { return e.name; })
    .filter(function (n) { return !/^(data|file|blob):/.test(n); });
  var out = document.createElement("div");
  out.id = "probe";
  out.setAttribute("data-images", String(imgs.length));
  out.setAttribute("data-loaded", String(loaded.length));
  out.setAttribute("data-remote", String(remote.length));
  out.setAttribute("data-errors", String(window.__errors.length));
  out.setAttribute("data-sections", Array.prototype.map.call(document.querySelectorAll("section[data-section]"),
    function (s) { return s.id; }).join(","));
  out.setAttribute("data-height", String(document.body.scrollHeight));
  document.body.appendChild(out);
});
</script>"""


def _browser(chromium: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # --proxy-server to a closed port: any request that tried to leave the machine would fail
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--disable-extensions", "--proxy-server=127.0.0.1:9",
               f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=10000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name,level", [("sub-01.html", "participant"), ("group.html", "group")])
def test_renders_in_headless_chromium(chromium: str, demo_outputs: Path, tmp_path: Path, name: str,
                                      level: str) -> None:
    from PIL import Image

    text = (demo_outputs / name).read_text(encoding="utf-8")
    page = tmp_path / name
    page.write_text(text.replace("<head>", "<head>" + ERROR_TRAP, 1).replace("</body>", PROBE + "\n</body>"),
                    encoding="utf-8")
    result = _browser(chromium, tmp_path, "--dump-dom", page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r'<div id="probe"([^>]*)>', result.stdout)
    assert match, result.stdout[-2000:]
    attrs = dict(re.findall(r'data-([a-z]+)="([^"]*)"', match[1]))
    n_images = len(parse(demo_outputs / name).images)
    assert int(attrs["images"]) == n_images > 0
    assert int(attrs["loaded"]) == n_images  # every image decoded with a non-zero natural size
    assert attrs["remote"] == "0"
    assert attrs["errors"] == "0"  # no console errors, no failed loads of embedded images
    assert attrs["sections"].split(",") == expected_sections(demo_outputs, level)
    assert int(attrs["height"]) > 2000
    shot = tmp_path / "shot.png"
    result = _browser(chromium, tmp_path, "--hide-scrollbars", "--window-size=1280,2400",
                      f"--screenshot={shot}", (demo_outputs / name).as_uri())
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.shape == (2400, 1280)
    assert pixels.std() > 10  # not a blank page
    artifacts = Path(os.environ.get("BIDS_DNN_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    full = artifacts / f"{name.replace('.html', '')}_screenshot.png"
    result = _browser(chromium, tmp_path, "--hide-scrollbars", f"--window-size=1280,{int(attrs['height'])}",
                      f"--screenshot={full}", (demo_outputs / name).as_uri())
    assert result.returncode == 0 and full.is_file(), result.stderr[-2000:]  # full page, kept as a CI artifact


def test_reports_are_deterministic(out_copy: Path) -> None:
    """Two builds from the same outputs give byte-identical figures and identical HTML bodies."""
    layout = layout_of(out_copy)

    def snapshot() -> dict[str, bytes]:
        build_participant_report(layout, "01")
        build_group_report(layout)
        files = sorted((out_copy / "sub-01" / "figures").glob("*.png")) + sorted(
            (out_copy / "group" / "figures").glob("*.png"))
        assert files
        return {str(f.relative_to(out_copy)): f.read_bytes() for f in files}

    first = snapshot()
    html_first = [(out_copy / n).read_text() for n in ("sub-01.html", "group.html")]
    second = snapshot()
    assert first == second
    html_second = [(out_copy / n).read_text() for n in ("sub-01.html", "group.html")]
    assert html_first == html_second


# ---------------------------------------------------------------------------------------
# Readable figures and claims: best layer only where significant, flags, colour scales
# ---------------------------------------------------------------------------------------


def test_no_signal_roi_has_no_best_layer(demo_outputs: Path) -> None:
    """The noise-only ROI gets no best layer in any table or in the HTML; where there is one,
    the RSA summary and the weighted RSA name the same layer."""
    group = demo_outputs / "group"
    stem = f"task-{TASK}_space-{SPACE}_model-alexnet"
    summary = drv.read_tsv(group / f"{stem}_desc-summary_rsa.tsv")
    weighted = drv.read_tsv(group / f"{stem}_desc-weighted_rsa.tsv").set_index("roi")
    encoding = drv.read_tsv(group / f"{stem}_desc-summary_encoding.tsv")
    assert not summary.loc[summary["roi"] == "control", "significant"].any()  # the planted truth: no signal
    for roi, rows in summary.groupby("roi"):
        best = rows.loc[rows["best_layer_cv"], "layer"]
        assert len(best) == (1 if rows["significant"].any() else 0), roi
        assert rows.loc[rows["best_layer_cv"], "significant"].all()
        expected = best.iloc[0] if len(best) else None
        named = weighted.loc[roi, "best_single_layer"]
        assert (named == expected) if expected else pd.isna(named), (roi, named, expected)
    for roi, rows in encoding.groupby("roi"):
        significant = rows[rows["p_fdr"] < 0.05]
        chosen = rows.loc[rows["best_layer"], "layer"].tolist()
        assert chosen == ([significant.loc[significant["mean_r2"].idxmax(), "layer"]] if len(significant) else [])
    assert not encoding.loc[encoding["roi"] == "control", "best_layer"].any()
    page = parse(demo_outputs / "group.html")
    assert {r["roi"]: r["best_layer"] for r in page.tables["summary-best"]}["control"].startswith("none")
    control = [r for r in page.tables["group-summary-alexnet"] if r["roi"] == "control"]
    assert control and all(r["best_layer_cv"] == "no" for r in control)
    assert {r["roi"]: r["best_single_layer"] for r in page.tables["weighted-alexnet"]}["control"] == "n/a"
    rows = [r for r in page.tables["group-encoding-summary-table-alexnet"] if r["roi"] == "control"]
    assert rows and all(r["best_layer"] == "no" for r in rows)


def test_group_tsv_sidecars_describe_every_column(demo_outputs: Path) -> None:
    """Every column of every group table has a Description in its JSON sidecar; the columns
    named like a pybids entity (subject, roi, model, layer), which pybids would read as entities
    there, are described in the folder's README instead."""
    readme = (demo_outputs / "README.md").read_text()
    tables = sorted((demo_outputs / "group").glob("*.tsv"))
    assert len(tables) >= 10
    for path in tables:
        sidecar = json.loads(drv.sidecar_path(path).read_text())
        table = drv.read_tsv(path)
        for column in table.columns:
            if column in drv.PYBIDS_ENTITY_NAMES:
                assert f"`{column}`" in readme, (path.name, column)
                continue
            entry = sidecar.get(column)
            assert isinstance(entry, dict) and str(entry.get("Description", "")).strip(), (path.name, column)
        if "subject" in table.columns:  # labels read back as text: 01 stays 01
            assert set(table["subject"]) == {"01", "02", "03", "04"}, path.name


def test_reports_state_colour_scales_and_flag_normalised_maps(demo_outputs: Path) -> None:
    import nibabel as nib

    page = parse(demo_outputs / "sub-01.html")
    maps = page.section_text("maps")
    assert "99th percentile of |value|" in maps and "MNI152 template" in maps
    assert "Colour scale 0 to 1" in maps  # the noise-ceiling map on the range of a reliability
    func = demo_outputs / "sub-01" / "func"
    flagged = 0
    for row in page.tables["encoding-alexnet"]:
        if row["stat"] != "normr2":
            continue
        layer = row["layer"].replace(".", "")
        values = np.asarray(nib.load(func / f"sub-01_task-{TASK}_space-{SPACE}_model-alexnet_layer-{layer}_stat-normr2"
                                            f"_desc-encoding_statmap.nii.gz").dataobj, dtype=float)
        outside = int((np.isfinite(values) & ((values < 0) | (values > 1))).sum())
        assert row["flag"] == (f"{outside} of {int(np.isfinite(values).sum())} voxels outside [0, 1]" if outside
                               else ""), row
        flagged += bool(outside)
    warnings = [w for w in page.sections["maps"]["warnings"] if "ceiling-normalised R²" in w]
    assert len(warnings) == (1 if flagged else 0)  # one warning naming every flagged layer
    assert all(w.count("voxels outside [0, 1]") == flagged for w in warnings)
    group = parse(demo_outputs / "group.html")
    assert "99th percentile of |value|" in group.section_text("maps")
    assert "MNI152 template" in group.section_text("maps")


def test_encoding_flags_appear_in_the_report(out_copy: Path) -> None:
    """An out-of-range ceiling-normalised R2 and penalties at the grid edge are flagged in the
    participant report (table cell and warning)."""
    layout = layout_of(out_copy)
    for pattern in ("*_desc-searchlight_statmap.*", "*_desc-encoding_statmap.*"):  # keep the ROI table only
        for path in (out_copy / "sub-01" / "func").glob(pattern):
            path.unlink()
    path = layout.encoding_table("01", "alexnet")
    table = drv.read_tsv(path)
    assert {"normalized_r2_out_of_range", "alpha_at_grid_edge"} <= set(table.columns)
    early = (table["roi"] == "early") & (table["layer"] == "features.2")
    control = (table["roi"] == "control") & (table["layer"] == "classifier.4")
    table["normalized_r2_out_of_range"] = early
    table.loc[early, "normalized_r2"] = 2.98
    table["alpha_at_grid_edge"] = np.where(control, 0.6, 0.05)
    drv.write_tsv(path, table)
    build_participant_report(layout, "01")
    page = parse(out_copy / "sub-01.html")
    warnings = page.sections["maps"]["warnings"]
    assert any("outside [0, 1] for early features.2 (2.98)" in w for w in warnings), warnings
    assert any("control classifier.4 (60%)" in w and "early" not in w for w in warnings), warnings
    rows = {(r["roi"], r["layer"]): r for r in page.tables["encoding-table-alexnet"]}
    assert rows[("control", "classifier.4")]["alpha_at_grid_edge"] == "60%"
    assert rows[("early", "features.2")]["normalized_r2"] == "2.980"
    html = (out_copy / "sub-01.html").read_text()
    assert len(re.findall(r'data-col="normalized_r2" class="bad"', html)) == 1
    assert len(re.findall(r'data-col="alpha_at_grid_edge" class="bad"', html)) == 1
