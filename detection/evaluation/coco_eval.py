"""pycocotools evaluation of a VOC-format split (``sppnet eval --metric coco``).

Boxes and category ids are converted as :mod:`detection.data.coco` describes. The GT is converted in
memory, one COCO image per split image (ids 1..N in split order) and one annotation per object,
``area`` = its box area. A *difficult* box becomes ``iscrowd = 1``. pycocotools ignores detections
that match a crowd box instead of counting them as false positives, and lets any number of them
match it, which is what the devkit does with difficult boxes; the one difference is that it
measures overlap with a crowd box as intersection over the *detection's* area rather than IoU, so
slightly more detections on difficult objects are ignored than in VOC's own evaluation. Difficult
boxes are not counted as objects to find (recall), as in VOC.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

from detection.core.detections import Detections, check_labels
from detection.data.coco import coco_annotations, voc_to_coco
from detection.data.voc import VOCDataset

# COCOeval.stats indices of the summary numbers reported, by name
COCO_SUMMARY = {"AP": 0, "AP50": 1, "AP75": 2, "AP_small": 3, "AP_medium": 4, "AP_large": 5}


def _coco(dataset: dict):
    """A pycocotools COCO object over an in-memory dict, without its progress prints."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _per_class_ap(precision: np.ndarray, classes: tuple[str, ...]) -> dict[str, float | None]:
    """COCOeval's precision (T, R, K, A, M) -> class -> AP over IoU .50:.95, all areas, 100 detections.

    None for a class without (non-crowd) GT boxes, which pycocotools leaves out of the mean as well.
    """
    ap = {}
    for k, name in enumerate(classes):
        values = precision[:, :, k, 0, -1]
        valid = values > -1
        ap[name] = float(values[valid].mean()) if valid.any() else None
    return ap


def coco_evaluate(dataset: VOCDataset, detections: dict[str, Detections]) -> dict:
    """pycocotools bbox AP of ``detections`` (image id -> Detections) on a VOC-format split.

    Returns ``{"metric": "coco", "mAP": AP, "AP": ..., "AP50": ..., "AP75": ..., "AP_small": ...,
    "AP_medium": ..., "AP_large": ..., "ap": {class: AP or None}}``; a summary number without GT to
    measure it on (e.g. no small objects) is None. As in :func:`evaluate_detections`, an image
    outside the split is an error.
    """
    from pycocotools.cocoeval import COCOeval

    ids = {record.image_id: i for i, record in enumerate(dataset, start=1)}
    unknown = sorted(set(detections) - set(ids))
    if unknown:
        raise ValueError(f"detections for {len(unknown)} image(s) not in split '{dataset.split}' "
                         f"of {dataset.root}, e.g. '{unknown[0]}'")
    ground_truth = voc_to_coco(dataset)
    annotations: list[dict] = []
    for image_id, dets in detections.items():
        check_labels(np.asarray(dets.labels, dtype=np.int64), len(dataset.classes), image_id)
        annotations += coco_annotations(ids[image_id], dets, first_id=len(annotations) + 1)
    # built directly rather than through loadRes, which fails on an empty result list
    results = {"images": ground_truth["images"], "categories": ground_truth["categories"], "annotations": annotations}
    evaluator = COCOeval(_coco(ground_truth), _coco(results), "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    summary = {name: (float(evaluator.stats[i]) if evaluator.stats[i] > -1 else None)
               for name, i in COCO_SUMMARY.items()}
    return {"metric": "coco", "mAP": summary["AP"], **summary,
            "ap": _per_class_ap(evaluator.eval["precision"], dataset.classes)}


def format_coco_table(result: dict) -> str:
    """:func:`coco_evaluate`'s per-class APs and summary numbers as an aligned text table, in percent."""
    def percent(value: float | None) -> str:
        return "   n/a" if value is None else f"{100 * value:6.1f}"

    names = list(result["ap"]) + list(COCO_SUMMARY)
    width = max(len("class"), *map(len, names))
    rule = f"{'-' * width}  {'-' * 6}"
    rows = [f"{'class':<{width}}  {'AP (%)':>6}", rule]
    rows += [f"{name:<{width}}  {percent(ap)}" for name, ap in result["ap"].items()]
    rows += [rule] + [f"{name:<{width}}  {percent(result[name])}" for name in COCO_SUMMARY]
    return "\n".join(rows) + "\n(AP: IoU .50:.95, AP50/AP75: IoU .50/.75; pycocotools, difficult boxes as crowd)"
