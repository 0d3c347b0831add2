"""Resources of one run: the work folder, processes and threads, and the memory budget.

The options follow fMRIPrep's:

``-w/--work-dir DIR``
    Scratch space. Each run makes its own folder ``DIR/bids_dnn~<host>~<pid>~<random>/``
    (several runs, e.g. the tasks of a SLURM job array, may share ``DIR``; folders of killed
    runs on this host are removed by the next run) holding what libraries write to the
    temporary folder (``TMPDIR``, ``TMP``, ``TEMP`` and :data:`tempfile.tempdir` point to
    its ``tmp/``), the pybids database (``bids_db/``, unless ``--bids-database-dir``) and
    large scratch files such as the full-width rows of a PCA feature reduction; the folder is
    removed when the run ends (also after an error). ``DIR/matplotlib`` keeps matplotlib's
    font cache between runs (unless ``MPLCONFIGDIR`` is set). Without ``-w`` the run folder
    is made in the system's temporary folder and removed at the end. The temporary files of
    the atomic writes of outputs stay next to their targets (a rename must not cross file
    systems), as do searchlight parts (``sub-XX/parts/``), which other jobs merge.
``--nprocs N``
    CPUs of the whole run. Participants are processed at once in
    ``min(N, participants)`` worker processes (``N // --omp-nthreads`` when that is given),
    each a fresh process with ``N // workers`` threads (torch, BLAS / OpenMP). Work shared
    by all participants (stimuli, features, model RDMs) is done first, in the main process,
    with ``--omp-nthreads`` (else ``N``) threads; the workers only read it. Each participant
    writes only under its own ``sub-<label>/`` (its own status file) and its report, so
    workers never write the same file; this is the same sharing as SLURM array tasks on
    one output folder (:mod:`bids_dnn.cli.slurm`). Without ``--nprocs``: one participant at a
    time, in the main process.
``--omp-nthreads T``
    Threads of one process (must not exceed ``--nprocs``). Without ``--nprocs``, the main
    process uses ``T`` threads.
``--mem SIZE``
    Working memory of the chunked computations of one process: the GLM's voxel chunks, the
    searchlight's centre chunks, the encoding models' target batches and the feature
    extraction batches are sized to fit it (each step runs alone, so each may use all of
    it). With several workers each gets ``SIZE / workers``. The libraries (about 1 GB with a
    CUDA build of torch) and the data a step holds (a run's BOLD series and residuals, the
    features of a model) come on top. Results do not depend on it. Without ``--mem`` each
    engine uses its default (GLM 1 GiB, searchlight 2 GiB, encoding 256 MiB, extraction
    ``models[i].batch_size``).

The effective settings are recorded in each ``provenance.json`` (``resources``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bids_dnn.errors import AnalysisError, BidsDnnError, UsageError

if TYPE_CHECKING:
    from bids_dnn.workflows.options import RunOptions

__all__ = [
    "Resources",
    "THREAD_VARIABLES",
    "TEMP_VARIABLES",
    "activate",
    "current_resources",
    "limit_threads",
    "map_participants",
    "plan_workers",
]

#: variables that size the thread pools of OpenMP, MKL, OpenBLAS (read when a library loads)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: variables that name the temporary folder (Python's tempfile, torch, joblib, C libraries)
TEMP_VARIABLES = ("TMPDIR", "TMP", "TEMP")
#: name of a run folder: ``bids_dnn~<host>~<pid>~<random>`` (stale ones of dead processes are removed)
RUN_FOLDER = re.compile(r"^bids_dnn~(?P<host>[^~/]+)~(?P<pid>\d+)~")

R = TypeVar("R")


@dataclass(frozen=True)
class Resources:
    """Effective resources of this process.

    Attributes
    ----------
    work_dir : Path or None
        ``-w`` as given (absolute); None when the run folder is a temporary folder.
    run_dir : Path or None
        This run's scratch folder (removed at the end); None when not activated (library use).
    nprocs : int or None
        ``--nprocs``: CPUs of the whole run.
    omp_nthreads : int or None
        Threads of this process (None: the libraries' defaults): ``--omp-nthreads``, else
        ``--nprocs`` in the main process, else ``nprocs // n_workers`` in a worker.
    omp_nthreads_option : int or None
        ``--omp-nthreads`` as given.
    memory_bytes : int or None
        Working-memory budget of this process (None: each engine's default).
    total_memory_bytes : int or None
        ``--mem`` as given (shared by the workers).
    n_workers : int
        Participants processed at once.
    database_dir : Path or None
        pybids database folder: ``--bids-database-dir``, else ``run_dir / "bids_db"``.
    """

    work_dir: Path | None = None
    run_dir: Path | None = None
    nprocs: int | None = None
    omp_nthreads: int | None = None
    omp_nthreads_option: int | None = None
    memory_bytes: int | None = None
    total_memory_bytes: int | None = None
    n_workers: int = 1
    database_dir: Path | None = None

    @classmethod
    def from_options(cls, options: "RunOptions", run_dir: Path | None = None) -> "Resources":
        """The main process's resources for ``options`` (before the workers are planned)."""
        check_thread_options(options.nprocs, options.omp_nthreads)
        database = options.database_dir
        if database is None and run_dir is not None:
            database = run_dir / "bids_db"
        return cls(work_dir=Path(options.work_dir).absolute() if options.work_dir else None, run_dir=run_dir,
                   nprocs=options.nprocs, omp_nthreads=options.omp_nthreads or options.nprocs,
                   omp_nthreads_option=options.omp_nthreads,
                   memory_bytes=options.mem_bytes, total_memory_bytes=options.mem_bytes,
                   database_dir=Path(database) if database is not None else None)

    @property
    def scratch_dir(self) -> Path | None:
        """Folder for large scratch files (None: not activated)."""
        return self.run_dir

    def for_participants(self, n_participants: int) -> "Resources":
        """The resources of each participant's process: workers, threads and memory share."""
        workers, threads = plan_workers(self.nprocs, self.omp_nthreads_option, n_participants)
        memory = self.total_memory_bytes // workers if self.total_memory_bytes else None
        return dataclasses.replace(self, n_workers=workers, omp_nthreads=threads, memory_bytes=memory)

    def provenance(self) -> dict[str, Any]:
        """The settings recorded in ``provenance.json``."""
        return {"work_dir": str(self.work_dir) if self.work_dir else None,
                "run_dir": str(self.run_dir) if self.run_dir else None,
                "run_dir_removed_at_end": self.run_dir is not None,
                "nprocs": self.nprocs, "n_workers": self.n_workers,
                "omp_nthreads": self.omp_nthreads,
                "torch_threads": sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None,
                "memory_budget_bytes": self.memory_bytes,
                "total_memory_budget_bytes": self.total_memory_bytes,
                "bids_database_dir": str(self.database_dir) if self.database_dir else None,
                "tmpdir": tempfile.gettempdir()}


def check_thread_options(nprocs: int | None, omp_nthreads: int | None) -> None:
    """Refuse ``--omp-nthreads`` above ``--nprocs`` (threads of one process above the total)."""
    if nprocs is not None and omp_nthreads is not None and omp_nthreads > nprocs:
        raise UsageError(f"--omp-nthreads {omp_nthreads} exceeds --nprocs {nprocs}",
                         "--nprocs is the CPUs of the whole run, --omp-nthreads the threads of one process")


def plan_workers(nprocs: int | None, omp_nthreads: int | None, n_participants: int) -> tuple[int, int | None]:
    """Participants processed at once and threads of each process.

    Parameters
    ----------
    nprocs : int or None
        CPUs of the whole run (``--nprocs``); None: one participant at a time.
    omp_nthreads : int or None
        Threads of one process (``--omp-nthreads``).
    n_participants : int

    Returns
    -------
    workers : int
        ``min(nprocs, n_participants)``, or ``min(nprocs // omp_nthreads, n_participants)``;
        at least 1.
    threads : int or None
        ``omp_nthreads`` if given, else ``nprocs // workers`` (None without ``nprocs``).
    """
    if nprocs is None:
        return 1, omp_nthreads
    check_thread_options(nprocs, omp_nthreads)
    per_process = omp_nthreads or 1
    workers = max(1, min(nprocs // per_process, n_participants))
    return workers, omp_nthreads or max(1, nprocs // workers)


# ---------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------


def limit_threads(n_threads: int) -> Callable[[], None]:
    """Use ``n_threads`` threads in this process: BLAS / OpenMP pools (threadpoolctl), torch,
    and the variables read by libraries loaded later and by child processes.

    Returns a function that restores the BLAS / OpenMP pools loaded now (the caller restores
    the variables and torch).
    """
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(n_threads)
    if "torch" in sys.modules:  # torch reads OMP_NUM_THREADS itself when imported later
        sys.modules["torch"].set_num_threads(n_threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - installed with scikit-learn
        return lambda: None
    return threadpool_limits(n_threads).restore_original_limits


# ---------------------------------------------------------------------------------------
# The run folder
# ---------------------------------------------------------------------------------------

_ACTIVE: list[Resources] = []


def current_resources(options: "RunOptions | None" = None) -> Resources:
    """The activated resources, else those given by ``options`` (library use: no run folder)."""
    if _ACTIVE:
        return _ACTIVE[-1]
    return Resources.from_options(options) if options is not None else Resources()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_run_dirs(folder: Path) -> int:
    """Delete run folders under ``folder`` of killed runs on this host; returns how many."""
    host, removed = socket.gethostname(), 0
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return 0
    for entry in entries:
        match = RUN_FOLDER.match(entry.name)
        if match and match["host"] == host and not _alive(int(match["pid"])) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


def _make_run_dir(work_dir: Path | None) -> Path:
    """This run's folder under ``work_dir`` (else the system's temporary folder)."""
    parent = Path(tempfile.gettempdir()) if work_dir is None else work_dir
    prefix = f"bids_dnn~{socket.gethostname().replace('~', '-').replace('/', '-')}~{os.getpid()}~"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_run_dirs(parent)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as exc:
        if work_dir is None:
            raise
        raise UsageError(f"cannot use the work folder {work_dir}: {exc.strerror or exc}",
                         "give a writable folder with -w/--work-dir") from None


@contextmanager
def activate(options: "RunOptions") -> Iterator[Resources]:
    """Make the run folder, point the temporary folder and thread limits at it for the run.

    On exit (also after an error) the environment and :data:`tempfile.tempdir` are restored
    and the run folder is deleted.
    """
    from bids_dnn.io.bids import check_paths

    check_thread_options(options.nprocs, options.omp_nthreads)
    check_paths(options.bids_dir, options.output_dir, options.work_dir)  # never a work folder in the input
    work_dir = Path(options.work_dir).absolute() if options.work_dir else None
    run_dir = _make_run_dir(work_dir)
    saved = {name: os.environ.get(name) for name in (*TEMP_VARIABLES, *THREAD_VARIABLES, "MPLCONFIGDIR")}
    saved_tempdir = tempfile.tempdir
    saved_torch_threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    restore_pools: Callable[[], None] = lambda: None
    try:
        temp = run_dir / "tmp"
        temp.mkdir()
        for name in TEMP_VARIABLES:
            os.environ[name] = str(temp)
        tempfile.tempdir = str(temp)
        if work_dir is not None and not saved["MPLCONFIGDIR"]:
            os.environ["MPLCONFIGDIR"] = str(work_dir / "matplotlib")
        resources = Resources.from_options(options, run_dir)
        if resources.omp_nthreads:
            restore_pools = limit_threads(resources.omp_nthreads)
        _ACTIVE.append(resources)
        try:
            yield resources
        finally:
            _ACTIVE.pop()
    finally:
        restore_pools()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        tempfile.tempdir = saved_tempdir
        if saved_torch_threads is not None:
            sys.modules["torch"].set_num_threads(saved_torch_threads)
        shutil.rmtree(run_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Participants in worker processes
# ---------------------------------------------------------------------------------------


def _init_worker(resources: Resources, verbosity: int) -> None:
    """Start of a worker process: its thread limit, logging, and its resources."""
    if resources.omp_nthreads:
        limit_threads(resources.omp_nthreads)
    from bids_dnn.console import setup_logging

    setup_logging(verbosity, show_progress=False)  # bars of several processes would garble
    _ACTIVE.append(resources)


def map_participants(function: Callable[..., R], participants: Iterable[str], args: tuple[Any, ...],
                     resources: Resources, *, verbosity: int = 0) -> Iterator[tuple[str, R | BidsDnnError]]:
    """Run ``function(participant, *args)`` for each participant; yield results as they finish.

    With ``resources.n_workers`` > 1 the calls run in that many fresh worker processes
    (``spawn``; one participant per process where Python allows it), else one after another
    here. A :class:`BidsDnnError` is yielded in place of the result (the other participants
    go on); any other exception (also an interruption of this process: Ctrl-C, SIGTERM)
    terminates the workers and is raised.

    Parameters
    ----------
    function : callable
        A module-level function (it is pickled by name).
    participants : iterable of str
    args : tuple
        Further arguments, the same for every call (pickled once per call).
    resources : Resources
        The participants' resources (:meth:`Resources.for_participants`); the workers apply
        its thread limit.
    verbosity : int
        Logging verbosity of the workers.
    """
    participants = list(participants)
    if resources.n_workers <= 1 or len(participants) <= 1:
        for participant in participants:
            try:
                yield participant, function(participant, *args)
            except BidsDnnError as exc:
                yield participant, exc
        return
    import multiprocessing

    extra = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
    executor = ProcessPoolExecutor(max_workers=resources.n_workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(resources, verbosity), **extra)
    futures: dict[Future, str] = {}
    try:
        futures = {executor.submit(function, participant, *args): participant for participant in participants}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: participants.index(futures[f])):
                try:
                    yield futures[future], future.result()
                except BidsDnnError as exc:
                    yield futures[future], exc
    except BrokenProcessPool:
        raise AnalysisError("a worker process ended abruptly (killed, or out of memory?)",
                            "rerun with a lower --nprocs or a smaller --mem; finished participants are kept") from None
    except BaseException:  # Ctrl-C, SIGTERM (a time limit), an unexpected error: stop the workers now
        for process in list(getattr(executor, "_processes", {}).values()):
            process.terminate()  # outputs are atomic; a rerun resumes the unfinished stages
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
