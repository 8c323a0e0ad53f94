"""What fine-tuning reads again and again, kept in memory: conv maps and pooled window vectors."""
from __future__ import annotations

import functools
from collections import OrderedDict

import numpy as np
import torch

from detection.core.boxes import flip_boxes
from detection.core.images import load_image
from detection.data.records import ImageRecord
from detection.training.stages import FLIP_SUFFIX
from detection.training.windows import TrainingWindows

# Fine-tuning draws windows from random images every iteration. Cached maps are memory-mapped, so
# the page cache keeps recently read ones without costing this process memory; this many images'
# maps are also kept as tensors (on the device), so an image drawn again soon costs nothing.
MAPS_IN_MEMORY = 64
# ... and it draws each candidate window many times (iterations · 128 / candidates, about 15 times on
# the demo set), so this much of their SPP vectors is kept too, rather than pooled again.
POOLED_IN_MEMORY_BYTES = 1 << 30


class MapReader:
    """Conv maps of the training images by index, through the conv cache: index i < n is image i,
    n + i its horizontal mirror image (cached under ``<image id>#flip``).

    ``sources[i]`` is the hash of image i's file (:meth:`Cache.source`), which its cached maps (and
    its mirror image's) must have been computed from. :meth:`__call__` keeps the ``in_memory`` most
    recently used maps; :meth:`compute` fills the cache without keeping anything.
    """

    def __init__(self, extractor, records: list[ImageRecord], sources: list[str | None],
                 in_memory: int = MAPS_IN_MEMORY):
        self.extractor = extractor
        self.records = records
        self.sources = sources
        self._remembered = functools.lru_cache(maxsize=in_memory)(self.compute)

    def key(self, index: int) -> str:
        record = self.records[index % len(self.records)]
        return record.image_id + (FLIP_SUFFIX if index >= len(self.records) else "")

    def cached(self, index: int) -> bool:
        return self.extractor.cached(self.key(index), self.sources[index % len(self.records)])

    def compute(self, index: int) -> tuple[list[torch.Tensor], tuple[int, int]]:
        record = self.records[index % len(self.records)]
        flipped = index >= len(self.records)

        def image() -> np.ndarray:
            pixels = load_image(record.path)
            return np.ascontiguousarray(pixels[:, ::-1]) if flipped else pixels

        return self.extractor.maps(self.key(index), image, self.sources[index % len(self.records)])

    def __call__(self, index: int) -> tuple[list[torch.Tensor], tuple[int, int]]:
        return self._remembered(index)


class PooledWindows:
    """The ``pool_fn`` of :class:`~features.finetune.FineTuner`: SPP vectors of training windows.

    ``self(index, window (n,), scale_index (n,) or None)`` pools those windows of image ``index``
    (n + i: image i flipped, its windows mirrored) from the cached maps. Vectors already pooled are
    remembered, up to ``max_bytes``, the least recently used dropped first. They are kept in fp16:
    a max over fp16 map values is exact in fp16, so a remembered vector equals a fresh one.
    """

    def __init__(self, extractor, maps: MapReader, windows: list[TrainingWindows],
                 max_bytes: int = POOLED_IN_MEMORY_BYTES):
        self.extractor = extractor
        self.maps = maps
        self.windows = windows
        self.capacity = max(1, max_bytes // (2 * extractor.output_dim))
        self._vectors: OrderedDict[tuple[int, int, int], torch.Tensor] = OrderedDict()

    def _pool(self, index: int, window: np.ndarray, scale_index: np.ndarray | None) -> torch.Tensor:
        maps, image_size = self.maps(index)
        boxes = self.windows[index % len(self.windows)].boxes[window]
        if index >= len(self.windows):
            boxes = flip_boxes(boxes, image_size[1])
        return self.extractor.pool(maps, boxes, image_size, scale_index=scale_index)

    def __call__(self, index: int, window: np.ndarray, scale_index: np.ndarray | None) -> torch.Tensor:
        scales = np.full(len(window), -1) if scale_index is None else np.asarray(scale_index)
        keys = [(index, int(w), int(s)) for w, s in zip(window, scales)]
        missing = [i for i, key in enumerate(keys) if key not in self._vectors]
        if missing:
            fresh = self._pool(index, np.asarray(window)[missing],
                               None if scale_index is None else scales[missing]).to(torch.float16)
            self._vectors.update((keys[i], vector) for i, vector in zip(missing, fresh))
        for key in keys:
            self._vectors.move_to_end(key)
        out = torch.stack([self._vectors[key] for key in keys]).float()
        while len(self._vectors) > self.capacity:
            self._vectors.popitem(last=False)
        return out
