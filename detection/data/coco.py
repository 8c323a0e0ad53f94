"""COCO-format files: detections written for people and tools, and a VOC split's ground truth as COCO.

Boxes in the code are 0-based inclusive pixel indices (x1, y1, x2, y2) (see :mod:`detection.core.boxes`);
COCO boxes are [x, y, w, h] in continuous coordinates. The pixel (x1, y1) covers [x1, x1 + 1), so
x = x1, y = y1, w = x2 - x1 + 1, h = y2 - y1 + 1: a one-pixel box has w = h = 1, and the areas and
IoUs pycocotools computes equal the devkit's "+1" ones.

Category ids are 1-based class indices (category ``k + 1`` is ``classes[k]``), as COCO files number
them from 1.

Evaluating against such ground truth: :mod:`detection.evaluation.coco_eval`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from detection.core.boxes import from_coco_boxes, to_coco_boxes
from detection.core.detections import Detections, check_labels
from detection.core.errors import SppnetError
from detection.data.voc import VOCDataset


class CocoFileError(SppnetError, ValueError):
    """A detections file that is not the COCO format this module writes; the message names it."""


def coco_categories(classes: tuple[str, ...] | list[str]) -> list[dict]:
    return [{"id": k + 1, "name": name, "supercategory": "object"} for k, name in enumerate(classes)]


def coco_annotations(image_id: int, dets: Detections, first_id: int = 1) -> list[dict]:
    """One image's detections -> COCO result annotations, ids from ``first_id`` on, in detection order.

    ``score`` is the calibrated probability when there is one (then ``margin`` holds the SVM
    margin), else the margin: within a class both rank alike, so COCO's per-class AP is the same.
    """
    boxes = to_coco_boxes(dets.boxes)
    annotations = [{"id": first_id + i, "image_id": image_id, "category_id": int(label) + 1,
                    "bbox": [round(float(v), 2) for v in box], "area": round(float(box[2] * box[3]), 2),
                    "score": float(score), "iscrowd": 0}
                   for i, (box, score, label) in enumerate(zip(boxes, dets.confidences, np.asarray(dets.labels)))]
    if dets.probabilities is not None:
        for annotation, margin in zip(annotations, np.asarray(dets.scores)):
            annotation["margin"] = float(margin)
    return annotations


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
