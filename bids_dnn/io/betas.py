"""Ready-made betas: the sidecars that name the stimulus of each volume of a statmap.

A statmap ``..._desc-stimuli_stat-effect_statmap.nii.gz`` of a derivatives folder (found by
:meth:`bids_dnn.io.bids.DatasetIndex.betas_runs`) holds one volume per stimulus; its JSON
sidecar's ``VolumeStimuli`` or a TSV next to it names them (:func:`read_volume_stimuli`).
:func:`betas_stimulus_tables` turns those names into events-like tables, so that
:func:`bids_dnn.io.stimuli.build_stimulus_set` resolves them as it resolves events.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Iterable

from bids_dnn.errors import BidsValidationError, InputMissingError

if TYPE_CHECKING:
    from bids_dnn.io.bids import RunInputs

__all__ = ["betas_stimulus_tables", "read_volume_stimuli", "volume_stimuli_sidecar"]


def volume_stimuli_sidecar(statmap: Path) -> Path | None:
    """The JSON sidecar (with ``VolumeStimuli``) or TSV naming the stimuli of a statmap's volumes."""
    stem = statmap.name.split(".", 1)[0]
    candidates = [statmap.with_name(stem + ".json"), statmap.with_name(stem + ".tsv"),
                  statmap.with_name(stem.replace("_stat-effect", "") + ".tsv")]
    for candidate in candidates:
        if candidate.suffix == ".json" and candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                data = {}
            if isinstance(data, dict) and "VolumeStimuli" in data:
                return candidate
        elif candidate.is_file():
            return candidate
    return None


def read_volume_stimuli(statmap: Path, sidecar: Path | None) -> list[str]:
    """The stimulus (stim_file or stim_id, as the events name them) of every volume of a statmap.

    From the JSON sidecar's ``VolumeStimuli`` list or from the ``stim_file`` / ``stim_id``
    column of ``..._desc-stimuli[_stat-effect]_statmap.tsv`` (one row per volume). Empty or
    ``n/a`` entries name no stimulus (the volume is ignored).
    """
    if sidecar is None:
        raise InputMissingError(f"{statmap.name} has no sidecar naming the stimulus of each volume",
                                "add a JSON sidecar with 'VolumeStimuli' (one entry per volume) or a "
                                "..._desc-stimuli_statmap.tsv with a stim_file or stim_id column")
    if sidecar.suffix == ".json":
        values = json.loads(sidecar.read_text(encoding="utf-8"))["VolumeStimuli"]
        if not isinstance(values, list):
            raise BidsValidationError(f"{sidecar.name}: VolumeStimuli must be a list (one entry per volume)")
        return ["" if v is None else str(v) for v in values]
    import pandas as pd

    table = pd.read_csv(sidecar, sep="\t", dtype=str, keep_default_na=False)
    column = next((c for c in ("stim_file", "stim_id") if c in table.columns), None)
    if column is None:
        raise BidsValidationError(f"{sidecar.name} needs a stim_file or stim_id column (one row per volume)",
                                  f"it has: {', '.join(table.columns)}")
    return ["" if v in ("n/a", "") else v for v in table[column]]


def betas_stimulus_tables(runs: Iterable[RunInputs], search_dirs: list[Path],
                          dataset_root: Path) -> tuple[list[Any], str]:
    """Events-like tables of the stimuli named by ready-made betas (datasets without events).

    The labels of every run's sidecar (:func:`read_volume_stimuli`) are resolved the way
    ``stimuli.build_stimulus_set`` resolves events: when a ``stimuli.tsv`` in ``search_dirs``
    knows every label, they are its ``stim_id`` values; otherwise a label is a ``stim_file``
    (a path under a stimulus folder) or, when it has no file extension and is not a file,
    a stimulus id, the path without its extension: the one file ``<label>.*`` in the first
    stimulus folder that has one. Empty labels name no stimulus.

    Parameters
    ----------
    runs : iterable of RunInputs
        Runs with ``bold`` (the statmap) and ``volume_stimuli`` (its sidecar).
    search_dirs : list of Path
        Stimulus folders in search order (stimulus derivatives, then ``BIDS_DIR/stimuli``).
    dataset_root : Path
        The dataset (symlinks may point anywhere inside it).

    Returns
    -------
    tables : list of pandas.DataFrame
        One per run, one row per labelled volume: column ``stim_file`` (files) or ``stim_id``
        (``stimuli.tsv`` ids), ready for ``build_stimulus_set``.
    source : {"stim_file", "stimuli_tsv"}
        How the tables name the stimuli.

    Raises
    ------
    InputMissingError
        Labels that are neither a file nor the id of exactly one file (all listed at once).
    """
    import pandas as pd

    from bids_dnn.io.stimuli import find_stimuli_table, read_stimuli_table, resolve_stimulus

    labels = [[label.strip() for label in read_volume_stimuli(run.bold, run.volume_stimuli)] for run in runs]
    named = sorted({label for run_labels in labels for label in run_labels if label})
    table_path = find_stimuli_table(search_dirs)
    if named and table_path is not None and set(named) <= set(read_stimuli_table(table_path).files):
        return [pd.DataFrame({"stim_id": [x for x in run_labels if x]}) for run_labels in labels], "stimuli_tsv"
    as_file: dict[str, str] = {}
    unresolved: list[str] = []
    for label in named:
        _, _, problem = resolve_stimulus(label, search_dirs, dataset_root)
        not_found = problem is not None and problem.startswith(f"{label}: not found in ")
        if not not_found or PurePosixPath(label).suffix:
            as_file[label] = label  # a file, or a problem build_stimulus_set reports as for events
            continue
        found = _files_with_stem(label, search_dirs)
        if len(found) == 1:
            as_file[label] = found[0]
        else:
            unresolved.append(f"{label}: " + (f"several files ({', '.join(found[:4])})" if found else "no file"))
    if unresolved:
        raise InputMissingError(
            f"{len(unresolved)} stimulus label(s) of the ready-made betas name no stimulus file "
            f"(looked in {', '.join(str(d) for d in search_dirs)}):\n  " + "\n  ".join(unresolved[:20])
            + (f"\n  ... ({len(unresolved) - 20} more)" if len(unresolved) > 20 else ""),
            "name the stimulus file (path under stimuli/) in VolumeStimuli or the sidecar TSV, leave volumes "
            "of no stimulus empty (n/a), or add events naming the stimuli")
    return [pd.DataFrame({"stim_file": [as_file[x] for x in run_labels if x]}) for run_labels in labels], "stim_file"


def _files_with_stem(stim_id: str, search_dirs: list[Path]) -> list[str]:
    """Files ``<stim_id>.<ext>`` (relative paths) in the first folder of ``search_dirs`` that has any."""
    from bids_dnn.io.stimuli import is_safe_relative

    if not is_safe_relative(stim_id) or "\x00" in stim_id or any(ch in stim_id for ch in "*?["):
        return []
    for folder in search_dirs:
        target = folder / stim_id
        try:
            found = sorted(p for p in target.parent.glob(target.name + ".*") if p.is_file()
                           and p.name[len(target.name) + 1:] and "." not in p.name[len(target.name) + 1:])
        except OSError:
            found = []
        if found:
            return [p.relative_to(folder).as_posix() for p in found]
    return []
