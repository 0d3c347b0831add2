"""Registries of the CKA kernels and HSIC estimators: names and properties, no code.

Every other list of these names derives from here: the computing registries
(:data:`bids_dnn.cka.kernels.GRAM_FUNCTIONS`, :data:`bids_dnn.cka.estimators.GRAM_PREPARATIONS`), the
spec's allowed values (``analyses.cka.kernel`` / ``estimator``, in the order given here) and the
report's wording.

This module imports nothing, so the spec and the command line read it without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CkaKernel",
    "CKA_KERNELS",
    "CKA_KERNEL_NAMES",
    "HsicEstimator",
    "HSIC_ESTIMATORS",
    "HSIC_ESTIMATOR_NAMES",
]


@dataclass(frozen=True)
class CkaKernel:
    """A kernel whose Gram matrix over stimuli CKA compares.

    Attributes
    ----------
    label : str
        Its name in running text (methods sections).
    uses_sigma : bool
        Takes the bandwidth factor ``sigma``.
    """

    label: str
    uses_sigma: bool = False


#: name -> kernel, in the order the spec lists them
CKA_KERNELS: dict[str, CkaKernel] = {
    "linear": CkaKernel("linear kernel (dot products of the stimuli's patterns)"),
    "rbf": CkaKernel("Gaussian (RBF) kernel whose bandwidth is sigma times the median Euclidean distance "
                     "between the stimuli's patterns", uses_sigma=True),
}
CKA_KERNEL_NAMES: tuple[str, ...] = tuple(CKA_KERNELS)
"""The kernel names, in registry order (the spec's allowed values)."""


@dataclass(frozen=True)
class HsicEstimator:
    """An estimator of the Hilbert-Schmidt independence criterion (HSIC) of two Gram matrices.

    Attributes
    ----------
    label : str
        Its name in running text (methods sections).
    unbiased : bool
        Unbiased under independence: CKA of unrelated patterns scatters around 0 (the plain
        estimator is biased upwards when stimuli are few and features many).
    """

    label: str
    unbiased: bool


#: name -> estimator, in the order the spec lists them (the default first)
HSIC_ESTIMATORS: dict[str, HsicEstimator] = {
    "unbiased": HsicEstimator("unbiased HSIC estimator (debiased CKA; U-centred Gram matrices)", unbiased=True),
    "plain": HsicEstimator("plain (biased) HSIC estimator (centred Gram matrices)", unbiased=False),
}
HSIC_ESTIMATOR_NAMES: tuple[str, ...] = tuple(HSIC_ESTIMATORS)
"""The estimator names, in registry order (the spec's allowed values)."""
