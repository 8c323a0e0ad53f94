"""One image's detections, the result type every stage after scoring passes around."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """One image's detections: ``boxes`` (M, 4) float 0-based inclusive, ``scores`` (M,), ``labels`` (M,) class indices."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.scores)


def check_labels(labels: np.ndarray, num_classes: int, image_ids: np.ndarray | str) -> None:
    """Raise ValueError naming the image when a label (N,) is not a class index; ``image_ids`` (N,) or one id."""
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        image_id = np.broadcast_to(np.asarray(image_ids), labels.shape)[bad][0]
        raise ValueError(f"detection label {labels[bad][0]} of image '{image_id}' is not one of the "
                         f"{num_classes} class indices")


@dataclass
class ClassDetections:
    """One class's detections over a whole split, in a fixed order (a devkit result file's lines):
    ``image_ids`` (M,) str, ``scores`` (M,), ``boxes`` (M, 4) float 0-based inclusive.

    The order matters: the devkit sorts by score with a stable sort, so equal scores keep it.
    """

    image_ids: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray

    @classmethod
    def empty(cls) -> ClassDetections:
        return cls(np.zeros(0, dtype=str), np.zeros(0), np.zeros((0, 4)))

    def __len__(self) -> int:
        return len(self.scores)


def by_class(detections: dict[str, Detections], num_classes: int) -> list[ClassDetections]:
    """Image id -> Detections to one :class:`ClassDetections` per class index.

    Within a class: images in the dict's order, each image's detections in their own order; the
    order in which devkit result files are written. Raises ValueError for a label outside the classes.
    """
    if not detections:
        return [ClassDetections.empty() for _ in range(num_classes)]
    ids = np.repeat(np.array(list(detections), dtype=str), [len(d) for d in detections.values()])
    scores = np.concatenate([np.asarray(d.scores, dtype=np.float64).reshape(-1) for d in detections.values()])
    boxes = np.concatenate([np.asarray(d.boxes, dtype=np.float64).reshape(-1, 4) for d in detections.values()])
    labels = np.concatenate([np.asarray(d.labels, dtype=np.int64).reshape(-1) for d in detections.values()])
    check_labels(labels, num_classes, ids)
    return [ClassDetections(ids[labels == k], scores[labels == k], boxes[labels == k]) for k in range(num_classes)]
