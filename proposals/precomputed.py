"""Precomputed proposals (``--proposals PATH``): R-CNN's files, or a simple format of our own.

So that the paper's setting can be reproduced like for like (recipe §5), train, test and detect can
take every image's windows from a file instead of running selective search. ``PATH`` is one of:

- R-CNN's ``selective_search_data/voc_2007_{trainval,test}.mat`` (``images`` and ``boxes`` cells,
  boxes 1-based ``[y1 x1 y2 x2]``): read with :func:`~proposals.selective_search.load_rcnn_proposals`;
- a directory of ``<image_id>.txt`` files, one window per line, ``x1 y1 x2 y2`` separated by
  spaces, 0-based inclusive pixel coordinates of the image as stored (an empty file: no windows);
- an ``.npz`` file with one (N, 4) array per image id, 0-based inclusive ``x1 y1 x2 y2``
  (``np.savez(path, **{image_id: boxes})``).

The image id is the data set's id for train and test, and the file name without its extension
for detect (a video frame: ``<name>#frame=NNNNNN``, six digits from 0). The windows are used as given, in the given order (no resizing, minimum size or cap),
clipped to the image. An image with no entry is a one-line error naming the file and the id.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from detection.core.boxes import clip_boxes
from detection.core.errors import SppnetError
from proposals.selective_search import load_rcnn_proposals

TEXT_SUFFIX = ".txt"


class ProposalFileError(SppnetError, ValueError):
    """A precomputed proposal file that cannot be used, or lacks an image; the message names the file."""


class PrecomputedProposals:
    """Windows by image id from ``path`` (see the module docstring for the formats).

    Cheap to pickle to worker processes: only the path travels, and each process reads the file
    on first use (one image's text file at a time for a directory; lazily per member for .npz).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            self.kind = "dir"
        elif self.path.is_file() and self.path.suffix.lower() in (".mat", ".npz"):
            self.kind = self.path.suffix.lower()[1:]
        elif not self.path.exists():
            raise ProposalFileError(f"{self.path}: no such proposal file or directory")
        else:
            raise ProposalFileError(f"{self.path}: unknown proposal format (expected R-CNN's .mat, an .npz, "
                                    f"or a directory of <image_id>{TEXT_SUFFIX})")
        self._data = None
        self._fingerprint: str | None = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "kind": self.kind, "_data": None, "_fingerprint": self._fingerprint}

    @property
    def fingerprint(self) -> str:
        """A digest of the contents (names, sizes and times for a directory), for the caches' keys."""
        if self._fingerprint is None:
            digest = hashlib.sha1(self.kind.encode())
            if self.kind == "dir":
                for entry in sorted(self.path.glob(f"*{TEXT_SUFFIX}")):
                    stat = entry.stat()
                    digest.update(f"{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            else:
                with open(self.path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def boxes(self, image_id: str, width: int | None = None, height: int | None = None) -> np.ndarray:
        """(N, 4) float64 0-based boxes of one image, clipped to (width, height) when given."""
        boxes = self._read(image_id)
        if width is not None and height is not None:
            boxes = clip_boxes(boxes, width, height)
        return boxes

    def _read(self, image_id: str) -> np.ndarray:
        if self.kind == "dir":
            text_path = self.path / f"{image_id}{TEXT_SUFFIX}"
            if not text_path.is_file():
                raise ProposalFileError(f"{self.path}: no proposals for image '{image_id}' ({text_path.name} missing)")
            rows = [line.split() for line in text_path.read_text().splitlines() if line.strip()]
            bad = next((i for i, row in enumerate(rows) if len(row) != 4), None)
            if bad is not None:
                raise ProposalFileError(f"{text_path}: line {bad + 1} has {len(rows[bad])} numbers, "
                                        "expected 4 (x1 y1 x2 y2)")
            try:
                return np.array(rows, dtype=np.float64).reshape(-1, 4)
            except ValueError as err:
                raise ProposalFileError(f"{text_path}: not 'x1 y1 x2 y2' lines ({err})") from None
        data = self._load()
        if image_id not in data:
            raise ProposalFileError(f"{self.path}: no proposals for image '{image_id}'")
        boxes = np.asarray(data[image_id], dtype=np.float64)
        if boxes.size and (boxes.ndim != 2 or boxes.shape[1] != 4):
            raise ProposalFileError(f"{self.path}: image '{image_id}' has boxes of shape {boxes.shape}, "
                                    "expected (N, 4)")
        return boxes.reshape(-1, 4)

    def _load(self):
        if self._data is None:
            try:
                self._data = load_rcnn_proposals(self.path) if self.kind == "mat" else np.load(self.path)
            except (OSError, ValueError, KeyError) as err:
                raise ProposalFileError(f"{self.path}: cannot read proposals ({err})") from None
        return self._data
