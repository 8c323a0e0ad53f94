"""pycocotools evaluation of a split (``sppnet eval --metric coco``), of either format.

A COCO data set is scored against its own annotation file (:func:`~detection.data.coco.coco_ground_truth`).
What follows is about a VOC-format one.

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

from detection.core.boxes import to_coco_boxes
from detection.core.detections import ClassDetections
from detection.data.coco import coco_ground_truth
from detection.data.records import Dataset
from detection.evaluation.voc_eval import check_split_images

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


def _per_class_ap(precision: np.ndarray, categories: list[dict],
                  classes: tuple[str, ...]) -> dict[str, float | None]:
    """COCOeval's precision (T, R, K, A, M) -> class -> AP over IoU .50:.95, all areas, 100 detections.

    ``categories[k]`` is the category of ``classes[k]``; COCOeval's K axis is in increasing category id.
    None for a class without (non-crowd) GT boxes, which pycocotools leaves out of the mean as well.
    """
    axis = {category_id: k for k, category_id in enumerate(sorted(c["id"] for c in categories))}
    ap = {}
    for category, name in zip(categories, classes):
        values = precision[:, :, axis[category["id"]], 0, -1]
        valid = values > -1
        ap[name] = float(values[valid].mean()) if valid.any() else None
    return ap


def _result_annotations(ground_truth: dict, dataset: Dataset, results: list[ClassDetections]) -> list[dict]:
    """Per-class detections -> pycocotools result annotations, with the ground truth's image and category ids."""
    image_ids = {record.image_id: image["id"] for record, image in zip(dataset, ground_truth["images"])}
    annotations: list[dict] = []
    for category, r in zip(ground_truth["categories"], results, strict=True):
        boxes = to_coco_boxes(r.boxes)
        annotations += [{"id": len(annotations) + i + 1, "image_id": image_ids[image_id], "category_id": category["id"],
                         "bbox": box, "area": box[2] * box[3], "score": score, "iscrowd": 0}
                        for i, (image_id, score, box) in enumerate(zip(r.image_ids.tolist(), r.scores.tolist(),
                                                                       boxes.tolist()))]
    return annotations


def coco_evaluate(dataset: Dataset, results: list[ClassDetections]) -> dict:
    """pycocotools bbox AP of per-class detections (``results[k]`` of ``dataset.classes[k]``) on a split.

    Returns ``{"metric": "coco", "mAP": AP, "AP": ..., "AP50": ..., "AP75": ..., "AP_small": ...,
    "AP_medium": ..., "AP_large": ..., "ap": {class: AP or None}}``; a summary number without GT to
    measure it on (e.g. no small objects) is None. As in VOC evaluation, an image outside the
    split is an error.
    """
    from pycocotools.cocoeval import COCOeval

    check_split_images(dataset, {image_id for r in results for image_id in r.image_ids.tolist()})
    ground_truth = coco_ground_truth(dataset)
    annotations = _result_annotations(ground_truth, dataset, results)
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
            "ap": _per_class_ap(evaluator.eval["precision"], ground_truth["categories"], dataset.classes)}


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
