"""One image's detection result with what it needs to be shown or shared: :class:`Result`.

``Detector.predict`` returns one; it holds the image, its :class:`~detection.core.detections.Detections`
and the class names, like the results objects of other detection libraries::

    result = Detector.load("model.pt").predict("photo.jpg")
    result.plot()                   # (H, W, 3) uint8 RGB with the boxes drawn
    result.save("photo_boxes.jpg")  # the same picture, written to a file
    result.to_coco()                # a COCO detections file (dict) with this one image

It sits above :mod:`detection.visualize` and :mod:`detection.data.coco` and below the detector,
so ``Detections`` itself (in ``detection.core``) stays plain data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detection.core.detections import Detections
from detection.data.coco import detections_to_coco
from detection.visualize import draw_detections, write_image


@dataclass
class Result:
    """``image`` (H, W, 3) uint8 RGB, its ``detections``, the model's ``classes``, and the image's
    ``path`` when it was read from a file."""

    image: np.ndarray
    detections: Detections
    classes: tuple[str, ...]
    path: str | None = None

    def __len__(self) -> int:
        return len(self.detections)

    @property
    def names(self) -> list[str]:
        """The class name of each detection."""
        return [self.classes[int(label)] for label in self.detections.labels]

    def plot(self) -> np.ndarray:
        """A copy of the image with each box, class name and score (probability if calibrated) drawn."""
        return draw_detections(self.image, self.detections, self.classes)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`plot`'s picture, encoded by the file's extension (PNG if OpenCV has no encoder
        for it, then with a .png suffix); returns the path written."""
        return write_image(Path(path), self.plot())

    def to_coco(self, image_id: int = 1) -> dict:
        """A COCO detections file holding this image: ``images``, ``categories`` (id = class index + 1)
        and ``annotations`` in the results format pycocotools' ``loadRes`` takes (score = probability
        if calibrated, with ``margin``; else the margin)."""
        height, width = self.image.shape[:2]
        image = {"id": image_id, "file_name": self.path or "", "width": int(width), "height": int(height)}
        return detections_to_coco([image], [self.detections], self.classes)
