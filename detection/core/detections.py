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
