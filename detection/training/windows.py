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


def finetune_targets(windows: TrainingWindows) -> tuple[np.ndarray, np.ndarray]:
    """(N,) max IoU with any GT box and (N,) that box's class (-1 where a window touches none), for §6.

    Difficult boxes count like the others: a window on a difficult object is that object, not background.
    """
    overlap = windows.overlaps.max(axis=1)
    label = np.where(overlap > 0, windows.overlaps.argmax(axis=1), -1)
    return overlap, label
