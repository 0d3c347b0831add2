"""BIDS inputs through pybids: the raw dataset, fMRIPrep derivatives, filters, labels.

Typed queries return paths and entities; nothing here loads voxel arrays or writes files. What
a run's files state (TR, confounds) is read by :mod:`bids_dnn.io.run_files`; the stimuli of
ready-made betas by :mod:`bids_dnn.io.betas`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from bids_dnn.errors import (
    BidsValidationError,
    InputMissingError,
    NothingSelectedError,
    UsageError,
)
from bids_dnn.io.betas import volume_stimuli_sidecar
from bids_dnn.io.run_files import repetition_time


def normalize_label(value: str, prefix: str = "sub") -> str:
    """``sub-01`` -> ``01``; ``01`` stays ``01``.

    Raises
    ------
    UsageError
        When the label is empty or not alphanumeric after removing the prefix.
    """
    text = str(value).strip()
    if text.startswith(f"{prefix}-"):
        text = text[len(prefix) + 1:]
    if not text or not text.isalnum():
        raise UsageError(f"invalid {prefix} label {value!r}", f"labels are alphanumeric, e.g. '01' or '{prefix}-01'")
    return text


#: a command-line label value starting with this names a file of labels (``@labels.txt``)
LABEL_FILE_PREFIX = "@"


def expand_labels(values: Iterable[str] | None, prefix: str = "sub") -> list[str] | None:
    """Normalise labels given on the command line, in order, without repeats.

    A value ``@FILE`` stands for the labels listed in FILE (separated by white space or new
    lines). Every other value is a label, even when a file of that name exists in the working
    directory (a file named ``01`` does not change ``--participant-label 01``).

    Raises
    ------
    UsageError
        An ``@FILE`` that cannot be read (exit 64), or an invalid label.
    """
    if not values:
        return None
    labels: list[str] = []
    for value in values:
        if value.startswith(LABEL_FILE_PREFIX):
            labels.extend(_labels_file(value[len(LABEL_FILE_PREFIX):], prefix))
        else:
            labels.append(value)
    out = [normalize_label(v, prefix) for v in labels]
    return list(dict.fromkeys(out))


def _labels_file(name: str, prefix: str) -> list[str]:
    """The labels listed in the file ``name`` (``@name`` on the command line)."""
    option = "--participant-label" if prefix == "sub" else "--session-label"
    try:
        text = Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc.__class__.__name__
        raise UsageError(f"{option} @{name}: cannot read the file of labels ({reason})",
                         f"give the labels themselves, or @FILE naming a text file with one {prefix} label "
                         "per line") from None
    labels = text.split()
    if not labels:  # never "no selection", which would mean every participant
        raise UsageError(f"{option} @{name}: the file lists no labels",
                         f"list one {prefix} label per line, or leave the option out to select every one")
    return labels


def check_dataset(bids_dir: Path) -> dict[str, Any]:
    """Minimal BIDS validation: the folder exists and has a valid ``dataset_description.json``.

    Returns
    -------
    dict
        The parsed dataset description.
    """
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise InputMissingError(f"BIDS folder not found: {bids_dir}", "check the first argument")
    desc_path = bids_dir / "dataset_description.json"
    if not desc_path.is_file():
        raise BidsValidationError(
            f"{bids_dir} has no dataset_description.json, so it is not a BIDS dataset",
            "add one (Name, BIDSVersion) or use --skip-bids-validation",
        )
    try:
        desc = json.loads(desc_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BidsValidationError(f"dataset_description.json is not valid JSON ({exc})",
                                  "fix the file or use --skip-bids-validation") from None
    if not isinstance(desc, dict) or "Name" not in desc or "BIDSVersion" not in desc:
        raise BidsValidationError("dataset_description.json must define 'Name' and 'BIDSVersion'",
                                  "add them or use --skip-bids-validation")
    return desc


def check_paths(bids_dir: Path, out_dir: Path, work_dir: Path | None, *, database_dir: Path | None = None) -> None:
    """Refuse output, work or pybids database folders that would write into the input dataset.

    The output and work folders may be inside ``BIDS_DIR/derivatives/`` (the fMRIPrep
    convention ``BIDS_DIR/derivatives/bids_dnn``) when their folder there is new, empty or a
    bids_dnn output folder (never another tool's derivatives or the ROI / stimulus files the
    analysis reads); ``BIDS_DIR`` itself and any other place inside it are refused. The pybids
    database folder may be inside ``BIDS_DIR`` only within the output or work folder.

    Raises
    ------
    UsageError
        A folder is refused (exit 64).
    """
    bids_root = Path(bids_dir).resolve()
    derivatives = bids_root / "derivatives"
    allowed: list[Path] = []
    for name, path in (("output", out_dir), ("work", work_dir)):
        if path is None:
            continue
        resolved = Path(path).resolve()
        if resolved != bids_root and bids_root not in resolved.parents:
            allowed.append(resolved)
            continue
        if derivatives not in resolved.parents:
            raise UsageError(f"the {name} folder {path} is inside the input dataset {bids_dir}",
                             f"choose {'an' if name == 'output' else 'a'} {name} folder outside BIDS_DIR, or "
                             "BIDS_DIR/derivatives/bids_dnn; bids_dnn never writes anywhere else into its input")
        top = derivatives / resolved.relative_to(derivatives).parts[0]
        owner = _folder_owner(top)
        if owner is not None:
            where = f"the {name} folder {path}" + (f" would be inside {top}, which" if top != resolved else "")
            raise UsageError(f"{where} holds {owner}; bids_dnn never writes into other inputs",
                             f"choose a new folder, e.g. {derivatives / 'bids_dnn'}, or one outside BIDS_DIR")
        allowed.append(resolved)
    if database_dir is not None:
        resolved = Path(database_dir).resolve()
        inside_input = resolved == bids_root or bids_root in resolved.parents
        if inside_input and not any(resolved == a or a in resolved.parents for a in allowed):
            raise UsageError(f"the pybids database folder {database_dir} is inside the input dataset {bids_dir}",
                             "choose a folder outside BIDS_DIR (or inside the output folder); bids_dnn never "
                             "writes into its input")


def _is_bids_dnn_output(folder: Path) -> bool:
    """Whether ``folder`` is an output folder of bids_dnn (its ``dataset_description.json``)."""
    try:
        description = json.loads((folder / "dataset_description.json").read_text())
        return "bids_dnn" in [g.get("Name") for g in description.get("GeneratedBy", [])]
    except (ValueError, AttributeError, OSError):
        return False


def _folder_owner(folder: Path) -> str | None:
    """What ``folder`` (a folder of ``BIDS_DIR/derivatives``) holds that bids_dnn must not write
    into: another tool's derivatives, or files that are no bids_dnn output; None when it does
    not exist, is empty, or is a bids_dnn output folder."""
    if not folder.is_dir():
        return None if not folder.exists() else "a file"
    description = folder / "dataset_description.json"
    if description.is_file():
        if _is_bids_dnn_output(folder):
            return None
        try:
            generators = [str(g.get("Name")) for g in json.loads(description.read_text()).get("GeneratedBy", [])]
        except (ValueError, AttributeError, OSError):
            generators = []
        return f"the derivatives of another tool ({', '.join(generators) or 'unknown'})"
    if any(folder.iterdir()):
        return "files that are not bids_dnn outputs"
    return None


#: BIDS datatype folder -> the suffix of its recordings
RECORDING_SUFFIX = {"func": "bold", "eeg": "eeg", "meg": "meg"}
#: BIDS datatype folder -> how messages name its data
DATATYPE_WORDS = {"func": "functional", "eeg": "EEG", "meg": "MEG"}


@dataclass(frozen=True)
class RunInputs:
    """The files of one functional run."""

    subject: str
    session: str | None
    task: str
    run: str | None
    events: Path
    bold: Path | None = None
    mask: Path | None = None
    confounds: Path | None = None
    t_r: float | None = None
    #: ``brain.input: betas``: the sidecar naming the stimulus of every volume of ``bold``
    #: (which is then the ready-made 4D statmap, not a BOLD series)
    volume_stimuli: Path | None = None

    @property
    def key(self) -> str:
        parts = [f"sub-{self.subject}"]
        if self.session:
            parts.append(f"ses-{self.session}")
        if self.run:
            parts.append(f"run-{self.run}")
        return "_".join(parts)


@dataclass
class DatasetIndex:
    """pybids layouts of the raw dataset and its fMRIPrep derivatives, with filters.

    Parameters
    ----------
    bids_dir : Path
        Raw BIDS dataset.
    derivatives : dict of str to Path
        Named derivative folders (``fmriprep``, ``stimuli``, ...).
    filters : dict
        ``--bids-filter-file`` content: per query type (``bold``, ``events``) a dict of entities.
    database_dir : Path, optional
        pybids database folder, so large datasets are indexed once.
    datatype : {"func", "eeg", "meg"}
        The folder whose events and recordings are analysed (``modality``: fMRI, EEG or MEG).
    """

    bids_dir: Path
    derivatives: dict[str, Path] = field(default_factory=dict)
    filters: dict[str, dict[str, Any]] = field(default_factory=dict)
    database_dir: Path | None = None
    datatype: str = "func"

    def __post_init__(self) -> None:
        from bids import BIDSLayout

        kwargs: dict[str, Any] = {"validate": False}
        if self.database_dir is not None:
            kwargs["database_path"] = str(self.database_dir / "raw")
        self.raw = BIDSLayout(str(self.bids_dir), **kwargs)
        self._derivative_layouts: dict[str, Any] = {}
        self._subjects: list[str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to a worker process, ``--nprocs``) without the pybids layouts."""
        from dataclasses import fields

        return {**{f.name: getattr(self, f.name) for f in fields(self)},
                "opened": list(self._derivative_layouts), "subjects": self._subjects}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Reopen the layouts: from the database the pickling process wrote when there is one.

        Derivative layouts the pickling process had not opened are indexed in memory, so that
        several workers never write one database at once.
        """
        opened, subjects = state.pop("opened"), state.pop("subjects", None)
        self.__dict__.update(state)
        self.__post_init__()
        self._subjects = subjects
        for name in opened:
            self.derivative(name)
        self.database_dir = None

    def derivative(self, name: str) -> Any:
        """The pybids layout of derivatives ``name`` (found under BIDS_DIR/derivatives/ if not given)."""
        if name in self._derivative_layouts:
            return self._derivative_layouts[name]
        from bids import BIDSLayout

        path = self.derivatives.get(name) or (Path(self.bids_dir) / "derivatives" / name)
        if not Path(path).is_dir():
            raise InputMissingError(
                f"derivatives '{name}' not found (looked for {path})",
                f"pass -d {name}=PATH to point at the {name} outputs",
            )
        kwargs: dict[str, Any] = {"validate": False, "is_derivative": True}
        if self.database_dir is not None:
            kwargs["database_path"] = str(self.database_dir / name)
        try:
            layout = BIDSLayout(str(path), **kwargs)
        except Exception as exc:  # pybids raises several types for a bad description
            raise BidsValidationError(f"cannot index derivatives '{name}' at {path}: {exc}",
                                      "it needs a dataset_description.json with DatasetType 'derivative'") from None
        self._derivative_layouts[name] = layout
        return layout

    # ------------------------------------------------------------------------------
    def subjects(self) -> list[str]:
        """Every ``sub-*`` label of the raw dataset, sorted (queried once: pybids takes seconds)."""
        if self._subjects is None:
            self._subjects = sorted(self.raw.get_subjects())
        return list(self._subjects)

    def tasks(self) -> list[str]:
        return sorted(self.raw.get_tasks())

    def choose_task(self, task: str | None) -> str:
        """The task to analyse: the one given, or the only task with events.

        A dataset without any events file (ready-made betas, ``brain.input: betas``) takes its
        tasks from ready-made betas maps (:meth:`betas_tasks`) instead.
        """
        tasks = sorted({f.entities["task"] for f in self.raw.get(suffix="events", extension=".tsv")
                        if "task" in f.entities})
        if not tasks:
            tasks = self.betas_tasks()
        if task is not None:
            if task not in tasks:
                raise NothingSelectedError(f"task '{task}' has no events files",
                                           f"available tasks: {', '.join(tasks) or 'none'}")
            return task
        if not tasks:
            raise NothingSelectedError("the dataset has no *_events.tsv files (nor ready-made betas maps)",
                                       "events must name the stimuli")
        if len(tasks) > 1:
            raise UsageError(f"the dataset has several tasks ({', '.join(tasks)})", "choose one with --task")
        return tasks[0]

    def betas_tasks(self) -> list[str]:
        """Tasks of the ready-made betas maps (``*_desc-stimuli_stat-effect_statmap.nii[.gz]``)
        in the named derivatives folders and under ``BIDS_DIR/derivatives``."""
        roots = [Path(p) for p in self.derivatives.values()]
        default = Path(self.bids_dir) / "derivatives"
        roots += sorted(p for p in default.iterdir() if p.is_dir() and not _is_bids_dnn_output(p)) \
            if default.is_dir() else []  # not bids_dnn's own outputs (OUT_DIR = BIDS_DIR/derivatives/bids_dnn)
        tasks: set[str] = set()
        for root in dict.fromkeys(roots):
            for path in root.glob("sub-*/**/sub-*_statmap.nii*"):
                entities = _entities(path.name)
                if entities.get("task") and entities.get("desc") == "stimuli" and entities.get("stat") == "effect":
                    tasks.add(entities["task"])
        return sorted(tasks)

    def select_subjects(self, labels: list[str] | None, task: str | None = None,
                        sessions: list[str] | None = None, betas_derivatives: str | None = None) -> list[str]:
        """Subjects to process; an unknown label or an empty selection is an error (exit 18).

        With ``task``, only subjects with data for it take part (:meth:`task_subjects`). Without
        ``labels``, the others (``sub-emptyroom``, anatomy-only subjects, subjects of another
        task) are left out and one log line names them with the reason; a label that names such
        a subject is an error (exit 18).

        Parameters
        ----------
        labels : list of str or None
            ``--participant-label`` values (without ``sub-``); None for every subject.
        task : str, optional
            The task analysed.
        sessions : list of str, optional
            ``--session-label`` values: data of other sessions does not count.
        betas_derivatives : str, optional
            ``brain.input: betas``: the derivatives name of the ready-made betas, whose maps
            count as data for the task (events are optional then).
        """
        from bids_dnn.console import logger

        available = self.subjects()
        if not labels:
            if not available:
                raise NothingSelectedError("the dataset has no sub-* folders")
            if task is None:
                return available
            with_task = self.task_subjects(task, sessions, betas_derivatives)
            left_out = [s for s in available if s not in with_task]
            if not with_task:
                raise NothingSelectedError(f"no participant has data for task '{task}'"
                                           + (f" in session(s) {', '.join(sessions)}" if sessions else ""),
                                           "check --task and --session-label")
            if left_out:
                reasons = self.no_task_reasons(left_out, task, sessions)
                logger.info("left out %d participant(s) without data for task '%s': %s", len(left_out), task,
                            "; ".join(f"sub-{s} ({reasons[s]})" for s in left_out))
            return with_task
        missing = [lab for lab in labels if lab not in available]
        if missing:
            raise NothingSelectedError(
                f"participant label(s) not found: {', '.join('sub-' + m for m in missing)}",
                f"available: {', '.join('sub-' + a for a in available) or 'none'}",
            )
        if task is not None:
            with_task = self.task_subjects(task, sessions, betas_derivatives)
            lacking = [lab for lab in labels if lab not in with_task]
            if lacking:
                reasons = self.no_task_reasons(lacking, task, sessions)
                shown = ", ".join("sub-" + s for s in with_task[:10]) + (
                    f" and {len(with_task) - 10} more" if len(with_task) > 10 else "")
                raise NothingSelectedError(
                    f"participant(s) without data for task '{task}': " + "; ".join(
                        f"sub-{s} ({reasons[s]})" for s in lacking),
                    f"leave {'it' if len(lacking) == 1 else 'them'} out of --participant-label; participants with "
                    f"the task: {shown or 'none'}",
                )
        return labels

    def task_subjects(self, task: str, sessions: list[str] | None = None,
                      betas_derivatives: str | None = None) -> list[str]:
        """Subjects with data for ``task``: functional events or BOLD files of the task in the raw
        dataset (the ``events`` filter of ``--bids-filter-file`` applies to the events), or, with
        ``betas_derivatives``, ready-made betas maps of the task.

        A subject with events but without fMRIPrep outputs (or ready-made betas) has data for the
        task: its missing inputs are reported when it is processed.
        """
        available = self.subjects()
        found = {run.subject for run in self.events(task, None, sessions)}
        if betas_derivatives is not None:
            found.update(self._betas_subjects(task, sessions, betas_derivatives))
        rest = [s for s in available if s not in found]
        if rest:  # BOLD without events: kept, so that the missing events are reported
            query: dict[str, Any] = {"subject": rest, "suffix": RECORDING_SUFFIX[self.datatype], "task": task,
                                     "datatype": self.datatype,
                                     "target": "subject", "return_type": "id"}
            if sessions:
                query["session"] = sessions
            found.update(self.raw.get(**query))
        return [s for s in available if s in found]

    def _betas_subjects(self, task: str, sessions: list[str] | None, derivatives: str) -> set[str]:
        """Subjects with a ready-made betas map of ``task`` (any space) in derivatives ``derivatives``."""
        root = Path(self.derivatives.get(derivatives) or (Path(self.bids_dir) / "derivatives" / derivatives))
        subjects = set()
        for path in root.glob(f"sub-*/**/sub-*_task-{task}_*_statmap.nii*") if root.is_dir() else []:
            entities = _entities(path.name)
            if (entities.get("desc") == "stimuli" and entities.get("stat") == "effect"
                    and (not sessions or entities.get("ses") in sessions)):
                subjects.add(entities["sub"])
        return subjects

    def no_task_reasons(self, subjects: list[str], task: str, sessions: list[str] | None = None) -> dict[str, str]:
        """Why each of ``subjects`` has no data for ``task``, in a few words (``only task-noise``,
        ``anat only``, ``no functional task-x data in ses-2``); one query for all of them."""
        tasks: dict[str, set[str]] = {s: set() for s in subjects}
        datatypes: dict[str, set[str]] = {s: set() for s in subjects}
        for file in self.raw.get(subject=list(subjects)) if subjects else []:
            entities = file.entities
            if entities.get("subject") in tasks:
                if entities.get("task"):
                    tasks[entities["subject"]].add(str(entities["task"]))
                if entities.get("datatype"):
                    datatypes[entities["subject"]].add(str(entities["datatype"]))
        reasons = {}
        for subject in subjects:
            if task in tasks[subject]:
                where = f" in ses-{', ses-'.join(sessions)}" if sessions else ""
                reasons[subject] = f"no {DATATYPE_WORDS[self.datatype]} task-{task} data{where}"
            elif tasks[subject]:
                reasons[subject] = "only " + ", ".join(f"task-{t}" for t in sorted(tasks[subject]))
            else:
                kinds = sorted(datatypes[subject])
                reasons[subject] = f"{', '.join(kinds)} only" if kinds else "no data files"
        return reasons

    def _filter(self, kind: str) -> dict[str, Any]:
        return dict(self.filters.get(kind, {}))

    def events(self, task: str, subjects: list[str] | None = None,
               sessions: list[str] | None = None) -> list[RunInputs]:
        """Events files of ``task`` (all subjects when ``subjects`` is None), sorted."""
        query: dict[str, Any] = {"suffix": "events", "extension": ".tsv", "task": task,
                                 "datatype": self.datatype, **self._filter("events")}
        if subjects:
            query["subject"] = subjects
        if sessions:
            query["session"] = sessions
        runs = []
        for f in self.raw.get(**query):
            ent = f.entities
            runs.append(RunInputs(subject=ent["subject"], session=_label(ent.get("session")), task=task,
                                  run=_label(ent.get("run")), events=Path(f.path)))
        return sorted(runs, key=lambda r: (r.subject, r.session or "", r.run or ""))

    def fmriprep_run(self, run: RunInputs, space: str, resolution: str | None,
                     derivatives: str = "fmriprep", tr_source: str = "check") -> RunInputs:
        """Attach preprocessed BOLD, brain mask, confounds and TR (see :func:`bids_dnn.io.run_files.repetition_time`) to ``run``."""
        layout = self.derivative(derivatives)
        base: dict[str, Any] = {"subject": run.subject, "task": run.task, "extension": [".nii.gz", ".nii"],
                                **self._filter("bold")}
        base["session"] = run.session if run.session else None
        base["run"] = _run_query(run.run)
        spaced = {**base, "space": space}
        if resolution is not None:
            spaced["res"] = resolution
        bold = self._one(layout, {**spaced, "desc": "preproc", "suffix": "bold"}, run, "preprocessed BOLD")
        mask = self._one(layout, {**spaced, "desc": "brain", "suffix": "mask"}, run, "brain mask")
        conf_query = {**base, "desc": "confounds", "suffix": ["timeseries", "regressors"], "extension": ".tsv"}
        confounds = layout.get(**conf_query)
        t_r = repetition_time(layout, bold, tr_source)
        return RunInputs(subject=run.subject, session=run.session, task=run.task, run=run.run, events=run.events,
                         bold=bold, mask=mask, confounds=Path(confounds[0].path) if confounds else None, t_r=t_r)

    @staticmethod
    def _one(layout: Any, query: dict[str, Any], run: RunInputs, what: str) -> Path:
        files = [Path(f.path) for f in layout.get(**{k: v for k, v in query.items() if v is not None or k in ("session", "run")})]
        if not files:
            raise InputMissingError(
                f"no {what} for {run.key} task-{run.task} space-{query.get('space')}"
                + (f" res-{query['res']}" if query.get("res") else ""),
                "check brain.space / brain.resolution in the spec and the fMRIPrep outputs",
            )
        if len(files) > 1:
            names = ", ".join(f.name for f in files[:4])
            raise UsageError(f"several {what} files match {run.key}: {names}",
                             "narrow the choice with brain.resolution or --bids-filter-file")
        return files[0]


    def betas_runs(self, task: str, subject: str, space: str, resolution: str | None,
                   sessions: list[str] | None = None, derivatives: str = "betas") -> list[RunInputs]:
        """Ready-made per-run stimulus maps of one subject (``brain.input: betas``).

        Looks in the derivatives folder ``derivatives`` (``-d betas=PATH``, default
        ``BIDS_DIR/derivatives/betas``) for
        ``sub-<s>[_ses-<x>]_task-<t>[_run-<r>]_space-<space>[_res-<res>]_desc-stimuli_stat-effect_statmap.nii[.gz]``
        with a sidecar naming the stimulus of every volume (see :func:`bids_dnn.io.betas.read_volume_stimuli`) and
        an optional ``..._desc-brain_mask.nii[.gz]`` with the same entities (task, run and
        session may be left out of the mask's name). Entities are read from the file names, so
        the folder needs no pybids indexing; ``--bids-filter-file`` key ``betas`` filters them.

        Returns
        -------
        list of RunInputs
            Sorted by session and run; ``bold`` is the statmap, ``mask`` the brain mask (None
            when there is none), ``volume_stimuli`` the sidecar, ``events`` the run's events
            file when the raw dataset has one (else None).
        """
        root = Path(self.derivatives.get(derivatives) or (Path(self.bids_dir) / "derivatives" / derivatives))
        if not root.is_dir():
            raise InputMissingError(f"derivatives '{derivatives}' not found (looked for {root})",
                                    f"pass -d {derivatives}=PATH to point at the ready-made betas")
        wanted: dict[str, Any] = {"sub": subject, "task": task, "space": space, "desc": "stimuli", "stat": "effect"}
        if resolution is not None:
            wanted["res"] = resolution
        filters = {_SHORT_ENTITIES.get(k, k): v for k, v in self._filter("betas").items()
                   if k not in ("suffix", "extension", "datatype")}
        found = []
        for path in sorted((root / f"sub-{subject}").rglob(f"sub-{subject}_*_statmap.nii*")):
            entities = _entities(path.name)
            if any(not _same(entities.get(k), v) for k, v in {**wanted, **filters}.items()):
                continue
            if sessions and entities.get("ses") not in sessions:
                continue
            found.append((path, entities))
        if not found:
            raise InputMissingError(
                f"no ready-made betas for sub-{subject} task-{task} space-{space}"
                + (f" res-{resolution}" if resolution else "") + f" in {root}",
                "expected sub-<label>[_ses-<label>]_task-<label>[_run-<index>]_space-<label>"
                "_desc-stimuli_stat-effect_statmap.nii.gz (check brain.space / brain.resolution)")
        keys = [(e.get("ses") or "", _run_sort_key(e.get("run"))) for _, e in found]
        if len(set(keys)) < len(keys):
            names = ", ".join(p.name for p, _ in found[:4])
            raise UsageError(f"several betas maps per run for sub-{subject}: {names}",
                             "narrow the choice with brain.resolution or --bids-filter-file (key 'betas')")
        events = {(r.session or "", _run_sort_key(r.run)): r.events for r in self.events(task, [subject], sessions)}
        masks = [(p, _entities(p.name)) for p in sorted((root / f"sub-{subject}").rglob(f"sub-{subject}_*_mask.nii*"))]
        runs = []
        for (path, entities), key in sorted(zip(found, keys), key=lambda item: item[1]):
            run = entities.get("run")
            run = _label(int(run)) if run is not None and run.isdigit() else run  # as events() labels runs
            runs.append(RunInputs(subject=subject, session=entities.get("ses"), task=task, run=run,
                                  events=events.get(key), bold=path, mask=_matching_mask(entities, masks),
                                  volume_stimuli=volume_stimuli_sidecar(path)))
        return runs


#: pybids entity names (as in ``--bids-filter-file``) -> the keys in file names
_SHORT_ENTITIES = {"subject": "sub", "session": "ses", "acquisition": "acq", "reconstruction": "rec",
                   "resolution": "res", "description": "desc", "direction": "dir", "echo": "echo"}


def _entities(name: str) -> dict[str, str]:
    """``sub-01_task-x_run-1_bold.nii.gz`` -> {'sub': '01', 'task': 'x', 'run': '1', 'suffix': 'bold'}."""
    stem = name.split(".", 1)[0]
    parts = stem.split("_")
    out = dict(part.split("-", 1) for part in parts if "-" in part)
    if parts and "-" not in parts[-1]:
        out["suffix"] = parts[-1]
    return out


def _same(value: str | None, wanted: Any) -> bool:
    if isinstance(wanted, (list, tuple)):
        return any(_same(value, w) for w in wanted)
    if value is None or wanted is None:
        return value is None and wanted is None
    if str(value).isdigit() and str(wanted).isdigit():
        return int(value) == int(wanted)
    return str(value) == str(wanted)


def _run_sort_key(run: str | None) -> tuple[int, str]:
    if run is None:
        return (-1, "")
    return (int(run), "") if str(run).isdigit() else (1 << 30, str(run))


def _matching_mask(entities: dict[str, str], masks: list[tuple[Path, dict[str, str]]]) -> Path | None:
    """The most specific ``desc-brain`` mask whose entities agree with a statmap's.

    The mask must have the statmap's space (and res, when the statmap has one); sub, ses, task
    and run must agree when the mask names them.
    """
    best, best_score = None, -1
    for path, ent in masks:
        if ent.get("suffix") != "mask" or ent.get("desc") != "brain":
            continue
        if not all(_same(ent.get(k), entities.get(k)) for k in ("space", "res") if k in entities or k in ent):
            continue
        optional = [k for k in ("ses", "task", "run") if k in ent]
        if not all(_same(ent[k], entities.get(k)) for k in optional):
            continue
        if len(optional) > best_score:
            best, best_score = path, len(optional)
    return best


def _label(value: Any) -> str | None:
    if value is None:
        return None
    return f"{int(value):02d}" if isinstance(value, int) else str(value)


def _run_query(run: str | None) -> Any:
    if run is None:
        return None
    try:
        return int(run)
    except ValueError:
        return run


def load_filter_file(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """Read a ``--bids-filter-file`` (JSON: query type -> entity filters)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise InputMissingError(f"BIDS filter file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"--bids-filter-file {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UsageError("--bids-filter-file must map query types (e.g. 'bold') to entity filters",
                         'e.g. {"bold": {"session": "01"}}')
    return data
