"""SLURM job arrays for HPC clusters: ``bids_dnn slurm BIDS_DIR OUT_DIR [options] [-- OPTIONS]``.

Writes, into a script folder (default ``OUT_DIR/code/slurm``):

``participants.txt``
    one participant label per line; array task ``i`` processes line ``i`` (1-based).
``participant.sbatch``
    the job array: ``bids_dnn BIDS_DIR OUT_DIR participant --participant-label <line i>``,
    in a plain environment or inside an Apptainer / Singularity image (``apptainer exec``).
    Every task writes its own log (``logs/participant_<array job>_<task>.log``) and a status
    line (``logs/participant-<task>.status``: task, subject, exit code, job, log) and exits
    with bids_dnn's exit code, so SLURM marks a failed task FAILED.
``group.sbatch``
    the group level for the same participants; submitted with
    ``--dependency=afterok:<array job>`` so it starts only when every task succeeded.
``submit.sh``
    ``bash submit.sh [ARRAY]`` submits the array (all tasks, or e.g. ``3`` / ``2,5-7`` to rerun
    failed ones alone) and then the dependent group job, and prints both job ids.

Options after ``--`` are passed to both levels (``--spec``, ``--task``, ``-d NAME=PATH``, ...);
they are checked with the BIDS App parser when the scripts are written, and their paths are
made absolute (and bind-mounted into the container).

Parallel tasks share OUT_DIR safely: the feature file of a model is computed by the first
task under a file lock and reused by the others (they wait for it), and every output is
written to a temporary file and renamed into place. The lock is an ``flock``: the output
folder must be on a file system whose locks work across nodes (local disk, NFSv4, Lustre
mounted with ``-o flock``, GPFS).
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bids_dnn.cli.arguments import Parser, positive_int
from bids_dnn.cli.arguments import build_parser as bids_app_parser
from bids_dnn.errors import BidsDnnError, InputMissingError, NothingSelectedError, UsageError

#: Options of the BIDS App whose value is a path (made absolute; bind mode in a container).
PATH_OPTIONS = {"--spec": "ro", "--bids-filter-file": "ro", "-w": "rw", "--work-dir": "rw",
                "--bids-database-dir": "rw"}
#: Options whose values (nargs="+") are ``NAME=PATH`` or ``PATH``.
DERIVATIVE_OPTIONS = ("-d", "--derivatives")
#: Options the helper sets itself.
REFUSED_OPTIONS = ("--participant-label", "--participant_label")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class SlurmPlan:
    """Everything the scripts are made of (built by :func:`plan_from_args`)."""

    bids_dir: Path
    output_dir: Path
    script_dir: Path
    labels: list[str]
    passthrough: list[str]
    command: list[str]
    container: Path | None = None
    apptainer: str = "apptainer"
    binds: list[str] = field(default_factory=list)
    gpus: int = 0
    job_name: str = "bids_dnn"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    mem: str | None = None
    cpus_per_task: int = 4
    group_time: str | None = None
    group_mem: str | None = None
    max_parallel: int | None = None
    sbatch_options: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)

    @property
    def log_dir(self) -> Path:
        return self.script_dir / "logs"

    @property
    def participants_file(self) -> Path:
        return self.script_dir / "participants.txt"

    @property
    def array_spec(self) -> str:
        spec = f"1-{len(self.labels)}"
        return f"{spec}%{self.max_parallel}" if self.max_parallel else spec


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``bids_dnn slurm`` (its own options; BIDS App options follow ``--``)."""
    parser = Parser(
        prog="bids_dnn slurm",
        usage="bids_dnn slurm BIDS_DIR OUT_DIR [options] [-- BIDS_DNN_OPTIONS ...]",
        description="Write SLURM scripts: a job array running one participant per task (plain "
                    "environment or 'apptainer exec'), and a group job that starts when every task "
                    "succeeded (--dependency=afterok). Options after '--' go to both levels, e.g. "
                    "'-- --spec spec.yaml'. Rerun failed tasks alone with 'bash SCRIPT_DIR/submit.sh 3' "
                    "(or 'sbatch --array=3 SCRIPT_DIR/participant.sbatch').",
    )
    parser.add_argument("bids_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                        help="participants (or @FILE: the labels listed in FILE); default: participants.tsv, "
                             "else the sub-* folders")
    parser.add_argument("--script-dir", type=Path, metavar="DIR",
                        help="where the scripts, participants.txt and logs/ go (default OUT_DIR/code/slurm)")
    parser.add_argument("--submit", action="store_true",
                        help="submit both jobs now (sbatch) and print the job ids")
    cont = parser.add_argument_group("container")
    cont.add_argument("--container", type=Path, metavar="IMAGE.sif",
                      help="run bids_dnn inside this Apptainer/Singularity image (apptainer exec --cleanenv); "
                           "BIDS_DIR is bound read-only, OUT_DIR read-write, at their own paths")
    cont.add_argument("--apptainer", default="apptainer", metavar="CMD", help="'apptainer' or 'singularity'")
    cont.add_argument("--bind", action="append", default=[], metavar="SRC[:DST[:ro]]",
                      help="extra bind mount (repeatable)")
    cont.add_argument("--command", metavar="CMD",
                      help="how to call bids_dnn (default: this interpreter's '-m bids_dnn', or "
                           "'bids_dnn' inside the container)")
    res = parser.add_argument_group("SLURM resources (per job)")
    res.add_argument("--job-name", default="bids_dnn")
    res.add_argument("--partition")
    res.add_argument("--account")
    res.add_argument("--qos")
    res.add_argument("--time", metavar="D-HH:MM:SS", help="time limit of each participant task")
    res.add_argument("--mem", metavar="SIZE", help="memory of each task (sbatch --mem, e.g. 16G)")
    res.add_argument("--cpus-per-task", type=positive_int, default=4,
                     help="CPUs per task; also the thread count (OMP/MKL/OpenBLAS)")
    res.add_argument("--gpus", type=positive_int, default=0, metavar="N",
                     help="GPUs per participant task (--gres=gpu:N, apptainer --nv, bids_dnn --device cuda)")
    res.add_argument("--group-time", metavar="D-HH:MM:SS", help="time limit of the group job (default --time)")
    res.add_argument("--group-mem", metavar="SIZE", help="memory of the group job (default --mem)")
    res.add_argument("--max-parallel", type=positive_int, metavar="N",
                     help="at most N tasks at once (--array=1-K%%N)")
    res.add_argument("--sbatch-option", action="append", default=[], metavar="OPTION",
                     help="extra '#SBATCH OPTION' line for both jobs (repeatable), e.g. "
                          "--sbatch-option=--constraint=v100")
    res.add_argument("--setup", action="append", default=[], metavar="LINE",
                     help="shell line run before bids_dnn in both jobs (repeatable), e.g. 'module load apptainer'")
    return parser


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``[own options] -- [bids_dnn options]`` -> (own, passthrough)."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def main(argv: Sequence[str]) -> int:
    """Entry point of ``bids_dnn slurm``; returns the exit code."""
    from bids_dnn.console import setup_logging

    own, passthrough = split_passthrough(argv)
    args = build_parser().parse_args(own)
    setup_logging(0, show_progress=False)
    plan = plan_from_args(args, passthrough)
    written = write_scripts(plan)
    out = sys.stdout
    out.write(f"{len(plan.labels)} participant(s) -> {plan.participants_file} (array task i = line i)\n")
    for path in written:
        out.write(f"wrote {path}\n")
    out.write(f"submit:            bash {shlex.quote(str(plan.script_dir / 'submit.sh'))}\n"
              f"rerun task(s) i:   bash {shlex.quote(str(plan.script_dir / 'submit.sh'))} i   "
              f"(or: sbatch --array=i {shlex.quote(str(plan.script_dir / 'participant.sbatch'))})\n"
              f"task logs:         {plan.log_dir}/participant_<array job>_<task>.log, "
              f"exit codes in participant-<task>.status\n")
    if any(tok.split("=", 1)[0] == "--bids-database-dir" for tok in plan.passthrough):
        out.write("note: all tasks share --bids-database-dir; create the index once before submitting "
                  "(e.g. run one participant), concurrent first-time indexing is not safe\n")
    if args.submit:
        out.write(submit(plan))
    out.flush()
    return 0


# ---------------------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------------------


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def dataset_participants(bids_dir: Path) -> list[str]:
    """Labels from ``participants.tsv`` (those with a ``sub-*`` folder), else the folders."""
    from bids_dnn.io.bids import normalize_label
    from bids_dnn.console import logger

    folders = {p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir()}
    table = bids_dir / "participants.tsv"
    if table.is_file():
        with open(table, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if rows and "participant_id" in rows[0]:
            labels = list(dict.fromkeys(normalize_label(r["participant_id"]) for r in rows if r["participant_id"]))
            absent = [lab for lab in labels if lab not in folders]
            if absent:
                logger.warning("participants.tsv lists %s without a folder; skipped",
                               ", ".join(f"sub-{a}" for a in absent))
            return [lab for lab in labels if lab in folders]
    return sorted(folders)


def select_labels(bids_dir: Path, requested: list[str] | None) -> list[str]:
    """The participants of the array, in order; refuses unknown labels."""
    from bids_dnn.io.bids import expand_labels

    labels = expand_labels(requested, "sub")
    available = sorted(p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir())
    if labels is None:
        labels = dataset_participants(bids_dir)
        if not labels:
            raise NothingSelectedError(f"no participants (sub-* folders) in {bids_dir}")
        return labels
    unknown = [lab for lab in labels if lab not in available]
    if unknown:
        raise NothingSelectedError(f"no folder for {', '.join('sub-' + u for u in unknown)} in {bids_dir}",
                                   f"available: {', '.join('sub-' + a for a in available) or 'none'}")
    return labels


def absolutise_passthrough(tokens: Sequence[str]) -> tuple[list[str], list[tuple[Path, str]]]:
    """Make path values of BIDS App options absolute; returns (tokens, [(path, 'ro'|'rw')])."""
    out = list(tokens)
    paths: list[tuple[Path, str]] = []

    def derivative(value: str) -> str:
        name, eq, path = value.partition("=")
        target = _absolute(path if eq else value)
        paths.append((target, "ro"))
        return f"{name}={target}" if eq else str(target)

    i = 0
    while i < len(out):
        name, eq, value = out[i].partition("=") if out[i].startswith("--") else (out[i], "", "")
        if name in REFUSED_OPTIONS:
            raise UsageError(f"{name} goes before '--' (the helper runs one participant per task)",
                             "bids_dnn slurm BIDS_DIR OUT_DIR --participant-label 01 02 -- --spec spec.yaml")
        if name in PATH_OPTIONS:
            if eq:
                target = _absolute(value)
                out[i] = f"{name}={target}"
                paths.append((target, PATH_OPTIONS[name]))
            elif i + 1 < len(out):
                target = _absolute(out[i + 1])
                out[i + 1] = str(target)
                paths.append((target, PATH_OPTIONS[name]))
                i += 1
        elif name in DERIVATIVE_OPTIONS:
            if eq:
                out[i] = f"{name}={derivative(value)}"
            else:
                while i + 1 < len(out) and not out[i + 1].startswith("-"):
                    out[i + 1] = derivative(out[i + 1])
                    i += 1
        i += 1
    return out, paths


def _inside(path: Path, folders: Sequence[Path]) -> bool:
    return any(path == f or f in path.parents for f in folders)


def plan_from_args(args, passthrough: Sequence[str]) -> SlurmPlan:
    """Validate everything that can be checked on the login node; build the plan."""
    from bids_dnn.io.bids import check_dataset, check_paths

    bids_dir, output_dir = _absolute(args.bids_dir), _absolute(args.output_dir)
    passthrough, paths = absolutise_passthrough(passthrough)
    # the BIDS App parser checks the options now, not in every array task
    parsed = bids_app_parser().parse_args([str(bids_dir), str(output_dir), "participant", *passthrough])
    if "--skip-bids-validation" not in passthrough:
        check_dataset(bids_dir)
    elif not bids_dir.is_dir():
        raise InputMissingError(f"BIDS folder not found: {bids_dir}")
    check_paths(bids_dir, output_dir, parsed.work_dir)
    script_dir = _absolute(args.script_dir) if args.script_dir else output_dir / "code" / "slurm"
    check_paths(bids_dir, script_dir, None)
    if any(c.isspace() for c in str(script_dir)):
        raise UsageError(f"the script folder {script_dir} contains white space (#SBATCH --output cannot hold it)",
                         "choose another --script-dir")
    labels = select_labels(bids_dir, args.participant_label)

    container = None
    binds: list[str] = []
    if args.container is not None:
        container = _absolute(args.container)
        if not container.exists():
            raise InputMissingError(f"container image not found: {container}",
                                    "build it: apptainer build bids_dnn.sif singularity/bids_dnn.def")
        bound = [bids_dir, output_dir]
        binds = [f"{bids_dir}:{bids_dir}:ro", f"{output_dir}:{output_dir}"]
        for path, mode in [(script_dir, "ro"), *paths]:
            if _inside(path, bound):
                continue
            if mode == "rw":
                path.mkdir(parents=True, exist_ok=True)  # a bind source must exist
            binds.append(f"{path}:{path}:ro" if mode == "ro" else f"{path}:{path}")
            bound.append(path)
        binds += list(args.bind)
    if args.command:
        command = shlex.split(args.command)
    elif container is not None:
        command = ["bids_dnn"]
    else:
        command = [sys.executable, "-m", "bids_dnn"]
    return SlurmPlan(
        bids_dir=bids_dir, output_dir=output_dir, script_dir=script_dir, labels=labels,
        passthrough=passthrough, command=command, container=container, apptainer=args.apptainer,
        binds=binds, gpus=args.gpus, job_name=args.job_name, partition=args.partition, account=args.account,
        qos=args.qos, time=args.time, mem=args.mem, cpus_per_task=args.cpus_per_task, group_time=args.group_time,
        group_mem=args.group_mem, max_parallel=args.max_parallel, sbatch_options=list(args.sbatch_option),
        setup=list(args.setup))


# ---------------------------------------------------------------------------------------
# Scripts
# ---------------------------------------------------------------------------------------


def _q(value: str | Path) -> str:
    return shlex.quote(str(value))


def _sbatch_lines(plan: SlurmPlan, *, name: str, output: str, time: str | None, mem: str | None,
                  gpus: int) -> list[str]:
    lines = [f"#SBATCH --job-name={plan.job_name}-{name}", f"#SBATCH --output={output}",
             f"#SBATCH --cpus-per-task={plan.cpus_per_task}", "#SBATCH --ntasks=1"]
    for option, value in (("partition", plan.partition), ("account", plan.account), ("qos", plan.qos),
                          ("time", time), ("mem", mem)):
        if value:
            lines.append(f"#SBATCH --{option}={value}")
    if gpus:
        lines.append(f"#SBATCH --gres=gpu:{gpus}")
    lines += [f"#SBATCH {option}" for option in plan.sbatch_options]
    return lines


def _bids_dnn_call(plan: SlurmPlan, *, gpu: bool) -> str:
    """The command that runs bids_dnn (without the level's arguments)."""
    command = " ".join(_q(c) for c in plan.command)
    if plan.container is None:
        return command
    env = ",".join(f"{v}=$threads" for v in THREAD_VARIABLES)
    parts = [_q(plan.apptainer), "exec", "--cleanenv"]
    if gpu:
        parts.append("--nv")
    parts += ["--env", f'"{env}"']
    for bind in plan.binds:
        parts += ["-B", _q(bind)]
    return " ".join(parts + [_q(plan.container), command])


def _common_prelude(plan: SlurmPlan) -> list[str]:
    threads = "\n".join(f"export {v}=\"$threads\"" for v in THREAD_VARIABLES)
    return ["set -uo pipefail", f"script_dir={_q(plan.script_dir)}", 'threads="${SLURM_CPUS_PER_TASK:-1}"',
            threads, *plan.setup]


def participant_script(plan: SlurmPlan) -> str:
    has_device = any(tok.split("=", 1)[0] == "--device" for tok in plan.passthrough)
    gpu_args = ["--device", "cuda"] if plan.gpus and not has_device else []
    args = " ".join(_q(a) for a in ["--no-progress", *gpu_args, *plan.passthrough])
    lines = [
        "#!/bin/bash",
        "# bids_dnn participant level, one participant per array task (task i = line i of participants.txt).",
        f"# Written by 'bids_dnn slurm'. Submit with: bash {_q(plan.script_dir / 'submit.sh')}",
        f"# Rerun task i alone: bash {_q(plan.script_dir / 'submit.sh')} i   (or: sbatch --array=i {_q(plan.script_dir / 'participant.sbatch')})",
        f"#SBATCH --array={plan.array_spec}",
        *_sbatch_lines(plan, name="participant", output=f"{plan.log_dir}/participant_%A_%a.log", time=plan.time,
                       mem=plan.mem, gpus=plan.gpus),
        *_common_prelude(plan),
        'task="${SLURM_ARRAY_TASK_ID:?submit this script as a job array: sbatch --array=1-N}"',
        'label="$(sed -n "${task}p" "$script_dir/participants.txt" | tr -d "[:space:]")"',
        'log="$script_dir/logs/participant_${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}_${task}.log"',
        'if [ -z "$label" ]; then',
        '    echo "no participant on line $task of $script_dir/participants.txt" >&2',
        '    printf "%s\\t%s\\t%s\\t%s\\t%s\\n" "$task" "-" 64 "${SLURM_JOB_ID:-}" "$log" > "$script_dir/logs/participant-${task}.status"',
        "    exit 64",
        "fi",
        'echo "bids_dnn participant sub-$label: array task $task of job ${SLURM_ARRAY_JOB_ID:-?} on $(hostname), '
        '$threads thread(s), started $(date -Iseconds)"',
        f"{_bids_dnn_call(plan, gpu=bool(plan.gpus))} {_q(plan.bids_dir)} {_q(plan.output_dir)} participant "
        f'--participant-label "$label" {args}',
        "rc=$?",
        'printf "%s\\t%s\\t%s\\t%s\\t%s\\n" "$task" "sub-$label" "$rc" "${SLURM_JOB_ID:-}" "$log" '
        '> "$script_dir/logs/participant-${task}.status"',
        'echo "bids_dnn participant sub-$label: exit code $rc, finished $(date -Iseconds)"',
        'if [ "$rc" -ne 0 ]; then',
        '    echo "task $task (sub-$label) failed with exit code $rc; log: $log" >&2',
        '    echo "rerun it alone: bash $script_dir/submit.sh $task" >&2',
        "fi",
        'exit "$rc"',
    ]
    return "\n".join(lines) + "\n"


def group_script(plan: SlurmPlan) -> str:
    args = " ".join(_q(a) for a in ["--no-progress", *plan.passthrough])
    lines = [
        "#!/bin/bash",
        "# bids_dnn group level; submitted by submit.sh with --dependency=afterok:<participant array job>.",
        *_sbatch_lines(plan, name="group", output=f"{plan.log_dir}/group_%j.log",
                       time=plan.group_time or plan.time, mem=plan.group_mem or plan.mem, gpus=0),
        "#SBATCH --kill-on-invalid-dep=yes",
        *_common_prelude(plan),
        'echo "bids_dnn group: job ${SLURM_JOB_ID:-?} on $(hostname), started $(date -Iseconds)"',
        f"{_bids_dnn_call(plan, gpu=False)} {_q(plan.bids_dir)} {_q(plan.output_dir)} group "
        f'--participant-label "@$script_dir/participants.txt" {args}',
        "rc=$?",
        'echo "bids_dnn group: exit code $rc, finished $(date -Iseconds)"',
        'exit "$rc"',
    ]
    return "\n".join(lines) + "\n"


def submit_script(plan: SlurmPlan) -> str:
    lines = [
        "#!/bin/bash",
        "# Submit the participant job array, then the group job that runs when every task succeeded.",
        f"# Usage: bash submit.sh [ARRAY]   ARRAY: tasks to (re)submit, default {plan.array_spec} (all);",
        "#        e.g. 'bash submit.sh 3' reruns task 3 alone (line 3 of participants.txt), then the group level.",
        "set -euo pipefail",
        f"script_dir={_q(plan.script_dir)}",
        f'array="${{1:-{plan.array_spec}}}"',
        'array_job="$(sbatch --parsable --array="$array" "$script_dir/participant.sbatch")"',
        'array_job="${array_job%%;*}"',
        'group_job="$(sbatch --parsable --dependency="afterok:$array_job" --kill-on-invalid-dep=yes '
        '"$script_dir/group.sbatch")"',
        'group_job="${group_job%%;*}"',
        'echo "participant job array: $array_job (tasks $array; logs: $script_dir/logs/participant_${array_job}_<task>.log)"',
        'echo "group job: $group_job (starts when every task of $array_job succeeded; '
        'log: $script_dir/logs/group_${group_job}.log)"',
    ]
    return "\n".join(lines) + "\n"


def write_scripts(plan: SlurmPlan) -> list[Path]:
    """Write participants.txt, the two batch scripts and submit.sh; returns the script paths."""
    from bids_dnn.io import derivatives as drv

    plan.log_dir.mkdir(parents=True, exist_ok=True)
    if plan.container is not None:
        plan.output_dir.mkdir(parents=True, exist_ok=True)  # a bind source must exist
    drv.write_text(plan.participants_file, "".join(f"{label}\n" for label in plan.labels))
    written = []
    for name, text in (("participant.sbatch", participant_script(plan)), ("group.sbatch", group_script(plan)),
                       ("submit.sh", submit_script(plan))):
        path = plan.script_dir / name
        drv.write_text(path, text)
        path.chmod(0o755)
        written.append(path)
    return written


def submit(plan: SlurmPlan) -> str:
    """Run submit.sh (sbatch for both jobs); returns its report (the job ids)."""
    if shutil.which("sbatch") is None:
        raise BidsDnnError("sbatch not found: this is not a SLURM submit host",
                           f"submit later from a login node: bash {plan.script_dir / 'submit.sh'}")
    result = subprocess.run(["bash", str(plan.script_dir / "submit.sh")], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise BidsDnnError(f"sbatch failed (exit code {result.returncode}): {result.stderr.strip()}",
                           f"fix the cause, then: bash {plan.script_dir / 'submit.sh'}")
    return result.stdout
