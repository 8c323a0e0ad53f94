"""One image's detections, the result type every stage after scoring passes around."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """One image's detections: ``boxes`` (M, 4) float 0-based inclusive, ``scores`` (M,) SVM margins,
    ``labels`` (M,) class indices, and ``probabilities`` (M,) in [0, 1] from the model's calibration
    (svm/calibration.py), or None for a model without one.

    To draw, save or convert them with their image and class names, see :class:`detection.results.Result`.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray | None = None

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.scores)

    def select(self, index: np.ndarray) -> Detections:
        """The detections at ``index`` (a boolean mask (M,) or integer indices), every field alike."""
        return Detections(np.asarray(self.boxes).reshape(-1, 4)[index], np.asarray(self.scores)[index],
                          np.asarray(self.labels)[index],
                          None if self.probabilities is None else np.asarray(self.probabilities)[index])

    @property
    def confidences(self) -> np.ndarray:
        """What a user thresholds: the probabilities when the model is calibrated, else the margins."""
        return np.asarray(self.scores if self.probabilities is None else self.probabilities)


def check_labels(labels: np.ndarray, num_classes: int, image_ids: np.ndarray | str) -> None:
    """Raise ValueError naming the image when a label (N,) is not a class index; ``image_ids`` (N,) or one id."""
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        image_id = np.broadcast_to(np.asarray(image_ids), labels.shape)[bad][0]
        raise ValueError(f"detection label {labels[bad][0]} of image '{image_id}' is not one of the "
                         f"{num_classes} class indices")
