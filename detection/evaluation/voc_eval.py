"""PASCAL VOC detection evaluation: per-class average precision and mAP (recipe §10).

Follows the devkit's ``VOCevaldet.m`` (and py-faster-rcnn's ``voc_eval.py`` port of it):

- detections of a class are sorted by decreasing score; equal scores keep their input order, as
  MATLAB's stable ``sort`` keeps the result file's order (numpy's default sort would not). The
  input is therefore per class (:class:`~detection.core.detections.ClassDetections`): a class's
  result file read in line order, or, for detections held in memory, in the order
  :func:`~detection.data.devkit.write_devkit_results` writes them;
- each detection is compared with the GT boxes of its class in its image only, and takes the one
  of highest IoU (+1 inclusive areas; the first such box on ties). IoU ≥ threshold (0.5 itself
  counts, as ``ovmax >= minoverlap`` in the devkit; py-faster-rcnn's ``>`` differs here) makes it
  a true positive, unless that box is difficult (then it is neither TP nor FP) or was already
  matched by a higher-scoring detection (then it is a false positive). Anything else is a FP;
- recall = cumsum(TP) / #non-difficult GT, precision = cumsum(TP) / cumsum(TP + FP);
- the 11-point AP sums ``p / 11`` over the thresholds ``t = 0:0.1:1`` as MATLAB computes them
  (:data:`ELEVEN_POINTS`: the fourth is 0.30000000000000004, so a recall of exactly 3/10 does not
  reach it; py-faster-rcnn's ``np.arange(0, 1.1, 0.1)`` also misses 6/10 and 7/10, which MATLAB's
  exact 0.6 and 0.7 let through).

One deliberate departure from the letter of the reference code, outside its usual inputs:
precision is 0, not 0/0 = NaN, at leading detections that only hit difficult boxes (the fix
Detectron's copy of ``voc_eval.py`` made; MATLAB's ``max`` skips the NaN, so the AP is the same
unless every detection of the class hits a difficult box, where the devkit gives NaN and this 0).

A class without any non-difficult GT box has no defined recall; its AP is reported as 0.0 (the
devkit's 11-point value there) and, as in py-faster-rcnn's ``np.mean(aps)``, counts in the mAP.

AP by object size (:func:`evaluate_by_size`, not in the devkit) takes COCOeval's area thresholds
(:data:`SIZE_RANGES`, closed at both ends as there) over the +1-inclusive box areas (not a COCO
annotation's mask ``area``): GT boxes outside the range are ignored as difficult ones are, and a
detection outside it that is not a true positive is dropped rather than counted as a false
positive, as COCOeval drops it. The matching stays the devkit's: a detection takes its best-IoU
box even when that box is ignored, and any number of detections on an ignored box are ignored.
COCOeval's greedy matching differs there: it tries in-range boxes first and lets an out-of-range
box absorb one detection (the next one on it is a false positive). A class with no object of a
size has no AP at that size and stays out of that size's mAP, as COCOeval leaves it out.
"""
from __future__ import annotations

import numpy as np

from detection.core.boxes import box_area, max_overlaps
from detection.core.detections import ClassDetections, Detections, by_class
from detection.data.devkit import ResultsError
from detection.data.records import Dataset

METRICS = ("voc07", "voc10")

# VOCevaldet.m's ``for t=0:0.1:1`` as MATLAB evaluates the colon: the first half of the range as
# start + k * step, the second half as stop - k * step (MathWorks' description of the colon
# operator), so 0.30000000000000004 but exactly 0.6 and 0.7, unlike np.arange(11) * 0.1.
_K = np.arange(11)
ELEVEN_POINTS = np.where(_K <= 5, _K * 0.1, 1 - (10 - _K) * 0.1)

# COCOeval's areaRng (pixels², closed ranges): small up to 32², medium 32² to 96², large from 96²
SIZE_RANGES = {"all": (0.0, np.inf), "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
               "large": (96.0 ** 2, np.inf)}

# image id -> (GT boxes (G, 4) of one class, their difficult flags (G,))
GroundTruth = dict[str, tuple[np.ndarray, np.ndarray]]


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown AP metric {metric!r}; expected one of {', '.join(METRICS)}")


def voc_ap(recall: np.ndarray, precision: np.ndarray, metric: str = "voc07") -> float:
    """Average precision of a precision/recall curve, (M,), (M,) in decreasing-score order -> float.

    ``voc07``: mean over t in :data:`ELEVEN_POINTS` of the highest precision at recall ≥ t (0 if
    none). The devkit adds ``p / 11`` one threshold at a time, which can end an ulp away (a perfect
    class scores 1.0000000000000002 there); the mean agrees with it to 1e-15 and gives 1.0.
    ``voc10``: area under the monotone (non-increasing) envelope of precision, as ``VOCap.m``.
    """
    _check_metric(metric)
    recall = np.asarray(recall, dtype=np.float64).reshape(-1)
    precision = np.asarray(precision, dtype=np.float64).reshape(-1)
    if recall.shape != precision.shape:
        raise ValueError(f"recall {recall.shape} and precision {precision.shape} differ in length")
    if metric == "voc07":
        reached = recall[None, :] >= ELEVEN_POINTS[:, None]
        # precision is never negative, so an initial 0 is exactly the "0 if none" rule
        return float(np.mean(np.max(np.broadcast_to(precision, reached.shape), axis=1, where=reached, initial=0.0)))
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    envelope = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * envelope[steps + 1]))


def _best_ground_truth(image_ids: np.ndarray, boxes: np.ndarray,
                       ground_truth: GroundTruth) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best-IoU GT box of each detection within its own image.

    (M,) ids, (M, 4) boxes -> best IoU (M,) (0 where the image has no GT), index of that box (M,)
    into the concatenation of all images' GT boxes (-1 where none), and that concatenation's
    difficult flags (G_total,).
    """
    best_iou = np.zeros(len(image_ids))
    best_gt = np.full(len(image_ids), -1, dtype=np.int64)
    difficult_parts, offset = [], 0
    names, inverse = np.unique(image_ids, return_inverse=True)
    by_image = np.argsort(inverse, kind="stable")
    groups = np.split(by_image, np.cumsum(np.bincount(inverse, minlength=len(names)))[:-1])
    for name, members in zip(names, groups):
        if name not in ground_truth:
            continue
        gt_boxes, difficult = ground_truth[name]
        gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
        if len(gt_boxes) == 0:
            continue
        iou, index = max_overlaps(boxes[members], gt_boxes)
        best_iou[members] = iou
        best_gt[members] = index + offset
        difficult_parts.append(np.asarray(difficult, dtype=bool).reshape(-1))
        offset += len(gt_boxes)
    difficult_all = np.concatenate(difficult_parts) if difficult_parts else np.zeros(0, dtype=bool)
    return best_iou, best_gt, difficult_all


def _true_false_positives(best_iou: np.ndarray, best_gt: np.ndarray, difficult: np.ndarray,
                          iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(M,) best IoU and GT index in decreasing-score order -> TP (M,) and FP (M,) boolean flags.

    The devkit's sequential loop, vectorised: a detection's best GT box does not depend on which
    boxes are already matched, so the TP for a box is simply the first detection that claims it.
    """
    hit = best_iou >= iou_threshold
    ignored = np.zeros_like(hit)
    ignored[hit] = difficult[best_gt[hit]]
    claims = np.flatnonzero(hit & ~ignored)
    _, first = np.unique(best_gt[claims], return_index=True)
    tp = np.zeros_like(hit)
    tp[claims[first]] = True
    # a miss, or a later claim of an already matched box; difficult hits are neither TP nor FP
    return tp, ~tp & ~ignored


def _in_range(boxes: np.ndarray, area_range: tuple[float, float]) -> np.ndarray:
    """(N, 4) boxes -> (N,) bool: area within [low, high], COCOeval's closed interval."""
    area = box_area(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    return (area >= area_range[0]) & (area <= area_range[1])


def evaluate_class(image_ids: np.ndarray, scores: np.ndarray, boxes: np.ndarray,
                   ground_truth: GroundTruth, iou_threshold: float = 0.5,
                   metric: str = "voc07",
                   area_range: tuple[float, float] | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """AP of one class, and its recall (M',) and precision (M',) in decreasing-score order.

    ``image_ids`` (M,), ``scores`` (M,), ``boxes`` (M, 4) 0-based inclusive: every detection of the
    class. ``ground_truth``: image id -> (GT boxes (G, 4) of the class, difficult flags (G,)); an
    image absent from it has no GT of the class, so its detections are false positives.
    Without non-difficult GT boxes recall is 0/0 = NaN and the AP is 0.0 (see the module doc).
    ``area_range`` (low, high) in pixels²: the AP of the objects of that size (module doc); the
    curve then leaves out the dropped detections (M' <= M).
    """
    _check_metric(metric)
    if not 0.0 < iou_threshold <= 1.0:
        # at 0 a detection touching no GT box would "match" one (the devkit needs overlap > 0)
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    image_ids = np.asarray(image_ids, dtype=str).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(image_ids) == len(scores) == len(boxes):
        raise ValueError(f"{len(image_ids)} image ids, {len(scores)} scores and {len(boxes)} boxes: lengths differ")
    order = np.argsort(-scores, kind="stable")
    if area_range is not None:
        ground_truth = {name: (gt, np.asarray(difficult, dtype=bool).reshape(-1) | ~_in_range(gt, area_range))
                        for name, (gt, difficult) in ground_truth.items()}
    best_iou, best_gt, difficult = _best_ground_truth(image_ids[order], boxes[order], ground_truth)
    tp, fp = _true_false_positives(best_iou, best_gt, difficult, iou_threshold)
    if area_range is not None:
        counted = tp | (fp & _in_range(boxes[order], area_range))
        tp, fp = tp[counted], fp[counted]
    num_positives = sum(int(np.count_nonzero(~np.asarray(d, dtype=bool))) for _, d in ground_truth.values())
    tp_sum, fp_sum = np.cumsum(tp, dtype=np.float64), np.cumsum(fp, dtype=np.float64)
    recall = tp_sum / num_positives if num_positives else np.full(len(tp_sum), np.nan)
    precision = tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(np.float64).eps)
    ap = voc_ap(recall, precision, metric) if num_positives else 0.0
    return ap, recall, precision


def _ground_truth_by_class(dataset: Dataset) -> list[GroundTruth]:
    """For each class index, image id -> (boxes (G, 4), difficult (G,)) of the images holding that class."""
    per_class: list[GroundTruth] = [{} for _ in dataset.classes]
    for record in dataset:
        for label in np.unique(record.labels):
            mine = record.labels == label
            per_class[label][record.image_id] = (record.boxes[mine], record.difficult[mine])
    return per_class


def check_split_images(dataset: Dataset, image_ids) -> None:
    """Raise :class:`~detection.data.devkit.ResultsError` when an image id is not in the split (the
    devkit's "unrecognized image"), as that means results of another split."""
    unknown = sorted(set(image_ids) - {record.image_id for record in dataset})
    if unknown:
        raise ResultsError(f"detections for {len(unknown)} image(s) not in split '{dataset.split}' "
                         f"of {dataset.root}, e.g. '{unknown[0]}'")


def _checked_ground_truth(dataset: Dataset, results: list[ClassDetections], metric: str) -> list[GroundTruth]:
    """The split's GT per class, once ``metric`` is known and ``results`` hold one entry per class of its images."""
    _check_metric(metric)
    if len(results) != len(dataset.classes):
        raise ValueError(f"{len(results)} classes of detections for the {len(dataset.classes)} classes of the data set")
    check_split_images(dataset, {image_id for r in results for image_id in r.image_ids.tolist()})
    return _ground_truth_by_class(dataset)


def class_curves(dataset: Dataset, results: list[ClassDetections], metric: str = "voc07",
                 iou_threshold: float = 0.5) -> dict[str, tuple[float, np.ndarray, np.ndarray]]:
    """Class name -> (AP, recall (M,), precision (M,)) of :func:`evaluate_class`, for every class.

    ``results[k]``: the detections of ``dataset.classes[k]``, in their file order. Images of the
    split without detections have none; an image outside the split is an error (:func:`check_split_images`).
    """
    ground_truth = _checked_ground_truth(dataset, results, metric)
    return {name: evaluate_class(r.image_ids, r.scores, r.boxes, ground_truth[label],
                                 iou_threshold=iou_threshold, metric=metric)
            for label, (name, r) in enumerate(zip(dataset.classes, results))}


def evaluate_by_class(dataset: Dataset, results: list[ClassDetections], metric: str = "voc07",
                      iou_threshold: float = 0.5) -> dict:
    """Per-class AP and mAP of per-class detections (as :func:`class_curves` takes them).

    Returns ``{"metric": metric, "mAP": float, "ap": {class name: float, ...}}``, JSON-ready.
    """
    ap = {name: curve[0] for name, curve in class_curves(dataset, results, metric, iou_threshold).items()}
    return {"metric": metric, "mAP": float(np.mean(list(ap.values()))), "ap": ap}


def evaluate_detections(dataset: Dataset, detections: dict[str, Detections], metric: str = "voc07",
                        iou_threshold: float = 0.5) -> dict:
    """:func:`evaluate_by_class` of ``detections`` (image id -> Detections; labels index ``dataset.classes``),
    ties in score broken in the order their devkit files would list them (:func:`~detection.core.detections.by_class`).
    """
    check_split_images(dataset, detections)
    return evaluate_by_class(dataset, by_class(detections, len(dataset.classes)), metric, iou_threshold)


def evaluate_by_size(dataset: Dataset, results: list[ClassDetections], metric: str = "voc07",
                     iou_threshold: float = 0.5) -> dict:
    """Per-class AP and mAP for each of :data:`SIZE_RANGES`, and how many objects of each size.

    ``results`` as :func:`class_curves` takes them. Returns ``{"metric", "iou_threshold", "sizes":
    {size: {"mAP": float or None, "objects": int, "ap": {class: float or None}}}}``, JSON-ready; None
    where no non-difficult object has that size (left out of the mean). "all" equals :func:`evaluate_by_class`
    but for classes without any object, which it leaves out.
    """
    ground_truth = _checked_ground_truth(dataset, results, metric)
    sizes = {}
    for size, area_range in SIZE_RANGES.items():
        ap, objects = {}, 0
        for name, r, truth in zip(dataset.classes, results, ground_truth):
            count = sum(int(np.count_nonzero(~np.asarray(d, dtype=bool) & _in_range(g, area_range)))
                        for g, d in truth.values())
            objects += count
            ap[name] = evaluate_class(r.image_ids, r.scores, r.boxes, truth, iou_threshold, metric,
                                      area_range)[0] if count else None
        present = [v for v in ap.values() if v is not None]
        sizes[size] = {"mAP": float(np.mean(present)) if present else None, "objects": objects, "ap": ap}
    return {"metric": metric, "iou_threshold": iou_threshold, "sizes": sizes}


def format_size_table(result: dict) -> str:
    """:func:`evaluate_by_size` as an aligned text table, in percent, a column per size ("–": no such object)."""
    sizes = result["sizes"]
    names = list(next(iter(sizes.values()))["ap"])
    mean_label = f"mAP ({result['metric']})"
    width = max([len("objects"), len(mean_label), *map(len, names)])
    cell = max(8, *map(len, sizes))

    def row(label: str, values) -> str:
        return f"{label:<{width}}" + "".join(f"  {v:>{cell}}" for v in values)

    def percent(value) -> str:
        return "–" if value is None else f"{100 * value:.1f}"

    rule = "-" * (width + (cell + 2) * len(sizes))
    rows = [row("class", sizes), rule]
    rows += [row(name, (percent(s["ap"][name]) for s in sizes.values())) for name in names]
    rows += [rule, row(mean_label, (percent(s["mAP"]) for s in sizes.values())),
             row("objects", (str(s["objects"]) for s in sizes.values()))]
    return "\n".join(rows) + f"\nAP at IoU {result['iou_threshold']:g} by {size_ranges_text()}"


def size_ranges_text() -> str:
    """The :data:`SIZE_RANGES` in words, for a table's legend."""
    bounds = ", ".join(f"{size} {_pixels(low)} to {_pixels(high)}" for size, (low, high) in SIZE_RANGES.items()
                       if size != "all")
    return f"box area in pixels² ({bounds}; COCO's thresholds, ends included)"


def _pixels(area: float) -> str:
    """A :data:`SIZE_RANGES` bound as the square it is: 1024.0 -> '32²', inf -> '∞', 0 -> '0'."""
    if np.isinf(area) or area == 0:
        return "∞" if area else "0"
    return f"{np.sqrt(area):g}²"


def format_ap_table(result: dict) -> str:
    """The per-class APs and the mAP of :func:`evaluate_detections` as an aligned text table, in percent."""
    mean_label = f"mAP ({result['metric']})"
    width = max([len("class"), len(mean_label), *map(len, result["ap"])])
    rule = f"{'-' * width}  {'-' * 6}"
    rows = [f"{'class':<{width}}  {'AP (%)':>6}", rule]
    rows += [f"{name:<{width}}  {100 * ap:6.1f}" for name, ap in result["ap"].items()]
    rows += [rule, f"{mean_label:<{width}}  {100 * result['mAP']:6.1f}"]
    return "\n".join(rows)
