"""What bids_dnn needs to know and set when it runs inside a container image.

- :func:`container_runtime`: which runtime runs the image (Apptainer, Singularity, podman,
  Docker), for the provenance (``GeneratedBy.Container.Type``).
- :func:`host_relative_path`: the path from OUT_DIR to BIDS_DIR as it is on the host, worked
  out from the container's mount table (``/proc/self/mountinfo``), for ``DatasetLinks``:
  inside a container, ``-v /data/bids:/data -v /data/out:/out`` makes the plain relative path
  (``../data``) wrong on the host.
- :func:`ensure_matplotlib_config_dir`: a writable, per-user matplotlib cache, whichever way the
  image was started (``docker run -u``, Apptainer from a def file, ``docker-archive://`` or
  ``docker-daemon://``, with the host's shared ``/tmp``).

Nothing here imports anything heavy.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

#: environment variable set in the image (Dockerfile ENV): its tag, e.g. ``bids_dnn:0.1.0-cuda``
CONTAINER_TAG_ENV = "BIDS_DNN_CONTAINER"
MOUNTINFO = Path("/proc/self/mountinfo")


def container_runtime(environ: Mapping[str, str] | None = None, root: Path = Path("/")) -> str | None:
    """The container runtime this process runs in, or None outside a container.

    Parameters
    ----------
    environ : mapping, optional
        The environment (default: ``os.environ``).
    root : Path
        The file-system root holding the runtimes' marker files (``/run/.containerenv`` of
        podman, ``/.dockerenv`` of Docker); a parameter for tests.

    Returns
    -------
    str or None
        ``"apptainer"`` or ``"singularity"`` (set by the runtime in every container, also with
        ``--cleanenv``), ``"podman"``, ``"docker"``, ``"oci"`` (another runtime running the
        bids_dnn image), or None.
    """
    env = os.environ if environ is None else environ
    if env.get("APPTAINER_CONTAINER") or env.get("APPTAINER_NAME"):
        return "apptainer"
    if env.get("SINGULARITY_CONTAINER") or env.get("SINGULARITY_NAME"):
        return "singularity"
    if env.get("container") == "podman" or (root / "run" / ".containerenv").exists():
        return "podman"
    if (root / ".dockerenv").exists():
        return "docker"
    if env.get(CONTAINER_TAG_ENV):
        return "oci"
    return None


@dataclass(frozen=True)
class Mount:
    """One line of ``/proc/self/mountinfo``: the device, the folder of that file system mounted
    (``root``, relative to the file system's own root) and where it is mounted."""

    device: str
    root: PurePosixPath
    mount_point: PurePosixPath


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo`` (octal)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a ``/proc/<pid>/mountinfo`` text, in file order (later ones stack on earlier ones)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        mounts.append(Mount(fields[2], PurePosixPath(_unescape(fields[3])), PurePosixPath(_unescape(fields[4]))))
    return mounts


def _location_in_file_system(path: PurePosixPath, mounts: list[Mount]) -> tuple[str, PurePosixPath] | None:
    """``(device, path inside that file system)`` of an absolute ``path``, from the mount it is in
    (the deepest mount point above it; the last of those stacked on one point)."""
    best: Mount | None = None
    for mount in mounts:
        if path == mount.mount_point or mount.mount_point in path.parents:
            if best is None or len(mount.mount_point.parts) >= len(best.mount_point.parts):
                best = mount
    if best is None:
        return None
    return best.device, best.root / path.relative_to(best.mount_point)


def host_relative_path(source: Path, target_dir: Path, mountinfo: str | None = None) -> str | None:
    """The path from ``target_dir`` to ``source`` as it is on the host of this container.

    Bind mounts keep the layout of the file system they come from, so when both folders lie on
    one file system (whatever folders of it are mounted where), the relative path between
    their locations inside that file system is the one on the host. Folders on different file
    systems have no such path.

    Parameters
    ----------
    source, target_dir : Path
        Folders as seen inside the container (made absolute, symbolic links resolved).
    mountinfo : str, optional
        The mount table (default: this process's ``/proc/self/mountinfo``).

    Returns
    -------
    str or None
        A relative POSIX path, or None when the host's relation of the two is unknown
        (different file systems, or no mount table).
    """
    if mountinfo is None:
        try:
            mountinfo = MOUNTINFO.read_text()
        except OSError:
            return None
    mounts = parse_mountinfo(mountinfo)
    located = [_location_in_file_system(PurePosixPath(Path(p).resolve()), mounts) for p in (source, target_dir)]
    if located[0] is None or located[1] is None or located[0][0] != located[1][0]:
        return None
    return os.path.relpath(located[0][1], located[1][1])


def _usable_private_dir(path: Path) -> bool:
    """A folder this user owns and may write (created, mode 0700, if missing); never a symbolic link."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError:
        return False
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()
            and os.access(path, os.W_OK | os.X_OK))


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def ensure_matplotlib_config_dir(environ: dict[str, str] | None = None) -> str | None:
    """Point ``MPLCONFIGDIR`` at a writable per-user folder when matplotlib's own choice is not.

    matplotlib uses ``MPLCONFIGDIR``, else ``$XDG_CONFIG_HOME/matplotlib`` or
    ``~/.config/matplotlib`` (and the cache next to it); when that is not a writable folder it
    warns and rebuilds its font cache in a new temporary folder at every start. In a container
    that happens with a read-only home, or with ``/tmp/matplotlib`` made by another user on a
    host's shared ``/tmp`` (Apptainer). Then ``<tmp>/bids_dnn-matplotlib-<uid>`` is used.

    Parameters
    ----------
    environ : dict, optional
        The environment to read and update (default: ``os.environ``).

    Returns
    -------
    str or None
        The folder set, or None when matplotlib's own choice is usable (nothing changed).
    """
    env = os.environ if environ is None else environ
    configured = env.get("MPLCONFIGDIR")
    if configured:
        default = Path(configured)
    else:
        home = env.get("HOME") or os.path.expanduser("~")
        default = Path(env.get("XDG_CONFIG_HOME") or Path(home) / ".config") / "matplotlib"
    if _writable_dir(default):
        return None
    private = Path(tempfile.gettempdir()) / f"bids_dnn-matplotlib-{os.geteuid()}"
    if not _usable_private_dir(private):
        try:
            private = Path(tempfile.mkdtemp(prefix="bids_dnn-matplotlib-"))
        except OSError:
            return None
    env["MPLCONFIGDIR"] = str(private)
    return str(private)
