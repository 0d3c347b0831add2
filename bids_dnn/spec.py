"""The analysis spec: what to compute, validated before any computation.

A spec is a YAML or JSON file. Every section has defaults, so a minimal spec is a few lines
(see ``examples/minimal.yaml``). Models are frozen and forbid unknown keys; a bad spec is
reported as one line per problem naming the field path, e.g.
``analyses.searchlight.radius_mm: must be greater than 0 (got -3)``, with a "did you mean"
for misspelled keys (:mod:`bids_dnn.spec_io` reads the file and words the problems).
``bids_dnn spec schema`` prints the JSON schema generated from here: this module is the single
source of truth for spec fields (``docs/spec.md`` is generated from it by
:mod:`bids_dnn.spec_reference`).

This module imports neither torch nor any analysis code.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bids_dnn.errors import SpecError
from bids_dnn.hashing import canonical_json, text_sha256
from bids_dnn.limits import (
    MAX_ALPHA,
    MAX_ALPHAS,
    MAX_BATCH_SIZE,
    MAX_COMPONENTS,
    MAX_FOLDS,
    MAX_FPS,
    MAX_FRAMES,
    MAX_IMAGE_SIDE,
    MAX_PERMUTATIONS,
    MAX_RADIUS_MM,
    MAX_RESAMPLES,
    MAX_ROI_MIN_VOXELS,
    MAX_SEED,
)
from bids_dnn.cka.registry import CKA_KERNEL_NAMES, HSIC_ESTIMATOR_NAMES
from bids_dnn.rsa.measures import (COMPARISON_MEASURE_NAMES, LINEAR_MEASURES, MODEL_RDM_MEASURES,
                                   RDM_MEASURE_NAMES)
from bids_dnn.rsa.noise import NOISE_NORMALIZATIONS, WELL_CONDITIONED_ESTIMATORS
from bids_dnn.stats.correction import CORRECTIONS
from bids_dnn.stats.group_tests import GROUP_TESTS
from bids_dnn.spec_io import read_spec_data, validation_problems

SCHEMA_VERSION = 1
#: ``entry_point`` of a custom model: a Python file (relative to the spec's folder) and a callable in it
ENTRY_POINT = re.compile(r"(?P<file>[^:]+\.py):(?P<callable>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")
#: model sources that run code from a user's file (allowed only with --allow-custom-code)
CODE_RUNNING_SOURCES = ("custom", "torchscript")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# the allowed values come from the library's registries (bids_dnn.rsa.measures, bids_dnn.rsa.noise, bids_dnn.cka,
# bids_dnn.stats), in their order
BrainRdmMeasure = Literal[("auto",) + RDM_MEASURE_NAMES]
ModelRdmMeasure = Literal[MODEL_RDM_MEASURES]
ComparisonMeasure = Literal[COMPARISON_MEASURE_NAMES]
NoiseNormalization = Literal[NOISE_NORMALIZATIONS]
NoiseEstimator = Literal[WELL_CONDITIONED_ESTIMATORS]
GroupTestName = Literal[tuple(GROUP_TESTS)]
CkaKernelName = Literal[CKA_KERNEL_NAMES]
HsicEstimatorName = Literal[HSIC_ESTIMATOR_NAMES]
CorrectionName = Literal[tuple(CORRECTIONS)]


class _Strict(BaseModel):
    """Base of every spec section: immutable, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class VideoOptions(_Strict):
    """How video stimuli (mp4, avi, webm, mov, mkv) are turned into model input.

    Frames are sampled at times 0, 1/fps, 2/fps, ... (< the video's duration), or at
    ``k * duration / n_frames`` for k = 0 .. n_frames - 1 when ``n_frames`` is set; each
    time takes the decoded frame nearest to it (the earlier one on a tie).
    """

    fps: float = Field(2.0, gt=0, le=MAX_FPS, description="Frames sampled per second of video (at 0, 1/fps, 2/fps, ...).")
    n_frames: int | None = Field(
        None,
        ge=1,
        le=MAX_FRAMES,
        description="Sample this many frames evenly over each video instead of by fps "
        "(same clip length for every video; useful for video models).",
    )
    aggregate: Literal["auto", "mean", "clip"] = Field(
        "auto",
        description="'mean': activations averaged over the sampled frames (image models); "
        "'clip': the frames passed together as one clip (video models); "
        "'auto': mean for image models, clip for video models.",
    )


class AudioOptions(_Strict):
    """How sound stimuli (wav, flac, ogg, mp3) are turned into model input: decoded, mixed down
    to mono (the mean of the channels), resampled to the model's sampling rate (polyphase
    filtering), and cropped to ``max_seconds`` from the start. Shorter sounds in a batch are
    padded with an attention mask: padding never changes a stimulus's features."""

    max_seconds: float = Field(30.0, gt=0, le=600, description="Longer sounds are cropped to their first max_seconds.")


class StimuliSpec(_Strict):
    """Where the ordered stimulus set comes from."""

    source: Literal["stim_file", "stimuli_tsv", "trial_type"] = Field(
        "stim_file",
        description="'stim_file': the events column naming files under stimuli/; "
        "'stimuli_tsv': BEP044-style stimuli/stimuli.tsv (stim_id -> stim_file) with a stim_id "
        "column in the events (used automatically when the events have stim_id but no stim_file "
        "and a stimuli.tsv exists); "
        "'trial_type': map each trial_type to a file with trial_type_map.",
    )
    trial_type_map: dict[str, str] | None = Field(
        None, description="trial_type -> stimulus file (relative to stimuli/), for source: trial_type."
    )
    category_column: str | None = Field(
        None,
        description="Events or stimuli.tsv column giving each stimulus' category "
        "(default: 'category' of stimuli.tsv, else of the events, else trial_type).",
    )
    ignore_trial_types: list[str] = Field(
        default_factory=list, description="trial_type values that are not stimuli (e.g. fixation)."
    )
    video: VideoOptions = Field(default_factory=VideoOptions)
    audio: AudioOptions = Field(default_factory=AudioOptions)
    context_column: str | None = Field(
        None, description="Text stimuli: a stimuli.tsv or events column holding each stimulus's preceding context "
        "(e.g. the story so far), fed to the model before the stimulus (see models[].context_tokens); the "
        "features pool the stimulus's own tokens only."
    )

    @model_validator(mode="after")
    def _map_needed(self) -> "StimuliSpec":
        if self.source == "trial_type" and not self.trial_type_map:
            raise ValueError("source 'trial_type' needs trial_type_map (trial_type -> file)")
        return self


class TransformSpec(_Strict):
    """Image preprocessing: aspect-preserving resize, centre crop, normalisation."""

    resize: int = Field(256, gt=0, le=MAX_IMAGE_SIDE, description="Shorter side after resizing, in pixels.")
    crop: int = Field(224, gt=0, le=MAX_IMAGE_SIDE, description="Centre crop size, in pixels.")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @model_validator(mode="after")
    def _crop_fits(self) -> "TransformSpec":
        if self.crop > self.resize:
            raise ValueError(f"crop ({self.crop}) must not exceed resize ({self.resize})")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be greater than 0")
        return self


class ReductionSpec(_Strict):
    """Optional dimensionality reduction of a model's stored features (one setting per model).

    Every layer with more units than ``n_components`` (or ``min_units``, when larger) is stored
    reduced; smaller layers are stored as they are. The settings are part of the feature file's
    content key: changing them recomputes the features.
    """

    method: Literal["srp", "pca"] = Field(
        ...,
        description="'srp': sparse random projection (seeded, applied batch by batch while "
        "extracting: memory independent of the number of stimuli; keeps pairwise distances); "
        "'pca': principal components fitted on all stimuli of the task after extraction "
        "(transductive; for encoding models prefer analyses.encoding.pca, fitted on training "
        "folds only). PCA keeps at most min(n_stimuli, n_units) components.",
    )
    n_components: int = Field(..., gt=0, le=MAX_COMPONENTS, description="Columns kept per reduced layer.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the random projection (and of randomized PCA).")
    min_units: int | None = Field(
        None,
        gt=0,
        description="Reduce only layers with more units than this (default: n_components; "
        "must be >= n_components).",
    )

    @model_validator(mode="after")
    def _threshold(self) -> "ReductionSpec":
        if self.min_units is not None and self.min_units < self.n_components:
            raise ValueError(f"min_units ({self.min_units}) must be >= n_components ({self.n_components})")
        return self


class ModelSpec(_Strict):
    """One network whose activations are extracted."""

    name: str = Field(..., min_length=1, description="Model name, e.g. 'alexnet', 'resnet50'.")
    source: Literal["torchvision", "timm", "open_clip", "torchscript", "custom", "huggingface"] = Field(
        "torchvision", description="'huggingface': transformers AutoModel with its tokenizer / feature extractor / "
        "image processor, by hub name or local folder (text, speech and audio, vision models); every block's hidden "
        "state is a layer ('hidden_states.0' = embeddings, 'hidden_states.<k>' = block k).")
    label: str | None = Field(
        None,
        description="Label used in output names (model-<label>); default: the name, sanitised.",
    )
    weights: str = Field(
        "DEFAULT",
        description="Weights name ('DEFAULT', an enum member such as 'IMAGENET1K_V1'), "
        "or 'random' for a seeded random initialisation (no download).",
    )
    init_seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the random initialisation (weights: random).")
    layers: Union[str, list[str]] = Field(
        "top_level",
        description="A preset ('top_level', 'all_relu', 'all_conv', 'all_linear', 'leaves'), "
        "or a list of node names and globs (e.g. 'layer*.relu').",
    )
    torchscript: str | None = Field(None, description="TorchScript file (source: torchscript; runs only with "
                                    "--allow-custom-code).")
    entry_point: str | None = Field(
        None, description="'file.py:callable' returning an nn.Module, the file relative to the spec's folder "
        "(source: custom; runs its code, so only with --allow-custom-code)."
    )
    transform: TransformSpec | None = Field(
        None, description="Preprocessing; default: the weights' own transforms, else ImageNet."
    )
    token_policy: Literal["cls", "mean", "all"] = Field(
        "cls",
        description="Transformer layers (batch, tokens, dim): 'cls' first token, "
        "'mean' average over tokens, 'all' every token flattened.",
    )
    pooling: Literal["auto", "mean", "first", "last", "max", "word"] = Field(
        "auto", description="huggingface: how a layer's tokens (text) or frames (audio) become one vector per "
        "stimulus: 'mean' / 'max' over the stimulus's own tokens (special, context and padding tokens left out), "
        "'first' (CLS), 'last' (the last token: decoders such as GPT-2), 'word' (each word's sub-word tokens "
        "averaged, then the words); 'auto': 'last' for decoder-only text models, 'mean' for other text and audio "
        "models, 'first' for vision models."
    )
    context_tokens: int = Field(
        0, ge=0, le=100_000, description="huggingface text models: at most this many tokens of the stimulus's "
        "preceding context (stimuli.context_column), the most recent ones, are fed before it (0: none)."
    )
    dtype: Literal["float32", "float16"] = Field("float32", description="Stored feature dtype.")
    batch_size: int = Field(16, gt=0, le=MAX_BATCH_SIZE)
    reduction: ReductionSpec | None = Field(
        None, description="Dimensionality reduction of the stored features (default: none)."
    )

    @field_validator("layers")
    @classmethod
    def _layers_not_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("must name at least one layer or a preset")
        if isinstance(value, list) and any(not v for v in value):
            raise ValueError("layer names must not be empty")
        return value

    @model_validator(mode="after")
    def _source_inputs(self) -> "ModelSpec":
        if self.source == "torchscript" and not self.torchscript:
            raise ValueError("source 'torchscript' needs a 'torchscript' file path")
        if self.source == "custom" and not self.entry_point:
            raise ValueError("source 'custom' needs 'entry_point' ('file.py:callable')")
        if self.entry_point and not ENTRY_POINT.fullmatch(self.entry_point):
            raise ValueError(f"entry_point must name a Python file and a function in it, 'file.py:callable' (got "
                             f"{self.entry_point!r}); importable module names are not accepted, so a spec cannot "
                             "run code from the Python path")
        return self

    @property
    def output_label(self) -> str:
        """The alphanumeric label used in file names."""
        return sanitize_label(self.label or self.name)


class GLMSpec(_Strict):
    """First-level GLM options (nilearn)."""

    method: Literal["lsa", "lss"] = Field(
        "lsa", description="'lsa': one regressor per stimulus; 'lss': one model per trial."
    )
    hrf: Literal["spm", "glover", "spm + derivative", "glover + derivative"] = "spm"
    high_pass_hz: float = Field(0.008, ge=0, description="Cosine drift cut-off in Hz.")
    drift_model: Literal["cosine", "polynomial", "none"] = "cosine"
    noise_model: Literal["ar1", "ols"] = "ar1"
    confounds: list[str] = Field(
        default_factory=lambda: ["motion_6", "white_matter", "csf"],
        description="fMRIPrep confound columns or groups: motion_6, motion_24, white_matter, "
        "csf, global_signal, a_comp_cor_5, cosine, or exact column names.",
    )
    scrub_fd: float | None = Field(
        None, gt=0, description="Censor volumes with framewise displacement above this (mm)."
    )
    drop_non_steady_state: bool = True
    output: Literal["effect", "t"] = Field("effect", description="Patterns from betas or t values.")
    engine: Literal["fast", "nilearn"] = Field(
        "fast", description="'fast': batched GLM (each AR(1) bin's design inverted once, LSS in closed form); "
        "'nilearn': nilearn's run_glm per voxel chunk and trial model (the reference; same estimates to rounding)."
    )


class BrainSpec(_Strict):
    """Where brain response patterns come from."""

    input: Literal["fmriprep", "betas"] = Field(
        "fmriprep", description="'fmriprep': fit a GLM to preprocessed BOLD; 'betas': ready-made maps."
    )
    derivatives: str = Field("fmriprep", description="Name of the derivatives folder to use.")
    space: str = "MNI152NLin2009cAsym"
    resolution: str | None = Field(None, description="res- entity, if the data have one.")
    repetition_time: Literal["check", "sidecar", "header"] = Field(
        "check", description="Where the TR comes from: 'check' takes the JSON sidecar's RepetitionTime and "
        "stops when the NIfTI header disagrees; 'sidecar' or 'header' trusts that one."
    )
    glm: GLMSpec = Field(default_factory=GLMSpec)
    noise_normalization: NoiseNormalization = "multivariate"
    noise_estimator: NoiseEstimator = "shrinkage_diag"

    @model_validator(mode="after")
    def _betas_without_residuals(self) -> "BrainSpec":
        # ready-made betas come without GLM residuals: nothing to normalise the noise with
        if self.input == "betas" and self.noise_normalization != "none":
            raise ValueError("input 'betas' has no GLM residuals; set noise_normalization: none")
        return self


class RoiSpec(_Strict):
    """Regions of interest: binary masks, or an atlas plus labels."""

    masks: str | None = Field(
        None, description="Folder with *_label-<roi>_mask.nii.gz (per subject or template space)."
    )
    atlas: str | None = Field(
        None, description="Atlas image (dseg or probabilistic) with a .tsv of index / name."
    )
    labels: list[str] | None = Field(None, description="Subset of ROI names to use (text as written: "
                                                       "NULL, NA, 007 are names).")
    threshold: float | None = Field(
        None, gt=0, le=1, description="Threshold for a probabilistic (4D) atlas."
    )
    min_voxels: int = Field(
        3, ge=1, le=MAX_ROI_MIN_VOXELS, description="ROIs with fewer usable voxels (inside the brain mask, "
        "not constant) are skipped with a warning: n/a rows in the RSA table, left out of the group level."
    )

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_text(cls, value: Any) -> Any:
        """Numbers are names too (a JSON ``[7]`` means the ROI ``7``); YAML scalars are already
        read as written (:func:`bids_dnn.spec_io.yaml_load`)."""
        if isinstance(value, list):
            return [str(v).lower() if isinstance(v, bool) else str(v) if isinstance(v, (int, float)) else v
                    for v in value]
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "RoiSpec":
        if bool(self.masks) == bool(self.atlas):
            raise ValueError("give exactly one of 'masks' or 'atlas'")
        return self


class RdmSpec(_Strict):
    """Dissimilarity measures for brain and model RDMs."""

    brain: BrainRdmMeasure = Field(
        "auto", description="'auto': crossnobis with >= 2 runs, else correlation."
    )
    model: ModelRdmMeasure = "correlation"


class RsaSpec(_Strict):
    enabled: bool = True
    comparison: ComparisonMeasure = "spearman"
    permutations: int = Field(10000, ge=0, le=MAX_PERMUTATIONS, description="Stimulus-label permutations (0: none).")


class WeightedRsaSpec(_Strict):
    enabled: bool = False
    cv: Literal["subjects", "stimuli"] = "subjects"


class VariancePartitioningSpec(_Strict):
    """Unique and shared variance of brain RDMs explained by 2-4 groups of model RDMs (group level)."""

    enabled: bool = False
    groups: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Group name -> model RDMs: 'model:layer' (model label, layer name) or 'model' for all "
        "its layers, e.g. {early: ['alexnet:features.2'], late: ['alexnet:classifier.4']}.",
    )
    method: Literal["ols", "nnls"] = Field("ols", description="Least squares, or non-negative weights.")
    rank_transform: bool = Field(
        True, description="Rank-transform every RDM first (matches a Spearman RSA)."
    )

    @model_validator(mode="after")
    def _two_to_four(self) -> "VariancePartitioningSpec":
        if self.enabled and not 2 <= len(self.groups) <= 4:
            raise ValueError(f"groups: give 2 to 4 named groups of model RDMs (got {len(self.groups)})")
        empty = [name for name, refs in self.groups.items() if not refs]
        if empty:
            raise ValueError(f"groups: group(s) {', '.join(empty)} name no model RDM")
        return self


class RidgePenaltySpec(_Strict):
    """The ridge penalties searched by a cross-validated ridge (a list, or 'logspace(start, stop, num)')."""

    alphas: list[float] = Field(
        default_factory=lambda: [10.0**e for e in range(-2, 9)],
        description="Ridge penalties; a list or 'logspace(start, stop, num)'.",
    )

    @field_validator("alphas", mode="before")
    @classmethod
    def _parse_logspace(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = re.fullmatch(r"\s*logspace\(\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(\d+)\s*\)\s*", value)
            if not match:
                raise ValueError("must be a list of numbers or 'logspace(start, stop, num)'")
            start, stop, num = float(match[1]), float(match[2]), int(match[3])
            if not 1 <= num <= MAX_ALPHAS:
                raise ValueError(f"logspace needs 1 <= num <= {MAX_ALPHAS} (each alpha is a ridge fit per fold)")
            step = (stop - start) / (num - 1) if num > 1 else 0.0
            return [10 ** (start + i * step) for i in range(num)]
        return value

    @field_validator("alphas")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("must contain at least one value")
        if len(value) > MAX_ALPHAS:
            raise ValueError(f"at most {MAX_ALPHAS} alphas (got {len(value)}; each alpha is a ridge fit per fold)")
        if any(not (0 < a <= MAX_ALPHA and math.isfinite(a)) for a in value):
            raise ValueError(f"every alpha must be a finite number in (0, {MAX_ALPHA:g}] (larger alphas "
                             "only shrink every weight to 0)")
        return value


class CrossValidatedRidgeSpec(RidgePenaltySpec):
    """Settings shared by every cross-validated ridge of the spec (encoding, decoding, probing, drivers)."""

    cv: Literal["auto", "leave_one_run_out", "kfold"] = Field(
        "auto",
        description="Outer folds. A stimulus is never in both the training and the test fold: "
        "'leave_one_run_out' needs runs with disjoint stimulus sets; 'kfold' splits the stimuli "
        "(seeded); 'auto' picks 'leave_one_run_out' when runs hold disjoint stimuli, else 'kfold'.",
    )
    n_folds: int = Field(5, ge=2, le=MAX_FOLDS, description="Outer folds for 'kfold'.")
    inner_folds: int = Field(5, ge=2, le=MAX_FOLDS, description="Inner folds that choose the ridge penalty.")
    standardize: bool = Field(
        False, description="z-score each predictor with its training mean and SD (else centre only). Off by "
        "default: sparse ReLU units with near-zero training SD explode on test stimuli."
    )


class EncodingSpec(CrossValidatedRidgeSpec):
    """Cross-validated ridge from layer features to voxel responses (himalaya solvers); each
    voxel's alpha is chosen by inner cross-validation."""

    enabled: bool = False
    pca: int | None = Field(None, gt=0, le=MAX_COMPONENTS, description="PCA components fitted on training stimuli only.")
    region: Literal["brain", "rois"] = Field(
        "brain", description="Voxels to model: the whole brain mask, or the union of the ROIs."
    )
    banded: bool = Field(
        False, description="Also fit banded ridge over all layers of each model and split R2 per layer."
    )


class SearchlightSpec(_Strict):
    """Whole-brain searchlight RSA: one map per model layer."""

    enabled: bool = False
    radius_mm: float = Field(6.0, gt=0, le=MAX_RADIUS_MM, description="Sphere radius in mm (distances use the voxel size).")
    rdm: BrainRdmMeasure = Field(
        "auto", description="Sphere RDM measure; 'auto' follows rdm.brain. Noise normalisation is "
        "univariate (residual SD per voxel) in searchlights."
    )
    comparison: ComparisonMeasure = "spearman"
    min_voxels: int = Field(10, ge=1, description="A centre needs at least this many in-mask voxels in its sphere.")
    min_fraction: float = Field(
        0.0, ge=0, le=1, description="...and at least this fraction of its full sphere inside the mask "
        "(rsatoolbox's 'threshold')."
    )
    fisher_z: bool = Field(False, description="Also write Fisher-z maps (pearson / spearman).")

    @field_validator("comparison")
    @classmethod
    def _linear(cls, value: str) -> str:
        if value not in LINEAR_MEASURES:
            raise ValueError(f"{value} is too slow for searchlights; use spearman or rho_a")
        return value

    @field_validator("rdm")
    @classmethod
    def _no_mahalanobis(cls, value: str) -> str:
        if value == "mahalanobis":
            raise ValueError("searchlights use univariate noise normalisation; use 'crossnobis' or 'sqeuclidean'")
        return value


class CkaSpec(_Strict):
    """Centered kernel alignment (Kornblith et al. 2019) between each layer's activations and each
    ROI's response patterns (run-mean estimates), per participant, with a group summary."""

    enabled: bool = False
    kernel: CkaKernelName = Field("linear", description="Kernel of the stimulus x stimulus Gram matrices.")
    sigma: float = Field(
        1.0, gt=0, le=100, description="RBF bandwidth as a multiple of the median distance between stimuli "
        "(kernel 'rbf' only)."
    )
    estimator: HsicEstimatorName = Field(
        "unbiased", description="HSIC estimator: 'unbiased' (debiased CKA, about 0 for unrelated patterns) or "
        "'plain' (biased upwards with few stimuli and many features)."
    )
    permutations: int = Field(1000, ge=0, le=MAX_PERMUTATIONS, description="Stimulus-label permutations (0: none).")
    bootstrap: int = Field(
        1000, ge=0, le=MAX_RESAMPLES, description="Stimulus-bootstrap resamples for each participant's CIs (0: none)."
    )
    across_models: bool = Field(
        True, description="Also write layer x layer CKA of all models' layers (model folders, once per run)."
    )


class DecodingSpec(CrossValidatedRidgeSpec):
    """Decoding and identification (Kay et al. 2008; Horikawa & Kamitani 2017): cross-validated
    ridge from each ROI's response patterns to every unit of each layer, and identification of
    the held-out stimuli among all stimuli from the predicted features."""

    enabled: bool = False
    permutations: int = Field(
        1000, ge=0, le=MAX_PERMUTATIONS,
        description="Candidate-label permutations of each test fold's identification (0: none).",
    )


class ProbingSpec(CrossValidatedRidgeSpec):
    """Cross-validated linear probes from each layer's activations and each ROI's patterns to
    stimulus annotations: categorical annotations by a ridge classifier (balanced accuracy,
    chance 1/k), continuous ones by ridge regression (held-out r); one scale for layers and regions."""

    enabled: bool = False
    annotations: list[str] = Field(
        default_factory=lambda: ["category"],
        description="Stimulus annotations to probe: 'category' (the stimulus set's category), a column of "
        "stimuli.tsv, or an events column with one value per stimulus.",
        min_length=1,
    )
    kinds: dict[str, Literal["categorical", "continuous"]] = Field(
        default_factory=dict, description="Annotation -> kind where the automatic choice (continuous when every "
        "value is a number and there are more than 2 distinct values) is not wanted."
    )
    permutations: int = Field(1000, ge=0, le=MAX_PERMUTATIONS, description="Label permutations (0: none).")
    layers: bool = Field(True, description="Probe every model layer (model folders, once per run).")
    rois: bool = Field(True, description="Probe every ROI's patterns (per participant, with a group summary).")

    @model_validator(mode="after")
    def _kinds_named(self) -> "ProbingSpec":
        unknown = sorted(set(self.kinds) - set(self.annotations))
        if unknown:
            raise ValueError(f"kinds: {', '.join(unknown)} not in annotations")
        return self


class SaliencySpec(_Strict):
    """Saliency of the encoding model's predicted ROI response with respect to the input image."""

    enabled: bool = True
    methods: list[Literal["vanilla", "smoothgrad"]] = Field(
        default_factory=lambda: ["vanilla", "smoothgrad"], min_length=1,
        description="'vanilla': the gradient (Simonyan et al. 2014); 'smoothgrad': the gradient averaged over "
        "noisy copies of the image (Smilkov et al. 2017).")
    n_stimuli: int = Field(3, ge=1, le=50, description="Top stimuli (by predicted response) to explain per ROI.")
    n_samples: int = Field(25, ge=1, le=500, description="Noisy copies per image (smoothgrad).")
    noise_level: float = Field(0.15, ge=0, le=1, description="Noise SD as a fraction of the input's range (smoothgrad).")


class DriversSpec(CrossValidatedRidgeSpec):
    """What drives a region: the stimuli with the highest and lowest measured and predicted ROI
    response, and saliency maps of the predicted response. The prediction is a ridge model from
    one layer (the one with the best held-out r of the ROI's mean response) to the ROI's mean response."""

    enabled: bool = False
    model: str | None = Field(None, description="Model label (default: the first model).")
    n_top: int = Field(6, ge=1, le=100, description="Stimuli shown at each end of the ranking.")
    saliency: SaliencySpec = Field(default_factory=SaliencySpec)


class NaturalisticSpec(RidgePenaltySpec):
    """Voxelwise encoding of the BOLD time series of continuous designs (films, stories; ``design:
    naturalistic``): features on the stimulus timeline (video frames at ``stimuli.video.fps``, or
    one sample per word), resampled to the acquisition times by Lanczos interpolation, z-scored
    per run, delayed (FIR) or convolved with the HRF, and fitted to every voxel by ridge with
    leave-one-run-out cross-validation (penalty per voxel by inner cross-validation over runs)."""

    word_column: str | None = Field(
        None, description="Stories: an events column with one word per row (onset = the word's onset); the words "
        "are fed to a text model with the run's preceding words as context (models[].context_tokens). Without it, "
        "the events' stim_file names the film (or sound) each run presents, from its onset."
    )
    delays: list[int] = Field(
        default_factory=lambda: [1, 2, 3, 4], min_length=1,
        description="FIR delays in TRs (each feature is repeated at these lags; 0 = no lag)."
    )
    hrf: bool = Field(False, description="Convolve the features with the SPM HRF instead of FIR delays.")
    lanczos_window: int = Field(3, ge=1, le=10, description="Lobes of the Lanczos kernel (cutoff: the TR's Nyquist).")
    inner_folds: int = Field(5, ge=2, le=MAX_FOLDS, description="Inner folds (grouped by run) choosing each voxel's "
                             "penalty.")
    pca: int | None = Field(None, gt=0, le=MAX_COMPONENTS,
                            description="PCA components of each feature space, fitted on the training runs only.")
    banded: bool = Field(False, description="Also fit banded ridge over all layers of each model and split R2 per "
                         "layer (feature space).")
    region: Literal["brain", "rois"] = Field("brain", description="Voxels to model: the brain mask, or the ROIs.")

    @field_validator("delays")
    @classmethod
    def _distinct_delays(cls, value: list[int]) -> list[int]:
        if any(d < 0 or d > 20 for d in value) or len(set(value)) != len(value):
            raise ValueError("delays must be distinct whole numbers of TRs from 0 to 20")
        return value


class MeegSpec(_Strict):
    """EEG and MEG (``modality: eeg`` or ``meg``): epochs around every stimulus event, time-resolved
    brain RDMs per participant (one per time point, or per sliding window), RSA time courses per model
    layer, temporal generalisation, time-resolved encoding (``analyses.encoding``: ridge from each
    layer's features to every channel x time point of the stimulus-averaged epochs), and group statistics over time (cluster-based
    sign-flip permutations, Maris & Oostenveld 2007). Preprocessing is optional: data from
    ``-d epochs=PATH`` (``*_epo.fif``) are used as they are."""

    tmin: float = Field(-0.1, ge=-5, le=0, description="Epoch start relative to each event's onset (s).")
    tmax: float = Field(0.6, gt=0, le=10, description="Epoch end relative to each event's onset (s).")
    baseline: tuple[float | None, float | None] | None = Field(
        (None, 0.0), description="Baseline interval (s) subtracted per epoch and channel; null ends mean the "
        "epoch's start / end; null: no baseline correction.")
    l_freq: float | None = Field(None, gt=0, description="High-pass cut-off (Hz) before epoching; null: none.")
    h_freq: float | None = Field(40.0, gt=0, description="Low-pass cut-off (Hz) before epoching; null: none.")
    resample_hz: float | None = Field(None, gt=0, le=10000, description="Resample the epochs to this rate (Hz); "
                                      "null: keep the recording's.")
    reject: dict[Literal["eeg", "mag", "grad"], float] | None = Field(
        None, description="Peak-to-peak rejection per channel type (V for eeg, T for mag, T/m for grad), e.g. "
        "{eeg: 150e-6}; epochs above it are dropped and counted.")
    picks: list[Literal["eeg", "mag", "grad", "meg"]] | None = Field(
        None, description="Channel types to analyse; null: the recording's EEG and MEG channels. Channels marked "
        "bad in channels.tsv are left out.")
    window_ms: float = Field(0.0, ge=0, le=1000, description="Average the samples of a sliding window of this "
                             "width (ms) before each RDM; 0: one RDM per sample.")
    step_ms: float | None = Field(None, gt=0, le=1000, description="Step between windows (ms); null: one sample.")
    rdm: Literal["correlation", "euclidean_cv", "crossnobis", "decoding"] = Field(
        "crossnobis", description="Brain RDM per time point: 1 - Pearson r of the trial-averaged patterns; "
        "cross-validated Euclidean or crossnobis distance across folds of trials; or pairwise decoding accuracy "
        "(shrinkage LDA, cross-validated over trials; chance 0.5).")
    noise_normalization: Literal["multivariate", "univariate", "none"] = Field(
        "multivariate", description="Noise normalisation (Guggenmos et al. 2018) of crossnobis (the precision of "
        "each fold's training trials' residuals, shrinkage covariance averaged over time: unbiased distances) and "
        "correlation (patterns whitened by the precision of all trials' residuals): multivariate, by each "
        "channel's residual variance, or none. euclidean_cv is crossnobis without it; decoding uses the LDA's own "
        "shrinkage covariance.")
    folds: int = Field(5, ge=2, le=MAX_FOLDS, description="Folds of trials (stratified by stimulus) for the "
                       "cross-validated distances and decoding.")
    temporal_generalization: bool = Field(True, description="Also correlate the brain RDMs of every pair of "
                                          "time points (time x time) and write the matrix.")
    cluster_p: float = Field(0.05, gt=0, lt=1, description="Cluster-forming threshold: the one-sample t at this "
                             "p (one- or two-sided as statistics.alternative).")
    correction: Literal["cluster", "maxt", "fdr"] = Field(
        "cluster", description="Correction over time points of the group tests: cluster-based sign-flip "
        "permutations, max-t sign-flip permutations, or Benjamini-Hochberg FDR.")
    permutations: int = Field(1024, ge=0, le=MAX_PERMUTATIONS, description="Sign flips of the group tests over "
                              "time (all 2^n flips when fewer participants allow).")

    @model_validator(mode="after")
    def _window(self) -> "MeegSpec":
        if self.tmax <= self.tmin:
            raise ValueError(f"meeg: tmax ({self.tmax}) must be after tmin ({self.tmin})")
        if self.baseline is not None:
            start, stop = self.baseline
            if start is not None and stop is not None and stop <= start:
                raise ValueError(f"meeg.baseline: the end ({stop}) must be after the start ({start})")
            if (start is not None and start < self.tmin) or (stop is not None and stop > self.tmax):
                raise ValueError("meeg.baseline must lie within the epoch (tmin to tmax)")
        if self.l_freq is not None and self.h_freq is not None and self.l_freq >= self.h_freq:
            raise ValueError("meeg: l_freq must be below h_freq")
        return self


class AnalysesSpec(_Strict):
    rsa: RsaSpec = Field(default_factory=RsaSpec)
    weighted_rsa: WeightedRsaSpec = Field(default_factory=WeightedRsaSpec)
    variance_partitioning: VariancePartitioningSpec = Field(default_factory=VariancePartitioningSpec)
    encoding: EncodingSpec = Field(default_factory=EncodingSpec)
    searchlight: SearchlightSpec = Field(default_factory=SearchlightSpec)
    cka: CkaSpec = Field(default_factory=CkaSpec)
    decoding: DecodingSpec = Field(default_factory=DecodingSpec)
    probing: ProbingSpec = Field(default_factory=ProbingSpec)
    drivers: DriversSpec = Field(default_factory=DriversSpec)
    naturalistic: NaturalisticSpec = Field(default_factory=NaturalisticSpec)


class StatisticsSpec(_Strict):
    group_test: GroupTestName = "ttest"
    alternative: Literal["greater", "two-sided"] = Field(
        "greater", description="Alternative hypothesis of tests against zero."
    )
    correction: CorrectionName = "fdr_bh"
    alpha: float = Field(0.05, gt=0, lt=1)
    bootstrap: int = Field(1000, ge=0, le=MAX_RESAMPLES, description="Bootstrap resamples for CIs.")
    bootstrap_method: Literal["subjects", "dual"] = Field(
        "subjects", description="CIs of the group mean from resampling subjects, or subjects and stimuli "
        "together (rsatoolbox eval_dual_bootstrap; wider, generalises to new stimuli)."
    )
    ci: float = Field(0.95, gt=0, lt=1)
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed of every random step (overridden by --random-seed).")
    map_permutations: int = Field(
        5000, ge=0, le=MAX_RESAMPLES, description="Sign flips for group maps (max-T family-wise error; 0: parametric only)."
    )
    map_tfce: bool = Field(False, description="Also compute TFCE on group maps (slower).")


class OutputsSpec(_Strict):
    report: bool = True
    save_betas: bool = True


class AnalysisSpec(_Strict):
    """The whole analysis. Every field has a default except what the data cannot imply."""

    schema_version: Literal[1] = SCHEMA_VERSION
    design: Literal["events", "naturalistic"] = Field(
        "events", description="'events': one response estimate per stimulus (GLM), then RSA, encoding, CKA, ...; "
        "'naturalistic': continuous stimuli (films, stories), voxelwise encoding of the BOLD time series "
        "(analyses.naturalistic); the event-related analyses are not run."
    )
    modality: Literal["fmri", "eeg", "meg"] = Field(
        "fmri", description="'fmri': BOLD with fMRIPrep derivatives or betas; 'eeg' / 'meg': BIDS EEG / MEG "
        "recordings (any format MNE-BIDS reads) or epochs from -d epochs=PATH, analysed over time (section meeg)."
    )
    stimuli: StimuliSpec = Field(default_factory=StimuliSpec)
    models: list[ModelSpec] = Field(
        default_factory=lambda: [ModelSpec(name="alexnet")], min_length=1
    )
    brain: BrainSpec = Field(default_factory=BrainSpec)
    rois: RoiSpec | None = None
    rdm: RdmSpec = Field(default_factory=RdmSpec)
    analyses: AnalysesSpec = Field(default_factory=AnalysesSpec)
    statistics: StatisticsSpec = Field(default_factory=StatisticsSpec)
    outputs: OutputsSpec = Field(default_factory=OutputsSpec)
    meeg: MeegSpec = Field(default_factory=MeegSpec)

    @model_validator(mode="after")
    def _cross_checks(self) -> "AnalysisSpec":
        labels = [m.output_label for m in self.models]
        duplicates = sorted({lab for lab in labels if labels.count(lab) > 1})
        if duplicates:
            raise ValueError(
                f"models: labels must be unique (duplicate: {', '.join(duplicates)}); "
                "give each model a distinct 'label'"
            )
        if self.modality != "fmri":
            if self.design != "events":
                raise ValueError(f"modality: {self.modality} needs design: events (one epoch per stimulus event)")
            fmri_only = [name for name in ("weighted_rsa", "searchlight", "cka", "decoding", "probing", "drivers")
                         if getattr(self.analyses, name).enabled]
            if fmri_only:
                raise ValueError(f"modality: {self.modality} runs the time-resolved analyses of section meeg; "
                                 f"disable analyses.{', analyses.'.join(fmri_only)} (fMRI only)")
            self._check_partition_groups(labels)
            return self
        if self.design == "naturalistic":
            event_related = [name for name in ("weighted_rsa", "variance_partitioning", "encoding", "searchlight",
                                               "cka", "decoding", "probing", "drivers")
                             if getattr(self.analyses, name).enabled]
            if event_related:
                raise ValueError(f"design: naturalistic runs analyses.naturalistic only; disable analyses."
                                 f"{', analyses.'.join(event_related)} (they need one response per stimulus)")
            if self.analyses.naturalistic.region == "rois" and self.rois is None:
                raise ValueError("analyses.naturalistic.region: 'rois' needs rois")
            return self
        needs_rois = (self.analyses.rsa.enabled or self.analyses.weighted_rsa.enabled
                      or self.analyses.variance_partitioning.enabled)
        if needs_rois and self.rois is None:
            raise ValueError(
                "rois: required for analyses.rsa (add 'rois: {atlas: ...}' or 'rois: {masks: ...}', "
                "or set analyses.rsa.enabled: false)"
            )
        ana = self.analyses
        for name in ("cka", "decoding", "drivers"):
            if getattr(ana, name).enabled and self.rois is None:
                raise ValueError(f"rois: required for analyses.{name} (add 'rois: {{atlas: ...}}' or "
                                 f"'rois: {{masks: ...}}', or set analyses.{name}.enabled: false)")
        if ana.drivers.enabled and ana.drivers.model is not None and ana.drivers.model not in labels:
            raise ValueError(f"analyses.drivers.model: '{ana.drivers.model}' is not a model label "
                             f"(labels: {', '.join(labels)})")
        if (ana.weighted_rsa.enabled or ana.variance_partitioning.enabled) and not ana.rsa.enabled:
            raise ValueError("analyses.weighted_rsa and analyses.variance_partitioning build on the ROI RSA; "
                             "set analyses.rsa.enabled: true")
        self._check_partition_groups(labels)
        return self

    def _check_partition_groups(self, labels: list[str]) -> None:
        """Every reference of ``analyses.variance_partitioning.groups`` names a model."""
        if self.analyses.variance_partitioning.enabled:
            for group, refs in self.analyses.variance_partitioning.groups.items():
                for ref in refs:
                    if ref.split(":", 1)[0] not in labels:
                        raise ValueError(
                            f"analyses.variance_partitioning.groups.{group}: '{ref}' names no model "
                            f"(models: {', '.join(labels)}); use 'model:layer' or 'model'"
                        )

    def with_seed(self, seed: int | None) -> "AnalysisSpec":
        """Return a copy whose statistics seed is ``seed`` (if given)."""
        if seed is None:
            return self
        stats = self.statistics.model_copy(update={"seed": seed})
        return self.model_copy(update={"statistics": stats})


def sanitize_label(text: str) -> str:
    """Make a BIDS-safe alphanumeric label (``features.3`` -> ``features3``)."""
    label = re.sub(r"[^A-Za-z0-9]", "", text)
    return label or "x"


# ---------------------------------------------------------------------------------------
# Loading (reading and error formatting: bids_dnn.spec_io; the Markdown reference:
# bids_dnn.spec_reference)
# ---------------------------------------------------------------------------------------


def parse_spec(data: Any, source: str = "spec") -> AnalysisSpec:
    """Validate a mapping (already parsed from YAML/JSON) into an :class:`AnalysisSpec`.

    Raises
    ------
    SpecError
        With one line per problem (exit code 65).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError([f"(top level): must be a mapping of sections (got {type(data).__name__})"], source)
    try:
        return AnalysisSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(validation_problems(exc, AnalysisSpec), source) from None


def load_spec(path: str | Path | None) -> AnalysisSpec:
    """Read and validate a YAML or JSON spec file (``None``: all defaults).

    YAML is read with ``yaml.safe_load``: reading a spec never executes code. A model with
    ``source: custom`` or ``torchscript`` does run the code of the file it names; the command line
    refuses it unless ``--allow-custom-code`` is given (:func:`check_code_permission`).
    """
    if path is None:  # the defaults, validated like a file (they need ROIs for ROI RSA)
        return parse_spec({}, source="the built-in defaults (no --spec given)")
    path = Path(path)
    data = read_spec_data(path, TEXT_LIST_FIELDS)
    return parse_spec(_files_next_to_spec(data, path.parent.resolve()), source=str(path))


#: spec fields whose list items are names, read as the text written (``[NULL, 007]`` are the
#: names ``NULL`` and ``007``, not a null and the number 7)
TEXT_LIST_FIELDS = (("rois", "labels"),)


def _files_next_to_spec(data: Any, folder: Path) -> Any:
    """Paths in the models made absolute, relative to the spec's ``folder``: custom models'
    ``entry_point`` files, and Hugging Face models named by a local folder next to the spec
    (``name: models/textnet``; a name that is no such folder is a hub id). A local folder's
    label defaults to the folder's name."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        return data
    models = []
    for model in data["models"]:
        match = ENTRY_POINT.fullmatch(model.get("entry_point") or "") if isinstance(model, dict) else None
        if match and not Path(match["file"]).is_absolute():
            model = {**model, "entry_point": f"{folder / match['file']}:{match['callable']}"}
        name = model.get("name") if isinstance(model, dict) else None
        if (isinstance(model, dict) and model.get("source") == "huggingface" and isinstance(name, str) and name
                and not Path(name).is_absolute() and (folder / name).is_dir()):
            model = {**model, "name": str(folder / name), "label": model.get("label") or Path(name).name}
        models.append(model)
    return {**data, "models": models}


def check_code_permission(spec: AnalysisSpec, allowed: bool) -> None:
    """Refuse models that run a user's code (``source: custom`` / ``torchscript``) unless ``allowed``.

    Raises
    ------
    UsageError
        Naming the first such model, its file and the flag that allows it.
    """
    from bids_dnn.errors import UsageError

    for i, model in enumerate(spec.models):
        if model.source in CODE_RUNNING_SOURCES and not allowed:
            file = model.entry_point if model.source == "custom" else model.torchscript
            raise UsageError(f"models[{i}] (source: {model.source}) runs the code of {file}; this needs "
                             "--allow-custom-code",
                             "add --allow-custom-code if you trust that file: custom models and TorchScript "
                             "files execute their code with your permissions")


def spec_json_schema() -> dict[str, Any]:
    """The JSON schema of :class:`AnalysisSpec` (printed by ``bids_dnn spec schema``)."""
    return AnalysisSpec.model_json_schema()


def spec_to_dict(spec: AnalysisSpec) -> dict[str, Any]:
    """The fully resolved spec as plain JSON-compatible data."""
    return spec.model_dump(mode="json")


def spec_hash(spec: AnalysisSpec) -> str:
    """A short stable hash of the resolved spec (for provenance and cache keys): the first 12 hex
    digits of the SHA-256 of its canonical JSON."""
    return text_sha256(canonical_json(spec_to_dict(spec)))[:12]
