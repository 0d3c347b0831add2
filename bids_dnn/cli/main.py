"""Command line: the BIDS App contract plus user sub-commands.

``bids_dnn BIDS_DIR OUT_DIR {participant,group} [options]`` runs an analysis level;
``bids_dnn spec schema|check FILE``, ``bids_dnn demo DIR`` and ``bids_dnn models list|fetch``
are helpers. ``main(argv) -> int`` is testable without a subprocess; nothing heavy (torch,
nilearn, pybids) is imported until a command needs it, so ``--help`` and ``--version`` are fast.

Exit codes (BIDS Apps): 0 ok, 64 usage, 65 invalid spec, 16 BIDS validation failed,
17 unknown level, 18 filters selected nothing, 66 required input missing, 73 output folder cannot
be created or written, 130 interrupted (SIGINT), 143 terminated (SIGTERM), 1 anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from bids_dnn.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OTHER,
    EXIT_TERMINATED,
    AnalysisError,
    BidsDnnError,
    Terminated,
)
from bids_dnn.cli.arguments import Parser, build_parser, positive_int, seed_value
from bids_dnn.workflows.options import RunOptions

LEVELS = ("participant", "group")
SUBCOMMANDS = ("spec", "demo", "models", "slurm")


def options_from_args(args: argparse.Namespace, argv: Sequence[str]) -> RunOptions:
    """The :class:`~bids_dnn.workflows.options.RunOptions` of parsed BIDS App arguments."""
    from bids_dnn.io.bids import expand_labels

    return RunOptions(
        bids_dir=args.bids_dir, output_dir=args.output_dir, level=args.analysis_level,
        participant_labels=expand_labels(args.participant_label, "sub"),
        session_labels=expand_labels(args.session_label, "ses"), task=args.task, spec_path=args.spec,
        derivatives={name: Path(path) for name, path in args.derivatives},
        bids_filter_file=args.bids_filter_file, skip_bids_validation=args.skip_bids_validation,
        database_dir=args.bids_database_dir, work_dir=args.work_dir, nprocs=args.nprocs,
        omp_nthreads=args.omp_nthreads, mem_bytes=args.mem, device=args.device, random_seed=args.random_seed,
        reports_only=args.reports_only, force=args.force, show_progress=not args.no_progress,
        verbosity=args.verbose, searchlight_part=args.searchlight_part, argv=list(argv),
        allow_custom_code=args.allow_custom_code,
    )


# ---------------------------------------------------------------------------------------
# Sub-commands
# ---------------------------------------------------------------------------------------


def _cmd_spec(argv: Sequence[str]) -> int:
    parser = Parser(prog="bids_dnn spec", description="Analysis spec helpers.")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("schema", help="print the JSON schema of the spec")
    check = sub.add_parser("check", help="validate a spec file and print the resolved spec")
    check.add_argument("file", type=Path)
    args = parser.parse_args(list(argv))
    from bids_dnn import spec as spec_module

    if args.action == "schema":
        sys.stdout.write(json.dumps(spec_module.spec_json_schema(), indent=2) + "\n")
        return EXIT_OK
    resolved = spec_module.load_spec(args.file)
    import yaml

    sys.stdout.write(f"# {args.file}: valid (spec hash {spec_module.spec_hash(resolved)})\n")
    sys.stdout.write(yaml.safe_dump(spec_module.spec_to_dict(resolved), sort_keys=False))
    return EXIT_OK


def _cmd_demo(argv: Sequence[str]) -> int:
    from bids_dnn.workflows.demo import DEMO_SUBJECTS
    from bids_dnn.workflows.demo_kinds import DEMO_KINDS

    parser = Parser(prog="bids_dnn demo",
                     description="Write the synthetic demo BIDS dataset with planted ground truth.")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--subjects", type=positive_int, default=None,
                        help=f"participants (default: the kind's own; {DEMO_SUBJECTS} for images, enough for a "
                             "sign-flip group map to reach p_FWE < 0.05)")
    parser.add_argument("--runs", type=positive_int, default=None, help="runs per participant (default: the kind's "
                        "own)")
    parser.add_argument("--seed", type=seed_value, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite an existing demo dataset")
    parser.add_argument("--kind", choices=list(DEMO_KINDS), default="images",
                        help="images: drawn images and a random-init AlexNet, fMRI (default); text / audio: "
                             "sentences or sounds and a tiny BERT- / wav2vec 2.0-style model (need the hf extra); "
                             "movie / story: naturalistic fMRI; eeg: BIDS EEG (BrainVision) of the drawn images, "
                             "planted layers at 100 and 200 ms")
    args = parser.parse_args(list(argv))
    from bids_dnn.console import logger, setup_logging

    setup_logging(0, show_progress=False)
    sizes = {name: value for name, value in (("n_subjects", args.subjects), ("n_runs", args.runs)) if value}
    path = DEMO_KINDS[args.kind](args.directory, seed=args.seed, overwrite=args.force, **sizes)
    logger.info("demo dataset written to %s (spec: %s)", path, path / "code" / "spec.yaml")
    return EXIT_OK


def _cmd_models(argv: Sequence[str]) -> int:
    from bids_dnn.dnn import models

    parser = Parser(prog="bids_dnn models", description="List models and pre-fetch weights.")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="models and whether their default weights are cached")
    fetch = sub.add_parser("fetch", help="download weights into TORCH_HOME, or Hugging Face models into the "
                                          "Hugging Face cache (HF_HOME) (for container images)")
    fetch.add_argument("names", nargs="+")
    fetch.add_argument("--weights", default="DEFAULT",
                       help="torchvision: DEFAULT or a weights name; huggingface: DEFAULT or a hub revision")
    fetch.add_argument("--source", default="torchvision", choices=list(models.WEIGHT_FETCHERS),
                       help="where the names come from (default torchvision; huggingface: hub ids)")
    args = parser.parse_args(list(argv))
    if args.action == "list":
        for row in models.model_catalog():
            sys.stdout.write(f"{row['name']}\t{row['default_weights']}\t{'cached' if row['cached'] else 'not cached'}\n")
        return EXIT_OK
    for path in models.fetch_weights(args.names, weights=args.weights, source=args.source):
        sys.stdout.write(f"{path}\n")
    return EXIT_OK


def _cmd_slurm(argv: Sequence[str]) -> int:
    """``bids_dnn slurm``: SLURM job-array scripts (one participant per task) + dependent group job."""
    from bids_dnn.cli.slurm import main as slurm_main

    return slurm_main(argv)


SUBCOMMAND_HANDLERS = {"spec": _cmd_spec, "demo": _cmd_demo, "models": _cmd_models, "slurm": _cmd_slurm}


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (never raises for user errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbosity = sum(a.count("v") for a in argv if re.fullmatch(r"-v+", a)) + argv.count("--verbose")
    output_dir: Path | None = None  # known once the arguments are parsed (for the clean-up after a signal)
    try:
        if argv and argv[0] in SUBCOMMAND_HANDLERS:
            return SUBCOMMAND_HANDLERS[argv[0]](argv[1:])
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help / --version
            return int(exc.code or 0)
        if args.analysis_level not in LEVELS:
            from bids_dnn.errors import UnknownLevelError

            raise UnknownLevelError(f"unknown analysis level {args.analysis_level!r}",
                                    "use 'participant' or 'group'")
        options = options_from_args(args, argv)
        output_dir = Path(options.output_dir)
        from bids_dnn.console import setup_logging

        setup_logging(options.verbosity, options.show_progress)
        from bids_dnn.console import run_log_scope
        from bids_dnn.workflows.resources import activate

        try:
            with activate(options), run_log_scope(), _sigterm_unwinds():  # -w, --nprocs, --mem (run folder removed after); log file
                if options.level == "participant":
                    from bids_dnn.workflows.participant import run_participant_level

                    run_participant_level(options)
                else:
                    from bids_dnn.workflows.group import run_group_level

                    run_group_level(options)
        except SystemExit as exc:  # never success: code the analysis ran (a custom model) ended the process
            raise AnalysisError(f"code run by the analysis called sys.exit({exc.code!r}) before the analysis "
                                "finished", "a custom model's code must not exit the process") from None
        return EXIT_OK
    except SystemExit as exc:  # argparse --help inside sub-commands
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_OK
    except BrokenPipeError:  # the reader went away (``bids_dnn ... | head``)
        return _closed_pipe_exit()
    except BidsDnnError as exc:
        _report_error(exc, verbosity)
        return exc.exit_code
    except KeyboardInterrupt:
        _remove_own_temporaries(output_dir)
        _report_error(BidsDnnError("interrupted (Ctrl-C / SIGINT); finished outputs are kept",
                                   "rerun the same command: it resumes with the unfinished stages"), verbosity)
        return EXIT_INTERRUPTED
    except Terminated:
        _remove_own_temporaries(output_dir)
        _report_error(BidsDnnError("terminated (SIGTERM, e.g. a job's time limit or 'docker stop'); finished "
                                   "outputs are kept",
                                   "rerun the same command: it resumes with the unfinished stages"), verbosity)
        return EXIT_TERMINATED
    except OSError as exc:
        from bids_dnn.errors import output_space_error

        error = output_space_error(exc)
        _report_error(error or exc, verbosity)
        return error.exit_code if error else EXIT_OTHER
    except Exception as exc:  # noqa: BLE001 - last resort: one line, traceback with -v
        _report_error(exc, verbosity)
        return EXIT_OTHER


def _remove_own_temporaries(output_dir: Path | None) -> None:
    """After SIGINT / SIGTERM: remove this process's (and dead workers') temp files in OUT_DIR
    (nothing when the signal came before the arguments were parsed)."""
    if output_dir is None:
        return
    from bids_dnn.io.derivatives import remove_stale_temporaries

    with contextlib.suppress(OSError):
        remove_stale_temporaries(output_dir, own=True)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While the analysis runs, SIGTERM raises :class:`Terminated` in the main thread (the
    previous handler is restored after; only the main thread can install one)."""
    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report_error(exc: BaseException, verbosity: int) -> None:
    """The one message of a run that failed (with -v: the traceback and the error's details)."""
    from bids_dnn.console import print_error

    try:
        if isinstance(exc, BidsDnnError):
            print_error(exc.message, exc.hint, exc.details if verbosity > 0 else (), show_traceback=verbosity > 0)
        else:
            print_error(f"unexpected {exc.__class__.__name__}: {exc}",
                        None if verbosity > 0 else "run again with -v for the traceback",
                        show_traceback=verbosity > 0)
    except BrokenPipeError:
        _closed_pipe_exit()


#: exit status of a program stopped because its reader closed the pipe (128 + SIGPIPE)
EXIT_CLOSED_PIPE = 141


def _closed_pipe_exit() -> int:
    """Stop quietly after the reader of stdout or stderr went away, as SIGPIPE stops other
    programs: no message, exit status 141, and no second ``BrokenPipeError`` when Python
    flushes the streams at exit."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            try:
                os.dup2(devnull, stream.fileno())
            except (AttributeError, OSError, ValueError):  # a stream without a file (tests)
                continue
    finally:
        os.close(devnull)
    return EXIT_CLOSED_PIPE


def run() -> None:
    """Console-script entry point (also the container images'): a usable matplotlib cache first."""
    from bids_dnn.io.container import ensure_matplotlib_config_dir

    ensure_matplotlib_config_dir()
    code = main()
    try:
        sys.stdout.flush()  # output still buffered meets a closed pipe here, not at interpreter exit
    except BrokenPipeError:
        code = _closed_pipe_exit()
    sys.exit(code)
