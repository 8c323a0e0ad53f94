"""The SPP-net detector at test time (recipe §9) and its one-file model format.

``Detector`` holds everything ``test`` and ``detect`` need: the config, class names, the backbone
(architecture name and weights), the per-class SVM weights, the box regressors and the feature
norm scale. Each step of detection is its own method (``compute_maps``, ``features``, ``score``,
``postprocess``) so the benchmark can time them separately.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from detection.boxes import apply_bbox_deltas, batched_nms, clip_boxes
from detection.cache import Cache, atomic_write_bytes
from detection.config import SPPConfig
from detection.errors import SppnetError
from detection.images import as_rgb_array
from detection.results import Detections
from features.backbones import Backbone, build_backbone
from features.extractor import build_extractor
from proposals.selective_search import selective_search
from svm.bbox_regression import BoxRegressor

MODEL_FORMAT = 1


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def weights_id(backbone: Backbone) -> str:
    """A short hash of the backbone's conv weights: names them in cache fingerprints."""
    digest = hashlib.sha1()
    for name, tensor in backbone.body.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class ModelFileError(SppnetError, ValueError):
    """A model file that cannot be loaded; the message names the file."""


class Detector:
    """Score windows with per-class linear SVMs on SPP features, regress boxes, suppress overlaps.

    ``svm_weights`` (K, D) and ``svm_bias`` (K,) score norm-scaled features; ``regressor`` maps the
    same features to (dx, dy, dw, dh) per class, or is None when box regression is off.
    """

    def __init__(self, config: SPPConfig, classes: tuple[str, ...], backbone: Backbone,
                 svm_weights: np.ndarray, svm_bias: np.ndarray, feature_scale: float,
                 regressor: BoxRegressor | None = None, device: str | torch.device | None = None,
                 cache: Cache | None = None):
        self.config = config
        self.classes = tuple(classes)
        self.device = torch.device(device or default_device())
        self.extractor = build_extractor(backbone, config.features, self.device, cache=cache,
                                         weights_id=weights_id(backbone))
        self.svm_weights = torch.as_tensor(np.asarray(svm_weights, dtype=np.float32), device=self.device)
        self.svm_bias = torch.as_tensor(np.asarray(svm_bias, dtype=np.float32), device=self.device)
        self.feature_scale = float(feature_scale)
        self.regressor = regressor

    @property
    def backbone(self) -> Backbone:
        return self.extractor.backbone

    # -- the steps of detection -------------------------------------------------------------
    def compute_maps(self, image: np.ndarray) -> list[torch.Tensor]:
        return self.extractor.compute_maps(image)

    def features(self, maps: list[torch.Tensor], boxes: np.ndarray, image_size: tuple[int, int]) -> torch.Tensor:
        """(N, 4) windows -> (N, D) norm-scaled SPP features on the device."""
        return self.extractor.pool(maps, boxes, image_size) * self.feature_scale

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, K) SVM margins, one matmul for all windows and classes."""
        return torch.addmm(self.svm_bias, features, self.svm_weights.T)

    def postprocess(self, boxes: np.ndarray, scores: torch.Tensor, features: torch.Tensor,
                    image_size: tuple[int, int]) -> Detections:
        """Recipe §9: threshold, per-class NMS, box regression, clip, NMS again, top-k per image."""
        cfg = self.config.test
        height, width = image_size
        scores_np = scores.float().cpu().numpy()
        window, label = np.nonzero(scores_np > cfg.score_threshold)
        if len(window) == 0:
            return Detections.empty()
        det_boxes = np.asarray(boxes, dtype=np.float64)[window]
        det_scores = scores_np[window, label]
        keep = batched_nms(det_boxes, det_scores, label, cfg.nms_iou)
        window, label, det_boxes, det_scores = window[keep], label[keep], det_boxes[keep], det_scores[keep]
        if self.regressor is not None:
            deltas = self.regressor.predict(features[torch.as_tensor(window, device=features.device)].cpu().numpy(), label)
            det_boxes = clip_boxes(apply_bbox_deltas(det_boxes, deltas), width, height)
            keep = batched_nms(det_boxes, det_scores, label, cfg.nms_iou)
            label, det_boxes, det_scores = label[keep], det_boxes[keep], det_scores[keep]
        top = np.argsort(-det_scores, kind="stable")[: cfg.max_per_image]
        return Detections(det_boxes[top], det_scores[top], label[top].astype(np.int64))

    # -- whole images -------------------------------------------------------------------------
    def detect_with_maps(self, maps: list[torch.Tensor], proposals: np.ndarray, image_size: tuple[int, int]) -> Detections:
        features = self.features(maps, proposals, image_size)
        return self.postprocess(proposals, self.score(features), features, image_size)

    def detect(self, image, proposals: np.ndarray | None = None) -> Detections:
        """An image (path, PIL image or (H, W, 3) uint8 RGB array) -> its detections.

        Proposals are computed with selective search (config.proposals) unless given as (N, 4).
        """
        image = as_rgb_array(image)
        if proposals is None:
            proposals = selective_search(image, self.config.proposals)
        return self.detect_with_maps(self.compute_maps(image), proposals, image.shape[:2])

    __call__ = detect

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
            "svm_weights": self.svm_weights.cpu(),
            "svm_bias": self.svm_bias.cpu(),
            "feature_scale": self.feature_scale,
            "regressor": None if self.regressor is None else self.regressor.to_state(),
        }

    def save(self, path: str | Path) -> None:
        buffer = io.BytesIO()
        torch.save(self.state(), buffer)
        atomic_write_bytes(Path(path), buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None, cache: Cache | None = None) -> Detector:
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"{path}: model file not found (train one with `sppnet train`)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several unrelated types for a bad file
            raise ModelFileError(f"{path}: not an sppnet model file ({type(err).__name__}: {err})") from None
        if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
            raise ModelFileError(f"{path}: not an sppnet model file of format {MODEL_FORMAT}")
        config = SPPConfig.from_dict(state["config"])
        backbone = build_backbone(state["backbone"], pretrained=False)
        backbone.load_state_dict(state["backbone_state"])
        regressor = None if state["regressor"] is None else BoxRegressor.from_state(state["regressor"])
        return cls(config, tuple(state["classes"]), backbone, state["svm_weights"].numpy(),
                   state["svm_bias"].numpy(), state["feature_scale"], regressor, device=device, cache=cache)
