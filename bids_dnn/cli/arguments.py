"""Command-line arguments: the parser class, the argument types and the BIDS App parser.

Shared by the BIDS App (:mod:`bids_dnn.cli.main`) and ``bids_dnn slurm``
(:mod:`bids_dnn.cli.slurm`, which checks the options it passes on with :func:`build_parser`).
Only the standard library and light ``bids_dnn`` modules are imported, so ``--help`` and
``--version`` stay fast.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

from bids_dnn import __version__
from bids_dnn.errors import UsageError
from bids_dnn.limits import MAX_SEED

__all__ = [
    "MEMORY_UNITS",
    "Parser",
    "build_parser",
    "int_at_least",
    "parse_derivative",
    "parse_memory",
    "parse_part",
    "positive_int",
    "seed_value",
]

MEMORY_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2,
                "g": 1024**3, "gb": 1024**3, "t": 1024**4, "tb": 1024**4}


class Parser(argparse.ArgumentParser):
    """argparse that raises :class:`~bids_dnn.errors.UsageError` instead of exiting with code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}", f"see '{self.prog} --help'")


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` only where there is a value to show and the help does not
    already describe the default (no ``(default: None)``, no default said twice)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if (action.help is None or "default" in action.help or default is None or default is False
                or default == [] or default is argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def parse_memory(text: str) -> int:
    """``'8GB'`` -> bytes. A unit is required for values below 1 MiB to catch typos."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match[2].lower() not in MEMORY_UNITS:
        raise argparse.ArgumentTypeError(f"invalid memory size {text!r}; use e.g. 8GB, 512MB")
    value = float(match[1]) * MEMORY_UNITS[match[2].lower()]
    if value < 1024**2:
        raise argparse.ArgumentTypeError(f"memory size {text!r} is below 1 MB; give a unit, e.g. 8GB")
    return int(value)


def parse_derivative(text: str) -> tuple[str, str]:
    """``NAME=PATH`` -> ``(NAME, PATH)``; a bare ``PATH`` is named after its folder."""
    if "=" not in text:
        path = Path(text)
        return path.name, text
    name, _, path = text.partition("=")
    if not name or not path:
        raise argparse.ArgumentTypeError(f"invalid derivatives {text!r}; use NAME=PATH")
    return name, path


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum`` (and <= ``maximum``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    return parse


#: a whole number >= 1
positive_int = int_at_least(1)
#: a seed: unsigned 32-bit, which every NumPy and torch generator takes
seed_value = int_at_least(0, MAX_SEED)


def parse_part(text: str) -> tuple[int, int]:
    """``K/N`` (1 <= K <= N) -> ``(K, N)``: one of N work partitions."""
    k, sep, n = text.partition("/")
    if not sep or not k.strip().isdigit() or not n.strip().isdigit() or not 1 <= int(k) <= int(n):
        raise argparse.ArgumentTypeError(f"invalid part {text!r}; use K/N with 1 <= K <= N, e.g. 2/8")
    return int(k), int(n)


def build_parser() -> argparse.ArgumentParser:
    """The BIDS App parser (testable without running anything)."""
    parser = Parser(
        prog="bids_dnn",
        description="Compare deep neural networks with fMRI data in BIDS: features, RDMs, ROI RSA, "
                    "statistics and reports. Helpers: 'bids_dnn spec schema|check FILE', "
                    "'bids_dnn demo DIR', 'bids_dnn models list|fetch NAME'.",
        formatter_class=_DefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="the raw BIDS dataset (read only)")
    parser.add_argument("output_dir", type=Path, help="the derivatives folder to write")
    parser.add_argument("analysis_level", help="'participant' or 'group'")
    parser.add_argument("--version", action="version", version=f"bids_dnn {__version__}")
    sel = parser.add_argument_group("selection")
    sel.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                     help="participants to process ('01' or 'sub-01'), or @FILE: the labels listed in FILE "
                          "(whitespace-separated; a value without @ is always a label, even where a file of that "
                          "name exists)")
    sel.add_argument("--session-label", "--session_label", nargs="+", metavar="LABEL",
                     help="sessions to use ('1' or 'ses-1'), or @FILE as for --participant-label")
    sel.add_argument("--task", help="task to analyse (default: the only task with events)")
    sel.add_argument("--bids-filter-file", type=Path, metavar="FILE",
                     help="JSON with per-query entity filters, e.g. {\"bold\": {\"session\": \"01\"}}")
    sel.add_argument("--skip-bids-validation", action="store_true")
    sel.add_argument("-d", "--derivatives", nargs="+", type=parse_derivative, default=[], metavar="NAME=PATH",
                     help="derivatives folders (fmriprep, stimuli, betas); default: BIDS_DIR/derivatives/NAME")
    sel.add_argument("--bids-database-dir", type=Path, metavar="DIR", help="pybids index cache folder")
    ana = parser.add_argument_group("analysis")
    ana.add_argument("--spec", type=Path, metavar="FILE", help="analysis spec (YAML or JSON)")
    ana.add_argument("--random-seed", type=seed_value, help="overrides statistics.seed of the spec")
    ana.add_argument("--allow-custom-code", action="store_true",
                     help="run models whose code comes from a file (source: custom / torchscript)")
    ana.add_argument("--reports-only", action="store_true", help="rebuild the HTML reports from existing outputs")
    ana.add_argument("--force", action="store_true",
                     help="recompute every stage (features included); without it a rerun recomputes only "
                          "the stages whose inputs, spec section or outputs changed. An output folder made from "
                          "another input dataset is refused without it; with it, the folder is handed over to "
                          "this dataset (input_dataset.json)")
    ana.add_argument("--searchlight-part", type=parse_part, default=None, metavar="K/N",
                     help="compute only the K-th of N centre ranges of the searchlight (e.g. one per array "
                          "task or GPU); a later run without the option merges the parts")
    res = parser.add_argument_group(
        "resources", "As in fMRIPrep: --nprocs is the CPUs of the whole run, --omp-nthreads the threads of one "
                     "process; with --nprocs N, min(N, participants) participants (N // --omp-nthreads when given) "
                     "run at once in worker processes with N // workers threads each. The effective settings are "
                     "recorded in each provenance.json.")
    res.add_argument("-w", "--work-dir", type=Path, metavar="DIR",
                     help="scratch folder: each run uses its own DIR/bids_dnn~... subfolder (TMPDIR of the libraries, "
                          "pybids database, PCA scratch), removed at the end; DIR/matplotlib keeps the font cache "
                          "(default: a temporary folder, removed at the end)")
    res.add_argument("--nprocs", type=positive_int, default=None, metavar="N",
                     help="CPUs of the whole run; participants are processed in parallel worker processes "
                          "(default: one participant at a time, libraries' default threads)")
    res.add_argument("--omp-nthreads", type=positive_int, default=None, metavar="T",
                     help="threads of one process (torch, BLAS / OpenMP); at most --nprocs "
                          "(default: --nprocs // workers)")
    res.add_argument("--mem", type=parse_memory, default=None, metavar="SIZE",
                     help="working-memory budget, e.g. 8GB, shared by the worker processes: sizes the GLM voxel "
                          "chunks, searchlight chunks, encoding target batches and feature-extraction batches "
                          "(libraries and held data come on top; results do not change)")
    res.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    out = parser.add_argument_group("output")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    out.add_argument("-v", "--verbose", action="count", default=0, help="-v: tracebacks, -vv: debug")
    return parser
