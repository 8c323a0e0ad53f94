"""The one place for defaults: a frozen dataclass tree with the paper's values.

Section numbers (§N) refer to docs/recipe.md, which collects the SPP-net paper
(He et al., TPAMI 2015), its official code (ShaoqingRen/SPP_net) and R-CNN's code. Where
paper and official code differ, both are a config value and the docstring says which is which.

The whole tree is saved inside ``model.pt`` and each cache's metadata, so a model knows how it
was trained and a cache knows what made it (see :func:`fingerprint`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

FIVE_SCALES = (480, 576, 688, 864, 1200)  # §4, paper; the official code uses 874 for 864
SINGLE_SCALE = (688,)  # §4
# Width of fresh fc6/fc7 (a backbone without a pretrained head). The paper's 4096 made the head
# cost 2.4x the conv layers at detection on a CPU and overfit 150 training images; measured
# (accuracy and pool+fc time per image) in docs/results.md, "Fine-tuned head on the realistic set".
FRESH_FC_WIDTH = 512


@dataclass(frozen=True)
class ProposalConfig:
    """Selective search (§5)."""

    # §5: selective search "fast" as R-CNN ran it ("rcnn_fast": selective_search_boxes.m, k in {50, 100},
    # min size k, HSV and Lab, two strategies), OpenCV's own fast mode ("opencv_fast": k in {150, 300,
    # 450}, min size 0: coarser, misses small objects; docs/benchmarks.md measures both) or "quality"
    mode: str = "rcnn_fast"
    resize_width: int = 500  # R-CNN's demo runs selective search on the image resized to width 500
    min_size: int = 20  # windows narrower or shorter than this (at the proposal image size) are dropped
    max_proposals: int = 2000  # about 2,000 windows per image
    # Guard, not part of the recipe: the proposal image's longer side is capped at this (0 = no
    # cap), so resizing a 2x300 px sliver to width 500 cannot make a 500x75000 image. With the
    # default width only images more than 4:1 tall are affected.
    max_side: int = 2000


@dataclass(frozen=True)
class FeatureConfig:
    """Backbone, scales, projection and spatial pyramid (§1–§4)."""

    # "spp": conv layers once per image, windows pooled from the shared map (SPP-net);
    # "rcnn": each window cropped with context, warped and run through the conv layers (R-CNN, §11)
    mode: str = "spp"
    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None  # a local state-dict file; None = the backbone's default
    scales: tuple[int, ...] = SINGLE_SCALE  # shorter image side s; FIVE_SCALES for multi-scale
    # "paper": the scale whose scaled window area is closest to 224² (§4);
    # "official": expected side 208 = 13·16 px compared linearly with the scales (official code).
    scale_rule: str = "paper"
    paper_target_side: int = 224
    official_target_side: int = 208
    # "paper": x0' = floor((x0 - c0)/S) + 1, x1' = ceil((x1 - c0)/S) - 1 (appendix, with the offset c0);
    # "official": snap inward to cell centres with the 6.5 px offset o (§2).
    projection: str = "paper"
    official_offset: float = 6.5
    pyramid_levels: tuple[int, ...] = (1, 2, 3, 6)  # §3: 50 bins
    rcnn_context: int = 16  # R-CNN mode: pixels of context around each window before warping
    rcnn_batch_size: int = 128  # R-CNN mode: warped windows per conv batch


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning fc6 → fc7 → (K+1)-way fc8 on SPP features, conv layers frozen (§6)."""

    # fc6 and fc7 widths; None: a pretrained head's own (4096 for alexnet, vgg16, as the paper),
    # else FRESH_FC_WIDTH
    hidden: int | None = None
    dropout: float = 0.5
    fc8_init_std: float = 0.01  # new fc8 ~ N(0, 0.01²)
    # fresh fc6/fc7 (no pretrained head): "pytorch", "gaussian" (Caffe's N(0, 0.005²)), "kaiming"
    # or "xavier" (features.head.FC_INITS)
    init: str = "pytorch"
    batch_size: int = 128  # windows per mini-batch
    fg_fraction: float = 0.25  # 25% foreground ...
    fg_threshold: float = 0.5  # ... at max IoU >= 0.5
    bg_low: float = 0.1  # background: max IoU in [0.1, 0.5)
    bg_high: float = 0.5
    flip: bool = True  # horizontally flipped training images added
    # "random": a random scale per window while training (official code); "chosen": the §4 rule
    scale_sampling: str = "random"
    # "official": lr 1e-3, ×0.1 at 30k and 60k of 90k (the solver's three 30k "vstep" phases);
    # "paper": 1e-4 for 250k then 1e-5 for 50k. ``iterations`` shortens either proportionally,
    # each step point at floor(step · iterations / length) (a small default suits a CPU).
    schedule: str = "official"
    iterations: int = 2000
    base_lr: float | None = None  # None: the schedule's (official 1e-3, paper 1e-4)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0  # softmax loss targets; 0 = the paper's plain softmax loss
    bias_lr_multiplier: float = 2.0  # Caffe blobs_lr: 1, 2 on every fc layer
    # Weight decay on biases, as a multiple of ``weight_decay``. 0: R-CNN (weight_decay: 1, 0 on
    # every layer) and the official SPP fc8; the official fc6/fc7 leave it unset, which Caffe reads as 1.
    bias_decay_multiplier: float = 0.0
    checkpoint_every: int = 500
    seed: int = 0


@dataclass(frozen=True)
class SVMConfig:
    """Per-class linear SVMs with hard-negative mining (§7, R-CNN's recipe)."""

    # pool5 = the SPP vector; fc6/fc7 = the fc head before fine-tuning; ftfc6/ftfc7 = after (paper's best: ftfc7)
    feature_layer: str = "ftfc7"
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


@dataclass(frozen=True)
class BBoxConfig:
    """Ridge bounding-box regressors (§8, R-CNN's recipe)."""

    enabled: bool = True
    ridge_lambda: float = 1000.0  # R-CNN; the official SPP code uses 4000
    min_overlap: float = 0.6  # training windows: IoU > 0.6 with a GT box (R-CNN); official SPP code 0.5


@dataclass(frozen=True)
class TestConfig:
    """Test time (§9)."""

    # "svm": per-class linear SVMs on ``svm.feature_layer`` (R-CNN and SPP-net, §7); "softmax": the
    # fine-tuned head's own (K+1)-way softmax with the background column dropped (Fast R-CNN found
    # the two equal): needs feature layer ftfc7, and training skips the SVM stage
    scoring: str = "svm"
    score_threshold: float = -1.5  # SVM margin units
    softmax_threshold: float = 0.001  # class probability, for scoring "softmax"
    nms_iou: float = 0.3
    max_per_image: int = 100


@dataclass(frozen=True)
class SPPConfig:
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    svm: SVMConfig = field(default_factory=SVMConfig)
    bbox: BBoxConfig = field(default_factory=BBoxConfig)
    test: TestConfig = field(default_factory=TestConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SPPConfig:
        return _from_dict(cls, data)

    def replace(self, **sections: dict[str, Any]) -> SPPConfig:
        """Copy with fields changed per section: ``cfg.replace(features={"scales": (480, 688)})``."""
        changed = {}
        for name, updates in sections.items():
            section = getattr(self, name)
            changed[name] = dataclasses.replace(section, **updates)
        return dataclasses.replace(self, **changed)


def _from_dict(cls, data: dict[str, Any]):
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            value = _from_dict(f.default_factory, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def fingerprint(*parts: Any) -> str:
    """A short stable hash of config sections / plain values, naming what made a cached result."""
    def plain(obj):
        if dataclasses.is_dataclass(obj):
            return {"__type__": type(obj).__name__, **dataclasses.asdict(obj)}
        return obj

    text = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]
