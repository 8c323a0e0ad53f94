"""COCO-format files: data sets (an annotation JSON and an image folder), detections written for
people and tools, and any split's ground truth as COCO.

Boxes in the code are 0-based inclusive pixel indices (x1, y1, x2, y2) (see :mod:`detection.core.boxes`);
COCO boxes are [x, y, w, h] in continuous coordinates. The pixel (x1, y1) covers [x1, x1 + 1), so
x = x1, y = y1, w = x2 - x1 + 1, h = y2 - y1 + 1: a one-pixel box has w = h = 1, and the areas and
IoUs pycocotools computes equal the devkit's "+1" ones.

Category ids of the files written here are 1-based class indices (category ``k + 1`` is
``classes[k]``), as COCO files number them from 1. A COCO data set read here maps its category ids,
in increasing order, to the class indices 0, 1, ... (:class:`COCODataset`).

Evaluating against such ground truth: :mod:`detection.evaluation.coco_eval`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from detection.core.boxes import from_coco_boxes, to_coco_boxes
from detection.core.detections import Detections, check_labels
from detection.core.errors import SppnetError
from detection.data.records import Dataset, DatasetError, check_spelling


class CocoFileError(SppnetError, ValueError):
    """A detections file that is not the COCO format this module writes; the message names it."""


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


def voc_to_coco(dataset: Dataset) -> dict:
    """The split's records as a COCO ground truth dict; difficult boxes become ``iscrowd = 1`` (module doc).

    Images have ids 1..N in record order, categories 1..K in class order.
    """
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


def coco_ground_truth(dataset: Dataset) -> dict:
    """The split's ground truth for pycocotools: ``images`` in record order, ``categories`` in class order.

    A :class:`COCODataset` gives its file's own annotations, so pycocotools scores exactly as on
    that file (its boxes, areas and crowd flags as written); any other set is converted by
    :func:`voc_to_coco`.
    """
    return dataset.ground_truth if isinstance(dataset, COCODataset) else voc_to_coco(dataset)


def _json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DatasetError(f"{path}: not a JSON file ({err})") from None
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise DatasetError(f"{path}: not a COCO annotation file (no 'images' and 'categories')")
    return data


def _entries(path: Path, data: dict, key: str, fields: tuple[str, ...]) -> list[dict]:
    """``data[key]`` checked to be objects that each have ``fields``; the message names the first that does not."""
    entries = data.get(key, [])
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: '{key}' is not a list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or any(field not in entry for field in fields):
            raise DatasetError(f"{path}: {key}[{i}] is not an object with {', '.join(fields)}")
    return entries


class COCODataset(Dataset):
    """A COCO-format data set: one annotation JSON (one split, named after the file) and its image folder.

    ``classes``: the category names in increasing category id order (class index ``k`` is the
    ``k``-th smallest id), or the given list, by name (objects of other categories are ignored).
    Images in the file's order; a record's ``image_id`` is its file name without directory and
    extension (as a VOC image id, and as :func:`read_coco_detections` names images), its ``path``
    ``images_dir / file_name``. Boxes [x, y, w, h] become 0-based inclusive ones
    (:func:`~detection.core.boxes.from_coco_boxes`), ``iscrowd`` becomes ``difficult``, and every
    check of :mod:`detection.data.records` applies. ``ground_truth`` is the file's own ground truth
    restricted to the classes, for pycocotools (:func:`coco_ground_truth`).
    """

    def __init__(self, annotation_file: str | Path, images_dir: str | Path, classes: tuple[str, ...] | None = None):
        super().__init__()
        path = Path(annotation_file)
        self.root, self.split, self.images_dir = path, path.stem, Path(images_dir)
        if not self.images_dir.is_dir():
            raise DatasetError(f"{self.images_dir}: no such image folder")
        data = _json_object(path)
        categories = sorted(_entries(path, data, "categories", ("id", "name")), key=lambda c: c["id"])
        images = _entries(path, data, "images", ("id", "file_name", "width", "height"))
        annotations = _entries(path, data, "annotations", ("image_id", "category_id", "bbox"))
        names = {c["id"]: str(c["name"]) for c in categories}
        if len(names) < len(categories) or len(set(names.values())) < len(names):
            raise DatasetError(f"{path}: category ids and names must be unique")
        if classes:
            self.classes = tuple(classes)
            check_spelling({f"{path}: categories": list(names.values())}, self.classes)
        else:
            self.classes = tuple(names.values())
        index = {name: k for k, name in enumerate(self.classes)}
        per_image: dict = {image["id"]: [] for image in images}
        if len(per_image) < len(images):
            raise DatasetError(f"{path}: image ids must be unique")
        for i, ann in enumerate(annotations):
            what = f"{path}: annotations[{i}] (id {ann.get('id')})"
            if ann["image_id"] not in per_image:
                raise DatasetError(f"{what}: image_id {ann['image_id']} is not among the file's images")
            if ann["category_id"] not in names:
                raise DatasetError(f"{what}: category_id {ann['category_id']} is not among the file's categories")
            bbox = ann["bbox"]
            if not (isinstance(bbox, list) and len(bbox) == 4
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
                raise DatasetError(f"{what}: bbox {bbox!r} is not [x, y, width, height]")
            per_image[ann["image_id"]].append(ann)
        stems: dict[str, str] = {}
        for image in images:
            file_name = str(image["file_name"])
            image_id = Path(file_name).stem
            if image_id in stems:
                raise DatasetError(f"{path}: images '{stems[image_id]}' and '{file_name}' have the same name "
                                   f"'{image_id}', which identifies an image in caches and result files")
            stems[image_id] = file_name
            anns = per_image[image["id"]]
            try:
                width, height = int(image["width"]), int(image["height"])
            except (TypeError, ValueError):
                raise DatasetError(f"{path}: image {image['id']} '{file_name}': width and height must be "
                                   f"integers") from None
            self._add(image_id, self.images_dir / file_name, f"{path}: image {image['id']} '{file_name}'",
                      width, height, from_coco_boxes([a["bbox"] for a in anns]),
                      np.array([index.get(names[a["category_id"]], -1) for a in anns], dtype=np.int64),
                      np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
                      [f"annotation {a.get('id')} '{names[a['category_id']]}' (bbox {a['bbox']})" for a in anns])
        self._check_not_empty(str(path))
        self.ground_truth = self._ground_truth(images, categories, per_image)

    def _ground_truth(self, images: list[dict], categories: list[dict], per_image: dict) -> dict:
        by_name = {c["name"]: c for c in categories}
        # a class the file lacks still needs a category (without annotations) in pycocotools' per-class table
        free = max([c["id"] for c in categories], default=0) + 1
        categories = [by_name.get(name, {"id": free + k, "name": name}) for k, name in enumerate(self.classes)]
        ids = {c["id"] for c in categories}
        annotations = [{**a, "area": a.get("area", a["bbox"][2] * a["bbox"][3]), "iscrowd": int(a.get("iscrowd", 0)),
                        "id": number}
                       for number, a in enumerate((a for image in images for a in per_image[image["id"]]
                                                   if a["category_id"] in ids), start=1)]
        return {"images": [dict(image) for image in images], "categories": categories, "annotations": annotations}
