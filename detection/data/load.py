"""One entry point for every data set format: a VOC directory or a COCO annotation file."""
from __future__ import annotations

from pathlib import Path

from detection.data.coco import COCODataset
from detection.data.records import Dataset, DatasetError
from detection.data.voc import VOCDataset


def load_dataset(data: str | Path, split: str | None = None, images: str | Path | None = None,
                 classes: tuple[str, ...] | None = None) -> Dataset:
    """The split ``split`` of a VOC-format directory, or the COCO annotation file ``data`` (a .json
    file: one split, so ``split`` is not used) with its images in the folder ``images``. Both give
    the same records (:mod:`detection.data.records`); ``classes`` as in :class:`VOCDataset` and
    :class:`COCODataset`.
    """
    data = Path(data)
    if data.suffix.lower() == ".json" or data.is_file():
        if images is None:
            raise DatasetError(f"{data}: a COCO annotation file needs the folder of its images (--images DIR)")
        return COCODataset(data, images, classes)
    if images is not None:
        raise DatasetError(f"{data}: --images goes with a COCO annotation file; a VOC directory has its "
                           f"images in JPEGImages/")
    if split is None:
        raise DatasetError(f"{data}: which split of this VOC directory? (ImageSets/Main/<split>.txt)")
    return VOCDataset(data, split, classes)
