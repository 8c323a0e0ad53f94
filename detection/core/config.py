"""The one place for defaults: a frozen dataclass tree with the paper's values, checked when built.

Section numbers (§N) refer to docs/recipe.md, which collects the SPP-net paper (He et al., TPAMI
2015), its official code (ShaoqingRen/SPP_net) and R-CNN's code. Where paper and official code
differ, both are a config value and the comment says which is which.

Every section checks its values when it is made (``__post_init__``): the type of each field from
its annotation (a ``Literal`` lists the allowed names; the command line reads its ``choices``
from them) and its range from the section's ``_rules``. A bad value raises :class:`ConfigError`,
whose one-line message names the option (``svm.C``) and what it allows. Options are addressed by
dotted keys: :meth:`SPPConfig.override` applies ``{"svm.C": 0.002}`` (values, or text as typed
on a command line), :func:`read_config_file` reads a YAML file of them, and
:meth:`SPPConfig.from_dict` reads a saved tree, refusing keys it does not know.

The whole tree is saved inside ``model.pt`` and each cache's metadata, so a model knows how it
was trained and a cache knows what made it (see :func:`fingerprint`).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import numbers
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from detection.core.errors import SppnetError

FIVE_SCALES = (480, 576, 688, 864, 1200)  # §4, paper; the official code uses 874 for 864
SINGLE_SCALE = (688,)  # §4
# Width of fresh fc6/fc7 (a backbone without a pretrained head). The paper's 4096 made the head
# cost 2.4x the conv layers at detection on a CPU (issue 8); pool+fc time per width in
# docs/results.md, "Fine-tuned head: width, cost and scoring".
FRESH_FC_WIDTH = 512

# -- allowed names (the command line's choices) ----------------------------------------------------
# §5: selective search's fast mode as R-CNN ran it, OpenCV's fast mode, or quality mode (ProposalConfig.mode)
ProposalMode = Literal["rcnn_fast", "opencv_fast", "quality"]
FeatureMode = Literal["spp", "rcnn"]
# §1; features/backbones.py builds them
BackboneName = Literal["efficientnet_lite0", "efficientnet_lite0_s32", "efficientnet_lite0_s16+s32",
                       "alexnet", "vgg16", "zf5"]
PaperOrOfficial = Literal["paper", "official"]  # a rule where the paper and the official code differ
# What the SVMs read: the rows of Table 9 (§7), and "ftfc7+pool5" (not in the paper): ftfc7 and pool5
# side by side, each L2-normalised per window (detection.detector.svm_layer_features)
FeatureLayer = Literal["pool5", "fc6", "fc7", "ftfc6", "ftfc7", "ftfc7+pool5"]
ScheduleName = Literal["official", "paper"]  # keys of SCHEDULES
ScaleSampling = Literal["random", "chosen"]
CachePrecision = Literal["float16", "int8"]  # how the conv cache stores maps (features/extractor.py)
AmpMode = Literal["off", "bf16", "fp16"]  # conv precision on CUDA (not in the paper): float32, or autocast to these
HeadPrecision = Literal["float32", "bf16"]  # the fc head's at detection (not in the paper)
FcInit = Literal["pytorch", "gaussian", "kaiming", "xavier"]  # fresh fc6/fc7 (features/head.py FC_INITS)
Scoring = Literal["svm", "softmax"]  # TestConfig.scoring
Stage = Literal["proposals", "conv", "finetune", "svm", "bbox"]  # the training stages, in pipeline order
CacheDtype = Literal["float32", "float16"]  # storage of the SVMs' cached hard negatives (§7)

BACKBONES: tuple[str, ...] = typing.get_args(BackboneName)
FEATURE_LAYERS: tuple[str, ...] = typing.get_args(FeatureLayer)
STAGES: tuple[str, ...] = typing.get_args(Stage)

# Fine-tuning schedules (§6), name: (base learning rate, iterations after which the rate drops ×0.1,
# the schedule's length). "official": 1e-3, ×0.1 at 30k and 60k of 90k (the solver's three 30k
# "vstep" phases); "paper": 1e-4 for 250k, then 1e-5 for 50k.
SCHEDULES: dict[str, tuple[float, tuple[int, ...], int]] = {
    "official": (1e-3, (30_000, 60_000), 90_000),
    "paper": (1e-4, (250_000,), 300_000),
}


class ConfigError(SppnetError, ValueError):
    """An option that is unknown, of the wrong type or out of range; ``key`` is its dotted name.

    The message is ``<where>: <problem>`` on one line, ``where`` being the key (``svm.C``) unless
    :meth:`at` names the place the value came from (a command-line flag, a file).
    """

    def __init__(self, key: str, problem: str, where: str | None = None):
        super().__init__(f"{where or key}: {problem}")
        self.key = key
        self.problem = problem

    def at(self, where: str) -> ConfigError:
        return ConfigError(self.key, self.problem, where)


# -- range rules -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """A range rule: ``text`` completes "must be ..." in the error message."""

    text: str
    test: Callable[[Any], bool]


def at_least(low: int) -> Check:
    return Check(f">= {low}", lambda value: value >= low)


def each(check: Check) -> Check:
    """The rule for a tuple: not empty, every item passing ``check``."""
    return Check(f"a non-empty list of integers {check.text}",
                 lambda values: len(values) > 0 and all(check.test(v) for v in values))


POSITIVE = Check("> 0", lambda value: value > 0)
FRACTION = Check("in [0, 1]", lambda value: 0 <= value <= 1)
BELOW_ONE = Check("in [0, 1)", lambda value: 0 <= value < 1)


class _Section:
    """A config section: ``__post_init__`` checks every field's type and range when it is made.

    Subclasses set ``_name`` (their key in :class:`SPPConfig`) and ``_rules`` (field -> Check);
    float fields must also be finite. ``None`` passes every rule where the annotation allows it.
    """

    _name = ""
    _rules: Mapping[str, Check] = {}

    def __post_init__(self) -> None:
        hints = _field_types(type(self))
        for f in dataclasses.fields(self):
            key = f"{self._name}.{f.name}"
            value = _typed(hints[f.name], getattr(self, f.name), key)
            object.__setattr__(self, f.name, value)  # made exact: int -> float, list -> tuple
            check = self._rules.get(f.name)
            if check is not None and value is not None and not check.test(value):
                raise ConfigError(key, f"must be {check.text}, got {show(value)}")


@dataclass(frozen=True)
class ProposalConfig(_Section):
    """Selective search (§5)."""

    # §5: selective search "fast" as R-CNN ran it ("rcnn_fast": selective_search_boxes.m, k in {50, 100},
    # min size k, HSV and Lab, two strategies), OpenCV's own fast mode ("opencv_fast": k in {150, 300,
    # 450}, min size 0: coarser, misses small objects; docs/benchmarks.md measures both) or "quality"
    mode: ProposalMode = "rcnn_fast"
    resize_width: int = 500  # R-CNN's demo runs selective search on the image resized to width 500 (0: not resized)
    # Windows narrower or shorter than this (at the proposal image size) are dropped. §5: R-CNN drops
    # those under 20 px (selective_search_boxes.m); that also drops every window that could find an
    # object thinner than about 10 px, so 8 is the default: on the realistic set recall at IoU 0.5
    # rose from 92.6% to 98.0% and the default detector's mAP by 2.7-3.4 points on two sets
    # (docs/results.md, "Smallest window"); 20 reproduces R-CNN's proposals.
    min_size: int = 8
    max_proposals: int = 2000  # about 2,000 windows per image
    # Guard, not part of the recipe: the proposal image's longer side is capped at this (0 = no
    # cap), so resizing a 2x300 px sliver to width 500 cannot make a 500x75000 image. With the
    # default width only images more than 4:1 tall are affected.
    max_side: int = 2000

    _name = "proposals"
    _rules = {"resize_width": at_least(0), "min_size": at_least(0), "max_proposals": at_least(1),
              "max_side": at_least(0)}


@dataclass(frozen=True)
class FeatureConfig(_Section):
    """Backbone, scales, projection and spatial pyramid (§1–§4)."""

    # "spp": conv layers once per image, windows pooled from the shared map (SPP-net);
    # "rcnn": each window cropped with context, warped and run through the conv layers (R-CNN, §11)
    mode: FeatureMode = "spp"
    backbone: BackboneName = "efficientnet_lite0"
    backbone_weights: str | None = None  # a local state-dict file; None = the backbone's default
    scales: tuple[int, ...] = SINGLE_SCALE  # shorter image side s; FIVE_SCALES for multi-scale
    # "paper": the scale whose scaled window area is closest to 224² (§4);
    # "official": expected side 208 = 13·16 px compared linearly with the scales (official code).
    scale_rule: PaperOrOfficial = "paper"
    paper_target_side: int = 224
    official_target_side: int = 208
    # "paper": x0' = floor((x0 - c0)/S) + 1, x1' = ceil((x1 - c0)/S) - 1 (appendix, with the offset c0);
    # "official": snap inward to cell centres with the 6.5 px offset o (§2).
    projection: PaperOrOfficial = "paper"
    official_offset: float = 6.5
    pyramid_levels: tuple[int, ...] = (1, 2, 3, 6)  # §3: 50 bins
    # How the conv cache stores maps (§4: the official cache is compressed, about 20 GB for VOC07;
    # not a paper setting): "float16" every value in fp16; "int8" each channel of each scale in 8-bit
    # steps of max|x|/127, half the disk (VOC07 trainval + flips at 5 scales: 19 GB instead of 38
    # with efficientnet_lite0), values within max|x|/254 of the computed ones (then held in fp16).
    cache_precision: CachePrecision = "float16"
    rcnn_context: int = 16  # R-CNN mode: pixels of context around each window before warping
    rcnn_batch_size: int = 128  # R-CNN mode: warped windows per conv batch
    # Not in the paper: the conv layers on CUDA under autocast, "bf16" or "fp16", with channels_last
    # tensors (features/backbones.py); "off" = float32. Other devices always run float32.
    amp: AmpMode = "off"

    _name = "features"
    _rules = {"scales": each(at_least(1)), "paper_target_side": at_least(1), "official_target_side": at_least(1),
              "pyramid_levels": each(at_least(1)), "rcnn_context": at_least(0), "rcnn_batch_size": at_least(1)}


@dataclass(frozen=True)
class FinetuneConfig(_Section):
    """Fine-tuning fc6 → fc7 → (K+1)-way fc8 on SPP features, conv layers frozen (§6)."""

    # fc6 and fc7 widths; None: a pretrained head's own (4096 for alexnet, vgg16, as the paper),
    # else FRESH_FC_WIDTH
    hidden: int | None = None
    # §6: the paper's fc6/fc7 use dropout 0.5 (set it for a pretrained head). A fresh head on a few
    # hundred images learned more with 0.25, half the foreground share below and twice the
    # iterations: ftfc7 + bb +1.6 and +2.7 mAP on two realistic sets (docs/results.md,
    # "Fine-tuning a fresh head")
    dropout: float = 0.25
    fc8_init_std: float = 0.01  # new fc8 ~ N(0, 0.01²)
    # fresh fc6/fc7 (no pretrained head): "pytorch", "gaussian" (Caffe's N(0, 0.005²)), "kaiming"
    # or "xavier" (features.head.FC_INITS)
    init: FcInit = "pytorch"
    batch_size: int = 128  # windows per mini-batch
    fg_fraction: float = 0.5  # half the windows foreground (§6 and the official code: 25%) ...
    fg_threshold: float = 0.5  # ... at max IoU >= 0.5
    bg_low: float = 0.1  # background: max IoU in [0.1, 0.5)
    bg_high: float = 0.5
    flip: bool = True  # horizontally flipped training images added
    # "random": a random scale per window while training (official code); "chosen": the §4 rule
    scale_sampling: ScaleSampling = "random"
    # a key of SCHEDULES; ``iterations`` shortens it proportionally, each step point at
    # floor(step · iterations / length) (a small default suits a CPU: the official schedule is 90k)
    schedule: ScheduleName = "official"
    iterations: int = 4000
    base_lr: float | None = None  # None: the schedule's (1e-3 official, 1e-4 paper)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0  # softmax loss targets; 0 = the paper's plain softmax loss
    bias_lr_multiplier: float = 2.0  # Caffe blobs_lr: 1, 2 on every fc layer
    # Weight decay on biases, as a multiple of ``weight_decay``. 0: R-CNN (weight_decay: 1, 0 on
    # every layer) and the official SPP fc8; the official fc6/fc7 leave it unset, which Caffe reads as 1.
    bias_decay_multiplier: float = 0.0
    checkpoint_every: int = 500
    seed: int = 0

    _name = "finetune"
    _rules = {"hidden": at_least(1), "dropout": BELOW_ONE, "fc8_init_std": POSITIVE, "batch_size": at_least(1),
              "fg_fraction": FRACTION, "fg_threshold": FRACTION, "bg_low": FRACTION, "bg_high": FRACTION,
              "iterations": at_least(1), "base_lr": POSITIVE, "momentum": BELOW_ONE, "weight_decay": at_least(0),
              "label_smoothing": BELOW_ONE,
              "bias_lr_multiplier": at_least(0), "bias_decay_multiplier": at_least(0),
              "checkpoint_every": at_least(1), "seed": at_least(0)}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bg_low >= self.bg_high:
            raise ConfigError("finetune.bg_low", f"must be below finetune.bg_high ({show(self.bg_high)}), "
                                                 f"got {show(self.bg_low)}")

    def weight_settings(self) -> dict[str, Any]:
        """This section as the fine-tuning fingerprints see it: what changes the weights.

        ``checkpoint_every`` (where checkpoints fall) changes no weight, so it reads 0 whatever its
        value; ``base_lr`` left to the schedule, ``init`` "pytorch" and ``label_smoothing`` 0 (the
        behaviour before they existed) are left out, so caches made before them stay valid.
        """
        view = {**_plain(self), "checkpoint_every": 0}
        for name, before in (("base_lr", None), ("init", "pytorch"), ("label_smoothing", 0.0)):
            if view[name] == before:
                del view[name]
        return view


@dataclass(frozen=True)
class SVMConfig(_Section):
    """Per-class linear SVMs with hard-negative mining (§7, R-CNN's recipe)."""

    # pool5 = the SPP vector; fc6/fc7 = the fc head before fine-tuning; ftfc6/ftfc7 = after (paper's best: ftfc7);
    # ftfc7+pool5 = ftfc7 and pool5 side by side (not in the paper): on two realistic sets ftfc7+pool5
    # + bb scored 0.8-0.9 points above ftfc7 + bb and 3.9-4.2 above pool5 (a fresh fc head, the
    # paper's was ImageNet-pretrained), for detection at 1.44x the conv time against ftfc7's 1.31x on
    # a CPU (docs/results.md, "Smallest window" and "Fine-tuning a fresh head")
    feature_layer: FeatureLayer = "ftfc7+pool5"
    feature_norm_target: float = 20.0  # features scaled by 20 / mean L2 norm
    norm_images: int = 200  # the mean norm is taken over up to 200 images ...
    norm_boxes_per_image: int = 200  # ... and 200 boxes in each
    norm_seed: int = 3
    C: float = 0.001  # liblinear -c 0.001
    positive_weight: float = 2.0  # liblinear -w1 2
    bias_multiplier: float = 10.0  # liblinear -B 10
    negative_overlap: float = 0.3  # negatives: IoU < 0.3 with every GT box of the class
    hard_negative_threshold: float = -1.0001  # after the first image, add negatives scoring above this
    evict_threshold: float = -1.2  # after a retrain, drop cached negatives scoring below this
    retrain_limit: int = 2000  # retrain once more than this many new negatives have accumulated
    max_iter: int = 10000
    # §7: R-CNN's roidb (rcnn/imdb/roidb_from_voc.m) makes every GT box a positive, difficult ones
    # included; False trains on non-difficult GT boxes only (this project's earlier behaviour)
    use_difficult: bool = True
    # §7: spp_train.m mines only one of the windows that land on the same cells at the same scale
    # (``dedup``: they have identical features); False mines every window
    dedup_windows: bool = True
    # §7: dtype of the cached hard negatives, "float32" or "float16" (half the memory; the features
    # are rounded to fp16 once, when cached). R-CNN kept float32 (MATLAB single).
    cache_dtype: CacheDtype = "float32"
    # Probabilities beside the margins (not in the paper; svm/calibration.py): after the SVMs, one
    # Platt sigmoid per class is fitted on the proposal windows of a seeded sample of training
    # images, a window counting as a correct detection of class j at IoU >= ``calibration_overlap``
    # with a class-j GT box (the devkit's criterion, §10).
    calibration_images: int = 100
    calibration_windows_per_image: int = 500
    calibration_overlap: float = 0.5
    calibration_seed: int = 5
    # >= 2: the margins the sigmoids are fitted on come from held-out models, each image's windows
    # scored by an SVM retrained without the images of its fold (svm.hard_negatives: held_out_folds),
    # as an unseen photo's would be. 0: the final SVMs' own margins. Measured on the realistic and
    # demo sets (docs/results.md, "Calibrated probabilities"), 3 folds were no better calibrated
    # than 0 and cost 3 more SVM trainings per class, so 0 is the default.
    calibration_folds: int = 0

    _name = "svm"
    _rules = {"feature_norm_target": POSITIVE, "norm_images": at_least(1), "norm_boxes_per_image": at_least(1),
              "norm_seed": at_least(0), "C": POSITIVE, "positive_weight": POSITIVE, "bias_multiplier": POSITIVE,
              "negative_overlap": FRACTION, "retrain_limit": at_least(0), "max_iter": at_least(1),
              "calibration_images": at_least(1), "calibration_windows_per_image": at_least(1),
              "calibration_overlap": FRACTION, "calibration_seed": at_least(0),
              "calibration_folds": Check("0 or >= 2", lambda value: value == 0 or value >= 2)}


@dataclass(frozen=True)
class BBoxConfig(_Section):
    """Ridge bounding-box regressors (§8, R-CNN's recipe)."""

    enabled: bool = True
    ridge_lambda: float = 1000.0  # R-CNN; the official SPP code uses 4000
    min_overlap: float = 0.6  # training windows: IoU > 0.6 with a GT box (R-CNN); official SPP code 0.5
    # §8: R-CNN's rcnn_train_bbox_regressor.m regresses towards every GT box, difficult ones
    # included; False uses non-difficult GT boxes only (this project's earlier behaviour)
    use_difficult: bool = True

    _name = "bbox"
    _rules = {"ridge_lambda": POSITIVE, "min_overlap": FRACTION}


@dataclass(frozen=True)
class TestConfig(_Section):
    """Test time (§9)."""

    # "svm": per-class linear SVMs on ``svm.feature_layer`` (R-CNN and SPP-net, §7); "softmax": the
    # fine-tuned head's own (K+1)-way softmax with the background column dropped (Fast R-CNN found
    # the two equal): needs feature layer ftfc7, and training skips the SVM stage
    scoring: Scoring = "svm"
    score_threshold: float = -1.5  # SVM margin units
    # `sppnet detect` keeps detections of calibrated probability >= this by default (not in the
    # paper: a picture of a photo stays readable); `sppnet test` ranks by margin and uses all
    detect_min_probability: float = 0.5
    softmax_threshold: float = 0.001  # class probability, for scoring "softmax"
    nms_iou: float = 0.3
    # §9: spp_test.m and rcnn_test.m keep the top 100 boxes of each class in each image
    max_per_class: int = 100
    # then at most this many boxes per image over all classes, 0 = no cap (the official code has
    # none; this project's earlier behaviour was max_per_class=0, max_per_image=100)
    max_per_image: int = 0
    # Not in SPP-net: Fast R-CNN's truncated SVD (§3.1) runs fc6 (fc7) as two layers of its top t
    # singular values at test time, t · (in + out) multiply-adds a window instead of in · out; 0
    # keeps the layer exact. The model file keeps the exact head, so any t can be tried on it.
    fc6_svd_rank: int = 0
    fc7_svd_rank: int = 0
    # Not in the paper: "bf16" runs the fc head at detection under bfloat16 autocast (float32
    # accumulation), its output back in float32. On a CPU with AVX512-BF16 or AMX units fc6 took
    # 55 instead of 151 ms for 1,700 windows and the realistic set's mAP did not move (docs/results.md);
    # on a CPU without them bfloat16 matmuls are slower, hence float32 by default.
    head_precision: HeadPrecision = "float32"

    _name = "test"
    _rules = {"nms_iou": FRACTION, "max_per_class": at_least(0), "max_per_image": at_least(0),
              "fc6_svd_rank": at_least(0), "fc7_svd_rank": at_least(0),
              "detect_min_probability": FRACTION, "softmax_threshold": BELOW_ONE}


# The sections a trained model's settings may change in at test time (Detector.load's overrides).
TEST_TIME_SECTIONS = ("proposals", "test")


@dataclass(frozen=True)
class SPPConfig:
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    svm: SVMConfig = field(default_factory=SVMConfig)
    bbox: BBoxConfig = field(default_factory=BBoxConfig)
    test: TestConfig = field(default_factory=TestConfig)

    def __post_init__(self) -> None:
        for name, section_type in _field_types(type(self)).items():
            if not isinstance(getattr(self, name), section_type):
                raise ConfigError(name, f"must be a {section_type.__name__}, got {show(getattr(self, name))}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The whole tree as YAML (tuples as lists), which :func:`read_config_file` reads back."""
        return yaml.safe_dump(json.loads(json.dumps(self.to_dict())), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SPPConfig:
        """A saved tree (``to_dict``'s) over the defaults: a key missing keeps its default, an unknown
        key (from another version of sppnet, say) is a :class:`ConfigError` naming it."""
        return cls().override(flatten(data))

    @classmethod
    def preset(cls, name: str) -> SPPConfig:
        """The tree a command starts from: the defaults with ``PRESETS[name]`` applied."""
        return cls().override(PRESETS[name])

    def replace(self, **sections: dict[str, Any]) -> SPPConfig:
        """Copy with fields changed per section: ``cfg.replace(features={"scales": (480, 688)})``."""
        changed = {}
        for name, updates in sections.items():
            section = getattr(self, name)
            changed[name] = dataclasses.replace(section, **updates)
        return dataclasses.replace(self, **changed)

    def override(self, values: Mapping[str, Any], sections: Collection[str] | None = None) -> SPPConfig:
        """Copy with dotted options changed: ``{"svm.C": 0.002, "features.scales": "480,688"}``.

        A value is a Python (or YAML) value, or text as typed on a command line, read by the
        option's type (``"0.002"``, ``"480,688"``, ``"true"``, ``"null"``). ``sections``: the only
        sections allowed to change (``TEST_TIME_SECTIONS`` for a trained model). Raises
        :class:`ConfigError` naming the first unknown, mistyped or out-of-range option.
        """
        changes: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            section, name = self._locate(key, sections)
            if isinstance(value, str):
                value = _from_text(_field_types(type(getattr(self, section)))[name], value, key)
            changes.setdefault(section, {})[name] = value
        return self.replace(**changes)

    def _locate(self, key: str, sections: Collection[str] | None) -> tuple[str, str]:
        """'svm.C' -> ('svm', 'C'), or a ConfigError saying what is wrong with the key."""
        section, _, name = str(key).partition(".")
        section_names = [f.name for f in dataclasses.fields(self)]
        if section not in section_names:
            raise ConfigError(key, f"unknown option: no section {section!r}{_close(section, section_names)} "
                                   f"(sections: {', '.join(section_names)})")
        options = [f.name for f in dataclasses.fields(getattr(self, section))]
        if name not in options:
            raise ConfigError(key, f"unknown option{_close(name, options, section + '.')}; "
                                   f"{section} has {', '.join(options)}")
        if sections is not None and section not in sections:
            raise ConfigError(key, "cannot change after training: only the "
                                   f"{' and '.join(s + '.*' for s in sections)} options can")
        return section, name


# Guard, not part of the recipe: images with more pixels than this are refused before they are
# decoded, so one huge file cannot exhaust the memory (`sppnet detect --max-pixels`).
DEFAULT_MAX_PIXELS = 100_000_000
# Guard: `sppnet detect` refuses images whose shorter side is below this many conv strides (unless
# --min-side): they hold fewer than 2x2 cells' worth of real pixels, so the rescale to the test
# scale (688 px) would be pure interpolation.
MIN_SIDE_STRIDES = 2

# Presets: the tree some commands start from instead of the defaults (their flags, --config and
# --set apply on top). The demo's fc head is fine-tuned for fewer iterations (§6) so that it stays
# minutes on a CPU; the ablation measures the defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {"finetune.hidden": 512, "finetune.iterations": 500},
}

# `sppnet benchmark` without a model: the fraction of (window, class) pairs the untrained detector's
# random SVMs let through the score threshold. SVMs trained with the recipe's C = 0.001 hold negatives
# near margin -1, above the -1.5 threshold: on the demo set every window passed for every class
# (docs/benchmarks.md).
PASS_FRACTION = 0.95


def parse_stages(text: str) -> tuple[str, ...]:
    """'svm,bbox' -> ('svm', 'bbox'): the named stages in pipeline order; ValueError on an unknown name."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STAGES]
    if unknown or not names:
        raise ValueError(f"unknown stage(s) {', '.join(unknown) or '(none given)'}; choose from {','.join(STAGES)}")
    return tuple(stage for stage in STAGES if stage in names)


def option_type(key: str) -> Any:
    """The annotation of a dotted option: ``option_type("svm.feature_layer")`` is ``FeatureLayer``."""
    default = SPPConfig()
    section, name = default._locate(key, None)
    return _field_types(type(getattr(default, section)))[name]


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping -> {dotted key: value}: ``{"svm": {"C": 1}}`` -> ``{"svm.C": 1}``."""
    flat: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML file of options, nested as ``SPPConfig.to_yaml`` writes them or with dotted keys ->
    {dotted key: value}, for :meth:`SPPConfig.override`. A file that cannot be read is a ConfigError."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(str(path), f"cannot read the config file ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(str(path), f"not a YAML file{where}: {getattr(err, 'problem', None) or err}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(str(path), f"expected a mapping of options (svm: {{C: 0.001}}), got {type(data).__name__}")
    return flatten(data)


def fingerprint(*parts: Any) -> str:
    """A short stable hash of config sections / plain values, naming what made a cached result."""
    text = json.dumps([_plain(p) if dataclasses.is_dataclass(p) else p for p in parts], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def show(value: Any) -> str:
    """A value as an error message shows it: 1.0 -> '1', (0, -1) -> '0,-1', 'x' -> "'x'"."""
    if isinstance(value, tuple):
        return ",".join(show(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def _plain(section: Any) -> dict[str, Any]:
    """A dataclass as :func:`fingerprint` hashes it."""
    return {"__type__": type(section).__name__, **dataclasses.asdict(section)}


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _close(name: str, options: list[str], prefix: str = "") -> str:
    match = [o for o in options if o.lower() == name.lower()] or difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {prefix}{match[0]}?)" if match else ""


_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


def _typed(annotation: Any, value: Any, key: str) -> Any:
    """``value`` checked against a field's annotation and made exact (int -> float, list -> tuple)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise ConfigError(key, f"must be one of {', '.join(args)}, got {show(value)}")
    if origin in (typing.Union, types.UnionType):  # X | None
        inner = next(a for a in args if a is not type(None))
        return None if value is None else _typed(inner, value, key)
    if origin is tuple:  # tuple[int, ...]
        if isinstance(value, (list, tuple)) and all(_is_int(v) for v in value):
            return tuple(int(v) for v in value)
        raise ConfigError(key, f"must be a list of integers, got {show(value)}")
    if annotation is int and _is_int(value):
        return int(value)
    if annotation is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
        raise ConfigError(key, f"must be a finite number, got {show(value)}")
    if annotation in (bool, str) and isinstance(value, annotation):
        return value
    raise ConfigError(key, f"must be {_KINDS[annotation]}, got {show(value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _from_text(annotation: Any, text: str, key: str) -> Any:
    """Text typed for an option (``--set svm.C=0.002``, a quoted YAML value) -> a value of its type.

    Names (Literal, str) stay text, checked when the section is made; text that does not read as
    the type raises a ConfigError naming ``key``.
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    word = text.strip()
    if origin in (typing.Union, types.UnionType):  # X | None
        if word.lower() in ("none", "null", "~"):
            return None
        return _from_text(next(a for a in args if a is not type(None)), text, key)
    try:
        if origin is tuple:
            return tuple(int(item) for item in word.strip("[]()").split(","))
        if annotation is int:
            return int(word)
        if annotation is float:
            return float(word)
    except ValueError:
        kind = "a comma-separated list of integers" if origin is tuple else _KINDS[annotation]
        raise ConfigError(key, f"must be {kind}, got {text!r}") from None
    if annotation is bool:
        if word.lower() in _TRUE + _FALSE:
            return word.lower() in _TRUE
        raise ConfigError(key, f"must be true or false, got {text!r}")
    return text
