"""Training stage by stage, each reading the previous stage's cached output.

Stages (recipe §4–§8): ``proposals`` (selective search, cached per image), ``conv`` (feature maps
per image and scale, cached in fp16), ``svm`` (feature-norm scale, then per-class linear SVMs with
hard-negative mining) and ``bbox`` (ridge box regressors). The result is one ``model.pt``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from detection.boxes import box_iou
from detection.cache import Cache, atomic_write_bytes
from detection.config import SPPConfig
from detection.detector import Detector, default_device, weights_id
from detection.errors import SppnetError
from detection.images import load_image
from detection.voc import ImageRecord, VOCDataset
from features.backbones import build_backbone
from features.extractor import build_extractor
from proposals.store import ProposalStore, with_ground_truth
from svm.bbox_regression import BoxRegressor, regression_training_set
from svm.feature_norm import feature_norm_scale, sample_indices
from svm.hard_negatives import HardNegativeSVMs


class TrainingError(SppnetError, RuntimeError):
    """Training cannot go on (e.g. images whose proposals failed); the message says which."""


@dataclass
class TrainingWindows:
    """One image's training windows: GT boxes first, then proposals (recipe §5).

    ``overlaps`` (N, K): each window's IoU with the best GT box of each class (difficult boxes
    included, so a window on a difficult object is never a negative); ``positive_labels`` (N,):
    the class of non-difficult GT boxes, -1 for every other window.
    """

    record: ImageRecord
    boxes: np.ndarray
    overlaps: np.ndarray
    positive_labels: np.ndarray


def training_windows(record: ImageRecord, proposals: np.ndarray, num_classes: int) -> TrainingWindows:
    boxes = with_ground_truth(proposals, record.boxes)
    iou = box_iou(boxes, record.boxes)  # (N, G)
    overlaps = np.zeros((len(boxes), num_classes))
    for label in np.unique(record.labels):
        overlaps[:, label] = iou[:, record.labels == label].max(axis=1)
    positive_labels = np.full(len(boxes), -1, dtype=np.int64)
    gt_positive = ~record.difficult
    positive_labels[: len(record.boxes)][gt_positive] = record.labels[gt_positive]
    return TrainingWindows(record, boxes, overlaps, positive_labels)


def summarise_svm_history(history: list[dict], classes: tuple[str, ...]) -> str:
    """One line per class: retrains, final positives/negatives and objective (R-CNN's log, condensed)."""
    lines = []
    for label, name in enumerate(classes):
        entries = [h for h in history if h["class"] == label]
        if entries:
            last = entries[-1]
            lines.append(f"svm {name}: {len(entries)} retrain(s), {last['n_pos']} positives, "
                         f"{last['n_neg']} cached negatives, objective {last['total']:.4f}")
        else:
            lines.append(f"svm {name}: not trained (no positives)")
    return "\n".join(lines)


class Trainer:
    """Runs the stages on a dataset, caching under ``work_dir/cache`` and writing ``work_dir/model.pt``."""

    def __init__(self, config: SPPConfig, work_dir: str | Path, device: str | None = None,
                 workers: int = 1, progress: bool = True, log: Callable[[str], None] = print):
        self.config = config
        self.work_dir = Path(work_dir)
        self.cache = Cache(self.work_dir / "cache")
        self.device = torch.device(device or default_device())
        self.workers = workers
        self.progress = progress
        self.log = log
        self.timings: dict[str, float] = {}

    def _bar(self, iterable, desc: str, total: int | None = None):
        return tqdm(iterable, desc=desc, total=total, disable=not self.progress, leave=False)

    def _timed(self, stage: str, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start
        return result

    # -- stages ---------------------------------------------------------------------------------
    def proposal_stage(self, dataset: VOCDataset) -> dict[str, np.ndarray]:
        store = ProposalStore(self.cache, self.config.proposals, workers=self.workers)
        boxes, failures = store.compute_all([(r.image_id, r.path) for r in dataset], progress=self.progress)
        if failures:
            lines = "\n".join(f"  {reason}" for reason in failures.values())
            raise TrainingError(f"{len(failures)} training image(s) could not be read:\n{lines}")
        return boxes

    def conv_stage(self, extractor, dataset: VOCDataset) -> None:
        for record in self._bar(dataset, "conv"):
            extractor.maps(record.image_id, lambda r=record: load_image(r.path))

    def _pooled(self, extractor, record: ImageRecord, boxes: np.ndarray) -> np.ndarray:
        maps, image_size = extractor.maps(record.image_id, lambda: load_image(record.path))
        return extractor.pool(maps, boxes, image_size).cpu().numpy()

    def feature_scale_stage(self, extractor, windows: list[TrainingWindows]) -> float:
        cfg = self.config.svm
        picks = sample_indices([len(w.boxes) for w in windows], n_images=cfg.norm_images,
                               n_boxes=cfg.norm_boxes_per_image, seed=cfg.norm_seed)
        samples = (self._pooled(extractor, windows[i].record, windows[i].boxes[boxes]) for i, boxes in picks)
        return feature_norm_scale(samples, target=cfg.feature_norm_target)

    def svm_stage(self, extractor, windows: list[TrainingWindows], scale: float,
                  num_classes: int) -> HardNegativeSVMs:
        positives, labels = [], []
        for w in self._bar(windows, "svm positives"):
            is_positive = w.positive_labels >= 0
            if is_positive.any():
                positives.append(self._pooled(extractor, w.record, w.boxes[is_positive]) * scale)
                labels.append(w.positive_labels[is_positive])
        dim = extractor.output_dim
        x_pos = np.concatenate(positives) if positives else np.zeros((0, dim), np.float32)
        y_pos = np.concatenate(labels) if labels else np.zeros(0, np.int64)

        def negative_images() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for w in self._bar(windows, "svm hard negatives"):
                yield self._pooled(extractor, w.record, w.boxes) * scale, w.overlaps

        svms = HardNegativeSVMs.from_config(self.config.svm)
        return svms.fit(x_pos, y_pos, negative_images(), num_classes=num_classes)

    def bbox_stage(self, extractor, windows: list[TrainingWindows], scale: float,
                   num_classes: int) -> BoxRegressor:
        features, targets, labels = [], [], []
        for w in self._bar(windows, "bbox regression"):
            record = w.record
            chosen, image_targets, image_labels = regression_training_set(
                w.boxes, record.boxes[~record.difficult], record.labels[~record.difficult],
                min_overlap=self.config.bbox.min_overlap)
            if len(chosen):
                features.append(self._pooled(extractor, record, w.boxes[chosen]) * scale)
                targets.append(image_targets)
                labels.append(image_labels)
        if not features:
            raise TrainingError(f"no window overlaps a ground-truth box by more than {self.config.bbox.min_overlap}; "
                                "cannot train box regression (use --no-bbox-reg)")
        regressor = BoxRegressor(ridge_lambda=self.config.bbox.ridge_lambda)
        return regressor.fit(np.concatenate(features), np.concatenate(targets), np.concatenate(labels),
                             num_classes=num_classes)

    # -- the whole run ---------------------------------------------------------------------------
    def train(self, dataset: VOCDataset) -> Detector:
        cfg = self.config
        num_classes = len(dataset.classes)
        proposals = self._timed("proposals", self.proposal_stage, dataset)
        backbone = build_backbone(cfg.features.backbone, cfg.features.backbone_weights)
        extractor = build_extractor(backbone, cfg.features, self.device, cache=self.cache,
                                    weights_id=weights_id(backbone))
        self._timed("conv", self.conv_stage, extractor, dataset)
        windows = [training_windows(r, proposals[r.image_id], num_classes) for r in dataset]
        scale = self._timed("feature_norm", self.feature_scale_stage, extractor, windows)
        svms = self._timed("svm", self.svm_stage, extractor, windows, scale, num_classes)
        self.log(summarise_svm_history(svms.history_, dataset.classes))
        regressor = None
        if cfg.bbox.enabled:
            regressor = self._timed("bbox", self.bbox_stage, extractor, windows, scale, num_classes)
        detector = Detector(cfg, dataset.classes, backbone, svms.coef_, svms.intercept_, scale, regressor,
                            device=self.device)
        detector.save(self.work_dir / "model.pt")
        atomic_write_bytes(self.work_dir / "train_log.json", json.dumps(
            {"timings_s": self.timings, "images": len(dataset), "classes": list(dataset.classes),
             "feature_scale": scale, "svm_history": svms.history_}, indent=2, default=str).encode())
        return detector
