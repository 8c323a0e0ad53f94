"""How far calibrated probabilities can be trusted on a split with ground truth: a reliability table.

A detection of probability p should be right about p of the time. Each detection that has a
probability is labelled right or wrong exactly as the VOC evaluation labels it (recipe §10: per
class, in decreasing score order, IoU >= the threshold with a GT box of its class not matched by
a better detection); detections on difficult boxes, which the evaluation ignores, are left out.
The probabilities are binned into equal-width bins; each bin reports its count, mean probability
and the share of right detections, and the expected calibration error (ECE) is the count-weighted
mean of |mean probability - share right| over the bins (Guo et al. 2017).
"""
from __future__ import annotations

import numpy as np

from detection.core.detections import Detections
from detection.data.records import Dataset
from detection.evaluation.voc_eval import (
    _best_ground_truth,
    _ground_truth_by_class,
    _true_false_positives,
    check_split_images,
)


def labelled_probabilities(dataset: Dataset, detections: dict[str, Detections],
                           iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (M,) of the detections that have one and that the evaluation counts, and
    whether each is a true positive (M,) bool. Image id -> Detections as :func:`evaluate_detections` takes them."""
    check_split_images(dataset, detections)
    ground_truth = _ground_truth_by_class(dataset)
    kept = [(image_id, d) for image_id, d in detections.items() if len(d) and d.probabilities is not None]
    if not kept:
        return np.zeros(0), np.zeros(0, dtype=bool)
    ids = np.repeat(np.array([i for i, _ in kept], dtype=str), [len(d) for _, d in kept])
    scores = np.concatenate([np.asarray(d.scores, np.float64) for _, d in kept])
    probabilities = np.concatenate([np.asarray(d.probabilities, np.float64) for _, d in kept])
    boxes = np.concatenate([np.asarray(d.boxes, np.float64).reshape(-1, 4) for _, d in kept])
    labels = np.concatenate([np.asarray(d.labels, np.int64) for _, d in kept])
    all_probabilities, all_right = [], []
    for label in np.unique(labels):
        mine = np.flatnonzero(labels == label)
        order = mine[np.argsort(-scores[mine], kind="stable")]
        best_iou, best_gt, difficult = _best_ground_truth(ids[order], boxes[order], ground_truth[label])
        tp, fp = _true_false_positives(best_iou, best_gt, difficult, iou_threshold)
        counted = tp | fp
        all_probabilities.append(probabilities[order][counted])
        all_right.append(tp[counted])
    return np.concatenate(all_probabilities), np.concatenate(all_right)


def reliability(probabilities: np.ndarray, right: np.ndarray, bins: int = 10) -> dict:
    """(M,) probabilities in [0, 1] and (M,) right/wrong -> ``{"count", "ece", "bins": [{"low", "high",
    "count", "mean_probability", "share_right"}, ...]}`` (empty bins are listed with count 0 and
    None for the means); a probability of exactly 1 falls in the last bin."""
    probabilities = np.asarray(probabilities, np.float64).reshape(-1)
    right = np.asarray(right, bool).reshape(-1)
    if len(probabilities) != len(right):
        raise ValueError(f"{len(probabilities)} probabilities and {len(right)} labels")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    index = np.minimum((probabilities * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    sum_p = np.bincount(index, weights=probabilities, minlength=bins)
    sum_right = np.bincount(index, weights=right, minlength=bins)
    table, ece = [], 0.0
    for b in range(bins):
        n = int(counts[b])
        mean_p = float(sum_p[b] / n) if n else None
        share = float(sum_right[b] / n) if n else None
        if n:
            ece += n / len(probabilities) * abs(mean_p - share)
        table.append({"low": b / bins, "high": (b + 1) / bins, "count": n, "mean_probability": mean_p,
                      "share_right": share})
    return {"count": int(len(probabilities)), "ece": float(ece), "bins": table}


def format_reliability(result: dict) -> str:
    """:func:`reliability` as a text table (bins with detections only) and the ECE line."""
    rows = [f"{'probability':<11}  {'detections':>10}  {'mean p':>6}  {'right':>6}"]
    for b in result["bins"]:
        if b["count"]:
            rows.append(f"{b['low']:.1f}-{b['high']:.1f}".ljust(11)
                        + f"  {b['count']:>10}  {b['mean_probability']:6.3f}  {b['share_right']:6.3f}")
    rows.append(f"ECE {result['ece']:.3f} over {result['count']} detections")
    return "\n".join(rows)
