"""Each training image's windows and their overlaps with the ground truth (recipe §5–§8)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detection.core.boxes import box_iou
from detection.data.records import ImageRecord
from proposals.store import with_ground_truth


@dataclass
class TrainingWindows:
    """One image's training windows: GT boxes first, then proposals (recipe §5).

    ``overlaps`` (N, K): each window's IoU with the best GT box of each class (difficult boxes
    included, so a window on a difficult object is never a negative); ``positive_labels`` (N,):
    the class of each GT box, difficult ones included (R-CNN's roidb), -1 for every other window;
    ``difficult`` (N,): True for the difficult GT boxes.
    """

    record: ImageRecord
    boxes: np.ndarray
    overlaps: np.ndarray
    positive_labels: np.ndarray
    difficult: np.ndarray

    def positives(self, use_difficult: bool = True) -> np.ndarray:
        """(N,) bool: the SVM positives (§7), the GT boxes, difficult ones only if ``use_difficult``."""
        return (self.positive_labels >= 0) & (use_difficult | ~self.difficult)

    def ground_truth(self, use_difficult: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The GT boxes (G, 4) and classes (G,) box regression aims at (§8), difficult ones only if ``use_difficult``."""
        keep = use_difficult | ~self.record.difficult
        return self.record.boxes[keep], self.record.labels[keep]


def training_windows(record: ImageRecord, proposals: np.ndarray, num_classes: int) -> TrainingWindows:
    boxes = with_ground_truth(proposals, record.boxes)
    iou = box_iou(boxes, record.boxes)  # (N, G)
    overlaps = np.zeros((len(boxes), num_classes))
    for label in np.unique(record.labels):
        overlaps[:, label] = iou[:, record.labels == label].max(axis=1)
    positive_labels = np.full(len(boxes), -1, dtype=np.int64)
    positive_labels[: len(record.boxes)] = record.labels
    difficult = np.zeros(len(boxes), bool)
    difficult[: len(record.boxes)] = record.difficult
    return TrainingWindows(record, boxes, overlaps, positive_labels, difficult)


def finetune_targets(windows: TrainingWindows) -> tuple[np.ndarray, np.ndarray]:
    """(N,) max IoU with any GT box and (N,) that box's class (-1 where a window touches none), for §6.

    Difficult boxes count like the others: a window on a difficult object is that object, not background.
    """
    overlap = windows.overlaps.max(axis=1)
    label = np.where(overlap > 0, windows.overlaps.argmax(axis=1), -1)
    return overlap, label
