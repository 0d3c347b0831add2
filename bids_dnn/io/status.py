"""A participant's status file (``sub-<label>/log/task-<task>_status.json``) as the group level reads it.

The participant level writes the file (:mod:`bids_dnn.workflows.provenance`); the group level
and the group report decide from it whether a participant can be included, and why not.
"""

from __future__ import annotations

__all__ = ["FAILURE_MESSAGE_CHARS", "failure_reason", "other_dataset"]

#: characters of a failed participant's message shown in the group's error
FAILURE_MESSAGE_CHARS = 160


def failure_reason(failure: dict[str, object]) -> str:
    """``exit 66: <first line of the message>`` of a status file's ``failure`` record."""
    lines = str(failure.get("message") or "unknown error").strip().splitlines() or ["unknown error"]
    message = lines[0] + (" ..." if len(lines) > 1 else "")
    if len(message) > FAILURE_MESSAGE_CHARS:
        message = message[:FAILURE_MESSAGE_CHARS - 3] + "..."
    return f"exit {failure.get('exit_code', '?')}: {message}"


def other_dataset(status: dict[str, object], record: dict[str, object]) -> bool:
    """Whether a participant's status names another input dataset than the folder's record
    (statuses and folders of versions without records are accepted)."""
    dataset = status.get("dataset")
    return bool(record.get("DatasetId")) and isinstance(dataset, dict) and dataset.get("id") != record["DatasetId"]
