"""The SPP-net detector at test time (recipe §9) and its one-file model format.

``Detector`` holds everything ``test`` and ``detect`` need: the config, class names, the backbone
(architecture name and weights), the fc head when the SVMs read an fc layer, the per-class SVM
weights, the box regressors and the two feature-norm scales (the SVM layer's, and pool5's for box
regression, recipe §7–§8). Each step of detection is its own method (``compute_maps``,
``features``, ``score``, ``postprocess``) so the benchmark can time them separately.

Feature layers (``config.svm.feature_layer``, the rows of the paper's Table 9):

* ``pool5``: the SPP vector itself, no fc layers;
* ``fc6``, ``fc7``: the head *before* fine-tuning. For alexnet/vgg16 that is the ImageNet fc6/fc7
  with fc6 widened onto the pyramid (recipe §6); for a backbone without a pretrained head
  (efficientnet_lite0, zf5) it is the freshly initialised head (seeded by
  ``config.finetune.seed``): random projections of pool5 followed by ReLUs, a baseline only;
* ``ftfc6``, ``ftfc7``: the same layers after fine-tuning (the paper's best is ftfc7).
"""
from __future__ import annotations

import functools
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from detection.core.boxes import apply_bbox_deltas, batched_nms, clip_boxes
from detection.core.cache import Cache, atomic_write_bytes
from detection.core.config import FEATURE_LAYERS, TEST_TIME_SECTIONS, ConfigError, SPPConfig
from detection.core.errors import SppnetError
from detection.core.hashing import state_hash
from detection.core.images import as_rgb_array
from detection.core.detections import Detections
from detection.results import Result
from features.backbones import Backbone, build_backbone
from features.extractor import build_extractor
from features.spp import spp_output_dim
from features.head import FCHead, truncated_head
from proposals.selective_search import selective_search
from svm.bbox_regression import BoxRegressor
from svm.calibration import PlattScaling

MODEL_FORMAT = 2  # 2: fc head, feature layer and the pool5 scale of box regression


class DeviceError(SppnetError, ValueError):
    """A device that this machine does not have."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None): CUDA when available, else the CPU; otherwise the device named, which must exist.

    Raises DeviceError (one line) for a CUDA device on a machine without CUDA or without that GPU.
    """
    if device is None or device == "auto":
        return torch.device(default_device())
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise DeviceError(f"unknown device {device!r} ({err}); use auto, cpu or cuda") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(f"device {str(device)!r} requested but {why}; use cpu or auto")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(f"device {str(device)!r} requested but there are only "
                              f"{torch.cuda.device_count()} CUDA GPUs")
    return resolved


def weights_id(backbone: Backbone) -> str:
    """A short hash of the backbone's conv weights."""
    return state_hash(backbone.body)


# The suffix of a feature layer that puts the window's pool5 vector beside the head layer's features
POOL5_BESIDE = "+pool5"
NORM_EPS = 1e-12  # F.normalize's: a zero row stays zero


def head_layer(feature_layer: str) -> str | None:
    """The head layer a feature layer reads ("fc6" or "fc7"), or None for pool5."""
    if feature_layer not in FEATURE_LAYERS:
        raise ValueError(f"unknown feature layer {feature_layer!r}; choose one of {', '.join(FEATURE_LAYERS)}")
    layer = feature_layer.removesuffix(POOL5_BESIDE)
    return None if layer == "pool5" else layer.removeprefix("ft")


def check_scoring(config: SPPConfig) -> None:
    """ValueError unless softmax scoring (config.test.scoring) reads the fine-tuned fc7."""
    if config.test.scoring == "softmax" and config.svm.feature_layer != "ftfc7":
        raise ValueError(f"softmax scoring reads the fine-tuned head's fc8 on ftfc7, not {config.svm.feature_layer} "
                         "(--feature-layer ftfc7)")


def join_layers(pool5: torch.Tensor, head_features: torch.Tensor | None, feature_layer: str) -> torch.Tensor:
    """(N, D) SPP vectors and (N, H) head-layer activations (None for pool5) -> (N, D') unscaled
    features of ``feature_layer``: pool5 itself, the head layer's, or for "ftfc7+pool5" the
    (N, D + H) concatenation of pool5 and fc7, each row of each part divided by its L2 norm (as
    ParseNet joins layers of different scales), so neither part outweighs the other whatever its
    magnitude; the SVM feature scale (§7) then applies to the whole.
    """
    if head_features is None:
        return pool5
    if feature_layer.endswith(POOL5_BESIDE):
        return torch.cat([F.normalize(pool5, dim=1), F.normalize(head_features, dim=1)], dim=1)
    return head_features


def head_activations(pool5: torch.Tensor, head: FCHead | None, feature_layer: str) -> torch.Tensor | None:
    """(N, D) SPP vectors -> (N, H) activations of the head layer ``feature_layer`` reads, or None for pool5."""
    layer = head_layer(feature_layer)
    return None if layer is None else head.features(pool5, layer)


def svm_layer_features(pool5: torch.Tensor, head: FCHead | None, feature_layer: str) -> torch.Tensor:
    """(N, D) SPP vectors -> (N, D') unscaled features of ``feature_layer`` (:func:`join_layers`),
    the head applied when the layer reads one."""
    return join_layers(pool5, head_activations(pool5, head, feature_layer), feature_layer)


def layer_features(pool5: torch.Tensor, head: FCHead | None, feature_layer: str) -> torch.Tensor:
    """:func:`svm_layer_features` without autograd (inference mode)."""
    with torch.inference_mode():
        return svm_layer_features(pool5, head, feature_layer)


def svm_margins(pool5: torch.Tensor, head_features: torch.Tensor | None, feature_layer: str,
                weights: torch.Tensor, bias: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """(N, K) margins ``bias + scale * join_layers(pool5, head_features, feature_layer) @ weights.T``
    for weights (K, D') and bias (K,), without building the join: for "+pool5" layers each part's
    (N, K) product is divided by that part's row norms instead, which saves copying (N, D + H)
    normalised features (39 of the 131 ms that head and SVMs took per image at 2,000 windows on 2 CPU threads).
    """
    if head_features is None or not feature_layer.endswith(POOL5_BESIDE):
        return torch.addmm(bias, join_layers(pool5, head_features, feature_layer), weights.T, alpha=scale)
    dim = pool5.shape[1]
    joined = ((pool5 @ weights[:, :dim].T) / pool5.norm(dim=1, keepdim=True).clamp_min(NORM_EPS)
              + (head_features @ weights[:, dim:].T) / head_features.norm(dim=1, keepdim=True).clamp_min(NORM_EPS))
    return torch.add(bias, joined, alpha=scale)


def head_from_state(state: dict[str, torch.Tensor]) -> FCHead:
    """An eval-mode :class:`FCHead` with the weights of ``state`` (its shapes give the sizes)."""
    hidden, in_dim = state["fc6.weight"].shape
    fc8 = state.get("fc8.weight")
    head = FCHead(in_dim, hidden, None if fc8 is None else fc8.shape[0] - 1)
    head.load_state_dict(state)
    return head.eval()


def top_per_class(scores: np.ndarray, labels: np.ndarray, max_per_class: int, max_per_image: int = 0) -> np.ndarray:
    """Indices of the detections kept, best score first: scores (N,), labels (N,) -> (M,) int64.

    At most ``max_per_class`` of each class (``spp_test.m``, ``rcnn_test.m``), then at most
    ``max_per_image`` over all classes; 0 means no cap. Ties keep the earlier detection.
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    if max_per_class > 0 and len(order):
        by_class = order[np.argsort(labels[order], kind="stable")]  # by class, best first within
        sorted_labels = labels[by_class]
        first = np.searchsorted(sorted_labels, sorted_labels, side="left")
        rank = np.empty(len(order), np.int64)
        rank[by_class] = np.arange(len(order)) - first
        order = order[rank[order] < max_per_class]
    return order[:max_per_image] if max_per_image > 0 else order


@dataclass
class WindowFeatures:
    """What :meth:`Detector.features` returns for N windows, all on the detector's device.

    Windows pooled from the same cells at the same scale share one row (their features are equal),
    so there are M <= N rows: ``pool5`` (M, D), the unscaled SPP vectors, which box regression
    reads (recipe §8) whatever layer the SVMs use; ``head`` (M, H), the activations of the head
    layer the feature layer reads (fc6 or fc7), None for pool5; ``layer``, the feature layer
    (``config.svm.feature_layer``); ``rows`` (N,) int64, each window's row, or None when row i is
    window i.
    """

    pool5: torch.Tensor
    head: torch.Tensor | None
    layer: str
    rows: torch.Tensor | None = None

    @property
    def svm(self) -> torch.Tensor:
        """(M, D') the SVM feature layer of each row, unscaled (built on request; :meth:`Detector.score` does without)."""
        return join_layers(self.pool5, self.head, self.layer)

    def per_window(self, per_row: torch.Tensor) -> torch.Tensor:
        """(M, ...) values of the rows -> (N, ...) values of the windows."""
        return per_row if self.rows is None else per_row.index_select(0, self.rows)

    def rows_of(self, windows: np.ndarray) -> np.ndarray:
        """(P,) window indices -> (P,) their rows."""
        return windows if self.rows is None else self.rows.cpu().numpy()[windows]

    def __len__(self) -> int:
        return len(self.pool5) if self.rows is None else len(self.rows)


def _array_or_none(tensor: torch.Tensor | None) -> np.ndarray | None:
    return None if tensor is None else tensor.detach().float().cpu().numpy()


class ModelFileError(SppnetError, ValueError):
    """A model file that cannot be loaded; the message names the file."""


class Detector:
    """Score windows with per-class linear SVMs on SPP (or fc) features, regress boxes, suppress overlaps.

    ``svm_weights`` (K, D') and ``svm_bias`` (K,) score the features of ``config.svm.feature_layer``
    (computed by ``head`` unless pool5) times ``feature_scale``; ``regressor`` maps pool5 features
    times ``bbox_feature_scale`` to (dx, dy, dw, dh) per class, or is None when box regression is off.
    ``calibration`` turns each detection's margin into a probability (``Detections.probabilities``);
    a model trained before calibration existed has none and gives margins only. With
    ``config.test.scoring == "softmax"`` the fine-tuned head's fc8 scores instead (class
    probabilities) and the three SVM arguments and ``calibration`` are None.
    """

    def __init__(self, config: SPPConfig, classes: tuple[str, ...], backbone: Backbone,
                 svm_weights: np.ndarray | None, svm_bias: np.ndarray | None, feature_scale: float | None,
                 regressor: BoxRegressor | None = None, device: str | torch.device | None = "auto",
                 cache: Cache | None = None, head: FCHead | None = None, bbox_feature_scale: float | None = None,
                 calibration: PlattScaling | None = None):
        if (head_layer(config.svm.feature_layer) is None) != (head is None):
            raise ValueError(f"feature layer {config.svm.feature_layer} needs "
                             f"{'an fc head' if head is None else 'no fc head'}")
        if (regressor is None) != (bbox_feature_scale is None):
            raise ValueError("a box regressor comes with the pool5 feature scale it was trained on")
        check_scoring(config)
        softmax = config.test.scoring == "softmax"
        if softmax and head.fc8 is None:
            raise ValueError("softmax scoring needs the fine-tuned head's fc8")
        if softmax != (svm_weights is None) or softmax != (svm_bias is None) or softmax != (feature_scale is None):
            raise ValueError(f"{config.test.scoring} scoring needs {'no' if softmax else ''} SVM weights, bias and "
                             "feature scale")
        self.config = config
        self.classes = tuple(classes)
        self.device = resolve_device(device)
        self.cache = cache
        self.extractor = build_extractor(backbone, config.features, self.device, cache=cache,
                                         weights_id=weights_id(backbone))
        self.head = None if head is None else head.to(self.device).eval()
        self.svm_weights, self.svm_bias, self.feature_scale = None, None, None
        if not softmax:
            self.svm_weights = torch.as_tensor(np.asarray(svm_weights, dtype=np.float32), device=self.device)
            self.svm_bias = torch.as_tensor(np.asarray(svm_bias, dtype=np.float32), device=self.device)
            self.feature_scale = float(feature_scale)
        self.regressor = regressor
        if regressor is not None:
            # (D, 4K) and (4K,): every class's regressor in one float32 matrix for :meth:`box_deltas`
            coef = np.asarray(regressor.coef_, dtype=np.float32)
            self.box_weights = torch.as_tensor(coef.transpose(1, 0, 2).reshape(coef.shape[1], -1), device=self.device)
            self.box_intercept = torch.as_tensor(np.asarray(regressor.intercept_, dtype=np.float32).reshape(-1),
                                                 device=self.device)
        self.bbox_feature_scale = None if bbox_feature_scale is None else float(bbox_feature_scale)
        if calibration is not None and len(calibration.coef_) != len(self.classes):
            raise ValueError(f"calibration has {len(calibration.coef_)} classes, the detector {len(self.classes)}")
        self.calibration = calibration

    @property
    def backbone(self) -> Backbone:
        return self.extractor.backbone

    @functools.cached_property
    def detection_head(self) -> FCHead | None:
        """The head detection runs: the trained one, or its truncated SVD (``config.test.fc6_svd_rank``,
        ``fc7_svd_rank``), computed once per detector (and shared by :meth:`replace`'s variants)."""
        test = self.config.test
        return None if self.head is None else truncated_head(self.head, test.fc6_svd_rank, test.fc7_svd_rank)

    # -- variants -------------------------------------------------------------------------------
    def replace(self, *, features: dict | None = None, feature_scale: float | None = None,
                svm_bias: np.ndarray | torch.Tensor | None = None) -> Detector:
        """A new detector sharing this one's backbone, head, SVM weights, regressor, calibration and cache,
        with ``config.features`` fields in ``features`` replaced (e.g. ``{"mode": "rcnn"}``,
        ``{"scales": (480, 688)}``, ``{"amp": "bf16"}``) and/or another SVM feature scale or SVM biases (K,)."""
        config = self.config if not features else self.config.replace(features=features)
        bias = self.svm_bias if svm_bias is None else torch.as_tensor(svm_bias)
        variant = Detector(config, self.classes, self.backbone, _array_or_none(self.svm_weights), _array_or_none(bias),
                           self.feature_scale if feature_scale is None else feature_scale, self.regressor,
                           device=self.device, cache=self.cache, head=self.head,
                           bbox_feature_scale=self.bbox_feature_scale, calibration=self.calibration)
        if "detection_head" in self.__dict__:  # the test options are the same: no second SVD
            variant.detection_head = self.detection_head
        return variant

    @classmethod
    def untrained(cls, config: SPPConfig, classes: tuple[str, ...], device: str | torch.device | None = "auto",
                  seed: int = 0) -> Detector:
        """A detector that needs no training, for timing: ``config``'s backbone (random initialisation
        unless ``backbone_weights``; seeded), the SVMs reading pool5 with random weights ~ N(0, (1/20)²)
        (features of the recipe's mean norm 20 score with a spread of about 1; §7), zero biases,
        feature scale 1 and zero box regressors."""
        torch.manual_seed(seed)
        config = config.replace(svm={"feature_layer": "pool5"})
        backbone = build_backbone(config.features.backbone, config.features.backbone_weights, pretrained=False)
        dim = spp_output_dim(backbone.channels, config.features.pyramid_levels)
        rng = np.random.default_rng(seed)
        svm_weights = rng.normal(0.0, 1.0 / config.svm.feature_norm_target, (len(classes), dim))
        regressor = BoxRegressor.from_state({
            "ridge_lambda": config.bbox.ridge_lambda, "coef": torch.zeros((len(classes), dim, 4), dtype=torch.float64),
            "intercept": torch.zeros((len(classes), 4), dtype=torch.float64),
            "n_samples": torch.zeros(len(classes), dtype=torch.int64)})
        return cls(config, classes, backbone, svm_weights, np.zeros(len(classes)), 1.0, regressor, device=device,
                   bbox_feature_scale=1.0)

    # -- the steps of detection -------------------------------------------------------------
    def compute_maps(self, image: np.ndarray) -> list[torch.Tensor]:
        return self.extractor.compute_maps(image)

    def features(self, maps: list[torch.Tensor], boxes: np.ndarray, image_size: tuple[int, int]) -> WindowFeatures:
        """(N, 4) windows -> their SPP vectors and SVM-layer features (the head applied here), once
        per distinct window (:meth:`~features.extractor.SPPFeatureExtractor.pool_distinct`)."""
        pool5, rows = self.extractor.pool_distinct(maps, boxes, image_size)
        layer = self.config.svm.feature_layer
        with torch.inference_mode():
            with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                enabled=self.config.test.head_precision == "bf16"):
                head = head_activations(pool5, self.detection_head, layer)
            return WindowFeatures(pool5, None if head is None else head.float(), layer, rows)

    @property
    def score_threshold(self) -> float:
        """Windows scoring at most this for a class are no detections of it (in :meth:`score`'s units)."""
        test = self.config.test
        return test.softmax_threshold if test.scoring == "softmax" else test.score_threshold

    def score(self, features: WindowFeatures) -> torch.Tensor:
        """N windows' features -> (N, K) SVM margins (:func:`svm_margins`: one matmul for the distinct
        windows and all classes, one per part for "+pool5" layers), or with softmax scoring the head's class
        probabilities (background dropped)."""
        if self.svm_weights is None:
            with torch.inference_mode():
                return features.per_window(torch.softmax(self.detection_head.fc8(features.head), dim=1)[:, 1:])
        # the feature scale rides on the matmul (alpha): scaling the (N, D') features would copy them
        return features.per_window(svm_margins(features.pool5, features.head, features.layer, self.svm_weights,
                                               self.svm_bias, self.feature_scale))

    def postprocess(self, boxes: np.ndarray, scores: torch.Tensor, features: WindowFeatures,
                    image_size: tuple[int, int]) -> Detections:
        """Recipe §9: threshold, per-class NMS, box regression, clip, NMS again, top-k per class and image."""
        cfg = self.config.test
        height, width = image_size
        scores_np = scores.float().cpu().numpy()
        window, label = np.nonzero(scores_np > self.score_threshold)
        if len(window) == 0:
            return Detections.empty()
        det_boxes = np.asarray(boxes, dtype=np.float64)[window]
        det_scores = scores_np[window, label]
        keep = batched_nms(det_boxes, det_scores, label, cfg.nms_iou)
        window, label, det_boxes, det_scores = window[keep], label[keep], det_boxes[keep], det_scores[keep]
        if self.regressor is not None:
            deltas = self.box_deltas(features.pool5, features.rows_of(window), label)
            det_boxes = clip_boxes(apply_bbox_deltas(det_boxes, deltas), width, height)
            keep = batched_nms(det_boxes, det_scores, label, cfg.nms_iou)
            label, det_boxes, det_scores = label[keep], det_boxes[keep], det_scores[keep]
        top = top_per_class(det_scores, label, cfg.max_per_class, cfg.max_per_image)
        return Detections(det_boxes[top], det_scores[top], label[top].astype(np.int64))

    def box_deltas(self, pool5: torch.Tensor, rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Box regression (§8) of P detections: pool5 (M, D) (:class:`WindowFeatures`' rows), the
        detections' rows (P,) and classes (P,) -> (P, 4) deltas. One matmul of the distinct rows'
        pool5 with every class's regressor: at most M rows gathered, whatever the number of classes.
        """
        distinct, row = np.unique(rows, return_inverse=True)
        chosen = pool5[torch.as_tensor(distinct, device=pool5.device)]
        # the feature scale rides on the matmul, as in :meth:`score`
        every_class = torch.addmm(self.box_intercept, chosen, self.box_weights, alpha=self.bbox_feature_scale)
        every_class = every_class.view(len(distinct), len(self.classes), 4)
        return every_class[torch.as_tensor(row.reshape(-1)), torch.as_tensor(labels)].double().cpu().numpy()

    # -- whole images -------------------------------------------------------------------------
    def with_probabilities(self, dets: Detections) -> Detections:
        """``dets`` with each margin's calibrated probability filled in (unchanged without a calibration)."""
        if self.calibration is None:
            return dets
        probabilities = self.calibration.predict_proba(dets.scores, dets.labels)
        return Detections(dets.boxes, dets.scores, dets.labels, probabilities)

    def detect_with_maps(self, maps: list[torch.Tensor], proposals: np.ndarray,
                         image_size: tuple[int, int]) -> Detections:
        features = self.features(maps, proposals, image_size)
        return self.with_probabilities(self.postprocess(proposals, self.score(features), features, image_size))

    def detect(self, image, proposals: np.ndarray | None = None) -> Detections:
        """An image (path, PIL image or (H, W, 3) uint8 RGB array) -> its detections.

        Proposals are computed with selective search (config.proposals) unless given as (N, 4).
        """
        image = as_rgb_array(image)
        if proposals is None:
            proposals = selective_search(image, self.config.proposals)
        return self.detect_with_maps(self.compute_maps(image), proposals, image.shape[:2])

    __call__ = detect

    def predict(self, image, proposals: np.ndarray | None = None) -> Result:
        """Like :meth:`detect`, but a :class:`~detection.results.Result`: the image, its detections and
        the class names, with ``plot()``, ``save(path)`` and ``to_coco()``."""
        path = str(image) if isinstance(image, (str, os.PathLike)) else None
        image = as_rgb_array(image)
        return Result(image, self.detect(image, proposals), self.classes, path)

    def detect_batch(self, images, proposals: list[np.ndarray] | None = None) -> list[Detections]:
        """Several images (paths, PIL images or arrays) -> their detections, in order."""
        proposals = proposals if proposals is not None else [None] * len(images)
        return [self.detect(image, boxes) for image, boxes in zip(images, proposals)]

    # -- the model file -----------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "format": MODEL_FORMAT,
            "config": self.config.to_dict(),
            "classes": list(self.classes),
            "backbone": self.backbone.name,
            "backbone_state": {k: v.cpu() for k, v in self.backbone.state_dict().items()},
            "svm_weights": None if self.svm_weights is None else self.svm_weights.cpu(),
            "svm_bias": None if self.svm_bias is None else self.svm_bias.cpu(),
            "feature_scale": self.feature_scale,
            "head": None if self.head is None else {k: v.cpu() for k, v in self.head.state_dict().items()},
            "regressor": None if self.regressor is None else self.regressor.to_state(),
            "bbox_feature_scale": self.bbox_feature_scale,
            "calibration": None if self.calibration is None else {
                k: torch.from_numpy(v) for k, v in self.calibration.to_state().items()},
        }

    def save(self, path: str | Path) -> None:
        buffer = io.BytesIO()
        torch.save(self.state(), buffer)
        atomic_write_bytes(Path(path), buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = "auto", cache: Cache | None = None,
             overrides: Mapping[str, Any] | None = None) -> Detector:
        """The detector saved in ``path``, on ``device`` ("auto": CUDA when available, else the CPU).

        ``overrides``: dotted test-time options replacing the model's (``{"test.nms_iou": 0.4}``),
        only ``proposals.*`` and ``test.*`` (see :meth:`SPPConfig.override`); a bad one raises ConfigError.
        """
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"{path}: model file not found (train one with `sppnet train`)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several unrelated types for a bad file
            raise ModelFileError(f"{path}: not an sppnet model file ({type(err).__name__}: {err})") from None
        if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
            raise ModelFileError(f"{path}: not an sppnet model file of format {MODEL_FORMAT}")
        try:
            config = SPPConfig.from_dict(state["config"])
        except ConfigError as err:
            raise ModelFileError(f"{path}: its config does not fit this version of sppnet: {err}") from None
        config = config.override(overrides or {}, sections=TEST_TIME_SECTIONS)
        backbone = build_backbone(state["backbone"], pretrained=False)
        backbone.load_state_dict(state["backbone_state"])
        regressor = None if state["regressor"] is None else BoxRegressor.from_state(state["regressor"])
        head = None if state["head"] is None else head_from_state(state["head"])
        # absent from model files written before calibration existed: they give margins only
        calibration = state.get("calibration")
        calibration = None if calibration is None else PlattScaling.from_state(
            {k: v.numpy() for k, v in calibration.items()})
        svm = [None if state[k] is None else state[k].numpy() for k in ("svm_weights", "svm_bias")]
        return cls(config, tuple(state["classes"]), backbone, *svm, state["feature_scale"], regressor, device=device,
                   cache=cache, head=head, bbox_feature_scale=state["bbox_feature_scale"], calibration=calibration)
