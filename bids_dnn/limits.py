"""Upper bounds of the numbers a user gives (spec fields, command-line options).

Beyond them a run fails late (memory, broken figures) or gains nothing; the reason is part of the
error message (:data:`UPPER_BOUND_REASONS`, keyed by the field's name). No imports: the command
line reads these without loading the spec's dependencies.
"""

MAX_PERMUTATIONS = 1_000_000
MAX_RESAMPLES = 100_000
MAX_SEED = 2**32 - 1
MAX_RADIUS_MM = 50.0
MAX_ALPHAS = 100
MAX_ALPHA = 1e15
MAX_FOLDS = 100
MAX_FPS = 240.0
MAX_FRAMES = 1000
MAX_IMAGE_SIDE = 4096
MAX_BATCH_SIZE = 4096
MAX_COMPONENTS = 100_000
MAX_ROI_MIN_VOXELS = 10_000
UPPER_BOUND_REASONS = {
    "permutations": "p-values resolve 1/(n+1): a million permutations resolve p = 1e-6, more only cost time "
                    "and memory",
    "bootstrap": "the CI bounds are stable long before 100,000 resamples; more only cost time and memory",
    "map_permutations": "max-T p-values resolve 1/(n+1); 100,000 sign flips resolve p = 1e-5",
    "seed": "seeds are unsigned 32-bit integers, which every NumPy and torch generator takes",
    "init_seed": "seeds are unsigned 32-bit integers, which every NumPy and torch generator takes",
    "radius_mm": "a sphere of more than 50 mm covers most of a brain: that is no longer a searchlight",
    "n_folds": "each fold refits every model; use leave-one-run-out or fewer folds",
    "inner_folds": "each fold refits every model; use fewer folds",
    "fps": "video frames are sampled from the decoded stream; 240 per second is above any camera's rate",
    "n_frames": "every frame is a forward pass per video",
    "resize": "networks take a few hundred pixels; larger inputs only cost memory",
    "crop": "networks take a few hundred pixels; larger inputs only cost memory",
    "batch_size": "a batch's activations must fit in memory",
    "n_components": "reduction keeps fewer columns than that; use no reduction instead",
    "min_voxels": "a minimum above 10,000 voxels would skip most anatomical ROIs",
    "pca": "PCA keeps at most as many components as training stimuli",
}
