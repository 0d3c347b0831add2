"""Voxelwise encoding of naturalistic BOLD time series (films, stories) on arrays: Lanczos
resampling of stimulus-timeline features to the acquisition times, FIR delays and the SPM HRF
within runs, per-run z-scoring, leave-one-run-out ridge / banded ridge (Huth et al. 2016; the
Gallant lab's voxelwise tutorials) and noise ceilings from repeated runs.

Public names are imported from their modules on first use (PEP 562), like :mod:`bids_dnn.cka`.
"""

from __future__ import annotations

from bids_dnn._lazy import lazy_exports

#: module -> the public names it defines (its ``__all__``)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "resample": ("lanczos_kernel", "lanczos_weights", "lanczos_resample"),
    "delays": ("delay_features", "hrf_kernel", "hrf_convolve"),
    "scaling": ("zscore_by_run",),
    "ceiling": ("REPEAT_CEILINGS", "signal_power", "repeat_noise_ceiling"),
    "fit": ("DEFAULT_BANDED_MEMORY_BYTES", "TimeseriesEncodingResult", "timeseries_encoding", "banded_batches"),
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
