"""What every data set format gives the rest of the code, and the checks its annotations pass.

A data set (:class:`Dataset`: :class:`~detection.data.voc.VOCDataset`,
:class:`~detection.data.coco.COCODataset`) is a split's :class:`ImageRecord` list, its ``classes``
(label ``k`` is ``classes[k]``), a ``split`` name and a ``root``. Annotations are checked, not
trusted (docs/bad-inputs.md lists what the user sees):

- a box partly outside its image is clipped to it and counted in ``clipped_boxes``;
- a box without pixels (its right or bottom edge before its left or top one: VOC ``xmax < xmin``,
  COCO ``w <= 0``) or wholly outside the image is skipped, and its one-line reason kept in
  ``skipped_boxes``, which the command line prints as warnings. Such a box cannot be found by any
  detector nor give a training window, and one bad box among thousands should not stop a run;
- a non-finite coordinate is a malformed annotation (:class:`DatasetError`);
- the size of the image, read from its header with the EXIF orientation applied (the array
  :func:`~detection.core.images.load_image` decodes), must be the annotation's size, else the
  boxes belong to another image (typically one resized after labelling): :class:`DatasetError`.
  Images missing on disk are not checked here (evaluation needs none); reading them fails later;
- a class name that differs from one of the classes only in case, spaces, ``_`` or ``-`` is a
  typo: :class:`DatasetError` naming the file and both spellings;
- a split without images is a :class:`DatasetError`.
"""
from __future__ import annotations

import copy
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detection.core.errors import SppnetError
from detection.core.images import image_size, load_image


class DatasetError(SppnetError, ValueError):
    """A data set or annotation that cannot be used; the message names the file."""


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


class Dataset:
    """The annotated images of one split; ``classes`` fixes the label indices.

    Subclasses fill ``root``, ``split``, ``classes`` and ``records`` and call :meth:`_add` per image.
    ``clipped_boxes``: boxes clipped to their image; ``skipped_boxes``: one line per box left out;
    ``ignored_objects``: objects of classes outside an explicitly given class list.
    """

    root: Path
    split: str
    classes: tuple[str, ...]

    def __init__(self) -> None:
        self.records: list[ImageRecord] = []
        self.clipped_boxes = 0
        self.skipped_boxes: list[str] = []
        self.ignored_objects = 0

    def _add(self, image_id: str, path: Path, source: str, width: int, height: int, boxes: np.ndarray,
             labels: np.ndarray, difficult: np.ndarray, object_names: list[str]) -> None:
        """Check one image's annotation (``source`` names it in messages) and append its record.

        ``boxes`` (G, 4) 0-based inclusive as the file gives them; ``labels`` (G,) class indices,
        -1 for an object of a class outside ``classes`` (dropped and counted); ``object_names``
        (G,) how messages call each object (e.g. its number, class and box as the file writes it).
        """
        if width <= 0 or height <= 0:
            raise DatasetError(f"{source}: image size {width}x{height} is not positive")
        actual = image_size(path)
        if actual is not None and actual != (width, height):
            actual = load_image(path).shape[1::-1]  # the header can miss a PNG's late EXIF orientation
        if actual is not None and actual != (width, height):
            raise DatasetError(f"{source}: the annotation is for a {width}x{height} image, but {path} is "
                               f"{actual[0]}x{actual[1]}")
        if not np.isfinite(boxes).all():
            raise DatasetError(f"{source}: malformed annotation (a box coordinate is not a finite number)")
        known = labels >= 0
        self.ignored_objects += int(np.count_nonzero(~known))
        boxes, keep, clipped, reasons = check_boxes(boxes[known], width, height)
        names = [name for name, k in zip(object_names, known) if k]
        self.clipped_boxes += clipped
        self.skipped_boxes += [f"{source}: {names[i]} {reason}, skipped" for i, reason in reasons.items()]
        self.records.append(ImageRecord(image_id=image_id, path=path, width=width, height=height,
                                        boxes=boxes[keep], labels=labels[known][keep],
                                        difficult=difficult[known][keep]))

    def _check_not_empty(self, source: str) -> None:
        if not self.records:
            raise DatasetError(f"{source}: split '{self.split}' has no images")

    def summary(self) -> str:
        """One line: images, classes, boxes, and what the checks changed."""
        boxes = sum(len(r.boxes) for r in self.records)
        text = f"{len(self)} images, {len(self.classes)} classes, {boxes} boxes"
        if self.clipped_boxes:
            text += f"; {self.clipped_boxes} clipped to their image"
        if self.skipped_boxes:
            text += f"; {len(self.skipped_boxes)} skipped (empty, inverted or outside the image)"
        if self.ignored_objects:
            text += f"; {self.ignored_objects} objects of other classes ignored"
        return text

    def first(self, count: int | None) -> Dataset:
        """This split restricted to its first ``count`` images (itself when None or larger)."""
        if count is None or count >= len(self):
            return self
        subset = copy.copy(self)
        subset.records = self.records[:count]
        return subset

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> ImageRecord:
        return self.records[i]

    def __iter__(self):
        return iter(self.records)


def check_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, int, dict[int, str]]:
    """(G, 4) 0-based inclusive boxes of a ``width`` x ``height`` image -> the boxes clipped to it (G, 4),
    which to keep (G,), how many were clipped among those kept, and box index -> why it is not kept.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x1, y1, x2, y2 = boxes.T
    empty = (x2 - x1 + 1 <= 0) | (y2 - y1 + 1 <= 0)
    outside = ~empty & ((x1 > width - 1) | (y1 > height - 1) | (x2 < 0) | (y2 < 0))
    keep = ~empty & ~outside
    clipped = np.column_stack([x1.clip(0, width - 1), y1.clip(0, height - 1),
                               x2.clip(0, width - 1), y2.clip(0, height - 1)])
    changed = (clipped != boxes).any(axis=1) & keep
    reasons = {int(i): ("has no pixels" if empty[i] else f"lies outside the {width}x{height} image")
               for i in np.flatnonzero(~keep)}
    return clipped, keep, int(np.count_nonzero(changed)), reasons


def _spelling_key(name: str) -> str:
    return re.sub(r"[\s_-]+", "", name).casefold()


def check_spelling(names_by_source: dict[str, list[str]], classes: tuple[str, ...] | list[str]) -> None:
    """Raise :class:`DatasetError` for a name that is not one of ``classes`` but is one spelt differently.

    ``names_by_source``: file (or file and object) -> the class names it uses. Two names are the
    same class spelt differently when they are equal up to case, whitespace, ``_`` and ``-``.
    """
    known = set(classes)
    by_key = {_spelling_key(name): name for name in classes}
    for source, names in names_by_source.items():
        for name in names:
            if name not in known and _spelling_key(name) in by_key:
                raise DatasetError(f"{source}: class '{name}' is spelt differently from the class "
                                   f"'{by_key[_spelling_key(name)]}'; class names must match exactly")


def checked_names(names_by_source: dict[str, list[str]]) -> tuple[str, ...]:
    """The distinct names used, sorted, after checking that no two are one class spelt two ways.

    Of two spellings, the one used less often is reported (the more frequent one is taken as
    right; on a tie, the first in sorted order).
    """
    counts = Counter(name for names in names_by_source.values() for name in names)
    canonical: dict[str, str] = {}
    for name in sorted(counts, key=lambda n: (-counts[n], n)):
        canonical.setdefault(_spelling_key(name), name)
    check_spelling(names_by_source, tuple(canonical.values()))
    return tuple(sorted(counts))
