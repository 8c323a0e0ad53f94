"""COCO-format files: detections written for people and tools, and pycocotools evaluation of a VOC set.

Boxes in the code are 0-based inclusive pixel indices (x1, y1, x2, y2) (see :mod:`detection.boxes`);
COCO boxes are [x, y, w, h] in continuous coordinates. The pixel (x1, y1) covers [x1, x1 + 1), so
x = x1, y = y1, w = x2 - x1 + 1, h = y2 - y1 + 1: a one-pixel box has w = h = 1, and the areas and
IoUs pycocotools computes equal the devkit's "+1" ones.

Category ids are 1-based class indices (category ``k + 1`` is ``classes[k]``), as COCO files number
them from 1.

Evaluating a VOC-format set with pycocotools (``sppnet eval --metric coco``): the GT is converted in
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
import json
from pathlib import Path

import numpy as np

from detection.errors import SppnetError
from detection.results import Detections, check_labels
from detection.voc import VOCDataset

# COCOeval.stats indices of the summary numbers reported, by name
COCO_SUMMARY = {"AP": 0, "AP50": 1, "AP75": 2, "AP_small": 3, "AP_medium": 4, "AP_large": 5}


class CocoFileError(SppnetError, ValueError):
    """A detections file that is not the COCO format this module writes; the message names it."""


def to_coco_boxes(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) 0-based inclusive (x1, y1, x2, y2) -> (N, 4) COCO [x, y, w, h]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2] + 1], axis=1)


def from_coco_boxes(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) COCO [x, y, w, h] -> (N, 4) 0-based inclusive (x1, y1, x2, y2)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:] - 1], axis=1)


def coco_categories(classes: tuple[str, ...] | list[str]) -> list[dict]:
    return [{"id": k + 1, "name": name, "supercategory": "object"} for k, name in enumerate(classes)]


def coco_annotations(image_id: int, dets: Detections, first_id: int = 1) -> list[dict]:
    """One image's detections -> COCO result annotations, ids from ``first_id`` on, in detection order."""
    boxes = to_coco_boxes(dets.boxes)
    return [{"id": first_id + i, "image_id": image_id, "category_id": int(label) + 1,
             "bbox": [round(float(v), 2) for v in box], "area": round(float(box[2] * box[3]), 2),
             "score": float(score), "iscrowd": 0}
            for i, (box, score, label) in enumerate(zip(boxes, np.asarray(dets.scores), np.asarray(dets.labels)))]


def detections_to_coco(images: list[dict], detections: list[Detections], classes: tuple[str, ...] | list[str],
                       info: dict | None = None) -> dict:
    """A COCO detections file: ``images`` (each with id, file_name, width, height) and their detections.

    ``images[i]`` goes with ``detections[i]``. The result loads with pycocotools' ``COCO()``, and
    its ``annotations`` list is in the results format ``COCO.loadRes`` takes.
    """
    annotations: list[dict] = []
    for image, dets in zip(images, detections, strict=True):
        check_labels(np.asarray(dets.labels, dtype=np.int64), len(classes), image["file_name"])
        annotations += coco_annotations(image["id"], dets, first_id=len(annotations) + 1)
    return {"info": info or {}, "images": images, "categories": coco_categories(classes),
            "annotations": annotations}


def read_coco_detections(path: str | Path, classes: tuple[str, ...]) -> dict[str, Detections]:
    """A COCO detections file (as ``sppnet detect`` writes) -> image file stem -> Detections.

    Categories are matched to ``classes`` by name; the image key is the file name without its
    directory and extension, which is the image id of a VOC-format set.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        stems = {image["id"]: Path(image["file_name"]).stem for image in data["images"]}
        per_image: dict[str, list[dict]] = {stem: [] for stem in stems.values()}
        for ann in data["annotations"]:
            per_image[stems[ann["image_id"]]].append(ann)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CocoFileError(f"{path}: not a COCO detections file ({type(err).__name__}: {err})") from None
    index = {name: k for k, name in enumerate(classes)}
    unknown = sorted(set(names.values()) - set(index))
    if unknown:
        raise CocoFileError(f"{path}: categories {unknown} are not among the dataset's classes {list(classes)}")
    return {stem: Detections(from_coco_boxes([a["bbox"] for a in anns]),
                             np.array([a["score"] for a in anns], dtype=np.float64),
                             np.array([index[names[a["category_id"]]] for a in anns], dtype=np.int64))
            for stem, anns in per_image.items()}


def voc_to_coco(dataset: VOCDataset) -> dict:
    """The split's ground truth as a COCO dict; difficult boxes become ``iscrowd = 1`` (module doc)."""
    images, annotations = [], []
    for image_id, record in enumerate(dataset, start=1):
        images.append({"id": image_id, "file_name": record.path.name, "width": record.width,
                       "height": record.height})
        boxes = to_coco_boxes(record.boxes)
        for box, label, difficult in zip(boxes, record.labels, record.difficult):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "bbox": [float(v) for v in box], "area": float(box[2] * box[3]),
                                "iscrowd": int(difficult)})
    return {"images": images, "categories": coco_categories(dataset.classes), "annotations": annotations}


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
