"""The methods section, written from the resolved spec and the facts of the run, with citations.

Only what the spec enabled is described, and only the references cited in the text are
listed (numbered in order of first citation). DOIs are given as ``doi:`` identifiers, never as
links, so a report makes no network request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bids_dnn.report.assemble import Block
from bids_dnn.cka.registry import CKA_KERNELS, HSIC_ESTIMATORS
from bids_dnn.rsa.measures import COMPARISON_MEASURE_REGISTRY, RDM_MEASURE_REGISTRY
from bids_dnn.spec import AnalysisSpec
from bids_dnn.stats.correction import CORRECTIONS
from bids_dnn.stats.group_tests import GROUP_TESTS
from bids_dnn.timeseries.ceiling import REPEAT_CEILINGS

REFERENCES = {
    "rsa": "Kriegeskorte N, Mur M, Bandettini P (2008). Representational similarity analysis - connecting the "
           "branches of systems neuroscience. Front Syst Neurosci 2:4. doi:10.3389/neuro.06.004.2008",
    "crossnobis": "Walther A, Nili H, Ejaz N, Alink A, Kriegeskorte N, Diedrichsen J (2016). Reliability of "
                  "dissimilarity measures for multi-voxel pattern analysis. NeuroImage 137:188-200. "
                  "doi:10.1016/j.neuroimage.2015.12.012",
    "nili": "Nili H, Wingfield C, Walther A, Su L, Marslen-Wilson W, Kriegeskorte N (2014). A toolbox for "
            "representational similarity analysis. PLoS Comput Biol 10(4):e1003553. doi:10.1371/journal.pcbi.1003553",
    "fdr": "Benjamini Y, Hochberg Y (1995). Controlling the false discovery rate: a practical and powerful approach "
           "to multiple testing. J R Stat Soc B 57(1):289-300. doi:10.1111/j.2517-6161.1995.tb02031.x",
    "permutation": "Nichols TE, Holmes AP (2002). Nonparametric permutation tests for functional neuroimaging: a "
                   "primer with examples. Hum Brain Mapp 15(1):1-25. doi:10.1002/hbm.1058",
    "tfce": "Smith SM, Nichols TE (2009). Threshold-free cluster enhancement: addressing problems of smoothing, "
            "threshold dependence and localisation in cluster inference. NeuroImage 44(1):83-98. "
            "doi:10.1016/j.neuroimage.2008.03.061",
    "encoding": "Naselaris T, Kay KN, Nishimoto S, Gallant JL (2011). Encoding and decoding in fMRI. NeuroImage "
                "56(2):400-410. doi:10.1016/j.neuroimage.2010.07.073",
    "himalaya": "Dupré la Tour T, Eickenberg M, Nunez-Elizalde AO, Gallant JL (2022). Feature-space selection with "
                "banded ridge regression. NeuroImage 264:119728. doi:10.1016/j.neuroimage.2022.119728",
    "cka": "Kornblith S, Norouzi M, Lee H, Hinton G (2019). Similarity of neural network representations revisited. "
           "Proceedings of the 36th International Conference on Machine Learning (ICML), PMLR 97:3519-3529. "
           "arXiv:1905.00414",
    "hsic": "Gretton A, Bousquet O, Smola A, Schoelkopf B (2005). Measuring statistical dependence with "
            "Hilbert-Schmidt norms. Algorithmic Learning Theory (ALT 2005), LNCS 3734:63-77. doi:10.1007/11564089_7",
    "hsic_unbiased": "Song L, Smola A, Gretton A, Bedo J, Borgwardt K (2012). Feature selection via dependence "
                     "maximization. J Mach Learn Res 13:1393-1434",
    "u_centring": "Szekely GJ, Rizzo ML (2014). Partial distance correlation with methods for dissimilarities. "
                  "Ann Stat 42(6):2382-2412. doi:10.1214/14-AOS1255",
    "vovk2020": "Vovk V, Wang R (2020). Combining p-values via averaging. Biometrika 107(4):791-808. "
                "doi:10.1093/biomet/asaa027",
    "kay2008": "Kay KN, Naselaris T, Prenger RJ, Gallant JL (2008). Identifying natural images from human brain "
               "activity. Nature 452(7185):352-355. doi:10.1038/nature06713",
    "horikawa2017": "Horikawa T, Kamitani Y (2017). Generic decoding of seen and imagined objects using hierarchical "
                    "visual features. Nat Commun 8:15037. doi:10.1038/ncomms15037",
    "alain2016": "Alain G, Bengio Y (2016). Understanding intermediate layers using linear classifier probes. "
                 "arXiv:1610.01644",
    "hewitt2019": "Hewitt J, Liang P (2019). Designing and interpreting probes with control tasks. Proceedings of "
                  "EMNLP-IJCNLP 2019, 2733-2743. doi:10.18653/v1/D19-1275",
    "balanced_accuracy": "Brodersen KH, Ong CS, Stephan KE, Buhmann JM (2010). The balanced accuracy and its posterior "
                         "distribution. 20th International Conference on Pattern Recognition (ICPR), 3121-3124. "
                         "doi:10.1109/ICPR.2010.764",
    "ojala2010": "Ojala M, Garriga GC (2010). Permutation tests for studying classifier performance. J Mach Learn Res "
                 "11:1833-1863",
    "simonyan2014": "Simonyan K, Vedaldi A, Zisserman A (2014). Deep inside convolutional networks: visualising image "
                    "classification models and saliency maps. ICLR 2014 workshop. arXiv:1312.6034",
    "smilkov2017": "Smilkov D, Thorat N, Kim B, Viegas F, Wattenberg M (2017). SmoothGrad: removing noise by adding "
                   "noise. arXiv:1706.03825",
    "nilearn": "Abraham A, Pedregosa F, Eickenberg M, Gervais P, Mueller A, Kossaifi J, Gramfort A, Thirion B, "
               "Varoquaux G (2014). Machine learning for neuroimaging with scikit-learn. Front Neuroinform 8:14. "
               "doi:10.3389/fninf.2014.00014",
    "huth2016": "Huth AG, de Heer WA, Griffiths TL, Theunissen FE, Gallant JL (2016). Natural speech reveals the "
                "semantic maps that tile human cerebral cortex. Nature 532(7600):453-458. doi:10.1038/nature17637",
    "nunez2019": "Nunez-Elizalde AO, Huth AG, Gallant JL (2019). Voxelwise encoding models with non-spherical "
                 "multivariate normal priors. NeuroImage 197:482-492. doi:10.1016/j.neuroimage.2019.04.012",
    "sahani2003": "Sahani M, Linden JF (2003). How linear are auditory cortical responses? Advances in Neural "
                  "Information Processing Systems 15 (NIPS 2002), 125-132",
    "schoppe2016": "Schoppe O, Harper NS, Willmore BDB, King AJ, Schnupp JWH (2016). Measuring the performance of "
                   "neural models. Front Comput Neurosci 10:10. doi:10.3389/fncom.2016.00010",
}

#: noise ceiling of a naturalistic design (a key of bids_dnn.timeseries.REPEAT_CEILINGS) -> what it is, and the
#: references of its formula
REPEAT_CEILING_TEXT = {
    "explainable_variance": (
        "the explainable variance of each voxel, i.e. the signal power of the repeated presentations (the variance "
        "of the stimulus-locked response, estimated without bias from the repeats, each z-scored) divided by the "
        "mean variance of one presentation: the R2 a perfect model of the stimulus could reach on a single "
        "presentation (unbiased: about 0, and negative about half of the time, in voxels without a stimulus-locked "
        "signal)", ("sahani2003",)),
    "cc_max": (
        "CC_max of each voxel, i.e. the square root of the signal power of the repeated presentations (each "
        "z-scored) over the variance of their mean: the largest Pearson r any model can reach against the mean of "
        "the repeats", ("schoppe2016",)),
}
assert set(REPEAT_CEILING_TEXT) == set(REPEAT_CEILINGS)

#: HSIC estimator -> the references of its formula (the labels come from bids_dnn.cka.registry)
HSIC_CITATIONS = {"unbiased": ("hsic_unbiased", "u_centring"), "plain": ("hsic",)}
assert set(HSIC_CITATIONS) == set(HSIC_ESTIMATORS)

HRF_TEXT = {"spm": "SPM canonical", "glover": "Glover", "spm + derivative": "SPM canonical plus temporal derivative",
            "glover + derivative": "Glover plus temporal derivative"}
COMPARISON_TEXT = {name: measure.label for name, measure in COMPARISON_MEASURE_REGISTRY.items()}
MEASURE_TEXT = {name: measure.label for name, measure in RDM_MEASURE_REGISTRY.items()}
CORRECTION_TEXT = {name: correction.label for name, correction in CORRECTIONS.items()}


@dataclass
class Citer:
    """Numbers references in order of first citation."""

    order: list[str] = field(default_factory=list)

    def __call__(self, *keys: str) -> str:
        numbers = []
        for key in keys:
            if key not in self.order:
                self.order.append(key)
            numbers.append(self.order.index(key) + 1)
        return "[" + ", ".join(str(n) for n in numbers) + "]"

    def references(self) -> list[str]:
        return [REFERENCES[key] for key in self.order]



#: how the methods text names each GLM engine (``brain.glm.engine``)
GLM_ENGINE_TEXT = {
    "fast": "(design matrices from nilearn; bids_dnn's batched solver, equal to nilearn's OLS / AR(1) estimates "
            "to 1e-8)",
    "nilearn": "in nilearn",
}

def _join(items: list[str]) -> str:
    items = [str(i) for i in items if str(i)]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _model_text(spec: AnalysisSpec, layers: dict[str, list[str]]) -> str:
    parts = []
    for model in spec.models:
        weights = f"random weights (initialisation seed {model.init_seed})" if model.weights == "random" \
            else f"{model.weights} weights"
        names = layers.get(model.output_label) or ([model.layers] if isinstance(model.layers, str) else model.layers)
        transform = (f"resize {model.transform.resize}, centre crop {model.transform.crop}" if model.transform
                     else "the weights' own preprocessing (ImageNet normalisation by default)")
        parts.append(f"{model.name} ({model.source}, {weights}; {transform}; layers {', '.join(names)}; "
                     f"stored as {model.dtype})")
    return "; ".join(parts)


def _cka_text(spec: AnalysisSpec, cite: Citer) -> str:
    """The methods paragraph of the participant-level CKA (``analyses.cka``)."""
    cka = spec.analyses.cka
    cka_reference = cite("cka")
    kernel = CKA_KERNELS[cka.kernel].label + (f" (sigma {cka.sigma:g})" if CKA_KERNELS[cka.kernel].uses_sigma else "")
    estimator = f"{HSIC_ESTIMATORS[cka.estimator].label} {cite(*HSIC_CITATIONS[cka.estimator])}"
    permutations = (f"p-values come from {cka.permutations} permutations of the layer's stimulus labels (rows and "
                    "columns of its Gram matrix together), one-sided: p = (1 + #(null >= observed)) / (1 + n)"
                    if cka.permutations else "no permutation test was run")
    bootstrap = (f"{cka.bootstrap} stimulus-bootstrap resamples (rows and columns of both Gram matrices, kernels "
                 "from all stimuli" + ("; pairs of copies of one stimulus left out like the diagonal"
                                       if HSIC_ESTIMATORS[cka.estimator].unbiased else "")
                 + f") gave {spec.statistics.ci:.0%} percentile intervals" if cka.bootstrap
                 else "no bootstrap intervals were computed")
    layers = (" Layer x layer CKA between the activations of all models' layers was computed with the same kernel "
              "and estimator." if cka.across_models else "")
    return (f"Centered kernel alignment (CKA) {cka_reference} compared each ROI's run-mean response patterns (stimuli x "
            f"voxels) with each layer's activations (stimuli x units) through their stimulus x stimulus Gram "
            f"matrices: {kernel}, {estimator}; CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), computed in float64. "
            f"Participant-level {permutations}; {bootstrap}.{layers}")


def _alphas_text(alphas: list[float]) -> str:
    if len(alphas) == 1:
        return f"penalty {alphas[0]:.3g}"
    return f"{len(alphas)} penalties from {min(alphas):.3g} to {max(alphas):.3g}"


def _cv_text(section: Any) -> str:
    """The outer folds of a ``CrossValidatedRidgeSpec`` section."""
    return {"auto": "leave-one-run-out when runs hold disjoint stimuli, else seeded "
                    f"{section.n_folds}-fold over stimuli",
            "leave_one_run_out": "leave-one-run-out",
            "kfold": f"seeded {section.n_folds}-fold over stimuli"}[section.cv]


def _scaling_text(section: Any) -> str:
    return ("predictors z-scored with the training mean and SD" if section.standardize
            else "predictors centred on the training mean")


def _decoding_text(spec: AnalysisSpec, cite: Citer) -> str:
    """The methods paragraph of decoding and identification (``analyses.decoding``)."""
    dec = spec.analyses.decoding

    def permutations() -> str:  # called where it is cited, so that references are numbered in order
        if not dec.permutations:
            return "no permutation test was run"
        return (f"p-values come from {dec.permutations} permutations of each test fold's candidate labels with the "
                "decoders (and so the decoded features) fixed, one-sided: p = (1 + #(null >= observed)) / (1 + n) "
                "per fold; the folds' p-values were merged as min(1, 2 x their mean), valid under any dependence "
                f"between folds {cite('vovk2020')} (the folds' decoders share training stimuli, so one pooled null "
                "would be too narrow); this test is conservative")

    return (f"Decoding and identification {cite('kay2008', 'horikawa2017')}: every unit of each layer's activations "
            f"(stimuli x units) was predicted from each ROI's run-mean response patterns (stimuli x voxels) by ridge "
            f"regression (himalaya {cite('himalaya')}): {_alphas_text(dec.alphas)}, a penalty per unit chosen by "
            f"{dec.inner_folds}-fold inner cross-validation on the training stimuli, {_scaling_text(dec)}; outer "
            f"cross-validation: {_cv_text(dec)}, so that no stimulus is in both a training and a test fold. Each "
            "held-out stimulus was identified among the stimuli of its own test fold (none of which its decoder saw) "
            "from its decoded feature vector by Pearson correlation with each of their actual features, after "
            "subtracting each unit's mean over the tested stimuli: pairwise accuracy is the share of the fold's other "
            "stimuli whose features correlate less with the decoded vector than the stimulus's own (ties count half; "
            f"chance 0.5) {cite('horikawa2017')}, top-1 accuracy the share of stimuli whose own features correlate "
            f"best (chance 1 / stimuli in the fold) {cite('kay2008')}. Participant-level {permutations()}. The decoding "
            "of the units is summarised by the held-out Pearson r of each unit (within test folds, averaged over "
            "folds).")


def _probing_text(spec: AnalysisSpec, cite: Citer) -> str:
    """The methods paragraph of probing (``analyses.probing``)."""
    probe = spec.analyses.probing
    names = ", ".join(f"'{a}'" + (f" ({probe.kinds[a]})" if a in probe.kinds else "") for a in probe.annotations)
    sources = []
    if probe.layers:
        sources.append(f"each layer's activations (seeded {probe.n_folds}-fold cross-validation over the stimuli, once "
                       "per run)")
    if probe.rois:
        sources.append(f"each ROI's run-mean response patterns (per participant; outer folds: {_cv_text(probe)})")
    probes, balanced = cite("alain2016"), cite("balanced_accuracy")  # numbered in the order of the text
    permutations = (f"Each probe's p-value comes from {probe.permutations} permutations of the annotation's labels, "
                    f"each rerunning the whole cross-validation, penalty choice included {cite('ojala2010')}; "
                    "one-sided, p = (1 + #(null >= observed)) / (1 + n)" if probe.permutations
                    else "No permutation test was run")
    plural = "s" if len(probe.annotations) > 1 else ""
    return (f"Linear probes {probes} read the stimulus annotation{plural} {names} from "
            f"{' and from '.join(sources) or 'nothing (layers and rois both off)'}. Categorical annotations: a "
            "one-vs-rest ridge classifier (as scikit-learn's RidgeClassifier), scored by the balanced accuracy of the "
            f"pooled held-out predictions {balanced} (chance 1 / number of classes); continuous "
            "annotations: ridge regression, scored by the held-out Pearson r within each test fold, averaged over "
            f"folds (chance 0). One penalty per outer fold from {_alphas_text(probe.alphas)}, chosen by "
            f"{probe.inner_folds}-fold inner cross-validation on the training stimuli ({_scaling_text(probe)}). "
            f"{permutations}. Layers and regions share one scale; a probe measures "
            f"linearly decodable information, not information the network or region uses {cite('hewitt2019')}.")


def _drivers_text(spec: AnalysisSpec, cite: Citer) -> str:
    """The methods paragraph of "what drives a region" (``analyses.drivers``)."""
    drivers = spec.analyses.drivers
    saliency = drivers.saliency
    model = drivers.model or spec.models[0].output_label
    text = (f"What drives each region: each ROI's mean response to every stimulus (run-mean estimates averaged over "
            f"its voxels) was predicted from each layer of {model} by ridge regression "
            f"({_alphas_text(drivers.alphas)}, penalty by {drivers.inner_folds}-fold inner cross-validation, "
            f"{_scaling_text(drivers)}; outer cross-validation: {_cv_text(drivers)}). The layer with the highest "
            "held-out r (within test folds, averaged over folds) was kept, and the stimuli were ranked by their "
            f"measured and their held-out predicted response; the {drivers.n_top} highest and lowest are shown.")
    if saliency.enabled:
        methods = []
        if "vanilla" in saliency.methods:
            methods.append(f"the vanilla gradient {cite('simonyan2014')}")
        if "smoothgrad" in saliency.methods:
            methods.append(f"SmoothGrad {cite('smilkov2017')} (the gradient averaged over {saliency.n_samples} copies "
                           f"of the image with Gaussian noise of SD {saliency.noise_level:g} times the image's range, "
                           f"seed statistics.seed)")
        text += (f" Saliency maps: a ridge readout of the ROI's mean response from that layer's activations (penalty "
                 f"by {drivers.inner_folds}-fold cross-validation, fitted on all stimuli) was differentiated through "
                 f"the network with respect to the input image, for the {saliency.n_stimuli} stimuli with the highest "
                 f"held-out predicted response: {_join(methods)}; each map is the largest absolute gradient over the "
                 "colour channels (image stimuli only).")
    return text


def _timeline_model_text(spec: AnalysisSpec, layers: dict[str, list[str]], words: bool) -> str:
    """The models of a naturalistic design: name, source, weights, layers (and, for stories, the
    pooling of a word's tokens and the context read before it)."""
    parts = []
    for model in spec.models:
        weights = f"random weights (initialisation seed {model.init_seed})" if model.weights == "random" \
            else f"{model.weights} weights"
        names = layers.get(model.output_label) or ([model.layers] if isinstance(model.layers, str) else model.layers)
        reading = (f"; '{model.pooling}' pooling of each word's tokens, at most {model.context_tokens} tokens of the "
                   "run's preceding words as context" if words else "")
        parts.append(f"{model.name} ({model.source}, {weights}{reading}; layers {', '.join(names)}; "
                     f"stored as {model.dtype})")
    return "; ".join(parts)


def naturalistic_methods_blocks(spec: AnalysisSpec, level: str, facts: dict[str, Any]) -> list[Block]:
    """Paragraphs and the reference list of the methods section of a naturalistic design
    (``design: naturalistic``: voxelwise encoding of the BOLD time series of films and stories).

    Parameters
    ----------
    spec : AnalysisSpec
    level : {"participant", "group"}
    facts : dict
        May hold: task, layers ({model: [layer]}), rois ([name]), n_runs, t_r (s), n_subjects,
        noise_ceiling (bool: some run repeats a stimulus; None: not known), ceiling_kind (a key of
        :data:`REPEAT_CEILING_TEXT`, default ``"explainable_variance"``), has_banded and
        has_group_maps (bools: outputs that exist).

    Returns
    -------
    list of Block
        Paragraphs, then the "References" heading and the numbered references.
    """
    cite = Citer()
    nat = spec.analyses.naturalistic
    glm = spec.brain.glm
    stats = spec.statistics
    words = nat.word_column is not None
    paragraphs: list[str] = []
    runs = f"{facts['n_runs']} runs" if facts.get("n_runs") else "Every run"
    if words:
        timeline = (f"one sample per word of the events column '{nat.word_column}' at the word's onset, each word "
                    "read by the text model after the run's preceding words")
        resampling = ("each word an impulse at its onset (the kernel sum, not normalised: the word rate is part of "
                      "the signal)")
    else:
        timeline = (f"the film that each stim_file row of the events presents from its onset, its frames sampled at "
                    f"{spec.stimuli.video.fps:g} frames per second (stimuli.video.fps)")
        resampling = "the frames a regularly sampled signal (a weighted average: the kernel sum normalised to 1)"
    paragraphs.append(
        f"Naturalistic design, task '{facts.get('task', '?')}': {runs} of continuous stimulation were modelled as "
        f"time series {cite('huth2016')}. The stimulus timeline of each run was {timeline}. DNN activations were "
        f"extracted once per film or story with {_timeline_model_text(spec, facts.get('layers', {}), words)}.")
    t_r = facts.get("t_r")
    delays = (f"convolved with the SPM canonical HRF within each run" if nat.hrf else
              f"repeated at FIR delays of {', '.join(str(d) for d in nat.delays)} TR"
              f"{'s' if nat.delays != [1] else ''} within each run (nothing crosses a run boundary)")
    paragraphs.append(
        f"Each layer's features were resampled to the acquisition times (TR x k{f', TR {t_r:g} s' if t_r else ''}) "
        f"by Lanczos interpolation with {nat.lanczos_window} lobes and the TR's Nyquist frequency as cutoff "
        f"{cite('huth2016')}, {resampling}; then z-scored per run and {delays}.")
    confounds = ", ".join(glm.confounds) if glm.confounds else "none"
    drift = (f"cosine drifts below {glm.high_pass_hz:g} Hz" if glm.drift_model == "cosine" and glm.high_pass_hz > 0
             else "no high-pass filter")
    region = "in the brain mask" if nat.region == "brain" else "in the union of the ROIs"
    paragraphs.append(
        f"The BOLD {region} (fMRIPrep, {spec.brain.space}) was cleaned per run of the confounds ({confounds}), a "
        f"linear trend and {drift} (nilearn signal.clean {cite('nilearn')}) and z-scored per run.")
    pca = f"; PCA to {nat.pca} components of each feature space, fitted on the training runs only" if nat.pca else ""
    paragraphs.append(
        f"Every voxel was fitted by ridge regression (himalaya {cite('himalaya')}) with leave-one-run-out "
        "cross-validation: runs presenting the same stimulus were kept in one fold, never split between training "
        f"and test. The penalty was chosen per voxel from {_alphas_text(nat.alphas)} by {nat.inner_folds}-fold inner "
        f"cross-validation over the training runs (whole runs held out){pca}. Scores: the held-out Pearson r (mean "
        "over the held-out runs of the r within each run) and the R2 of the out-of-fold predictions pooled over "
        "runs, per layer; a voxel's best layer is the one with the highest held-out r. The figure of the "
        "best-predicted voxel shows its prediction from the runs left out, refitted alone with the same folds.")
    if nat.banded or facts.get("has_banded"):
        paragraphs.append(
            f"Banded ridge regression {cite('nunez2019', 'himalaya')} fitted all layers of a model together, one "
            "penalty per layer (feature space) and voxel (random search over the kernel weights, inner "
            "cross-validation as above), and split each voxel's held-out R2 among the layers.")
    kind = str(facts.get("ceiling_kind") or "explainable_variance")
    ceiling_text, ceiling_refs = REPEAT_CEILING_TEXT.get(kind, REPEAT_CEILING_TEXT["explainable_variance"])
    if facts.get("noise_ceiling") is False:
        paragraphs.append("No run repeats a stimulus, so no noise ceiling was computed.")
    else:
        paragraphs.append(
            f"Noise ceiling (from the runs that repeat a stimulus: the same films, or words at the same onsets): "
            f"{ceiling_text} {cite(*ceiling_refs)}; averaged over the sets of repeated runs.")
    if level == "group":
        n_sub = facts.get("n_subjects")
        test = GROUP_TESTS[stats.group_test].label
        correction = CORRECTION_TEXT[stats.correction] + " correction"
        if stats.correction == "fdr_bh":
            correction += f" {cite('fdr')}"
        paragraphs.append(
            f"At the group level{f' ({n_sub} participants)' if n_sub else ''}, each participant's ROI-mean held-out r "
            f"was tested against 0 with a {test} across participants (alternative '{stats.alternative}'); "
            f"{stats.bootstrap} participant-bootstrap resamples gave {stats.ci:.0%} percentile confidence intervals of "
            f"the mean. p-values were adjusted across ROI x layer within each model with {correction} at alpha "
            f"{stats.alpha:g}. The best layer per ROI was chosen among the layers significant after correction by "
            "leave-one-participant-out cross-validation; an ROI without a significant layer has no best layer.")
        if facts.get("has_group_maps", True):
            fwe = (f"family-wise error was controlled by {stats.map_permutations} sign-flip permutations with the "
                   f"maximum statistic (max-T) {cite('permutation')}" if stats.map_permutations
                   else "no permutation correction was run (map_permutations: 0)")
            tfce = (f" Threshold-free cluster enhancement {cite('tfce')} was computed on the t maps with its own "
                    "max-statistic permutation correction." if stats.map_tfce else "")
            paragraphs.append(
                "Group maps: the participants' held-out r maps were Fisher-z transformed and tested voxelwise with a "
                f"one-sample t-test (alternative '{stats.alternative}') in the voxels with a value in every "
                f"participant; {fwe}; Benjamini-Hochberg FDR {cite('fdr')} is given as well.{tfce} Maps are shown "
                f"thresholded at corrected p <= {stats.alpha:g}.")
    else:
        paragraphs.append("Group-level statistics (tests across participants, corrections, group maps) are described "
                          "in the group report.")
    paragraphs.append(f"Every random step is seeded: statistics.seed {stats.seed}.")
    blocks = [Block("paragraph", text=p) for p in paragraphs]
    blocks.append(Block("heading", text="References"))
    blocks.append(Block("references", items=cite.references()))
    return blocks


def methods_blocks(spec: AnalysisSpec, level: str, facts: dict[str, Any]) -> list[Block]:
    """Paragraphs and the reference list of the methods section.

    ``facts`` may hold: task, n_stimuli, n_categories, brain_rdm (resolved measure), n_runs,
    n_subjects, layers ({model: [layer]}), rois ([name]), has_searchlight, has_encoding,
    has_group_maps, has_decoding, has_probing, has_drivers (bools: outputs that exist). A
    naturalistic design (``spec.design``) gets :func:`naturalistic_methods_blocks`.
    """
    if spec.design == "naturalistic":
        return naturalistic_methods_blocks(spec, level, facts)
    cite = Citer()
    glm = spec.brain.glm
    analyses = spec.analyses
    searchlight_on = analyses.searchlight.enabled or bool(facts.get("has_searchlight"))
    encoding_on = analyses.encoding.enabled or bool(facts.get("has_encoding"))
    decoding_on = analyses.decoding.enabled or bool(facts.get("has_decoding"))
    probing_on = analyses.probing.enabled or bool(facts.get("has_probing"))
    drivers_on = analyses.drivers.enabled or bool(facts.get("has_drivers"))
    stats = spec.statistics
    paragraphs: list[str] = []

    n_stim = facts.get("n_stimuli")
    n_cat = facts.get("n_categories")
    stim = f"{n_stim} stimuli" if n_stim else "The stimuli"
    stim += f" in {n_cat} categories" if n_cat else ""
    paragraphs.append(
        f"{stim} of task '{facts.get('task', '?')}' were taken from the events files (stimulus order: by category, "
        f"then file name). DNN activations were extracted with {_model_text(spec, facts.get('layers', {}))}; "
        f"transformer tokens were reduced with the '{spec.models[0].token_policy}' policy.")

    confounds = ", ".join(glm.confounds) if glm.confounds else "none"
    scrub = f"volumes with framewise displacement above {glm.scrub_fd} mm censored" if glm.scrub_fd else "no censoring"
    method = ("least-squares-all (LSA: one regressor per stimulus)" if glm.method == "lsa"
              else "least-squares-separate (LSS: one model per trial)")
    if spec.brain.input == "fmriprep":
        paragraphs.append(
            f"Stimulus responses were estimated per run from the fMRIPrep-preprocessed BOLD ({spec.brain.space}"
            f"{', res-' + spec.brain.resolution if spec.brain.resolution else ''}) with a first-level GLM "
            f"{GLM_ENGINE_TEXT.get(glm.engine, glm.engine)} {cite('nilearn')}: {method}, "
            f"{HRF_TEXT.get(glm.hrf, glm.hrf)} HRF, {glm.drift_model} drift model "
            f"(high-pass {glm.high_pass_hz:g} Hz), {glm.noise_model.upper()} noise model, confounds: {confounds}; "
            f"{scrub}; non-steady-state volumes {'dropped' if glm.drop_non_steady_state else 'kept'}. Patterns are the "
            f"{'effect sizes' if glm.output == 'effect' else 't values'} of the stimulus regressors.")
    else:
        paragraphs.append("Stimulus response patterns were read from ready-made beta maps.")

    if spec.rois is not None:
        source = f"the atlas {spec.rois.atlas}" if spec.rois.atlas else f"the mask files in {spec.rois.masks}"
        labels = f" (labels: {', '.join(spec.rois.labels)})" if spec.rois.labels else ""
        paragraphs.append(f"Regions of interest came from {source}{labels}, resampled to the BOLD grid (nearest "
                          "neighbour) and intersected with the brain mask of every run.")

    measure = facts.get("brain_rdm") or spec.rdm.brain
    if measure == "auto":
        measure_text = ("crossnobis distance across runs when a subject has at least two complete runs, "
                        f"else correlation distance {cite('crossnobis')}")
    else:
        measure_text = MEASURE_TEXT.get(measure, measure)
        if measure == "crossnobis":
            measure_text += f" {cite('crossnobis')}"
    if spec.brain.input == "betas" or spec.brain.noise_normalization == "none":
        noise_text = "without noise normalisation" + (
            " (ready-made response estimates, no GLM residuals)" if spec.brain.input == "betas" else "")
    else:
        noise_text = (f"after {spec.brain.noise_normalization} noise normalisation with a "
                      f"{spec.brain.noise_estimator.replace('_', ' ')} estimate of the noise covariance from the GLM "
                      "residuals")
    paragraphs.append(
        f"Brain RDMs were computed per ROI with the {measure_text}, {noise_text}. Model RDMs used the "
        f"{MEASURE_TEXT.get(spec.rdm.model, spec.rdm.model)} between the stimuli's activation patterns of each "
        f"layer {cite('rsa')}.")

    if analyses.rsa.enabled:
        perm = (f"Participant-level p-values come from {analyses.rsa.permutations} permutations of the stimulus labels "
                "(rows and columns of the model RDM together), one-sided: p = (1 + #(null >= observed)) / (1 + n) "
                f"{cite('nili')}." if analyses.rsa.permutations else "No permutation test was run.")
        paragraphs.append(
            f"ROI RSA compared brain and model RDMs with the "
            f"{COMPARISON_TEXT.get(analyses.rsa.comparison, analyses.rsa.comparison)} of their upper triangles "
            f"{cite('rsa')}. {perm}")

    if analyses.cka.enabled:
        paragraphs.append(_cka_text(spec, cite))

    if decoding_on:
        paragraphs.append(_decoding_text(spec, cite))
    if probing_on:
        paragraphs.append(_probing_text(spec, cite))
    if drivers_on:
        paragraphs.append(_drivers_text(spec, cite))

    if searchlight_on:
        sl = analyses.searchlight
        frac = f" and at least {sl.min_fraction:.0%} of the full sphere" if sl.min_fraction else ""
        rdm = "the ROI measure" if sl.rdm == "auto" else MEASURE_TEXT.get(sl.rdm, sl.rdm)
        paragraphs.append(
            f"Searchlight RSA {cite('rsa')} moved a sphere of radius {sl.radius_mm:g} mm through the brain mask "
            f"(centres with at least {sl.min_voxels} in-mask voxels{frac}). Sphere RDMs ({rdm}; patterns noise-"
            f"normalised per voxel by the residual standard deviation) were compared with each layer's model RDM by "
            f"{COMPARISON_TEXT.get(sl.comparison, sl.comparison)}; the score is written at the sphere's centre"
            f"{' (also as Fisher z)' if sl.fisher_z else ''}.")

    if encoding_on:
        enc = analyses.encoding
        alphas = f"{len(enc.alphas)} penalties from {min(enc.alphas):.3g} to {max(enc.alphas):.3g}"
        cv = {"auto": "leave-one-run-out when runs hold disjoint stimuli, else seeded "
                      f"{enc.n_folds}-fold over stimuli",
              "leave_one_run_out": "leave-one-run-out", "kfold": f"seeded {enc.n_folds}-fold over stimuli"}[enc.cv]
        paragraphs.append(
            f"Voxelwise encoding models {cite('encoding')} predicted each voxel's stimulus responses from each layer's "
            f"activations with ridge regression (himalaya {cite('himalaya')}): {alphas}, chosen per voxel by "
            f"{enc.inner_folds}-fold inner cross-validation; outer cross-validation: {cv}, so that no stimulus is in "
            f"both a training and a test fold"
            f"{f'; PCA to {enc.pca} components fitted on the training stimuli only' if enc.pca else ''}; voxels: "
            f"{'whole brain mask' if enc.region == 'brain' else 'union of the ROIs'}"
            f"{'; banded ridge over all layers of a model split the explained variance per layer' if enc.banded else ''}"
            ". Scores are the held-out Pearson r and R2; the noise ceiling is the split-half reliability of each "
            "voxel's stimulus profile (odd vs even runs, Spearman-Brown corrected).")

    if level == "group":
        n_sub = facts.get("n_subjects")
        test = GROUP_TESTS[stats.group_test].label
        correction = CORRECTION_TEXT[stats.correction] + " correction"
        if stats.correction == "fdr_bh":
            correction += f" {cite('fdr')}"
        if analyses.rsa.enabled:
            paragraphs.append(
                f"At the group level{f' ({n_sub} participants)' if n_sub else ''}, RSA scores were tested against zero "
                f"with a {test} across participants (alternative '{stats.alternative}'); {stats.bootstrap} "
                f"participant-bootstrap resamples gave {stats.ci:.0%} percentile confidence intervals of the mean. "
                f"p-values were adjusted across ROI x layer within each model with {correction} at alpha "
                f"{stats.alpha:g}. Noise ceilings: lower = each participant's RDM vs the mean RDM of the others, "
                f"upper = vs the mean of all {cite('nili')}. The best layer per ROI was chosen among the layers "
                "significant after correction by leave-one-participant-out cross-validation (selected on the others, "
                "scored on the held-out one); an ROI without a significant layer has no best layer. "
                "Layers were compared pairwise with paired t- and Wilcoxon tests (two-sided, uncorrected).")
        if analyses.cka.enabled:
            paragraphs.append(
                f"CKA values were summarised across participants in the same way as the RSA scores: a {test} against "
                f"zero (alternative '{stats.alternative}'), {stats.bootstrap} participant-bootstrap resamples for "
                f"{stats.ci:.0%} percentile intervals, {correction} across ROI x layer within each model at alpha "
                f"{stats.alpha:g}, and the best layer per ROI chosen among the significant layers by "
                "leave-one-participant-out cross-validation."
                + (" The plain estimator is biased upwards, so these tests against zero are not meaningful."
                   if analyses.cka.estimator == "plain" else ""))
        if decoding_on:
            paragraphs.append(
                f"Pairwise identification accuracies were summarised across participants in the same way, testing the "
                f"accuracy minus its chance level 0.5 with a {test} (alternative '{stats.alternative}'), "
                f"{stats.bootstrap} participant-bootstrap "
                f"resamples for {stats.ci:.0%} percentile intervals, {correction} across ROI x layer within each model "
                f"at alpha {stats.alpha:g}, and the best layer per ROI chosen among the significant layers by "
                "leave-one-participant-out cross-validation.")
        if probing_on and analyses.probing.rois:
            paragraphs.append(
                f"ROI probe scores were tested against their chance level (1 / number of classes, or 0) with a {test} "
                f"of score minus chance across participants (alternative '{stats.alternative}'), {stats.bootstrap} "
                f"participant-bootstrap resamples for {stats.ci:.0%} percentile intervals and {correction} across "
                f"ROI x annotation at alpha {stats.alpha:g}.")
        if drivers_on:
            paragraphs.append(
                "For what drives each region across participants, each participant's measured and predicted ROI "
                "responses were z-scored over the stimuli, averaged across participants per stimulus, and ranked.")
        if searchlight_on or encoding_on:
            tfce = (f" Threshold-free cluster enhancement {cite('tfce')} was computed on the t maps with its own "
                    "max-statistic permutation correction." if stats.map_tfce else "")
            fwe = (f"family-wise error was controlled by {stats.map_permutations} sign-flip permutations with the "
                   f"maximum statistic (max-T) {cite('permutation')}" if stats.map_permutations
                   else "no permutation correction was run (map_permutations: 0)")
            paragraphs.append(
                "Group maps: participant maps of correlation scores were Fisher-z transformed and tested voxelwise "
                f"with a one-sample t-test (alternative '{stats.alternative}') in the voxels with a value in every "
                f"participant; {fwe}; Benjamini-Hochberg FDR {cite('fdr')} is given as well.{tfce} Maps are shown "
                f"thresholded at corrected p <= {stats.alpha:g}.")
    else:
        paragraphs.append("Group-level statistics (tests across participants, noise ceilings, corrections) are "
                          "described in the group report.")

    paragraphs.append(
        f"Every random step is seeded: statistics.seed {stats.seed}; participant permutations use "
        f"numpy SeedSequence([{stats.seed}, crc32(participant label)]), so a participant's numbers do not depend on "
        "which others were processed together.")
    blocks = [Block("paragraph", text=p) for p in paragraphs]
    blocks.append(Block("heading", text="References"))
    blocks.append(Block("references", items=cite.references()))
    return blocks
