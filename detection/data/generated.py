"""What the generated VOC-format data sets share: the directory layout, the writer, and occlusion.

:func:`write_generated_dataset` writes (or reuses) ``root/VOC2007`` from a function that draws one
image; the demo set (:mod:`detection.data.demo`) and the realistic set
(:mod:`detection.data.realistic`) differ only in that function. Every image has its own
``Generator(PCG64([seed, split, index]))``, so an image does not depend on how many others there
are and the same parameters give byte-identical files on every run (for a given OpenCV build,
which does the JPEG encoding).
"""
from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

JPEG_QUALITY = 90


@dataclass
class GeneratedObject:
    """One object drawn into an image; ``box`` is 0-based inclusive (x1, y1, x2, y2) of its visible pixels."""

    name: str
    box: tuple[int, int, int, int]
    truncated: bool
    difficult: bool


# draw(rng, index within its split) -> ((H, W, 3) uint8 RGB image, its objects)
DrawImage = Callable[[np.random.Generator, int], tuple[np.ndarray, list[GeneratedObject]]]


def write_generated_dataset(root: str | Path, params: dict, params_file: str, database: str,
                            draw: DrawImage) -> Path:
    """Write (or reuse) a generated data set under ``root/VOC2007`` and return that path.

    ``params`` (JSON-serialisable, with ``num_trainval``, ``num_test`` and ``seed``) are recorded
    in ``root/params_file``; when they match, the existing files are reused untouched. Splits:
    ``trainval`` (``train`` and ``val`` its two halves) and ``test``. ``database`` goes into each
    annotation's ``source``.
    """
    root = Path(root)
    voc = root / "VOC2007"
    params_path = root / params_file
    if _recorded_params(params_path) == params and (voc / "ImageSets" / "Main" / "test.txt").is_file():
        return voc
    if voc.exists() and not params_path.is_file():
        raise FileExistsError(f"{voc}: exists but is not a {database} data set made here; remove it or pick another root")
    # Build beside the old copy and swap it in, so an interrupted run never leaves a half dataset
    # that a later call would mistake for a complete one.
    partial = root / "VOC2007.partial"
    shutil.rmtree(partial, ignore_errors=True)
    _write_dataset(partial, params["num_trainval"], params["num_test"], params["seed"], database, draw)
    params_path.unlink(missing_ok=True)
    shutil.rmtree(voc, ignore_errors=True)
    partial.rename(voc)
    params_path.write_text(json.dumps(params, indent=2) + "\n")
    return voc


def _recorded_params(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_dataset(voc: Path, num_trainval: int, num_test: int, seed: int, database: str, draw: DrawImage) -> None:
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    trainval = [f"{i + 1:06d}" for i in range(num_trainval)]
    test = [f"{num_trainval + i + 1:06d}" for i in range(num_test)]
    for split_index, ids in enumerate((trainval, test)):
        for index, image_id in enumerate(ids):
            # one generator per image: an image does not depend on how many others there are
            rng = np.random.Generator(np.random.PCG64([seed, split_index, index]))
            image, objects = draw(rng, index)
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise RuntimeError(f"OpenCV could not encode {image_id}.jpg")
            size = (image.shape[1], image.shape[0])
            (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg.tobytes())
            (voc / "Annotations" / f"{image_id}.xml").write_bytes(annotation_xml(image_id, size, objects, database))
    half = (len(trainval) + 1) // 2
    splits = {"trainval": trainval, "train": trainval[:half], "val": trainval[half:], "test": test}
    for name, ids in splits.items():
        (voc / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))


def annotation_xml(image_id: str, size: tuple[int, int], objects: list[GeneratedObject],
                   database: str = "sppnet demo") -> bytes:
    """The VOC annotation file of one image; boxes written 1-based inclusive, as the devkit's."""
    width, height = size
    root = ET.Element("annotation")
    _add(root, "folder", "VOC2007")
    _add(root, "filename", f"{image_id}.jpg")
    _add(_add(root, "source"), "database", database)
    size_el = _add(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        _add(size_el, tag, value)
    _add(root, "segmented", 0)
    for obj in objects:
        obj_el = _add(root, "object")
        _add(obj_el, "name", obj.name)
        _add(obj_el, "pose", "Unspecified")
        _add(obj_el, "truncated", int(obj.truncated))
        _add(obj_el, "difficult", int(obj.difficult))
        box_el = _add(obj_el, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box):
            _add(box_el, tag, value + 1)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="utf-8") + b"\n"


def _add(parent: ET.Element, tag: str, text=None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if text is not None:
        element.text = str(text)
    return element


def visible_coverage(alphas: list[np.ndarray]) -> list[np.ndarray]:
    """Each object's (H, W) coverage after the objects drawn on top of it (later in the list) hid their part."""
    visible, above = [], 1.0
    for alpha in reversed(alphas):
        visible.append(alpha * above)
        above = above * (1 - alpha)
    return visible[::-1]


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """0-based inclusive (x1, y1, x2, y2) of the True pixels of a non-empty (H, W) mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def blend(image: np.ndarray, layer: np.ndarray, alpha: np.ndarray) -> None:
    """Composite ``layer`` ((H, W, 3) or one colour) over float ``image`` in place, weighted by ``alpha``."""
    # only inside alpha's bounding rectangle: strokes and objects cover a small part of the image
    x, y, w, h = cv2.boundingRect((alpha > 0).astype(np.uint8))
    region = np.s_[y:y + h, x:x + w]
    weight = alpha[region][..., None]
    layer = np.broadcast_to(layer, image.shape)[region]
    image[region] = np.clip(image[region] * (1 - weight) + layer * weight, 0, 255)
