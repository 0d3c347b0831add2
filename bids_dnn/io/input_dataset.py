"""Which input dataset an output folder belongs to (``OUT_DIR/input_dataset.json``).

Participants of two different datasets written into one output folder would share its feature
files and stimulus table and be mixed by the group level. The first participant run records the
dataset's identity in the output folder; every later participant run compares its own dataset
with the record and refuses another one (exit 64), unless ``--force`` hands the folder over to it.

The identity is what the outputs depend on, not where the data lie, and not what a run selected:

- per task, the *stimulus fingerprint*: SHA-256 of the sorted ``(stim_id, file SHA-256)`` pairs
  of the task's stimulus set (the ids and hashes of ``task-<task>_stimuli.tsv``), built from the
  events of every participant, so concurrent array jobs of one dataset agree;
- the dataset's participants (every ``sub-*`` label), whichever a job selected.

A copy of the dataset at another path is the same dataset (the path is recorded for information
only). A dataset that gained or lost participants is still the same dataset (one list contains
the other); the record then lists the larger set. Any other difference (another stimulus set for
a recorded task, participant lists that are not nested) is another dataset. The record has a
``DatasetId``, which every participant's status file copies (``dataset``): the group level
refuses participants whose recorded id is not the folder's (they were computed from a dataset
that ``--force`` replaced).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bids_dnn.io import derivatives as drv
from bids_dnn.errors import UsageError
from bids_dnn.hashing import content_key, text_sha256

#: the record's name in the output folder (listed in ``.bidsignore``)
RECORD_NAME = drv.INPUT_DATASET_FILE
#: participants listed by name in a message (the rest are counted)
SHOWN_LABELS = 6


@dataclass(frozen=True)
class DatasetIdentity:
    """The identity of one input dataset, for one task.

    Attributes
    ----------
    path : str
        The dataset folder, resolved (information only: a copy elsewhere is the same dataset).
    name : str or None
        ``Name`` of its ``dataset_description.json``.
    participants : tuple of str
        Every participant label of the dataset, sorted (not only the selected ones).
    task : str
        The task analysed.
    stimuli : str
        :func:`stimulus_fingerprint` of the task's stimulus set.
    n_stimuli : int
    """

    path: str
    name: str | None
    participants: tuple[str, ...]
    task: str
    stimuli: str
    n_stimuli: int

    def dataset_id(self) -> str:
        """A short id, the same for every job that records this dataset first."""
        return content_key(list(self.participants), self.task, self.stimuli)[:16]

    def new_record(self) -> dict[str, Any]:
        """The record of an output folder made from this dataset."""
        return {"DatasetId": self.dataset_id(), "Name": self.name, "Path": self.path,
                "Participants": list(self.participants),
                "Tasks": {self.task: {"StimulusFingerprint": self.stimuli, "NumberOfStimuli": self.n_stimuli}},
                "Description": RECORD_DESCRIPTION}


RECORD_DESCRIPTION = ("The input dataset of this folder, recorded by the first participant run: bids_dnn refuses a "
                      "participant run from another dataset (another stimulus set, or participants that are not a "
                      "subset or superset of these), unless --force hands the folder over to it. Path is for "
                      "information only: a copy of the dataset elsewhere is the same dataset.")


def stimulus_fingerprint(stim_ids: list[str], sha256: list[str]) -> str:
    """SHA-256 of the sorted ``(stim_id, file SHA-256)`` pairs (independent of the RDM row order)."""
    return text_sha256("\n".join(f"{sid}\t{digest}" for sid, digest in sorted(zip(stim_ids, sha256))))


def dataset_identity(bids_dir: Path, participants: list[str], task: str, stim_ids: list[str],
                     sha256: list[str]) -> DatasetIdentity:
    """The identity of the dataset at ``bids_dir`` for ``task``.

    Parameters
    ----------
    bids_dir : Path
    participants : list of str
        Every participant label of the dataset (``DatasetIndex.subjects()``).
    task : str
    stim_ids, sha256 : list of str
        The task's stimulus set (:class:`bids_dnn.io.stimuli.StimulusSet`).
    """
    description = drv.read_json_object(Path(bids_dir) / "dataset_description.json")
    name = description.get("Name")
    return DatasetIdentity(path=str(Path(bids_dir).resolve()), name=str(name) if name is not None else None,
                           participants=tuple(sorted(participants)), task=task,
                           stimuli=stimulus_fingerprint(stim_ids, sha256), n_stimuli=len(stim_ids))


def read_record(out_dir: Path) -> dict[str, Any]:
    """The output folder's record (empty when there is none, e.g. a folder of an older version)."""
    return drv.read_json_object(Path(out_dir) / RECORD_NAME)


def differences(record: dict[str, Any], identity: DatasetIdentity) -> list[str]:
    """Why ``identity`` is another dataset than the one ``record`` describes (empty: the same)."""
    found = []
    task = (record.get("Tasks") or {}).get(identity.task)
    if isinstance(task, dict) and task.get("StimulusFingerprint") != identity.stimuli:
        found.append(f"another stimulus set for task '{identity.task}' ({task.get('NumberOfStimuli')} stimuli there, "
                     f"{identity.n_stimuli} here, not the same ids and file contents)")
    recorded = set(record.get("Participants") or [])
    current = set(identity.participants)
    if recorded and not (recorded <= current or current <= recorded):
        found.append(f"other participants ({_labels(sorted(recorded - current))} only there, "
                     f"{_labels(sorted(current - recorded))} only here)")
    return found


def check_output_dataset(out_dir: Path, identity: DatasetIdentity, force: bool) -> dict[str, Any]:
    """Refuse to write results of ``identity`` into a folder made from another dataset.

    Writes nothing. Returns the folder's current record (empty when there is none).

    Raises
    ------
    UsageError
        The folder's record names another dataset and ``force`` is False (exit 64).
    """
    record = read_record(out_dir)
    found = differences(record, identity) if record else []
    if found and not force:
        raise UsageError(
            f"output folder {out_dir} holds results of another dataset: {describe_record(record)}; this run reads "
            f"{describe_identity(identity)}; they differ: " + "; ".join(found),
            "write this dataset's results to another output folder, or pass --force to recompute this folder's "
            "outputs from this dataset (the group level then refuses the other dataset's participants)")
    return record


def record_output_dataset(out_dir: Path, identity: DatasetIdentity, record: dict[str, Any],
                          force: bool) -> dict[str, Any]:
    """Write (or update) the folder's record for ``identity``, after :func:`check_output_dataset`.

    A new folder gets :meth:`DatasetIdentity.new_record`, created only if no concurrent job
    created one meanwhile (else that one is checked). A compatible record gains a task it did not
    list and participants the dataset gained (it is rewritten only when it changes); with
    ``force``, a record of another dataset is replaced by a new one.

    Returns
    -------
    dict
        ``{"id": DatasetId, "stimuli": stimulus fingerprint}``: what a participant's status
        file records (``dataset``).
    """
    out_dir = Path(out_dir)
    path = out_dir / RECORD_NAME
    if not record:
        if drv.write_text_if_absent(path, _json_text(identity.new_record())):
            return {"id": identity.dataset_id(), "stimuli": identity.stimuli}
        record = check_output_dataset(out_dir, identity, force)  # a concurrent job was first
    if differences(record, identity):  # only with force: the folder is handed over
        updated = identity.new_record()
    else:
        tasks = dict(record.get("Tasks") or {})
        tasks.setdefault(identity.task, {"StimulusFingerprint": identity.stimuli,
                                         "NumberOfStimuli": identity.n_stimuli})
        participants = sorted(set(record.get("Participants") or []) | set(identity.participants))
        updated = {**record, "Participants": participants, "Tasks": tasks}
    if updated != record:
        drv.write_text(path, _json_text(updated))
    return {"id": str(updated.get("DatasetId")), "stimuli": identity.stimuli}


def describe_record(record: dict[str, Any]) -> str:
    """``'Name' at PATH (N participants)`` of a record."""
    name = record.get("Name")
    participants = record.get("Participants") or []
    return (f"{repr(name) if name else 'a dataset'} at {record.get('Path', 'an unknown path')} "
            f"({len(participants)} participant(s): {_labels(participants)})")


def describe_identity(identity: DatasetIdentity) -> str:
    """``'Name' at PATH (N participants)`` of a dataset."""
    return (f"{repr(identity.name) if identity.name else 'a dataset'} at {identity.path} "
            f"({len(identity.participants)} participant(s): {_labels(list(identity.participants))})")


def _labels(labels: list[str]) -> str:
    if not labels:
        return "none"
    shown = ", ".join(f"sub-{label}" for label in labels[:SHOWN_LABELS])
    return shown + (f" and {len(labels) - SHOWN_LABELS} more" if len(labels) > SHOWN_LABELS else "")


def _json_text(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
