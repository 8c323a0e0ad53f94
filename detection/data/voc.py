"""PASCAL VOC-format datasets: ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``.

Boxes are converted from the files' 1-based inclusive pixel indices to the code's 0-based ones
(subtract 1; recipe preamble). ``difficult`` flags are kept: the evaluator ignores those boxes.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detection.core.errors import SppnetError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


class DatasetError(SppnetError, ValueError):
    """A VOC directory or annotation that cannot be used; the message names the file."""


@dataclass
class ImageRecord:
    """One annotated image. ``boxes`` (G, 4) float 0-based, ``labels`` (G,) class indices, ``difficult`` (G,)."""

    image_id: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


@dataclass
class Annotation:
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


def read_split(root: Path, split: str) -> list[str]:
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise DatasetError(f"{split_file}: split file not found")
    return [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]


def parse_annotation(xml_path: Path) -> Annotation:
    try:
        tree = ET.parse(xml_path).getroot()
        size = tree.find("size")
        width, height = int(size.findtext("width")), int(size.findtext("height"))
        names, boxes, difficult = [], [], []
        for obj in tree.iter("object"):
            bb = obj.find("bndbox")
            # 1-based inclusive -> 0-based; max(…, 0) so a box at xmin=0 (off-spec but seen) cannot underflow
            coords = [max(float(bb.findtext(k)) - 1, 0.0) for k in ("xmin", "ymin", "xmax", "ymax")]
            names.append(obj.findtext("name").strip())
            boxes.append(coords)
            difficult.append(int(obj.findtext("difficult") or 0) == 1)
    except (ET.ParseError, AttributeError, TypeError, ValueError) as err:
        raise DatasetError(f"{xml_path}: malformed VOC annotation ({err})") from None
    return Annotation(width, height, names, np.array(boxes, dtype=np.float64).reshape(-1, 4),
                      np.array(difficult, dtype=bool))


def infer_classes(root: Path) -> tuple[str, ...]:
    """The 20 VOC classes when every annotated name is one of them, else the sorted names found."""
    names = set()
    for xml_path in sorted((root / "Annotations").glob("*.xml")):
        names.update(parse_annotation(xml_path).names)
    if names <= set(VOC_CLASSES):
        return VOC_CLASSES
    return tuple(sorted(names))


def _find_image(root: Path, image_id: str) -> Path:
    for ext in (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG"):
        candidate = root / "JPEGImages" / f"{image_id}{ext}"
        if candidate.is_file():
            return candidate
    return root / "JPEGImages" / f"{image_id}.jpg"


class VOCDataset:
    """The annotated images of one split; ``classes`` fixes the label indices."""

    def __init__(self, path: str | Path, split: str, classes: tuple[str, ...] | None = None):
        self.root = resolve_voc_root(path)
        self.split = split
        self.classes = tuple(classes) if classes else infer_classes(self.root)
        index = {name: i for i, name in enumerate(self.classes)}
        self.records: list[ImageRecord] = []
        for image_id in read_split(self.root, split):
            xml_path = self.root / "Annotations" / f"{image_id}.xml"
            if not xml_path.is_file():
                raise DatasetError(f"{xml_path}: annotation for image '{image_id}' of split '{split}' not found")
            ann = parse_annotation(xml_path)
            # objects of classes outside the chosen list (``--classes``) are not this model's business
            keep = np.array([n in index for n in ann.names], dtype=bool)
            labels = np.array([index[n] for n in ann.names if n in index], dtype=np.int64)
            self.records.append(ImageRecord(
                image_id=image_id, path=_find_image(self.root, image_id), width=ann.width, height=ann.height,
                boxes=ann.boxes[keep], labels=labels, difficult=ann.difficult[keep],
            ))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> ImageRecord:
        return self.records[i]

    def __iter__(self):
        return iter(self.records)
