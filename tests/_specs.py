"""Spec texts shared by tests (fast: no searchlight / encoding, few permutations)."""

SMALL_SPEC = """\
schema_version: 1
models:
  - name: alexnet
    weights: random
    init_seed: 0
    layers: [features.2, features.12]
rois:
  atlas: derivatives/rois/space-MNI152NLin2009cAsym_atlas-planted_dseg.nii.gz
analyses:
  rsa: {comparison: spearman, permutations: 20}
  weighted_rsa: {enabled: false}
  searchlight: {enabled: false}
  encoding: {enabled: false}
statistics:
  bootstrap: 20
  map_permutations: 20
  seed: 42
"""
