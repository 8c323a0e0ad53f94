"""The filters a batch applies to each image's detections, and its ``predictions.jsonl`` records."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from detection.core.detections import Detections
from detection.runs.batch.errors import BatchError
from detection.runs.batch.video import frame_key


@dataclass(frozen=True)
class DetectionFilter:
    """Keep detections scoring (margin) at least ``min_score`` and of probability at least
    ``min_probability``, of the class indices ``labels``, at most ``topk`` per image, best first
    (by probability when the detections have them, else by margin)."""

    min_score: float | None = None
    topk: int | None = None
    labels: tuple[int, ...] | None = None
    min_probability: float | None = None

    def __post_init__(self) -> None:
        if self.min_probability is not None and not 0 <= self.min_probability <= 1:
            raise BatchError(f"--min-prob: a probability in [0, 1], got {self.min_probability}")

    def __call__(self, dets: Detections) -> Detections:
        keep = np.ones(len(dets), dtype=bool)
        if self.min_score is not None:
            keep &= np.asarray(dets.scores) >= self.min_score
        if self.min_probability is not None and len(dets):  # an image without detections has nothing to test
            if dets.probabilities is None:
                raise BatchError("a probability threshold needs a calibrated model (trained with calibration)")
            keep &= np.asarray(dets.probabilities) >= self.min_probability
        if self.labels is not None:
            keep &= np.isin(dets.labels, self.labels)
        order = np.flatnonzero(keep)
        order = order[np.argsort(-dets.confidences[order], kind="stable")][: self.topk]
        return dets.select(order)


def class_indices(names: Sequence[str], classes: Sequence[str]) -> tuple[int, ...]:
    """Class names -> their indices in the model's ``classes``; an unknown name is a BatchError."""
    unknown = [name for name in names if name not in classes]
    if unknown:
        raise BatchError(f"--classes: {', '.join(unknown)} not among the model's classes ({', '.join(classes)})")
    return tuple(classes.index(name) for name in names)


def prediction_record(path: str, image_size: tuple[int, int], dets: Detections, classes: Sequence[str],
                      frame: int | None = None, time: float | None = None) -> dict:
    """One ``predictions.jsonl`` line (as a dict); ``image_size`` is (height, width).

    Each detection has its ``score`` (the SVM margin) and, from a calibrated model, its ``probability``.
    A video frame's record also has ``frame`` (its 0-based index) and ``time`` (seconds).
    """
    record = {"file": path}
    if frame is not None:
        record.update(frame=int(frame), time=time)
    items = [{"box": [round(float(v), 2) for v in box], "score": float(score), "label": classes[int(label)]}
             for box, score, label in zip(dets.boxes, dets.scores, dets.labels)]
    if dets.probabilities is not None:
        for item, probability in zip(items, dets.probabilities):
            item["probability"] = round(float(probability), 6)
    record.update(width=int(image_size[1]), height=int(image_size[0]), detections=items)
    return record


def record_key(record: dict) -> str:
    """The name of a record's image: its file, or ``video#frame=NNNNNN`` for a video frame."""
    return record["file"] if record.get("frame") is None else frame_key(record["file"], record["frame"])


def record_detections(record: dict, classes: Sequence[str]) -> Detections:
    """A ``predictions.jsonl`` record's detections, labels as indices into ``classes``."""
    items = record["detections"]
    calibrated = bool(items) and all("probability" in d for d in items)
    return Detections(np.array([d["box"] for d in items], dtype=np.float64).reshape(-1, 4),
                      np.array([d["score"] for d in items], dtype=np.float64),
                      np.array([classes.index(d["label"]) for d in items], dtype=np.int64),
                      np.array([d["probability"] for d in items], dtype=np.float64) if calibrated else None)
