"""PASCAL VOC-format datasets: ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``.

Boxes are converted from the files' 1-based inclusive pixel indices to the code's 0-based ones
(subtract 1; recipe preamble). ``difficult`` flags are kept: the evaluator ignores those boxes.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detection.data.records import (
    Dataset,
    DatasetError,
    check_spelling,
    checked_names,
)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


@dataclass
class Annotation:
    """One VOC annotation file: its <size>, and per object its name, 0-based box (G, 4), difficult flag (G,)."""

    width: int
    height: int
    names: list[str]
    boxes: np.ndarray
    difficult: np.ndarray


def resolve_voc_root(path: str | Path) -> Path:
    """The directory holding Annotations/ and JPEGImages/: ``path`` itself or its single VOC20xx child."""
    path = Path(path)
    if (path / "Annotations").is_dir():
        return path
    candidates = sorted(p for p in path.glob("VOC*") if (p / "Annotations").is_dir())
    if len(candidates) == 1:
        return candidates[0]
    if not path.exists():
        raise DatasetError(f"{path}: no such directory")
    if candidates:
        names = ", ".join(p.name for p in candidates)
        raise DatasetError(f"{path}: several VOC datasets ({names}); pass one of them")
    raise DatasetError(f"{path}: not a VOC directory (no Annotations/ here or in a VOC*/ subdirectory)")


def split_file(root: Path, split: str) -> Path:
    return root / "ImageSets" / "Main" / f"{split}.txt"


def read_split(root: Path, split: str) -> list[str]:
    path = split_file(root, split)
    if not path.is_file():
        raise DatasetError(f"{path}: split file not found")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    twice = next((image_id for image_id, count in Counter(ids).items() if count > 1), None)
    if twice is not None:
        raise DatasetError(f"{path}: image '{twice}' is listed more than once")
    return ids


def parse_annotation(xml_path: Path) -> Annotation:
    try:
        tree = ET.parse(xml_path).getroot()
        size = tree.find("size")
        width, height = int(size.findtext("width")), int(size.findtext("height"))
        names, boxes, difficult = [], [], []
        for obj in tree.iter("object"):
            bb = obj.find("bndbox")
            # 1-based inclusive -> 0-based; a box beyond the image (xmin=0 is off-spec but seen) is clipped later
            coords = [float(bb.findtext(k)) - 1 for k in ("xmin", "ymin", "xmax", "ymax")]
            names.append(obj.findtext("name").strip())
            boxes.append(coords)
            difficult.append(int(obj.findtext("difficult") or 0) == 1)
    except (ET.ParseError, AttributeError, TypeError, ValueError) as err:
        raise DatasetError(f"{xml_path}: malformed VOC annotation ({err})") from None
    return Annotation(width, height, names, np.array(boxes, dtype=np.float64).reshape(-1, 4),
                      np.array(difficult, dtype=bool))


def infer_classes(names_by_file: dict[str, list[str]]) -> tuple[str, ...]:
    """The class list of a split whose annotation files (file -> class names) name no list themselves.

    The 20 VOC classes when every name is one of them; else the sorted names found, unless some are
    VOC classes and others not (a stray name in VOC data would otherwise drop VOC's list and shift
    every label), or two names are one class spelt two ways: both are a :class:`DatasetError`
    naming the file.
    """
    found = checked_names(names_by_file)
    if set(found) <= set(VOC_CLASSES):
        return VOC_CLASSES
    if set(found) & set(VOC_CLASSES):
        source, name = next((source, name) for source, names in names_by_file.items()
                            for name in names if name not in VOC_CLASSES)
        raise DatasetError(f"{source}: class '{name}' is not one of the 20 VOC classes that the other "
                           f"annotations use; to train on other classes name them all, e.g. "
                           f"--classes {','.join(found)}")
    return found


def _find_image(root: Path, image_id: str) -> Path:
    for ext in (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG"):
        candidate = root / "JPEGImages" / f"{image_id}{ext}"
        if candidate.is_file():
            return candidate
    return root / "JPEGImages" / f"{image_id}.jpg"


class VOCDataset(Dataset):
    """The annotated images of one split; ``classes`` fixes the label indices.

    Only the split's annotation files are read. Without ``classes`` the list is inferred from
    them (:func:`infer_classes`); with it, objects of other classes are ignored (and counted).
    Every check of :mod:`detection.data.records` applies.
    """

    def __init__(self, path: str | Path, split: str, classes: tuple[str, ...] | None = None):
        super().__init__()
        self.root = resolve_voc_root(path)
        self.split = split
        annotations: dict[str, tuple[Path, Annotation]] = {}
        for image_id in read_split(self.root, split):
            xml_path = self.root / "Annotations" / f"{image_id}.xml"
            if not xml_path.is_file():
                raise DatasetError(f"{xml_path}: annotation for image '{image_id}' of split '{split}' not found")
            annotations[image_id] = xml_path, parse_annotation(xml_path)
        names = {str(xml_path): ann.names for xml_path, ann in annotations.values()}
        if classes:
            self.classes = tuple(classes)
            check_spelling(names, self.classes)
        else:
            self.classes = infer_classes(names)
        index = {name: i for i, name in enumerate(self.classes)}
        for image_id, (xml_path, ann) in annotations.items():
            b = ann.boxes + 1
            self._add(image_id, _find_image(self.root, image_id), str(xml_path), ann.width, ann.height, ann.boxes,
                      np.array([index.get(n, -1) for n in ann.names], dtype=np.int64), ann.difficult,
                      [f"object {i + 1} '{n}' (xmin {b[i, 0]:g}, ymin {b[i, 1]:g}, xmax {b[i, 2]:g}, ymax {b[i, 3]:g})"
                       for i, n in enumerate(ann.names)])
        self._check_not_empty(str(split_file(self.root, split)))
