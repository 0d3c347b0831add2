"""Where and how the numbers are computed: device, floating-point type, threads, TF32.

One place for the decisions the library and the workflows share, in the manner of himalaya's
``set_backend`` / ``get_backend``. torch is imported only inside the functions that need it, so
importing this module (and the NumPy-only library folders that use it) does not import torch.

Functions
---------
resolve_device
    ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` / ``mps`` -> an available device name.
float_dtype
    Validate a float32 / float64 NumPy dtype (or pick the one of the data).
torch_dtype
    The torch dtype of a float32 / float64 NumPy dtype.
no_tf32
    Context manager: exact float32 CUDA matmuls (TF32 off), flags restored on exit.
torch_threads
    Context manager: torch's intra-op CPU threads for a block, restored on exit.
set_torch_threads
    torch's intra-op CPU threads for the rest of the process.
as_dtype
    ``array.astype(dtype)``, with torch's vectorised float32 -> float16 cast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from bids_dnn.errors import AnalysisError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["resolve_device", "float_dtype", "torch_dtype", "no_tf32", "torch_threads", "set_torch_threads", "as_dtype"]

#: the floating-point types the library computes in
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def resolve_device(requested: str = "auto") -> str:
    """Turn ``auto`` / ``cpu`` / ``cuda`` / ``cuda:1`` / ``mps`` into an available device.

    Parameters
    ----------
    requested : str
        ``auto`` picks CUDA, then MPS, then the CPU.

    Returns
    -------
    str
        A device name torch accepts.

    Raises
    ------
    AnalysisError
        The device does not exist or is not available here.
    """
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise AnalysisError(f"unknown device {requested!r}", hint="use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AnalysisError(f"device {requested!r} requested but CUDA is not available",
                                hint="use --device cpu or --device auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AnalysisError(f"device {requested!r} does not exist "
                                f"({torch.cuda.device_count()} CUDA device(s))")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise AnalysisError("device 'mps' requested but it is not available", hint="use --device cpu")
    return requested


def float_dtype(dtype: Any = None, *, like: np.ndarray | None = None) -> np.dtype:
    """A validated float32 / float64 dtype.

    Parameters
    ----------
    dtype : dtype-like or None
        The requested type; None takes float32 when ``like`` is float32, else float64.
    like : ndarray, optional
        The data whose type decides when ``dtype`` is None.

    Raises
    ------
    ValueError
        ``dtype`` is neither float32 nor float64.
    """
    if dtype is None:
        return np.dtype(np.float32) if like is not None and like.dtype == np.float32 else np.dtype(np.float64)
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def torch_dtype(dtype: Any) -> "torch.dtype":
    """The torch dtype of a float32 / float64 NumPy dtype (ValueError for any other)."""
    import torch

    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[float_dtype(dtype)]


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Disable TF32 in CUDA matmuls and cuDNN for a block (exact float32); restore the flags on exit."""
    import torch

    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def torch_threads(n: int | None, device: Any = "cpu") -> Iterator[None]:
    """Set torch's intra-op CPU threads for a block (process-wide; restored on exit).

    Parameters
    ----------
    n : int or None
        Threads to use; None leaves torch's setting as it is.
    device : str or torch.device
        Only a CPU device is affected (GPU kernels do not use the intra-op pool).
    """
    import torch

    if n is None or torch.device(device).type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def set_torch_threads(n: int) -> None:
    """Use ``n`` intra-op CPU threads in torch from now on (process-wide; see :func:`torch_threads`
    for a block)."""
    import torch

    torch.set_num_threads(int(n))


#: elements per piece of the float16 cast: torch's GRAIN_SIZE, so that each piece runs on one thread
_CAST_PIECE = 1 << 15


def as_dtype(array: np.ndarray, dtype: str | np.dtype) -> np.ndarray:
    """``array.astype(dtype)``; float32 -> float16 through torch when it is installed.

    NumPy's float16 cast is scalar code (~10x slower than torch's vectorised one, which made it
    the largest cost of writing float16 features); both round to nearest even, so the values are
    the same. The copy goes in pieces below torch's parallel grain size: a multi-threaded cast was
    ~4x *slower* than NumPy on busy cores (and competes with the extraction's threads).

    Parameters
    ----------
    array : ndarray
        Any shape.
    dtype : str or dtype
        The target type.

    Returns
    -------
    ndarray
        Same shape; ``array`` itself when it already has that type.
    """
    if array.dtype == np.dtype(dtype):
        return array
    if np.dtype(dtype) == np.float16 and array.dtype == np.float32:
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency of the package
            return array.astype(np.float16)
        flat = np.ascontiguousarray(array).reshape(-1)
        out = np.empty(flat.shape, dtype=np.float16)
        source, target = torch.from_numpy(flat), torch.from_numpy(out)
        for i in range(0, flat.size, _CAST_PIECE):
            target[i:i + _CAST_PIECE].copy_(source[i:i + _CAST_PIECE])
        return out.reshape(array.shape)
    return array.astype(dtype)
