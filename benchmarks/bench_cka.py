"""B14: CKA of many ROIs x many layers with stimulus-label permutations, against NumPy loops.

Full size: 1,000 stimuli, 10 layers x 50,000 units, 20 ROIs x 500 voxels, linear kernel, unbiased
(debiased) estimator, 1,000 permutations (the same permutations for every arm). Three parts:

Grams   each set's Gram matrix (float64) and its U-centred form: ``bids_dnn.cka.gram_stack``
        (torch) vs NumPy ``X @ X.T`` and Kornblith et al.'s ``center_gram``; same BLAS work.
CKA + permutations, from the prepared Grams:
        ours  ``bids_dnn.cka.permutation_null`` (blocks of permutations: one gather of the
              layers' permuted upper triangles, one matrix product against all ROIs);
        loop  the direct NumPy loop: for every ROI, layer and permutation
              ``sum(A * B[ix_(p, p)]) / (|A| |B|)`` (the reference of the target);
        loop/layer  a smarter NumPy loop: each layer permuted once per permutation, then one
              matrix product against all ROIs.
        At full size the loops would take tens of minutes: they are timed on the first
        ``--loop-permutations`` permutations and extrapolated linearly (they do the same work
        per permutation); the output says so.
Total   Grams + CKA and permutations, ours vs the direct loop.

Agreement: observed CKA and the null of the timed permutations, ours vs both loops (<= 1e-10).
Timings are single runs at full size (minutes each; the loops are extrapolated anyway) and
medians of 3 interleaved runs at smoke size.
Usage::

    python benchmarks/bench_cka.py          # full size (a few minutes on 2 cores, ~3 GB of memory)
    python benchmarks/bench_cka.py --smoke  # tiny sizes, full loops, agreement only

Exit status 1 when a result disagrees (> 1e-10) or, in the full run, the total is below 10x.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import TOL, finish, report, timed_pair  # noqa: E402

from bids_dnn.cka import GramStack, gram_stack, permutation_null  # noqa: E402

TARGET = 10.0


def center_gram_unbiased(gram: np.ndarray) -> np.ndarray:
    """Kornblith et al. (2019)'s ``center_gram(gram, unbiased=True)`` (NumPy)."""
    gram = gram.copy()
    n = gram.shape[0]
    np.fill_diagonal(gram, 0)
    means = np.sum(gram, 0, dtype=np.float64) / (n - 2)
    means -= np.sum(means) / (2 * (n - 1))
    gram -= means[:, None]
    gram -= means[None, :]
    np.fill_diagonal(gram, 0)
    return gram


def make_sets(rng: np.random.Generator, n_stimuli: int, widths: list[int], latent: np.ndarray) -> list[np.ndarray]:
    """Feature sets (float32, as stored features are) sharing a low-dimensional latent signal."""
    out = []
    for width in widths:
        values = latent @ rng.standard_normal((latent.shape[1], width), dtype=np.float32)
        values += 2.0 * rng.standard_normal((n_stimuli, width), dtype=np.float32)
        out.append(values)
    return out


def numpy_grams(sets: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """U-centred float64 Grams and their Frobenius norms."""
    prepared = []
    for features in sets:
        x = features.astype(np.float64)
        prepared.append(center_gram_unbiased(x @ x.T))
    return prepared, np.array([np.linalg.norm(g) for g in prepared])


def loop_per_pair(rois, roi_norms, layers, layer_norms, perms) -> tuple[np.ndarray, np.ndarray]:
    """The direct loop: observed and null, one ROI x layer x permutation at a time."""
    observed = np.empty((len(rois), len(layers)))
    null = np.empty((len(perms), len(rois), len(layers)))
    for i, a in enumerate(rois):
        for j, b in enumerate(layers):
            denominator = roi_norms[i] * layer_norms[j]
            observed[i, j] = np.sum(a * b) / denominator
            for p, perm in enumerate(perms):
                null[p, i, j] = np.sum(a * b[np.ix_(perm, perm)]) / denominator
    return observed, null


def loop_per_layer(rois, roi_norms, layers, layer_norms, perms) -> tuple[np.ndarray, np.ndarray]:
    """Each layer permuted once per permutation, then one product against all ROIs."""
    flat_rois = np.stack([a.ravel() for a in rois])
    denominator = roi_norms[:, None] * layer_norms[None, :]
    observed = (flat_rois @ np.stack([b.ravel() for b in layers]).T) / denominator
    null = np.empty((len(perms), len(rois), len(layers)))
    for p, perm in enumerate(perms):
        for j, b in enumerate(layers):
            null[p, :, j] = flat_rois @ b[np.ix_(perm, perm)].ravel() / denominator[:, j]
    return observed, null


def run(rng, n_stimuli: int, n_units: int, n_layers: int, n_voxels: int, n_rois: int, n_permutations: int,
        loop_permutations: int, repeats: int, failures: list[str], check_speed: bool) -> None:
    latent = rng.standard_normal((n_stimuli, 16), dtype=np.float32)
    perms = rng.permuted(np.tile(np.arange(n_stimuli), (n_permutations, 1)), axis=1)
    loop_perms = perms[:loop_permutations]
    scale = n_permutations / loop_permutations
    print(f"\nB14 CKA: {n_stimuli} stimuli, {n_layers} layers x {n_units} units, {n_rois} ROIs x {n_voxels} voxels, "
          f"linear kernel, unbiased estimator, {n_permutations} permutations")
    roi_sets = make_sets(rng, n_stimuli, [n_voxels] * n_rois, latent)
    t0 = time.perf_counter()
    roi_stack = gram_stack(roi_sets, "linear", "unbiased")
    t_ours_grams = time.perf_counter() - t0
    t0 = time.perf_counter()
    roi_grams, roi_norms = numpy_grams(roi_sets)
    t_ref_grams = time.perf_counter() - t0
    del roi_sets
    layer_stacks, layer_grams, layer_norms = [], [], []
    for _ in range(n_layers):  # one layer's features in memory at a time
        (features,) = make_sets(rng, n_stimuli, [n_units], latent)
        t0 = time.perf_counter()
        layer_stacks.append(gram_stack([features], "linear", "unbiased"))
        t_ours_grams += time.perf_counter() - t0
        t0 = time.perf_counter()
        grams, norms = numpy_grams([features])
        t_ref_grams += time.perf_counter() - t0
        layer_grams += grams
        layer_norms.append(norms[0])
        del features
    layer_norms = np.asarray(layer_norms)
    layer_stack = GramStack.concatenate(layer_stacks)
    del layer_stacks
    gram_diff = max(float(np.max(np.abs(roi_stack.norms.numpy() - roi_norms) / roi_norms)),
                    float(np.max(np.abs(layer_stack.norms.numpy() - layer_norms) / layer_norms)))
    report("Grams (U-centred), all sets", t_ours_grams, t_ref_grams, gram_diff, None, failures, check_speed)

    def ours():
        return permutation_null(roi_stack, layer_stack, permutations=perms, return_null=True)

    def direct():
        return loop_per_pair(roi_grams, roi_norms, layer_grams, layer_norms, loop_perms)

    def per_layer():
        return loop_per_layer(roi_grams, roi_norms, layer_grams, layer_norms, loop_perms)

    if repeats > 1:
        t_ours, t_direct, result, (observed_ref, null_ref) = timed_pair(ours, direct, repeats)
        _, t_layer, _, (observed_layer, null_layer) = timed_pair(ours, per_layer, repeats)
    else:
        timings = []
        outputs = []
        for fn in (ours, direct, per_layer):
            t0 = time.perf_counter()
            outputs.append(fn())
            timings.append(time.perf_counter() - t0)
        t_ours, t_direct, t_layer = timings
        result, (observed_ref, null_ref), (observed_layer, null_layer) = outputs
    observed, p_values, null = result
    diff_direct = max(float(np.max(np.abs(observed - observed_ref))),
                      float(np.max(np.abs(null[:loop_permutations] - null_ref))))
    diff_layer = max(float(np.max(np.abs(observed - observed_layer))),
                     float(np.max(np.abs(null[:loop_permutations] - null_layer))))
    p_expected = (1 + (null >= observed - 1e-12).sum(axis=0)) / (1 + n_permutations)
    diff_p = float(np.max(np.abs(p_values - p_expected)))
    note = "" if scale == 1 else f" (loops timed on {loop_permutations} permutations, x{scale:g})"
    print(f"  loops: direct {t_direct:.2f} s, per layer {t_layer:.2f} s for {loop_permutations} permutations"
          f"{note}")
    report("CKA + permutations vs direct loop", t_ours, t_direct * scale, diff_direct, None, failures, check_speed)
    report("CKA + permutations vs loop per layer", t_ours, t_layer * scale, diff_layer, None, failures, check_speed)
    report("p-values from the null", None, None, diff_p, None, failures, check_speed)
    report("total (Grams + CKA + permutations)", t_ours_grams + t_ours, t_ref_grams + t_direct * scale,
           diff_direct, TARGET, failures, check_speed, tol=TOL)
    print(f"  significant (p < 0.05): {int((p_values < 0.05).sum())} of {p_values.size} ROI x layer pairs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, full loops, agreement only")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--loop-permutations", type=int, default=10,
                        help="permutations the NumPy loops are timed on at full size (extrapolated to all)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    failures: list[str] = []
    if args.smoke:
        run(rng, 40, 300, 3, 20, 4, 99, 99, 3, failures, check_speed=False)
    else:
        run(rng, 1000, 50_000, 10, 500, 20, 1000, args.loop_permutations, 1, failures, check_speed=True)
    return finish(failures, args.smoke, "the 10x target")


if __name__ == "__main__":
    sys.exit(main())
