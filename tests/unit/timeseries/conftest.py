"""Fixtures of the time-series encoding tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Small matrices: one BLAS thread is faster, and far faster when other processes load the
    cores (threaded OpenBLAS spins). Libraries are imported first so the limit reaches every
    BLAS in the process (numpy's and scipy's)."""
    import himalaya.kernel_ridge  # noqa: F401
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield
